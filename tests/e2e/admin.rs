//! User administration (issue 4): only administrators list users (with their usage), change
//! roles and delete users; a user who owns VMs cannot be deleted; the last administrator
//! stays; an administrator sees and acts on every user's VMs.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use vmm_e2e::cluster::USER_PASSWORD;
use vmm_e2e::{Api, ClusterOptions, TestCluster};

#[tokio::test(flavor = "multi_thread")]
async fn admins_manage_users_and_act_on_their_vms() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    manage_users(&cluster).await.unwrap();
}

/// The entry of `GET /api/admin/users` for `username`.
async fn listed(admin: &Api, username: &str) -> Result<Option<Value>> {
    let users = admin
        .get("/api/admin/users")
        .await?
        .expect_status(200)
        .context("GET /api/admin/users as admin")?
        .body;
    let users = users
        .as_array()
        .with_context(|| format!("the user list is an array: {users}"))?;
    Ok(users
        .iter()
        .find(|user| user["username"] == username)
        .cloned())
}

async fn manage_users(cluster: &TestCluster) -> Result<()> {
    let admin = cluster.admin().await?;
    let alice = cluster.user("alice").await?;
    let bob = cluster.user("bob").await?;
    let alice_id = alice.user().id.clone();
    let bob_id = bob.user().id.clone();

    // A user calling any of these gets 403, and nothing changes.
    let forbidden = [
        alice.get("/api/admin/users").await?,
        alice
            .put(
                &format!("/api/admin/users/{bob_id}/role"),
                &json!({"role": "admin"}),
            )
            .await?,
        alice
            .put(
                &format!("/api/admin/users/{alice_id}/role"),
                &json!({"role": "admin"}),
            )
            .await?,
        alice.delete(&format!("/api/admin/users/{bob_id}")).await?,
    ];
    for response in &forbidden {
        response.expect_error(403)?;
    }
    ensure!(
        alice.get("/api/hosts").await?.status == 403,
        "still a plain user"
    );

    // The list shows every user with role and usage.
    let web = alice.create_vm("web", 1, 128, Some(2)).await?;
    let db = alice.create_vm("db", 2, 256, Some(3)).await?;
    let entry = listed(&admin, "alice").await?.context("alice is listed")?;
    ensure!(
        entry["id"] == alice_id.as_str() && entry["role"] == "user",
        "{entry}"
    );
    ensure!(
        entry["created_at"]
            .as_str()
            .is_some_and(|at| !at.is_empty()),
        "{entry}"
    );
    let usage = &entry["usage"];
    ensure!(
        usage["vms"] == 2
            && usage["cpu"] == 3
            && usage["memory"] == 384
            && usage["disk_gb"] == 5
            && usage["snapshots"] == 0,
        "alice's usage in the list: {entry}"
    );
    let entry = listed(&admin, "bob").await?.context("bob is listed")?;
    ensure!(
        entry["role"] == "user" && entry["usage"]["vms"] == 0,
        "{entry}"
    );
    let entry = listed(&admin, "admin").await?.context("admin is listed")?;
    ensure!(entry["role"] == "admin", "{entry}");

    // The admin sees and acts on alice's VMs.
    let all = admin.list_vms().await?;
    ensure!(
        all.iter().any(|vm| vm.id == web.id) && all.iter().any(|vm| vm.id == db.id),
        "the admin's list has every VM: {all:?}"
    );
    let seen = admin.get_vm(&web.id).await?;
    ensure!(seen.owner_id == alice_id, "{seen:?}");
    let stopped = admin.action(&web.id, "force_stop").await?;
    ensure!(stopped.status == "stopped", "{stopped:?}");
    ensure!(
        alice.get_vm(&web.id).await?.status == "stopped",
        "alice sees what the admin did"
    );
    admin.action(&web.id, "start").await?;
    // Another plain user still cannot see it.
    bob.get(&format!("/api/vms/{}", web.id))
        .await?
        .expect_error(404)?;

    // A user who owns VMs cannot be deleted; their VMs and login keep working.
    let refused = admin
        .delete(&format!("/api/admin/users/{alice_id}"))
        .await?;
    let message = refused.expect_error(409)?;
    eprintln!("409 message: {message}");
    ensure!(
        alice.list_vms().await?.len() == 2,
        "alice and her VMs are untouched"
    );

    // Roles: changes take effect at once, on tokens already issued.
    let changed = admin
        .put(
            &format!("/api/admin/users/{bob_id}/role"),
            &json!({"role": "admin"}),
        )
        .await?
        .expect_status(200)?
        .body;
    ensure!(
        changed["id"] == bob_id.as_str()
            && changed["username"] == "bob"
            && changed["role"] == "admin",
        "PUT role answers the user with the new role: {changed}"
    );
    ensure!(
        bob.get("/api/admin/users").await?.status == 200,
        "bob's existing token carries his new role"
    );
    ensure!(
        bob.get_vm(&web.id).await?.id == web.id,
        "as admin bob sees alice's VM"
    );
    admin
        .put(
            &format!("/api/admin/users/{bob_id}/role"),
            &json!({"role": "user"}),
        )
        .await?
        .expect_status(200)?;
    bob.get("/api/admin/users").await?.expect_error(403)?;
    admin
        .put(
            &format!("/api/admin/users/{bob_id}/role"),
            &json!({"role": "root"}),
        )
        .await?
        .expect_error(422)
        .context("an unknown role")?;
    let nobody = uuid::Uuid::new_v4();
    admin
        .put(
            &format!("/api/admin/users/{nobody}/role"),
            &json!({"role": "user"}),
        )
        .await?
        .expect_error(404)?;
    admin
        .delete(&format!("/api/admin/users/{nobody}"))
        .await?
        .expect_error(404)?;

    // The last administrator can be neither demoted nor deleted.
    let admin_id = admin.user().id.clone();
    admin
        .put(
            &format!("/api/admin/users/{admin_id}/role"),
            &json!({"role": "user"}),
        )
        .await?
        .expect_error(409)
        .context("demoting the last admin")?;
    admin
        .delete(&format!("/api/admin/users/{admin_id}"))
        .await?
        .expect_error(409)
        .context("deleting the last admin")?;

    // Once her VMs are gone (the admin deletes them), alice can be deleted: her token and
    // password stop working and she leaves the list.
    admin.delete_vm(&web.id).await?;
    admin.delete_vm(&db.id).await?;
    ensure!(alice.list_vms().await?.is_empty(), "alice has no VM left");
    admin
        .delete(&format!("/api/admin/users/{alice_id}"))
        .await?
        .expect_status(204)?;
    alice.get("/api/vms").await?.expect_error(401)?;
    cluster
        .api()
        .try_login("alice", USER_PASSWORD)
        .await?
        .expect_error(401)?;
    ensure!(
        listed(&admin, "alice").await?.is_none(),
        "alice is no longer listed"
    );
    ensure!(listed(&admin, "bob").await?.is_some(), "bob still is");
    Ok(())
}

