//! Pusher events that backends publish on Redis
//! (`proto::redis::pusher::parse`): the JSON policy, the app, the same
//! checks as the HTTP API, and one frame per channel.
//!
//! Input: one payload as it arrives from Redis.
#![no_main]

mod common;

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use simd_json::Buffers;
use stapes::proto::{
    msg::ShardMsg,
    pusher::{channel, messages::channel_event_parts},
    redis::pusher::parse,
};

fuzz_target!(|data: &[u8]| {
    let apps = common::apps();
    let mut buffers = Buffers::default();
    let Ok(publish) = parse(&mut data.to_vec(), &apps, &mut buffers) else { return };
    assert_ne!(common::repeats_a_key(data), Some(true), "published a repeated key");
    assert!(apps.get(publish.app).enabled, "published for a disabled app");
    let n = publish.frames.len();
    assert!(n >= 1 && n <= 100, "{n} channels");
    let mut event_name = None;
    for (i, (name, frame)) in publish.frames.iter().enumerate() {
        assert!(!publish.frames[..i].iter().any(|(other, _)| other == name), "{name:?} twice");
        assert!(channel::validate(name, 200).is_ok(), "invalid channel {name:?}");
        let payload = common::server_text_payload(frame).expect("one text frame");
        let json: serde_json::Value = serde_json::from_slice(payload).expect("the frame is JSON");
        assert_eq!(json["channel"].as_str(), Some(&**name), "frame for another channel");
        let (event, data) = channel_event_parts(frame).expect("event and data read back");
        assert!(data.len() <= apps.get(publish.app).max_event_bytes, "data over the limit");
        // One event, framed once per channel.
        assert_eq!(event_name.get_or_insert_with(|| event.clone()), &event);
    }
    // Each plain channel reaches every shard that holds it (here all or
    // none); a cache channel only its owner, whoever holds it.
    let at = Instant::now();
    for (shards, held) in [(1, true), (3, true), (3, false)] {
        let mut caches = 0;
        let mut delivers = 0;
        for shard in 0..shards {
            for msg in publish.messages(shard, shards, at, |_| held) {
                match msg {
                    ShardMsg::Deliver { .. } => delivers += 1,
                    ShardMsg::CachePublish { .. } => caches += 1,
                    _ => panic!("unexpected message"),
                }
            }
        }
        let cached = publish.frames.iter().filter(|(c, _)| channel::classify(c).cache).count();
        assert_eq!(caches, cached);
        assert_eq!(delivers, if held { (n - cached) * shards } else { 0 });
    }
});
