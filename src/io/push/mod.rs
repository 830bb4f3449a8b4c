//! Mobile push (Incus spec §7, §9): iOS through APNs over HTTP/2, Android
//! through FCM HTTP v1, on a thread of its own.
//!
//! Push commands reach a server only from Redis, so the bridge thread is
//! the producer: it decodes a command ([`crate::proto::incus::push`]) into a [`PushJob`] with
//! its body already built, and hands it over with [`PushHandle::submit`],
//! which never waits: the queue between the two is bounded
//! (`incus.push_queue`), and a job that finds it full is dropped and
//! counted. No shard ever sees push work, so a slow or dead push service
//! cannot delay a WebSocket delivery; it only fills that queue.
//!
//! The push thread (`stapes-push`, a current-thread tokio runtime) takes a
//! job whenever fewer than four times `incus.push_concurrency` are in
//! progress, and sends with at most `push_concurrency` requests in flight
//! per platform: one multiplexed HTTP/2 connection per APNs build (a2) and
//! a pooled client for FCM. An Android job sends one request per
//! registration id, concurrently. A try that meets 429, 5xx, a timeout or
//! a lost connection is repeated with back-off ([`crate::proto::push::retry`]) for at most
//! `incus.push_retry_secs`. When a push ends with some token failed, one
//! entry in Incus's JSON shape goes to the platform's Redis error list
//! ([`crate::proto::push::report`]).
//!
//! Nothing here logs a credential: keys are read once at start-up and
//! only their file paths and the config key names appear in messages.

pub mod apns;
pub mod fcm;
pub mod oauth;

