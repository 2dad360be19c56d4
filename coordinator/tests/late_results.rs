//! Late answers and unanswered sessions, against the coordinator's real router and gRPC
//! server (in process, on loopback and a temporary SQLite database), with an agent played by
//! the test through the real generated tonic client, so it can answer exactly when the test
//! says: after the request has timed out, with a failure, or never (hanging up instead).
//!
//! What must hold: the request answers 504 naming its operation, which stays `pending`; the
//! late answer is applied exactly as an on-time one (a failed create releases its record and
//! quota, a delete removes its VM); a session that ends unanswered settles its operations
//! (outcome unknown) before the host's next inventory, which then settles the VM.
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tower::ServiceExt as _;
use vmm_coordinator::agents::AgentControlService;
use vmm_coordinator::app::router;
use vmm_coordinator::users::{Role, store as user_store};
use vmm_proto::agent_control_client::AgentControlClient;
use vmm_proto::agent_control_server::AgentControlServer;
use vmm_proto::{
    AgentMessage, Command, CommandError, CommandResult, DomainReport, ErrorKind, HostCapacity,
    PowerState, Register, agent_message, command_result, coordinator_message,
};

mod support;

const AGENT_TOKEN: &str = "late-results-agent-token";
const HOST: &str = "late-host";
const OPERATION_TIMEOUT: Duration = Duration::from_millis(800);

