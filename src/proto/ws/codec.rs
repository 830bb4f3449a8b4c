//! WebSocket frame codec (sans-IO), server side of RFC 6455.
//!
//! Decoding works in place on the connection's read buffer: a message that
//! arrives as one frame is unmasked where it lies and lent out as a slice, so
//! the common case copies nothing. Only fragmented messages are copied, into
//! an assembly buffer owned by the [`Decoder`].
//!
//! Header parsing is tungstenite's; validation, unmasking and assembly are
//! ours because tungstenite's message layer buffers whole frames before it
//! can apply a size limit.

use std::io::Cursor;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tungstenite::protocol::frame::{
    FrameHeader,
    coding::{Control, Data, OpCode},
};

/// Control frames carry at most this much payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest client frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER_LEN: usize = 14;

/// A decoded client event. Data slices are unmasked and, for text, valid UTF-8.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent<'a> {
    /// A complete text message (fragments already assembled), valid UTF-8.
    Text(&'a mut [u8]),
    /// A complete binary message.
    Binary(&'a mut [u8]),
    /// A ping; answer with [`pong_frame`] carrying the same payload.
    Ping(&'a [u8]),
    /// A pong (unsolicited or answering our ping).
    Pong,
    /// The peer's close frame and its status code, if it sent one.
    Close(Option<u16>),
}

/// Why the client's byte stream was rejected. All variants end the
/// connection: send [`close_frame`] with [`WsError::close_code`], then close
/// the socket; do not decode further.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// The client violated RFC 6455 framing (close code 1002).
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// A frame or message is announced larger than the configured limit
    /// (close code 1009). Raised from the header, before the payload is read.
    #[error("websocket message too big")]
    TooBig,
    /// A text message is not valid UTF-8 (close code 1007).
    #[error("websocket text message is not valid UTF-8")]
    InvalidUtf8,
}

impl WsError {
    /// The close status code to send the client.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Protocol(_) => 1002,
            Self::TooBig => 1009,
            Self::InvalidUtf8 => 1007,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Binary,
}

/// What [`Decoder::step`] found, as positions rather than borrows so the
/// event can be built from either the caller's buffer or the assembly buffer.
enum Step {
    InPlace { kind: Kind, start: usize, end: usize, consumed: usize },
    Assembled { kind: Kind, consumed: usize },
    Ping { start: usize, end: usize, consumed: usize },
    Pong { consumed: usize },
    Close { code: Option<u16>, consumed: usize },
}

/// Incremental decoder for the client → server direction of one connection.
///
/// One word, since it is part of every WebSocket's phase (issue #14): the
/// state of a fragmented message behind a pointer, allocated only while
/// one is assembled (clients seldom fragment; pusher-js never does). The
/// message limit is the caller's, passed to each [`Decoder::decode`].
#[derive(Debug, Default)]
pub struct Decoder {
    fragments: Option<Box<Fragments>>,
}

/// A fragmented message being assembled.
#[derive(Debug, Default)]
struct Fragments {
    /// Kind of the message, while it is open.
    open: Option<Kind>,
    assembly: Vec<u8>,
    /// Bytes at the front of the caller's buffer that belong to fragments
    /// already copied into `assembly`. They stay in the caller's buffer
    /// until the next event (whose `consumed` covers them), because
    /// `Ok(None)` must not ask the caller to drop anything.
    absorbed: usize,
    /// The previous event lent out `assembly`; drop it on the next call.
    lent: bool,
}

impl Decoder {
    /// A decoder between messages.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes the next complete event from the front of `buf`, the bytes
    /// received from the client and not yet consumed, refusing messages
    /// (and frames) larger than `max_message_bytes`: pass the same limit
    /// to every call on one decoder.
    ///
    /// `Ok(None)`: more bytes are needed; drop nothing, append what arrives
    /// and call again with the whole buffer. `Ok(Some((event, consumed)))`:
    /// handle the event, then drop `consumed` bytes from the front of the
    /// buffer. Payloads are unmasked in place, so `buf` is modified.
    ///
    /// Call until `Ok(None)`: that final call is also what frees the
    /// assembly buffer once its message has been handled.
    pub fn decode<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        max_message_bytes: usize,
    ) -> Result<Option<(WsEvent<'a>, usize)>, WsError> {
        if self.fragments.as_ref().is_some_and(|f| f.lent) {
            self.fragments = None;
        }
        let Some(step) = self.step(buf, max_message_bytes)? else {
            return Ok(None);
        };
        Ok(Some(match step {
            Step::InPlace { kind, start, end, consumed } => {
                (data_event(kind, &mut buf[start..end]), consumed)
            }
            Step::Assembled { kind, consumed } => {
                let assembly = self.fragments.as_mut().map(|f| f.assembly.as_mut_slice());
                (data_event(kind, assembly.unwrap_or_default()), consumed)
            }
            Step::Ping { start, end, consumed } => (WsEvent::Ping(&buf[start..end]), consumed),
            Step::Pong { consumed } => (WsEvent::Pong, consumed),
            Step::Close { code, consumed } => (WsEvent::Close(code), consumed),
        }))
    }

    fn step(&mut self, buf: &mut [u8], limit: usize) -> Result<Option<Step>, WsError> {
        loop {
            let pos = self.fragments.as_ref().map_or(0, |f| f.absorbed);
            let Some(rest) = buf.get(pos..) else {
                // The caller dropped bytes after `Ok(None)`, breaking the
                // contract; the stream position is lost.
                return Err(WsError::Protocol("decoder input lost absorbed bytes"));
            };
            let mut cursor = Cursor::new(rest);
            let (header, declared) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(None),
                // With an in-memory cursor, the only failure left is a
                // reserved opcode.
                Err(_) => return Err(WsError::Protocol("reserved opcode")),
            };
            // The cursor stops right after the header.
            let header_len = usize::try_from(cursor.position())
                .map_err(|_| WsError::Protocol("header length"))?;

            let kind = self.check(&header, declared, limit)?;
            // `check` bounded `declared` by the message limit or 125.
            let payload_len =
                usize::try_from(declared).map_err(|_| WsError::Protocol("frame length"))?;
            let start = pos + header_len;
            let end = start + payload_len;
            // Absorbed fragments stay in the caller's buffer until the next
            // event, so their framing counts as well: otherwise a stream of
            // empty fragments would grow that buffer while the message stays
            // empty. Twice the limit leaves room for sane fragmentation.
            if kind.is_some() && end > raw_limit(limit) {
                return Err(WsError::TooBig);
            }
            if buf.len() < end {
                return Ok(None);
            }
            let Some(mask) = header.mask else {
                return Err(WsError::Protocol("client frame is not masked"));
            };
            unmask(&mut buf[start..end], mask);
            let payload = &buf[start..end];

            let Some(kind) = kind else {
                if let Some(fragments) = self.fragments.as_mut() {
                    fragments.absorbed = 0;
                }
                return Ok(Some(match header.opcode {
                    OpCode::Control(Control::Ping) => Step::Ping { start, end, consumed: end },
                    OpCode::Control(Control::Close) => {
                        Step::Close { code: close_code(payload)?, consumed: end }
                    }
                    OpCode::Control(Control::Pong) => Step::Pong { consumed: end },
                    // `check` lets no other control opcode through.
                    _ => return Err(WsError::Protocol("reserved opcode")),
                }));
            };

            let open = self.fragments.as_ref().and_then(|f| f.open);
            if open.is_none() && header.is_final {
                // The common case: a whole message in one frame, lent in place.
                if kind == Kind::Text && std::str::from_utf8(payload).is_err() {
                    return Err(WsError::InvalidUtf8);
                }
                return Ok(Some(Step::InPlace { kind, start, end, consumed: end }));
            }

            let fragments = self.fragments.get_or_insert_with(Box::default);
            fragments.assembly.extend_from_slice(payload);
            if !header.is_final {
                fragments.open = Some(kind);
                fragments.absorbed = end;
                continue;
            }
            fragments.open = None;
            fragments.absorbed = 0;
            // Validated whole, since fragment boundaries may split code points.
            if kind == Kind::Text && std::str::from_utf8(&fragments.assembly).is_err() {
                return Err(WsError::InvalidUtf8);
            }
            fragments.lent = true;
            return Ok(Some(Step::Assembled { kind, consumed: end }));
        }
    }

    /// Header-only checks, so that violations and oversize frames are
    /// refused before any payload is buffered. Returns the kind of message
    /// a data frame belongs to, `None` for a control frame.
    fn check(
        &self,
        header: &FrameHeader,
        declared: u64,
        limit: usize,
    ) -> Result<Option<Kind>, WsError> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::Protocol("reserved bits set without an extension"));
        }
        if header.mask.is_none() {
            return Err(WsError::Protocol("client frame is not masked"));
        }
        if declared >> 63 != 0 {
            return Err(WsError::Protocol("frame length has its top bit set"));
        }
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        match header.opcode {
            OpCode::Control(Control::Ping | Control::Pong | Control::Close) => {
                if !header.is_final {
                    return Err(WsError::Protocol("fragmented control frame"));
                }
                if declared > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(WsError::Protocol("control frame payload over 125 bytes"));
                }
                Ok(None)
            }
            OpCode::Data(Data::Continue) => {
                let open =
                    self.fragments.as_ref().and_then(|f| f.open.map(|k| (k, f.assembly.len())));
                let Some((kind, assembled)) = open else {
                    return Err(WsError::Protocol("continuation frame without a message"));
                };
                if assembled as u64 + declared > limit {
                    return Err(WsError::TooBig);
                }
                Ok(Some(kind))
            }
            OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                if self.fragments.as_ref().is_some_and(|f| f.open.is_some()) {
                    return Err(WsError::Protocol("new message inside a fragmented one"));
                }
                if declared > limit {
                    return Err(WsError::TooBig);
                }
                Ok(Some(if data == Data::Text { Kind::Text } else { Kind::Binary }))
            }
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                Err(WsError::Protocol("reserved opcode"))
            }
        }
    }
}

