//! The agent's side of the coordinator session: enrol first if the host has no certificate
//! yet (`enrol`), dial, register with a full inventory, then heartbeat, forward state changes
//! and answer commands on one bidirectional stream (renewing the certificate over the same
//! connection when it is due), and start over (on the agent's [`Backoff`] schedule) whenever
//! the stream ends.
//!
//! The coordinator being away changes nothing on the host: VMs keep running, polling goes
//! on, and the next registration's inventory tells the coordinator the truth.
//!
//! A registration also lists the images the host caches; an `EvictImage` from the
//! coordinator is handed to the image cache, which keeps a base that a disk still uses. An
//! `OpenConsole` is handed to the console relays (`crate::console`), which attach the
//! console on a stream of their own.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Code, Request, Status};
use vmm_proto::agent_control_client::AgentControlClient;
use vmm_proto::agent_message::Body as AgentBody;
use vmm_proto::coordinator_message::Body as CoordinatorBody;
use vmm_proto::{AgentMessage, CachedImage, Heartbeat, HostCapacity, Register, VmStateChanged};
use vmm_shared::{HostId, error_chain};

use crate::backoff::Backoff;
use crate::commands::{CommandExecutor, operation_kind};
use crate::console::ConsoleRelays;
use crate::enrol::{Credentials, CurrentCoordinator, EnrolError};
use crate::hypervisor::{Eviction, HypervisorError, HypervisorHandle};
use crate::images::{ImageCache, ImageError};
use crate::metrics::agent as agent_metrics;
use crate::poller::StatePoller;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the coordinator may take to answer `Register`.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// After a session that registered ends, the coordinator is most likely back within
/// seconds (a restart, a network blip): this many retries about every
/// [`QUICK_RETRY_DELAY`] come before the delay grows, so that an agent does not sleep
/// through most of the time after the coordinator is back.
const QUICK_RETRIES: u32 = 20;
const QUICK_RETRY_DELAY: Duration = Duration::from_secs(1);
const OUTGOING_QUEUE: usize = 256;
/// How long a registration waits for creates and deletes still running from the last
/// session before it takes the inventory anyway.
const EXISTENCE_SETTLE_BOUND: Duration = Duration::from_secs(60);