use std::{
    future::Future,
    rc::Rc,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use crate::io::redis_link::RedisLink;
use tokio::sync::{Semaphore, mpsc, watch};

use self::{
    apns::{A2Sender, ApnsRequest, ApnsSender},
    fcm::Fcm,
    oauth::ServiceAccount,
};
pub use crate::proto::incus::push::{
    AndroidPush, IosPush, Platform, PushJob, PushRules, Refusal, Send,
};
use crate::{
    config::PushConfig,
    core::{backoff::Backoff, counters::PushCounters},
    proto::push::{report::Outcome, retry::Retry},
};

/// Error-list entries waiting for Redis beyond which new ones are dropped.
const MAX_REPORTS: usize = 4096;
/// Longest wait for Redis when writing an error-list entry.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// The least time a job may wait in the queue (see [`Engine::run`]).
const MIN_MAX_WAIT: Duration = Duration::from_secs(60);
/// Tries per error-list entry before it is given up.
const REPORT_TRIES: usize = 3;
/// Longest wait between two tries of an error-list entry.
const REPORT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why push could not start; every variant names the config key.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// An APNs credential file.
    #[error(transparent)]
    Apns(#[from] apns::ApnsSetupError),
    /// The FCM service account.
    #[error("incus.fcm_service_account_file: {0}")]
    Fcm(String),
    /// The runtime or the thread.
    #[error("cannot start the push thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Sends one FCM message to one token; [`Fcm`] is the real one.
pub trait FcmSender {
    /// One send, no retry.
    fn send(&self, registration_id: &str, data: &str) -> impl Future<Output = Outcome>;
}

impl FcmSender for Fcm {
    fn send(&self, registration_id: &str, data: &str) -> impl Future<Output = Outcome> {
        Fcm::send(self, registration_id, data)
    }
}

/// The producer's side of the push queue (the bridge thread holds it).
#[derive(Debug, Clone)]
pub struct PushHandle {
    jobs: mpsc::Sender<PushJob>,
    counters: Arc<PushCounters>,
}

impl PushHandle {
    /// Whether the queue is full: the list consumer then leaves commands
    /// in Redis rather than take pushes it would have to drop.
    pub fn is_full(&self) -> bool {
        self.jobs.capacity() == 0
    }

    /// Queues `job` for the push thread; false (counted, logged) when the
    /// queue is full or the thread is gone.
    pub fn submit(&self, job: PushJob) -> bool {
        let platform = job.platform();
        match self.jobs.try_send(job) {
            Ok(()) => true,
            Err(e) => {
                let dropped = &self.counters.of(platform).dropped;
                dropped.inc();
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "push queue full (incus.push_queue)",
                    mpsc::error::TrySendError::Closed(_) => "the push thread has stopped",
                };
                // A dead service fills the queue for minutes.
                crate::warn_throttled!(
                    dropped.get(),
                    platform = platform.label(),
                    "{why}; push dropped"
                );
                false
            }
        }
    }
}

/// Counts and logs a push command refused before any job was made.
pub fn refuse(counters: &PushCounters, platform: Platform, why: &Refusal, source: &str) {
    let refused = &counters.of(platform).refused;
    refused.inc();
    // A backend that keeps sending one bad shape must not flood the log.
    crate::warn_throttled!(
        refused.get(),
        platform = platform.label(),
        source,
        "push refused: {why}"
    );
}

/// [`PushRules`] from the config: builds with credentials, FCM on or off.
pub fn rules(config: &PushConfig) -> PushRules {
    let apns = config.apns.as_ref();
    PushRules {
        apns_builds: apns.map(|a| a.builds.iter().map(|b| b.name.clone()).collect()),
        fcm: config.fcm.is_some(),
        sound: config.ios_push_sound.clone(),
        apns_push_type: apns.map_or_else(|| "alert".to_owned(), |a| a.push_type.clone()),
        apns_priority: apns.map_or(10, |a| a.priority),
        apns_expiration_secs: apns.map_or(0, |a| a.expiration.as_secs()),
    }
}

/// The running push thread.
pub struct PushService {
    stop: watch::Sender<bool>,
    thread: thread::JoinHandle<()>,
}

impl PushService {
    /// Loads the credentials (a bad file stops start-up here), then starts
    /// the push thread; `redis` receives the error lists. Returns `None`
    /// when no platform is enabled.
    ///
    /// # Errors
    ///
    /// [`PushError`] naming the key whose file is unusable.
    pub fn start(
        config: &PushConfig,
        redis: RedisLink,
        counters: Arc<PushCounters>,
    ) -> Result<Option<(Self, PushHandle)>, PushError> {
        if config.apns.is_none() && config.fcm.is_none() {
            return Ok(None);
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (apns, fcm) = {
            // a2 and hyper build their clients against the current runtime.
            let _guard = rt.enter();
            let apns = match &config.apns {
                Some(a) => Some(A2Sender::new(&a.builds, config.timeout)?),
                None => None,
            };
            let fcm = match &config.fcm {
                Some(f) => {
                    let json = std::fs::read_to_string(&f.service_account_file).map_err(|e| {
                        PushError::Fcm(format!("{}: {e}", f.service_account_file.display()))
                    })?;
                    let account = ServiceAccount::from_json(&json, f.token_url.as_deref())
                        .map_err(|e| PushError::Fcm(e.to_string()))?;
                    for (key, url) in
                        [("fcm_url", f.url.as_str()), ("fcm_token_url", account.token_url())]
                    {
                        if plaintext_off_loopback(url) {
                            tracing::warn!(
                                url,
                                "incus.{key} is plain http:// beyond this host: access tokens and \
                                 signed token requests would cross the network unencrypted"
                            );
                        }
                    }
                    let tls = crate::io::webhooks::tls::client_config(Vec::new())
                        .map_err(|e| PushError::Fcm(e.to_string()))?;
                    Some(Fcm::new(&f.url, &f.project_id, account, tls, config.timeout))
                }
                None => None,
            };
            (apns, fcm)
        };
        let (jobs, inbox) = mpsc::channel(config.queue.max(1));
        let (stop, stopped) = watch::channel(false);
        let engine = Engine::new(config, apns, fcm, Arc::clone(&counters));
        let thread = crate::io::threads::spawn("stapes-push", move || {
            thread_main(rt, engine, inbox, redis, stopped)
        })?;
        Ok(Some((Self { stop, thread }, PushHandle { jobs, counters })))
    }

    /// Stops the thread, waiting for it until `deadline`; pushes still in
    /// progress are abandoned (the log says how many).
    pub fn stop(self, deadline: Instant) {
        let _ = self.stop.send(true);
        if crate::io::threads::join_until(self.thread, deadline).is_none() {
            tracing::warn!("the push thread did not stop in time");
        }
    }
}

fn thread_main<A: ApnsSender + 'static, F: FcmSender + 'static>(
    rt: tokio::runtime::Runtime,
    engine: Engine<A, F>,
    mut inbox: mpsc::Receiver<PushJob>,
    redis: RedisLink,
    mut stopped: watch::Receiver<bool>,
) {
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let (reports_tx, reports) = mpsc::channel(MAX_REPORTS);
        let engine = Rc::new(engine.with_reports(reports_tx));
        tracing::info!(
            apns = engine.apns.is_some(),
            fcm = engine.fcm.is_some(),
            "push thread started"
        );
        tokio::task::spawn_local(report_task(reports, redis, Arc::clone(&engine.counters)));
        let in_progress = Arc::new(Semaphore::new(engine.max_jobs));
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&in_progress).acquire_owned() => permit,
                _ = stopped.changed() => break,
            };
            let Ok(permit) = permit else { break };
            let job = tokio::select! {
                job = inbox.recv() => job,
                _ = stopped.changed() => break,
            };
            let Some(job) = job else { break };
            let engine = Rc::clone(&engine);
            tokio::task::spawn_local(async move {
                engine.run(job).await;
                drop(permit);
            });
        }
        // Commands were taken off the Redis list when handed over, so what
        // is still here is lost: counted, and said.
        let in_progress = engine.max_jobs - in_progress.available_permits();
        let mut waiting = 0;
        while let Ok(job) = inbox.try_recv() {
            engine.counters.of(job.platform()).dropped.inc();
            waiting += 1;
        }
        if in_progress + waiting > 0 {
            tracing::warn!(in_progress, waiting, "push thread stopped with pushes unsent");
        } else {
            tracing::info!("push thread stopped");
        }
    });
}

