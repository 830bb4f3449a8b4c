//! The console viewers connected to one shard: each a bounded outbox that
//! drops (and counts) what it has no room for, and the numbering that lets
//! a viewer count what never reached it.
//!
//! Every shard numbers the console events it raises, per app (`seq`). A
//! viewer remembers the last number it saw from each shard; a jump means
//! events were dropped on the way (the source skipped a ring that was
//! behind), and each event its own outbox had no room for is counted too.
//! The sum is the viewer's `missed`, which the page shows.

use bytes::Bytes;
use slab::Slab;

use super::event::ConsoleEvent;
use crate::{
    core::{AppIdx, CloseCode},
    proto::ws::{
        codec,
        outbox::{Dirty, Outbox},
    },
};

/// A viewer's handle in [`Viewers`].
pub type ViewerKey = u32;

#[derive(Debug)]
struct Viewer {
    app: AppIdx,
    outbox: Outbox,
    /// Events that never reached this viewer.
    missed: u64,
    /// The last `seq` seen from each source: the shards, then the Redis
    /// bridge (source `shards`).
    last: Vec<Option<u64>>,
}

/// One shard's console viewers, and the numbers of the events it raises.
#[derive(Debug)]
pub struct Viewers {
    viewers: Slab<Viewer>,
    dirty: Dirty,
    shards: usize,
    /// Bytes a viewer may have waiting; past it events are dropped.
    limit: usize,
    /// The next `seq` of this shard's events, per app.
    next_seq: Vec<u64>,
}

impl Viewers {
    /// No viewers yet, on one of `shards` shards serving `apps` apps;
    /// each viewer holds at most `limit` bytes unsent.
    pub fn new(shards: usize, apps: usize, limit: usize) -> Self {
        Self {
            viewers: Slab::new(),
            dirty: Dirty::default(),
            shards,
            limit,
            next_seq: vec![0; apps],
        }
    }

    /// Adds a viewer of `app` whose socket the IO layer knows as `token`.
    pub fn open(&mut self, token: u32, app: AppIdx) -> ViewerKey {
        let viewer = Viewer {
            app,
            outbox: Outbox::new(token),
            missed: 0,
            last: vec![None; self.shards + 1],
        };
        self.viewers.insert(viewer) as ViewerKey
    }

    /// Forgets a viewer; returns the app it watched.
    pub fn remove(&mut self, key: ViewerKey) -> Option<AppIdx> {
        self.viewers.try_remove(key as usize).map(|v| v.app)
    }

    /// The app a viewer watches.
    pub fn app(&self, key: ViewerKey) -> Option<AppIdx> {
        self.viewers.get(key as usize).map(|v| v.app)
    }

    /// Viewers on this shard.
    pub fn len(&self) -> usize {
        self.viewers.len()
    }

    /// Whether no viewer is on this shard.
    pub fn is_empty(&self) -> bool {
        self.viewers.is_empty()
    }

    /// Events that never reached a viewer.
    pub fn missed(&self, key: ViewerKey) -> Option<u64> {
        self.viewers.get(key as usize).map(|v| v.missed)
    }

    /// A viewer's outbox, for its writer.
    pub fn outbox(&mut self, key: ViewerKey) -> Option<&mut Outbox> {
        self.viewers.get_mut(key as usize).map(|v| &mut v.outbox)
    }

    /// Hands over the tokens of the sockets with something new to write.
    pub fn take_dirty(&mut self, into: &mut Vec<u32>) {
        self.dirty.take(into);
    }

    /// Whether a viewer is closing.
    pub fn closing(&self, key: ViewerKey) -> bool {
        self.viewers.get(key as usize).is_none_or(|v| v.outbox.closing().is_some())
    }

    /// Ends a viewer's stream with a close frame.
    pub fn close(&mut self, key: ViewerKey, code: CloseCode) {
        if let Some(v) = self.viewers.get_mut(key as usize) {
            let close = codec::close_frame(code.0, code.reason());
            v.outbox.close(code, false, &[close], &mut self.dirty);
        }
    }

    /// Numbers an event this shard (`shard`) raised for `app` and builds
    /// its frame once, for every viewer on every shard.
    pub fn stamp(
        &mut self,
        app: AppIdx,
        event: &ConsoleEvent,
        shard: usize,
        time_ms: u64,
    ) -> (u64, Bytes) {
        let seq = self.next_seq.get(app as usize).copied().unwrap_or_default();
        if let Some(next) = self.next_seq.get_mut(app as usize) {
            *next += 1;
        }
        (seq, codec::text_frame(&event.to_json(shard, seq, time_ms)))
    }

