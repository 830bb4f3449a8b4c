//! HTTP API bodies (`proto::rest::events`): `POST /events` and
//! `/batch_events` JSON through both decoders (simd-json in place, as
//! served, and serde_json), and the query strings of the channel endpoints
//! (`proto::rest::channels`).
//!
//! Input: a byte choosing the limits, then the body.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use stapes::proto::{
    pusher::channel,
    rest::{
        channels::{parse_channel, parse_list, parse_users},
        events::{
            Limits, Trigger, parse_batch, parse_batch_json, parse_trigger, parse_trigger_json,
        },
    },
};

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let limits = if which & 1 == 0 {
        Limits::default()
    } else {
        // Small limits, so that the fuzzer reaches each boundary.
        Limits {
            max_event_bytes: usize::from(which >> 1),
            max_channels: 3,
            max_batch: 2,
            max_name_chars: 8,
            max_channel_name_chars: 12,
        }
    };
    // Whether serde_json reads the body as plain JSON (no nesting or number
    // beyond its limits): then both decoders must read it the same way.
    let plain = common::repeats_a_key(body).is_some();

    let simd = parse_trigger(&mut body.to_vec(), &limits);
    let serde = parse_trigger_json(body, &limits);
    agree(&simd, &serde, plain);
    if let Ok(trigger) = &simd {
        check(trigger, &limits, false);
    }

    let simd = parse_batch(&mut body.to_vec(), &limits);
    let serde = parse_batch_json(body, &limits);
    agree(&simd, &serde, plain);
    if let Ok(batch) = &simd {
        assert!(batch.len() <= limits.max_batch, "batch over the limit");
        for trigger in batch {
            check(trigger, &limits, true);
        }
    }

    let Ok(text) = std::str::from_utf8(body) else { return };
    if let Ok(list) = parse_list(text) {
        assert!(!list.info.cache);
        assert!(!list.info.user_count || list.prefix.starts_with("presence-"));
    }
    let (name, query) = text.split_once('?').unwrap_or((text, ""));
    if let Ok((presence, info)) = parse_channel(name, query, 200) {
        let flags = channel::validate(name, 200).expect("a valid channel");
        assert_eq!(presence, flags.kind == channel::ChannelKind::Presence);
        assert!(!(info.user_count && info.subscription_count));
    }
    if parse_users(name, 200).is_ok() {
        assert_eq!(channel::classify(name).kind, channel::ChannelKind::Presence);
    }
});

fn agree<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug>(
    simd: &Result<T, E>,
    serde: &Result<T, E>,
    plain: bool,
) {
    match (simd, serde) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the decoders read different events"),
        (Err(_), Err(_)) => {}
        (a, b) if plain => panic!("the decoders disagree on plain JSON: {a:?} vs {b:?}"),
        _ => {}
    }
}

fn check(trigger: &Trigger, limits: &Limits, in_batch: bool) {
    assert!(trigger.data.len() <= limits.max_event_bytes, "data over the limit");
    let n = trigger.channels.len();
    assert!(n >= 1 && n <= limits.max_channels, "{n} channels");
    assert!(!in_batch || n == 1, "a batch event with {n} channels");
    for (i, name) in trigger.channels.iter().enumerate() {
        assert!(channel::validate(name, limits.max_channel_name_chars).is_ok(), "{name:?}");
        assert!(!trigger.channels[..i].contains(name), "channel {name:?} twice");
    }
    if let Some(id) = &trigger.socket_id {
        let (a, b) = id.split_once('.').expect("digits.digits");
        assert!(!a.is_empty() && !b.is_empty());
        assert!(a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()));
    }
}
