//! Hints from the host that domains may have changed: libvirt's lifecycle events on the
//! real host, the same hints from the in-memory host. They let the agent look at a changed
//! domain within milliseconds instead of at its next poll.
//!
//! A hint is never a state. It says "look at this domain" (or "look at everything"): the
//! poller then reads the domain and reports what it is now. Hints can be coalesced by the
//! host, dropped when the agent falls a whole queue behind (then [`Hint::Missed`] comes
//! first), and are lost while the connection to the host is down; so the periodic poll
//! stays, as the safety net.
//!
//! Every connection to the host has a [`HintStream`] of its own. The host hands each one
//! out through a [`HintOutlet`] (the current connection's at once, a new one after every
//! reconnect), and the poller reads the newest from [`HintStreams`]; see
//! [`super::Hypervisor::send_hints_to`].
//!
//! Nothing here blocks the sender: a full queue drops the hint and counts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use vmm_libvirt_events::{EventReceiver, Notice};

/// What the host hints at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// The domain with this UUID may have changed (or be gone): read it.
    DomainChanged { uuid: String },
    /// `count` hints were dropped because the queue was full: read every domain.
    Missed { count: u64 },
    /// The connection to the host closed: reconnect and read every domain. Its stream
    /// ends after what was still queued.
    ConnectionClosed { reason: String },
}

/// The hints of one connection to the host, in the order the host gave them. Ends (`None`)
/// once the connection is replaced or closed and everything queued was received.
pub struct HintStream {
    source: Source,
}

enum Source {
    /// libvirt's lifecycle events, from `vmm-libvirt-events`.
    Libvirt(EventReceiver),
    /// A queue of this module, for hosts that make their hints themselves.
    Queue(QueueReceiver),
}

impl std::fmt::Debug for HintStream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match self.source {
            Source::Libvirt(_) => "libvirt",
            Source::Queue(_) => "queue",
        };
        formatter
            .debug_struct("HintStream")
            .field("source", &source)
            .finish()
    }
}

impl HintStream {
    /// The hints of a libvirt connection's lifecycle-event registration.
    pub fn from_libvirt(events: EventReceiver) -> Self {
        Self {
            source: Source::Libvirt(events),
        }
    }

    /// The next hint; waits for one. `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<Hint> {
        match &mut self.source {
            Source::Libvirt(events) => events.recv().await.map(hint_of_notice),
            Source::Queue(queue) => queue.recv().await,
        }
    }

    /// The next hint if one is there now; `None` if there is none now (or the stream has
    /// ended, which the next [`Self::recv`] tells).
    pub fn try_recv(&mut self) -> Option<Hint> {
        match &mut self.source {
            Source::Libvirt(events) => events.try_recv().ok().map(hint_of_notice),
            Source::Queue(queue) => queue.try_recv(),
        }
    }
}

fn hint_of_notice(notice: Notice) -> Hint {
    match notice {
        Notice::Lifecycle(event) => Hint::DomainChanged { uuid: event.uuid },
        Notice::Missed { count } => Hint::Missed { count },
        Notice::ConnectionClosed(reason) => Hint::ConnectionClosed {
            reason: reason.to_string(),
        },
    }
}

/// A bounded queue of hints: the sending half never blocks, a full queue drops the hint,
/// and the stream says how many were dropped before anything else.
pub fn queue(capacity: usize) -> (HintSender, HintStream) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let sender = HintSender {
        sender,
        dropped: Arc::clone(&dropped),
    };
    let stream = HintStream {
        source: Source::Queue(QueueReceiver {
            receiver,
            dropped,
            reported: 0,
        }),
    };
    (sender, stream)
}

/// The sending half of [`queue`].
#[derive(Debug, Clone)]
pub struct HintSender {
    sender: mpsc::Sender<Hint>,
    dropped: Arc<AtomicU64>,
}

impl HintSender {
    /// Queues the hint, or drops and counts it when the queue is full. Nothing happens when
    /// the stream is gone.
    pub fn send(&self, hint: Hint) {
        if let Err(TrySendError::Full(_)) = self.sender.try_send(hint) {
            self.dropped.fetch_add(1, Ordering::Release);
        }
    }
}

