//! Images as hosts see them, against the coordinator's real router and gRPC server (in
//! process, on loopback and a temporary SQLite database), with the agent played by the test
//! through the real generated tonic client:
//!
//! - `FetchImage` streams the exact bytes of a ready image, in chunks of at most 1 MiB, from
//!   any offset, to a connected host presenting the agent token, and refuses a wrong token, a
//!   host without a session, an image that is not ready or does not exist, an offset past
//!   the end;
//! - a registration's cached images are recorded and those the coordinator does not have
//!   are answered with `EvictImage`; deleting an image tells connected hosts to evict it;
//! - a create from an image sends the image and the cloud-init data (stored and inline keys,
//!   user data, the VM's name as hostname) to the host, and the VM's JSON then shows the
//!   addresses and SSH endpoint the host reports, and the host as caching the image.
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tower::ServiceExt as _;
use vmm_coordinator::agents::AgentControlService;
use vmm_coordinator::app::router;
use vmm_coordinator::users::{Role, store as user_store};
use vmm_proto::agent_control_client::AgentControlClient;
use vmm_proto::agent_control_server::AgentControlServer;
use vmm_proto::{
    AgentMessage, CachedImage, CommandResult, CoordinatorMessage, DomainReport, FetchImageRequest,
    HostCapacity, PowerState, Register, SshEndpoint, agent_message, command, command_result,
    coordinator_message,
};

mod support;

const AGENT_TOKEN: &str = "images-for-hosts-agent-token";
const HOST: &str = "image-host";
const MIB: usize = 1 << 20;
const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEL4ExQvr2yenWuWW1VazBlavzBomFuxLpKf4pi0TYdv test@vmm";
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBBXhPCRkRlnhg5c/RpsLuzp1yKkRpFR3CxINuHYLJ0Ce4f7q1JHZvpOQqyrHIzq52ZDKpMxnY7ajvm1WK5pNjwA= test@vmm";

