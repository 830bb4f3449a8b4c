//! What one node tells the others over Redis pub/sub, sans-IO: a small
//! binary header and, for events, the WebSocket frame exactly as the
//! publishing node framed it, so a receiving node neither parses JSON nor
//! frames again: it checks the header and hands the same bytes to its shards.
//!
//! ```text
//! offset 0   b'S'             magic: not ours if different
//!        1   version (1)      a newer node's message is refused and counted
//!        2   kind             1 event, 2 terminate user, 3 user online, 4 user offline
//!        3   u16 BE n         length of the sender's instance name
//!        5   n bytes          the sender's instance name (its own are skipped)
//!   event:   u64 BE, u64 BE   socket id to exclude (0, 0: none)
//!            u64 BE           sequence of a cache channel's event (0: none)
//!            rest             the WebSocket text frame
//!   others:  rest             the user id (UTF-8)
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::{core::SocketId, proto::ws::codec};

const MAGIC: u8 = b'S';
const VERSION: u8 = 1;
/// Longest instance name a header may carry.
pub const MAX_NODE_NAME: usize = 255;

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// An event for the channel the message was published on.
    Event {
        /// The sender's connection that must not get it (`socket_id`).
        exclude: Option<SocketId>,
        /// A cache channel's sequence number, 0 for other channels.
        seq: u64,
        /// The complete WebSocket text frame.
        frame: Bytes,
    },
    /// Close the user's signed-in connections (spec §10.5).
    Terminate(Box<str>),
    /// The user's first signed-in connection in the cluster arrived.
    Online(Box<str>),
    /// The user's last signed-in connection in the cluster left.
    Offline(Box<str>),
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The sending node's instance name.
    pub node: Box<str>,
    /// What it says.
    pub body: Body,
}

/// Why a payload was not a message stapes can use; each is counted and
/// logged by the receiver, never fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not a stapes cluster message (another program on the channel).
    #[error("not a stapes cluster message")]
    Foreign,
    /// From a stapes of another protocol version.
    #[error("cluster message of version {0}, this node speaks {VERSION}")]
    Version(u8),
    /// Cut short or malformed.
    #[error("malformed cluster message: {0}")]
    Malformed(&'static str),
}

impl Envelope {
    /// The bytes to PUBLISH.
    pub fn encode(&self) -> Bytes {
        let node = &self.node.as_bytes()[..self.node.len().min(MAX_NODE_NAME)];
        let (kind, rest): (u8, &[u8]) = match &self.body {
            Body::Event { frame, .. } => (1, frame),
            Body::Terminate(user) => (2, user.as_bytes()),
            Body::Online(user) => (3, user.as_bytes()),
            Body::Offline(user) => (4, user.as_bytes()),
        };
        let mut out = BytesMut::with_capacity(5 + node.len() + 24 + rest.len());
        out.put_u8(MAGIC);
        out.put_u8(VERSION);
        out.put_u8(kind);
        out.put_u16(node.len() as u16);
        out.put_slice(node);
        if let Body::Event { exclude, seq, .. } = &self.body {
            let (hi, lo) = exclude.map_or((0, 0), |s| (s.hi, s.lo));
            out.put_u64(hi);
            out.put_u64(lo);
            out.put_u64(*seq);
        }
        out.put_slice(rest);
        out.freeze()
    }

