//! The agent's side of the coordinator session: enrol first if the host has no certificate
//! yet (`enrol`), dial, register with a full inventory, then heartbeat, forward state changes
//! and answer commands on one bidirectional stream (renewing the certificate over the same
//! connection when it is due), and start over (on the agent's [`Backoff`] schedule) whenever
//! the stream ends.
//!
//! The coordinator being away changes nothing on the host: VMs keep running, polling goes
//! on, and the next registration's inventory tells the coordinator the truth.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Code, Request, Status};
use vmm_proto::agent_control_client::AgentControlClient;
use vmm_proto::agent_message::Body as AgentBody;
use vmm_proto::coordinator_message::Body as CoordinatorBody;
use vmm_proto::{AgentMessage, Heartbeat, HostCapacity, Register, VmStateChanged};
use vmm_shared::{HostId, error_chain};

use crate::backoff::Backoff;
use crate::commands::{CommandExecutor, operation_kind};
use crate::enrol::{Credentials, EnrolError};
use crate::hypervisor::{HypervisorError, HypervisorHandle};
use crate::metrics::agent as agent_metrics;
use crate::poller::StatePoller;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the coordinator may take to answer `Register`.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
const OUTGOING_QUEUE: usize = 256;
/// How long a registration waits for creates and deletes still running from the last
/// session before it takes the inventory anyway.
const EXISTENCE_SETTLE_BOUND: Duration = Duration::from_secs(60);

/// Who the agent is and how it reaches the coordinator.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub coordinator_url: String,
    pub host_id: HostId,
    /// The certificate (or the development token) every connection to the coordinator uses.
    pub credentials: Credentials,
    pub heartbeat_interval: Duration,
}

impl SessionSettings {
    /// A connection to the coordinator with these settings: what sessions use, and what any
    /// other call to the coordinator (an image transfer) should use, passing each request
    /// through [`Credentials::authorize`].
    pub async fn connect(&self) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(self.coordinator_url.clone())?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        self.credentials.connect(endpoint).await
    }
}

