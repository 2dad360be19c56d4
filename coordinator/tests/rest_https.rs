//! The real `coordinator` binary serving its REST API over HTTPS (`TLS_CERT`, `TLS_KEY`),
//! refusing the development agent token beside TLS, and making its agents' CA with
//! `coordinator ca init`. Certificates are made at test time (rcgen); everything listens on
//! loopback in a temporary directory.
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The name the test's REST certificate is for.
const SERVER_NAME: &str = "vmm.test";

fn coordinator(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATA_DIR", dir.join("data"))
        .env("BCRYPT_COST", "4")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    command
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A self-signed certificate for [`SERVER_NAME`], written as `tls.crt` and `tls.key`.
fn write_certificate(dir: &Path) -> (String, String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        cert.pem(),
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_rest_api_is_served_over_https_with_tls_cert_and_tls_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, cert_path, key_path) = write_certificate(dir.path());
    let (http, grpc) = (free_port(), free_port());
    let log = std::fs::File::create(dir.path().join("coordinator.log")).unwrap();
    let _process = Running(
        coordinator(
            dir.path(),
            &[],
            &[
                ("HTTP_ADDR", &http.to_string()),
                ("GRPC_ADDR", &grpc.to_string()),
                ("TLS_CERT", &cert_path),
                ("TLS_KEY", &key_path),
            ],
        )
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap(),
    );
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve(SERVER_NAME, http)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("https://{SERVER_NAME}:{}/api/health", http.port());
    let started = Instant::now();
    let health: serde_json::Value = loop {
        match client.get(&url).send().await {
            Ok(response) => {
                assert_eq!(response.status(), 200);
                break response.json().await.unwrap();
            }
            Err(error) if started.elapsed() < Duration::from_secs(30) => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!(
                "no HTTPS answer within 30 s: {error:?}\n{}",
                std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap_or_default()
            ),
        }
    };
    assert_eq!(health["status"], "ok", "{health}");

    // Plain HTTP on the same port gets no API answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{http}/api/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "{plain:?}"
    );
    // A client that does not trust the certificate is refused by its own check.
    let untrusting = reqwest::Client::builder()
        .resolve(SERVER_NAME, http)
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await;
    assert!(untrusting.is_err(), "{untrusting:?}");

    let log = std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap();
    assert!(!log.contains("PRIVATE KEY"), "no key in the log");
}

#[test]
fn the_development_agent_token_is_refused_beside_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert_path, key_path) = write_certificate(dir.path());
    let output = coordinator(
        dir.path(),
        &[],
        &[
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("GRPC_ADDR", "127.0.0.1:0"),
            ("TLS_CERT", &cert_path),
            ("TLS_KEY", &key_path),
            ("AGENT_TOKEN", "a-development-token-of-some-length"),
        ],
    )
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(
        said.contains("AGENT_TOKEN") && said.contains("join token"),
        "{said}"
    );
}

#[test]
fn ca_init_creates_the_agents_ca_once_and_prints_its_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let output = coordinator(dir.path(), &["ca", "init"], &[])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let first = run();
    assert!(first.starts_with("created"), "{first}");
    let fingerprint = |said: &str| {
        said.lines()
            .find_map(|line| line.strip_prefix("SHA-256 fingerprint: "))
            .unwrap()
            .to_owned()
    };
    let hash = fingerprint(&first);
    assert_eq!(hash.len(), 64, "{first}");
    let second = run();
    assert!(second.starts_with("found"), "{second}");
    assert_eq!(fingerprint(&second), hash, "the same CA");
    let key = dir.path().join("data/pki/ca.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
