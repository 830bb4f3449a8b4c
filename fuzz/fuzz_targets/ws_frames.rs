//! The WebSocket frame decoder (`proto::ws::codec::Decoder`), which reads
//! every byte a Pusher or Incus WebSocket client sends after the upgrade.
//!
//! Input: a byte choosing the message limit, a byte choosing how the stream
//! is cut into reads, then the stream. The same stream must decode to the
//! same events whether it arrives whole or in pieces, and every message
//! must decode again from a frame, and from two fragments, built around it.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use stapes::proto::ws::codec::{Decoder, WsError, WsEvent};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

fuzz_target!(|data: &[u8]| {
    let [limit, cuts, stream @ ..] = data else { return };
    let max = usize::from(*limit) * 8;
    let whole = decode(max, stream, stream.len().max(1));
    let piece = 1 + usize::from(*cuts) % 17;
    let pieces = decode(max, stream, piece);
    assert_eq!(whole, pieces, "reads of {piece} bytes decode differently");

    let mask = [*limit, *cuts, 0x5a, 0xa5];
    for event in &whole.0 {
        let (opcode, payload) = match event {
            Event::Text(p) => (1, p),
            Event::Binary(p) => (2, p),
            _ => continue,
        };
        let one = common::client_frame(true, opcode, payload, mask);
        let (events, err) = decode(max, &one, one.len());
        assert_eq!((events, err), (vec![event.clone()], None), "one frame round trip");
        // In two fragments (split anywhere, even inside a code point) with
        // a ping between them.
        let (head, tail) = payload.split_at(payload.len() / 2);
        let mut split = common::client_frame(false, opcode, head, mask);
        split.extend(common::client_frame(true, 9, b"p", mask));
        split.extend(common::client_frame(true, 0, tail, mask));
        let (events, err) = decode(max, &split, 5);
        assert_eq!(err, None, "fragments refused");
        assert_eq!(events, vec![Event::Ping(b"p".to_vec()), event.clone()], "fragments");
    }
});

/// Decodes `stream` arriving `piece` bytes at a time, as the event loop
/// does: append, decode until `Ok(None)`, drop what was consumed.
fn decode(max: usize, stream: &[u8], piece: usize) -> (Vec<Event>, Option<WsError>) {
    let mut decoder = Decoder::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            let len = buf.len();
            match decoder.decode(&mut buf, max) {
                Ok(Some((event, consumed))) => {
                    assert!(consumed > 0 && consumed <= len, "consumed {consumed} of {len}");
                    let event = match event {
                        WsEvent::Text(p) => {
                            assert!(std::str::from_utf8(p).is_ok(), "text is not UTF-8");
                            assert!(p.len() <= max, "text over the limit");
                            Event::Text(p.to_vec())
                        }
                        WsEvent::Binary(p) => {
                            assert!(p.len() <= max, "binary over the limit");
                            Event::Binary(p.to_vec())
                        }
                        WsEvent::Ping(p) => {
                            assert!(p.len() <= 125, "ping over 125 bytes");
                            Event::Ping(p.to_vec())
                        }
                        WsEvent::Pong => Event::Pong,
                        WsEvent::Close(code) => Event::Close(code),
                    };
                    events.push(event);
                    buf.drain(..consumed);
                }
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
    }
    (events, None)
}
