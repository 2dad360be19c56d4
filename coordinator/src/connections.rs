//! Admission and deadlines for every TCP connection the coordinator accepts: the REST API,
//! the metrics listener and the agents' gRPC listener each have an [`Admission`].
//!
//! - **Caps.** At most `max_connections` at once per listener, and (REST API) at most
//!   `max_per_client` from one client address; trusted proxies are exempt from the latter,
//!   since every client behind them shares their address. A connection over the per-client
//!   cap is refused at once. When the listener is full, the connection that has waited
//!   longest for a request (or, gRPC, has not sent a byte) is closed to make room: idle
//!   connections cannot keep new clients out. Only when every connection is busy with a
//!   request is a new one refused. So the process never runs out of file descriptors (the
//!   caps are checked against its open-file limit at start), and health checks, logged-in
//!   users and agents keep being served while someone holds thousands of idle sockets.
//! - **Deadlines**, enforced by [`TrackedIo`], the wrapper every accepted socket is served
//!   through: a client must finish sending a request's headers within `header_timeout` of
//!   connecting (or of the first byte of a later request on the same connection), may sit
//!   between requests for `idle_timeout`, and may leave the coordinator's answer unread for
//!   at most `idle_timeout` (a write that makes no progress). A gRPC connection must start
//!   talking within `header_timeout`; afterwards HTTP/2 keep-alive pings watch it. Once a
//!   connection is upgraded (a WebSocket: `101 Switching Protocols`), none of these apply
//!   any more: a long-lived WebSocket keeps its own liveness checks.
//!
//! The time a whole request may take is the HTTP layer's business
//! (`crate::http::timeout`): it answers 408 with a JSON body.
//!
//! What this module must never do: close a connection while a request on it is being
//! handled, or count a connection in no table (every admitted socket holds a [`Ticket`]
//! until it is closed).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Connections a listener may be closing to make room at once, on top of its cap: the
/// bound on how far past `max_connections` its open sockets can go for a moment.
pub const MAX_PENDING_EVICTIONS: usize = 16;

/// What kind of traffic a listener carries: it decides which deadlines apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 requests (the REST API, the metrics listener).
    Http1,
    /// The agents' HTTP/2 (gRPC) streams.
    Grpc,
}

/// A listener's limits.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Names the listener in metrics and logs: `http`, `metrics` or `grpc`.
    pub listener: &'static str,
    pub protocol: Protocol,
    pub max_connections: usize,
    /// `None`: no cap per client address.
    pub max_per_client: Option<usize>,
    /// Addresses exempt from `max_per_client` (trusted reverse proxies).
    pub exempt_from_per_client: Vec<IpNet>,
    /// From connecting, or from the first byte of a later request, to the end of the
    /// request's headers (HTTP); to the first byte (gRPC).
    pub header_timeout: Duration,
    /// Between two requests on one connection (HTTP), and for a write that makes no progress.
    pub idle_timeout: Duration,
}

/// Why a new connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client address already has `max_per_client` connections open.
    PerClient,
    /// The listener has `max_connections` open and every one of them is busy.
    Full,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerClient => "per_client",
            Refusal::Full => "full",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::PerClient => "too many connections from your address; close some and retry",
            Refusal::Full => "the server has too many connections open; retry shortly",
        }
    }
}

