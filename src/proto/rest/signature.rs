//! Pusher HTTP API request signing (auth_version 1.0, spec §12.2).
//!
//! Every API request carries `auth_key`, `auth_timestamp`, `auth_version`,
//! `auth_signature` (and `body_md5` with a body) in its query string. The
//! signature is a hex HMAC-SHA256 with the app secret over
//! `METHOD\npath\nparams`; we rebuild that string from the query as received
//! and compare in constant time.
//!
//! Decisions (spec §12.2 leaves them to us):
//! * Every failure, a missing parameter included, is 401: Pusher and the
//!   reference verifier treat all of them as authentication failures, and
//!   the SDKs special-case 401 as "check your credentials".
//! * With an empty body, `body_md5` may be absent or the MD5 of the empty
//!   string (pusher-http-python always sends it, spec §12.2 rule 5). Any other
//!   value is refused: the signed `body_md5` then claims a body we did not
//!   receive, so it was lost or cut in transit.
//! * The percent decoder is private to this module so signing has no
//!   dependency on the HTTP layer's decoder; malformed `%` escapes are kept
//!   literally (the signature then decides).

use std::borrow::Cow;

use hmac::Mac;
use md5::{Digest, Md5};

use crate::proto::pusher::auth::{decode_sig, new_mac};

/// Largest accepted distance between `auth_timestamp` and server time, in
/// seconds; at or beyond it the request is refused (spec §12.2 rule 6).
pub const MAX_SKEW_SECS: u64 = 600;

/// MD5 of the empty body, as pusher-http-python sends it on GET (spec §12.2).
const EMPTY_MD5: [u8; 16] = [
    0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8, 0x42, 0x7e,
];

/// The parts of an HTTP API request that the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// HTTP method as received; upper-cased for signing.
    pub method: &'a str,
    /// Path as sent by the client, minus any server-side mount prefix
    /// (spec §12.2 rule 3), not percent-decoded.
    pub path: &'a str,
    /// Raw query string without the `?`, not decoded.
    pub query: &'a str,
    /// Raw request body (may be empty).
    pub body: &'a [u8],
}

/// Why a signed request was refused. The caller answers
/// [`SignatureError::status`] (always 401) with the `Display` text as body
/// and does not look at the request any further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required query parameter is absent (`body_md5` counts when the body
    /// is non-empty). Refuse with 401.
    #[error("Missing required parameter: {0}")]
    Missing(&'static str),
    /// An `auth_*` or `body_md5` parameter appears more than once, so which
    /// one was signed is ambiguous. Refuse with 401.
    #[error("Parameter {0} given more than once")]
    Duplicate(&'static str),
    /// `auth_key` is not the key of the app named in the path. Refuse with 401.
    #[error("Invalid auth_key: not the key of this app")]
    InvalidKey,
    /// `auth_version` is not `1.0`. Refuse with 401.
    #[error("Unsupported auth_version '{0}': only 1.0 is supported")]
    UnsupportedVersion(String),
    /// `auth_timestamp` is not a whole number of unix seconds. Refuse with 401.
    #[error("Invalid auth_timestamp '{0}': expected unix seconds")]
    InvalidTimestamp(String),
    /// `auth_timestamp` is 600 s or more away from server time (either
    /// direction). Refuse with 401; the client's clock is probably off.
    #[error(
        "Timestamp expired: Given timestamp ({given}) not within {MAX_SKEW_SECS}s of server time \
         ({now})"
    )]
    TimestampExpired {
        /// The request's `auth_timestamp`.
        given: u64,
        /// Server time when checked.
        now: u64,
    },
    /// `body_md5` is not the hex MD5 of the body received. Refuse with 401.
    #[error("Invalid body_md5: does not match the MD5 of the request body")]
    BodyMd5Mismatch,
    /// `auth_signature` does not match. Refuse with 401; the message shows
    /// the string we signed (it contains no secret) to help the developer.
    #[error(
        "Invalid signature: Expected HMAC SHA256 hex digest of {string_to_sign:?}, but got {got}"
    )]
    InvalidSignature {
        /// `METHOD\npath\nparams` as rebuilt from the request.
        string_to_sign: String,
        /// The `auth_signature` received.
        got: String,
    },
}

impl SignatureError {
    /// HTTP status for this error: 401 for every variant (see module docs).
    pub fn status(&self) -> u16 {
        401
    }
}

/// One decoded query parameter.
struct Param<'a> {
    key: Cow<'a, [u8]>,
    value: Cow<'a, [u8]>,
}

