//! The event hub: the durable job events of the core's change feed, kept in
//! a bounded ring for watch streams. The driver publishes only after the
//! inputs that caused them are on disk; watchers read by cursor (the core's
//! event sequence number) and wait on a `watch` channel for more.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use ebb_proto::v1 as pb;
use tokio::sync::watch;

/// One published event.
#[derive(Debug)]
pub struct HubEvent {
    /// The core's sequence number.
    pub seq: u64,
    /// The job it is about.
    pub job: u64,
    /// The job's team.
    pub team: Arc<str>,
    /// True for the job's `finished` event.
    pub finished: bool,
    /// The wire form.
    pub wire: pb::WatchEvent,
}

/// A cursor older than what the hub still holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Gone;

struct Ring {
    events: VecDeque<Arc<HubEvent>>,
    /// Events with `seq <= dropped_through` are no longer held.
    dropped_through: u64,
    capacity: usize,
}

/// See the module doc.
pub struct EventHub {
    ring: Mutex<Ring>,
    notify: watch::Sender<(u64, bool)>,
}

impl EventHub {
    /// A hub holding up to `capacity` events, knowing nothing at or before `start`.
    pub fn new(capacity: usize, start: u64) -> Self {
        EventHub {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                dropped_through: start,
                capacity,
            }),
            notify: watch::channel((start, false)).0,
        }
    }

    /// Appends events (in sequence order) and wakes watchers; `last_seq` is
    /// the feed position after them (events watchers do not see advance it too).
    pub fn publish(&self, events: Vec<Arc<HubEvent>>, last_seq: u64) {
        {
            let mut ring = self.ring.lock().expect("hub lock");
            for e in events {
                ring.events.push_back(e);
            }
            while ring.events.len() > ring.capacity {
                let old = ring.events.pop_front().expect("non-empty");
                ring.dropped_through = old.seq;
            }
        }
        self.notify
            .send_modify(|(seq, _)| *seq = (*seq).max(last_seq));
    }

    /// Wakes every watcher with "closed": the server is shutting down.
    pub fn close(&self) {
        self.notify.send_modify(|(_, closed)| *closed = true);
    }

    /// A receiver that changes whenever events are published.
    pub fn subscribe(&self) -> watch::Receiver<(u64, bool)> {
        self.notify.subscribe()
    }

    /// True if events after `cursor` are all still held.
    pub fn can_resume(&self, cursor: u64) -> bool {
        let ring = self.ring.lock().expect("hub lock");
        cursor >= ring.dropped_through
    }

    /// Up to `max` events after `cursor`, or [`Gone`] if some were dropped.
    pub fn read_after(&self, cursor: u64, max: usize) -> Result<Vec<Arc<HubEvent>>, Gone> {
        let ring = self.ring.lock().expect("hub lock");
        if cursor < ring.dropped_through {
            return Err(Gone);
        }
        let start = ring.events.partition_point(|e| e.seq <= cursor);
        Ok(ring.events.range(start..).take(max).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> Arc<HubEvent> {
        Arc::new(HubEvent {
            seq,
            job: 1,
            team: Arc::from("t"),
            finished: false,
            wire: pb::WatchEvent {
                cursor: seq,
                ..Default::default()
            },
        })
    }

    #[test]
    fn reads_after_a_cursor_and_reports_dropped_history() {
        let hub = EventHub::new(3, 10);
        hub.publish(vec![ev(11), ev(13), ev(14)], 14);
        let got: Vec<u64> = hub
            .read_after(11, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(got, vec![13, 14]);
        assert!(matches!(hub.read_after(9, 10), Err(Gone)));
        hub.publish(vec![ev(15)], 16);
        assert!(
            matches!(hub.read_after(10, 10), Err(Gone)),
            "11 was dropped"
        );
        assert!(hub.can_resume(11));
        let got: Vec<u64> = hub
            .read_after(11, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(got, vec![13, 14, 15]);
        assert_eq!(*hub.subscribe().borrow(), (16, false));
    }
}