/// The connections of one listener.
#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Connection>>,
    per_client: HashMap<IpAddr, usize>,
    /// Connections told to close that have not closed yet: they no longer count against
    /// `max_connections`.
    evicting: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            table: Mutex::new(Table::default()),
        })
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Admits a connection from `peer`, or says why not (see the module doc).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refusal> {
        let peer = canonical(peer);
        let listener = self.limits.listener;
        let mut table = lock(&self.table);
        let from_peer = table.per_client.get(&peer).copied().unwrap_or(0);
        if let Some(cap) = self.limits.max_per_client
            && from_peer >= cap
            && !self
                .limits
                .exempt_from_per_client
                .iter()
                .any(|net| net.contains(&peer))
        {
            refused(listener, Refusal::PerClient);
            return Err(Refusal::PerClient);
        }
        if table.open.len() - table.evicting >= self.limits.max_connections {
            if table.evicting >= MAX_PENDING_EVICTIONS {
                refused(listener, Refusal::Full);
                return Err(Refusal::Full);
            }
            let victim = table
                .open
                .values()
                .filter(|connection| !connection.evicted.load(Ordering::Acquire))
                .filter_map(|connection| Some((connection.evictable_since()?, connection)))
                .min_by_key(|(since, _)| *since)
                .map(|(_, connection)| Arc::clone(connection));
            let Some(victim) = victim else {
                refused(listener, Refusal::Full);
                return Err(Refusal::Full);
            };
            victim.evict();
            table.evicting += 1;
            metrics::counter!("connections_evicted_total", "listener" => listener).increment(1);
        }
        let id = table.next_id;
        table.next_id += 1;
        let connection = Arc::new(Connection {
            id,
            peer,
            protocol: self.limits.protocol,
            activity: Mutex::new(Activity {
                phase: Phase::Fresh,
                since: Instant::now(),
                in_flight: 0,
            }),
            evicted: AtomicBool::new(false),
            read_waker: Mutex::new(None),
        });
        table.open.insert(id, Arc::clone(&connection));
        *table.per_client.entry(peer).or_insert(0) += 1;
        metrics::gauge!("connections_open", "listener" => listener)
            .set((table.open.len() - table.evicting) as f64);
        Ok(Ticket {
            admission: Arc::clone(self),
            connection,
        })
    }

    /// Connections told to close to make room that have not closed yet.
    pub fn pending_evictions(&self) -> usize {
        lock(&self.table).evicting
    }

    /// Connections open now (not counting those told to close).
    pub fn open_connections(&self) -> usize {
        let table = lock(&self.table);
        table.open.len() - table.evicting
    }

    fn release(&self, connection: &Connection) {
        let mut table = lock(&self.table);
        if table.open.remove(&connection.id).is_none() {
            return;
        }
        if connection.evicted.load(Ordering::Acquire) {
            table.evicting -= 1;
        }
        if let Some(count) = table.per_client.get_mut(&connection.peer) {
            *count -= 1;
            if *count == 0 {
                table.per_client.remove(&connection.peer);
            }
        }
        metrics::gauge!("connections_open", "listener" => self.limits.listener)
            .set((table.open.len() - table.evicting) as f64);
    }
}

fn refused(listener: &'static str, refusal: Refusal) {
    metrics::counter!(
        "connections_refused_total",
        "listener" => listener,
        "reason" => refusal.as_str()
    )
    .increment(1);
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// An admitted connection's place in its listener's table; dropping it frees the place.
/// It travels inside the connection's [`TrackedIo`], so the place is held exactly as long
/// as the socket is open, an upgraded WebSocket included.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    connection: Arc<Connection>,
}

impl Ticket {
    pub fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(&self.connection);
    }
}

/// What a connection is doing, shared between its socket wrapper and the HTTP service that
/// serves its requests.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    peer: IpAddr,
    protocol: Protocol,
    activity: Mutex<Activity>,
    evicted: AtomicBool,
    /// The task reading this socket, woken when the connection is evicted.
    read_waker: Mutex<Option<Waker>>,
}

#[derive(Debug)]
struct Activity {
    phase: Phase,
    /// When the phase began.
    since: Instant,
    /// Requests whose answer has not been written out yet (HTTP).
    in_flight: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Accepted; no request yet (HTTP), nothing received yet (gRPC).
    Fresh,
    /// The first bytes of a further request arrived (HTTP).
    Head,
    /// A request is being handled or its answer written (HTTP).
    Busy,
    /// Between requests (HTTP).
    Idle,
    /// Talking (gRPC): HTTP/2 keep-alive watches it from here.
    Open,
    /// Switched protocols (WebSocket): no deadline, never evicted.
    Upgraded,
}

