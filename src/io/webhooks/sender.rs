//! The webhook thread's driver: drains the shards' rings, routes each event
//! to the URLs whose filter wants it, and runs one sending task per URL.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Uri, header};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use serde_json::value::{RawValue, to_raw_value};
use tokio::sync::{Notify, watch};

use super::{HookInlets, Outgoing};
use crate::{
    core::{AppIdx, Apps, HookKind, HookKinds},
    proto::webhook::{
        event,
        queue::{Next, Queue},
        retry,
    },
};

/// Longest wait for a TCP connection to a receiver.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a receiver's whole answer, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Kept-alive connections idle longer than this are closed.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// A receiver's response body is read (so the connection can be reused) up
/// to this size; a larger one fails the attempt.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Events taken from the rings before the other tasks get a turn.
const DRAIN_BUDGET: usize = 4096;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Which URLs get which event kinds, per app: pure, built from the config.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    by_app: Vec<Vec<(usize, HookKinds)>>,
}

impl Routes {
    /// Target indices are assigned in config order, app by app.
    pub(crate) fn new(apps: &Apps) -> Self {
        let mut next = 0;
        let by_app = (0..apps.len())
            .map(|i| {
                let app = apps.get(i as AppIdx);
                app.webhooks
                    .iter()
                    .map(|w| {
                        next += 1;
                        (next - 1, w.event_types)
                    })
                    .collect()
            })
            .collect();
        Self { by_app }
    }

    /// The targets of `app` that want `kind`.
    pub(crate) fn targets(&self, app: AppIdx, kind: HookKind) -> impl Iterator<Item = usize> + '_ {
        self.by_app
            .get(app as usize)
            .into_iter()
            .flatten()
            .filter(move |(_, kinds)| kinds.contains(kind))
            .map(|(target, _)| *target)
    }
}

/// One webhook URL and its sending state.
struct Target {
    url: String,
    uri: Uri,
    key: String,
    secret: String,
    queue: RefCell<Queue>,
    wake: Notify,
    /// Whether the last attempt failed, so that an outage is logged when it
    /// starts and when it ends, not once per attempt.
    failing: Cell<bool>,
}

/// Counters, logged as running totals.
#[derive(Default)]
struct Counts {
    delivered: Cell<u64>,
    failed_attempts: Cell<u64>,
    given_up: Cell<u64>,
}

fn bump(c: &Cell<u64>) -> u64 {
    let n = c.get() + 1;
    c.set(n);
    n
}

pub(super) fn thread_main(
    apps: Arc<Apps>,
    inlets: HookInlets,
    tls: rustls::ClientConfig,
    mut stopped: watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot build the webhook runtime: {e}; webhooks are off");
            return;
        }
    };
    let mut targets = Vec::new();
    for i in 0..apps.len() {
        let app = apps.get(i as AppIdx);
        for hook in &app.webhooks {
            // Validation accepted the URL already; a URL hyper still refuses
            // is skipped rather than fatal, and its events are dropped.
            let uri = match hook.url.parse::<Uri>() {
                Ok(uri) => uri,
                Err(e) => {
                    tracing::error!(url = %hook.url, app = %app.id, "unusable webhook URL: {e}");
                    Uri::default()
                }
            };
            targets.push(Rc::new(Target {
                url: hook.url.clone(),
                uri,
                key: app.key.clone(),
                secret: app.secret.clone(),
                queue: RefCell::new(Queue::new(app.webhook_batch, app.webhook_batch_max)),
                wake: Notify::new(),
                failing: Cell::new(false),
            }));
        }
    }
    let routes = Routes::new(&apps);
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    // The TLS layer below takes https:// URIs; left enforced, the TCP
    // connector would refuse them before TLS sees them.
    connector.enforce_http(false);
    // One client for both schemes: each connection is pooled per scheme,
    // host and port, so http and https receivers never share one, and an
    // https connection is kept alive like a plain one.
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(connector);
    let counts = Rc::new(Counts::default());
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        tracing::info!(urls = targets.len(), "webhook sender started");
        for target in &targets {
            let (target, client, counts) = (Rc::clone(target), client.clone(), Rc::clone(&counts));
            tokio::task::spawn_local(send_task(target, client, counts));
        }
        let drain = tokio::task::spawn_local(drain_task(inlets, routes, targets.clone()));
        while !*stopped.borrow_and_update() {
            if stopped.changed().await.is_err() {
                break;
            }
        }
        drain.abort();
        let left: usize = targets.iter().map(|t| t.queue.borrow().len()).sum();
        let dropped: u64 = targets.iter().map(|t| t.queue.borrow().dropped()).sum();
        tracing::info!(
            delivered = counts.delivered.get(),
            failed_attempts = counts.failed_attempts.get(),
            given_up = counts.given_up.get(),
            dropped_queue_full = dropped,
            unsent_at_stop = left,
            "webhook sender stopped"
        );
    });
}

/// Moves events from the shards' rings into the URL queues.
async fn drain_task(mut inlets: HookInlets, routes: Routes, targets: Vec<Rc<Target>>) {
    loop {
        inlets.ready().await;
        let now = Instant::now();
        let taken = inlets.drain(DRAIN_BUDGET, |out| route(&routes, &targets, out, now));
        if taken >= DRAIN_BUDGET {
            tokio::task::yield_now().await;
        }
    }
}

