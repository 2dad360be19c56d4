//! Host identity with the real binaries: agents enrol with join tokens made through the REST
//! API, keep their key and certificate in their data directory, connect over mutual TLS,
//! renew their certificates before they run out; admins drain, undrain, delete and replace
//! hosts. The shared development token keeps one test of its own.
//!
//! Every other e2e test runs over mutual TLS too (the cluster's default): these check what
//! is particular to identity.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use vmm_e2e::{AgentAuthMode, AgentOptions, ClusterOptions, TestCluster, wait_until};

fn mode(path: &std::path::Path) -> Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{} exists", path.display()))?
        .permissions()
        .mode()
        & 0o777)
}

/// The serial-number-bearing certificate block of an agent's `host.pem`.
fn certificate_of(cluster: &TestCluster, host: &str) -> Result<String> {
    let pem = std::fs::read_to_string(cluster.agent(host).data_dir.join("identity/host.pem"))?;
    let end = pem
        .find("-----END CERTIFICATE-----")
        .context("host.pem holds a certificate")?;
    Ok(pem[..end].to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_enrol_with_a_join_token_and_reconnect_with_their_certificate() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    enrolled(&mut cluster).await.unwrap();
}

async fn enrolled(cluster: &mut TestCluster) -> Result<()> {
    ensure!(cluster.agent_auth() == AgentAuthMode::Certificates);
    ensure!(cluster.grpc_url().starts_with("https://"));
    let agent = cluster.agent("host-a");
    let identity = agent.data_dir.join("identity");
    ensure!(mode(&identity)? == 0o700, "identity directory is 0700");
    ensure!(
        mode(&identity.join("host.pem"))? == 0o600,
        "the key is 0600"
    );
    ensure!(identity.join("ca.crt").is_file());
    let log = agent.log();
    ensure!(log.contains("enrolled with the coordinator"), "{log}");
    ensure!(
        !log.contains("BEGIN PRIVATE KEY") && !log.contains("vmmj1."),
        "neither the key nor the join token is logged: {log}"
    );
    let coordinator_log = cluster.coordinator_log();
    ensure!(
        !coordinator_log.contains("vmmj1."),
        "the coordinator does not log join tokens"
    );

    let user = cluster.user("enrolled").await?;
    let vm = user.create_vm("over-mtls", 1, 128, Some(1)).await?;
    ensure!(vm.status == "running", "{vm:?}");
    user.delete_vm(&vm.id).await?;

    // A restart uses the kept certificate; the join token in JOIN_TOKEN_FILE is spent.
    let before = certificate_of(cluster, "host-a")?;
    let started = Instant::now();
    cluster.restart_agent("host-a")?;
    // The coordinator may still count the killed agent's session: connected means the new
    // agent said it registered.
    let agent_log = cluster.agent("host-a").log_path();
    wait_until(
        "the restarted agent registered",
        Duration::from_secs(30),
        || {
            let agent_log = agent_log.clone();
            async move {
                let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
                Ok(log
                    .contains("registered with the coordinator")
                    .then_some(()))
            }
        },
    )
    .await?;
    cluster.wait_for_connected_agents(1).await?;
    eprintln!(
        "restart to connected with the kept certificate: {:?}",
        started.elapsed()
    );
    let log = cluster.agent("host-a").log();
    ensure!(log.contains("already enrolled"), "{log}");
    ensure!(
        certificate_of(cluster, "host-a")? == before,
        "the same certificate"
    );
    // (A new process on the test driver is a new, empty host.)
    let vm = user.create_vm("after-restart", 1, 128, Some(1)).await?;
    ensure!(vm.status == "running", "{vm:?}");
    let stopped = user.action(&vm.id, "stop").await?;
    ensure!(stopped.status == "stopped", "{stopped:?}");

    // Enrolling one more host while the cluster runs: from token to connected.
    let started = Instant::now();
    cluster
        .add_agent(AgentOptions::test_driver("host-b"))
        .await?;
    cluster.wait_for_connected_agents(2).await?;
    eprintln!(
        "enrolment (join token made, key pair, CSR, certificate) to connected: {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_or_foreign_join_token_stops_the_agent_saying_why() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    bad_join_tokens(&cluster).await.unwrap();
}

async fn bad_join_tokens(cluster: &TestCluster) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let spent = std::fs::read_to_string(cluster.join_token_path("host-a")?)?;
    let for_host_c = cluster.join_token("host-c").await?;
    // A token naming another CA: what an agent pointed at the wrong coordinator (or a
    // man in the middle) sees. It never sends the secret, so the token stays usable.
    let for_host_e = cluster.join_token("host-e").await?;
    let (secret_part, _ca) = for_host_e
        .rsplit_once('.')
        .context("a token ends with the CA's SHA-256")?;
    let other_ca = format!("{secret_part}.{}", "0".repeat(64));
    for (name, host, token, expected) in [
        ("spent", "host-b", spent.as_str(), "already used"),
        ("another host's", "host-d", for_host_c.as_str(), "host-c"),
        (
            "another CA's",
            "host-e",
            other_ca.as_str(),
            "does not present a certificate of the CA the join token names",
        ),
    ] {
        let token_file = dir.path().join(format!("token-{host}"));
        std::fs::write(&token_file, token)?;
        let data_dir = dir.path().join(format!("data-{host}"));
        let data_dir_text = data_dir.display().to_string();
        let token_file_text = token_file.display().to_string();
        let metrics = vmm_e2e::cluster::free_port()?.to_string();
        let mut agent = crate::config::start(
            "agent",
            dir.path(),
            &format!("agent-{host}"),
            &[],
            &[
                ("COORDINATOR_URL", cluster.grpc_url()),
                ("HOST_ID", host),
                ("AGENT_DATA_DIR", &data_dir_text),
                ("JOIN_TOKEN_FILE", &token_file_text),
                ("METRICS_ADDR", &metrics),
            ],
        )?;
        let status = crate::config::wait_for_exit(&mut agent, Duration::from_secs(30)).await?;
        let output = crate::config::output(&agent);
        ensure!(
            status.code() == Some(2),
            "{name} token: exit code 2 (restarting cannot help), not {status}: {output}"
        );
        ensure!(
            output.contains(expected),
            "{name} token: the message says why: {output}"
        );
        ensure!(
            !data_dir.join("identity/host.pem").exists(),
            "{name} token: no identity kept"
        );
    }
    let admin = cluster.admin().await?;
    let hosts: Vec<String> = admin.hosts().await?.into_iter().map(|h| h.id).collect();
    ensure!(hosts == ["host-a"], "no host was added: {hosts:?}");

    // The token the agent did not give away to the wrong CA still enrols host-e.
    let token_file = dir.path().join("token-host-e-real");
    std::fs::write(&token_file, &for_host_e)?;
    let (data_dir, token_file) = (
        dir.path().join("data-host-e-real").display().to_string(),
        token_file.display().to_string(),
    );
    let metrics = vmm_e2e::cluster::free_port()?.to_string();
    let _agent = crate::config::start(
        "agent",
        dir.path(),
        "agent-host-e-real",
        &[],
        &[
            ("COORDINATOR_URL", cluster.grpc_url()),
            ("HOST_ID", "host-e"),
            ("AGENT_DATA_DIR", &data_dir),
            ("JOIN_TOKEN_FILE", &token_file),
            ("METRICS_ADDR", &metrics),
        ],
    )?;
    wait_until("host-e to connect", Duration::from_secs(30), || {
        let admin = admin.clone();
        async move {
            Ok(host_status(&admin, "host-e")
                .await?
                .filter(|s| s == "connected"))
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_keeps_new_vms_off_and_delete_cuts_a_host_off_until_it_enrols_again() {
    let mut cluster = TestCluster::start(ClusterOptions::with_agents(vec![
        AgentOptions::test_driver("host-a"),
        AgentOptions::test_driver("host-b"),
    ]))
    .await
    .unwrap();
    drain_and_delete(&mut cluster).await.unwrap();
}

async fn host_status(admin: &vmm_e2e::Api, id: &str) -> Result<Option<String>> {
    Ok(admin
        .hosts()
        .await?
        .into_iter()
        .find(|host| host.id == id)
        .map(|host| host.status))
}

async fn drain_and_delete(cluster: &mut TestCluster) -> Result<()> {
    let admin = cluster.admin().await?;
    let user = cluster.user("tenant").await?;
    let on_a = user.create_vm("first", 1, 128, Some(1)).await?;
    ensure!(on_a.host.as_deref() == Some("host-a"), "{on_a:?}");

    // Drain host-a (in another case: host IDs are case-insensitive).
    let drained: Value = admin
        .post("/api/hosts/HOST-A/drain", &json!({}))
        .await?
        .expect_status(200)?
        .json()?;
    ensure!(drained["status"] == "draining", "{drained}");
    ensure!(host_status(&admin, "host-a").await?.as_deref() == Some("draining"));
    // Spread would pick host-a (the tie goes to the lower ID); drained, it is skipped.
    for name in ["second", "third"] {
        let vm = user.create_vm(name, 1, 128, Some(1)).await?;
        ensure!(vm.host.as_deref() == Some("host-b"), "{vm:?}");
    }
    // Its VM is still managed.
    ensure!(user.action(&on_a.id, "stop").await?.status == "stopped");
    ensure!(user.action(&on_a.id, "start").await?.status == "running");
    let undrained: Value = admin
        .post("/api/hosts/host-a/undrain", &json!({}))
        .await?
        .expect_status(200)?
        .json()?;
    ensure!(undrained["status"] == "connected", "{undrained}");

    // A user may not drain or delete; a host with VMs is not deleted.
    user.post("/api/hosts/host-a/drain", &json!({}))
        .await?
        .expect_error(403)?;
    user.delete("/api/hosts/host-a").await?.expect_error(403)?;
    let message = admin.delete("/api/hosts/host-a").await?.expect_error(409)?;
    ensure!(message.contains("VM"), "{message}");
    admin
        .delete("/api/hosts/nowhere")
        .await?
        .expect_error(404)?;

    // Without VMs it is deleted, cut off, and cannot come back with its old certificate.
    user.delete_vm(&on_a.id).await?;
    admin
        .delete("/api/hosts/host-a")
        .await?
        .expect_status(204)?;
    cluster.wait_for_connected_agents(1).await?;
    wait_until(
        "the deleted agent to be refused",
        Duration::from_secs(30),
        || {
            let log = cluster.agent("host-a").log();
            async move { Ok(log.contains("revoked").then_some(())) }
        },
    )
    .await?;
    ensure!(
        host_status(&admin, "host-a").await?.is_none(),
        "no record came back"
    );
    cluster.restart_agent("host-a")?;
    wait_until(
        "the restarted agent to be refused",
        Duration::from_secs(30),
        || {
            let log = cluster.agent("host-a").log();
            async move { Ok(log.contains("revoked").then_some(())) }
        },
    )
    .await?;
    ensure!(host_status(&admin, "host-a").await?.is_none());

    // Replacing the host: a new join token, a fresh identity.
    std::fs::remove_dir_all(cluster.agent("host-a").data_dir.join("identity"))?;
    let token = cluster.join_token("host-a").await?;
    std::fs::write(cluster.join_token_path("host-a")?, token)?;
    cluster.restart_agent("host-a")?;
    cluster.wait_for_connected_agents(2).await?;
    ensure!(host_status(&admin, "host-a").await?.as_deref() == Some("connected"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_renew_before_expiry_without_dropping_the_session() {
    // The shortest lifetime the coordinator accepts: renewal is due after two thirds.
    let cluster =
        TestCluster::start(ClusterOptions::default().coordinator_env("AGENT_CERT_LIFETIME", "12s"))
            .await
            .unwrap();
    renewal(&cluster).await.unwrap();
}

async fn renewal(cluster: &TestCluster) -> Result<()> {
    let user = cluster.user("renewer").await?;
    let vm = user.create_vm("steady", 1, 128, Some(1)).await?;
    let first = certificate_of(cluster, "host-a")?;
    // Enrolled at most this long ago: the cluster waited for the agent to connect.
    let enrolled_by = Instant::now();
    ensure!(
        !cluster
            .agent("host-a")
            .log()
            .contains("certificate renewed"),
        "not renewed at once: two thirds of the lifetime first"
    );
    wait_until(
        "the certificate to be renewed",
        Duration::from_secs(30),
        || {
            let log = cluster.agent("host-a").log();
            async move { Ok(log.contains("certificate renewed").then_some(())) }
        },
    )
    .await?;
    eprintln!(
        "renewed {:?} after the cluster started",
        enrolled_by.elapsed()
    );
    ensure!(
        enrolled_by.elapsed() < Duration::from_secs(12),
        "renewed before the first certificate ran out"
    );
    ensure!(
        certificate_of(cluster, "host-a")? != first,
        "a new certificate is kept"
    );
    // One renewal per two thirds of a lifetime, not a loop.
    let renewals = cluster
        .agent("host-a")
        .log()
        .matches("certificate renewed")
        .count();
    ensure!(renewals <= 2, "{renewals} renewals");
    ensure!(mode(&cluster.agent("host-a").data_dir.join("identity/host.pem"))? == 0o600);

    // Past the first certificate's end the session still carries commands, and it was
    // never dropped: one registration in the agent's log.
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(enrolled_by.elapsed())).await;
    ensure!(user.action(&vm.id, "stop").await?.status == "stopped");
    ensure!(user.action(&vm.id, "start").await?.status == "running");
    let log = cluster.agent("host-a").log();
    let sessions = log.matches("registered with the coordinator").count();
    ensure!(
        sessions == 1,
        "one session throughout, not {sessions}: {log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_token_mode_still_works_with_a_warning() {
    let cluster = TestCluster::start(ClusterOptions::default().shared_token())
        .await
        .unwrap();
    shared_token(&cluster).await.unwrap();
}

async fn shared_token(cluster: &TestCluster) -> Result<()> {
    ensure!(cluster.agent_auth() == AgentAuthMode::SharedToken);
    ensure!(cluster.grpc_url().starts_with("http://"));
    let log = cluster.coordinator_log();
    ensure!(
        log.contains("AGENT_TOKEN is set") && log.contains("development"),
        "the coordinator warns at start: {log}"
    );
    let user = cluster.user("developer").await?;
    let vm = user.create_vm("dev", 1, 128, Some(1)).await?;
    ensure!(vm.status == "running", "{vm:?}");
    ensure!(
        !cluster.agent("host-a").data_dir.join("identity").exists(),
        "no certificate in this mode"
    );
    let refused = cluster
        .admin()
        .await?
        .post("/api/hosts/join-tokens", &json!({"host_id": "host-b"}))
        .await?
        .expect_error(409)?;
    ensure!(refused.contains("AGENT_TOKEN"), "{refused}");
    Ok(())
}