/// Most raw bytes (headers and payloads) one message's frames may span.
fn raw_limit(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_mul(2).saturating_add(MAX_HEADER_LEN)
}

fn data_event(kind: Kind, payload: &mut [u8]) -> WsEvent<'_> {
    match kind {
        Kind::Text => WsEvent::Text(payload),
        Kind::Binary => WsEvent::Binary(payload),
    }
}

/// Validates a close payload (RFC 6455 §5.5.1, §7.4).
fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // 1004-1006 and 1015 are reserved for local use and never sent;
            // 1012-1014 are registered with IANA; 3000-4999 are for
            // libraries and applications.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(WsError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(WsError::Protocol("close reason is not UTF-8"));
            }
            Ok(Some(code))
        }
    }
}

/// XORs the client's masking key over `payload`, eight bytes per step.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    // Every chunk starts at a multiple of 8, hence of 4, so the mask
    // lines up with each chunk (and the tail) from its first byte.
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (byte, m) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

/// Length of an unmasked server frame header for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// Appends a final, unmasked frame header (`opcode` is the 4-bit code).
fn put_header(out: &mut impl BufMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    if let Ok(short @ 0..=125) = u8::try_from(len) {
        out.put_u8(short);
    } else if let Ok(medium) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(medium);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// One complete unmasked text frame: header + payload, in one allocation.
/// The caller guarantees `payload` is UTF-8.
pub fn text_frame(payload: &[u8]) -> Bytes {
    frame(0x1, payload)
}

/// Room for the longest header, left before a payload written in place.
const HEADER_ROOM: usize = 10;

/// A text frame whose payload is written straight into the frame's own
/// buffer, after room for the longest header; [`TextFrame::finish`] puts
/// the header that fits right before the payload and hands out the frame
/// from there. An event is built once, into the buffer every subscriber
/// shares: one allocation, and its `data` copied once, while it is
/// escaped.
pub struct TextFrame {
    buf: BytesMut,
}

impl TextFrame {
    /// A frame for a payload of about `payload` bytes (it may grow).
    pub fn with_capacity(payload: usize) -> Self {
        let mut buf = BytesMut::with_capacity(HEADER_ROOM + payload);
        buf.put_bytes(0, HEADER_ROOM);
        Self { buf }
    }

    /// The payload, to append to. The caller writes UTF-8 only.
    pub fn payload(&mut self) -> &mut impl BufMut {
        &mut self.buf
    }

    /// The finished frame: header and payload, contiguous.
    pub fn finish(self) -> Bytes {
        let mut buf = self.buf;
        let len = buf.len() - HEADER_ROOM;
        let start = HEADER_ROOM - header_len(len);
        put_header(&mut &mut buf[start..HEADER_ROOM], 0x1, len);
        buf.advance(start);
        buf.freeze()
    }
}

/// Whether `bytes` is exactly one final, unmasked server text frame whose
/// payload is UTF-8: what a node may hand its clients as it came from
/// another node, without framing it again.
pub fn is_text_frame(bytes: &[u8]) -> bool {
    let (Some(&first), Some(&second)) = (bytes.first(), bytes.get(1)) else { return false };
    if first != 0x81 || second & 0x80 != 0 {
        return false;
    }
    let (len, header) = match second & 0x7F {
        126 => match bytes.get(2..4) {
            Some(b) => (usize::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return false,
        },
        127 => match bytes.get(2..10) {
            Some(b) => {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                match usize::try_from(u64::from_be_bytes(w)) {
                    Ok(len) => (len, 10),
                    Err(_) => return false,
                }
            }
            None => return false,
        },
        short => (usize::from(short), 2),
    };
    bytes.len() == header + len && std::str::from_utf8(&bytes[header..]).is_ok()
}

/// Appends a text frame header for a payload of `len` bytes to `out`, for
/// callers that write the payload right after it; returns the header length
/// (always [`header_len`]`(len)`).
pub fn write_text_header(len: usize, out: &mut BytesMut) -> usize {
    put_header(out, 0x1, len);
    header_len(len)
}

/// A close frame with `code` and `reason`, the reason cut to 123 bytes on a
/// character boundary so the payload fits a control frame.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    let mut out = BytesMut::with_capacity(4 + reason.len());
    put_header(&mut out, 0x8, 2 + reason.len());
    out.put_u16(code);
    out.put_slice(reason);
    out.freeze()
}

/// A pong echoing `payload` (a ping's payload, so at most 125 bytes; any
/// excess is cut rather than sending an invalid control frame).
pub fn pong_frame(payload: &[u8]) -> Bytes {
    frame(0xA, &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)])
}