/// Verifies a signed HTTP API request against the app's key and secret
/// (spec §12.2). `now_unix` is the server time in seconds.
pub fn verify(
    req: &SignedRequest<'_>,
    app_key: &str,
    secret: &str,
    now_unix: u64,
) -> Result<(), SignatureError> {
    let params = parse_query(req.query);
    let key = required(&params, "auth_key")?;
    let timestamp = required(&params, "auth_timestamp")?;
    let version = required(&params, "auth_version")?;
    let signature = required(&params, "auth_signature")?;
    let body_md5 = optional(&params, "body_md5")?;

    if key != app_key.as_bytes() {
        return Err(SignatureError::InvalidKey);
    }
    if version != b"1.0" {
        return Err(SignatureError::UnsupportedVersion(lossy(version)));
    }
    let given = std::str::from_utf8(timestamp)
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| SignatureError::InvalidTimestamp(lossy(timestamp)))?;
    if given.abs_diff(now_unix) >= MAX_SKEW_SECS {
        return Err(SignatureError::TimestampExpired { given, now: now_unix });
    }

    let mut mac = new_mac(secret);
    string_to_sign(req, &params, |part| mac.update(part));
    let sig_ok = decode_sig_bytes(signature).is_some_and(|sig| mac.verify_slice(&sig).is_ok());
    if !sig_ok {
        let mut text = Vec::new();
        string_to_sign(req, &params, |part| text.extend_from_slice(part));
        return Err(SignatureError::InvalidSignature {
            string_to_sign: lossy(&text),
            got: lossy(signature),
        });
    }

    // Checked after the signature: `body_md5` is only trustworthy once we
    // know the sender holds the secret, and the body is the costlier hash.
    match body_md5 {
        None if req.body.is_empty() => Ok(()),
        None => Err(SignatureError::Missing("body_md5")),
        Some(claimed) => {
            let mut want = [0u8; 16];
            if hex::decode_to_slice(claimed, &mut want).is_err() {
                return Err(SignatureError::BodyMd5Mismatch);
            }
            let matches = if req.body.is_empty() {
                want == EMPTY_MD5
            } else {
                Md5::digest(req.body)[..] == want[..]
            };
            if matches { Ok(()) } else { Err(SignatureError::BodyMd5Mismatch) }
        }
    }
}

/// The signature as bytes, or `None` when it is not 64 hex digits.
fn decode_sig_bytes(sig: &[u8]) -> Option<[u8; 32]> {
    decode_sig(std::str::from_utf8(sig).ok()?)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Feeds `UPPER(method) \n path \n params` to `sink` (spec §12.2): params
/// sorted by lower-cased key, `auth_signature` left out, `k=v` joined by `&`,
/// not escaped; repeated keys give one `k=v1,v2` in the order received (PHP
/// signs arrays that way, spec §12.2 rule 2).
fn string_to_sign(req: &SignedRequest<'_>, params: &[Param<'_>], mut sink: impl FnMut(&[u8])) {
    let method = req.method.as_bytes();
    if method.iter().any(u8::is_ascii_lowercase) {
        for b in method {
            sink(&[b.to_ascii_uppercase()]);
        }
    } else {
        sink(method);
    }
    sink(b"\n");
    sink(req.path.as_bytes());
    sink(b"\n");
    let mut prev: Option<&[u8]> = None;
    for p in params.iter().filter(|p| &*p.key != b"auth_signature") {
        if prev == Some(&*p.key) {
            sink(b",");
        } else {
            if prev.is_some() {
                sink(b"&");
            }
            sink(&p.key);
            sink(b"=");
        }
        sink(&p.value);
        prev = Some(&p.key);
    }
}

/// Splits and decodes the query, lower-cases keys, strips array brackets
/// (`channels[]`, `channels[0]` → `channels`) and sorts by key, keeping the
/// order of repeated keys.
fn parse_query(query: &str) -> Vec<Param<'_>> {
    let mut params: Vec<Param<'_>> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Param { key: normalise_key(percent_decode(k)), value: percent_decode(v) }
        })
        .collect();
    // Stable: repeated keys keep the order they were sent in.
    params.sort_by(|a, b| a.key.cmp(&b.key));
    params
}

