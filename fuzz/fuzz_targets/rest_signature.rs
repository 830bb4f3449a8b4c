//! HTTP API request signing (`proto::rest::signature::verify`): the query
//! string as received, the method, the path and the body.
//!
//! Input: a byte choosing the method, then path, query and body separated
//! by 0xFF bytes. Besides the request as given (which must not panic), the
//! query is completed with the auth parameters of app `1`, signed over the
//! string the verifier reports, and must then be accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use md5::{Digest, Md5};
use stapes::proto::{
    pusher::auth::sign,
    rest::signature::{SignatureError, SignedRequest, verify},
};

const NOW: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let method = ["POST", "GET", "post", "Get"][usize::from(which) % 4];
    let mut parts = rest.splitn(3, |&b| b == 0xff);
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();
    let now = NOW + u64::from(which);

    let as_sent = SignedRequest { method, path: &path, query: &query, body };
    let _ = verify(&as_sent, "app-key", "app-secret", now);

    let mut signed = format!("{query}&auth_key=app-key&auth_timestamp={NOW}&auth_version=1.0");
    let own_md5 = !body.is_empty() || which & 0x80 != 0;
    if own_md5 {
        signed.push_str(&format!("&body_md5={}", hex::encode(Md5::digest(body))));
    }
    let zeros = "0".repeat(64);
    let unsigned = format!("{signed}&auth_signature={zeros}");
    let req = SignedRequest { method, path: &path, query: &unsigned, body };
    let Err(SignatureError::InvalidSignature { string_to_sign, got }) =
        verify(&req, "app-key", "app-secret", now)
    else {
        // The fuzzed query repeats an auth parameter, or similar: refused
        // before the signature is looked at.
        return;
    };
    assert_eq!(got, zeros);
    let expected_start = format!("{}\n{path}\n", method.to_ascii_uppercase());
    assert!(string_to_sign.starts_with(&expected_start), "{string_to_sign:?}");
    if string_to_sign.contains('\u{fffd}') {
        // The reported string is lossy there; it cannot be signed as shown.
        return;
    }
    let signature = sign("app-secret", string_to_sign.as_bytes());
    let good = format!("{signed}&auth_signature={signature}");
    let req = SignedRequest { method, path: &path, query: &good, body };
    match verify(&req, "app-key", "app-secret", now) {
        Ok(()) => {}
        // Without ours, the fuzzed query may carry a `body_md5` of its own,
        // which is then checked against the (empty) body.
        Err(SignatureError::BodyMd5Mismatch) if !own_md5 => {}
        Err(e) => panic!("a correctly signed request was refused: {e}"),
    }
});
