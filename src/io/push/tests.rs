//! The push engine against mock services: statuses, retries, the error
//! lists, the request limit, the bounded queue. Time is paused, so retry
//! waits pass at once and in order.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    time::Duration,
};

use super::*;
use crate::config::{ApnsAuth, ApnsBuild, ApnsConfig};

/// build, push type, priority, expiration, collapse id.
type Headers = (String, String, u8, u64, Option<String>);

/// Answers from a script per token; the last answer repeats.
#[derive(Default)]
struct Mock {
    script: RefCell<HashMap<String, Vec<Outcome>>>,
    calls: RefCell<Vec<String>>,
    headers: RefCell<Vec<Headers>>,
    in_flight: Cell<usize>,
    most_in_flight: Cell<usize>,
}

impl Mock {
    fn script(self, token: &str, answers: Vec<Outcome>) -> Self {
        self.script.borrow_mut().insert(token.to_owned(), answers);
        self
    }

    async fn answer(&self, token: &str) -> Outcome {
        self.calls.borrow_mut().push(token.to_owned());
        self.in_flight.set(self.in_flight.get() + 1);
        self.most_in_flight.set(self.most_in_flight.get().max(self.in_flight.get()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.in_flight.set(self.in_flight.get() - 1);
        let mut script = self.script.borrow_mut();
        let answers = script.get_mut(token).expect("scripted token");
        if answers.len() > 1 { answers.remove(0) } else { answers[0].clone() }
    }
}

impl ApnsSender for Mock {
    async fn send(&self, request: ApnsRequest<'_>) -> Outcome {
        self.headers.borrow_mut().push((
            request.build.to_owned(),
            request.push_type.to_owned(),
            request.priority,
            request.expiration,
            request.collapse_id.map(str::to_owned),
        ));
        self.answer(request.token).await
    }
}

impl FcmSender for Mock {
    async fn send(&self, registration_id: &str, data: &str) -> Outcome {
        assert!(data.starts_with('{'), "the data map is passed through");
        self.answer(registration_id).await
    }
}

fn config() -> PushConfig {
    PushConfig {
        apns: Some(ApnsConfig {
            builds: vec![ApnsBuild {
                name: "store".into(),
                sandbox: false,
                topic: Some("com.example".into()),
                auth: ApnsAuth::Certificate { cert_file: "c".into(), key_file: "k".into() },
            }],
            push_type: "alert".into(),
            priority: 10,
            expiration: Duration::from_secs(3600),
        }),
        concurrency: 2,
        retry_for: Duration::from_secs(10),
        ..PushConfig::default()
    }
}

fn ios(token: &str) -> PushJob {
    PushJob {
        arrived: unix_now(),
        send: Send::Ios(IosPush {
            build: "store".into(),
            token: token.into(),
            payload: r#"{"aps":{"sound":"s"},"payload":{}}"#.into(),
            push_type: "alert".into(),
            priority: 10,
            expiration: 0,
            collapse_id: None,
        }),
    }
}

fn android(ids: &[&str]) -> PushJob {
    PushJob {
        arrived: unix_now(),
        send: Send::Android(AndroidPush {
            registration_ids: ids.iter().map(|id| (*id).into()).collect(),
            data: r#"{"event":"e"}"#.into(),
        }),
    }
}

fn retry(reason: &str) -> Outcome {
    Outcome::Retry { reason: reason.into(), retry_after: None }
}

type Reports = mpsc::Receiver<(String, String, Platform)>;

fn engine(
    apns: Mock,
    fcm: Mock,
    config: &PushConfig,
) -> (Engine<Mock, Mock>, Arc<PushCounters>, Reports) {
    let counters = Arc::new(PushCounters::default());
    let (tx, rx) = mpsc::channel(16);
    let engine = Engine::new(config, Some(apns), Some(fcm), Arc::clone(&counters)).with_reports(tx);
    (engine, counters, rx)
}

#[tokio::test(start_paused = true)]
async fn apns_statuses_retries_and_the_ios_error_list() {
    let apns = Mock::default()
        .script("aa", vec![Outcome::Sent(Some("id".into()))])
        .script("bb", vec![Outcome::TokenRejected("Unregistered".into())])
        .script(
            "cc",
            vec![retry("ServiceUnavailable"), retry("TooManyRequests"), Outcome::Sent(None)],
        )
        .script("dd", vec![retry("InternalServerError")])
        .script("ee", vec![Outcome::Failed("InvalidProviderToken".into())]);
    let (engine, counters, mut reports) = engine(apns, Mock::default(), &config());
    for token in ["aa", "bb", "cc", "dd", "ee"] {
        engine.run(ios(token)).await;
    }
    let c = &counters.ios;
    assert_eq!((c.sent.get(), c.failed.get()), (2, 3), "aa and cc sent; bb, dd, ee failed");
    let dd_tries =
        engine.apns.as_ref().map_or(0, |m| m.calls.borrow().iter().filter(|t| *t == "dd").count());
    assert!(dd_tries >= 3, "retried until the 10 s ran out: {dd_tries} tries");
    assert_eq!(c.retried.get(), 2 + dd_tries as u64 - 1);
    let mut got = Vec::new();
    while let Ok((list, entry, platform)) = reports.try_recv() {
        assert_eq!((list.as_str(), platform), ("Incus_iOS_Error_Queue", Platform::Ios));
        got.push(entry);
    }
    assert_eq!(
        got,
        [
            r#"{"registration_ids":["bb"],"results":[{"message_id":"","registration_id":"","error":"Unregistered"}]}"#,
            r#"{"registration_ids":["dd"],"results":[{"message_id":"","registration_id":"","error":"InternalServerError"}]}"#,
            r#"{"registration_ids":["ee"],"results":[{"message_id":"","registration_id":"","error":"InvalidProviderToken"}]}"#,
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn apns_gets_the_headers_decoded_and_stale_jobs_are_dropped() {
    let apns = Mock::default().script("aa", vec![Outcome::Sent(None)]);
    let (engine, counters, _reports) = engine(apns, Mock::default(), &config());
    let mut job = ios("aa");
    if let Send::Ios(push) = &mut job.send {
        push.push_type = "background".into();
        push.priority = 5;
        push.expiration = 42;
        push.collapse_id = Some("c".into());
    }
    engine.run(job).await;
    let headers = engine.apns.as_ref().map(|m| m.headers.borrow().clone()).unwrap_or_default();
    assert_eq!(headers, [("store".into(), "background".into(), 5, 42, Some("c".into()))]);
    // Queued longer than max(push_retry_secs, 60 s): dropped, not sent late.
    let mut old = ios("aa");
    old.arrived -= 61;
    engine.run(old).await;
    assert_eq!(engine.apns.as_ref().map_or(0, |m| m.calls.borrow().len()), 1);
    assert_eq!((counters.ios.sent.get(), counters.ios.dropped.get()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn android_sends_per_token_and_reports_in_incus_shape() {
    let fcm = Mock::default()
        .script("good1", vec![Outcome::Sent(Some("projects/p/messages/1".into()))])
        .script("bad2", vec![Outcome::TokenRejected("NotRegistered".into())])
        .script(
            "slow3",
            vec![
                Outcome::Retry {
                    reason: "Unavailable".into(),
                    retry_after: Some(Duration::from_secs(3)),
                },
                Outcome::Sent(Some("projects/p/messages/3".into())),
            ],
        );
    let (engine, counters, mut reports) = engine(Mock::default(), fcm, &config());
    let started = tokio::time::Instant::now();
    engine.run(android(&["good1", "bad2", "slow3"])).await;
    assert!(started.elapsed() >= Duration::from_secs(3), "Retry-After honoured");
    let c = &counters.android;
    assert_eq!((c.sent.get(), c.failed.get(), c.retried.get()), (2, 1, 1));
    let (list, entry, _) = reports.try_recv().expect("one entry");
    assert_eq!(list, "Incus_Android_Error_Queue");
    assert_eq!(
        entry,
        r#"{"registration_ids":["good1","bad2","slow3"],"results":[{"message_id":"projects/p/messages/1","registration_id":"","error":""},{"message_id":"","registration_id":"","error":"NotRegistered"},{"message_id":"projects/p/messages/3","registration_id":"","error":""}]}"#
    );
    // All good: nothing reported.
    engine.run(android(&["good1"])).await;
    assert!(reports.try_recv().is_err());
    // An empty list name turns the list off.
    let fcm = Mock::default().script("bad", vec![Outcome::TokenRejected("NotRegistered".into())]);
    let off = PushConfig { android_error_queue: String::new(), ..config() };
    let (quiet, counters, mut reports) = self::engine(Mock::default(), fcm, &off);
    quiet.run(android(&["bad"])).await;
    assert_eq!(counters.android.failed.get(), 1);
    assert!(reports.try_recv().is_err());
}

#[tokio::test(start_paused = true)]
async fn requests_in_flight_stay_under_the_limit() {
    let ids: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    let mut fcm = Mock::default();
    for id in &ids {
        fcm = fcm.script(id, vec![Outcome::Sent(None)]);
    }
    let (engine, counters, _reports) = engine(Mock::default(), fcm, &config());
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    engine.run(android(&refs)).await;
    assert_eq!(counters.android.sent.get(), 20);
    let most = engine.fcm.as_ref().map_or(0, |m| m.most_in_flight.get());
    assert_eq!(most, 2, "push_concurrency is 2");
}

#[test]
fn a_full_queue_drops_and_counts() {
    let (jobs, _inbox) = mpsc::channel(2);
    let counters = Arc::new(PushCounters::default());
    let handle = PushHandle { jobs, counters: Arc::clone(&counters) };
    assert!(handle.submit(ios("aa")));
    assert!(!handle.is_full());
    assert!(handle.submit(android(&["x"])));
    assert!(handle.is_full(), "the list consumer pauses here");
    assert!(!handle.submit(ios("bb")));
    assert!(!handle.submit(ios("cc")));
    assert_eq!((counters.ios.dropped.get(), counters.android.dropped.get()), (2, 0));
    refuse(&counters, Platform::Android, &Refusal::NoRegistrationIds, "queue");
    assert_eq!(counters.android.refused.get(), 1);
}

#[test]
fn rules_follow_the_config() {
    let r = rules(&config());
    assert_eq!(r.apns_builds.as_deref(), Some(&["store".to_owned()][..]));
    assert_eq!(
        (r.apns_push_type.as_str(), r.apns_priority, r.apns_expiration_secs),
        ("alert", 10, 3600)
    );
    assert!(!r.fcm);
    assert_eq!(r.sound, "bingbong.aiff");
    assert_eq!(short("0123456789abcdef0123"), "0123456789ab…");
    assert!(!plaintext_off_loopback("http://127.0.0.1:9000"));
    assert!(!plaintext_off_loopback("http://localhost/token"));
    assert!(!plaintext_off_loopback("http://[::1]:80"));
    assert!(!plaintext_off_loopback("https://fcm.googleapis.com"));
    assert!(plaintext_off_loopback("http://fcm.internal:8080"));
    assert!(plaintext_off_loopback("http://10.0.0.5/token"));
}