/// The sending side, generic over the services so tests can mock both.
pub struct Engine<A, F> {
    apns: Option<A>,
    fcm: Option<F>,
    retry_for: Duration,
    /// Longest a job may wait in the queue before it is dropped as stale.
    max_wait: Duration,
    ios_queue: String,
    android_queue: String,
    requests: [Semaphore; 2],
    max_jobs: usize,
    counters: Arc<PushCounters>,
    reports: Option<mpsc::Sender<(String, String, Platform)>>,
}

impl<A: ApnsSender, F: FcmSender> Engine<A, F> {
    /// An engine with these senders; error-list entries go nowhere until
    /// [`Engine::with_reports`].
    pub fn new(
        config: &PushConfig,
        apns: Option<A>,
        fcm: Option<F>,
        counters: Arc<PushCounters>,
    ) -> Self {
        let concurrency = config.concurrency.max(1);
        Self {
            apns,
            fcm,
            retry_for: config.retry_for,
            max_wait: config.retry_for.max(MIN_MAX_WAIT),
            ios_queue: config.ios_error_queue.clone(),
            android_queue: config.android_error_queue.clone(),
            requests: [Semaphore::new(concurrency), Semaphore::new(concurrency)],
            max_jobs: concurrency * 4,
            counters,
            reports: None,
        }
    }

    /// Sends error-list entries `(list, entry, platform)` to `reports`.
    pub fn with_reports(mut self, reports: mpsc::Sender<(String, String, Platform)>) -> Self {
        self.reports = Some(reports);
        self
    }

    /// Sends one job to the end: every token accepted, rejected, or given
    /// up on; then the error-list entry if any failed. A job that waited
    /// longer than `max(push_retry_secs, 60 s)` is dropped instead: it
    /// would arrive late, and behind a dead service the queue would
    /// otherwise be worked off long after anyone wanted it.
    pub async fn run(&self, job: PushJob) {
        let waited = unix_now().saturating_sub(job.arrived);
        if waited > self.max_wait.as_secs() {
            let platform = job.platform();
            let dropped = &self.counters.of(platform).dropped;
            dropped.inc();
            crate::warn_throttled!(
                dropped.get(),
                platform = platform.label(),
                waited,
                "push too old; dropped"
            );
            return;
        }
        match job.send {
            Send::Ios(push) => {
                let Some(apns) = &self.apns else { return };
                let request = ApnsRequest {
                    build: &push.build,
                    token: &push.token,
                    payload: &push.payload,
                    push_type: &push.push_type,
                    priority: push.priority,
                    expiration: push.expiration,
                    collapse_id: push.collapse_id.as_deref(),
                };
                let outcome =
                    self.deliver(Platform::Ios, &push.token, || apns.send(request.clone())).await;
                self.report(Platform::Ios, &[&push.token], &[outcome]);
            }
            Send::Android(push) => {
                let Some(fcm) = &self.fcm else { return };
                let sends = push
                    .registration_ids
                    .iter()
                    .map(|id| self.deliver(Platform::Android, id, || fcm.send(id, &push.data)));
                let outcomes = futures_util::future::join_all(sends).await;
                let ids: Vec<&str> = push.registration_ids.iter().map(|id| &**id).collect();
                self.report(Platform::Android, &ids, &outcomes);
            }
        }
    }