impl Connection {
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    fn activity(&self) -> MutexGuard<'_, Activity> {
        lock(&self.activity)
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        let mut activity = self.activity();
        let next = match (activity.phase, self.protocol) {
            (Phase::Idle, Protocol::Http1) => Phase::Head,
            (Phase::Fresh, Protocol::Grpc) => Phase::Open,
            _ => return,
        };
        activity.phase = next;
        activity.since = Instant::now();
    }

    /// A request's headers are complete and it is being handled. The returned guard marks
    /// the request finished when it is dropped, which the server arranges to happen once
    /// the answer's body is written out.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        let mut activity = self.activity();
        activity.in_flight += 1;
        if activity.phase != Phase::Upgraded {
            activity.phase = Phase::Busy;
            activity.since = Instant::now();
        }
        RequestGuard {
            connection: Arc::clone(self),
        }
    }

    fn request_finished(&self) {
        let idle = {
            let mut activity = self.activity();
            activity.in_flight = activity.in_flight.saturating_sub(1);
            let idle = activity.in_flight == 0 && activity.phase == Phase::Busy;
            if idle {
                activity.phase = Phase::Idle;
                activity.since = Instant::now();
            }
            idle
        };
        // The reader may be waiting without a deadline (it last looked while the request was
        // busy): wake it, so that it arms the idle deadline.
        if idle && let Some(waker) = lock(&self.read_waker).as_ref() {
            waker.wake_by_ref();
        }
    }

    /// The connection switched protocols: from now on no deadline applies to it.
    pub fn upgraded(&self) {
        self.activity().phase = Phase::Upgraded;
    }

    /// When the client must have sent more, if there is such a moment now.
    fn read_deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        let activity = self.activity();
        match activity.phase {
            Phase::Fresh | Phase::Head => Some(activity.since + limits.header_timeout),
            Phase::Idle => Some(activity.since + limits.idle_timeout),
            Phase::Busy | Phase::Open | Phase::Upgraded => None,
        }
    }

    /// Since when the connection may be closed to make room, if it may be.
    fn evictable_since(&self) -> Option<Instant> {
        let activity = self.activity();
        match (activity.phase, self.protocol) {
            (Phase::Fresh | Phase::Head | Phase::Idle, Protocol::Http1) => Some(activity.since),
            (Phase::Fresh, Protocol::Grpc) => Some(activity.since),
            _ => None,
        }
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        if let Some(waker) = lock(&self.read_waker).take() {
            waker.wake();
        }
    }

    fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }
}

/// Marks one request of a connection finished when dropped.
#[derive(Debug)]
pub struct RequestGuard {
    connection: Arc<Connection>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.connection.request_finished();
    }
}