    /// Reads a payload. The frame of an event is a slice of `payload`, not
    /// a copy, and must be one whole WebSocket text frame.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError`] for anything that is not a well-formed message of
    /// this version.
    pub fn decode(payload: Bytes) -> Result<Envelope, EnvelopeError> {
        let head = payload.get(..5).ok_or(EnvelopeError::Foreign)?;
        if head[0] != MAGIC {
            return Err(EnvelopeError::Foreign);
        }
        if head[1] != VERSION {
            return Err(EnvelopeError::Version(head[1]));
        }
        let kind = head[2];
        let n = usize::from(u16::from_be_bytes([head[3], head[4]]));
        let node = payload.get(5..5 + n).ok_or(EnvelopeError::Malformed("instance name"))?;
        let node: Box<str> = std::str::from_utf8(node)
            .map_err(|_| EnvelopeError::Malformed("instance name is not UTF-8"))?
            .into();
        let rest = 5 + n;
        let text = |at: usize| -> Result<Box<str>, EnvelopeError> {
            let bytes = payload.get(at..).ok_or(EnvelopeError::Malformed("user id"))?;
            match std::str::from_utf8(bytes) {
                Ok(s) if !s.is_empty() => Ok(s.into()),
                _ => Err(EnvelopeError::Malformed("user id")),
            }
        };
        let body = match kind {
            1 => {
                let fixed =
                    payload.get(rest..rest + 24).ok_or(EnvelopeError::Malformed("event header"))?;
                let word = |i: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&fixed[i * 8..i * 8 + 8]);
                    u64::from_be_bytes(b)
                };
                let (hi, lo, seq) = (word(0), word(1), word(2));
                let frame = payload.slice(rest + 24..);
                if !codec::is_text_frame(&frame) {
                    return Err(EnvelopeError::Malformed("not one WebSocket text frame"));
                }
                let exclude = (hi != 0 || lo != 0).then_some(SocketId { hi, lo });
                Body::Event { exclude, seq, frame }
            }
            2 => Body::Terminate(text(rest)?),
            3 => Body::Online(text(rest)?),
            4 => Body::Offline(text(rest)?),
            _ => return Err(EnvelopeError::Malformed("unknown kind")),
        };
        Ok(Envelope { node, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Envelope {
        Envelope {
            node: "node-a".into(),
            body: Body::Event {
                exclude: Some(SocketId { hi: 12, lo: 34 }),
                seq: 7,
                frame: codec::text_frame(br#"{"event":"e","channel":"c","data":"d"}"#),
            },
        }
    }

    #[test]
    fn every_kind_round_trips() {
        for env in [
            event(),
            Envelope { node: "b".into(), body: Body::Terminate("u1".into()) },
            Envelope { node: "b".into(), body: Body::Online("ü".into()) },
            Envelope { node: "b".into(), body: Body::Offline("u".into()) },
        ] {
            assert_eq!(Envelope::decode(env.encode()), Ok(env));
        }
    }

    #[test]
    fn the_frame_is_shared_not_copied() {
        let bytes = event().encode();
        let Ok(Envelope { body: Body::Event { frame, .. }, .. }) = Envelope::decode(bytes.clone())
        else {
            panic!("an event");
        };
        let base = bytes.as_ptr() as usize;
        assert!((base..base + bytes.len()).contains(&(frame.as_ptr() as usize)));
    }

    #[test]
    fn foreign_newer_and_broken_payloads_are_refused() {
        assert_eq!(
            Envelope::decode(Bytes::from_static(b"{\"json\":1}")),
            Err(EnvelopeError::Foreign)
        );
        assert_eq!(Envelope::decode(Bytes::new()), Err(EnvelopeError::Foreign));
        let mut newer = event().encode().to_vec();
        newer[1] = 2;
        assert_eq!(Envelope::decode(newer.into()), Err(EnvelopeError::Version(2)));
        let whole = event().encode();
        for cut in 0..whole.len() {
            assert!(Envelope::decode(whole.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut not_a_frame = event().encode().to_vec();
        let last = not_a_frame.len() - 1;
        not_a_frame.truncate(last);
        assert!(Envelope::decode(not_a_frame.into()).is_err());
        let mut kind = event().encode().to_vec();
        kind[2] = 9;
        assert_eq!(Envelope::decode(kind.into()), Err(EnvelopeError::Malformed("unknown kind")));
        let empty_user = Envelope { node: "b".into(), body: Body::Online("".into()) };
        assert!(Envelope::decode(empty_user.encode()).is_err());
    }
}
