//! Console sessions against the coordinator's real REST server (WebSocket over loopback TCP)
//! and gRPC server (with the production HTTP/2 windows), with the agent played by the test
//! through the real generated tonic client:
//!
//! - an agent that floods a console as fast as it can, to a client that reads nothing, is
//!   held up after a bounded number of bytes (the coordinator reads its stream only as the
//!   WebSocket takes messages), and goes on once the client reads;
//! - the client's bytes reach the agent, and a client closing ends the agent's stream with a
//!   `closed` frame that says why;
//! - a session in which nothing moves is closed after the idle timeout, code 4000;
//! - a console asked of one host cannot be attached by another.
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_tungstenite::tungstenite::Message;
use vmm_coordinator::agents::AgentControlService;
use vmm_coordinator::app::{GRPC_CONNECTION_WINDOW, GRPC_STREAM_WINDOW, router};
use vmm_coordinator::connections::{Admission, ConnectionLimits, Protocol};
use vmm_coordinator::console::ConsoleSettings;
use vmm_coordinator::users::{Role, store as user_store};
use vmm_proto::agent_control_client::AgentControlClient;
use vmm_proto::agent_control_server::AgentControlServer;
use vmm_proto::console_frame::Body as FrameBody;
use vmm_proto::{
    AgentMessage, CommandResult, ConsoleAttach, ConsoleFrame, CoordinatorMessage, DomainReport,
    HostCapacity, PowerState, Register, agent_message, command, command_result,
    coordinator_message,
};

mod support;

const AGENT_TOKEN: &str = "console-flow-agent-token";
const HOST: &str = "flow-host";
/// What one flood frame carries.
const FRAME: usize = 64 * 1024;
/// What may get through to a client that reads nothing: the HTTP/2 stream window, the
/// relay's message, and the loopback sockets' buffers (which the kernel grows to a few MiB).
const HELD_UP_WITHIN: u64 = 24 << 20;

struct Coordinator {
    http: SocketAddr,
    grpc: SocketAddr,
    token: String,
    _dir: tempfile::TempDir,
}

async fn start(idle_timeout: Duration) -> Coordinator {
    let dir = tempfile::tempdir().unwrap();
    let settings = support::TestSettings {
        console: ConsoleSettings {
            idle_timeout,
            ..ConsoleSettings::default()
        },
        ..support::TestSettings::new(AGENT_TOKEN)
    };
    let state = support::app_state(dir.path(), settings).await;
    let user = user_store::insert(&state.db, "flow-user", "not-a-real-hash", Role::User)
        .await
        .unwrap();
    let token = state.tokens.issue(&user).unwrap().token;

    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = grpc_listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .initial_stream_window_size(Some(GRPC_STREAM_WINDOW))
            .initial_connection_window_size(Some(GRPC_CONNECTION_WINDOW))
            .add_service(AgentControlServer::new(AgentControlService::new(
                state.clone(),
            )))
            .serve_with_incoming(TcpListenerStream::new(grpc_listener)),
    );
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = http_listener.local_addr().unwrap();
    let admission = Admission::new(ConnectionLimits {
        listener: "http",
        protocol: Protocol::Http1,
        max_connections: 64,
        max_per_client: None,
        exempt_from_per_client: Vec::new(),
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
    });
    tokio::spawn(vmm_coordinator::http::server::serve(
        http_listener,
        router(state),
        admission,
        None,
        std::future::pending(),
    ));
    Coordinator {
        http,
        grpc,
        token,
        _dir: dir,
    }
}

impl Coordinator {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("http://{}{path}", self.http))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn client(&self) -> AgentControlClient<tonic::transport::Channel> {
        AgentControlClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    /// A serial console ticket's URL for `vm`, as a `ws://` URL.
    async fn console_url(&self, vm: &str) -> String {
        let (status, ticket) = self
            .post(&format!("/api/vms/{vm}/console"), json!({"type": "serial"}))
            .await;
        assert_eq!(status, 200, "{ticket}");
        format!("ws://{}{}", self.http, ticket["url"].as_str().unwrap())
    }
}

/// The agent's session, played by the test.
struct Session {
    outgoing: mpsc::Sender<AgentMessage>,
    incoming: tonic::Streaming<CoordinatorMessage>,
}

