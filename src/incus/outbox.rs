//! Frames waiting for one Incus WebSocket: bounded, with a close that ends
//! the stream. Kept apart from the Pusher outbox so that the two protocols
//! can change independently.

use std::{collections::VecDeque, task::Waker};

use bytes::Bytes;

use crate::{protocol::CloseCode, ws::codec};

/// Frames waiting to be written to one socket.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    closing: Option<CloseCode>,
    waker: Option<Waker>,
}

impl Outbox {
    /// Frames to write, oldest first; pass what the socket took to
    /// [`Outbox::consume`].
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.queue.iter()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// `Some(code)` once closing: what is queued (ending with the close
    /// frame) is still written, nothing new is accepted.
    pub fn closing(&self) -> Option<CloseCode> {
        self.closing
    }

    /// Drops `written` bytes from the front.
    pub fn consume(&mut self, mut written: usize) {
        self.queued_bytes = self.queued_bytes.saturating_sub(written);
        while written > 0 {
            let Some(front) = self.queue.front_mut() else { break };
            if written >= front.len() {
                written -= front.len();
                self.queue.pop_front();
            } else {
                bytes::Buf::advance(front, written);
                written = 0;
            }
        }
    }

    /// Registers the writer's waker.
    pub fn register(&mut self, waker: &Waker) {
        match &mut self.waker {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }

    /// Queues `frame`; `Err` when that would pass `limit` bytes (the
    /// caller closes the socket as too slow).
    pub(crate) fn push(&mut self, frame: Bytes, limit: usize) -> Result<(), ()> {
        if self.closing.is_some() {
            return Ok(());
        }
        if self.queued_bytes + frame.len() > limit {
            return Err(());
        }
        self.queued_bytes += frame.len();
        self.queue.push_back(frame);
        self.wake();
        Ok(())
    }

    /// Ends the stream with a close frame (empty reason, as the original).
    /// Queued messages are kept only for a normal close.
    pub(crate) fn close(&mut self, code: CloseCode) {
        if self.closing.is_some() {
            return;
        }
        if code != CloseCode::NORMAL {
            // A partly written front frame must still be finished.
            self.queue.truncate(1.min(self.queue.len()));
            self.queued_bytes = self.queue.iter().map(Bytes::len).sum();
        }
        let close = codec::close_frame(code.0, "");
        self.queued_bytes += close.len();
        self.queue.push_back(close);
        self.closing = Some(code);
        self.wake();
    }

    fn wake(&mut self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }
}
