//! The agents connected right now, and the commands sent to them that await an answer.
//!
//! Each connected agent has a session (a number that changes on every reconnect) and a
//! channel down its stream. `dispatch` sends a command and waits for the result with the
//! same operation ID, for as long as the session lasts: the caller decides how long to keep
//! its client waiting, not how long the answer may take (a late answer is still applied). A
//! result is accepted only from the host the command was sent to. When a session ends, every
//! command still waiting on it fails at once, and the session's end names them, so that
//! their outcome is settled before a new session's inventory is read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};
use vmm_proto::{
    Command, CommandResult, CoordinatorMessage, ErrorKind, command, command_result,
    coordinator_message,
};
use vmm_shared::{HostId, OperationId, VmId};

pub type SessionId = u64;

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

#[derive(Default)]
pub struct AgentRegistry {
    next_session: AtomicU64,
    agents: Mutex<HashMap<HostId, ConnectedAgent>>,
    pending: Mutex<HashMap<OperationId, PendingCommand>>,
}

/// What a host answered to a command it carried out.
#[derive(Debug)]
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

impl AgentRegistry {
    /// Records a new session for `host`, replacing (and so ending) any older one. Returns
    /// the session and the operations the older one left unanswered.
    pub fn attach(
        &self,
        host: HostId,
        sender: mpsc::Sender<Result<CoordinatorMessage, tonic::Status>>,
    ) -> (SessionId, Vec<OperationId>) {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let previous = lock(&self.agents).insert(host.clone(), ConnectedAgent { session, sender });
        let mut abandoned = Vec::new();
        if previous.is_some() {
            tracing::warn!(host = %host, "agent reconnected; its previous session is replaced");
            abandoned = self.fail_pending_for(&host);
        }
        (session, abandoned)
    }

    /// Ends `session` of `host` and returns the operations it left unanswered; `None` when
    /// a newer session has replaced it (then the host is still connected and nothing
    /// changes).
    pub fn detach(&self, host: &HostId, session: SessionId) -> Option<Vec<OperationId>> {
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

    /// Ends whatever session `host` has (its certificate was revoked) and returns the
    /// operations it left unanswered; `None` when it had none. Dropping the session's
    /// channel ends the stream to the agent; its session loop then finds itself replaced.
    pub fn disconnect(&self, host: &HostId) -> Option<Vec<OperationId>> {
        lock(&self.agents).remove(host)?;
        Some(self.fail_pending_for(host))
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
        let Ok(result) = answer.await else {
            return Err(DispatchError::Disconnected(host.clone()));
        };
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
