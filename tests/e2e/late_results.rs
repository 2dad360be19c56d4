//! A host that answers after the coordinator stopped waiting (its agent frozen with SIGSTOP
//! past `OPERATION_TIMEOUT_SECS`, well within `HOST_DEAD_AFTER`). The request gets 504 with
//! the operation's ID and the promise that it may still complete; the operation stays
//! `pending` (and the VM refuses a second operation meanwhile); once the agent runs again
//! and answers, `GET /api/operations/{id}` shows the real outcome and the VM its real
//! status — for a stop, a create (whose `Idempotency-Key` then answers with the VM) and a
//! delete (whose VM is then gone and its quota released).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reqwest::Method;
use serde_json::{Value, json};
use vmm_e2e::{Api, ClusterOptions, TestCluster, wait_until};

/// How long the coordinator waits before answering 504.
const OPERATION_TIMEOUT_SECS: u64 = 2;

#[tokio::test(flavor = "multi_thread")]
async fn answers_after_the_timeout_complete_their_operations() {
    let options = ClusterOptions {
        operation_timeout_secs: Some(OPERATION_TIMEOUT_SECS),
        host_dead_after_secs: Some(60),
        ..ClusterOptions::default()
    };
    let cluster = TestCluster::start(options).await.unwrap();
    let result = late_answers(&cluster).await;
    // Never leave a stopped process behind, whatever happened.
    let _ = cluster.agent("host-a").signal("CONT").await;
    result.unwrap();
}

/// Checks that `response` is the timeout's 504, carrying the operation's ID in the
/// `Operation-Id` header and in its message; returns the ID.
fn timed_out(response: &vmm_e2e::Response) -> Result<String> {
    let message = response.expect_error(504)?;
    let operation = response
        .header("operation-id")
        .context("a 504 carries the Operation-Id header")?
        .to_owned();
    ensure!(
        message.contains("may still complete")
            && message.contains(&format!("/api/operations/{operation}")),
        "the 504 says where to look: {message}"
    );
    Ok(operation)
}

async fn operation(user: &Api, id: &str) -> Result<Value> {
    Ok(user
        .get(&format!("/api/operations/{id}"))
        .await?
        .expect_status(200)?
        .body)
}

/// Waits until the operation has succeeded; any other end fails the test at once.
async fn wait_for_success(user: &Api, id: &str) -> Result<Value> {
    wait_until(
        "the late answer to complete the operation",
        Duration::from_secs(30),
        || async {
            let op = operation(user, id).await?;
            match op["status"].as_str() {
                Some("succeeded") => Ok(Some(op)),
                Some("pending") => Ok(None),
                _ => anyhow::bail!("the operation ended otherwise: {op}"),
            }
        },
    )
    .await
}

async fn late_answers(cluster: &TestCluster) -> Result<()> {
    let user = cluster.user("patient-user").await?;
    let agent = cluster.agent("host-a");
    let vm = user.create_vm("answers-late", 1, 64, Some(1)).await?;
    ensure!(vm.status == "running", "{vm:?}");

    // ---- a stop answered late ----
    agent.signal("STOP").await?;
    let stop = timed_out(&user.try_action(&vm.id, "stop").await?)?;
    let pending = operation(&user, &stop).await?;
    ensure!(
        pending["status"] == "pending" && pending["kind"] == "stop",
        "the operation waits for its answer: {pending}"
    );
    let refused = user.try_action(&vm.id, "force_stop").await?;
    let message = refused.expect_error(409)?;
    ensure!(
        message.contains("in progress"),
        "one operation per VM, also past the timeout: {message}"
    );
    ensure!(user.get_vm(&vm.id).await?.status == "running");
    agent.signal("CONT").await?;
    let done = wait_for_success(&user, &stop).await?;
    ensure!(
        done["finished_at"].is_string() && done.get("error").is_none(),
        "{done}"
    );
    let stopped = user.get_vm(&vm.id).await?;
    ensure!(
        stopped.status == "stopped",
        "the late answer shows: {stopped:?}"
    );

    // ---- a create answered late, retried with its key ----
    agent.signal("STOP").await?;
    let body = json!({"name": "made-late", "cpu": 1, "memory": 64, "disk_gb": 1});
    let key = [("idempotency-key", "late-create-1")];
    let first = user
        .send_with_headers(Method::POST, "/api/vms", Some(&body), &key)
        .await?;
    let create = timed_out(&first)?;
    let creating: Vec<_> = user
        .list_vms()
        .await?
        .into_iter()
        .filter(|vm| vm.name == "made-late")
        .collect();
    ensure!(
        creating.len() == 1 && creating[0].status == "creating",
        "the VM is recorded while its create waits: {creating:?}"
    );
    agent.signal("CONT").await?;
    let done = wait_for_success(&user, &create).await?;
    let made = user.get_vm(&creating[0].id).await?;
    ensure!(made.status == "running", "the late create shows: {made:?}");
    ensure!(done["vm_id"] == made.id.as_str(), "{done}");
    let retry = user
        .send_with_headers(Method::POST, "/api/vms", Some(&body), &key)
        .await?
        .expect_status(201)
        .context("a retry after the 504 gets the real answer")?;
    ensure!(retry.body["id"] == made.id.as_str(), "{}", retry.body);
    let quota = user.quota().await?;
    ensure!(quota.usage.vms == 2, "{quota:?}");

    // ---- a delete answered late ----
    agent.signal("STOP").await?;
    let delete = timed_out(&user.try_delete_vm(&made.id).await?)?;
    ensure!(user.get_vm(&made.id).await?.status == "deleting");
    agent.signal("CONT").await?;
    wait_for_success(&user, &delete).await?;
    user.get(&format!("/api/vms/{}", made.id))
        .await?
        .expect_error(404)
        .context("the late delete removed the VM")?;
    let quota = user.quota().await?;
    ensure!(quota.usage.vms == 1, "and released its quota: {quota:?}");

    vmm_e2e::audit::audit(cluster, &[&user]).await?;
    Ok(())
}