struct Coordinator {
    router: Router,
    admin_token: String,
    grpc: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start_coordinator() -> Coordinator {
    let dir = tempfile::tempdir().unwrap();
    let state = support::app_state(dir.path(), support::TestSettings::new(AGENT_TOKEN)).await;
    let admin = user_store::insert(&state.db, "root-admin", "not-a-real-hash", Role::Admin)
        .await
        .unwrap();
    let admin_token = state.tokens.issue(&admin).unwrap().token;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = listener.local_addr().unwrap();
    let service = AgentControlServer::new(AgentControlService::new(state.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Coordinator {
        router: router(state),
        admin_token,
        grpc,
        _dir: dir,
    }
}

impl Coordinator {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
        json: bool,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", self.admin_token));
        if json {
            request = request.header("content-type", "application/json");
        }
        let mut request = request.body(body).unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, body)
    }

    async fn json(&self, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(method, path, Body::from(body.to_string()), true)
            .await
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.send(Method::GET, path, Body::empty(), false).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Creates an image and uploads `bytes` as its file; returns the image (ready).
    async fn ready_image(&self, name: &str, bytes: Vec<u8>) -> Value {
        let (status, image) = self
            .json(
                Method::POST,
                "/api/images",
                json!({"name": name, "default_user": "debian"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{image}");
        let path = format!("/api/images/{}/file", image["id"].as_str().unwrap());
        let (status, image) = self
            .send(Method::PUT, &path, Body::from(bytes), false)
            .await;
        assert_eq!(status, StatusCode::OK, "{image}");
        assert_eq!(image["status"], "ready");
        image
    }

    async fn client(&self) -> AgentControlClient<tonic::transport::Channel> {
        AgentControlClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    /// `FetchImage` as `host` with `token`: every chunk's size, and the bytes, or the status.
    async fn fetch(
        &self,
        token: &str,
        host: &str,
        image_id: &str,
        offset: u64,
    ) -> Result<(Vec<usize>, Vec<u8>), tonic::Status> {
        let mut request = tonic::Request::new(FetchImageRequest {
            host_id: host.into(),
            image_id: image_id.into(),
            offset,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut chunks = self.client().await.fetch_image(request).await?.into_inner();
        let (mut sizes, mut bytes) = (Vec::new(), Vec::new());
        while let Some(chunk) = chunks.message().await? {
            sizes.push(chunk.data.len());
            bytes.extend_from_slice(&chunk.data);
        }
        Ok((sizes, bytes))
    }
}

/// A raw disk of `len` pseudo-random bytes with a partition table's boot signature.
fn raw_disk(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut bytes: Vec<u8> = (0..len)
        .map(|_| {
            // xorshift64: content that no two offsets share by accident.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    bytes[510] = 0x55;
    bytes[511] = 0xAA;
    bytes
}

/// The agent, played by the test over the real gRPC stream.
struct Agent {
    outgoing: mpsc::Sender<AgentMessage>,
    incoming: tonic::Streaming<CoordinatorMessage>,
}

impl Agent {
    /// Registers with `cached_images` and returns the agent and what came after `Registered`
    /// right away (the evictions).
    async fn connect(coordinator: &Coordinator, cached_images: Vec<CachedImage>) -> Agent {
        let mut client = coordinator.client().await;
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
            cached_images,
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

    async fn next(&mut self) -> coordinator_message::Body {
        tokio::time::timeout(Duration::from_secs(10), self.incoming.message())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .unwrap()
            .body
            .unwrap()
    }

    async fn answer(&self, operation_id: &str, domain: DomainReport) {
        let result = CommandResult {
            operation_id: operation_id.into(),
            outcome: Some(command_result::Outcome::Domain(domain)),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_image_streams_the_exact_bytes_to_a_connected_host_only() {
    let coordinator = start_coordinator().await;
    let file = raw_disk(2 * MIB + 12_345, 7);
    let image = coordinator.ready_image("disk", file.clone()).await;
    let id = image["id"].as_str().unwrap();
    let sha256 = vmm_coordinator::images::files::hex(&sha2::Sha256::digest(&file));
    assert_eq!(image["sha256"], sha256.as_str());
    assert_eq!(image["format"], "raw");

    // No session yet: refused, whoever asks.
    let refused = coordinator
        .fetch(AGENT_TOKEN, HOST, id, 0)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    let _agent = Agent::connect(&coordinator, Vec::new()).await;
    let (sizes, bytes) = coordinator.fetch(AGENT_TOKEN, HOST, id, 0).await.unwrap();
    assert_eq!(sizes, [MIB, MIB, 12_345], "chunks of at most 1 MiB");
    assert!(bytes == file, "the bytes served are the file's");

    // Resuming from an offset sends the rest.
    let offset = MIB as u64 + 1000;
    let (_, rest) = coordinator
        .fetch(AGENT_TOKEN, HOST, id, offset)
        .await
        .unwrap();
    assert!(rest == file[offset as usize..], "the tail from the offset");
    let (sizes, _) = coordinator
        .fetch(AGENT_TOKEN, HOST, id, file.len() as u64)
        .await
        .unwrap();
    assert!(sizes.is_empty());

    let status = |result: Result<(Vec<usize>, Vec<u8>), tonic::Status>| result.unwrap_err().code();
    assert_eq!(
        status(
            coordinator
                .fetch("wrong-token-0123456789", HOST, id, 0)
                .await
        ),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        status(coordinator.fetch(AGENT_TOKEN, "other-host", id, 0).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        status(
            coordinator
                .fetch(AGENT_TOKEN, HOST, id, file.len() as u64 + 1)
                .await
        ),
        tonic::Code::OutOfRange
    );
    let unknown = vmm_shared::ImageId::new_random().to_string();
    assert_eq!(
        status(coordinator.fetch(AGENT_TOKEN, HOST, &unknown, 0).await),
        tonic::Code::NotFound
    );
    assert_eq!(
        status(
            coordinator
                .fetch(AGENT_TOKEN, HOST, "../../etc/passwd", 0)
                .await
        ),
        tonic::Code::NotFound
    );
    let (_, pending) = coordinator
        .json(Method::POST, "/api/images", json!({"name": "not-yet"}))
        .await;
    assert_eq!(
        status(
            coordinator
                .fetch(AGENT_TOKEN, HOST, pending["id"].as_str().unwrap(), 0)
                .await
        ),
        tonic::Code::FailedPrecondition
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_told_to_evict_what_the_coordinator_does_not_have() {
    let coordinator = start_coordinator().await;
    let kept = coordinator.ready_image("kept", raw_disk(4096, 1)).await;
    let kept_id = kept["id"].as_str().unwrap().to_owned();
    let doomed = coordinator.ready_image("doomed", raw_disk(4096, 2)).await;
    let doomed_id = doomed["id"].as_str().unwrap().to_owned();
    let gone = vmm_shared::ImageId::new_random().to_string();
    let copy = |image_id: &str, sha256: &str| CachedImage {
        image_id: image_id.into(),
        sha256: sha256.into(),
        size_bytes: 4096,
    };

    let mut agent = Agent::connect(
        &coordinator,
        vec![
            copy(&kept_id, kept["sha256"].as_str().unwrap()),
            copy(&doomed_id, doomed["sha256"].as_str().unwrap()),
            copy(&gone, &"0".repeat(64)),
        ],
    )
    .await;
    match agent.next().await {
        coordinator_message::Body::EvictImage(evict) => assert_eq!(evict.image_id, gone),
        other => panic!("expected EvictImage, got {other:?}"),
    }
    let hosts = coordinator.get("/api/hosts").await;
    let mut cached: Vec<&str> = hosts[0]["cached_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|copy| copy["name"].as_str().unwrap())
        .collect();
    cached.sort();
    assert_eq!(cached, ["doomed", "kept"], "{hosts}");

    let (status, _) = coordinator
        .send(
            Method::DELETE,
            &format!("/api/images/{doomed_id}"),
            Body::empty(),
            false,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    match agent.next().await {
        coordinator_message::Body::EvictImage(evict) => assert_eq!(evict.image_id, doomed_id),
        other => panic!("expected EvictImage, got {other:?}"),
    }
    let hosts = coordinator.get("/api/hosts").await;
    assert_eq!(
        hosts[0]["cached_images"][0]["id"],
        kept_id.as_str(),
        "{hosts}"
    );
    assert_eq!(hosts[0]["cached_images"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_from_an_image_sends_the_image_and_the_seed_and_shows_the_ssh_endpoint() {
    let coordinator = start_coordinator().await;
    // A whole number of sectors: qemu-img reports a raw disk's size rounded up to them.
    let file = raw_disk(MIB + 512, 3);
    let image = coordinator.ready_image("distro", file).await;
    let (status, key) = coordinator
        .json(
            Method::POST,
            "/api/keys",
            json!({"name": "laptop", "public_key": ED25519}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let mut agent = Agent::connect(&coordinator, Vec::new()).await;

    let body = json!({
        "name": "web-1", "cpu": 1, "memory": 128, "image": "distro",
        "ssh_authorized_keys": [ECDSA, ED25519],
        "user_data": "#cloud-config\npackages: [nginx]\n",
    });
    let create = {
        let router = coordinator.router.clone();
        let token = coordinator.admin_token.clone();
        tokio::spawn(async move {
            let mut request = Request::builder()
                .method(Method::POST)
                .uri("/api/vms")
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap();
            request
                .extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        })
    };
    let command = match agent.next().await {
        coordinator_message::Body::Command(command) => command,
        other => panic!("expected a command, got {other:?}"),
    };
    let Some(command::Action::Create(create_vm)) = &command.action else {
        panic!("expected CreateVm, got {command:?}");
    };
    let image_ref = create_vm.image.clone().expect("the image is sent");
    assert_eq!(image_ref.image_id, image["id"].as_str().unwrap());
    assert_eq!(image_ref.sha256, image["sha256"].as_str().unwrap());
    assert_eq!(image_ref.size_bytes, (MIB + 512) as u64);
    assert_eq!(image_ref.format, "raw");
    assert_eq!(image_ref.virtual_size_bytes, (MIB + 512) as u64);
    assert_eq!(create_vm.disk_gb, 10);
    let seed = create_vm
        .cloud_init
        .clone()
        .expect("a VM from an image gets a seed");
    assert_eq!(seed.hostname, "web-1");
    assert_eq!(seed.user_data, "#cloud-config\npackages: [nginx]\n");
    // The stored key (all of them by default), then the inline ones, each once.
    assert_eq!(seed.ssh_authorized_keys, [ED25519, ECDSA]);

    let domain = DomainReport {
        vm_id: command.vm_id.clone(),
        domain_name: format!("vmm-{}", command.vm_id),
        state: PowerState::Running as i32,
        generation: 1,
        cpu: 1,
        memory_mib: 128,
        addresses: vec!["10.0.2.15".into()],
        ssh: Some(SshEndpoint {
            host: "127.0.0.1".into(),
            port: 22017,
        }),
        ..DomainReport::default()
    };
    agent.answer(&command.operation_id, domain).await;
    let (status, vm) = create.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{vm}");
    assert_eq!(vm["image"], image["id"]);
    assert_eq!(vm["addresses"], json!(["10.0.2.15"]));
    assert_eq!(
        vm["ssh"],
        json!({"host": "127.0.0.1", "port": 22017, "user": "debian"})
    );
    let hosts = coordinator.get("/api/hosts").await;
    assert_eq!(hosts[0]["cached_images"][0]["id"], image["id"], "{hosts}");

    // The image is in use now.
    let (status, refused) = coordinator
        .send(
            Method::DELETE,
            &format!("/api/images/{}", image["id"].as_str().unwrap()),
            Body::empty(),
            false,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("1 VM(s)"));
}