struct Coordinator {
    client: Client,
    grpc: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The REST API, as the test's user.
#[derive(Clone)]
struct Client {
    router: Router,
    token: String,
}

async fn start_coordinator() -> Coordinator {
    let dir = tempfile::tempdir().unwrap();
    let settings = support::TestSettings {
        operation_timeout: OPERATION_TIMEOUT,
        ..support::TestSettings::new(AGENT_TOKEN)
    };
    let state = support::app_state(dir.path(), settings).await;
    let user = user_store::insert(&state.db, "patient", "not-a-real-hash", Role::User)
        .await
        .unwrap();
    let token = state.tokens.issue(&user).unwrap().token;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = listener.local_addr().unwrap();
    let service = AgentControlServer::new(AgentControlService::new(state.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Coordinator {
        client: Client {
            router: router(state),
            token,
        },
        grpc,
        _dir: dir,
    }
}

impl Client {
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", self.token));
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request.body(body).unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let operation = response
            .headers()
            .get("operation-id")
            .map(|value| value.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Answer {
            status,
            operation,
            body,
        }
    }
}

impl Coordinator {
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.client.send(method, path, body).await
    }

    /// Sends a request from a task of its own, so the test can play the agent meanwhile.
    fn send_in_background(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> tokio::task::JoinHandle<Answer> {
        let (client, path) = (self.client.clone(), path.to_owned());
        tokio::spawn(async move { client.send(method, &path, body).await })
    }

    async fn operation(&self, id: &str) -> Value {
        let answer = self
            .send(Method::GET, &format!("/api/operations/{id}"), None)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body
    }

    /// Waits until the operation is no longer pending and returns it.
    async fn finished_operation(&self, id: &str) -> Value {
        for _ in 0..100 {
            let operation = self.operation(id).await;
            if operation["status"] != "pending" {
                return operation;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("operation {id} is still pending");
    }

    async fn vms_in_use(&self) -> u64 {
        let quota = self.send(Method::GET, "/api/quota", None).await;
        quota.body["usage"]["vms"].as_u64().unwrap()
    }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    operation: Option<String>,
    body: Value,
}

impl Answer {
    /// The timeout's 504: names its operation, which is then returned.
    fn timed_out(&self) -> String {
        assert_eq!(self.status, StatusCode::GATEWAY_TIMEOUT, "{}", self.body);
        let operation = self.operation.clone().expect("a 504 names its operation");
        let message = self.body["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("GET /api/operations/{operation}")),
            "{message}"
        );
        operation
    }
}

/// The agent, played by the test over the real gRPC stream.
struct Agent {
    outgoing: mpsc::Sender<AgentMessage>,
    incoming: tonic::Streaming<vmm_proto::CoordinatorMessage>,
}

impl Agent {
    async fn connect(coordinator: &Coordinator, inventory: Vec<DomainReport>) -> Agent {
        let mut client = AgentControlClient::connect(format!("http://{}", coordinator.grpc))
            .await
            .unwrap();
        let (outgoing, queue) = mpsc::channel(16);
        let register = Register {
            host_id: HOST.into(),
            agent_version: "test".into(),
            capacity: Some(HostCapacity {
                cpus: 8,
                memory_mib: 16384,
                disk_gb: 100,
            }),
            hypervisor: "Test".into(),
            inventory,
            ..Register::default()
        };
        outgoing
            .send(AgentMessage {
                body: Some(agent_message::Body::Register(register)),
            })
            .await
            .unwrap();
        let mut request = tonic::Request::new(ReceiverStream::new(queue));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {AGENT_TOKEN}").parse().unwrap(),
        );
        let mut incoming = client.session(request).await.unwrap().into_inner();
        let registered = incoming.message().await.unwrap().unwrap();
        assert!(matches!(
            registered.body,
            Some(coordinator_message::Body::Registered(_))
        ));
        Agent { outgoing, incoming }
    }

    async fn next_command(&mut self) -> Command {
        let message = tokio::time::timeout(Duration::from_secs(10), self.incoming.message())
            .await
            .expect("a command within 10 s")
            .unwrap()
            .unwrap();
        match message.body {
            Some(coordinator_message::Body::Command(command)) => command,
            other => panic!("expected a command, got {other:?}"),
        }
    }

    async fn answer(&self, command: &Command, outcome: command_result::Outcome) {
        let result = CommandResult {
            operation_id: command.operation_id.clone(),
            outcome: Some(outcome),
            snapshot: None,
        };
        self.outgoing
            .send(AgentMessage {
                body: Some(agent_message::Body::CommandResult(result)),
            })
            .await
            .unwrap();
    }
}

fn domain(vm_id: &str, state: PowerState, generation: u64) -> command_result::Outcome {
    command_result::Outcome::Domain(DomainReport {
        vm_id: vm_id.into(),
        domain_name: format!("vmm-{vm_id}"),
        state: state as i32,
        generation,
        cpu: 1,
        memory_mib: 64,
        ..DomainReport::default()
    })
}

/// Sends a request whose command the agent receives and leaves unanswered past the
/// timeout; returns the command and the operation the 504 names.
async fn unanswered(
    coordinator: &Coordinator,
    agent: &mut Agent,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (Command, String) {
    let request = coordinator.send_in_background(method, path, body);
    let command = agent.next_command().await;
    let operation = request.await.unwrap().timed_out();
    (command, operation)
}

/// [`unanswered`] for a create of a VM called `name`.
async fn unanswered_create(
    coordinator: &Coordinator,
    agent: &mut Agent,
    name: &str,
) -> (Command, String) {
    unanswered(coordinator, agent, Method::POST, "/api/vms", new_vm(name)).await
}

fn new_vm(name: &str) -> Option<Value> {
    Some(json!({"name": name, "cpu": 1, "memory": 64, "disk_gb": 1}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_failure_of_a_create_releases_the_vm_and_its_quota() {
    let coordinator = start_coordinator().await;
    let mut agent = Agent::connect(&coordinator, Vec::new()).await;

    let (command, operation) = unanswered_create(&coordinator, &mut agent, "doomed").await;
    assert_eq!(coordinator.operation(&operation).await["status"], "pending");
    assert_eq!(
        coordinator.vms_in_use().await,
        1,
        "held while the create waits"
    );

    let failure = CommandError {
        kind: ErrorKind::Internal as i32,
        message: "the storage pool is full".into(),
    };
    agent
        .answer(&command, command_result::Outcome::Error(failure))
        .await;
    let finished = coordinator.finished_operation(&operation).await;
    assert_eq!(finished["status"], "failed", "{finished}");
    assert!(
        finished["error"]
            .as_str()
            .unwrap()
            .contains("the storage pool is full"),
        "{finished}"
    );
    let vm = coordinator
        .send(Method::GET, &format!("/api/vms/{}", command.vm_id), None)
        .await;
    assert_eq!(vm.status, StatusCode::NOT_FOUND, "the record is gone");
    assert_eq!(coordinator.vms_in_use().await, 0, "and its quota released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_delete_removes_the_vm() {
    let coordinator = start_coordinator().await;
    let mut agent = Agent::connect(&coordinator, Vec::new()).await;

    // Created on time.
    let request = coordinator.send_in_background(Method::POST, "/api/vms", new_vm("brief"));
    let create = agent.next_command().await;
    agent
        .answer(&create, domain(&create.vm_id, PowerState::Running, 1))
        .await;
    let created = request.await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["status"], "running");

    // Deleted late.
    let path = format!("/api/vms/{}", create.vm_id);
    let (delete, operation) =
        unanswered(&coordinator, &mut agent, Method::DELETE, &path, None).await;
    let vm = coordinator.send(Method::GET, &path, None).await;
    assert_eq!(vm.body["status"], "deleting", "{}", vm.body);
    let busy = coordinator
        .send(
            Method::POST,
            &format!("{path}/action"),
            Some(json!({"action": "force_stop"})),
        )
        .await;
    assert_eq!(busy.status, StatusCode::CONFLICT, "{}", busy.body);

    agent
        .answer(&delete, domain(&delete.vm_id, PowerState::Absent, 2))
        .await;
    assert_eq!(
        coordinator.finished_operation(&operation).await["status"],
        "succeeded"
    );
    let vm = coordinator.send(Method::GET, &path, None).await;
    assert_eq!(vm.status, StatusCode::NOT_FOUND, "{}", vm.body);
    assert_eq!(coordinator.vms_in_use().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ends_unanswered_settles_its_operation_then_the_inventory_its_vm() {
    let coordinator = start_coordinator().await;
    let mut agent = Agent::connect(&coordinator, Vec::new()).await;

    let (command, operation) = unanswered_create(&coordinator, &mut agent, "orphan").await;
    drop(agent);

    let finished = coordinator.finished_operation(&operation).await;
    assert_eq!(finished["status"], "failed", "{finished}");
    assert!(
        finished["error"]
            .as_str()
            .unwrap()
            .contains("disconnected before answering"),
        "{finished}"
    );
    let path = format!("/api/vms/{}", command.vm_id);
    let vm = coordinator.send(Method::GET, &path, None).await;
    assert_eq!(vm.body["status"], "error", "{}", vm.body);
    assert_eq!(
        coordinator.vms_in_use().await,
        1,
        "kept until the host says"
    );

    // The host comes back without the domain: the create never happened.
    let _agent = Agent::connect(&coordinator, Vec::new()).await;
    let vm = coordinator.send(Method::GET, &path, None).await;
    assert_eq!(vm.status, StatusCode::NOT_FOUND, "{}", vm.body);
    assert_eq!(coordinator.vms_in_use().await, 0);
}