impl Session {
    async fn register(coordinator: &Coordinator) -> Self {
        let (outgoing, queue) = mpsc::channel(16);
        let register = Register {
            host_id: HOST.into(),
            agent_version: "test".into(),
            capacity: Some(HostCapacity {
                cpus: 8,
                memory_mib: 16384,
                disk_gb: 500,
            }),
            hypervisor: "Test".into(),
            ..Register::default()
        };
        outgoing
            .send(AgentMessage {
                body: Some(agent_message::Body::Register(register)),
            })
            .await
            .unwrap();
        let mut incoming = coordinator
            .client()
            .await
            .session(authorized(ReceiverStream::new(queue)))
            .await
            .unwrap()
            .into_inner();
        let registered = incoming.message().await.unwrap().unwrap();
        assert!(matches!(
            registered.body,
            Some(coordinator_message::Body::Registered(_))
        ));
        Self { outgoing, incoming }
    }

    async fn next(&mut self) -> coordinator_message::Body {
        tokio::time::timeout(Duration::from_secs(10), self.incoming.message())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .unwrap()
            .body
            .unwrap()
    }

    /// Creates a VM through the API and answers the host's create with it running.
    async fn running_vm(&mut self, coordinator: &Coordinator, name: &str) -> String {
        let create = coordinator.post(
            "/api/vms",
            json!({"name": name, "cpu": 1, "memory": 128, "disk_gb": 1}),
        );
        let answer = async {
            let coordinator_message::Body::Command(command) = self.next().await else {
                panic!("a create command");
            };
            let Some(command::Action::Create(create)) = command.action else {
                panic!("a create command");
            };
            let domain = DomainReport {
                vm_id: command.vm_id.clone(),
                domain_name: format!("vmm-{}", command.vm_id),
                state: PowerState::Running as i32,
                generation: 1,
                cpu: create.cpu,
                memory_mib: create.memory_mib,
                ..DomainReport::default()
            };
            let result = CommandResult {
                operation_id: command.operation_id,
                outcome: Some(command_result::Outcome::Domain(domain)),
                snapshot: None,
            };
            self.outgoing
                .send(AgentMessage {
                    body: Some(agent_message::Body::CommandResult(result)),
                })
                .await
                .unwrap();
        };
        let ((status, vm), ()) = tokio::join!(create, answer);
        assert_eq!(status, 201, "{vm}");
        assert_eq!(vm["status"], "running", "{vm}");
        vm["id"].as_str().unwrap().to_owned()
    }

    /// The next `OpenConsole`'s console ID.
    async fn open_console(&mut self) -> String {
        match self.next().await {
            coordinator_message::Body::OpenConsole(open) => open.console_id,
            other => panic!("expected OpenConsole, got {other:?}"),
        }
    }
}

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {AGENT_TOKEN}").parse().unwrap(),
    );
    request
}

fn attach(console_id: &str, host: &str) -> ConsoleFrame {
    ConsoleFrame {
        body: Some(FrameBody::Attach(ConsoleAttach {
            console_id: console_id.into(),
            host_id: host.into(),
            error: None,
        })),
    }
}

