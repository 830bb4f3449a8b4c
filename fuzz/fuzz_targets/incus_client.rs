//! What an Incus client sends: `/socket` frames (`state::parse_first`, then
//! the shard's handling of an authenticated socket's commands) and the
//! commands it can have a node publish for it (`ClientMessage::encode`,
//! read back by `command::parse` on every node).
//!
//! Input: a byte of flags (bit 0: lenient, as for a long-poll's `command`;
//! bit 1: client broadcasts on), then one frame.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use stapes::proto::incus::{
    command::{ClientMessage, Envelope, IncusKind, parse},
    state::parse_first,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, frame)) = data.split_first() else { return };
    let lenient = flags & 1 != 0;
    let parsed = parse_first(frame, lenient);
    if let Ok(strict) = parse_first(frame, false) {
        // Lenience only turns refusals into commands.
        assert_eq!(parse_first(frame, true), Ok(strict), "lenient parse differs");
    }
    if let Ok(command) = &parsed {
        assert_ne!(command.kind, IncusKind::Other(String::new()));
        if command.kind == IncusKind::Message {
            let message = ClientMessage::from_command(command.clone())
                .expect("a parsed message command has a message");
            // What every node reads back is what this node checked.
            let mut published = message.encode().into_bytes();
            match parse(&mut published) {
                Ok(Envelope::Client(back)) => assert_eq!(back, message, "client round trip"),
                other => panic!("published client message read back as {other:?}"),
            }
        }
    }

    let mut node = common::IncusNode::new(flags & 2 != 0);
    let now_unix = node.unix;
    let now = node.now;
    let shard = &mut node.shards[0];
    let socket = shard.open(1, now);
    shard.handle_frame(
        socket,
        br#"{"command":{"command":"authenticate","user":"u1"}}"#,
        now,
        now_unix,
    );
    shard.handle_frame(socket, frame, now, now_unix);
    // The same frame as a long-poll's command, from the other shard.
    node.shards[1].start_poll("u1", Some("p"), Some(frame), now, now_unix);
    node.pump();
    node.check_output();
    node.advance(11);
    node.check_output();
});
