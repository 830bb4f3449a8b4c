//! The delivered message (spec §5.2), formatted and framed once:
//! `{"event":…,"data":{…},"time":<server unix secs>[,"internal_url":…]}`.
//!
//! One allocation holds the WebSocket frame (header, JSON, `\n`), and the
//! long-poll body is a slice of it without the header and newline, so both
//! transports share the same refcounted bytes.

use bytes::{BufMut, Bytes, BytesMut};
use simd_json::{OwnedValue, prelude::*};

use crate::{core::json::write_str, proto::ws::codec};

/// One message ready for any socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The complete WebSocket text frame, JSON followed by `\n` as the
    /// original sends it.
    pub frame: Bytes,
    /// The same JSON without framing or newline: a long-poll body.
    pub body: Bytes,
}

/// Why a `message` could not be formatted; the original drops these
/// silently ("Could not format message"), stapes logs them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// `message` is missing or not an object.
    #[error("message must be an object")]
    NotAnObject,
    /// `event` is missing or not a string.
    #[error("message.event must be a string")]
    Event,
    /// `data` is missing or not an object.
    #[error("message.data must be an object")]
    Data,
}

/// Formats `message` with the server's time; the sender's `time` and any
/// other field are dropped, and a string `data.internal_url` is copied to
/// the top level (the original's hack for an old iOS client).
///
/// # Errors
///
/// [`FormatError`] when `event` or `data` is missing or of the wrong type.
pub fn format(message: Option<&OwnedValue>, now_unix: u64) -> Result<Delivery, FormatError> {
    let message = message.and_then(ValueAsObject::as_object).ok_or(FormatError::NotAnObject)?;
    let event = message.get("event").and_then(|e| e.as_str()).ok_or(FormatError::Event)?;
    let data = message.get("data").filter(|d| d.as_object().is_some()).ok_or(FormatError::Data)?;
    let internal_url = data.get("internal_url").and_then(|u| u.as_str());
    let mut json = String::with_capacity(64);
    json.push_str("{\"event\":");
    write_str(event, &mut json);
    json.push_str(",\"data\":");
    write_value(data, &mut json);
    json.push_str(",\"time\":");
    json.push_str(&now_unix.to_string());
    if let Some(url) = internal_url {
        json.push_str(",\"internal_url\":");
        write_str(url, &mut json);
    }
    json.push('}');
    Ok(frame_json(json.as_bytes()))
}

/// Writes `value` as Go's encoder did for Incus: object keys sorted, and
/// `<`, `>`, `&`, U+2028 and U+2029 escaped, so that clients comparing
/// bytes see what Incus sent. (Numbers keep their own text; Go passed them
/// through float64.)
pub(crate) fn write_value(value: &OwnedValue, out: &mut String) {
    match value {
        OwnedValue::Object(map) => {
            let mut fields: Vec<_> = map.iter().collect();
            fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in fields.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(key, out);
                out.push(':');
                write_value(value, out);
            }
            out.push('}');
        }
        OwnedValue::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        OwnedValue::String(text) => write_str(text, out),
        OwnedValue::Static(_) => out.push_str(&value.encode()),
    }
}

/// Frames JSON text once for both transports.
pub fn frame_json(json: &[u8]) -> Delivery {
    let len = json.len() + 1;
    let mut out = BytesMut::with_capacity(codec::header_len(len) + len);
    let header = codec::write_text_header(len, &mut out);
    out.put_slice(json);
    out.put_u8(b'\n');
    let frame = out.freeze();
    let body = frame.slice(header..header + json.len());
    Delivery { frame, body }
}
