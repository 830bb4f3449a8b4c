//! Cache channels (spec §8), `info=cache`, authorized connections (spec
//! §10.4) and the app-less terminate route, on the real server.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

fn cache_info(port: u16, channel: &str) -> Value {
    let r = get_signed(
        port,
        &format!("/apps/{APP_ID}/channels/{channel}"),
        &[("info", "cache")],
        false,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn the_last_api_event_is_replayed_to_new_subscribers_on_every_shard() {
    let server = Server::start();
    let mut first = server.ws();
    let ok = first.subscribe("cache-prices");
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded", "{ok}");
    assert_eq!(first.event(), json!({"event":"pusher:cache_miss","channel":"cache-prices"}));
    assert_eq!(cache_info(server.port, "cache-prices"), json!({"occupied":true,"cache":null}));

    for n in 1..=2 {
        let body = json!({"name":"price","channel":"cache-prices","data":format!("{{\"p\":{n}}}")});
        assert_eq!(trigger(server.port, &body).status, 200);
        assert_eq!(data_of(&first.event()), json!({"p": n}), "live delivery");
    }
    // Enough connections that both shards have some.
    for _ in 0..4 {
        let mut c = server.ws();
        let ok = c.subscribe("cache-prices");
        assert_eq!(ok["event"], "pusher_internal:subscription_succeeded", "{ok}");
        let replay = c.event();
        assert_eq!(replay["event"], "price");
        assert_eq!(replay["channel"], "cache-prices");
        assert_eq!(data_of(&replay), json!({"p": 2}));
    }
    let info = cache_info(server.port, "cache-prices");
    assert_eq!(info["cache"]["data"], "{\"p\":2}");
    let ttl = info["cache"]["ttl"].as_u64().unwrap();
    assert!((1..=1800).contains(&ttl), "{info}");

    let r = get_signed(
        server.port,
        &format!("/apps/{APP_ID}/channels/news"),
        &[("info", "cache")],
        false,
    );
    assert_eq!(r.status, 400, "cache is for cache channels only: {}", r.body);
}

#[test]
fn client_events_are_not_cached() {
    let server = Server::start();
    let mut a = server.ws();
    let mut b = server.ws();
    for c in [&mut a, &mut b] {
        c.subscribe("private-cache-chat");
        assert_eq!(c.event()["event"], "pusher:cache_miss");
    }
    a.send(json!({"event":"client-typing","channel":"private-cache-chat","data":{}}));
    assert_eq!(b.event()["event"], "client-typing");
    let mut late = server.ws();
    late.subscribe("private-cache-chat");
    assert_eq!(late.event()["event"], "pusher:cache_miss");
}

#[test]
fn authorized_connections_close_idle_sockets_with_4009() {
    let yaml = config("", "    authorized_timeout_secs: 1\n");
    let server = Server::start_with(&yaml, &[]);
    // Opened first, so its deadline passes first: had it not been authorized
    // by the private subscription, it would be closed before `idle`.
    let mut private = server.ws();
    let ok = private.subscribe("private-room");
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded", "{ok}");
    let mut idle = server.ws();
    idle.subscribe("public-room");
    let err = idle.event();
    assert_eq!(err["event"], "pusher:error", "{err}");
    assert_eq!(err["data"]["code"], 4009);
    assert_eq!(err["data"]["message"], "Connection not authorized within timeout");
    assert_eq!(idle.next(), Got::Close(Some(4009)));
    private.send(json!({"event":"pusher:ping","data":{}}));
    assert_eq!(private.event()["event"], "pusher:pong");
}

#[test]
fn terminate_without_the_app_in_the_path_uses_the_signing_key() {
    let server = Server::start();
    let mut c = server.ws();
    let user_data = r#"{"id":"u9"}"#;
    let auth = sign_auth(&format!("{}::user::{user_data}", c.socket_id));
    c.send(json!({"event":"pusher:signin","data":{"auth":auth,"user_data":user_data}}));
    assert_eq!(c.event()["event"], "pusher:signin_success");

    let path = "/users/u9/terminate_connections";
    let r = post(server.port, &signed_path("POST", path, b"{}", "nobody", SECRET), "{}");
    assert_eq!(r.status, 404, "unknown key: {}", r.body);
    let r = post(server.port, &signed_path("POST", path, b"{}", KEY, "wrong"), "{}");
    assert_eq!(r.status, 401, "bad signature: {}", r.body);
    let r = post(server.port, &signed_path("POST", path, b"{}", KEY, SECRET), "{}");
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
    assert_eq!(c.event()["data"]["code"], 4009);
    assert_eq!(c.next(), Got::Close(Some(4009)));
}
