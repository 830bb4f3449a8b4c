//! `deploy/grafana/stapes.json` and `deploy/prometheus/stapes-alerts.yml`
//! use only metrics stapes exports: every metric name in every query is
//! one that the real renderer (`GET /metrics`) writes a `# TYPE` line for,
//! so a metric renamed or removed in stapes fails here until the dashboard
//! and the alerts follow.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use serde_json::Value;
use stapes::{core::counters::Metrics, io::metrics::prometheus};

/// Series that Prometheus makes itself for every scrape target.
const PROMETHEUS_OWN: [&str; 1] = ["up"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The metric names `GET /metrics` declares, from the renderer itself.
fn exported() -> BTreeSet<String> {
    let metrics = Metrics::new(vec!["1".into()], 2);
    // With Redis configured, as the dashboards and alerts assume: the
    // Redis gauge is rendered only then.
    let mut snapshot = metrics.snapshot();
    snapshot.redis = Some(true);
    let text = prometheus::render(&snapshot);
    let names: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    assert!(names.contains("stapes_connections"), "{text}");
    names
}

/// The metric names a PromQL expression selects: identifiers outside
/// strings, label matchers and ranges, that are neither functions
/// (followed by `(`), aggregations nor keywords, nor in the label lists of
/// `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`.
fn metric_names(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    let skip_to = |i: &mut usize, close: u8| {
        while *i < b.len() && b[*i] != close {
            // A quoted value inside a matcher may hold the closing byte.
            if matches!(b[*i], b'"' | b'\'' | b'`') {
                let q = b[*i];
                *i += 1;
                while *i < b.len() && b[*i] != q {
                    *i += if b[*i] == b'\\' { 2 } else { 1 };
                }
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'{' => skip_to(&mut i, b'}'),
            b'[' => skip_to(&mut i, b']'),
            b'0'..=b'9' | b'.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            b'$' => {
                // A Grafana variable.
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let mut j = i;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let call = j < b.len() && b[j] == b'(';
                match word {
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right" => {
                        if call {
                            i = j;
                            skip_to(&mut i, b')');
                        }
                    }
                    "and" | "or" | "unless" | "bool" | "offset" => {}
                    // Aggregations, which may take `by (…)` before their `(`.
                    "sum" | "min" | "max" | "avg" | "group" | "stddev" | "stdvar" | "count"
                    | "count_values" | "bottomk" | "topk" | "quantile" | "limitk"
                    | "limit_ratio" => {}
                    _ if call => {}
                    _ => names.push(word.to_owned()),
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn the_name_extractor_finds_metrics_and_only_metrics() {
    let names = metric_names(
        r#"sum by (app, instance) (rate(a_total{x="}",y=~"$v"}[$__rate_interval])) / on(instance) group_left(app) b offset 5m > 0.2 or c_total and bool up"#,
    );
    assert_eq!(names, ["a_total", "b", "c_total", "up"]);
    assert_eq!(
        metric_names("label_values(stapes_connections, instance)"),
        ["stapes_connections", "instance"]
    );
}

/// Every PromQL query of the dashboard: panel targets (rows included) and
/// the templating queries, whose `label_values(metric, label)` names a
/// metric and then a label.
fn dashboard_queries(dash: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "expr"
                        && let Some(s) = v.as_str()
                    {
                        out.push(s.to_owned());
                    }
                    walk(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    for var in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            let inner = q.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).unwrap();
            let (metric, _label) = inner.rsplit_once(',').unwrap();
            out.push(metric.to_owned());
        }
    }
    out
}

fn check_names(what: &str, queries: &[String], exported: &BTreeSet<String>) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for q in queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "{what}: no metric in {q}");
        for name in names {
            assert!(
                exported.contains(&name) || PROMETHEUS_OWN.contains(&name.as_str()),
                "{what}: {name} is not a metric stapes exports (in {q})"
            );
            used.insert(name);
        }
    }
    used
}

#[test]
fn the_dashboard_uses_only_exported_metrics() {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/stapes.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let queries = dashboard_queries(&dash);
    let used = check_names("stapes.json", &queries, &exported());
    // What an operator looks at first is there.
    for name in [
        "stapes_connections",
        "stapes_shard_connections",
        "stapes_client_messages_total",
        "stapes_deliveries_total",
        "stapes_webhook_events_dropped_total",
        "stapes_redis_shed_total",
        "stapes_redis_events_total",
        "stapes_push_sent_total",
        "stapes_push_failed_total",
        "stapes_http_requests_total",
    ] {
        assert!(used.contains(name), "the dashboard shows no {name}");
    }
    // A dashboard Grafana imports: unique panel ids, within the 24-column
    // grid, every query on the chosen data source.
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id repeated: {p}");
        let g = &p["gridPos"];
        assert!(g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24, "{p}");
        if p["type"] != "row" {
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{p}");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{p}");
            }
        }
    }
    assert_eq!(dash["uid"], "stapes-overview");
}

#[test]
fn the_alerts_use_only_exported_metrics() {
    let path = repo().join("deploy/prometheus/stapes-alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rules: Value = serde_saphyr::from_str(&text).unwrap();
    let mut queries = Vec::new();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            assert!(alerts.insert(name.to_owned()), "alert {name} twice");
            assert!(
                ["critical", "warning"].contains(&rule["labels"]["severity"].as_str().unwrap()),
                "{name}"
            );
            for key in ["summary", "description"] {
                assert!(rule["annotations"][key].as_str().is_some_and(|s| !s.is_empty()), "{name}");
            }
            queries.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    let used = check_names("stapes-alerts.yml", &queries, &exported());
    // The conditions that need a human: drops, push failures, the node down.
    for name in [
        "up",
        "stapes_webhook_events_dropped_total",
        "stapes_redis_shed_total",
        "stapes_push_dropped_total",
        "stapes_push_failed_total",
    ] {
        assert!(used.contains(name), "no alert on {name}");
    }
    // Where Prometheus's own checker is installed, it parses every rule.
    match Command::new("promtool").arg("check").arg("rules").arg(&path).output() {
        Ok(out) => assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout)),
        Err(_) => {
            eprintln!("note: promtool not installed; PromQL syntax not checked by Prometheus")
        }
    }
}