struct QueueReceiver {
    receiver: mpsc::Receiver<Hint>,
    dropped: Arc<AtomicU64>,
    /// Drops already told as [`Hint::Missed`].
    reported: u64,
}

impl QueueReceiver {
    async fn recv(&mut self) -> Option<Hint> {
        if let Some(missed) = self.missed() {
            return Some(missed);
        }
        match self.receiver.recv().await {
            Some(hint) => Some(hint),
            None => self.missed(),
        }
    }

    fn try_recv(&mut self) -> Option<Hint> {
        if let Some(missed) = self.missed() {
            return Some(missed);
        }
        match self.receiver.try_recv() {
            Ok(hint) => Some(hint),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => self.missed(),
        }
    }

    fn missed(&mut self) -> Option<Hint> {
        let dropped = self.dropped.load(Ordering::Acquire);
        (dropped > self.reported).then(|| {
            let count = dropped - self.reported;
            self.reported = dropped;
            Hint::Missed { count }
        })
    }
}

/// Where a host hands out the [`HintStream`] of each connection it opens.
#[derive(Debug, Clone)]
pub struct HintOutlet {
    streams: mpsc::UnboundedSender<HintStream>,
}

impl HintOutlet {
    /// Hands out a connection's stream; false if nobody reads them any more.
    pub fn hand_out(&self, stream: HintStream) -> bool {
        self.streams.send(stream).is_ok()
    }
}

/// The poller's end of a [`HintOutlet`]: the stream of every connection, newest last.
#[derive(Debug)]
pub struct HintStreams {
    streams: mpsc::UnboundedReceiver<HintStream>,
}

impl HintStreams {
    /// The next connection's stream; `None` once the host dropped its outlet.
    pub async fn next(&mut self) -> Option<HintStream> {
        self.streams.recv().await
    }

    /// The streams handed out so far and not yet taken, oldest first; does not wait.
    pub fn streams_now(&mut self) -> Vec<HintStream> {
        std::iter::from_fn(|| self.streams.try_recv().ok()).collect()
    }
}

/// An outlet for the host and the streams for the poller.
pub fn outlet() -> (HintOutlet, HintStreams) {
    let (streams, receiver) = mpsc::unbounded_channel();
    (HintOutlet { streams }, HintStreams { streams: receiver })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(uuid: &str) -> Hint {
        Hint::DomainChanged { uuid: uuid.into() }
    }

    #[test]
    fn a_full_queue_drops_counts_and_says_so_first() {
        let (sender, mut stream) = queue(2);
        for uuid in ["a", "b", "c", "d"] {
            sender.send(changed(uuid));
        }
        assert_eq!(stream.try_recv(), Some(Hint::Missed { count: 2 }));
        assert_eq!(stream.try_recv(), Some(changed("a")));
        sender.send(changed("e"));
        sender.send(changed("f"));
        assert_eq!(stream.try_recv(), Some(Hint::Missed { count: 1 }));
        assert_eq!(stream.try_recv(), Some(changed("b")));
        assert_eq!(stream.try_recv(), Some(changed("e")));
        assert_eq!(stream.try_recv(), None);
    }

    #[tokio::test]
    async fn the_stream_ends_when_the_sender_is_gone() {
        let (sender, mut stream) = queue(4);
        sender.send(changed("a"));
        drop(sender);
        assert_eq!(stream.recv().await, Some(changed("a")));
        assert_eq!(stream.recv().await, None);
    }

    #[tokio::test]
    async fn streams_are_handed_out_in_order_and_end_with_the_outlet() {
        let (outlet, mut streams) = outlet();
        let (first_sender, first) = queue(1);
        let (_second_sender, second) = queue(1);
        assert!(outlet.hand_out(first));
        assert!(outlet.hand_out(second));
        drop(outlet);
        let mut first = streams.next().await.unwrap();
        first_sender.send(changed("x"));
        assert_eq!(first.recv().await, Some(changed("x")));
        assert!(streams.next().await.is_some());
        assert!(streams.next().await.is_none());
    }
}