fn normalise_key(key: Cow<'_, [u8]>) -> Cow<'_, [u8]> {
    let base_len = match (key.iter().position(|&b| b == b'['), key.last()) {
        (Some(open), Some(b']')) if open > 0 => open,
        _ => key.len(),
    };
    if key[..base_len].iter().any(u8::is_ascii_uppercase) {
        return Cow::Owned(key[..base_len].to_ascii_lowercase());
    }
    match key {
        Cow::Borrowed(k) => Cow::Borrowed(&k[..base_len]),
        Cow::Owned(mut k) => {
            k.truncate(base_len);
            Cow::Owned(k)
        }
    }
}

/// `application/x-www-form-urlencoded` decoding: `%XX` → byte, `+` → space
/// (spec §12.2 rule 1). Borrows when there is nothing to decode.
fn percent_decode(s: &str) -> Cow<'_, [u8]> {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|&b| hex_val(b));
                let lo = bytes.get(i + 2).and_then(|&b| hex_val(b));
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The single value of `name`; absent or repeated is an error.
fn required<'p>(params: &'p [Param<'_>], name: &'static str) -> Result<&'p [u8], SignatureError> {
    optional(params, name)?.ok_or(SignatureError::Missing(name))
}

/// The value of `name` if present once; repeated is an error.
fn optional<'p>(
    params: &'p [Param<'_>],
    name: &'static str,
) -> Result<Option<&'p [u8]>, SignatureError> {
    let mut hits = params.iter().filter(|p| &*p.key == name.as_bytes());
    match (hits.next(), hits.next()) {
        (Some(p), None) => Ok(Some(&p.value)),
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(SignatureError::Duplicate(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::pusher::auth::sign;

    // The worked vector of spec §12.2.
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const TS: u64 = 1353088179;
    const BODY: &[u8] = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    const BODY_MD5: &str = "ec365a775a4cd0599faeb73354201b6f";
    const SIG: &str = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";

    fn vector_query() -> String {
        format!(
            "auth_key={KEY}&auth_timestamp={TS}&auth_version=1.0&body_md5={BODY_MD5}&auth_signature={SIG}"
        )
    }

    fn post<'a>(query: &'a str, body: &'a [u8]) -> SignedRequest<'a> {
        SignedRequest { method: "POST", path: "/apps/3/events", query, body }
    }

    /// Signs `params` (the string the client signs, unescaped) and returns a
    /// query of `sent` (what goes on the wire) plus the signature.
    fn signed_query(method: &str, path: &str, params: &str, sent: &str) -> String {
        let sig = sign(SECRET, format!("{method}\n{path}\n{params}").as_bytes());
        format!("{sent}&auth_signature={sig}")
    }

    #[test]
    fn worked_vector_verifies() {
        let q = vector_query();
        assert_eq!(verify(&post(&q, BODY), KEY, SECRET, TS), Ok(()));
        // Parameter order on the wire does not matter.
        let shuffled = format!(
            "auth_signature={SIG}&body_md5={BODY_MD5}&auth_version=1.0&auth_timestamp={TS}&auth_key={KEY}"
        );
        assert_eq!(verify(&post(&shuffled, BODY), KEY, SECRET, TS), Ok(()));
        // The method is upper-cased before signing.
        let lower = SignedRequest { method: "post", ..post(&q, BODY) };
        assert_eq!(verify(&lower, KEY, SECRET, TS), Ok(()));
        // Upper-case hex and upper-case keys are accepted.
        let upper = q.replace(SIG, &SIG.to_uppercase()).replace("auth_key", "AUTH_KEY");
        assert_eq!(verify(&post(&upper, BODY), KEY, SECRET, TS), Ok(()));
    }

    #[test]
    fn tampered_body() {
        let q = vector_query();
        let body = br#"{"name":"foo","channels":["project-4"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(verify(&post(&q, body), KEY, SECRET, TS), Err(SignatureError::BodyMd5Mismatch));
        // A body_md5 changed to match a tampered body breaks the signature.
        let md5 = hex::encode(Md5::digest(body));
        let q2 = q.replace(BODY_MD5, &md5);
        assert!(matches!(
            verify(&post(&q2, body), KEY, SECRET, TS),
            Err(SignatureError::InvalidSignature { .. })
        ));
        // A body_md5 that is not hex.
        let q3 = signed_query(
            "POST",
            "/apps/3/events",
            &format!("auth_key={KEY}&auth_timestamp={TS}&auth_version=1.0&body_md5=xyz"),
            &format!("auth_key={KEY}&auth_timestamp={TS}&auth_version=1.0&body_md5=xyz"),
        );
        assert_eq!(verify(&post(&q3, BODY), KEY, SECRET, TS), Err(SignatureError::BodyMd5Mismatch));
    }

    #[test]
    fn wrong_secret_key_path_and_method() {
        let q = vector_query();
        let err = verify(&post(&q, BODY), KEY, "wrong", TS);
        let want = format!(
            "POST\n/apps/3/events\nauth_key={KEY}&auth_timestamp={TS}&auth_version=1.0&body_md5={BODY_MD5}"
        );
        assert_eq!(
            err,
            Err(SignatureError::InvalidSignature { string_to_sign: want, got: SIG.into() })
        );
        assert_eq!(
            verify(&post(&q, BODY), "otherkey", SECRET, TS),
            Err(SignatureError::InvalidKey)
        );
        let other_path = SignedRequest { path: "/apps/4/events", ..post(&q, BODY) };
        assert!(verify(&other_path, KEY, SECRET, TS).is_err());
        let other_method = SignedRequest { method: "PUT", ..post(&q, BODY) };
        assert!(verify(&other_method, KEY, SECRET, TS).is_err());
        let short = q.replace(SIG, &SIG[..62]);
        assert!(matches!(
            verify(&post(&short, BODY), KEY, SECRET, TS),
            Err(SignatureError::InvalidSignature { .. })
        ));
    }

    #[test]
    fn timestamp_window_both_directions() {
        let q = vector_query();
        let req = post(&q, BODY);
        assert_eq!(verify(&req, KEY, SECRET, TS + 599), Ok(()));
        assert_eq!(verify(&req, KEY, SECRET, TS - 599), Ok(()));
        let late = verify(&req, KEY, SECRET, TS + 600);
        assert_eq!(late, Err(SignatureError::TimestampExpired { given: TS, now: TS + 600 }));
        let early = verify(&req, KEY, SECRET, TS - 600);
        assert_eq!(early, Err(SignatureError::TimestampExpired { given: TS, now: TS - 600 }));
        let msg = late.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("Timestamp expired: "), "{msg}");
        assert_eq!(verify(&req, KEY, SECRET, 0).err().map(|e| e.status()), Some(401));
    }

    #[test]
    fn bad_timestamp_and_version() {
        let q = vector_query().replace(&TS.to_string(), "-5");
        assert_eq!(
            verify(&post(&q, BODY), KEY, SECRET, TS),
            Err(SignatureError::InvalidTimestamp("-5".into()))
        );
        let q = vector_query().replace("auth_version=1.0", "auth_version=2.0");
        assert_eq!(
            verify(&post(&q, BODY), KEY, SECRET, TS),
            Err(SignatureError::UnsupportedVersion("2.0".into()))
        );
    }

    #[test]
    fn missing_each_parameter() {
        for name in ["auth_key", "auth_timestamp", "auth_version", "auth_signature", "body_md5"] {
            let kept: Vec<String> = vector_query()
                .split('&')
                .filter(|p| !p.starts_with(&format!("{name}=")))
                .map(str::to_owned)
                .collect();
            let q = kept.join("&");
            let err = verify(&post(&q, BODY), KEY, SECRET, TS);
            if name == "body_md5" {
                // Without body_md5 the signature no longer matches either; the
                // signature is checked first.
                assert!(matches!(err, Err(SignatureError::InvalidSignature { .. })), "{name}");
            } else {
                assert_eq!(err, Err(SignatureError::Missing(name)), "{name}");
                assert_eq!(err.err().map(|e| e.status()), Some(401));
            }
        }
        // Correctly signed without body_md5 but with a body.
        let params = format!("auth_key={KEY}&auth_timestamp={TS}&auth_version=1.0");
        let q = signed_query("POST", "/apps/3/events", &params, &params);
        assert_eq!(
            verify(&post(&q, BODY), KEY, SECRET, TS),
            Err(SignatureError::Missing("body_md5"))
        );
        assert_eq!(
            verify(&post("", BODY), KEY, SECRET, TS),
            Err(SignatureError::Missing("auth_key"))
        );
    }

    #[test]
    fn duplicate_auth_parameters() {
        let q = format!("{}&auth_key={KEY}", vector_query());
        assert_eq!(
            verify(&post(&q, BODY), KEY, SECRET, TS),
            Err(SignatureError::Duplicate("auth_key"))
        );
    }

    #[test]
    fn get_without_body_md5() {
        let params = format!(
            "auth_key={KEY}&auth_timestamp={TS}&auth_version=1.0&filter_by_prefix=presence-&info=user_count"
        );
        let q = signed_query("GET", "/apps/3/channels", &params, &params);
        let req = SignedRequest { method: "GET", path: "/apps/3/channels", query: &q, body: b"" };
        assert_eq!(verify(&req, KEY, SECRET, TS), Ok(()));
    }

    #[test]
    fn get_with_empty_body_md5() {
        // pusher-http-python sends the MD5 of the empty body on GET.
        let params = format!(
            "auth_key={KEY}&auth_timestamp={TS}&auth_version=1.0&body_md5=d41d8cd98f00b204e9800998ecf8427e"
        );
        let q = signed_query("GET", "/apps/3/channels", &params, &params);
        let req = SignedRequest { method: "GET", path: "/apps/3/channels", query: &q, body: b"" };
        assert_eq!(verify(&req, KEY, SECRET, TS), Ok(()));
        // Any other body_md5 with an empty body is refused, even when signed.
        let params =
            format!("auth_key={KEY}&auth_timestamp={TS}&auth_version=1.0&body_md5={BODY_MD5}");
        let q = signed_query("GET", "/apps/3/channels", &params, &params);
        let req = SignedRequest { method: "GET", path: "/apps/3/channels", query: &q, body: b"" };
        assert_eq!(verify(&req, KEY, SECRET, TS), Err(SignatureError::BodyMd5Mismatch));
    }

    #[test]
    fn percent_encoded_values_are_decoded_before_signing() {
        // PHP signs raw values but sends them encoded (spec §12.2 rule 1).
        let signed = format!(
            "auth_key={KEY}&auth_timestamp={TS}&auth_version=1.0&filter_by_prefix=presence-a b&info=user_count,subscription_count"
        );
        let sent = format!(
            "auth_key={KEY}&auth_timestamp={TS}&auth_version=1.0&filter_by_prefix=presence-a+b&info=user_count%2csubscription_count"
        );
        let q = signed_query("GET", "/apps/3/channels", &signed, &sent);
        let req = SignedRequest { method: "GET", path: "/apps/3/channels", query: &q, body: b"" };
        assert_eq!(verify(&req, KEY, SECRET, TS), Ok(()));
        // Encoded keys too, and %20 for space.
        let sent =
            sent.replace("filter_by_prefix=presence-a+b", "filter%5Fby_prefix=presence-a%20b");
        let q = signed_query("GET", "/apps/3/channels", &signed, &sent);
        let req = SignedRequest { method: "GET", path: "/apps/3/channels", query: &q, body: b"" };
        assert_eq!(verify(&req, KEY, SECRET, TS), Ok(()));
    }

    #[test]
    fn array_values_join_with_commas() {
        let signed = format!("auth_key={KEY}&auth_timestamp={TS}&auth_version=1.0&channels=a,b,c");
        for sent_channels in [
            "channels[]=a&channels[]=b&channels[]=c",
            "channels%5B%5D=a&channels%5B%5D=b&channels%5B%5D=c",
            "channels%5B0%5D=a&channels%5B1%5D=b&channels%5B2%5D=c",
            "channels=a&channels=b&channels=c",
        ] {
            // Array entries may arrive before or after the auth parameters.
            let sent =
                format!("{sent_channels}&auth_key={KEY}&auth_timestamp={TS}&auth_version=1.0");
            let q = signed_query("GET", "/apps/3/x", &signed, &sent);
            let req = SignedRequest { method: "GET", path: "/apps/3/x", query: &q, body: b"" };
            assert_eq!(verify(&req, KEY, SECRET, TS), Ok(()), "{sent_channels}");
        }
    }

    #[test]
    fn decoder() {
        assert_eq!(&*percent_decode("a+b%20c%2C%zz%4"), b"a b c,%zz%4");
        assert!(matches!(percent_decode("plain"), Cow::Borrowed(_)));
        assert_eq!(&*percent_decode("%C3%A9"), "é".as_bytes());
        assert_eq!(&*normalise_key(Cow::Borrowed(b"Channels[]")), b"channels");
        assert_eq!(&*normalise_key(Cow::Borrowed(b"[]")), b"[]");
        assert_eq!(&*normalise_key(Cow::Borrowed(b"a[b")), b"a[b");
        // Empty pairs and pairs without '=' are tolerated.
        let params = parse_query("&b&&a=1&");
        let keys: Vec<&[u8]> = params.iter().map(|p| &*p.key).collect();
        assert_eq!(keys, [&b"a"[..], &b"b"[..]]);
    }
}
