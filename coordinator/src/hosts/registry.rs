//! The agents connected right now, and the commands sent to them that await an answer.
//!
//! Each connected agent has a session (a number that changes on every reconnect) and a
//! channel down its stream. `dispatch` sends a command and waits for the result with the
//! same operation ID, for as long as the session lasts: the caller decides how long to keep
//! its client waiting, not how long the answer may take (a late answer is still applied). A
//! result is accepted only from the host the command was sent to. When a session ends, every
//! command still waiting on it fails at once, and the session's end names them, so that
//! their outcome is settled before a new session's inventory is read.
//!
//! A session is named by its host's session epoch (`hosts::store::register_session`), so
//! the registry and the database agree on which session is current; an older session can
//! never replace a newer one.
//!
//! Shutdown ([`AgentRegistry::begin_shutdown`]): every session ends without recording
//! anything per host (the coordinator records all hosts at once, see `app`), every command
//! in flight fails, and [`AgentRegistry::tasks_finished`] waits for the background tasks
//! that write to the database (sessions, operations) before the database is closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use vmm_proto::{
    Command, CommandResult, CoordinatorMessage, ErrorKind, command, command_result,
    coordinator_message,
};
use vmm_shared::{HostId, OperationId, VmId};

pub type SessionId = crate::hosts::store::SessionEpoch;

/// Locks `mutex`, also after a holder panicked: every update of the registry's maps is a
/// single insert or remove, so what a panicking holder leaves behind is consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct ConnectedAgent {
    session: SessionId,
    sender: mpsc::Sender<Result<CoordinatorMessage, tonic::Status>>,
}

struct PendingCommand {
    host: HostId,
    reply: oneshot::Sender<CommandResult>,
}

pub struct AgentRegistry {
    agents: Mutex<HashMap<HostId, ConnectedAgent>>,
    pending: Mutex<HashMap<OperationId, PendingCommand>>,
    stopping: watch::Sender<bool>,
    tasks: Arc<TaskCount>,
}

impl Default for AgentRegistry {
    fn default() -> Self {
        Self {
            agents: Mutex::default(),
            pending: Mutex::default(),
            stopping: watch::Sender::new(false),
            tasks: Arc::default(),
        }
    }
}

/// Background tasks that write to the database, and a way to wait until none is left.
#[derive(Default)]
struct TaskCount {
    running: AtomicUsize,
    idle: Notify,
}

/// Held by a background task that writes to the database; dropping it says it is done.
pub struct TaskGuard {
    count: Arc<TaskCount>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.count.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.count.idle.notify_waiters();
        }
    }
}

/// Why a session could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("a newer session of host {0} is connected")]
    Superseded(HostId),
    #[error("the coordinator is shutting down")]
    ShuttingDown,
}

/// What a host answered to a command it carried out.
#[derive(Clone, Debug)]
pub struct CommandSuccess {
    /// The domain as it is after the command.
    pub domain: vmm_proto::DomainReport,
    /// The snapshot made, for a snapshot create.
    pub snapshot: Option<vmm_proto::SnapshotReport>,
}

/// Why a command did not produce a result from the host.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("host {0} is not connected")]
    NotConnected(HostId),
    #[error("host {0} disconnected before answering")]
    Disconnected(HostId),
    #[error("{message}")]
    Failed { kind: ErrorKind, message: String },
}

/// What a host's answer to a command means.
pub fn outcome_of(result: CommandResult) -> Result<CommandSuccess, DispatchError> {
    match result.outcome {
        Some(command_result::Outcome::Domain(domain)) => Ok(CommandSuccess {
            domain,
            snapshot: result.snapshot,
        }),
        Some(command_result::Outcome::Error(error)) => Err(DispatchError::Failed {
            kind: ErrorKind::try_from(error.kind).unwrap_or(ErrorKind::Internal),
            message: error.message,
        }),
        None => Err(DispatchError::Failed {
            kind: ErrorKind::Internal,
            message: "the host answered without an outcome".into(),
        }),
    }
}

