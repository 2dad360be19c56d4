//! Host identity against the coordinator's real router and its real gRPC server on
//! loopback, with mutual TLS as the coordinator serves it (its CA in a temporary data
//! directory, a temporary SQLite database). Agents are played by the test through the real
//! generated tonic clients, with certificates made at test time: some obtained the way an
//! agent does (a join token and a signing request), some made with rcgen to be wrong (of
//! another CA, expired, never recorded).
//!
//! Each impersonation that a shared token allowed is tried again with certificates: an
//! empty inventory registered as another host, an impostor re-registering to take another
//! host's commands, a made-up host, a host ID in another case, and a report that wedges a
//! VM's generation. None gets anything.
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use tower::ServiceExt as _;
use vmm_coordinator::agents::AgentControlService;
use vmm_coordinator::agents::host_identity::HostIdentityService;
use vmm_coordinator::app::router;
use vmm_coordinator::connections::{Admission, ConnectionLimits, Protocol};
use vmm_coordinator::pki::authority::IssuedCertificate;
use vmm_coordinator::state::AppState;
use vmm_coordinator::users::{Role, store as user_store};
use vmm_proto::agent_control_client::AgentControlClient;
use vmm_proto::agent_control_server::AgentControlServer;
use vmm_proto::host_identity_client::HostIdentityClient;
use vmm_proto::host_identity_server::HostIdentityServer;
use vmm_proto::{
    AgentMessage, Command, CommandResult, DomainReport, EnrolRequest, FetchImageRequest,
    HostCapacity, PowerState, Register, RenewCertificateRequest, VmStateChanged, agent_message,
    command, command_result, coordinator_message,
};

mod support;

/// How long the certificates the coordinator issues last in these tests.
const LIFETIME: Duration = Duration::from_secs(3600);

struct Coordinator {
    state: AppState,
    router: Router,
    grpc: SocketAddr,
    ca_pem: String,
    admin: String,
    user: String,
    dir: tempfile::TempDir,
}