/// More concurrent user listings than the coordinator has database connections: each must
/// still answer, promptly.
#[tokio::test(flavor = "multi_thread")]
async fn the_user_list_answers_many_concurrent_admins() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    concurrent_listings(&cluster).await.unwrap();
}

async fn concurrent_listings(cluster: &TestCluster) -> Result<()> {
    const LISTINGS: usize = 32;
    let admin = cluster.admin().await?;
    for i in 0..4 {
        cluster.user(&format!("user-{i}")).await?;
    }
    let started = std::time::Instant::now();
    let mut listings = tokio::task::JoinSet::new();
    for _ in 0..LISTINGS {
        let admin = admin.clone();
        listings.spawn(async move { admin.get("/api/admin/users").await });
    }
    let mut statuses = Vec::new();
    while let Some(joined) = listings.join_next().await {
        statuses.push(joined.context("a listing task panicked")??.status);
    }
    let failed = statuses.iter().filter(|status| **status != 200).count();
    ensure!(
        failed == 0,
        "{failed} of {LISTINGS} concurrent GET /api/admin/users failed (statuses {statuses:?}) \
         after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{LISTINGS} listings of 6 users took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Issue 13: `REGISTRATION=closed`. Registering answers 403 and creates nothing; an
/// administrator creates accounts with `POST /api/admin/users` (same rules as registration,
/// a role if wanted), users cannot, and the accounts so made log in.
#[tokio::test(flavor = "multi_thread")]
async fn closed_registration_leaves_account_creation_to_admins() {
    let options = ClusterOptions::with_agents(Vec::new()).coordinator_env("REGISTRATION", "closed");
    let cluster = TestCluster::start(options).await.unwrap();
    closed_registration(&cluster).await.unwrap();
}

async fn closed_registration(cluster: &TestCluster) -> Result<()> {
    let api = cluster.api();
    let refused = api.try_register("walk-in", USER_PASSWORD).await?;
    let message = refused.expect_error(403)?;
    ensure!(message.contains("closed"), "says why: {message}");
    api.try_login("walk-in", USER_PASSWORD)
        .await?
        .expect_error(401)
        .context("the refused registration created nothing")?;

    let admin = cluster.admin().await?;
    let created = admin
        .post(
            "/api/admin/users",
            &json!({"username": "Invited", "password": USER_PASSWORD}),
        )
        .await?
        .expect_status(201)?;
    ensure!(
        created.body["username"] == "Invited" && created.body["role"] == "user",
        "{}",
        created.body
    );
    let invited = api.login("invited", USER_PASSWORD).await?;
    ensure!(invited.user().role == "user", "{:?}", invited.user());
    let operator = admin
        .post(
            "/api/admin/users",
            &json!({"username": "operator", "password": USER_PASSWORD, "role": "admin"}),
        )
        .await?
        .expect_status(201)?;
    ensure!(operator.body["role"] == "admin", "{}", operator.body);
    api.login("operator", USER_PASSWORD).await?;

    // The rules of registration hold; a user cannot create accounts.
    for (what, body, status) in [
        (
            "a taken name",
            json!({"username": "INVITED", "password": USER_PASSWORD}),
            409,
        ),
        (
            "a short password",
            json!({"username": "shorty", "password": "short"}),
            422,
        ),
        (
            "a bad role",
            json!({"username": "roley", "password": USER_PASSWORD, "role": "root"}),
            422,
        ),
        (
            "an unknown field",
            json!({"username": "extra", "password": USER_PASSWORD, "x": 1}),
            422,
        ),
    ] {
        admin
            .post("/api/admin/users", &body)
            .await?
            .expect_error(status)
            .context(what)?;
    }
    invited
        .post(
            "/api/admin/users",
            &json!({"username": "sneaky", "password": USER_PASSWORD}),
        )
        .await?
        .expect_error(403)
        .context("a user creating an account")?;
    api.try_login("sneaky", USER_PASSWORD)
        .await?
        .expect_error(401)?;
    Ok(())
}