impl AgentRegistry {
    /// Records `session` (the epoch its registration took) for `host`, replacing (and so
    /// ending) any older one, and returns the operations the older one left unanswered. A
    /// session older than the one connected is refused, as is any during shutdown.
    pub fn attach(
        &self,
        host: HostId,
        session: SessionId,
        sender: mpsc::Sender<Result<CoordinatorMessage, tonic::Status>>,
    ) -> Result<Vec<OperationId>, AttachError> {
        if self.is_stopping() {
            return Err(AttachError::ShuttingDown);
        }
        let mut agents = lock(&self.agents);
        if agents
            .get(&host)
            .is_some_and(|current| current.session > session)
        {
            return Err(AttachError::Superseded(host));
        }
        let previous = agents.insert(host.clone(), ConnectedAgent { session, sender });
        drop(agents);
        let mut abandoned = Vec::new();
        if previous.is_some() {
            tracing::warn!(host = %host, "agent reconnected; its previous session is replaced");
            abandoned = self.fail_pending_for(&host);
        }
        Ok(abandoned)
    }

    /// Ends `session` of `host` and returns the operations it left unanswered; `None` when
    /// a newer session has replaced it (then the host is still connected and nothing
    /// changes), or when the coordinator is shutting down (which records every host itself).
    pub fn detach(&self, host: &HostId, session: SessionId) -> Option<Vec<OperationId>> {
        if self.is_stopping() {
            return None;
        }
        let mut agents = lock(&self.agents);
        match agents.get(host) {
            Some(agent) if agent.session == session => {
                agents.remove(host);
                drop(agents);
                Some(self.fail_pending_for(host))
            }
            _ => None,
        }
    }

