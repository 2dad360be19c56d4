//! Faults and retries: a host that goes silent, a client that retries a create, bodies
//! that are too large. The fault tests end with the shared audit (`vmm_e2e::audit`): VMs
//! the API acknowledged exist with their real state, nothing was doubled, and quota usage
//! equals what exists.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use reqwest::Method;
use serde_json::json;
use vmm_e2e::{ClusterOptions, TestCluster, wait_until};

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_retries_with_one_idempotency_key_make_one_vm() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    same_key_makes_one_vm(&cluster).await.unwrap();
}

async fn same_key_makes_one_vm(cluster: &TestCluster) -> Result<()> {
    let user = cluster.user("retrier").await?;
    let body = json!({"name": "once", "cpu": 1, "memory": 64, "disk_gb": 1});
    let mut requests = Vec::new();
    for _ in 0..20 {
        let (user, body) = (user.clone(), body.clone());
        requests.push(tokio::spawn(async move {
            user.send_with_headers(
                Method::POST,
                "/api/vms",
                Some(&body),
                &[("idempotency-key", "create-once-7f3a")],
            )
            .await
        }));
    }
    let mut ids = Vec::new();
    for request in requests {
        let response = request.await??.expect_status(201)?;
        ids.push(response.body["id"].as_str().context("id")?.to_owned());
    }
    ids.dedup();
    ensure!(
        ids.len() == 1,
        "every retry answers with the same VM: {ids:?}"
    );
    let vms = user.list_vms().await?;
    ensure!(
        vms.len() == 1 && vms[0].id == ids[0],
        "one VM exists: {vms:?}"
    );
    let quota = user.get("/api/quota").await?.expect_status(200)?.body;
    ensure!(quota["usage"]["vms"] == 1, "usage counts it once: {quota}");
    let hosts = cluster.admin().await?.hosts().await?;
    ensure!(hosts[0].vms == 1, "one VM on the host: {hosts:?}");

    // The same key for a different request is refused, and creates nothing.
    let other = json!({"name": "other", "cpu": 1, "memory": 64, "disk_gb": 1});
    let response = user
        .send_with_headers(
            Method::POST,
            "/api/vms",
            Some(&other),
            &[("idempotency-key", "create-once-7f3a")],
        )
        .await?;
    response.expect_error(422)?;
    ensure!(user.list_vms().await?.len() == 1);
    vmm_e2e::audit::audit(cluster, &[&user]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_are_refused_with_413() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    let user = cluster.user("big-sender").await.unwrap();
    // Over the 256 KiB a create may carry (64 KiB of user data and keys), and over the
    // 64 KiB any other request may.
    let token = format!("Bearer {}", user.token().unwrap());
    for (path, pad_kib) in [("/api/vms", 300), ("/api/keys", 100)] {
        let huge = format!(
            r#"{{"name":"x","cpu":1,"memory":64,"pad":"{}"}}"#,
            "a".repeat(pad_kib * 1024)
        );
        let response = vmm_e2e::Api::new(cluster.http_url())
            .send_raw(Method::POST, path, Some(&token), Some(huge.into_bytes()))
            .await
            .unwrap();
        response.expect_error(413).unwrap();
    }
    // The server may close a connection whose body it refused unread: ask on a new one.
    let fresh = vmm_e2e::Api::new(cluster.http_url()).with_token(user.token().unwrap());
    assert!(
        fresh.list_vms().await.unwrap().is_empty(),
        "nothing was created"
    );
}

/// A host whose agent stops answering (SIGSTOP) becomes unreachable and its VMs `unknown`,
/// never `stopped`; operations on them fail fast with 503 naming the host. After SIGCONT
/// the agent reconnects and its inventory puts the true states back.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_host_makes_its_vms_unknown_until_it_returns() {
    let options = ClusterOptions {
        host_dead_after_secs: Some(2),
        ..ClusterOptions::default()
    };
    let cluster = TestCluster::start(options).await.unwrap();
    let result = silent_host(&cluster).await;
    // Never leave a stopped process behind, whatever happened.
    let _ = cluster.agent("host-a").signal("CONT").await;
    result.unwrap();
}

async fn silent_host(cluster: &TestCluster) -> Result<()> {
    let user = cluster.user("patient").await?;
    let running = user.create_vm("keeps-running", 1, 64, Some(1)).await?;
    let stopped = user.create_vm("stays-stopped", 1, 64, Some(1)).await?;
    ensure!(user.action(&stopped.id, "force_stop").await?.status == "stopped");

    let agent = cluster.agent("host-a");
    agent.signal("STOP").await?;
    let silenced = Instant::now();
    wait_until(
        "both VMs to become unknown",
        Duration::from_secs(15),
        || async {
            let vms = user.list_vms().await?;
            Ok(vms.iter().all(|vm| vm.status == "unknown").then_some(()))
        },
    )
    .await?;
    eprintln!(
        "host silent → VMs unknown after {:.2}s",
        silenced.elapsed().as_secs_f64()
    );
    let hosts = cluster.admin().await?.hosts().await?;
    ensure!(hosts[0].status == "unreachable", "{hosts:?}");

    let refused = user.try_action(&running.id, "stop").await?;
    let message = refused.expect_error(503)?;
    ensure!(
        message.contains("host-a"),
        "the refusal names the host: {message}"
    );
    user.try_create_vm(&json!({"name": "nowhere", "cpu": 1, "memory": 64}))
        .await?
        .expect_error(503)?;

    agent.signal("CONT").await?;
    let resumed = Instant::now();
    wait_until(
        "the true states to come back",
        Duration::from_secs(30),
        || async {
            let a = user.get_vm(&running.id).await?;
            let b = user.get_vm(&stopped.id).await?;
            Ok((a.status == "running" && b.status == "stopped").then_some(()))
        },
    )
    .await?;
    eprintln!(
        "host back → true states after {:.2}s",
        resumed.elapsed().as_secs_f64()
    );
    ensure!(user.list_vms().await?.len() == 2, "nothing was doubled");
    vmm_e2e::audit::audit(cluster, &[&user]).await?;
    Ok(())
}
