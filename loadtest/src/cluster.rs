//! What a run over several nodes sharing one Redis measures beyond a
//! single node: Redis's own counters (`INFO commandstats`, `INFO cpu`),
//! each node's `stapes_cluster_events_received_total`, and how many events
//! each node should have received, from the layout of the subscribers.

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::worker::node_of;

/// Redis's counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct RedisStats {
    /// Calls per command (`cmdstat_<name>`), the `INFO` calls themselves left out.
    pub calls: Vec<(String, u64)>,
    /// `used_cpu_sys + used_cpu_user`, seconds.
    pub cpu_secs: f64,
}

impl RedisStats {
    /// Reads them over a fresh connection (one `INFO` per section).
    pub async fn read(addr: &str) -> Result<RedisStats, String> {
        let mut stream =
            TcpStream::connect(addr).await.map_err(|e| format!("redis {addr}: {e}"))?;
        let commands = info(&mut stream, "commandstats").await?;
        let cpu = info(&mut stream, "cpu").await?;
        Ok(RedisStats { calls: parse_commandstats(&commands), cpu_secs: parse_cpu(&cpu) })
    }

    /// Calls per command since `before`, most first, zeros left out.
    pub fn since(&self, before: &RedisStats) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .calls
            .iter()
            .map(|(name, n)| {
                let was = before.calls.iter().find(|(b, _)| b == name).map_or(0, |(_, m)| *m);
                (name.clone(), n.saturating_sub(was))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

/// One `INFO section` over RESP; the bulk string's text.
async fn info(stream: &mut TcpStream, section: &str) -> Result<String, String> {
    let req = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
    stream.write_all(req.as_bytes()).await.map_err(|e| format!("redis write: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .strip_prefix('$')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("redis answered {head}"))?;
            if buf.len() >= end + 2 + len + 2 {
                return Ok(String::from_utf8_lossy(&buf[end + 2..end + 2 + len]).into_owned());
            }
        }
        if stream.read_buf(&mut buf).await.map_err(|e| format!("redis read: {e}"))? == 0 {
            return Err("redis closed the connection".into());
        }
    }
}

/// `cmdstat_publish:calls=12,usec=…` lines; `info` itself is left out,
/// since the measurement makes those calls.
pub fn parse_commandstats(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            (name != "info").then(|| (name.to_string(), calls))
        })
        .collect()
}

/// `used_cpu_sys` + `used_cpu_user`, seconds (children's left out).
pub fn parse_cpu(text: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim_end().split_once(':')?;
            matches!(k, "used_cpu_sys" | "used_cpu_user").then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

/// A node's `stapes_cluster_events_received_total` (`GET /metrics`).
pub async fn events_received(host: &str, port: u16) -> Result<u64, String> {
    let mut stream =
        TcpStream::connect((host, port)).await.map_err(|e| format!("metrics {port}: {e}"))?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.map_err(|e| format!("metrics write: {e}"))?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await.map_err(|e| format!("metrics read: {e}"))?;
    metric(&String::from_utf8_lossy(&body), "stapes_cluster_events_received_total")
        .ok_or_else(|| format!("node on {port}: no stapes_cluster_events_received_total"))
}

/// The value of an unlabelled counter in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse::<f64>().ok().map(|v| v as u64))?
    })
}

/// How many cluster events each node should receive when `published`
/// events go round `channels` channels (event `s` to channel `s %
/// channels`, as the publishers send them) from node 0, with `connections`
/// subscribers laid out by [`node_of`]: a node receives an event from
/// another node exactly when it has a subscriber to its channel, and
/// counts none of its own.
pub fn expected_received(
    connections: usize,
    channels: usize,
    nodes: usize,
    pin_every: usize,
    published: u64,
) -> Vec<u64> {
    let channels = channels.max(1);
    // on[c][i]: channel c has a subscriber on node i.
    let mut on = vec![vec![false; nodes]; channels];
    for g in 0..connections {
        on[g % channels][node_of(g, channels, nodes, pin_every)] = true;
    }
    let mut out = vec![0u64; nodes];
    for (c, here) in on.iter().enumerate() {
        let c = c as u64;
        // Events s < published with s % channels == c.
        let n = if published > c { (published - c).div_ceil(channels as u64) } else { 0 };
        for (i, &has) in here.iter().enumerate().skip(1) {
            if has {
                out[i] += n;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_info_sections() {
        let stats = "# Commandstats\r\ncmdstat_publish:calls=30,usec=60,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=4,usec=1\r\ncmdstat_evalsha:calls=2,usec=9\r\n";
        assert_eq!(
            parse_commandstats(stats),
            vec![("publish".to_string(), 30), ("evalsha".to_string(), 2)]
        );
        let cpu = "# CPU\r\nused_cpu_sys:1.25\r\nused_cpu_user:0.5\r\nused_cpu_sys_children:9\r\n";
        assert!((parse_cpu(cpu) - 1.75).abs() < 1e-9);
        let a = RedisStats { calls: vec![("publish".into(), 10)], cpu_secs: 0.0 };
        let b = RedisStats {
            calls: vec![("publish".into(), 25), ("ping".into(), 0), ("evalsha".into(), 3)],
            cpu_secs: 0.0,
        };
        assert_eq!(b.since(&a), vec![("publish".to_string(), 15), ("evalsha".to_string(), 3)]);
    }

    #[test]
    fn reads_a_counter() {
        let text = "# TYPE stapes_cluster_events_received_total counter\nstapes_cluster_events_received_total 42\nstapes_cluster_events_received_total_x 1\n";
        assert_eq!(metric(text, "stapes_cluster_events_received_total"), Some(42));
        assert_eq!(metric(text, "missing"), None);
    }

    #[test]
    fn fanout_over_three_nodes_reaches_both_others() {
        // One channel, subscribers on every node: each other node gets every event.
        assert_eq!(expected_received(9, 1, 3, 0, 100), vec![0, 100, 100]);
        // Two subscribers: nodes 0 and 1 only.
        assert_eq!(expected_received(2, 1, 3, 0, 100), vec![0, 100, 0]);
    }

    #[test]
    fn pinned_channels_reach_only_their_node() {
        // 4 channels x 3 subscribers, every 2nd channel pinned: channel 0
        // on node 0, channel 2 on node 1; channels 1 and 3 on every node.
        for g in 0..12 {
            let c = g % 4;
            let node = node_of(g, 4, 3, 2);
            match c {
                0 => assert_eq!(node, 0),
                2 => assert_eq!(node, 1),
                _ => assert_eq!(node, g / 4),
            }
        }
        // 10 events: channels 0,1 get 3 each, channels 2,3 get 2 each.
        // Node 1: channels 1, 2, 3 = 3 + 2 + 2; node 2: channels 1, 3.
        assert_eq!(expected_received(12, 4, 3, 2, 10), vec![0, 7, 5]);
    }
}
