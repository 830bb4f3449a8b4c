//! What a Pusher client sends over its WebSocket: each text frame through
//! `Session::handle_text` (the strict JSON policy, then subscribe, signin,
//! unsubscribe and client events), and the `channel_data` and `user_data`
//! strings through their own parsers.
//!
//! Input: frames separated by a 0xFF byte (never part of UTF-8 text),
//! handled in order by one session with socket id `123.456`, so a seed can
//! sign in and then join a presence channel with real signatures.
#![no_main]

mod common;

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use stapes::{
    core::{SocketId, json},
    proto::pusher::{
        auth::{parse_presence_data, parse_user_data},
        channel,
        session::{Command, MAX_WATCHLIST, Session},
    },
};

fuzz_target!(|data: &[u8]| {
    let app = common::app();
    let start = Instant::now();
    let mut session = Session::new(SocketId { hi: 123, lo: 456 }, 0, app.client_event_rate, start);
    for (i, frame) in data.split(|&b| b == 0xff).enumerate() {
        let now = start + Duration::from_millis(i as u64 * 7);
        policy(frame);
        let result = session.handle_text(now, &app, frame);
        if result.is_ok() {
            assert_ne!(common::repeats_a_key(frame), Some(true), "accepted a repeated key");
        }
        match result {
            Ok(Command::Subscribe { channel: name, flags, member }) => {
                let checked = channel::validate(&name, app.max_channel_name_chars);
                assert_eq!(checked.ok(), Some(flags), "subscribed to an invalid channel");
                if let Some(member) = member {
                    assert!(!member.user_id.is_empty());
                    assert!(member.user_id.chars().count() <= app.max_presence_user_id_chars);
                }
            }
            Ok(Command::ClientEvent { event, channel: name, data }) => {
                assert!(event.starts_with("client-"));
                assert!(channel::validate(&name, app.max_channel_name_chars).is_ok());
                assert!(data.len() <= app.max_event_bytes, "client event over the limit");
                let value: serde_json::Value =
                    serde_json::from_str(data).expect("relayed data is JSON");
                drop(value);
            }
            Ok(Command::Signin { user, .. }) => {
                let signed_in = session.user.as_ref().expect("signin sets the user");
                assert_eq!(&*signed_in.id, user.id.as_str());
            }
            Ok(Command::Ping | Command::Nothing | Command::Unsubscribe { .. }) | Err(_) => {}
        }

        let Ok(text) = std::str::from_utf8(frame) else { continue };
        if let Ok(member) = parse_presence_data(text, 128, 1024) {
            assert!(!member.user_id.is_empty() && member.user_id.chars().count() <= 128);
            assert!(member.user_info.as_ref().is_none_or(|i| i.len() <= 1024));
            assert_ne!(common::repeats_a_key(frame), Some(true));
        }
        if let Ok(user) = parse_user_data(text, 128, 1024, MAX_WATCHLIST) {
            assert!(!user.id.is_empty() && user.id.chars().count() <= 128);
            assert!(user.user_info.as_ref().is_none_or(|i| i.len() <= 1024));
            assert_ne!(common::repeats_a_key(frame), Some(true));
        }
    }
});

/// The one JSON policy: on a document serde_json reads, the key check
/// refuses exactly those with a repeated key.
fn policy(frame: &[u8]) {
    let checked = json::check_unique_keys(frame);
    if let Some(repeats) = common::repeats_a_key(frame) {
        assert_eq!(checked.is_err(), repeats, "check_unique_keys: {checked:?}");
    }
}