async fn start() -> Coordinator {
    let dir = tempfile::tempdir().unwrap();
    let state = support::app_state_with_certificates(
        dir.path(),
        support::TestSettings::new("unused-in-certificate-mode"),
        LIFETIME,
    )
    .await;
    let admin = user_store::insert(&state.db, "root", "not-a-real-hash", Role::Admin)
        .await
        .unwrap();
    let user = user_store::insert(&state.db, "patient", "not-a-real-hash", Role::User)
        .await
        .unwrap();
    let pki = state.settings.agent_auth.pki().unwrap().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = listener.local_addr().unwrap();
    let admission = Admission::new(ConnectionLimits {
        listener: "grpc",
        protocol: Protocol::Grpc,
        max_connections: 64,
        max_per_client: None,
        exempt_from_per_client: Vec::new(),
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    });
    let tls = vmm_coordinator::pki::tls::agents_server_config(Arc::clone(&pki)).unwrap();
    let incoming = vmm_coordinator::agents::incoming_tls(listener, admission, tls);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentControlServer::new(AgentControlService::new(
                state.clone(),
            )))
            .add_service(HostIdentityServer::new(HostIdentityService::new(
                state.clone(),
            )))
            .serve_with_incoming(incoming),
    );
    Coordinator {
        admin: state.tokens.issue(&admin).unwrap().token,
        user: state.tokens.issue(&user).unwrap().token,
        router: router(state.clone()),
        ca_pem: pki.ca.certificate_pem().to_owned(),
        state,
        grpc,
        dir,
    }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Coordinator {
    async fn send(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"));
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
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Answer { status, body }
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.send(&self.admin.clone(), method, path, body).await
    }

    fn as_user(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> tokio::task::JoinHandle<Answer> {
        let (router, token, path) = (self.router.clone(), self.user.clone(), path.to_owned());
        let copy = Coordinator {
            router,
            ..self.shallow()
        };
        tokio::spawn(async move { copy.send(&token, method, &path, body).await })
    }

    /// What `send` needs, for a task of its own.
    fn shallow(&self) -> Coordinator {
        Coordinator {
            state: self.state.clone(),
            router: self.router.clone(),
            grpc: self.grpc,
            ca_pem: self.ca_pem.clone(),
            admin: self.admin.clone(),
            user: self.user.clone(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn join_token(&self, host: &str, ttl: Value) -> String {
        let answer = self
            .admin(
                Method::POST,
                "/api/hosts/join-tokens",
                Some(json!({"host_id": host, "ttl": ttl})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        assert_eq!(
            answer.body["ca_sha256"],
            self.state
                .settings
                .agent_auth
                .pki()
                .unwrap()
                .ca
                .fingerprint()
        );
        answer.body["token"].as_str().unwrap().to_owned()
    }

    /// The hosts the coordinator has records of, by ID, with their status.
    async fn hosts(&self) -> Vec<(String, String)> {
        let answer = self.admin(Method::GET, "/api/hosts", None).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|host| {
                (
                    host["id"].as_str().unwrap().to_owned(),
                    host["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    async fn vm(&self, id: &str) -> Value {
        let answer = self
            .send(
                &self.user.clone(),
                Method::GET,
                &format!("/api/vms/{id}"),
                None,
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body
    }

    /// The CA's certificate and key, as the coordinator keeps them.
    fn ca_issuer(&self) -> Issuer<'static, KeyPair> {
        let pki = self.dir.path().join("pki");
        let key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
        Issuer::from_ca_cert_pem(&std::fs::read_to_string(pki.join("ca.crt")).unwrap(), key)
            .unwrap()
    }
}

/// A client certificate and its key.
#[derive(Clone)]
struct Credential {
    cert_pem: String,
    key_pem: String,
}

fn request_for(key: &KeyPair) -> Vec<u8> {
    CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .der()
        .to_vec()
}

/// A TLS connection to the coordinator's agents' port, trusting its CA, presenting
/// `credential` if any.
async fn connect(
    coordinator: &Coordinator,
    credential: Option<&Credential>,
) -> Result<Channel, Status> {
    let mut tls = ClientTlsConfig::new()
        .domain_name("vmm-coordinator")
        .ca_certificate(Certificate::from_pem(&coordinator.ca_pem));
    if let Some(credential) = credential {
        tls = tls.identity(Identity::from_pem(
            &credential.cert_pem,
            &credential.key_pem,
        ));
    }
    Endpoint::from_shared(format!("https://{}", coordinator.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|err| Status::unavailable(format!("{err:?}")))
}

/// Enrols as `host` with `token`, as an agent does.
async fn enrol_with(
    coordinator: &Coordinator,
    host: &str,
    token: &str,
) -> Result<Credential, Status> {
    let key = KeyPair::generate().unwrap();
    let channel = connect(coordinator, None).await?;
    let issued = HostIdentityClient::new(channel)
        .enrol(EnrolRequest {
            host_id: host.into(),
            join_token: token.into(),
            csr_der: request_for(&key),
        })
        .await?
        .into_inner();
    assert_eq!(issued.ca_certificate_pem, coordinator.ca_pem);
    Ok(Credential {
        cert_pem: issued.certificate_pem,
        key_pem: key.serialize_pem(),
    })
}

async fn enrol(coordinator: &Coordinator, host: &str) -> Credential {
    let token = coordinator.join_token(host, json!(60)).await;
    enrol_with(coordinator, host, &token).await.unwrap()
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn report(vm_id: &str, state: PowerState, generation: u64) -> DomainReport {
    DomainReport {
        vm_id: vm_id.into(),
        domain_name: format!("vmm-{vm_id}"),
        state: state as i32,
        generation,
        cpu: 1,
        memory_mib: 64,
        ..DomainReport::default()
    }
}

/// An agent played by the test over the real stream.
struct Agent {
    outgoing: mpsc::Sender<AgentMessage>,
    incoming: tonic::Streaming<vmm_proto::CoordinatorMessage>,
}

impl Agent {
    /// Opens a session with `credential` and registers as `host_id` with `inventory`.
    async fn register(
        coordinator: &Coordinator,
        credential: Option<&Credential>,
        host_id: &str,
        inventory: Vec<DomainReport>,
    ) -> Result<Agent, Status> {
        let channel = connect(coordinator, credential).await?;
        let (outgoing, queue) = mpsc::channel(16);
        let register = Register {
            host_id: host_id.into(),
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
        let mut incoming = AgentControlClient::new(channel)
            .session(ReceiverStream::new(queue))
            .await?
            .into_inner();
        let registered = incoming.message().await?.unwrap();
        assert!(matches!(
            registered.body,
            Some(coordinator_message::Body::Registered(_))
        ));
        Ok(Agent { outgoing, incoming })
    }

    async fn next_command(&mut self) -> Command {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.incoming.message())
                .await
                .expect("a command within 10 s")
                .unwrap()
                .unwrap();
            match message.body {
                Some(coordinator_message::Body::Command(command)) => return command,
                Some(coordinator_message::Body::EvictImage(_)) => continue,
                other => panic!("expected a command, got {other:?}"),
            }
        }
    }

    async fn send(&self, body: agent_message::Body) {
        self.outgoing
            .send(AgentMessage { body: Some(body) })
            .await
            .unwrap();
    }

    async fn answer(&self, command: &Command, state: PowerState) {
        let result = CommandResult {
            operation_id: command.operation_id.clone(),
            outcome: Some(command_result::Outcome::Domain(report(
                &command.vm_id,
                state,
                now_micros(),
            ))),
            snapshot: None,
        };
        self.send(agent_message::Body::CommandResult(result)).await;
    }

    /// Whether the coordinator ended the stream (within `within`).
    async fn ended(&mut self, within: Duration) -> bool {
        match tokio::time::timeout(within, self.incoming.message()).await {
            Ok(Ok(None) | Err(_)) => true,
            Ok(Ok(Some(_))) | Err(_) => false,
        }
    }
}

/// Creates a VM as the user; `agent` must be the host it lands on. Returns its ID.
async fn create_vm(coordinator: &Coordinator, agent: &mut Agent, name: &str) -> String {
    let request = coordinator.as_user(
        Method::POST,
        "/api/vms",
        Some(json!({"name": name, "cpu": 1, "memory": 64, "disk_gb": 1})),
    );
    let command = agent.next_command().await;
    assert!(matches!(command.action, Some(command::Action::Create(_))));
    agent.answer(&command, PowerState::Running).await;
    let created = request.await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    command.vm_id
}

/// A leaf certificate naming `host`, for client use, signed by `issuer`, valid over
/// `not_before..not_after` (seconds relative to now).
fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    host: &str,
    not_before: i64,
    not_after: i64,
) -> (Credential, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        format!("urn:vmm:host:{host}").try_into().unwrap(),
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::seconds(not_before);
    params.not_after = now + time::Duration::seconds(not_after);
    // Unique per certificate (the record is looked up by serial); positive in DER.
    let mut serial = *uuid::Uuid::new_v4().as_bytes();
    serial[0] = 0x11;
    params.serial_number = Some(serial.to_vec().into());
    let cert = params.signed_by(&key, issuer).unwrap();
    let credential = Credential {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let serial_hex = serial.iter().map(|b| format!("{b:02x}")).collect();
    (credential, serial_hex)
}

fn another_ca() -> Issuer<'static, KeyPair> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Issuer::from_ca_cert_der(cert.der(), key).unwrap()
}

#[track_caller]
fn refused(outcome: Result<Agent, Status>) -> Status {
    match outcome {
        Ok(_) => panic!("the session was accepted"),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_of_another_ca_expired_unrecorded_or_missing_are_refused() {
    let coordinator = start().await;

    // Of another CA, naming a real host ID: refused by the handshake.
    let (foreign, _) = leaf(&another_ca(), "host-a", -60, 3600);
    let status = refused(Agent::register(&coordinator, Some(&foreign), "host-a", vec![]).await);
    assert_ne!(status.code(), Code::Ok);

    // Of this CA and recorded, but expired: refused by the handshake.
    let (expired, serial) = leaf(&coordinator.ca_issuer(), "host-a", -7200, -3600);
    let mut conn = coordinator.state.db.acquire().await.unwrap();
    vmm_coordinator::pki::store::record(
        &mut conn,
        &"host-a".parse().unwrap(),
        &IssuedCertificate {
            der: rustls::pki_types::CertificateDer::from(vec![]),
            pem: expired.cert_pem.clone(),
            serial,
            not_after: SystemTime::now() - Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    drop(conn);
    let status = refused(Agent::register(&coordinator, Some(&expired), "host-a", vec![]).await);
    assert_ne!(status.code(), Code::Ok);

    // Signed with the CA's key but never issued by the coordinator (no record).
    let (unrecorded, _) = leaf(&coordinator.ca_issuer(), "host-a", -60, 3600);
    let status = refused(Agent::register(&coordinator, Some(&unrecorded), "host-a", vec![]).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // No certificate at all: only enrolment works without one.
    let status = refused(Agent::register(&coordinator, None, "host-a", vec![]).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("join token"), "{status:?}");
    let channel = connect(&coordinator, None).await.unwrap();
    let fetch = AgentControlClient::new(channel.clone())
        .fetch_image(FetchImageRequest {
            host_id: "host-a".into(),
            image_id: uuid::Uuid::new_v4().to_string(),
            offset: 0,
        })
        .await;
    assert_eq!(fetch.err().map(|s| s.code()), Some(Code::Unauthenticated));
    let renew = HostIdentityClient::new(channel)
        .renew_certificate(RenewCertificateRequest {
            csr_der: request_for(&KeyPair::generate().unwrap()),
        })
        .await;
    assert_eq!(renew.err().map(|s| s.code()), Some(Code::Unauthenticated));

    assert!(coordinator.hosts().await.is_empty(), "no host was recorded");
    // The real thing works.
    let credential = enrol(&coordinator, "host-a").await;
    // Kept until the end: its session is what makes the host connected.
    let _host_a = Agent::register(&coordinator, Some(&credential), "host-a", vec![])
        .await
        .unwrap();
    assert_eq!(
        coordinator.hosts().await,
        [("host-a".to_owned(), "connected".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_enrols_once_only_its_host_and_only_before_it_expires() {
    let coordinator = start().await;
    let token = coordinator.join_token("host-a", json!("1m")).await;

    let other_host = enrol_with(&coordinator, "host-b", &token)
        .await
        .err()
        .unwrap();
    assert_eq!(other_host.code(), Code::PermissionDenied, "{other_host:?}");
    assert!(other_host.message().contains("host-a"), "{other_host:?}");

    // The host ID is case-insensitive: this is host-a.
    let credential = enrol_with(&coordinator, "HOST-A", &token).await.unwrap();
    Agent::register(&coordinator, Some(&credential), "host-a", vec![])
        .await
        .unwrap();

    let twice = enrol_with(&coordinator, "host-a", &token)
        .await
        .err()
        .unwrap();
    assert_eq!(twice.code(), Code::Unauthenticated, "{twice:?}");
    assert!(twice.message().contains("already used"), "{twice:?}");

    let short = coordinator.join_token("host-c", json!(1)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = enrol_with(&coordinator, "host-c", &short)
        .await
        .err()
        .unwrap();
    assert_eq!(late.code(), Code::Unauthenticated, "{late:?}");
    assert!(late.message().contains("expired"), "{late:?}");

    // A made-up token, and one whose CA is not this coordinator's.
    let forged = format!("vmmj1.{}.{}", "ab".repeat(32), "cd".repeat(32));
    let unknown = enrol_with(&coordinator, "host-c", &forged)
        .await
        .err()
        .unwrap();
    assert_eq!(unknown.code(), Code::Unauthenticated, "{unknown:?}");
    let garbage = enrol_with(&coordinator, "host-c", "let me in")
        .await
        .err()
        .unwrap();
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");

    // Join tokens are for admins, with a TTL in bounds.
    let by_user = coordinator
        .send(
            &coordinator.user.clone(),
            Method::POST,
            "/api/hosts/join-tokens",
            Some(json!({"host_id": "host-d"})),
        )
        .await;
    assert_eq!(by_user.status, StatusCode::FORBIDDEN);
    for bad in [
        json!({"host_id": "host d"}),
        json!({"host_id": "h", "ttl": "8d"}),
        json!({"host_id": "h", "ttl": 0}),
    ] {
        let answer = coordinator
            .admin(Method::POST, "/api/hosts/join-tokens", Some(bad.clone()))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            answer.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_a_cannot_register_report_or_fetch_as_another_host() {
    let coordinator = start().await;
    let a = enrol(&coordinator, "host-a").await;
    let b = enrol(&coordinator, "host-b").await;
    let mut host_b = Agent::register(&coordinator, Some(&b), "host-b", vec![])
        .await
        .unwrap();
    let vm = create_vm(&coordinator, &mut host_b, "on-b").await;

    // The empty-inventory takeover: registering as host-b with nothing on it.
    let status = refused(Agent::register(&coordinator, Some(&a), "host-b", vec![]).await);
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(coordinator.vm(&vm).await["status"], "running", "untouched");

    // A made-up host, and host-b in another case.
    for claimed in ["host-evil", "HOST-B", "Host-B"] {
        let status = refused(Agent::register(&coordinator, Some(&a), claimed, vec![]).await);
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{claimed}: {status:?}"
        );
    }
    // Host-a in another case is host-a itself: no second record.
    let host_a = Agent::register(&coordinator, Some(&a), "HOST-A", vec![])
        .await
        .unwrap();
    assert_eq!(
        coordinator.hosts().await,
        [
            ("host-a".to_owned(), "connected".to_owned()),
            ("host-b".to_owned(), "connected".to_owned())
        ]
    );

    // Reports about host-b's VM on host-a's stream change nothing.
    host_a
        .send(agent_message::Body::VmStateChanged(VmStateChanged {
            domain: Some(report(&vm, PowerState::Stopped, now_micros())),
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(coordinator.vm(&vm).await["status"], "running");

    // Fetching images as host-b.
    let channel = connect(&coordinator, Some(&a)).await.unwrap();
    let fetch = AgentControlClient::new(channel)
        .fetch_image(FetchImageRequest {
            host_id: "host-b".into(),
            image_id: uuid::Uuid::new_v4().to_string(),
            offset: 0,
        })
        .await;
    assert_eq!(fetch.err().map(|s| s.code()), Some(Code::PermissionDenied));

    // Host-b still gets and answers its own commands.
    let reboot = coordinator.as_user(
        Method::POST,
        &format!("/api/vms/{vm}/action"),
        Some(json!({"action": "reboot"})),
    );
    let command = host_b.next_command().await;
    assert_eq!(command.vm_id, vm);
    host_b.answer(&command, PowerState::Running).await;
    assert_eq!(reboot.await.unwrap().status, StatusCode::OK);
    drop(host_a);
}

/// The impostor of the shared-token days re-registered as another host every 0.3 s and got
/// half of its commands. With certificates its every attempt is refused, and every command
/// reaches the real host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_never_receives_another_hosts_commands() {
    let coordinator = start().await;
    let real = enrol(&coordinator, "host-b").await;
    let impostor = enrol(&coordinator, "host-a").await;
    let mut host_b = Agent::register(&coordinator, Some(&real), "host-b", vec![])
        .await
        .unwrap();
    let vm = create_vm(&coordinator, &mut host_b, "target").await;

    let attempts = {
        let coordinator = coordinator.shallow();
        tokio::spawn(async move {
            let mut refusals = 0;
            for _ in 0..10 {
                if Agent::register(&coordinator, Some(&impostor), "host-b", vec![])
                    .await
                    .is_err()
                {
                    refusals += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            refusals
        })
    };
    for _ in 0..4 {
        let reboot = coordinator.as_user(
            Method::POST,
            &format!("/api/vms/{vm}/action"),
            Some(json!({"action": "reboot"})),
        );
        let command = host_b.next_command().await;
        assert_eq!(command.vm_id, vm);
        host_b.answer(&command, PowerState::Running).await;
        let answer = reboot.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    assert_eq!(
        attempts.await.unwrap(),
        10,
        "every impostor session was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_host_is_cut_off_and_cannot_reconnect_or_renew() {
    let coordinator = start().await;
    let credential = enrol(&coordinator, "host-a").await;
    let mut host_a = Agent::register(&coordinator, Some(&credential), "host-a", vec![])
        .await
        .unwrap();
    let vm = create_vm(&coordinator, &mut host_a, "last").await;

    let refused_delete = coordinator
        .admin(Method::DELETE, "/api/hosts/HOST-A", None)
        .await;
    assert_eq!(
        refused_delete.status,
        StatusCode::CONFLICT,
        "{}",
        refused_delete.body
    );
    assert!(
        refused_delete.body["message"]
            .as_str()
            .unwrap()
            .contains("1 VM")
    );
    let by_user = coordinator
        .send(
            &coordinator.user.clone(),
            Method::DELETE,
            "/api/hosts/host-a",
            None,
        )
        .await;
    assert_eq!(by_user.status, StatusCode::FORBIDDEN);

    let delete = coordinator.as_user(Method::DELETE, &format!("/api/vms/{vm}"), None);
    let command = host_a.next_command().await;
    host_a.answer(&command, PowerState::Absent).await;
    assert_eq!(delete.await.unwrap().status, StatusCode::NO_CONTENT);

    let deleted = coordinator
        .admin(Method::DELETE, "/api/hosts/Host-A", None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    assert!(
        host_a.ended(Duration::from_secs(5)).await,
        "its session was ended"
    );
    assert!(coordinator.hosts().await.is_empty());
    let metrics = coordinator.admin(Method::GET, "/api/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);

    let status = refused(Agent::register(&coordinator, Some(&credential), "host-a", vec![]).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    let channel = connect(&coordinator, Some(&credential)).await.unwrap();
    let renew = HostIdentityClient::new(channel)
        .renew_certificate(RenewCertificateRequest {
            csr_der: request_for(&KeyPair::generate().unwrap()),
        })
        .await;
    assert_eq!(renew.err().map(|s| s.code()), Some(Code::Unauthenticated));
    assert!(coordinator.hosts().await.is_empty(), "no record came back");
    let again = coordinator
        .admin(Method::DELETE, "/api/hosts/host-a", None)
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);

    // Enrolling it again (a replaced machine) works with a new token.
    let fresh = enrol(&coordinator, "host-a").await;
    Agent::register(&coordinator, Some(&fresh), "host-a", vec![])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_works_and_the_old_one_until_it_expires() {
    let coordinator = start().await;
    let old = enrol(&coordinator, "host-a").await;
    let channel = connect(&coordinator, Some(&old)).await.unwrap();
    let mut host_a = Agent::register(&coordinator, Some(&old), "host-a", vec![])
        .await
        .unwrap();
    let vm = create_vm(&coordinator, &mut host_a, "steady").await;

    let key = KeyPair::generate().unwrap();
    let issued = HostIdentityClient::new(channel)
        .renew_certificate(RenewCertificateRequest {
            csr_der: request_for(&key),
        })
        .await
        .unwrap()
        .into_inner();
    let new = Credential {
        cert_pem: issued.certificate_pem,
        key_pem: key.serialize_pem(),
    };
    assert_ne!(new.cert_pem, old.cert_pem);
    assert!(issued.not_after_unix > 0);

    // The session goes on: commands still reach it.
    let reboot = coordinator.as_user(
        Method::POST,
        &format!("/api/vms/{vm}/action"),
        Some(json!({"action": "reboot"})),
    );
    let command = host_a.next_command().await;
    host_a.answer(&command, PowerState::Running).await;
    assert_eq!(reboot.await.unwrap().status, StatusCode::OK);

    // The new certificate opens sessions; it names the same host only.
    drop(host_a);
    Agent::register(
        &coordinator,
        Some(&new),
        "host-a",
        vec![report(&vm, PowerState::Running, now_micros())],
    )
    .await
    .unwrap();
    let status = refused(Agent::register(&coordinator, Some(&new), "host-b", vec![]).await);
    assert_eq!(status.code(), Code::PermissionDenied);
    Agent::register(
        &coordinator,
        Some(&old),
        "host-a",
        vec![report(&vm, PowerState::Running, now_micros())],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_new_vms_off_a_host_while_its_vms_keep_running() {
    let coordinator = start().await;
    let a = enrol(&coordinator, "host-a").await;
    let b = enrol(&coordinator, "host-b").await;
    let mut host_a = Agent::register(&coordinator, Some(&a), "host-a", vec![])
        .await
        .unwrap();
    let vm = create_vm(&coordinator, &mut host_a, "stays").await;
    let mut host_b = Agent::register(&coordinator, Some(&b), "host-b", vec![])
        .await
        .unwrap();

    let drained = coordinator
        .admin(Method::POST, "/api/hosts/HOST-A/drain", None)
        .await;
    assert_eq!(drained.status, StatusCode::OK, "{}", drained.body);
    assert_eq!(drained.body["status"], "draining");
    assert_eq!(drained.body["drained"], true);
    assert_eq!(drained.body["vms"], 1);

    // Host-a has more room, but new VMs go to host-b.
    for name in ["one", "two"] {
        let request = coordinator.as_user(
            Method::POST,
            "/api/vms",
            Some(json!({"name": name, "cpu": 1, "memory": 64, "disk_gb": 1})),
        );
        let command = host_b.next_command().await;
        host_b.answer(&command, PowerState::Running).await;
        let created = request.await.unwrap();
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        assert_eq!(created.body["host"], "host-b", "{}", created.body);
    }
    // The drained host's VM is still managed there.
    let stop = coordinator.as_user(
        Method::POST,
        &format!("/api/vms/{vm}/action"),
        Some(json!({"action": "stop"})),
    );
    let command = host_a.next_command().await;
    assert_eq!(command.vm_id, vm);
    host_a.answer(&command, PowerState::Stopped).await;
    assert_eq!(stop.await.unwrap().status, StatusCode::OK);

    // Only host-a left, drained: no room anywhere.
    let _ = coordinator
        .admin(Method::POST, "/api/hosts/host-b/drain", None)
        .await;
    let none = coordinator
        .as_user(
            Method::POST,
            "/api/vms",
            Some(json!({"name": "nowhere", "cpu": 1, "memory": 64, "disk_gb": 1})),
        )
        .await
        .unwrap();
    assert_eq!(
        none.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        none.body
    );

    let undrained = coordinator
        .admin(Method::POST, "/api/hosts/host-a/undrain", None)
        .await;
    assert_eq!(undrained.body["status"], "connected", "{}", undrained.body);
    let request = coordinator.as_user(
        Method::POST,
        "/api/vms",
        Some(json!({"name": "back", "cpu": 1, "memory": 64, "disk_gb": 1})),
    );
    let command = host_a.next_command().await;
    host_a.answer(&command, PowerState::Running).await;
    assert_eq!(request.await.unwrap().status, StatusCode::CREATED);

    let unknown = coordinator
        .admin(Method::POST, "/api/hosts/nowhere/drain", None)
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

/// The wedge of the shared-token days: one report of generation 2^63-1 made every later
/// report and result look stale. It is refused now, and the VM goes on following its host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_from_the_far_future_cannot_wedge_a_vm() {
    let coordinator = start().await;
    let credential = enrol(&coordinator, "host-a").await;
    let mut host_a = Agent::register(&coordinator, Some(&credential), "host-a", vec![])
        .await
        .unwrap();
    let vm = create_vm(&coordinator, &mut host_a, "wedge").await;

    host_a
        .send(agent_message::Body::VmStateChanged(VmStateChanged {
            domain: Some(report(&vm, PowerState::Paused, i64::MAX as u64)),
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(coordinator.vm(&vm).await["status"], "running", "refused");

    host_a
        .send(agent_message::Body::VmStateChanged(VmStateChanged {
            domain: Some(report(&vm, PowerState::Stopped, now_micros())),
        }))
        .await;
    let mut status = Value::Null;
    for _ in 0..50 {
        status = coordinator.vm(&vm).await["status"].clone();
        if status == "stopped" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "stopped", "the honest report applies");
    let start = coordinator.as_user(
        Method::POST,
        &format!("/api/vms/{vm}/action"),
        Some(json!({"action": "start"})),
    );
    let command = host_a.next_command().await;
    host_a.answer(&command, PowerState::Running).await;
    assert_eq!(start.await.unwrap().status, StatusCode::OK);
    assert_eq!(coordinator.vm(&vm).await["status"], "running");
}