    /// Sends to one token, retrying what may succeed later.
    async fn deliver<Fut: Future<Output = Outcome>>(
        &self,
        platform: Platform,
        token: &str,
        send: impl Fn() -> Fut,
    ) -> Outcome {
        let counters = self.counters.of(platform);
        let mut retry = Retry::new(self.retry_for);
        let slots = &self.requests[platform as usize];
        loop {
            let started = tokio::time::Instant::now();
            let outcome = {
                // Closed never happens: the semaphore lives as long as `self`.
                let _slot = slots.acquire().await;
                send().await
            };
            let (reason, retry_after) = match outcome {
                Outcome::Sent(_) => {
                    counters.sent.inc();
                    return outcome;
                }
                Outcome::Retry { ref reason, retry_after } => (reason.clone(), retry_after),
                Outcome::TokenRejected(ref reason) => {
                    counters.failed.inc();
                    tracing::info!(platform = platform.label(), token = %short(token), reason, "push token rejected");
                    return outcome;
                }
                Outcome::Failed(ref reason) => {
                    counters.failed.inc();
                    // Bad credentials fail every push.
                    crate::warn_throttled!(
                        counters.failed.get(),
                        platform = platform.label(),
                        token = %short(token),
                        reason,
                        "push failed"
                    );
                    return outcome;
                }
            };
            match retry.next(started.elapsed(), retry_after, random()) {
                Some(wait) => {
                    counters.retried.inc();
                    tracing::debug!(platform = platform.label(), reason, ?wait, "push retried");
                    tokio::time::sleep(wait).await;
                }
                None => {
                    counters.failed.inc();
                    crate::warn_throttled!(
                        counters.failed.get(),
                        platform = platform.label(),
                        token = %short(token),
                        reason,
                        tries = retry.retries() + 1,
                        "push failed: still failing when incus.push_retry_secs ran out"
                    );
                    return outcome;
                }
            }
        }
    }

    fn report(&self, platform: Platform, ids: &[&str], outcomes: &[Outcome]) {
        let Some(entry) = crate::proto::push::report::entry(ids, outcomes) else { return };
        let list = match platform {
            Platform::Ios => &self.ios_queue,
            Platform::Android => &self.android_queue,
        };
        // An empty name turns the list off.
        if list.is_empty() {
            return;
        }
        let Some(reports) = &self.reports else { return };
        if reports.try_send((list.clone(), entry, platform)).is_err() {
            let unreported = &self.counters.of(platform).unreported;
            unreported.inc();
            crate::warn_throttled!(
                unreported.get(),
                list,
                "too many error-list entries waiting for redis; dropped"
            );
        }
    }
}

/// Whether `url` is `http://` to anything but a loopback address: fine
/// for a local mock, not for credentials crossing a network.
fn plaintext_off_loopback(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else { return false };
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    url.scheme() == "http" && !loopback
}

/// A token shortened for logs: enough to find it, not the whole secret-ish id.
fn short(token: &str) -> String {
    let end = token.char_indices().nth(12).map_or(token.len(), |(i, _)| i);
    format!("{}…", &token[..end])
}

/// Writes error-list entries to Redis (`RPUSH`) on one connection, made
/// again after an error. An entry is tried [`REPORT_TRIES`] times with the
/// bridge's back-off between tries, then given up: counted and logged (at
/// 1, 2, 4… losses, so an outage cannot flood the log).
async fn report_task(
    mut reports: mpsc::Receiver<(String, String, Platform)>,
    redis: RedisLink,
    counters: Arc<PushCounters>,
) {
    let mut conn = None;
    let mut backoff = Backoff::new(REPORT_BACKOFF_MAX);
    while let Some((list, entry, platform)) = reports.recv().await {
        let mut last_error = None;
        for _ in 0..REPORT_TRIES {
            if conn.is_none() {
                match redis.command(Some(REDIS_TIMEOUT)).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => last_error = Some(e),
                }
            }
            if let Some(c) = conn.as_mut() {
                match redis::cmd("RPUSH").arg(&list).arg(&entry).query_async::<i64>(c).await {
                    Ok(_) => {
                        last_error = None;
                        backoff.reset();
                        break;
                    }
                    Err(e) => {
                        conn = None;
                        last_error = Some(e);
                    }
                }
            }
            tokio::time::sleep(backoff.next_delay(random())).await;
        }
        let c = counters.of(platform);
        match last_error {
            None => c.reported.inc(),
            Some(e) => {
                c.unreported.inc();
                crate::warn_throttled!(
                    c.unreported.get(),
                    list,
                    "could not write to the error list ({e}); entry lost"
                );
            }
        }
    }
}

// The driver may read the clock; `command` may not.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Jitter only; a failed OS source just means less spread.
fn random() -> u64 {
    getrandom::u64().unwrap_or_else(|_| u64::from(std::process::id()))
}

#[cfg(test)]
mod tests;
