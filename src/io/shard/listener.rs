//! Listening sockets: one per shard per port, all bound with `SO_REUSEPORT`
//! so the kernel spreads incoming connections over the shards.

use std::{
    io,
    mem::size_of,
    net::{SocketAddr, TcpListener},
    os::fd::{FromRawFd, RawFd},
};

/// Pending connections the kernel queues per listener.
pub const BACKLOG: libc::c_int = 4096;

/// A non-blocking listener on `addr` that shares the port with its siblings.
/// With `defer_accept`, a connection is handed over only once its first
/// bytes are in (or after a second of silence), so that one wake-up of the
/// shard both accepts it and reads its request.
pub fn reuseport(addr: SocketAddr, defer_accept: bool) -> io::Result<TcpListener> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket syscalls; the fd is owned by the TcpListener below
    // on success and closed on every error path.
    unsafe {
        let fd =
            libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = TcpListener::from_raw_fd(fd);
        set_flag(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
        set_flag(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT)?;
        // Linux copies the listener's TCP options into each accepted
        // socket, so this saves one setsockopt per connection.
        set_flag(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY)?;
        if defer_accept {
            // The value is seconds of silence before the kernel hands the
            // connection over anyway.
            set_flag(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT)?;
        }
        let (storage, len) = sockaddr(addr);
        if libc::bind(fd, (&raw const storage).cast(), len) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::listen(fd, BACKLOG) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(listener)
    }
}

/// `accept4(2)`: a new non-blocking connection, or `WouldBlock`. From a
/// [`reuseport`] listener it already has `TCP_NODELAY`.
pub fn accept(fd: RawFd) -> io::Result<std::net::TcpStream> {
    // SAFETY: we pass no address buffer; the returned fd is ours to own.
    let conn = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if conn < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `conn` is a fresh socket fd nobody else owns.
    Ok(unsafe { std::net::TcpStream::from_raw_fd(conn) })
}

fn set_flag(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; we fill the family's fields.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_listeners_share_one_port() {
        let a = reuseport("127.0.0.1:0".parse().expect("addr"), false).expect("first bind");
        let port = a.local_addr().expect("addr").port();
        let b = reuseport(SocketAddr::from(([127, 0, 0, 1], port)), false).expect("second bind");
        assert_eq!(b.local_addr().expect("addr").port(), port);
    }

    /// With `defer_accept`, a connection is handed over with its first
    /// bytes, never before them: one that connected earlier but has said
    /// nothing yet is not handed over first.
    #[test]
    fn a_deferred_connection_arrives_with_its_request() {
        use std::io::{Read, Write};
        let listener = reuseport("127.0.0.1:0".parse().expect("addr"), true).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _silent = std::net::TcpStream::connect(addr).expect("connect");
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        let mut accepted = loop {
            match accept(std::os::fd::AsRawFd::as_raw_fd(&listener)) {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        let mut buf = [0u8; 64];
        // Non-blocking: the silent connection would say WouldBlock here.
        let n = accepted.read(&mut buf).expect("the request is already in");
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
    }

    /// The accept path no longer sets `TCP_NODELAY` itself: small frames
    /// must not wait for Nagle's acknowledgement.
    #[test]
    fn accepted_sockets_inherit_nodelay() {
        let listener = reuseport("127.0.0.1:0".parse().expect("addr"), false).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        let accepted = loop {
            match accept(std::os::fd::AsRawFd::as_raw_fd(&listener)) {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        assert!(accepted.nodelay().expect("getsockopt"));
    }
}
