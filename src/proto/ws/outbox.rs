//! Frames waiting to be written to one WebSocket, whatever protocol queued
//! them (Pusher's shard core or Incus's state): bounded, refcounted frames,
//! a close that ends the stream, and the writer's waker.

use std::{collections::VecDeque, task::Waker};

use bytes::Bytes;

use crate::core::CloseCode;

/// Frames waiting to be written to one connection.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    /// The front frame was partly written; it must be finished first.
    front_started: bool,
    closing: Option<CloseCode>,
    waker: Option<Waker>,
}

impl Outbox {
    /// Frames to write, oldest first. Pass the number of bytes the socket
    /// took to [`Outbox::consume`].
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.queue.iter()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Drops `written` bytes from the front.
    pub fn consume(&mut self, mut written: usize) {
        self.queued_bytes -= written;
        while written > 0 {
            let Some(front) = self.queue.front_mut() else { break };
            if written >= front.len() {
                written -= front.len();
                self.queue.pop_front();
                self.front_started = false;
            } else {
                bytes::Buf::advance(front, written);
                self.front_started = true;
                written = 0;
            }
        }
    }

    /// `Some(code)` once the connection is closing: everything queued
    /// (ending with the close frame) is still written, nothing new is added.
    pub fn closing(&self) -> Option<CloseCode> {
        self.closing
    }

    /// Registers the writer's waker, woken when frames or a close arrive.
    pub fn register(&mut self, waker: &Waker) {
        match &mut self.waker {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }

    /// Queues `frame`; gives it back when it would pass `limit` bytes.
    pub(crate) fn push(&mut self, frame: Bytes, limit: usize) -> Result<(), Bytes> {
        if self.closing.is_some() {
            return Ok(());
        }
        if self.queued_bytes + frame.len() > limit {
            return Err(frame);
        }
        self.queued_bytes += frame.len();
        self.queue.push_back(frame);
        self.wake();
        Ok(())
    }

    /// Ends the stream with `frames` (bypassing the size limit) and marks the
    /// outbox closing. Unstarted frames are dropped when `discard` is set.
    pub(crate) fn close(&mut self, code: CloseCode, discard: bool, frames: &[Bytes]) {
        if self.closing.is_some() {
            return;
        }
        if discard {
            let keep = usize::from(self.front_started);
            while self.queue.len() > keep {
                if let Some(f) = self.queue.pop_back() {
                    self.queued_bytes -= f.len();
                }
            }
        }
        for f in frames {
            self.queued_bytes += f.len();
            self.queue.push_back(f.clone());
        }
        self.closing = Some(code);
        self.wake();
    }

    /// Gives back the queue's capacity if nothing is queued. An outbox keeps
    /// its capacity between frames so busy connections do not allocate per
    /// frame; one found empty at a tick is idle.
    pub(crate) fn release_idle_capacity(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            self.queue = VecDeque::new();
        }
    }

    /// Capacity of the queue, for tests of the idle release.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    fn wake(&mut self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }
}
