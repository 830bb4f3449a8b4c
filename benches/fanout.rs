//! One publish fanned out to N in-process subscribers spread over two
//! shards: the local half written into outboxes directly, the other half
//! carried by a real SPSC ring to the second shard's state, as on the
//! server. Reported as deliveries per second (criterion "elements").
//!
//! Run: `cargo bench --bench fanout`

#![allow(clippy::disallowed_methods)]

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stapes::{
    config::AppConfig,
    core::Apps,
    io::rings,
    proto::{
        index::ConnKey,
        pusher::shard::{Settings, Shard},
    },
};

struct Setup {
    shards: [Shard; 2],
    keys: [Vec<ConnKey>; 2],
    links: Vec<rings::ShardLinks>,
}

fn setup(subscribers: usize) -> Setup {
    let apps = Arc::new(Apps::new(vec![Arc::new(AppConfig::new("1", "key", "secret"))]));
    let settings = Settings {
        activity_timeout: Duration::from_secs(120),
        pong_timeout: Duration::from_secs(30),
        max_outbox_bytes: 1 << 20,
        cluster: false,
    };
    let now = Instant::now();
    let mut shards = [
        Shard::new(0, 2, Arc::clone(&apps), settings.clone()),
        Shard::new(1, 2, Arc::clone(&apps), settings),
    ];
    let mut keys = [Vec::new(), Vec::new()];
    for i in 0..subscribers {
        let s = i % 2;
        let key = shards[s].open(i as u32, 0, now, None);
        shards[s].handle_text(
            key,
            br#"{"event":"pusher:subscribe","data":{"channel":"bench"}}"#,
            now,
        );
        keys[s].push(key);
    }
    let (links, _) = rings::build(2, 0);
    let mut setup = Setup { shards, keys, links };
    drain(&mut setup);
    setup
}

/// Empties every outbox the way the event loop's writes would, taking the
/// dirty list too, so that each publish lists its subscribers afresh.
fn drain(setup: &mut Setup) {
    let mut dirty = Vec::new();
    for s in 0..2 {
        setup.shards[s].take_dirty(&mut dirty);
        for &key in &setup.keys[s] {
            if let Some(outbox) = setup.shards[s].outbox(key) {
                outbox.unlist();
                let n = outbox.queued_bytes();
                outbox.consume(n);
            }
        }
    }
}

fn publish_once(setup: &mut Setup, data: &str) {
    let [a, b] = &mut setup.shards;
    a.publish(0, "bench", "tick", data, None, Instant::now());
    let mut outlet = setup.links[0].outlets[1].take();
    if let Some(out) = outlet.as_mut() {
        // Unsettled: the Deliver crosses whatever shard 1 said.
        a.drain_mesh_out(false, |_, msg| out.push(msg));
        out.flush();
    }
    setup.links[0].outlets[1] = outlet;
    setup.links[1].inlets.drain(usize::MAX, |msg| b.handle_mesh(msg));
}

fn fanout(c: &mut Criterion) {
    let data = "x".repeat(100);
    let mut group = c.benchmark_group("fanout");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for subscribers in [1_000usize, 10_000] {
        let mut setup = setup(subscribers);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(
            format!("publish_100B_to_{subscribers}_subscribers_2_shards"),
            |bench| {
                bench.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        publish_once(&mut setup, black_box(&data));
                        spent += start.elapsed();
                        drain(&mut setup);
                    }
                    spent
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