/// An empty ping, for liveness checks.
pub fn ping_frame() -> Bytes {
    Bytes::from_static(&[0x89, 0x00])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_frame_is_recognised_whole_and_nothing_else() {
        for len in [0, 5, 125, 126, 300, 70_000] {
            let payload = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let frame = text_frame(payload.as_bytes());
            assert!(is_text_frame(&frame), "{len}");
            assert!(!is_text_frame(&frame[..frame.len() - 1]), "cut: {len}");
            let mut longer = frame.to_vec();
            longer.push(b'x');
            assert!(!is_text_frame(&longer), "trailing: {len}");
        }
        assert!(!is_text_frame(&close_frame(1000, "")));
        assert!(!is_text_frame(&ping_frame()));
        assert!(!is_text_frame(&[0x81, 0x02, 0xC3, 0x28]), "not UTF-8");
        assert!(!is_text_frame(&[0x81, 0x81, 0, 0, 0, 0, b'x']), "masked");
        assert!(!is_text_frame(&[]));
    }

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame; `b0` is FIN/RSV/opcode.
    fn client(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = raw_header(b0, payload.len() as u64, Some(MASK));
        let start = out.len();
        out.extend_from_slice(payload);
        for (i, b) in out[start..].iter_mut().enumerate() {
            *b ^= MASK[i % 4];
        }
        out
    }

    fn raw_header(b0: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
        let bit = if mask.is_some() { 0x80 } else { 0 };
        let mut out = vec![b0];
        if len < 126 {
            out.push(bit | len as u8);
        } else if len <= 0xFFFF {
            out.push(bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        if let Some(m) = mask {
            out.extend_from_slice(&m);
        }
        out
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong,
        Close(Option<u16>),
    }

    fn own(ev: WsEvent<'_>) -> Owned {
        match ev {
            WsEvent::Text(t) => Owned::Text(String::from_utf8(t.to_vec()).expect("validated")),
            WsEvent::Binary(b) => Owned::Binary(b.to_vec()),
            WsEvent::Ping(p) => Owned::Ping(p.to_vec()),
            WsEvent::Pong => Owned::Pong,
            WsEvent::Close(c) => Owned::Close(c),
        }
    }

    /// A decoder with its limit, as a connection's driver holds them.
    struct Limited {
        decoder: Decoder,
        max: usize,
    }

    impl Limited {
        fn new(max: usize) -> Self {
            Self { decoder: Decoder::new(), max }
        }

        fn decode<'a>(
            &'a mut self,
            buf: &'a mut [u8],
        ) -> Result<Option<(WsEvent<'a>, usize)>, WsError> {
            self.decoder.decode(buf, self.max)
        }
    }

    /// Behaves like a connection driver: appends `chunk` bytes at a time,
    /// decodes until `None`, drops what each event consumed.
    fn drive(dec: &mut Limited, stream: &[u8], chunk: usize) -> Result<Vec<Owned>, WsError> {
        let mut buf = Vec::new();
        let mut events = Vec::new();
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some((ev, consumed)) = dec.decode(&mut buf)? {
                events.push(own(ev));
                buf.drain(..consumed);
            }
        }
        Ok(events)
    }

    fn one(stream: &[u8], max: usize) -> Result<Owned, WsError> {
        let mut buf = stream.to_vec();
        let mut dec = Limited::new(max);
        match dec.decode(&mut buf)? {
            Some((ev, consumed)) => {
                assert_eq!(consumed, stream.len());
                Ok(own(ev))
            }
            None => panic!("incomplete"),
        }
    }

    #[test]
    fn rfc_masked_hello() {
        let mut buf = vec![0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58, 0x99];
        let mut dec = Limited::new(1024);
        let (ev, consumed) = dec.decode(&mut buf).expect("valid").expect("complete");
        assert_eq!(ev, WsEvent::Text(&mut b"Hello".to_vec()[..]));
        assert_eq!(consumed, 11);
    }

    #[test]
    fn binary_and_control_events() {
        assert_eq!(one(&client(0x82, &[0, 255, 1]), 64), Ok(Owned::Binary(vec![0, 255, 1])));
        assert_eq!(one(&client(0x82, &[0xff, 0xfe]), 64), Ok(Owned::Binary(vec![0xff, 0xfe])));
        assert_eq!(one(&client(0x89, b"hi"), 64), Ok(Owned::Ping(b"hi".to_vec())));
        assert_eq!(one(&client(0x8A, b"x"), 64), Ok(Owned::Pong));
        assert_eq!(one(&client(0x81, b""), 64), Ok(Owned::Text(String::new())));
        // Control frames are not subject to the message limit.
        assert_eq!(one(&client(0x89, &[7; 125]), 1), Ok(Owned::Ping(vec![7; 125])));
    }

    #[test]
    fn unmasked_rejected() {
        let mut frame = raw_header(0x81, 2, None);
        frame.extend_from_slice(b"hi");
        let e = one(&frame, 64).expect_err("unmasked");
        assert!(matches!(e, WsError::Protocol(_)));
        assert_eq!(e.close_code(), 1002);
    }

    #[test]
    fn reserved_bits_rejected() {
        for rsv in [0x40, 0x20, 0x10] {
            let e = one(&client(0x81 | rsv, b"hi"), 64).expect_err("rsv");
            assert!(matches!(e, WsError::Protocol(_)), "{rsv:#x}");
        }
    }

    #[test]
    fn reserved_opcodes_rejected() {
        for op in (3..=7).chain(11..=15) {
            let e = one(&client(0x80 | op, b""), 64).expect_err("opcode");
            assert!(matches!(e, WsError::Protocol(_)), "opcode {op}");
        }
    }

    #[test]
    fn control_frame_rules() {
        for op in [0x8, 0x9, 0xA] {
            let e = one(&client(op, b""), 64).expect_err("non-final control");
            assert!(matches!(e, WsError::Protocol(_)));
            let e = one(&client(0x80 | op, &[b'a'; 126]), 1024).expect_err("long control");
            assert!(matches!(e, WsError::Protocol(_)));
        }
        // Rejected from the header alone.
        let mut dec = Limited::new(1024);
        let mut head = raw_header(0x89, 126, Some(MASK));
        assert!(matches!(dec.decode(&mut head), Err(WsError::Protocol(_))));
    }

    #[test]
    fn fragment_sequence_rules() {
        let mut dec = Limited::new(64);
        let e = drive(&mut dec, &client(0x80, b"x"), 64).expect_err("orphan continuation");
        assert!(matches!(e, WsError::Protocol(_)));

        let mut stream = client(0x01, b"a");
        stream.extend(client(0x81, b"b"));
        let e = drive(&mut Limited::new(64), &stream, 64).expect_err("text inside text");
        assert!(matches!(e, WsError::Protocol(_)));

        let mut stream = client(0x02, b"a");
        stream.extend(client(0x01, b"b"));
        let e = drive(&mut Limited::new(64), &stream, 64).expect_err("text inside binary");
        assert!(matches!(e, WsError::Protocol(_)));
    }

    #[test]
    fn a_frame_built_in_place_is_the_frame_of_its_payload() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            // Half written within the first guess, half grown into.
            let mut built = TextFrame::with_capacity(len / 2);
            built.payload().put_slice(&payload[..len / 2]);
            built.payload().put_slice(&payload[len / 2..]);
            assert_eq!(built.finish(), text_frame(&payload), "len {len}");
        }
    }

    #[test]
    fn header_length_forms() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = client(0x82, &payload);
            let want_header = match len {
                0..=125 => 6,
                126..=65535 => 8,
                _ => 14,
            };
            assert_eq!(frame.len(), want_header + len);
            assert_eq!(one(&frame, 1 << 20), Ok(Owned::Binary(payload)), "len {len}");
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for len in [5usize, 200, 66000] {
            let payload = vec![b'z'; len];
            let frame = client(0x81, &payload);
            let mut dec = Limited::new(1 << 20);
            // Checking every prefix of the 64-bit frame would be quadratic;
            // the header bytes and a spread of payload cuts cover it.
            let cuts: Vec<usize> = if len < 1000 {
                (0..frame.len()).collect()
            } else {
                (0..20).chain((20..frame.len()).step_by(997)).collect()
            };
            for end in cuts {
                let mut prefix = frame[..end].to_vec();
                assert_eq!(dec.decode(&mut prefix), Ok(None), "len {len}, prefix {end}");
            }
            let mut whole = frame.clone();
            let (ev, consumed) = dec.decode(&mut whole).expect("ok").expect("complete");
            assert_eq!(consumed, frame.len());
            assert_eq!(own(ev), Owned::Text("z".repeat(len)));
        }
    }

    #[test]
    fn too_big_from_header_only() {
        let max = 1000;
        // Exactly at the limit is fine.
        assert!(one(&client(0x82, &vec![0; max]), max).is_ok());
        // 7-bit, 16-bit and 64-bit declared lengths, no payload bytes present.
        for (max, declared) in [(100, 101u64), (max, 1001), (max, 1 << 40)] {
            let mut head = raw_header(0x82, declared, Some(MASK));
            let e = Limited::new(max).decode(&mut head).expect_err("too big");
            assert_eq!(e, WsError::TooBig);
            assert_eq!(e.close_code(), 1009);
        }
        // Top bit of the 64-bit length is forbidden outright.
        let mut head = raw_header(0x82, 1 << 63, Some(MASK));
        assert!(matches!(Limited::new(max).decode(&mut head), Err(WsError::Protocol(_))));
        // The sum of fragments counts: 600 buffered + 401 announced > 1000.
        let mut stream = client(0x01, &[b'a'; 600]);
        stream.extend(raw_header(0x80, 401, Some(MASK)));
        let e = drive(&mut Limited::new(max), &stream, 64).expect_err("sum too big");
        assert_eq!(e, WsError::TooBig);
        // ...while 600 + 400 is exactly the limit.
        let mut stream = client(0x01, &[b'a'; 600]);
        stream.extend(client(0x80, &[b'b'; 400]));
        let events = drive(&mut Limited::new(max), &stream, 64).expect("at limit");
        assert_eq!(events, vec![Owned::Text("a".repeat(600) + &"b".repeat(400))]);
    }

    #[test]
    fn fragment_framing_is_bounded() {
        // Empty fragments add nothing to the message but pile up in the
        // caller's buffer; they are refused once they pass twice the limit.
        let mut stream = client(0x01, b"");
        for _ in 0..100 {
            stream.extend(client(0x00, b""));
        }
        let e = drive(&mut Limited::new(100), &stream, 7).expect_err("framing flood");
        assert_eq!(e, WsError::TooBig);
        // Small fragments of a message well within the limit still pass.
        let mut stream = client(0x01, b"a");
        for _ in 0..24 {
            stream.extend(client(0x00, b"a"));
        }
        stream.extend(client(0x80, b""));
        let events = drive(&mut Limited::new(100), &stream, 5).expect("fine");
        assert_eq!(events, vec![Owned::Text("a".repeat(25))]);
    }

    fn fragmented_with_ping() -> Vec<u8> {
        let mut stream = client(0x01, b"Hel");
        stream.extend(client(0x89, b"ping!"));
        stream.extend(client(0x00, b"lo, "));
        stream.extend(client(0x80, "w\u{f6}rld".as_bytes()));
        stream.extend(client(0x8A, b""));
        stream.extend(client(0x81, b"next"));
        stream
    }

    #[test]
    fn fragmented_text_with_ping_in_the_middle() {
        let stream = fragmented_with_ping();
        let want = vec![
            Owned::Ping(b"ping!".to_vec()),
            Owned::Text("Hello, w\u{f6}rld".to_owned()),
            Owned::Pong,
            Owned::Text("next".to_owned()),
        ];
        // All at once, and fed at every chunk size down to single bytes.
        for chunk in 1..=stream.len() {
            let mut dec = Limited::new(1024);
            assert_eq!(drive(&mut dec, &stream, chunk), Ok(want.clone()), "chunk {chunk}");
            assert!(dec.decoder.fragments.is_none(), "chunk {chunk}");
        }
    }

    #[test]
    fn consumed_counts_absorbed_fragments() {
        let stream = fragmented_with_ping();
        let first = client(0x01, b"Hel").len();
        let ping = client(0x89, b"ping!").len();
        let mut dec = Limited::new(1024);
        // The first fragment alone yields nothing and must stay in the buffer...
        let mut buf = stream[..first + 1].to_vec();
        assert_eq!(dec.decode(&mut buf), Ok(None));
        // ...and is covered by the next event's `consumed`, since it is
        // already in the assembly buffer.
        buf.extend_from_slice(&stream[first + 1..]);
        let (ev, consumed) = dec.decode(&mut buf).expect("ok").expect("ping");
        assert_eq!(ev, WsEvent::Ping(b"ping!"));
        assert_eq!(consumed, first + ping);
    }

    #[test]
    fn utf8_split_across_fragments() {
        // U+20AC is E2 82 AC; split it 1 + 2 and an emoji 3 + 1.
        let euro = "\u{20ac}".as_bytes();
        let emoji = "\u{1f600}".as_bytes();
        let mut stream = client(0x01, &euro[..1]);
        stream.extend(client(0x00, &euro[1..]));
        stream.extend(client(0x00, &emoji[..3]));
        stream.extend(client(0x80, &emoji[3..]));
        let events = drive(&mut Limited::new(64), &stream, 3).expect("valid");
        assert_eq!(events, vec![Owned::Text("\u{20ac}\u{1f600}".to_owned())]);
        // A code point left unfinished at the end of the message is invalid.
        let mut stream = client(0x01, b"ok");
        stream.extend(client(0x80, &euro[..2]));
        let e = drive(&mut Limited::new(64), &stream, 64).expect_err("truncated");
        assert_eq!(e, WsError::InvalidUtf8);
        assert_eq!(e.close_code(), 1007);
    }

    #[test]
    fn invalid_utf8_single_frame() {
        assert_eq!(one(&client(0x81, &[0xc3, 0x28]), 64), Err(WsError::InvalidUtf8));
        assert_eq!(one(&client(0x81, b"\xed\xa0\x80"), 64), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn close_payloads() {
        let close = |payload: &[u8]| one(&client(0x88, payload), 64);
        assert_eq!(close(b""), Ok(Owned::Close(None)));
        for code in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert_eq!(close(&code.to_be_bytes()), Ok(Owned::Close(Some(code))));
        }
        let mut with_reason = 1000u16.to_be_bytes().to_vec();
        with_reason.extend_from_slice("bye \u{1f44b}".as_bytes());
        assert_eq!(close(&with_reason), Ok(Owned::Close(Some(1000))));

        assert!(matches!(close(&[3]), Err(WsError::Protocol(_))));
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert!(matches!(close(&code.to_be_bytes()), Err(WsError::Protocol(_))), "{code}");
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(&[0xff]);
        assert!(matches!(close(&bad_reason), Err(WsError::Protocol(_))));
    }

    #[test]
    fn an_assembly_is_released_after_its_message() {
        // An idle connection holds no fragment state (issue #14).
        assert_eq!(std::mem::size_of::<Decoder>(), 8);
        for (first, last) in [(10_000, 10_000), (2, 2)] {
            let mut stream = client(0x02, &vec![1; first]);
            stream.extend(client(0x80, &vec![2; last]));
            let mut buf = stream.clone();
            let mut dec = Limited::new(1 << 20);
            let (ev, consumed) = dec.decode(&mut buf).expect("ok").expect("message");
            assert!(matches!(ev, WsEvent::Binary(ref b) if b.len() == first + last));
            assert_eq!(consumed, stream.len());
            assert!(
                dec.decoder
                    .fragments
                    .as_ref()
                    .is_some_and(|f| f.assembly.capacity() >= first + last)
            );
            assert_eq!(dec.decode(&mut []), Ok(None));
            assert!(dec.decoder.fragments.is_none());
        }
    }

    #[test]
    fn unmask_matches_bytewise() {
        for len in 0..40 {
            for mask in [[1, 2, 3, 4], [0xff, 0, 0xaa, 0x55]] {
                let orig: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                let mut fast = orig.clone();
                unmask(&mut fast, mask);
                let slow: Vec<u8> = orig.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
                assert_eq!(fast, slow, "len {len}");
            }
        }
    }

    /// Parses a server frame with tungstenite's header parser.
    fn parse_server(frame: &[u8]) -> (FrameHeader, Vec<u8>) {
        let mut cursor = Cursor::new(frame);
        let (header, len) =
            FrameHeader::parse(&mut cursor).expect("valid header").expect("complete header");
        let start = cursor.position() as usize;
        assert_eq!(frame.len() - start, len as usize, "exact length");
        assert!(header.mask.is_none(), "server frames are unmasked");
        assert!(header.is_final);
        assert!(!header.rsv1 && !header.rsv2 && !header.rsv3);
        (header, frame[start..].to_vec())
    }

    #[test]
    fn text_frames_round_trip() {
        for len in [0usize, 125, 126, 65535, 65536, 100_000] {
            let payload = vec![b'p'; len];
            let frame = text_frame(&payload);
            assert_eq!(frame.len(), header_len(len) + len);
            let (header, body) = parse_server(&frame);
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            assert_eq!(body, payload);

            let mut out = BytesMut::new();
            let n = write_text_header(len, &mut out);
            assert_eq!(n, header_len(len));
            assert_eq!(&out[..], &frame[..n]);
        }
    }

    #[test]
    fn control_frames_round_trip() {
        let (header, body) = parse_server(&ping_frame());
        assert_eq!(header.opcode, OpCode::Control(Control::Ping));
        assert!(body.is_empty());

        let (header, body) = parse_server(&pong_frame(b"abc"));
        assert_eq!(header.opcode, OpCode::Control(Control::Pong));
        assert_eq!(body, b"abc");
        let (_, body) = parse_server(&pong_frame(&[1; 300]));
        assert_eq!(body.len(), 125);

        let (header, body) = parse_server(&close_frame(4009, "unauthorized"));
        assert_eq!(header.opcode, OpCode::Control(Control::Close));
        assert_eq!(body[..2], 4009u16.to_be_bytes());
        assert_eq!(&body[2..], b"unauthorized");

        // 41 three-byte characters = 123 bytes fit; a 42nd does not, nor
        // does a two-byte character straddling the 123rd byte.
        let reason = "\u{20ac}".repeat(42);
        let (_, body) = parse_server(&close_frame(1000, &reason));
        assert_eq!(body.len(), 125);
        assert_eq!(std::str::from_utf8(&body[2..]), Ok("\u{20ac}".repeat(41).as_str()));
        let reason = format!("{}\u{e9}", "a".repeat(122));
        let (_, body) = parse_server(&close_frame(1000, &reason));
        assert_eq!(&body[2..], "a".repeat(122).as_bytes());
    }

    #[test]
    fn server_frames_decode_after_masking() {
        // Our encoder's output, masked as a client would, decodes to itself.
        let frame = text_frame(b"{\"event\":\"pusher:ping\"}");
        let mut masked = frame[..2].to_vec();
        masked[1] |= 0x80;
        masked.extend_from_slice(&MASK);
        masked.extend(frame[2..].iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        assert_eq!(one(&masked, 1024), Ok(Owned::Text("{\"event\":\"pusher:ping\"}".to_owned())));
    }
}
