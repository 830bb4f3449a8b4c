//! WebSocket frame codec (placeholder until the full codec lands).

use bytes::{BufMut, Bytes, BytesMut};

/// One complete unmasked text frame: header + payload, in one allocation.
pub fn text_frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    write_text_header(payload.len(), &mut out);
    out.put_slice(payload);
    out.freeze()
}

/// Writes a text frame header for a payload of `len` bytes.
pub fn write_text_header(len: usize, out: &mut BytesMut) {
    out.put_u8(0x81);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= 0xffff {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// A close frame.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(0x88);
    out.put_u8((2 + reason.len()) as u8);
    out.put_u16(code);
    out.put_slice(reason.as_bytes());
    out.freeze()
}
