//! Incus envelopes from Redis (`proto::incus::command::parse`): the JSON
//! policy, the case-insensitive keys, client-marked envelopes, and what the
//! bridge's router makes of each command (`ShardRouter`: deliveries, push
//! jobs, `pushormessage` checks).
//!
//! Input: one payload as it arrives from the Incus channel or list.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use stapes::proto::incus::{
    IncusMsg,
    command::{ClientMessage, Envelope, IncusKind, IncusRouter, IncusSource, ShardRouter, parse},
    push::{APNS_MAX_PAYLOAD, PushRules, Send},
};

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = parse(&mut data.to_vec()) else { return };
    assert_ne!(common::repeats_a_key(data), Some(true), "accepted a repeated key");
    // A client's message, or a backend's, published again for the other
    // nodes reads back as the same client message.
    let client = match &envelope {
        Envelope::Client(message) => Some(message.clone()),
        Envelope::Backend(command) if command.kind == IncusKind::Message => {
            ClientMessage::from_command(command.clone())
        }
        Envelope::Backend(_) => None,
    };
    if let Some(message) = client {
        match parse(&mut message.encode().into_bytes()) {
            Ok(Envelope::Client(back)) => assert_eq!(back, message, "republish round trip"),
            other => panic!("republished message read back as {other:?}"),
        }
    }

    let rules = PushRules {
        apns_builds: Some(vec!["store".into(), "dev".into()]),
        fcm: true,
        sound: "default".into(),
        apns_push_type: "alert".into(),
        apns_priority: 10,
        apns_expiration_secs: 3600,
    };
    for source in [IncusSource::Channel, IncusSource::Queue] {
        let mut router = ShardRouter::new(2, rules.clone());
        let mut sent = Vec::new();
        router.route(envelope.clone(), source, 1_700_000_000, &mut |to, msg| sent.push((to, msg)));
        for (to, msg) in &sent {
            assert!(*to < 2);
            if let IncusMsg::Deliver { delivery, .. } = msg {
                common::check_delivery(delivery);
            }
        }
        let mut pushes = router.take_pushes();
        for check in router.take_checks() {
            assert!(!check.user.is_empty());
            if let Some(delivery) = &check.websocket {
                common::check_delivery(delivery);
            }
            if let Some(republish) = &check.republish {
                let back = parse(&mut republish.clone().into_bytes());
                let user = Some(&*check.user);
                let ok = matches!(&back, Ok(Envelope::Backend(c))
                    if c.kind == IncusKind::Message && c.user.as_deref() == user);
                assert!(ok, "republished {republish:?} read back as {back:?}");
            }
            pushes.extend(check.pushes);
        }
        for job in pushes.into_iter().flatten() {
            match &job.send {
                Send::Ios(push) => {
                    assert!(push.payload.len() <= APNS_MAX_PAYLOAD, "APNs payload too large");
                    let _: serde_json::Value =
                        serde_json::from_str(&push.payload).expect("APNs payload is JSON");
                    assert!(push.token.bytes().all(|b| b.is_ascii_hexdigit()));
                }
                Send::Android(push) => {
                    assert!(!push.registration_ids.is_empty());
                    let _: serde_json::Value =
                        serde_json::from_str(&push.data).expect("FCM data is JSON");
                }
            }
        }
    }
});
