//! The Prometheus text exposition format, version 0.0.4, of a [`Snapshot`].

use std::fmt::Write;

use crate::core::counters::{AppSnapshot, PlatformSnapshot, Snapshot};

/// A push counter: name, help, and how to read it per platform.
type PushMetric = (&'static str, &'static str, fn(&PlatformSnapshot) -> u64);

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A per-app metric: name, type, help, and how to read it.
type AppMetric = (&'static str, &'static str, &'static str, fn(&AppSnapshot) -> u64);

/// Renders every metric with its `# HELP` and `# TYPE` lines.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(4096 + s.apps.len() * 512);
    let per_app: [AppMetric; 7] = [
        ("stapes_connections", "gauge", "Pusher WebSocket connections open.", |a| a.connections()),
        (
            "stapes_connections_opened_total",
            "counter",
            "Pusher WebSocket connections that completed the handshake.",
            |a| a.opened,
        ),
        (
            "stapes_connections_closed_total",
            "counter",
            "Pusher WebSocket connections ended.",
            |a| a.closed,
        ),
        ("stapes_client_messages_total", "counter", "Frames received from Pusher clients.", |a| {
            a.messages_in
        }),
        (
            "stapes_deliveries_total",
            "counter",
            "Events written to subscribers, one per recipient.",
            |a| a.messages_out,
        ),
        ("stapes_delivered_bytes_total", "counter", "Bytes of the events delivered.", |a| {
            a.bytes_out
        }),
        (
            "stapes_slow_consumer_closes_total",
            "counter",
            "Connections closed with 4100 because they could not keep up.",
            |a| a.slow_closed,
        ),
    ];
    for (name, kind, help, get) in per_app {
        header(&mut out, name, kind, help);
        for app in &s.apps {
            let _ = writeln!(out, "{name}{{app=\"{}\"}} {}", escape(&app.id), get(app));
        }
    }
    header(
        &mut out,
        "stapes_shard_connections",
        "gauge",
        "WebSockets open per shard, Pusher and Incus.",
    );
    for (shard, n) in s.shard_connections.iter().enumerate() {
        let _ = writeln!(out, "stapes_shard_connections{{shard=\"{shard}\"}} {n}");
    }
    header(
        &mut out,
        "stapes_http_requests_total",
        "counter",
        "HTTP API responses by status class.",
    );
    for (i, n) in s.http.iter().enumerate() {
        let _ = writeln!(out, "stapes_http_requests_total{{status=\"{}xx\"}} {n}", i + 1);
    }
    if let Some(up) = s.redis {
        header(
            &mut out,
            "stapes_redis_connected",
            "gauge",
            "1 while the Redis bridge's pub/sub connection is up and subscribed (only with redis:).",
        );
        let _ = writeln!(out, "stapes_redis_connected {}", u8::from(up));
    }
    let i = &s.incus;
    let c = &s.cluster;
    let single: [(&str, &str, &str, u64); 25] = [
        (
            "stapes_http_sessions",
            "gauge",
            "pusher-js HTTP-transport sessions (xhr_streaming, xhr_polling) open.",
            s.http_sessions_opened.saturating_sub(s.http_sessions_closed),
        ),
        (
            "stapes_http_sessions_opened_total",
            "counter",
            "pusher-js HTTP-transport sessions opened.",
            s.http_sessions_opened,
        ),
        (
            "stapes_http_sessions_expired_total",
            "counter",
            "HTTP-transport sessions closed because no request of theirs was open for the timeout.",
            s.http_sessions_expired,
        ),
        (
            "stapes_connections_refused_total",
            "counter",
            "Connections refused for want of room (file limit or server.max_connections).",
            s.refused,
        ),
        (
            "stapes_write_timeouts_total",
            "counter",
            "Connections closed because the peer took nothing for the write timeout.",
            s.write_timeouts,
        ),
        (
            "stapes_webhook_events_dropped_total",
            "counter",
            "Webhook events dropped: the webhook thread's ring was full.",
            s.webhooks_dropped,
        ),
        (
            "stapes_redis_events_total",
            "counter",
            "Pusher events taken from Redis.",
            s.redis_pusher_events,
        ),
        (
            "stapes_redis_event_handoffs_total",
            "counter",
            "Channel events from Redis handed to a shard: one per channel per shard with subscribers to it.",
            s.redis_pusher_handoffs,
        ),
        (
            "stapes_redis_events_refused_total",
            "counter",
            "Pusher events from Redis refused as invalid.",
            s.redis_pusher_refused,
        ),
        (
            "stapes_redis_shed_total",
            "counter",
            "Redis events or commands dropped because a shard was too far behind.",
            s.redis_shed,
        ),
        (
            "stapes_cluster_events_published_total",
            "counter",
            "Events this node published for the other nodes of its cluster.",
            c.published,
        ),
        (
            "stapes_cluster_events_received_total",
            "counter",
            "Events from other nodes handed to this node's subscribers.",
            c.received,
        ),
        (
            "stapes_cluster_messages_refused_total",
            "counter",
            "Messages on the cluster's Redis channels that no stapes node of this version sent.",
            c.refused,
        ),
        (
            "stapes_cluster_redis_errors_total",
            "counter",
            "Cluster commands that Redis refused or lost the connection for.",
            c.redis_errors,
        ),
        (
            "stapes_cluster_events_dropped_total",
            "counter",
            "Events for other nodes dropped while Redis was away (too many kept).",
            c.dropped,
        ),
        (
            "stapes_cluster_nodes_swept_total",
            "counter",
            "Silent nodes this node took out of the cluster's view.",
            c.nodes_swept,
        ),
        ("stapes_incus_sockets", "gauge", "Incus /socket clients connected.", i.sockets()),
        (
            "stapes_incus_websocket_connects_total",
            "counter",
            "Incus /socket WebSockets upgraded.",
            i.ws_connect,
        ),
        (
            "stapes_incus_websocket_disconnects_total",
            "counter",
            "Incus /socket WebSockets ended.",
            i.ws_disconnect,
        ),
        (
            "stapes_incus_longpoll_connects_total",
            "counter",
            "Incus long-polls accepted.",
            i.lp_connect,
        ),
        (
            "stapes_incus_longpoll_disconnects_total",
            "counter",
            "Incus long-polls ended.",
            i.lp_disconnect,
        ),
        (
            "stapes_incus_reads_total",
            "counter",
            "Incus client commands decoded (sockets and polls).",
            i.read,
        ),
        (
            "stapes_incus_writes_total",
            "counter",
            "Incus messages written to sockets or polls.",
            i.write,
        ),
        (
            "stapes_incus_json_errors_total",
            "counter",
            "Incus commands from Redis that did not parse.",
            i.json_errors,
        ),
        (
            "stapes_incus_client_refused_total",
            "counter",
            "Incus client commands refused: malformed (not JSON, a repeated key), or a client's envelope naming a backend command.",
            i.client_refused,
        ),
    ];
    for (name, kind, help, value) in single {
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    header(
        &mut out,
        "stapes_incus_commands_total",
        "counter",
        "Incus commands handled, by source.",
    );
    let _ = writeln!(out, "stapes_incus_commands_total{{from=\"websocket\"}} {}", i.read);
    let _ = writeln!(out, "stapes_incus_commands_total{{from=\"redis\"}} {}", i.redis_commands);
    let push: [PushMetric; 7] = [
        (
            "stapes_push_sent_total",
            "Notifications the push service accepted, one per token.",
            |p| p.sent,
        ),
        ("stapes_push_failed_total", "Notifications that failed for good, one per token.", |p| {
            p.failed
        }),
        ("stapes_push_retried_total", "Push tries repeated after 429, 5xx or a timeout.", |p| {
            p.retried
        }),
        (
            "stapes_push_refused_total",
            "Push commands refused before sending (bad input, platform off).",
            |p| p.refused,
        ),
        ("stapes_push_dropped_total", "Push jobs dropped because the push queue was full.", |p| {
            p.dropped
        }),
        ("stapes_push_reported_total", "Entries written to the Redis error lists.", |p| p.reported),
        (
            "stapes_push_unreported_total",
            "Error-list entries that could not be written to Redis.",
            |p| p.unreported,
        ),
    ];
    for (name, help, get) in push {
        header(&mut out, name, "counter", help);
        for (platform, p) in [("ios", &i.ios), ("android", &i.android)] {
            let _ = writeln!(out, "{name}{{platform=\"{platform}\"}} {}", get(p));
        }
    }
    header(&mut out, "stapes_incus_messages_total", "counter", "Incus messages routed, by target.");
    for (target, n) in [("all", i.message_all), ("user", i.message_user), ("page", i.message_page)]
    {
        let _ = writeln!(out, "stapes_incus_messages_total{{target=\"{target}\"}} {n}");
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::counters::Metrics;

    #[test]
    fn renders_help_type_and_app_labels() {
        let m = Metrics::new(vec!["1".into(), "we\"ird\\".into()], 2);
        m.shard(0).app(0).opened.add(3);
        m.shard(1).app(0).opened.add(2);
        m.shard(1).app(0).closed.inc();
        m.shard(0).app(1).messages_out.add(7);
        m.shard(1).http_response(401);
        m.shard(0).incus.ws_connect.add(2);
        m.bridge().incus_commands.inc();
        let text = render(&m.snapshot());
        let lines: Vec<&str> = text.lines().collect();
        for line in [
            "# HELP stapes_connections Pusher WebSocket connections open.",
            "# TYPE stapes_connections gauge",
            "stapes_connections{app=\"1\"} 4",
            "stapes_connections_opened_total{app=\"1\"} 5",
            "stapes_deliveries_total{app=\"we\\\"ird\\\\\"} 7",
            "# TYPE stapes_http_requests_total counter",
            "stapes_http_requests_total{status=\"4xx\"} 1",
            "stapes_http_requests_total{status=\"2xx\"} 0",
            "stapes_incus_sockets 2",
            "stapes_shard_connections{shard=\"0\"} 5",
            "stapes_shard_connections{shard=\"1\"} 1",
            "stapes_incus_commands_total{from=\"redis\"} 1",
        ] {
            assert!(lines.contains(&line), "missing {line:?} in\n{text}");
        }
        // Every sample belongs to a metric declared just before it.
        let mut declared = Vec::new();
        for line in &lines {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap_or_default().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                assert_eq!(declared.last().map(String::as_str), Some(name), "{line}");
            }
        }
        assert!(text.ends_with('\n'));
    }
}
