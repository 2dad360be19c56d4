//! Benchmark: what host identity costs on the agents' port, against the coordinator's real
//! gRPC services on loopback (its CA in a temporary directory, a temporary SQLite file).
//! Prints figures; asserts nothing.
//!
//! - enrolment: a key pair made, a signing request sent with a fresh join token, the
//!   certificate issued and recorded (what an agent's first start adds);
//! - a new connection and one authenticated call: mutual TLS with a host certificate
//!   (handshake, certificate read, its record looked up) against plain HTTP/2 with the shared
//!   development token.
//!
//!     cargo run --release -p vmm-coordinator --example agent_handshake [rounds]
// A benchmark: a failed `unwrap` ends the run with the reason.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use vmm_coordinator::agents::AgentControlService;
use vmm_coordinator::agents::host_identity::HostIdentityService;
use vmm_coordinator::connections::{Admission, ConnectionLimits, Protocol};
use vmm_coordinator::state::AppState;
use vmm_proto::agent_control_client::AgentControlClient;
use vmm_proto::agent_control_server::AgentControlServer;
use vmm_proto::host_identity_client::HostIdentityClient;
use vmm_proto::host_identity_server::HostIdentityServer;
use vmm_proto::{EnrolRequest, FetchImageRequest};

const TOKEN: &str = "benchmark-shared-agent-token";

fn admission() -> Arc<Admission> {
    Admission::new(ConnectionLimits {
        listener: "grpc",
        protocol: Protocol::Grpc,
        max_connections: 1024,
        max_per_client: None,
        exempt_from_per_client: Vec::new(),
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    })
}

/// Serves the agents' services of `state` on a loopback port, with TLS when it has a CA.
async fn serve(state: &AppState) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder()
        .add_service(AgentControlServer::new(AgentControlService::new(
            state.clone(),
        )))
        .add_service(HostIdentityServer::new(HostIdentityService::new(
            state.clone(),
        )));
    match state.settings.agent_auth.pki() {
        Some(pki) => {
            let tls = vmm_coordinator::pki::tls::agents_server_config(Arc::clone(pki)).unwrap();
            let incoming = vmm_coordinator::agents::incoming_tls(listener, admission(), tls);
            tokio::spawn(router.serve_with_incoming(incoming));
        }
        None => {
            let incoming = vmm_coordinator::agents::incoming(listener, admission());
            tokio::spawn(router.serve_with_incoming(incoming));
        }
    }
    addr
}

fn tls(ca_pem: &str, identity: Option<(&str, &str)>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new()
        .domain_name(vmm_shared::identity::COORDINATOR_SERVER_NAME)
        .ca_certificate(Certificate::from_pem(ca_pem));
    match identity {
        Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
        None => config,
    }
}

async fn channel(addr: SocketAddr, tls: Option<ClientTlsConfig>) -> Channel {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    endpoint.connect().await.unwrap()
}

/// One authenticated call that does little else: fetching an image for a host without a
/// session, refused just after the caller is authenticated.
async fn authenticated_call(channel: Channel, token: Option<&str>) {
    let mut request = tonic::Request::new(FetchImageRequest {
        host_id: "host-1".into(),
        image_id: uuid::Uuid::new_v4().to_string(),
        offset: 0,
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let status = AgentControlClient::new(channel)
        .fetch_image(request)
        .await
        .err()
        .unwrap();
    // Past authentication: the host has no session to fetch images for (the same answer in
    // both modes).
    assert!(
        status.code() == tonic::Code::PermissionDenied && status.message().contains("no session"),
        "{status:?}"
    );
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<58} n={:<4} p50 {:>8.2?}  p90 {:>8.2?}  max {:>8.2?}",
        samples.len(),
        at(0.5),
        at(0.9),
        at(1.0)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    for mode in ["tls", "token"] {
        std::fs::create_dir(dir.path().join(mode)).unwrap();
    }
    let state = support::app_state_with_certificates(
        &dir.path().join("tls"),
        support::TestSettings::new(TOKEN),
        Duration::from_secs(86400),
    )
    .await;
    let pki = Arc::clone(state.settings.agent_auth.pki().unwrap());
    let ca_pem = pki.ca.certificate_pem().to_owned();
    let admin = vmm_coordinator::users::store::insert(
        &state.db,
        "root",
        "not-a-real-hash",
        vmm_coordinator::users::Role::Admin,
    )
    .await
    .unwrap();
    let tls_addr = serve(&state).await;

    // Enrolment, as an agent's first start does it (each with its own token and host).
    let mut enrolments = Vec::new();
    let mut key_pairs = Vec::new();
    let mut identity = None;
    for round in 0..rounds {
        let host: vmm_shared::HostId = format!("host-{round}").parse().unwrap();
        let made = vmm_coordinator::pki::join_tokens::create(
            &state.db,
            &host,
            Duration::from_secs(600),
            &pki.ca.fingerprint_bytes(),
            admin.id,
        )
        .await
        .unwrap();
        let started = Instant::now();
        let key = KeyPair::generate().unwrap();
        key_pairs.push(started.elapsed());
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        let issued = HostIdentityClient::new(channel(tls_addr, Some(tls(&ca_pem, None))).await)
            .enrol(EnrolRequest {
                host_id: host.to_string(),
                join_token: made.token.expose(),
                csr_der: csr,
            })
            .await
            .unwrap()
            .into_inner();
        enrolments.push(started.elapsed());
        if round == 1 {
            identity = Some((issued.certificate_pem, key.serialize_pem()));
        }
    }
    let (cert, key) = identity.unwrap();

    // New connections with one authenticated call each: mutual TLS against the token.
    let token_state =
        support::app_state(&dir.path().join("token"), support::TestSettings::new(TOKEN)).await;
    let plain_addr = serve(&token_state).await;
    let mut mtls = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let channel = channel(tls_addr, Some(tls(&ca_pem, Some((&cert, &key))))).await;
        authenticated_call(channel, None).await;
        mtls.push(started.elapsed());
        let started = Instant::now();
        authenticated_call(channel_plain(plain_addr).await, Some(TOKEN)).await;
        plain.push(started.elapsed());
    }
    // Calls on one open connection: what a session pays per call once connected.
    let open = channel(tls_addr, Some(tls(&ca_pem, Some((&cert, &key))))).await;
    let mut per_call = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        authenticated_call(open.clone(), None).await;
        per_call.push(started.elapsed());
    }

    summary("key pair (ECDSA P-256) only", key_pairs);
    summary(
        "enrolment: key pair + TLS connect + Enrol (issue, record)",
        enrolments,
    );
    summary(
        "new connection + 1 call, mutual TLS (host certificate)",
        mtls,
    );
    summary(
        "new connection + 1 call, plain HTTP/2 (shared token)",
        plain,
    );
    summary(
        "1 call on an open mutual-TLS connection (record lookup)",
        per_call,
    );
}

async fn channel_plain(addr: SocketAddr) -> Channel {
    channel(addr, None).await
}
