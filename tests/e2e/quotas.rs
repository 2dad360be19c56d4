//! Per-user quotas (issue 4): a limit holds under 50 concurrent creates, the refusal names
//! the resource, usage always equals what exists, and only administrators change limits.
//!
//! The VMs are small (1-2 vCPUs, 64-128 MiB, 1 GB) so that the test-driver host (16 CPUs × 4
//! allocation ratio = 64 vCPUs, 3072 MiB) always has room for what a quota admits: every
//! refusal here is the quota's, never the scheduler's (a 503 fails the test).

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use vmm_e2e::api::{QuotaLimits, QuotaUsage};
use vmm_e2e::{Api, ClusterOptions, TestCluster};

/// How many creates race against a limit that admits ten.
const RACERS: usize = 50;
const ADMITTED: usize = 10;

/// The size of each racing VM and what the limit is about.
struct Race {
    resource: &'static str,
    cpu: u64,
    memory: u64,
    /// The one limit that admits exactly [`ADMITTED`] such VMs.
    limit: u64,
    /// What one VM claims of `resource`.
    requested: u64,
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_creates_admit_exactly_the_vm_limit() {
    // The limit comes from the configured default this time (DEFAULT_QUOTA_*); vCPUs are
    // raised so that the VM count is the only limit that binds.
    let options = ClusterOptions::default()
        .coordinator_env("DEFAULT_QUOTA_VMS", "10")
        .coordinator_env("DEFAULT_QUOTA_CPU", "100");
    let cluster = TestCluster::start(options).await.unwrap();
    let race = Race {
        resource: "vms",
        cpu: 1,
        memory: 64,
        limit: 10,
        requested: 1,
    };
    let user = cluster.user("racer").await.unwrap();
    run_race(&cluster, &user, &race).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_creates_admit_exactly_the_vcpu_limit() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    let race = Race {
        resource: "cpu",
        cpu: 2,
        memory: 64,
        limit: 20,
        requested: 2,
    };
    let user = cluster.user("cpu-racer").await.unwrap();
    let admin = cluster.admin().await.unwrap();
    admin
        .set_quota(&user.user().id, &json!({"max_vms": 100, "max_cpu": 20}))
        .await
        .unwrap();
    run_race(&cluster, &user, &race).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_creates_admit_exactly_the_memory_limit() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    let race = Race {
        resource: "memory",
        cpu: 1,
        memory: 128,
        limit: 1280,
        requested: 128,
    };
    let user = cluster.user("memory-racer").await.unwrap();
    let admin = cluster.admin().await.unwrap();
    admin
        .set_quota(
            &user.user().id,
            &json!({"max_vms": 100, "max_cpu": 100, "max_memory": 1280}),
        )
        .await
        .unwrap();
    run_race(&cluster, &user, &race).await.unwrap();
}

async fn run_race(cluster: &TestCluster, user: &Api, race: &Race) -> Result<()> {
    let mut creates = JoinSet::new();
    for i in 0..RACERS {
        let user = user.clone();
        let body = json!({
            "name": format!("race-{i}"),
            "cpu": race.cpu,
            "memory": race.memory,
            "disk_gb": 1,
        });
        creates.spawn(async move { user.try_create_vm(&body).await });
    }
    let mut created = Vec::new();
    let mut refused = Vec::new();
    while let Some(joined) = creates.join_next().await {
        let response = joined.context("a create task panicked")??;
        match response.status {
            201 => created.push(response.json::<vmm_e2e::Vm>()?),
            400 => refused.push(response.body),
            other => anyhow::bail!(
                "every create is either admitted (201) or refused by the quota (400); \
                 got {other}: {}",
                response.body
            ),
        }
    }
    ensure!(
        created.len() == ADMITTED && refused.len() == RACERS - ADMITTED,
        "a {} limit of {} admits exactly {ADMITTED} of {RACERS} concurrent creates; \
         admitted {}, refused {}",
        race.resource,
        race.limit,
        created.len(),
        refused.len()
    );
    for vm in &created {
        ensure!(vm.status == "running", "an admitted VM runs: {vm:?}");
    }
    // A refusal happens only when usage + request > limit; with equal-sized VMs that means
    // usage is at the limit, so every refusal carries the same figures.
    for body in &refused {
        check_quota_error(body, race.resource, race.limit, race.limit, race.requested)?;
    }

    let expected = QuotaUsage {
        vms: ADMITTED as u64,
        cpu: ADMITTED as u64 * race.cpu,
        memory: ADMITTED as u64 * race.memory,
        disk_gb: ADMITTED as u64,
        snapshots: 0,
    };
    let quota = user.quota().await?;
    ensure!(
        quota.usage == expected,
        "usage counts exactly the admitted VMs: {quota:?}, expected {expected:?}"
    );
    ensure!(
        user.list_vms().await?.len() == ADMITTED,
        "the refused creates recorded nothing"
    );
    let admin = cluster.admin().await?;
    let seen_by_admin = admin.quota_of(&user.user().id).await?;
    ensure!(
        seen_by_admin == quota,
        "the admin's view {seen_by_admin:?} equals the user's {quota:?}"
    );

    // Deleting releases every claim: usage is 0 and the limit admits again.
    let mut deletes = JoinSet::new();
    for vm in created {
        let user = user.clone();
        deletes.spawn(async move { user.delete_vm(&vm.id).await });
    }
    while let Some(joined) = deletes.join_next().await {
        joined.context("a delete task panicked")??;
    }
    let quota = user.quota().await?;
    ensure!(
        quota.usage == QuotaUsage::default(),
        "after deleting every VM usage is 0: {quota:?}"
    );
    ensure!(user.list_vms().await?.is_empty(), "no VM is left");
    let again = user
        .create_vm("after-release", race.cpu as u32, race.memory, Some(1))
        .await?;
    user.delete_vm(&again.id).await?;
    Ok(())
}

/// Checks the documented quota error body, exactly:
/// `{"code":400,"message":"…","resource","current","limit","requested"}`.
fn check_quota_error(
    body: &Value,
    resource: &str,
    current: u64,
    limit: u64,
    requested: u64,
) -> Result<()> {
    let object = body
        .as_object()
        .with_context(|| format!("a quota error is a JSON object, got {body}"))?;
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    ensure!(
        keys == [
            "code",
            "current",
            "limit",
            "message",
            "requested",
            "resource"
        ],
        "a quota error has exactly code, message, resource, current, limit, requested: {body}"
    );
    ensure!(body["code"] == 400, "code 400: {body}");
    ensure!(
        body["message"]
            .as_str()
            .is_some_and(|message| !message.trim().is_empty()),
        "a message: {body}"
    );
    let expected = json!({
        "resource": resource,
        "current": current,
        "limit": limit,
        "requested": requested,
    });
    for key in ["resource", "current", "limit", "requested"] {
        ensure!(
            body[key] == expected[key],
            "{key} must be {}, got {body}",
            expected[key]
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_errors_and_only_admins_change_limits() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    quota_rules(&cluster).await.unwrap();
}

async fn quota_rules(cluster: &TestCluster) -> Result<()> {
    let admin = cluster.admin().await?;
    let alice = cluster.user("alice").await?;
    let bob = cluster.user("bob").await?;
    let alice_id = alice.user().id.clone();
    let bob_id = bob.user().id.clone();

    // The documented defaults, and nothing used yet.
    let quota = alice.quota().await?;
    let defaults = QuotaLimits {
        max_vms: 10,
        max_cpu: 8,
        max_memory: 16384,
        max_disk_gb: 200,
        max_snapshots: 20,
    };
    ensure!(
        quota.quota == defaults,
        "a new user has the default quota: {quota:?}"
    );
    ensure!(quota.usage == QuotaUsage::default(), "{quota:?}");

    // The example of the issue: 6 of 8 vCPUs used, 4 more asked for.
    let six = alice.create_vm("six", 6, 128, Some(1)).await?;
    let refused = alice
        .try_create_vm(&json!({"name": "four", "cpu": 4, "memory": 128, "disk_gb": 1}))
        .await?;
    ensure!(refused.status == 400, "over quota is 400: {}", refused.body);
    check_quota_error(&refused.body, "cpu", 6, 8, 4)?;
    ensure!(
        alice.list_vms().await?.len() == 1,
        "the refused VM was not created"
    );
    // Each resource is named: disk over the 200-GB default on a user with nothing.
    let refused = bob
        .try_create_vm(&json!({"name": "huge-disk", "cpu": 1, "memory": 64, "disk_gb": 201}))
        .await?;
    check_quota_error(&refused.body, "disk_gb", 0, 200, 201)?;

    // A user cannot change any quota, their own included, nor read another's.
    for (whose, id) in [("their own", &alice_id), ("another user's", &bob_id)] {
        let response = alice
            .put(&format!("/api/quota/{id}"), &json!({"max_cpu": 64}))
            .await?;
        response
            .expect_error(403)
            .with_context(|| format!("a user changing {whose} quota"))?;
        let response = alice.get(&format!("/api/quota/{id}")).await?;
        response
            .expect_error(403)
            .with_context(|| format!("a user reading {whose} quota by ID"))?;
    }
    ensure!(
        alice.quota().await?.quota == defaults,
        "the refused changes changed nothing"
    );

    // An admin changes any subset; the rest keeps its value.
    let limits = admin.set_quota(&alice_id, &json!({"max_cpu": 12})).await?;
    ensure!(
        limits
            == QuotaLimits {
                max_cpu: 12,
                ..defaults
            },
        "PUT answers the new limits: {limits:?}"
    );
    ensure!(alice.quota().await?.quota == limits, "and they hold");
    let limits = admin
        .set_quota(&alice_id, &json!({"max_memory": 4096, "max_snapshots": 3}))
        .await?;
    ensure!(
        limits
            == QuotaLimits {
                max_cpu: 12,
                max_memory: 4096,
                max_snapshots: 3,
                ..defaults
            },
        "a second PUT merges with the first: {limits:?}"
    );
    let four = alice.create_vm("four", 4, 128, Some(1)).await?;
    ensure!(
        bob.quota().await?.quota == defaults,
        "bob's quota is untouched"
    );
    // Admin-only reads, and what an admin cannot do either.
    let seen = admin.quota_of(&alice_id).await?;
    ensure!(
        seen == alice.quota().await?,
        "the admin sees alice's quota and usage"
    );
    admin
        .put(&format!("/api/quota/{alice_id}"), &json!({}))
        .await?
        .expect_error(422)
        .context("a PUT without any limit")?;
    admin
        .put(&format!("/api/quota/{alice_id}"), &json!({"max_cpu": -1}))
        .await?
        .expect_error(422)
        .context("a negative limit")?;
    admin
        .put(
            &format!("/api/quota/{alice_id}"),
            &json!({"max_cores": 1000}),
        )
        .await?
        .expect_error(422)
        .context("an unknown field")?;
    let nobody = uuid::Uuid::new_v4();
    admin
        .put(&format!("/api/quota/{nobody}"), &json!({"max_cpu": 1}))
        .await?
        .expect_error(404)
        .context("the quota of a user that does not exist")?;

    // Lowering a limit below usage is allowed: what exists stays and works, only new
    // claims are refused.
    admin
        .set_quota(&alice_id, &json!({"max_vms": 1, "max_cpu": 4}))
        .await?;
    let quota = alice.quota().await?;
    ensure!(
        quota.usage.vms == 2 && quota.usage.cpu == 10 && quota.quota.max_cpu == 4,
        "usage above the lowered limits is shown as it is: {quota:?}"
    );
    let refused = alice
        .try_create_vm(&json!({"name": "one-more", "cpu": 1, "memory": 64, "disk_gb": 1}))
        .await?;
    check_quota_error(&refused.body, "vms", 2, 1, 1)?;
    let stopped = alice.action(&four.id, "force_stop").await?;
    ensure!(stopped.status == "stopped", "{stopped:?}");
    let started = alice.action(&four.id, "start").await?;
    ensure!(
        started.status == "running",
        "an existing VM still starts above the lowered limit: {started:?}"
    );
    alice.delete_vm(&six.id).await?;
    let refused = alice
        .try_create_vm(&json!({"name": "one-more", "cpu": 1, "memory": 64, "disk_gb": 1}))
        .await?;
    check_quota_error(&refused.body, "vms", 1, 1, 1)?;
    admin.set_quota(&alice_id, &json!({"max_vms": 10})).await?;
    let refused = alice
        .try_create_vm(&json!({"name": "one-more", "cpu": 1, "memory": 64, "disk_gb": 1}))
        .await?;
    check_quota_error(&refused.body, "cpu", 4, 4, 1)?;
    admin.set_quota(&alice_id, &json!({"max_cpu": 5})).await?;
    alice.create_vm("one-more", 1, 64, Some(1)).await?;
    let quota = alice.quota().await?;
    ensure!(
        quota.usage
            == QuotaUsage {
                vms: 2,
                cpu: 5,
                memory: 192,
                disk_gb: 2,
                snapshots: 0,
            },
        "usage follows what exists: {quota:?}"
    );
    Ok(())
}