    /// Queues event `seq` of shard `from` for every viewer of `app` here,
    /// counting the numbers it skipped and the viewers without room.
    pub fn deliver(&mut self, app: AppIdx, from: usize, seq: u64, frame: &Bytes) {
        for (_, v) in self.viewers.iter_mut().filter(|(_, v)| v.app == app) {
            if let Some(last) = v.last.get_mut(from) {
                match *last {
                    Some(seen) if seq <= seen => {}
                    Some(seen) => {
                        v.missed += seq - seen - 1;
                        *last = Some(seq);
                    }
                    None => *last = Some(seq),
                }
            }
            if v.outbox.push(frame.clone(), self.limit, &mut self.dirty).is_err() {
                v.missed += 1;
            }
        }
    }

    /// Queues a frame for one viewer (a reply, the counters); one without
    /// room is dropped, and not counted: `missed` counts events only, and
    /// the next counters replace the last.
    pub fn send(&mut self, key: ViewerKey, frame: Bytes) {
        if let Some(v) = self.viewers.get_mut(key as usize) {
            let _ = v.outbox.push(frame, self.limit, &mut self.dirty);
        }
    }

    /// Every viewer, with its app and missed count.
    pub fn each(&self) -> impl Iterator<Item = (ViewerKey, AppIdx, u64)> + '_ {
        self.viewers.iter().map(|(k, v)| (k as ViewerKey, v.app, v.missed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::SocketId;

    fn event() -> ConsoleEvent {
        let socket_id: SocketId = "1.1".parse().expect("socket id");
        ConsoleEvent::Connected { socket_id }
    }

    fn queued(viewers: &mut Viewers, key: ViewerKey) -> usize {
        viewers.outbox(key).map_or(0, |o| o.frames().count())
    }

    #[test]
    fn only_viewers_of_the_app_get_its_events() {
        let mut viewers = Viewers::new(2, 2, 1 << 20);
        let a = viewers.open(10, 0);
        let b = viewers.open(11, 1);
        let (seq, frame) = viewers.stamp(0, &event(), 0, 0);
        viewers.deliver(0, 0, seq, &frame);
        assert_eq!((queued(&mut viewers, a), queued(&mut viewers, b)), (1, 0));
        let mut dirty = Vec::new();
        viewers.take_dirty(&mut dirty);
        assert_eq!(dirty, vec![10]);
    }

    #[test]
    fn numbers_run_per_app() {
        let mut viewers = Viewers::new(1, 2, 1 << 20);
        let seqs: Vec<u64> =
            [0, 0, 1, 0].iter().map(|&app| viewers.stamp(app, &event(), 0, 0).0).collect();
        assert_eq!(seqs, vec![0, 1, 0, 2]);
    }

    #[test]
    fn a_gap_in_a_shards_numbers_is_missed() {
        let mut viewers = Viewers::new(2, 1, 1 << 20);
        let v = viewers.open(1, 0);
        let frame = Bytes::from_static(b"x");
        // The first number seen from a shard is the start: nothing missed.
        viewers.deliver(0, 1, 5, &frame);
        viewers.deliver(0, 1, 6, &frame);
        assert_eq!(viewers.missed(v), Some(0));
        viewers.deliver(0, 1, 9, &frame);
        assert_eq!(viewers.missed(v), Some(2));
        // Each shard has its own numbers.
        viewers.deliver(0, 0, 0, &frame);
        assert_eq!(viewers.missed(v), Some(2));
    }

    #[test]
    fn a_viewer_that_does_not_read_drops_and_counts() {
        let mut viewers = Viewers::new(1, 1, 100);
        let v = viewers.open(1, 0);
        let frame = Bytes::from(vec![b'x'; 40]);
        for seq in 0..5 {
            viewers.deliver(0, 0, seq, &frame);
        }
        // Two fit in 100 bytes; the other three are counted, not queued.
        assert_eq!(queued(&mut viewers, v), 2);
        assert_eq!(viewers.missed(v), Some(3));
        // Room again once written: delivery resumes.
        if let Some(outbox) = viewers.outbox(v) {
            outbox.consume(80);
        }
        viewers.deliver(0, 0, 5, &frame);
        assert_eq!((queued(&mut viewers, v), viewers.missed(v)), (1, Some(3)));
    }
}