fn route(routes: &Routes, targets: &[Rc<Target>], out: Outgoing, now: Instant) {
    let Outgoing { time_ms, event } = out;
    let mut json: Option<Box<RawValue>> = None;
    for i in routes.targets(event.app(), event.kind()) {
        let Some(target) = targets.get(i) else { continue };
        // Rendered once, for the first URL that wants it.
        let raw = match &json {
            Some(raw) => raw.clone(),
            None => match to_raw_value(&event.to_json()) {
                Ok(raw) => json.insert(raw).clone(),
                Err(e) => {
                    tracing::warn!("cannot render a webhook event: {e}");
                    return;
                }
            },
        };
        let mut queue = target.queue.borrow_mut();
        if queue.push(now, time_ms, raw) {
            target.wake.notify_one();
        } else {
            // An outage cannot flood the log.
            crate::warn_throttled!(
                queue.dropped(),
                url = %target.url,
                "webhook queue full; events dropped"
            );
        }
    }
}

/// Sends one URL's queue, one request at a time.
async fn send_task(target: Rc<Target>, client: HttpClient, counts: Rc<Counts>) {
    loop {
        let next = target.queue.borrow_mut().next(Instant::now());
        match next {
            Next::Idle => target.wake.notified().await,
            Next::WaitUntil(at) => {
                let _ = tokio::time::timeout_at(at.into(), target.wake.notified()).await;
            }
            Next::Send(time_ms, events) => {
                deliver(&target, &client, &counts, time_ms, &events).await
            }
        }
    }
}

/// POSTs one body until it is accepted or its retry budget is spent.
async fn deliver(
    target: &Target,
    client: &HttpClient,
    counts: &Counts,
    time_ms: u64,
    events: &[Box<RawValue>],
) {
    let body = Bytes::from(event::body(time_ms, events));
    let signature = event::signature(&target.secret, &body);
    let first = Instant::now();
    let mut retry = 0;
    loop {
        match attempt(target, client, &body, &signature).await {
            Ok(()) => {
                bump(&counts.delivered);
                if target.failing.replace(false) {
                    tracing::info!(url = %target.url, "webhook receiver accepts again");
                }
                return;
            }
            Err(why) => {
                let total = bump(&counts.failed_attempts);
                if !target.failing.replace(true) {
                    tracing::warn!(url = %target.url, total, "webhook failed, retrying: {why}");
                } else {
                    tracing::debug!(url = %target.url, total, "webhook failed again: {why}");
                }
            }
        }
        let random = getrandom::u64().unwrap_or_else(|_| u64::from(std::process::id()));
        match retry::next_delay(retry, first.elapsed(), random) {
            Some(wait) => tokio::time::sleep(wait).await,
            None => {
                crate::warn_throttled!(
                    bump(&counts.given_up),
                    url = %target.url,
                    events = events.len(),
                    "webhook given up after retrying for {:?}",
                    retry::BUDGET
                );
                return;
            }
        }
        retry += 1;
    }
}

/// One POST; `Ok` only for a 2xx answer received within the timeout.
async fn attempt(
    target: &Target,
    client: &HttpClient,
    body: &Bytes,
    signature: &str,
) -> Result<(), String> {
    let request = Request::post(target.uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header("X-Pusher-Key", &target.key)
        .header("X-Pusher-Signature", signature)
        .body(Full::new(body.clone()))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| describe(&e))?;
        let status = response.status();
        // Read to the end so that the connection goes back to the pool.
        Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the response: {e}"))?;
        if status.is_success() { Ok(()) } else { Err(format!("answered {status}")) }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// hyper-util's error hides the cause (connection refused, …) in its source.
fn describe(err: &hyper_util::client::legacy::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AppConfig, WebhookConfig};

    #[test]
    fn events_reach_only_the_urls_whose_filter_wants_them() {
        let hook = |url: &str, kinds: &[HookKind]| WebhookConfig {
            url: url.into(),
            event_types: kinds.iter().copied().collect(),
        };
        let mut a = AppConfig::new("1", "a", "s");
        a.webhooks = vec![
            hook("http://127.0.0.1/all", &HookKind::ALL),
            hook("http://127.0.0.1/vacated", &[HookKind::ChannelVacated]),
        ];
        let b = AppConfig::new("2", "b", "s");
        let mut c = AppConfig::new("3", "c", "s");
        c.webhooks =
            vec![hook("http://127.0.0.1/c", &[HookKind::ClientEvent, HookKind::CacheMiss])];
        let apps = Apps::new(vec![Arc::new(a), Arc::new(b), Arc::new(c)]);
        let routes = Routes::new(&apps);
        let of = |app, kind| routes.targets(app, kind).collect::<Vec<_>>();
        assert_eq!(of(0, HookKind::ChannelVacated), [0, 1]);
        assert_eq!(of(0, HookKind::ChannelOccupied), [0]);
        assert_eq!(of(1, HookKind::ChannelOccupied), Vec::<usize>::new());
        assert_eq!(of(2, HookKind::ClientEvent), [2]);
        assert_eq!(of(2, HookKind::MemberAdded), Vec::<usize>::new());
        assert_eq!(of(9, HookKind::CacheMiss), Vec::<usize>::new());
    }
}