/// Attaches the console on a stream of its own; the way up and the frames down.
async fn attach_console(
    coordinator: &Coordinator,
    console_id: &str,
    host: &str,
) -> Result<(mpsc::Sender<ConsoleFrame>, tonic::Streaming<ConsoleFrame>), tonic::Status> {
    let (up, queue) = mpsc::channel(1);
    up.send(attach(console_id, host)).await.unwrap();
    let down = coordinator
        .client()
        .await
        .console(authorized(ReceiverStream::new(queue)))
        .await?
        .into_inner();
    Ok((up, down))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_holds_a_flooding_host_up() {
    let coordinator = start(Duration::from_secs(600)).await;
    let mut session = Session::register(&coordinator).await;
    let vm = session.running_vm(&coordinator, "flooded").await;
    let url = coordinator.console_url(&vm).await;
    let connect = tokio_tungstenite::connect_async(url);
    // The WebSocket opens once the host attached the console.
    let (connected, (up, mut down)) = tokio::join!(connect, async {
        let console_id = session.open_console().await;
        attach_console(&coordinator, &console_id, HOST)
            .await
            .unwrap()
    });
    let (mut socket, _) = connected.unwrap();

    // The host writes as fast as the coordinator takes it.
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (up, sent) = (up.clone(), Arc::clone(&sent));
        tokio::spawn(async move {
            let frame = vec![b'y'; FRAME];
            loop {
                let data = ConsoleFrame {
                    body: Some(FrameBody::Data(frame.clone())),
                };
                if up.send(data).await.is_err() {
                    return;
                }
                sent.fetch_add(FRAME as u64, Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stalled = sent.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = sent.load(Ordering::Relaxed);
    eprintln!(
        "a host flooding a console whose client reads nothing got {stalled} bytes through in \
         3 s, then {} more in 2 s",
        still - stalled
    );
    assert!(
        stalled < HELD_UP_WITHIN,
        "{stalled} bytes went through to a client that reads nothing"
    );
    assert!(
        still - stalled <= 2 * FRAME as u64,
        "the host kept getting frames through: {stalled} then {still}"
    );

    // The client reads: the flood flows again.
    let mut received = 0_u64;
    while received < still + (8 << 20) {
        match socket.next().await.unwrap().unwrap() {
            Message::Binary(bytes) => received += bytes.len() as u64,
            other => panic!("{other:?}"),
        }
    }
    assert!(sent.load(Ordering::Relaxed) > still);
    flood.abort();

    // The client's bytes reach the host.
    socket
        .send(Message::Binary(b"ls\r".to_vec().into()))
        .await
        .unwrap();
    let typed = tokio::time::timeout(Duration::from_secs(10), down.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(typed.body, Some(FrameBody::Data(b"ls\r".to_vec())));

    // The client closes: the host is told why, and its stream ends.
    socket.close(None).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), down.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(FrameBody::Closed(closed)) = closed.body else {
        panic!("a closed frame: {closed:?}");
    };
    assert!(closed.reason.contains("closed"), "{}", closed.reason);
    let end = tokio::time::timeout(Duration::from_secs(10), down.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_console_is_closed_and_only_its_host_may_attach_it() {
    let coordinator = start(Duration::from_secs(1)).await;
    let mut session = Session::register(&coordinator).await;
    let vm = session.running_vm(&coordinator, "idle").await;
    let url = coordinator.console_url(&vm).await;
    let connect = tokio_tungstenite::connect_async(url);
    let (connected, console_id) = tokio::join!(connect, async {
        let console_id = session.open_console().await;
        // Another host cannot take the console asked of this one (it has no session; with
        // one, it would still be the wrong host).
        let wrong = attach_console(&coordinator, &console_id, "other-host").await;
        assert_eq!(
            wrong.unwrap_err().code(),
            tonic::Code::PermissionDenied,
            "a host without a session"
        );
        let (up, down) = attach_console(&coordinator, &console_id, HOST)
            .await
            .unwrap();
        (console_id, up, down)
    });
    let (console_id, _up, mut down) = console_id;
    let (mut socket, _) = connected.unwrap();
    let started = std::time::Instant::now();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Close(Some(frame)) => break frame,
            Message::Close(None) => panic!("closed without a code"),
            _ => {}
        }
    };
    assert_eq!(u16::from(close.code), 4000, "{close:?}");
    assert!(close.reason.contains("idle"), "{close:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let told = tokio::time::timeout(Duration::from_secs(10), down.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&told.body, Some(FrameBody::Closed(closed)) if closed.reason.contains("idle")),
        "{told:?}"
    );

    // Reused: the same console ID cannot be attached again.
    let again = attach_console(&coordinator, &console_id, HOST).await;
    assert_eq!(again.unwrap_err().code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_closed_by_its_client_opens_again_once_the_close_is_answered() {
    let coordinator = start(Duration::from_secs(600)).await;
    let mut session = Session::register(&coordinator).await;
    let vm = session.running_vm(&coordinator, "reopened").await;
    for round in 0..20 {
        let url = coordinator.console_url(&vm).await;
        let connect = tokio_tungstenite::connect_async(url);
        let (connected, _attached) = tokio::join!(connect, async {
            let console_id = session.open_console().await;
            attach_console(&coordinator, &console_id, HOST)
                .await
                .unwrap()
        });
        let (mut socket, _) = connected.unwrap();
        socket.close(None).await.unwrap();
        // The closing handshake: the coordinator's answer, then the connection ends.
        while let Some(Ok(_)) = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap()
        {}
        // Straight away, the console is free: not refused as a second session.
        let (status, answer) = coordinator
            .post(&format!("/api/vms/{vm}/console"), json!({"type": "serial"}))
            .await;
        assert_eq!(status, 200, "round {round}: {answer}");
        // That ticket is never used; the next round asks for its own.
    }
}
