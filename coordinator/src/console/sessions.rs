//! The console sessions of this coordinator: at most one per VM and console type (the one
//! writer), at most `max_per_host` per host, and the consoles a host was asked to open and
//! has not attached yet.
//!
//! A session is held by a [`SessionGuard`] for as long as its relay runs; dropping the guard
//! frees its place. Taking a console over tells the guard of the session holding it to close
//! ([`SessionGuard::taken_over`] resolves), and the new session takes its place at once.
//!
//! What this module must never do: hand an attached console to anyone but the request that
//! asked for it, or accept it from a host other than the one asked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};
use uuid::Uuid;
use vmm_proto::{ConsoleFrame, ErrorKind};
use vmm_shared::{HostId, VmId};

use super::ConsoleKind;

/// A console session's ID: random, sent to the host in `OpenConsole` and named by its
/// `attach`.
pub type ConsoleId = Uuid;

/// A console the host attached: its frames, and the way down to it.
#[derive(Debug)]
pub struct Attached {
    pub inbound: Streaming<ConsoleFrame>,
    pub outbound: mpsc::Sender<Result<ConsoleFrame, Status>>,
}

/// What the host answered to `OpenConsole`.
#[derive(Debug)]
pub enum AttachOutcome {
    Attached(Box<Attached>),
    /// The host could not open the console.
    Failed {
        kind: ErrorKind,
        message: String,
    },
}

/// Why a console cannot be opened now.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "a {kind} console session of this VM is open (by {holder}, for {seconds} s); only one \
         may be open at a time: ask again with \"force\": true to take it over"
    )]
    Busy {
        kind: ConsoleKind,
        holder: String,
        seconds: u64,
    },
    #[error("host {0} has as many consoles open as it may; close one and try again")]
    HostFull(HostId),
}

/// Why an agent's attach was refused.
#[derive(Debug, thiserror::Error)]
pub enum AttachRefusal {
    #[error("no console {0} is waiting for its host (it timed out, or was never asked for)")]
    NotWaiting(ConsoleId),
    #[error("console {console} was asked of host {expected}, not of {presented}")]
    WrongHost {
        console: ConsoleId,
        expected: HostId,
        presented: HostId,
    },
}

#[derive(Debug)]
pub struct Sessions {
    max_per_host: usize,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    open: HashMap<(VmId, ConsoleKind), OpenSession>,
    per_host: HashMap<HostId, usize>,
    waiting: HashMap<ConsoleId, Waiting>,
}

#[derive(Debug)]
struct OpenSession {
    console_id: ConsoleId,
    holder: String,
    since: Instant,
    take_over: Option<oneshot::Sender<()>>,
}