/// A socket served under its listener's deadlines, holding its [`Ticket`].
#[derive(Debug)]
pub struct TrackedIo<T> {
    inner: T,
    ticket: Ticket,
    read_timer: Pin<Box<Sleep>>,
    read_timer_at: Option<Instant>,
    /// Since when writes have made no progress, and the timer for it.
    write_stalled: Option<(Instant, Pin<Box<Sleep>>)>,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, ticket: Ticket) -> Self {
        Self {
            inner,
            ticket,
            read_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            read_timer_at: None,
            write_stalled: None,
        }
    }

    pub fn connection(&self) -> &Arc<Connection> {
        self.ticket.connection()
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn limits(&self) -> &ConnectionLimits {
        &self.ticket.admission.limits
    }

    fn timed_out(&self, what: &'static str) -> io::Error {
        metrics::counter!(
            "connections_timed_out_total",
            "listener" => self.limits().listener,
            "phase" => what
        )
        .increment(1);
        tracing::debug!(
            listener = self.limits().listener,
            peer = %self.connection().peer,
            what,
            "connection closed: deadline passed"
        );
        io::Error::new(io::ErrorKind::TimedOut, what)
    }

    fn evicted_error(&self) -> io::Error {
        tracing::debug!(
            listener = self.limits().listener,
            peer = %self.connection().peer,
            "idle connection closed to make room for a new one"
        );
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "closed to make room for a new connection",
        )
    }

    /// Called when a write cannot proceed: fails once writes have stalled for the idle
    /// timeout, otherwise arranges to be woken then.
    fn poll_write_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.connection().activity().phase == Phase::Upgraded {
            self.write_stalled = None;
            return Poll::Pending;
        }
        let idle = self.limits().idle_timeout;
        let (_, timer) = self.write_stalled.get_or_insert_with(|| {
            let now = Instant::now();
            (now, Box::pin(tokio::time::sleep_until(now + idle)))
        });
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(self.timed_out("write")),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.connection().is_evicted() {
            return Poll::Ready(Err(this.evicted_error()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.connection().on_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                *lock(&this.connection().read_waker) = Some(cx.waker().clone());
                // Evicted between the check above and storing the waker: nobody will wake us.
                if this.connection().is_evicted() {
                    return Poll::Ready(Err(this.evicted_error()));
                }
                let Some(deadline) = this.connection().read_deadline(this.limits()) else {
                    return Poll::Pending;
                };
                if this.read_timer_at != Some(deadline) {
                    this.read_timer.as_mut().reset(deadline);
                    this.read_timer_at = Some(deadline);
                }
                match this.read_timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let what = match this.connection().activity().phase {
                            Phase::Idle => "idle",
                            _ => "header",
                        };
                        Poll::Ready(Err(this.timed_out(what)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => match this.poll_write_stall(cx) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                this.write_stalled = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => match this.poll_write_stall(cx) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                this.write_stalled = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => match this.poll_write_stall(cx) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                this.write_stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The open-file limit of this process, as (soft, hard).
pub fn open_file_limit() -> (Option<u64>, Option<u64>) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    (limit.current, limit.maximum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_client: Option<usize>) -> ConnectionLimits {
        ConnectionLimits {
            listener: "test",
            protocol: Protocol::Http1,
            max_connections: max,
            max_per_client: per_client,
            exempt_from_per_client: vec!["10.0.0.0/8".parse().unwrap()],
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn per_client_cap_refuses_and_frees_its_places() {
        let admission = Admission::new(limits(100, Some(2)));
        let a = admission.admit(ip("192.0.2.1")).unwrap();
        let _b = admission.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert_eq!(
            admission.admit(ip("192.0.2.1")).unwrap_err(),
            Refusal::PerClient
        );
        // Another address, and a trusted proxy past the cap, are admitted.
        let _c = admission.admit(ip("192.0.2.2")).unwrap();
        let proxy: Vec<Ticket> = (0..5)
            .map(|_| admission.admit(ip("10.1.2.3")).unwrap())
            .collect();
        assert_eq!(admission.open_connections(), 8);
        drop(a);
        let _d = admission.admit(ip("192.0.2.1")).unwrap();
        drop(proxy);
        assert_eq!(admission.open_connections(), 3);
    }

    #[tokio::test]
    async fn a_full_listener_evicts_the_longest_idle_and_never_a_busy_one() {
        let admission = Admission::new(limits(2, None));
        let busy = admission.admit(ip("192.0.2.1")).unwrap();
        let _request = busy.connection().request_started();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let idle = admission.admit(ip("192.0.2.2")).unwrap();
        // Full: the idle one makes room, the busy one is untouched.
        let newcomer = admission.admit(ip("192.0.2.3")).unwrap();
        assert!(idle.connection().is_evicted());
        assert!(!busy.connection().is_evicted());
        assert_eq!(admission.open_connections(), 2);
        // Busy and a fresh newcomer: the newcomer is evictable, so a third one gets in.
        let _request2 = newcomer.connection().request_started();
        assert_eq!(
            admission.admit(ip("192.0.2.4")).unwrap_err(),
            Refusal::Full,
            "every connection is busy"
        );
        drop(idle);
        assert_eq!(admission.open_connections(), 2);
    }

    /// A WebSocket: once its request answered 101, no deadline applies and it is never
    /// closed to make room.
    #[tokio::test]
    async fn an_upgraded_connection_has_no_deadline_and_is_never_evicted() {
        let limits = limits(1, None);
        let admission = Admission::new(limits.clone());
        let ticket = admission.admit(ip("192.0.2.1")).unwrap();
        let connection = Arc::clone(ticket.connection());
        assert!(
            connection.read_deadline(&limits).is_some(),
            "fresh: header deadline"
        );
        let request = connection.request_started();
        assert!(connection.read_deadline(&limits).is_none(), "busy: none");
        connection.upgraded();
        drop(request);
        assert!(connection.read_deadline(&limits).is_none());
        assert_eq!(admission.admit(ip("192.0.2.2")).unwrap_err(), Refusal::Full);
        // A plain request ends in the idle phase, which is evictable.
        drop(ticket);
        let plain = admission.admit(ip("192.0.2.3")).unwrap();
        drop(plain.connection().request_started());
        assert!(
            plain.connection().read_deadline(&limits).is_some(),
            "idle deadline"
        );
        admission.admit(ip("192.0.2.4")).unwrap();
        assert!(plain.connection().is_evicted());
    }

    /// Sockets told to close count until they have: past a bound, a full listener refuses
    /// rather than opening ever more while the old ones are still closing.
    #[tokio::test]
    async fn evictions_in_progress_are_bounded() {
        let admission = Admission::new(limits(1, None));
        let mut tickets = vec![admission.admit(ip("192.0.2.1")).unwrap()];
        for i in 0..MAX_PENDING_EVICTIONS {
            tickets.push(
                admission
                    .admit(IpAddr::from([198, 51, 100, i as u8]))
                    .unwrap(),
            );
        }
        assert_eq!(admission.pending_evictions(), MAX_PENDING_EVICTIONS);
        assert_eq!(
            admission.admit(ip("203.0.113.1")).unwrap_err(),
            Refusal::Full
        );
        // Once they have closed, room is made again.
        let newest = tickets.pop().unwrap();
        drop(tickets);
        assert_eq!(admission.pending_evictions(), 0);
        admission.admit(ip("203.0.113.1")).unwrap();
        assert!(newest.connection().is_evicted());
    }

    /// A reader that started waiting while a request was busy (no deadline then) gets the
    /// idle deadline once the request finishes: the connection closes on time.
    #[tokio::test]
    async fn the_idle_deadline_reaches_a_reader_already_waiting() {
        use tokio::io::AsyncReadExt;
        let limits = ConnectionLimits {
            header_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(200),
            ..limits(10, None)
        };
        let admission = Admission::new(limits);
        let ticket = admission.admit(ip("192.0.2.1")).unwrap();
        let (server_side, _client_side) = tokio::io::duplex(64);
        let mut io = TrackedIo::new(server_side, ticket);
        let request = io.connection().request_started();
        let started = Instant::now();
        let reader = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            io.read(&mut byte).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !reader.is_finished(),
            "no deadline while the request is busy"
        );
        drop(request);
        let error = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the idle deadline closes the connection")
            .unwrap()
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(500));
    }

    /// A connection that never sends a byte is cut off at the header deadline.
    #[tokio::test]
    async fn a_silent_connection_times_out_at_the_header_deadline() {
        use tokio::io::AsyncReadExt;
        let limits = ConnectionLimits {
            header_timeout: Duration::from_millis(100),
            ..limits(10, None)
        };
        let admission = Admission::new(limits);
        let ticket = admission.admit(ip("192.0.2.1")).unwrap();
        let (server_side, _client_side) = tokio::io::duplex(64);
        let mut io = TrackedIo::new(server_side, ticket);
        let mut byte = [0u8; 1];
        let error = tokio::time::timeout(Duration::from_secs(5), io.read(&mut byte))
            .await
            .expect("closed by the header deadline")
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(io);
        assert_eq!(admission.open_connections(), 0, "its place is free again");
    }
}