/// Keeps a session with the coordinator open for as long as the agent runs.
pub struct CoordinatorLink {
    settings: SessionSettings,
    hypervisor: HypervisorHandle,
    poller: Arc<StatePoller>,
    executor: Arc<CommandExecutor>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot reach the coordinator")]
    Dial(#[source] tonic::transport::Error),
    #[error(
        "the coordinator refused the agent's credential: check its certificate (AGENT_DATA_DIR/\
         identity; a deleted host must be enrolled again) or AGENT_TOKEN ({0})"
    )]
    Unauthenticated(String),
    #[error("the stream failed: {}: {}", .0.code(), .0.message())]
    Rpc(Status),
    #[error(
        "this host's certificate expired at {0}: enrol it again with a new join token \
         (remove AGENT_DATA_DIR/identity, set JOIN_TOKEN_FILE, restart)"
    )]
    CertificateExpired(String),
    #[error("the coordinator broke the protocol: {0}")]
    Protocol(&'static str),
    #[error("the coordinator closed the stream")]
    Closed,
    #[error("cannot read the host's state")]
    Hypervisor(#[source] HypervisorError),
}

impl From<Status> for SessionError {
    fn from(status: Status) -> Self {
        if status.code() == Code::Unauthenticated {
            Self::Unauthenticated(status.message().to_owned())
        } else {
            Self::Rpc(status)
        }
    }
}

impl From<HypervisorError> for SessionError {
    fn from(error: HypervisorError) -> Self {
        Self::Hypervisor(error)
    }
}

impl CoordinatorLink {
    pub fn new(
        settings: SessionSettings,
        hypervisor: HypervisorHandle,
        poller: Arc<StatePoller>,
        executor: Arc<CommandExecutor>,
    ) -> Self {
        Self {
            settings,
            hypervisor,
            poller,
            executor,
        }
    }

    /// Runs sessions one after another, forever; returns only when the host has no
    /// certificate and cannot get one (the reason: no join token, a spent one, the wrong
    /// coordinator), which retrying would not change.
    pub async fn run(&self) -> EnrolError {
        let mut backoff = Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY);
        loop {
            if let Err(error) = self
                .settings
                .credentials
                .ensure_enrolled(&self.settings.coordinator_url, &self.settings.host_id)
                .await
            {
                if error.is_permanent() {
                    return error;
                }
                let retry_in = backoff.failed();
                tracing::warn!(coordinator = %self.settings.coordinator_url,
                    error = %error_chain(&error), ?retry_in, "cannot enrol yet");
                tokio::time::sleep(retry_in).await;
                continue;
            }
            let mut registered = false;
            let outcome = self.run_session(&mut registered).await;
            if registered {
                backoff.succeeded();
                agent_metrics::session_ended();
            }
            if let Err(SessionError::Unauthenticated(_) | SessionError::CertificateExpired(_)) =
                &outcome
            {
                // Retrying soon will not fix a refused credential.
                backoff.wait_longest();
            }
            let retry_in = backoff.failed();
            match outcome {
                Err(
                    error
                    @ (SessionError::Unauthenticated(_) | SessionError::CertificateExpired(_)),
                ) => {
                    tracing::error!(error = %error_chain(&error), ?retry_in, "coordinator session refused");
                }
                Err(error) => {
                    tracing::warn!(
                        coordinator = %self.settings.coordinator_url,
                        error = %error_chain(&error),
                        ?retry_in,
                        "coordinator session ended"
                    );
                }
                Ok(()) => {}
            }
            tokio::time::sleep(retry_in).await;
        }
    }

    /// One session, from dialling to the end of the stream. Sets `registered` once the
    /// coordinator accepted the registration.
    async fn run_session(&self, registered: &mut bool) -> Result<(), SessionError> {
        if let Some(identity) = self.settings.credentials.identity()
            && identity.not_after() <= std::time::SystemTime::now()
        {
            let at = unix_time_text(identity.not_after());
            return Err(SessionError::CertificateExpired(at));
        }
        let channel = self.settings.connect().await.map_err(SessionError::Dial)?;
        let mut client = AgentControlClient::new(channel.clone());

        // Subscribe before the inventory poll, so no change can fall between the two.
        let mut changes = self.poller.subscribe();
        let register = self.registration().await?;

        let (outgoing, outgoing_queue) = mpsc::channel(OUTGOING_QUEUE);
        send(&outgoing, AgentBody::Register(register)).await?;
        let mut request = Request::new(ReceiverStream::new(outgoing_queue));
        self.settings.credentials.authorize(&mut request);
        let mut inbound = client.session(request).await?.into_inner();

        let registered_reply = tokio::time::timeout(REGISTRATION_TIMEOUT, inbound.message())
            .await
            .map_err(|_| SessionError::Protocol("no answer to Register in time"))??;
        let heartbeat_interval = match registered_reply.and_then(|message| message.body) {
            Some(CoordinatorBody::Registered(registered)) => {
                self.heartbeat_interval(registered.heartbeat_interval_ms)
            }
            Some(CoordinatorBody::Command(_) | CoordinatorBody::EvictImage(_)) => {
                return Err(SessionError::Protocol("a command came before Registered"));
            }
            None => return Err(SessionError::Closed),
        };
        *registered = true;
        agent_metrics::session_registered();
        // Ends with the session (dropped on return).
        let _renewal = self.settings.credentials.keep_renewed(channel);
        tracing::info!(
            coordinator = %self.settings.coordinator_url,
            host_id = %self.settings.host_id,
            heartbeat = ?heartbeat_interval,
            "registered with the coordinator"
        );

        let mut heartbeat = tokio::time::interval(heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    let libvirt_connected = self.poller.libvirt_connected();
                    send(&outgoing, AgentBody::Heartbeat(Heartbeat { libvirt_connected })).await?;
                }
                change = changes.recv() => match change {
                    Ok(domain) => {
                        let changed = VmStateChanged { domain: Some(domain) };
                        send(&outgoing, AgentBody::VmStateChanged(changed)).await?;
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "state changes piled up; resending every domain's state");
                        for domain in self.poller.tracker().reports() {
                            let changed = VmStateChanged { domain: Some(domain) };
                            send(&outgoing, AgentBody::VmStateChanged(changed)).await?;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(SessionError::Closed),
                },
                message = inbound.message() => match message?.map(|message| message.body) {
                    Some(Some(CoordinatorBody::Command(command))) => {
                        let executor = Arc::clone(&self.executor);
                        let outgoing = outgoing.clone();
                        // Runs to the end even if the session drops meanwhile: its result is
                        // remembered and answers the coordinator's re-send.
                        tokio::spawn(async move {
                            let kind = command.action.as_ref().map(operation_kind);
                            let started = std::time::Instant::now();
                            let result = executor.execute(command).await;
                            agent_metrics::command_finished(kind, &result, started.elapsed());
                            let _ = send(&outgoing, AgentBody::CommandResult(result)).await;
                        });
                    }
                    Some(Some(CoordinatorBody::Registered(_))) => {
                        tracing::debug!("ignoring a repeated Registered");
                    }
                    Some(Some(CoordinatorBody::EvictImage(evict))) => {
                        tracing::info!(image_id = %evict.image_id, "this agent caches no images; nothing to evict");
                    }
                    Some(None) => tracing::debug!("ignoring an empty coordinator message"),
                    None => return Err(SessionError::Closed),
                },
            }
        }
    }

    async fn registration(&self) -> Result<Register, SessionError> {
        // Commands of the last session that create or delete something may still run; the
        // inventory must show their outcome (see `commands::settling`).
        self.executor
            .existence_settled(EXISTENCE_SETTLE_BOUND)
            .await;
        let inventory = self.poller.inventory().await?;
        let facts = self.hypervisor.call(|hv| hv.host_facts()).await?;
        Ok(Register {
            host_id: self.settings.host_id.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            capacity: Some(HostCapacity {
                cpus: facts.cpus,
                memory_mib: facts.memory_mib,
                disk_gb: facts.disk_gb,
            }),
            libvirt_version: facts.libvirt_version,
            hypervisor: facts.hypervisor,
            kvm_usable: facts.kvm_usable,
            inventory,
            cached_images: Vec::new(),
        })
    }

    /// The configured interval, or the coordinator's if it wants heartbeats more often.
    fn heartbeat_interval(&self, coordinator_expects_ms: u32) -> Duration {
        let configured = self.settings.heartbeat_interval;
        if coordinator_expects_ms == 0 {
            return configured;
        }
        let expected = Duration::from_millis(u64::from(coordinator_expects_ms))
            .max(Duration::from_millis(100));
        configured.min(expected)
    }
}