    /// Starts the shutdown: no session is attached any more, every connected one ends (its
    /// stream down to the agent closes) without recording anything, and every command in
    /// flight fails as its host disconnected.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
        let ended: Vec<HostId> = lock(&self.agents).drain().map(|(host, _)| host).collect();
        for host in &ended {
            self.fail_pending_for(host);
        }
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once [`AgentRegistry::begin_shutdown`] has been called.
    pub async fn stopped(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|stopping| *stopping).await;
    }

    /// Counts a background task that writes to the database until the guard is dropped.
    pub fn track_task(&self) -> TaskGuard {
        self.tasks.running.fetch_add(1, Ordering::AcqRel);
        TaskGuard {
            count: Arc::clone(&self.tasks),
        }
    }

    /// Waits up to `bound` for every tracked task to finish; false if some are still running.
    pub async fn tasks_finished(&self, bound: Duration) -> bool {
        let idle = async {
            loop {
                let notified = self.tasks.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.tasks.running.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(bound, idle).await.is_ok()
    }

    /// Ends whatever session `host` has (its certificate was revoked) and returns it with
    /// the operations it left unanswered; `None` when it had none. Dropping the session's
    /// channel ends the stream to the agent; its session loop then finds itself replaced.
    pub fn disconnect(&self, host: &HostId) -> Option<(SessionId, Vec<OperationId>)> {
        let ended = lock(&self.agents).remove(host)?;
        Some((ended.session, self.fail_pending_for(host)))
    }

    pub fn is_connected(&self, host: &HostId) -> bool {
        lock(&self.agents).contains_key(host)
    }

    pub fn is_current(&self, host: &HostId, session: SessionId) -> bool {
        lock(&self.agents)
            .get(host)
            .is_some_and(|agent| agent.session == session)
    }

    pub fn connected_count(&self) -> usize {
        lock(&self.agents).len()
    }

    /// Sends a message that expects no answer (e.g. `OpenConsole`) to `host`. Returns
    /// whether the host is connected and its session took the message.
    pub async fn notify(&self, host: &HostId, body: coordinator_message::Body) -> bool {
        let sender = lock(&self.agents)
            .get(host)
            .map(|agent| agent.sender.clone());
        match sender {
            Some(sender) => sender
                .send(Ok(CoordinatorMessage { body: Some(body) }))
                .await
                .is_ok(),
            None => false,
        }
    }

    /// Sends a message that expects no answer (e.g. `EvictImage`) to every connected host.
    /// Returns how many hosts it was handed to.
    pub async fn notify_all(&self, body: coordinator_message::Body) -> usize {
        let senders: Vec<_> = lock(&self.agents)
            .values()
            .map(|agent| agent.sender.clone())
            .collect();
        let mut sent = 0;
        for sender in senders {
            let message = CoordinatorMessage {
                body: Some(body.clone()),
            };
            if sender.send(Ok(message)).await.is_ok() {
                sent += 1;
            }
        }
        sent
    }

    /// Sends `action` on `vm` to `host` as `operation_id` and waits for its result, for as
    /// long as the host's session lasts.
    pub async fn dispatch(
        &self,
        host: &HostId,
        operation_id: OperationId,
        vm: VmId,
        action: command::Action,
    ) -> Result<CommandSuccess, DispatchError> {
        let command = Command {
            operation_id: operation_id.to_string(),
            vm_id: vm.to_string(),
            action: Some(action),
        };
        outcome_of(self.dispatch_command(host, command).await?)
    }

    /// Sends `command` down `host`'s session and waits for the host's answer, as long as
    /// the session lasts.
    pub async fn dispatch_command(
        &self,
        host: &HostId,
        command: Command,
    ) -> Result<CommandResult, DispatchError> {
        let operation_id: OperationId =
            command
                .operation_id
                .parse()
                .map_err(|_| DispatchError::Failed {
                    kind: ErrorKind::Internal,
                    message: "a command without a valid operation ID".into(),
                })?;
        let sender = lock(&self.agents)
            .get(host)
            .map(|agent| agent.sender.clone())
            .ok_or_else(|| DispatchError::NotConnected(host.clone()))?;
        let (reply, answer) = oneshot::channel();
        lock(&self.pending).insert(
            operation_id,
            PendingCommand {
                host: host.clone(),
                reply,
            },
        );

        let message = CoordinatorMessage {
            body: Some(coordinator_message::Body::Command(command)),
        };
        if sender.send(Ok(message)).await.is_err() {
            lock(&self.pending).remove(&operation_id);
            return Err(DispatchError::NotConnected(host.clone()));
        }
        // Should the caller stop waiting, the entry goes with it.
        let _forget = ForgetOnDrop {
            registry: self,
            operation_id,
        };
        answer
            .await
            .map_err(|_| DispatchError::Disconnected(host.clone()))
    }

    /// Hands a result from `host` to the request waiting for it. Results for unknown
    /// operations, or for operations sent to another host, are dropped and logged.
    pub fn complete(&self, host: &HostId, result: CommandResult) {
        let Ok(operation_id) = result.operation_id.parse::<OperationId>() else {
            tracing::warn!(host = %host, operation_id = %result.operation_id, "result with a malformed operation ID ignored");
            return;
        };
        let mut pending = lock(&self.pending);
        match pending.remove(&operation_id) {
            Some(command) if &command.host == host => {
                let _ = command.reply.send(result);
            }
            Some(command) => {
                pending.insert(operation_id, command);
                tracing::warn!(host = %host, %operation_id, "result for an operation sent to another host ignored");
            }
            None => {
                tracing::warn!(host = %host, %operation_id, "result for an operation that is not in flight ignored");
            }
        }
    }

    /// Drops every command waiting on `host` and returns their operations. Dropping the
    /// reply senders wakes the waiters with `Disconnected`.
    fn fail_pending_for(&self, host: &HostId) -> Vec<OperationId> {
        let mut abandoned = Vec::new();
        lock(&self.pending).retain(|operation, command| {
            let keep = &command.host != host;
            if !keep {
                abandoned.push(*operation);
            }
            keep
        });
        abandoned
    }
}

/// Removes a waiting command's entry when its waiter goes away without an answer.
struct ForgetOnDrop<'a> {
    registry: &'a AgentRegistry,
    operation_id: OperationId,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        lock(&self.registry.pending).remove(&self.operation_id);
    }
}
