//! Hot sans-IO protocol paths: subscription auth checks, trigger body parsing
//! (simd-json against serde_json), HTTP request signature checks and the
//! framing of what is sent.
//!
//! Kept short (small samples, 1 s measurement) so the whole file runs in
//! well under a minute: `cargo bench --bench protocol`.

use std::{hint::black_box, time::Duration};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use simd_json::Buffers;
use stapes::core::SocketId;
use stapes::proto::{
    pusher::{auth, messages},
    rest::{events, events::Limits, signature, signature::SignedRequest},
};

const KEY: &str = "278d425bdf160c739803";
const SECRET: &str = "7ad3773142a6692b25b8";
const SOCKET: &str = "1234.1234";

fn quick<'c>(
    c: &'c mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    g
}

fn auth_hmac(c: &mut Criterion) {
    let mut g = quick(c, "auth_hmac");
    let private_auth = format!("{KEY}:{}", auth::sign(SECRET, b"1234.1234:private-foobar"));
    g.bench_function("private", |b| {
        b.iter(|| {
            auth::verify_channel(
                KEY,
                SECRET,
                black_box(SOCKET),
                black_box("private-foobar"),
                None,
                black_box(&private_auth),
            )
        })
    });
    // About 200 bytes of channel_data, a typical presence payload.
    let data = format!(
        r#"{{"user_id":"user-4711","user_info":{{"name":"Ada Lovelace","avatar":"https://example.com/a/4711.png","role":"moderator","team":"{}"}}}}"#,
        "x".repeat(70)
    );
    assert!((190..=230).contains(&data.len()), "{}", data.len());
    let presence_auth = format!(
        "{KEY}:{}",
        auth::sign(SECRET, format!("{SOCKET}:presence-room:{data}").as_bytes())
    );
    g.bench_function("presence_200B", |b| {
        b.iter(|| {
            auth::verify_channel(
                KEY,
                SECRET,
                black_box(SOCKET),
                black_box("presence-room"),
                Some(black_box(&data)),
                black_box(&presence_auth),
            )
        })
    });
    g.finish();
}

/// A trigger body of about `size` bytes whose `data` is a JSON-encoded list
/// of small objects, as the SDKs send it (so the string is full of escapes).
fn trigger_body(size: usize) -> Vec<u8> {
    let build = |items: usize| {
        let inner: Vec<serde_json::Value> = (0..items)
            .map(|i| serde_json::json!({ "id": i, "author": "ada", "text": "hello there" }))
            .collect();
        serde_json::json!({
            "name": "message-created",
            "channels": ["private-chat-42", "presence-room-42"],
            "socket_id": "1234.5678",
            "data": serde_json::Value::Array(inner).to_string(),
        })
        .to_string()
        .into_bytes()
    };
    let mut items = 0;
    while build(items + 1).len() <= size {
        items += 1;
    }
    build(items)
}

fn trigger_parse(c: &mut Criterion) {
    let mut g = quick(c, "trigger_parse");
    let limits = Limits::default();
    for (label, size) in [("200B", 200), ("2KB", 2048), ("10KB", 10_000)] {
        let body = trigger_body(size);
        assert!(events::parse_trigger_json(&body, &limits).is_ok(), "{label}");
        // Within 20% of the nominal size.
        assert!(body.len().abs_diff(size) * 5 <= size, "{label}: {} bytes", body.len());
        // Every decoder gets a fresh copy, as simd-json must (it rewrites
        // its input): a warm buffer against a cold one would flatter serde.
        g.bench_function(format!("serde_json/{label}"), |b| {
            b.iter_batched_ref(
                || body.clone(),
                |body| events::parse_trigger_json(body, &limits),
                BatchSize::SmallInput,
            )
        });
        let mut buffers = Buffers::default();
        g.bench_function(format!("simd_json_buffers/{label}"), |b| {
            b.iter_batched_ref(
                || body.clone(),
                |body| events::parse_trigger_with(body, &limits, &mut buffers),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("parse_trigger/{label}"), |b| {
            b.iter_batched_ref(
                || body.clone(),
                |body| events::parse_trigger(body, &limits),
                BatchSize::SmallInput,
            )
        });
    }
    // Contrast: a 10 KB `data` with almost no escapes (one long string).
    let text = "y".repeat(10_000);
    let inner = serde_json::json!({ "text": text }).to_string();
    let plain = serde_json::json!({ "name": "e", "channel": "c", "data": inner }).to_string();
    let plain = plain.into_bytes();
    // Fresh copies for both, as for parse_trigger (which rewrites its
    // input): reading a warm buffer against a cold one would flatter serde.
    g.bench_function("serde_json/10KB_plain", |b| {
        b.iter_batched_ref(
            || plain.clone(),
            |body| events::parse_trigger_json(body, &limits),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("parse_trigger/10KB_plain", |b| {
        b.iter_batched_ref(
            || plain.clone(),
            |body| events::parse_trigger(body, &limits),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn rest_signature(c: &mut Criterion) {
    let mut g = quick(c, "rest_signature");
    // The worked vector of spec §12.2.
    let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    let query = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
                 &body_md5=ec365a775a4cd0599faeb73354201b6f\
                 &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
    let req = SignedRequest { method: "POST", path: "/apps/3/events", query, body };
    assert!(signature::verify(&req, KEY, SECRET, 1353088179).is_ok());
    g.bench_function("verify_12_2_vector", |b| {
        b.iter(|| signature::verify(black_box(&req), KEY, SECRET, 1353088179))
    });
    g.finish();
}

/// Framing what a connection and a publish send: the JSON written and
/// escaped into the WebSocket frame every subscriber shares.
fn frames(c: &mut Criterion) {
    let mut g = quick(c, "frames");
    g.bench_function("connection_established", |b| {
        b.iter(|| {
            messages::connection_established(black_box(SocketId { hi: 123_456, lo: 789 }), 120)
        })
    });
    // An event's `data` is JSON text, so its quotes are escaped.
    for size in [100, 10_000] {
        let data = format!(r#"{{"message":"{}"}}"#, "hello world ".repeat(size / 12));
        g.bench_function(format!("channel_event_{size}B"), |b| {
            b.iter(|| {
                messages::channel_event("my-event", black_box("my-channel"), black_box(&data))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, auth_hmac, trigger_parse, rest_signature, frames);
criterion_main!(benches);
