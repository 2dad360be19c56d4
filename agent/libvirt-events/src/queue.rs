//! The queue between libvirt's event thread and the agent: a bounded tokio channel that
//! the event thread only ever `try_send`s into, so it never blocks, and whose memory stays
//! bounded however far the agent falls behind.
//!
//! Why bounded and dropping, not unbounded: an agent that stalls (a hung libvirt call, a
//! starved runtime) while a host churns through domains would otherwise grow without
//! limit. A dropped event costs little because events are hints and the agent's poll is
//! the safety net; but a drop must not go unnoticed, so every drop is counted and the
//! receiver says so ([`Notice::Missed`]) before anything else, which tells the agent to
//! poll at once instead of waiting for its next tick.
//!
//! Why tokio's channel: the agent is async, and `recv().await` needs no thread of its
//! own; `try_send` works from libvirt's plain OS thread.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
pub use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::error::TrySendError;

use crate::event::{CloseReason, LifecycleEvent};

/// What the receiver hands out, in the order it learns of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Lifecycle(LifecycleEvent),
    /// `count` events were dropped since the last `Missed` because the queue was full:
    /// poll every domain now.
    Missed {
        count: u64,
    },
    /// libvirt closed the connection: reconnect, register again on the new connection,
    /// poll every domain. Comes once, before the events still queued, and never for
    /// drivers without a persistent connection (e.g. `test:///`).
    ConnectionClosed(CloseReason),
}

/// How many events were queued and how many dropped because the queue was full, since
/// the registration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventStats {
    pub delivered: u64,
    pub dropped: u64,
}

pub(crate) enum Item {
    Event(LifecycleEvent),
    /// Only makes a waiting receiver look at the counters (e.g. after a close).
    Wake,
}

#[derive(Default)]
pub(crate) struct Counters {
    delivered: AtomicU64,
    dropped: AtomicU64,
    closed: OnceLock<CloseReason>,
}

impl Counters {
    pub(crate) fn stats(&self) -> EventStats {
        EventStats {
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Acquire),
        }
    }
}

/// The sending side, owned by the callbacks that run on libvirt's event thread. None of
/// its methods blocks or panics.
#[derive(Clone)]
pub(crate) struct Sink {
    sender: mpsc::Sender<Item>,
    counters: Arc<Counters>,
}

impl Sink {
    pub(crate) fn deliver(&self, event: LifecycleEvent) {
        match self.sender.try_send(Item::Event(event)) {
            Ok(()) => {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Release);
            }
            // Nobody listens any more: nothing to tell.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    pub(crate) fn connection_closed(&self, reason: CloseReason) {
        let _first = self.counters.closed.set(reason);
        // A full queue needs no wake-up: the receiver has items to come back for.
        let _ = self.sender.try_send(Item::Wake);
    }
}

/// The largest queue [`crate::register`] makes; a larger capacity is lowered to it.
pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;

pub(crate) fn bounded(capacity: usize) -> (Sink, EventReceiver, Arc<Counters>) {
    let (sender, queue) = mpsc::channel(capacity.clamp(1, MAX_QUEUE_CAPACITY));
    let counters = Arc::new(Counters::default());
    let sink = Sink {
        sender,
        counters: Arc::clone(&counters),
    };
    let receiver = EventReceiver {
        queue,
        counters: Arc::clone(&counters),
        missed_reported: 0,
        close_reported: false,
    };
    (sink, receiver, counters)
}

/// The agent's end of a registration's queue. It ends (`None`) once the registration is
/// dropped, libvirt has released the callback, and everything queued was received.
pub struct EventReceiver {
    queue: mpsc::Receiver<Item>,
    counters: Arc<Counters>,
    missed_reported: u64,
    close_reported: bool,
}

impl EventReceiver {
    /// The next notice; waits for one. `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<Notice> {
        loop {
            if let Some(notice) = self.counted_notice() {
                return Some(notice);
            }
            match self.queue.recv().await {
                Some(Item::Event(event)) => return Some(Notice::Lifecycle(event)),
                Some(Item::Wake) => {}
                None => return self.counted_notice(),
            }
        }
    }

    /// The next notice if there is one now.
    pub fn try_recv(&mut self) -> Result<Notice, TryRecvError> {
        loop {
            if let Some(notice) = self.counted_notice() {
                return Ok(notice);
            }
            match self.queue.try_recv()? {
                Item::Event(event) => return Ok(Notice::Lifecycle(event)),
                Item::Wake => {}
            }
        }
    }

    pub fn stats(&self) -> EventStats {
        self.counters.stats()
    }

    /// A close or a drop not yet reported.
    fn counted_notice(&mut self) -> Option<Notice> {
        if !self.close_reported
            && let Some(reason) = self.counters.closed.get()
        {
            self.close_reported = true;
            return Some(Notice::ConnectionClosed(*reason));
        }
        let dropped = self.counters.dropped.load(Ordering::Acquire);
        if dropped > self.missed_reported {
            let count = dropped - self.missed_reported;
            self.missed_reported = dropped;
            return Some(Notice::Missed { count });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::event::LifecycleKind;

    fn event(name: &str) -> LifecycleEvent {
        LifecycleEvent {
            uuid: "00000000-0000-0000-0000-000000000001".into(),
            name: name.into(),
            kind: LifecycleKind::Started,
            detail: 0,
            received_at: Instant::now(),
        }
    }

    fn name_of(notice: Result<Notice, TryRecvError>) -> String {
        match notice {
            Ok(Notice::Lifecycle(event)) => event.name,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn a_full_queue_drops_counts_and_reports_the_drop_first() {
        let (sink, mut receiver, _) = bounded(2);
        for name in ["a", "b", "c", "d", "e"] {
            sink.deliver(event(name));
        }
        assert_eq!(
            receiver.stats(),
            EventStats {
                delivered: 2,
                dropped: 3
            }
        );
        assert_eq!(receiver.try_recv(), Ok(Notice::Missed { count: 3 }));
        assert_eq!(name_of(receiver.try_recv()), "a");
        sink.deliver(event("f"));
        sink.deliver(event("g"));
        assert_eq!(receiver.try_recv(), Ok(Notice::Missed { count: 1 }));
        assert_eq!(name_of(receiver.try_recv()), "b");
        assert_eq!(name_of(receiver.try_recv()), "f");
        assert_eq!(receiver.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn a_close_is_reported_once_and_even_when_the_queue_is_full() {
        let (sink, mut receiver, _) = bounded(1);
        sink.deliver(event("a"));
        sink.connection_closed(CloseReason::Eof);
        sink.connection_closed(CloseReason::Error);
        assert_eq!(
            receiver.try_recv(),
            Ok(Notice::ConnectionClosed(CloseReason::Eof))
        );
        assert!(matches!(receiver.try_recv(), Ok(Notice::Lifecycle(_))));
        assert_eq!(receiver.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn the_stream_ends_when_every_sink_is_gone() {
        let (sink, mut receiver, _) = bounded(4);
        let close_sink = sink.clone();
        sink.deliver(event("a"));
        drop(sink);
        assert!(matches!(receiver.try_recv(), Ok(Notice::Lifecycle(_))));
        assert_eq!(receiver.try_recv(), Err(TryRecvError::Empty));
        drop(close_sink);
        assert_eq!(receiver.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn a_zero_capacity_is_raised_to_one() {
        let (sink, mut receiver, _) = bounded(0);
        sink.deliver(event("a"));
        sink.deliver(event("b"));
        assert_eq!(receiver.try_recv(), Ok(Notice::Missed { count: 1 }));
    }
}
