//! Incus's `/lp` long-poll: a whole request (head, then a form body) through
//! `parse_head` and `incus::http::long_poll`, whose `user`, `page` and
//! `command` parameters come from the query string or the body; the poll
//! is then answered by a message or by its timeout.
//!
//! Input: the request as a client sends it.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use stapes::proto::{
    http::request::parse_head,
    incus::{
        PollResult,
        http::{LongPoll, answer, long_poll},
    },
};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((req, head_len))) = parse_head(data, 8192) else { return };
    let rest = &data[head_len..];
    let body = &rest[..rest.len().min(req.content_length)];

    let mut node = common::IncusNode::new(true);
    let (now, now_unix) = (node.now, node.unix);
    let shard = node.shards.len() - 1;
    let poll = long_poll(&mut node.shards[shard], &req, body, false, now, now_unix);
    node.pump();
    let LongPoll::Waiting(id) = poll else {
        if let LongPoll::Done(response) = poll {
            check_response(&response.render(req.keep_alive));
        }
        return;
    };
    // A command that messaged the polling user answered the poll at once;
    // otherwise it times out.
    let mut result = node.shards[shard].take_poll(id);
    if result.is_none() {
        node.advance(11);
        result = node.shards[shard].take_poll(id);
        assert!(result.is_some(), "a poll outlived its timeout");
    }
    if let Some(PollResult::Message(body)) = &result {
        let _: serde_json::Value = serde_json::from_slice(body).expect("a poll's body is JSON");
    }
    check_response(&answer(result).render(req.keep_alive));
    node.check_output();
});

/// One complete response head, its body as long as Content-Length says.
fn check_response(bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).expect("responses here are UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 "));
    let length = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map(|n| n.parse::<usize>().expect("a number"));
    assert_eq!(length.unwrap_or(0), body.len(), "Content-Length");
}