#[derive(Debug)]
struct Waiting {
    host: HostId,
    reply: oneshot::Sender<AttachOutcome>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sessions {
    pub fn new(max_per_host: usize) -> Self {
        Self {
            max_per_host,
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    /// Who holds the `kind` console of `vm`, and for how long (seconds), if anyone does.
    pub fn holder(&self, vm: VmId, kind: ConsoleKind) -> Option<(String, u64)> {
        lock(&self.inner)
            .open
            .get(&(vm, kind))
            .map(|open| (open.holder.clone(), open.since.elapsed().as_secs()))
    }

    /// Takes the `kind` console of `vm` (on `host`) for `holder`: refused while another
    /// session holds it, unless `force`, which tells that session to close.
    pub fn begin(
        &self,
        vm: VmId,
        kind: ConsoleKind,
        host: &HostId,
        console_id: ConsoleId,
        holder: &str,
        force: bool,
    ) -> Result<SessionGuard, Refusal> {
        let mut inner = lock(&self.inner);
        let previous = inner.open.get(&(vm, kind));
        if let Some(previous) = previous
            && !force
        {
            return Err(Refusal::Busy {
                kind,
                holder: previous.holder.clone(),
                seconds: previous.since.elapsed().as_secs(),
            });
        }
        let on_host = inner.per_host.get(host).copied().unwrap_or(0);
        // A take-over frees the place it takes.
        if on_host - usize::from(previous.is_some()) >= self.max_per_host {
            return Err(Refusal::HostFull(host.clone()));
        }
        let (take_over, taken_over) = oneshot::channel();
        let replaced = inner.open.insert(
            (vm, kind),
            OpenSession {
                console_id,
                holder: holder.to_owned(),
                since: Instant::now(),
                take_over: Some(take_over),
            },
        );
        match replaced {
            Some(mut replaced) => {
                if let Some(signal) = replaced.take_over.take() {
                    let _ = signal.send(());
                }
            }
            None => *inner.per_host.entry(host.clone()).or_insert(0) += 1,
        }
        metrics::gauge!("console_sessions_open", "type" => kind.as_str()).increment(1.0);
        Ok(SessionGuard {
            inner: Arc::clone(&self.inner),
            vm,
            kind,
            host: host.clone(),
            console_id,
            taken_over: Some(taken_over),
        })
    }

    /// Waits for `host` to attach console `console_id`; the receiver gets what the host
    /// answered. Pair it with [`Sessions::stop_waiting`] when giving up.
    pub fn expect_attach(
        &self,
        console_id: ConsoleId,
        host: &HostId,
    ) -> oneshot::Receiver<AttachOutcome> {
        let (reply, outcome) = oneshot::channel();
        lock(&self.inner).waiting.insert(
            console_id,
            Waiting {
                host: host.clone(),
                reply,
            },
        );
        outcome
    }

    pub fn stop_waiting(&self, console_id: ConsoleId) {
        lock(&self.inner).waiting.remove(&console_id);
    }

    /// Hands what `host` answered for `console_id` to the request waiting for it. Refused
    /// (and the request left waiting) when the console was asked of another host.
    pub fn attach(
        &self,
        console_id: ConsoleId,
        host: &HostId,
        outcome: AttachOutcome,
    ) -> Result<(), AttachRefusal> {
        let mut inner = lock(&self.inner);
        let waiting = inner
            .waiting
            .remove(&console_id)
            .ok_or(AttachRefusal::NotWaiting(console_id))?;
        if &waiting.host != host {
            let refusal = AttachRefusal::WrongHost {
                console: console_id,
                expected: waiting.host.clone(),
                presented: host.clone(),
            };
            inner.waiting.insert(console_id, waiting);
            return Err(refusal);
        }
        drop(inner);
        waiting
            .reply
            .send(outcome)
            .map_err(|_| AttachRefusal::NotWaiting(console_id))
    }

    /// Sessions open now.
    pub fn open_count(&self) -> usize {
        lock(&self.inner).open.len()
    }
}

/// A console session's place; dropping it frees the place (unless a take-over has taken
/// it already).
#[derive(Debug)]
pub struct SessionGuard {
    inner: Arc<Mutex<Inner>>,
    vm: VmId,
    kind: ConsoleKind,
    host: HostId,
    console_id: ConsoleId,
    taken_over: Option<oneshot::Receiver<()>>,
}

impl SessionGuard {
    pub fn console_id(&self) -> ConsoleId {
        self.console_id
    }

    /// Resolves when a newer session takes this console over; never resolves otherwise.
    pub async fn taken_over(&mut self) {
        match self.taken_over.as_mut() {
            Some(signal) => {
                if signal.await.is_ok() {
                    self.taken_over = None;
                    return;
                }
                // The place is gone without a take-over: cannot happen while the guard
                // lives, but never spin on it.
                self.taken_over = None;
                std::future::pending::<()>().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        metrics::gauge!("console_sessions_open", "type" => self.kind.as_str()).decrement(1.0);
        let mut inner = lock(&self.inner);
        let ours = inner
            .open
            .get(&(self.vm, self.kind))
            .is_some_and(|open| open.console_id == self.console_id);
        if ours {
            inner.open.remove(&(self.vm, self.kind));
            if let Some(count) = inner.per_host.get_mut(&self.host) {
                *count -= 1;
                if *count == 0 {
                    inner.per_host.remove(&self.host);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> HostId {
        name.parse().unwrap()
    }

    #[tokio::test]
    async fn one_session_per_console_unless_taken_over() {
        let sessions = Sessions::new(8);
        let vm = VmId::new_random();
        let mut first = sessions
            .begin(
                vm,
                ConsoleKind::Serial,
                &host("h"),
                Uuid::new_v4(),
                "ann",
                false,
            )
            .unwrap();
        let busy = sessions
            .begin(
                vm,
                ConsoleKind::Serial,
                &host("h"),
                Uuid::new_v4(),
                "bob",
                false,
            )
            .unwrap_err();
        assert!(busy.to_string().contains("ann"), "{busy}");
        assert!(busy.to_string().contains("force"), "{busy}");
        // The other type of the same VM is another console.
        let _screen = sessions
            .begin(
                vm,
                ConsoleKind::Vnc,
                &host("h"),
                Uuid::new_v4(),
                "bob",
                false,
            )
            .unwrap();
        let second = sessions
            .begin(
                vm,
                ConsoleKind::Serial,
                &host("h"),
                Uuid::new_v4(),
                "bob",
                true,
            )
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), first.taken_over())
            .await
            .expect("the first session is told it was taken over");
        drop(first);
        assert_eq!(sessions.holder(vm, ConsoleKind::Serial).unwrap().0, "bob");
        drop(second);
        assert!(sessions.holder(vm, ConsoleKind::Serial).is_none());
        assert_eq!(sessions.open_count(), 1);
    }

    #[tokio::test]
    async fn a_host_has_a_bounded_number_of_consoles() {
        let sessions = Sessions::new(2);
        let guards: Vec<_> = (0..2)
            .map(|_| {
                sessions
                    .begin(
                        VmId::new_random(),
                        ConsoleKind::Serial,
                        &host("h"),
                        Uuid::new_v4(),
                        "ann",
                        false,
                    )
                    .unwrap()
            })
            .collect();
        let full = sessions.begin(
            VmId::new_random(),
            ConsoleKind::Serial,
            &host("h"),
            Uuid::new_v4(),
            "ann",
            false,
        );
        assert!(matches!(full, Err(Refusal::HostFull(_))), "{full:?}");
        sessions
            .begin(
                VmId::new_random(),
                ConsoleKind::Serial,
                &host("other"),
                Uuid::new_v4(),
                "ann",
                false,
            )
            .unwrap();
        drop(guards);
        assert!(
            inner_per_host(&sessions, "h").is_none(),
            "places are freed on drop"
        );
    }

    fn inner_per_host(sessions: &Sessions, name: &str) -> Option<usize> {
        lock(&sessions.inner).per_host.get(&host(name)).copied()
    }

    #[tokio::test]
    async fn only_the_host_asked_may_attach() {
        let sessions = Sessions::new(8);
        let console = Uuid::new_v4();
        let outcome = sessions.expect_attach(console, &host("right"));
        let failed = || AttachOutcome::Failed {
            kind: ErrorKind::Conflict,
            message: "no".into(),
        };
        let refused = sessions.attach(console, &host("wrong"), failed());
        assert!(
            matches!(refused, Err(AttachRefusal::WrongHost { .. })),
            "{refused:?}"
        );
        sessions.attach(console, &host("right"), failed()).unwrap();
        assert!(matches!(
            outcome.await.unwrap(),
            AttachOutcome::Failed { .. }
        ));
        assert!(matches!(
            sessions.attach(console, &host("right"), failed()),
            Err(AttachRefusal::NotWaiting(_))
        ));
    }
}