/// Who the agent is and how it reaches the coordinator.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub coordinator_url: String,
    /// Further coordinators on the same database: after a session with one ends (or it
    /// cannot be reached), the next one in turn is dialled.
    pub other_coordinator_urls: Vec<String>,
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
        self.connect_to(&self.coordinator_url).await
    }

    /// As [`SessionSettings::connect`], to the coordinator at `url` (one of the list).
    pub async fn connect_to(
        &self,
        url: &str,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(url.to_owned())?
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
    images: Arc<ImageCache>,
    /// Where `OpenConsole` goes; `None`: consoles are refused (logged).
    consoles: Option<Arc<ConsoleRelays>>,
    /// Set to the URL of each session's coordinator.
    current_coordinator: Option<CurrentCoordinator>,
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
    #[error("cannot list the cached images")]
    Images(#[source] ImageError),
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
        images: Arc<ImageCache>,
    ) -> Self {
        Self {
            settings,
            hypervisor,
            poller,
            executor,
            images,
            consoles: None,
            current_coordinator: None,
        }
    }

    /// Hands the coordinator's `OpenConsole` to `consoles`.
    pub fn with_consoles(mut self, consoles: Arc<ConsoleRelays>) -> Self {
        self.consoles = Some(consoles);
        self
    }

    /// Keeps `current` on the URL of the coordinator each session is with, for the dialers
    /// that follow it (consoles, image fetches).
    pub fn with_current_coordinator(mut self, current: CurrentCoordinator) -> Self {
        self.current_coordinator = Some(current);
        self
    }

    /// Runs sessions one after another, forever; returns only when the host has no
    /// certificate and cannot get one (the reason: no join token, a spent one, the wrong
    /// coordinator), which retrying would not change.
    pub async fn run(&self) -> EnrolError {
        let mut backoff = Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY)
            .with_quick_retries(QUICK_RETRY_DELAY, QUICK_RETRIES);
        let urls: Vec<&str> = std::iter::once(self.settings.coordinator_url.as_str())
            .chain(
                self.settings
                    .other_coordinator_urls
                    .iter()
                    .map(String::as_str),
            )
            .collect();
        let mut turn = 0;
        loop {
            let url = urls[turn % urls.len()];
            if let Err(error) = self
                .settings
                .credentials
                .ensure_enrolled(url, &self.settings.host_id)
                .await
            {
                if error.is_permanent() {
                    return error;
                }
                // A coordinator that cannot be reached is no reason to wait for it: the
                // next attempt enrols with the next one.
                turn += 1;
                let retry_in = backoff.failed();
                tracing::warn!(coordinator = %url,
                    error = %error_chain(&error), ?retry_in, "cannot enrol yet");
                tokio::time::sleep(retry_in).await;
                continue;
            }
            let mut registered = false;
            if let Some(current) = &self.current_coordinator {
                current.set(url);
            }
            let outcome = self.run_session(url, &mut registered).await;
            // Whatever ended the session, the next one is tried with the next coordinator:
            // the one just left may be the one that is gone.
            turn += 1;
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
                        coordinator = %url,
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
    async fn run_session(&self, url: &str, registered: &mut bool) -> Result<(), SessionError> {
        if let Some(identity) = self.settings.credentials.identity()
            && identity.not_after() <= std::time::SystemTime::now()
        {
            let at = unix_time_text(identity.not_after());
            return Err(SessionError::CertificateExpired(at));
        }
        let channel = self
            .settings
            .connect_to(url)
            .await
            .map_err(SessionError::Dial)?;
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
            Some(
                CoordinatorBody::Command(_)
                | CoordinatorBody::EvictImage(_)
                | CoordinatorBody::OpenConsole(_),
            ) => {
                return Err(SessionError::Protocol("a command came before Registered"));
            }
            None => return Err(SessionError::Closed),
        };
        *registered = true;
        agent_metrics::session_registered();
        // Ends with the session (dropped on return).
        let _renewal = self.settings.credentials.keep_renewed(channel);
        tracing::info!(
            coordinator = %url,
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
                    Some(Some(CoordinatorBody::OpenConsole(open))) => match &self.consoles {
                        Some(consoles) => consoles.open(open),
                        None => tracing::warn!(console_id = %open.console_id,
                            "OpenConsole ignored: this agent relays no consoles"),
                    },
                    Some(Some(CoordinatorBody::EvictImage(evict))) => {
                        let images = Arc::clone(&self.images);
                        // Waits for creates of the same image; the session goes on meanwhile.
                        tokio::spawn(async move { evict_image(&images, &evict.image_id).await });
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
        let cached_images = self
            .images
            .held()
            .await
            .map_err(SessionError::Images)?
            .into_iter()
            .map(|held| CachedImage {
                image_id: held.image_id.to_string(),
                sha256: held.sha256,
                size_bytes: held.size_bytes,
            })
            .collect();
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
            cached_images,
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

/// Carries out the coordinator's `EvictImage`, which has no answer: the next registration
/// says what is left.
async fn evict_image(images: &ImageCache, image_id: &str) {
    let Ok(parsed) = image_id.parse() else {
        tracing::warn!(%image_id, "EvictImage names no image ID; ignored");
        return;
    };
    match images.evict(parsed).await {
        Ok(Eviction::Removed) => tracing::info!(%image_id, "evicted a cached image"),
        Ok(Eviction::InUse { disks }) => {
            tracing::info!(%image_id, disks, "a cached image the coordinator evicts is in use by disks; kept");
        }
        Ok(Eviction::NotCached) => {
            tracing::debug!(%image_id, "evicting an image this host does not cache")
        }
        Err(error) => tracing::warn!(%image_id, %error, "cannot evict a cached image"),
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
/// and an in-memory host; images are fetched over the real gRPC client.
#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::pin::Pin;

    use futures::{Stream, StreamExt};
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Response, Streaming};
    use vmm_proto::agent_control_server::{AgentControl, AgentControlServer};
    use vmm_proto::command::Action;
    use vmm_proto::{
        CloudInit, Command, CoordinatorMessage, CreateVm, EvictImage, FetchImageRequest,
        ImageChunk, ImageRef, PowerState, Registered, command_result,
    };

    use super::*;
    use crate::hypervisor::memory::MemoryHost;
    use crate::images::GrpcImageSource;
    use crate::state::StateTracker;

    const TOKEN: &str = "test-token";
    const CHUNK: usize = 1024 * 1024;

    /// Accepts sessions with [`TOKEN`], answers Register, passes every agent message to the
    /// test and sends the test's messages down; serves the images it holds to a caller with
    /// the token, counting the fetches.
    struct FakeCoordinator {
        from_agent: mpsc::UnboundedSender<AgentMessage>,
        to_agent: tokio::sync::Mutex<Option<mpsc::UnboundedReceiver<CoordinatorBody>>>,
        images: HashMap<String, Vec<u8>>,
        fetches: Arc<std::sync::atomic::AtomicUsize>,
    }

    type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

    fn authorized<T>(request: &Request<T>) -> Result<(), Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if authorization == Some(&format!("Bearer {TOKEN}")) {
            Ok(())
        } else {
            Err(Status::unauthenticated("unknown agent token"))
        }
    }

    #[tonic::async_trait]
    impl AgentControl for FakeCoordinator {
        type SessionStream = Outbound;
        type FetchImageStream = Pin<Box<dyn Stream<Item = Result<ImageChunk, Status>> + Send>>;
        type ConsoleStream =
            Pin<Box<dyn Stream<Item = Result<vmm_proto::ConsoleFrame, Status>> + Send>>;

        async fn console(
            &self,
            _request: Request<Streaming<vmm_proto::ConsoleFrame>>,
        ) -> Result<Response<Self::ConsoleStream>, Status> {
            Err(Status::unimplemented("no consoles in these tests"))
        }

        async fn fetch_image(
            &self,
            request: Request<FetchImageRequest>,
        ) -> Result<Response<Self::FetchImageStream>, Status> {
            authorized(&request)?;
            let request = request.into_inner();
            let bytes = self
                .images
                .get(&request.image_id)
                .ok_or_else(|| Status::not_found("no such image"))?;
            self.fetches
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let offset = usize::try_from(request.offset).unwrap().min(bytes.len());
            let chunks: Vec<Result<ImageChunk, Status>> = bytes[offset..]
                .chunks(CHUNK)
                .map(|chunk| {
                    Ok(ImageChunk {
                        data: chunk.to_vec(),
                    })
                })
                .collect();
            Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
        }

        async fn session(
            &self,
            request: Request<Streaming<AgentMessage>>,
        ) -> Result<Response<Outbound>, Status> {
            authorized(&request)?;
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
            let commands = tokio_stream::wrappers::UnboundedReceiverStream::new(commands);
            let outbound = futures::stream::select(replies, commands)
                .map(|body| Ok(CoordinatorMessage { body: Some(body) }));
            Ok(Response::new(Box::pin(outbound)))
        }
    }

    struct Coordinator {
        url: String,
        from_agent: mpsc::UnboundedReceiver<AgentMessage>,
        to_agent: mpsc::UnboundedSender<CoordinatorBody>,
        fetches: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Coordinator {
        fn send_command(&self, operation_id: &str, vm_id: vmm_shared::VmId, action: Action) {
            self.to_agent
                .send(CoordinatorBody::Command(Command {
                    operation_id: operation_id.into(),
                    vm_id: vm_id.to_string(),
                    action: Some(action),
                }))
                .unwrap();
        }

        /// The next result of a command (heartbeats and state changes are skipped).
        async fn next_result(&mut self) -> vmm_proto::CommandResult {
            loop {
                if let AgentBody::CommandResult(result) = next_message(&mut self.from_agent).await {
                    return result;
                }
            }
        }
    }

    async fn start_fake_coordinator(images: HashMap<String, Vec<u8>>) -> Coordinator {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (from_agent, from_agent_rx) = mpsc::unbounded_channel();
        let (to_agent, to_agent_rx) = mpsc::unbounded_channel();
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let fake = FakeCoordinator {
            from_agent,
            to_agent: tokio::sync::Mutex::new(Some(to_agent_rx)),
            images,
            fetches: Arc::clone(&fetches),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentControlServer::new(fake))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Coordinator {
            url,
            from_agent: from_agent_rx,
            to_agent,
            fetches,
        }
    }

    /// An agent on `host` for the coordinator at `url`, fetching images over gRPC into
    /// `cache_dir`.
    async fn agent_link_on(
        host: &MemoryHost,
        url: String,
        token: &str,
        cache_dir: &std::path::Path,
    ) -> CoordinatorLink {
        let hypervisor = host.spawn_handle().await.unwrap();
        let tracker = Arc::new(StateTracker::new());
        let poller = Arc::new(StatePoller::new(hypervisor.clone(), Arc::clone(&tracker)));
        let settings = SessionSettings {
            coordinator_url: url,
            other_coordinator_urls: Vec::new(),
            host_id: "host-1".parse().unwrap(),
            credentials: Credentials::SharedToken(crate::config::AgentToken::new(token).unwrap()),
            heartbeat_interval: Duration::from_secs(2),
        };
        let source = GrpcImageSource::new(
            &settings.coordinator_url,
            settings.host_id.clone(),
            settings.credentials.clone(),
        )
        .unwrap();
        let images = Arc::new(ImageCache::new(
            hypervisor.clone(),
            Arc::new(source),
            cache_dir.to_path_buf(),
        ));
        let executor = Arc::new(CommandExecutor::new(
            hypervisor.clone(),
            tracker,
            Duration::from_secs(5),
            crate::journal::Journal::in_memory().unwrap(),
            Arc::clone(&images),
        ));
        CoordinatorLink::new(settings, hypervisor, poller, executor, images)
    }

    async fn agent_link(url: String, token: &str) -> (CoordinatorLink, tempfile::TempDir) {
        let host = MemoryHost::new();
        host.add_foreign_domain("test", crate::hypervisor::PowerState::Running);
        let dir = tempfile::tempdir().unwrap();
        let link = agent_link_on(&host, url, token, dir.path()).await;
        (link, dir)
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
        let mut coordinator = start_fake_coordinator(HashMap::new()).await;
        let (link, _dir) = agent_link(coordinator.url.clone(), TOKEN).await;
        let agent = tokio::spawn(async move { link.run().await });
        let from_agent = &mut coordinator.from_agent;

        let AgentBody::Register(register) = next_message(from_agent).await else {
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
        assert!(register.cached_images.is_empty());

        let vm_id = vmm_shared::VmId::new_random();
        let create = CreateVm {
            name: "web".into(),
            cpu: 1,
            memory_mib: 128,
            disk_gb: 1,
            start: true,
            ..Default::default()
        };
        coordinator.send_command("op-1", vm_id, Action::Create(create));

        let from_agent = &mut coordinator.from_agent;
        let mut heartbeats = 0;
        let result = loop {
            match next_message(from_agent).await {
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
        // User-mode networking (the default) forwards a port to the guest's SSH.
        let ssh = domain.ssh.expect("an SSH endpoint in user mode");
        assert_eq!(ssh.host, "127.0.0.1");
        assert!((22000..=22999).contains(&ssh.port), "{ssh:?}");
        while heartbeats < 2 {
            if let AgentBody::Heartbeat(_) = next_message(from_agent).await {
                heartbeats += 1;
            }
        }
        agent.abort();
    }

    /// A change behind the agent's back reaches the coordinator through the host's hint,
    /// with the poll an hour away.
    #[tokio::test]
    async fn a_hinted_change_reaches_the_coordinator_without_a_poll() {
        let coordinator = start_fake_coordinator(HashMap::new()).await;
        let (url, mut from_agent) = (coordinator.url, coordinator.from_agent);
        let host = MemoryHost::new();
        let foreign = host.add_foreign_domain("test", crate::hypervisor::PowerState::Running);
        let hypervisor = host.spawn_handle().await.unwrap();
        let tracker = Arc::new(StateTracker::new());
        let poller = Arc::new(StatePoller::new(hypervisor.clone(), Arc::clone(&tracker)));
        let dir = tempfile::tempdir().unwrap();
        let images = Arc::new(ImageCache::new(
            hypervisor.clone(),
            Arc::new(crate::images::NoImageSource),
            dir.path().to_path_buf(),
        ));
        let executor = Arc::new(CommandExecutor::new(
            hypervisor.clone(),
            tracker,
            Duration::from_secs(5),
            crate::journal::Journal::in_memory().unwrap(),
            Arc::clone(&images),
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
            other_coordinator_urls: Vec::new(),
            host_id: "host-1".parse().unwrap(),
            credentials: Credentials::SharedToken(crate::config::AgentToken::new(TOKEN).unwrap()),
            heartbeat_interval: Duration::from_secs(2),
        };
        let link = CoordinatorLink::new(settings, hypervisor, poller, executor, images);
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
        let coordinator = start_fake_coordinator(HashMap::new()).await;
        let (link, _dir) = agent_link(coordinator.url.clone(), "wrong-token").await;
        let mut registered = false;
        let outcome = link.run_session(&coordinator.url, &mut registered).await;
        assert!(
            matches!(outcome, Err(SessionError::Unauthenticated(_))),
            "{outcome:?}"
        );
        assert!(!registered);
        assert!(error_chain(&outcome.unwrap_err()).contains("AGENT_TOKEN"));
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        use sha2::{Digest as _, Sha256};
        Sha256::digest(bytes)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    fn create_from(image: &ImageRef, name: &str) -> Action {
        Action::Create(CreateVm {
            name: name.into(),
            cpu: 1,
            memory_mib: 128,
            disk_gb: 1,
            start: true,
            image: Some(image.clone()),
            cloud_init: Some(CloudInit {
                hostname: name.into(),
                ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA test".into()],
                user_data: String::new(),
            }),
        })
    }

    /// Over the real gRPC client and server: concurrent creates from an image fetch it once
    /// (three chunks), verify it and make overlays of it with seeds; the next registration
    /// lists it with its checksum; an eviction keeps it while disks use it and removes it
    /// once they are gone; an image whose bytes do not match its checksum is refused and
    /// nothing of it stays.
    #[tokio::test]
    async fn images_are_fetched_over_grpc_once_verified_cached_and_evicted() {
        let image_id = crate::hypervisor::ImageId::new_random();
        let bytes: Vec<u8> = (0..(2 * CHUNK + 123)).map(|n| (n % 251) as u8).collect();
        let tampered_id = crate::hypervisor::ImageId::new_random();
        let images = HashMap::from([
            (image_id.to_string(), bytes.clone()),
            (tampered_id.to_string(), vec![7_u8; 4096]),
        ]);
        let mut coordinator = start_fake_coordinator(images).await;
        let host = MemoryHost::new();
        let dir = tempfile::tempdir().unwrap();
        let link = agent_link_on(&host, coordinator.url.clone(), TOKEN, dir.path()).await;
        let agent = tokio::spawn(async move { link.run().await });
        let AgentBody::Register(_) = next_message(&mut coordinator.from_agent).await else {
            panic!("the first message must be Register");
        };

        let image = ImageRef {
            image_id: image_id.to_string(),
            sha256: sha256_hex(&bytes),
            size_bytes: bytes.len() as u64,
            format: "raw".into(),
            virtual_size_bytes: bytes.len() as u64,
        };
        let vms: Vec<_> = (0..3).map(|_| vmm_shared::VmId::new_random()).collect();
        for (n, vm_id) in vms.iter().enumerate() {
            coordinator.send_command(&format!("op-{n}"), *vm_id, create_from(&image, "web"));
        }
        for _ in &vms {
            let result = coordinator.next_result().await;
            assert!(
                matches!(result.outcome, Some(command_result::Outcome::Domain(_))),
                "{result:?}"
            );
        }
        assert_eq!(
            coordinator
                .fetches
                .load(std::sync::atomic::Ordering::SeqCst),
            1,
            "three creates, one fetch"
        );
        for vm_id in &vms {
            assert_eq!(host.base_image_of(*vm_id), Some(image_id));
            let seed = host.seed(*vm_id).expect("a seed volume");
            let contents = vmm_cloud_init::read_volume(&seed).unwrap();
            let meta_data = String::from_utf8_lossy(&contents.files["meta-data"]).into_owned();
            assert!(meta_data.contains(&vm_id.to_string()), "{meta_data}");
        }

        // Kept while disks use it.
        coordinator
            .to_agent
            .send(CoordinatorBody::EvictImage(EvictImage {
                image_id: image_id.to_string(),
            }))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            host.volumes()
                .contains(&crate::hypervisor::image_volume_name(image_id))
        );

        // A transfer that does not match its checksum: refused, nothing cached.
        let tampered = ImageRef {
            image_id: tampered_id.to_string(),
            sha256: sha256_hex(b"what the coordinator recorded"),
            size_bytes: 4096,
            format: "raw".into(),
            virtual_size_bytes: 4096,
        };
        let refused_vm = vmm_shared::VmId::new_random();
        coordinator.send_command("op-tampered", refused_vm, create_from(&tampered, "bad"));
        let result = coordinator.next_result().await;
        let Some(command_result::Outcome::Error(error)) = result.outcome else {
            panic!("a mismatching image must be refused: {result:?}");
        };
        assert_eq!(error.kind(), vmm_proto::ErrorKind::Invalid);
        assert!(
            error.message.contains(&tampered.sha256)
                && error.message.contains(&sha256_hex(&[7_u8; 4096])),
            "{}",
            error.message
        );
        assert!(host.domain(refused_vm).is_none());
        assert!(
            !host
                .volumes()
                .iter()
                .any(|name| name.contains(&tampered_id.to_string()))
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            left.iter()
                .all(|name| !name.contains(&tampered_id.to_string())),
            "{left:?}"
        );

        // Delete the VMs, evict: gone.
        for (n, vm_id) in vms.iter().enumerate() {
            coordinator.send_command(
                &format!("op-delete-{n}"),
                *vm_id,
                Action::Delete(vmm_proto::DeleteVm {}),
            );
            coordinator.next_result().await;
        }
        coordinator
            .to_agent
            .send(CoordinatorBody::EvictImage(EvictImage {
                image_id: image_id.to_string(),
            }))
            .unwrap();
        let base = crate::hypervisor::image_volume_name(image_id);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while host.volumes().contains(&base) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the base was not evicted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        agent.abort();
    }

    /// A registration lists the cached images with the checksum verified at fetch time.
    #[tokio::test]
    async fn a_registration_lists_the_cached_images() {
        let image_id = crate::hypervisor::ImageId::new_random();
        let bytes = vec![1_u8; 10_000];
        let mut coordinator =
            start_fake_coordinator(HashMap::from([(image_id.to_string(), bytes.clone())])).await;
        let host = MemoryHost::new();
        let dir = tempfile::tempdir().unwrap();
        let link = agent_link_on(&host, coordinator.url.clone(), TOKEN, dir.path()).await;
        let image = ImageRef {
            image_id: image_id.to_string(),
            sha256: sha256_hex(&bytes),
            size_bytes: 10_000,
            format: "raw".into(),
            virtual_size_bytes: 10_000,
        };
        let vm_id = vmm_shared::VmId::new_random();
        let created = link
            .executor
            .execute(Command {
                operation_id: "op-1".into(),
                vm_id: vm_id.to_string(),
                action: Some(create_from(&image, "web")),
            })
            .await;
        assert!(
            matches!(created.outcome, Some(command_result::Outcome::Domain(_))),
            "{created:?}"
        );
        let agent = tokio::spawn(async move { link.run().await });
        let AgentBody::Register(register) = next_message(&mut coordinator.from_agent).await else {
            panic!("the first message must be Register");
        };
        assert_eq!(
            register.cached_images,
            [CachedImage {
                image_id: image_id.to_string(),
                sha256: image.sha256.clone(),
                size_bytes: 10_000,
            }]
        );
        agent.abort();
    }
}
