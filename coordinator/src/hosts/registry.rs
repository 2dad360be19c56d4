//! The agents connected right now, and the commands sent to them that await an answer.
//!
//! Each connected agent has a session (a number that changes on every reconnect) and a
//! channel down its stream. `dispatch` sends a command and waits for the result with the
//! same operation ID, up to a bound. A result is accepted only from the host the command
//! was sent to. When a session ends, every command still waiting on it fails at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use vmm_proto::{
    Command, CommandResult, CoordinatorMessage, ErrorKind, command_result, coordinator_message,
};
use vmm_shared::{HostId, OperationId};

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
    #[error("host {host} did not answer within {timeout:?}")]
    TimedOut { host: HostId, timeout: Duration },
    #[error("{message}")]
    Failed { kind: ErrorKind, message: String },
}

impl AgentRegistry {
    /// Records a new session for `host`, replacing (and so ending) any older one.
    pub fn attach(
        &self,
        host: HostId,
        sender: mpsc::Sender<Result<CoordinatorMessage, tonic::Status>>,
    ) -> SessionId {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let previous = lock(&self.agents).insert(host.clone(), ConnectedAgent { session, sender });
        if previous.is_some() {
            tracing::warn!(host = %host, "agent reconnected; its previous session is replaced");
            self.fail_pending_for(&host);
        }
        session
    }

    /// Ends `session` of `host`. Returns false when a newer session has replaced it (then
    /// the host is still connected and nothing changes).
    pub fn detach(&self, host: &HostId, session: SessionId) -> bool {
        let mut agents = lock(&self.agents);
        match agents.get(host) {
            Some(agent) if agent.session == session => {
                agents.remove(host);
                drop(agents);
                self.fail_pending_for(host);
                true
            }
            _ => false,
        }
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

    /// Sends `command` to `host` and waits for its result.
    pub async fn dispatch(
        &self,
        host: &HostId,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandSuccess, DispatchError> {
        let operation_id: OperationId = command
            .operation_id
            .parse()
            .expect("commands are built with a valid operation ID");
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
        let result = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => return Err(DispatchError::Disconnected(host.clone())),
            Err(_) => {
                lock(&self.pending).remove(&operation_id);
                return Err(DispatchError::TimedOut {
                    host: host.clone(),
                    timeout,
                });
            }
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
                tracing::info!(host = %host, %operation_id, "result for an operation nobody waits for (timed out or unknown)");
            }
        }
    }

    fn fail_pending_for(&self, host: &HostId) {
        // Dropping the reply senders wakes the waiters with `Disconnected`.
        lock(&self.pending).retain(|_, command| &command.host != host);
    }
}