/// Seconds since the Unix epoch, for messages (the agent has no calendar library).
fn unix_time_text(at: std::time::SystemTime) -> String {
    let seconds = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    format!("Unix time {seconds}")
}

async fn send(outgoing: &mpsc::Sender<AgentMessage>, body: AgentBody) -> Result<(), SessionError> {
    outgoing
        .send(AgentMessage { body: Some(body) })
        .await
        .map_err(|_| SessionError::Closed)
}

/// Sessions against an in-process fake coordinator (the real generated gRPC server trait)
/// and an in-memory host.
#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use futures::{Stream, StreamExt};
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Response, Streaming};
    use vmm_proto::agent_control_server::{AgentControl, AgentControlServer};
    use vmm_proto::command::Action;
    use vmm_proto::{
        Command, CoordinatorMessage, CreateVm, PowerState, Registered, command_result,
    };

    use super::*;
    use crate::hypervisor::memory::MemoryHost;
    use crate::state::StateTracker;

    const TOKEN: &str = "test-token";

    /// Accepts sessions with [`TOKEN`], answers Register, passes every agent message to the
    /// test and sends the test's commands down.
    struct FakeCoordinator {
        from_agent: mpsc::UnboundedSender<AgentMessage>,
        to_agent: tokio::sync::Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    }

    type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

    #[tonic::async_trait]
    impl AgentControl for FakeCoordinator {
        type SessionStream = Outbound;
        type FetchImageStream =
            Pin<Box<dyn Stream<Item = Result<vmm_proto::ImageChunk, Status>> + Send>>;

        async fn fetch_image(
            &self,
            _request: Request<vmm_proto::FetchImageRequest>,
        ) -> Result<Response<Self::FetchImageStream>, Status> {
            Err(Status::not_found("the fake coordinator holds no images"))
        }

        async fn session(
            &self,
            request: Request<Streaming<AgentMessage>>,
        ) -> Result<Response<Outbound>, Status> {
            let authorization = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if authorization != Some(&format!("Bearer {TOKEN}")) {
                return Err(Status::unauthenticated("unknown agent token"));
            }
            let mut inbound = request.into_inner();
            let from_agent = self.from_agent.clone();
            let commands = self.to_agent.lock().await.take().expect("one session");
            let (replies, replies_rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Some(Ok(message)) = inbound.next().await {
                    if matches!(message.body, Some(AgentBody::Register(_))) {
                        let registered = Registered {
                            heartbeat_interval_ms: 100,
                        };
                        let _ = replies.send(CoordinatorBody::Registered(registered));
                    }
                    let _ = from_agent.send(message);
                }
            });
            let replies = tokio_stream::wrappers::UnboundedReceiverStream::new(replies_rx);
            let commands = tokio_stream::wrappers::UnboundedReceiverStream::new(commands)
                .map(CoordinatorBody::Command);
            let outbound = futures::stream::select(replies, commands)
                .map(|body| Ok(CoordinatorMessage { body: Some(body) }));
            Ok(Response::new(Box::pin(outbound)))
        }
    }

    async fn start_fake_coordinator() -> (
        String,
        mpsc::UnboundedReceiver<AgentMessage>,
        mpsc::UnboundedSender<Command>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (from_agent, from_agent_rx) = mpsc::unbounded_channel();
        let (to_agent, to_agent_rx) = mpsc::unbounded_channel();
        let fake = FakeCoordinator {
            from_agent,
            to_agent: tokio::sync::Mutex::new(Some(to_agent_rx)),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentControlServer::new(fake))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (url, from_agent_rx, to_agent)
    }

    async fn agent_link(url: String, token: &str) -> CoordinatorLink {
        let host = MemoryHost::new();
        host.add_foreign_domain("test", crate::hypervisor::PowerState::Running);
        let hypervisor = host.spawn_handle().await.unwrap();
        let tracker = Arc::new(StateTracker::new());
        let poller = Arc::new(StatePoller::new(hypervisor.clone(), Arc::clone(&tracker)));
        let executor = Arc::new(CommandExecutor::new(
            hypervisor.clone(),
            tracker,
            Duration::from_secs(5),
            crate::journal::Journal::in_memory().unwrap(),
        ));
        let settings = SessionSettings {
            coordinator_url: url,
            host_id: "host-1".parse().unwrap(),
            credentials: Credentials::SharedToken(crate::config::AgentToken::new(token).unwrap()),
            heartbeat_interval: Duration::from_secs(2),
        };
        CoordinatorLink::new(settings, hypervisor, poller, executor)
    }

    async fn next_message(from_agent: &mut mpsc::UnboundedReceiver<AgentMessage>) -> AgentBody {
        tokio::time::timeout(Duration::from_secs(10), from_agent.recv())
            .await
            .expect("the agent sent something in time")
            .and_then(|message| message.body)
            .expect("a message with a body")
    }

    #[tokio::test]
    async fn the_agent_registers_heartbeats_and_answers_commands() {
        let (url, mut from_agent, to_agent) = start_fake_coordinator().await;
        let link = agent_link(url, TOKEN).await;
        let agent = tokio::spawn(async move { link.run().await });

        let AgentBody::Register(register) = next_message(&mut from_agent).await else {
            panic!("the first message must be Register");
        };
        assert_eq!(register.host_id, "host-1");
        let facts = MemoryHost::default_facts();
        assert_eq!(
            register.capacity,
            Some(HostCapacity {
                cpus: facts.cpus,
                memory_mib: facts.memory_mib,
                disk_gb: facts.disk_gb,
            })
        );
        assert_eq!(register.hypervisor, facts.hypervisor);
        assert!(
            register
                .inventory
                .iter()
                .any(|domain| domain.domain_name == "test")
        );
        assert!(
            register
                .inventory
                .iter()
                .all(|domain| domain.generation > 0)
        );

        let vm_id = vmm_shared::VmId::new_random();
        let create = CreateVm {
            name: "web".into(),
            cpu: 1,
            memory_mib: 128,
            disk_gb: 1,
            start: true,
            ..Default::default()
        };
        to_agent
            .send(Command {
                operation_id: "op-1".into(),
                vm_id: vm_id.to_string(),
                action: Some(Action::Create(create)),
            })
            .unwrap();

        let mut heartbeats = 0;
        let result = loop {
            match next_message(&mut from_agent).await {
                AgentBody::Heartbeat(heartbeat) => {
                    assert!(heartbeat.libvirt_connected);
                    heartbeats += 1;
                }
                AgentBody::CommandResult(result) => break result,
                _ => {}
            }
        };
        assert_eq!(result.operation_id, "op-1");
        let Some(command_result::Outcome::Domain(domain)) = result.outcome else {
            panic!("create failed: {result:?}");
        };
        assert_eq!(domain.vm_id, vm_id.to_string());
        assert_eq!(domain.state(), PowerState::Running);
        while heartbeats < 2 {
            if let AgentBody::Heartbeat(_) = next_message(&mut from_agent).await {
                heartbeats += 1;
            }
        }
        agent.abort();
    }

    /// A change behind the agent's back reaches the coordinator through the host's hint,
    /// with the poll an hour away.
    #[tokio::test]
    async fn a_hinted_change_reaches_the_coordinator_without_a_poll() {
        let (url, mut from_agent, _to_agent) = start_fake_coordinator().await;
        let host = MemoryHost::new();
        let foreign = host.add_foreign_domain("test", crate::hypervisor::PowerState::Running);
        let hypervisor = host.spawn_handle().await.unwrap();
        let tracker = Arc::new(StateTracker::new());
        let poller = Arc::new(StatePoller::new(hypervisor.clone(), Arc::clone(&tracker)));
        let executor = Arc::new(CommandExecutor::new(
            hypervisor.clone(),
            tracker,
            Duration::from_secs(5),
            crate::journal::Journal::in_memory().unwrap(),
        ));
        let (outlet, streams) = crate::hypervisor::hints::outlet();
        hypervisor
            .call(|hv| hv.send_hints_to(outlet))
            .await
            .unwrap();
        let watching = Arc::clone(&poller);
        let watcher =
            tokio::spawn(async move { watching.run(Duration::from_secs(3600), streams).await });
        let settings = SessionSettings {
            coordinator_url: url,
            host_id: "host-1".parse().unwrap(),
            credentials: Credentials::SharedToken(crate::config::AgentToken::new(TOKEN).unwrap()),
            heartbeat_interval: Duration::from_secs(2),
        };
        let link = CoordinatorLink::new(settings, hypervisor, poller, executor);
        let agent = tokio::spawn(async move { link.run().await });
        let AgentBody::Register(_) = next_message(&mut from_agent).await else {
            panic!("the first message must be Register");
        };

        host.set_state(foreign, crate::hypervisor::PowerState::Paused, "");
        // The start-up poll's report may come first; the paused one must follow in time
        // (heartbeats keep coming meanwhile).
        let paused = async {
            loop {
                if let AgentBody::VmStateChanged(changed) = next_message(&mut from_agent).await {
                    let domain = changed.domain.unwrap();
                    assert_eq!(domain.domain_name, "test");
                    if domain.state() == PowerState::Paused {
                        break;
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), paused)
            .await
            .expect("the paused state reaches the coordinator in time");
        agent.abort();
        watcher.abort();
    }

    #[tokio::test]
    async fn a_refused_token_ends_the_session_as_unauthenticated() {
        let (url, _from_agent, _to_agent) = start_fake_coordinator().await;
        let link = agent_link(url, "wrong-token").await;
        let mut registered = false;
        let outcome = link.run_session(&mut registered).await;
        assert!(
            matches!(outcome, Err(SessionError::Unauthenticated(_))),
            "{outcome:?}"
        );
        assert!(!registered);
        assert!(error_chain(&outcome.unwrap_err()).contains("AGENT_TOKEN"));
    }
}
