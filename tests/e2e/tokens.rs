//! API tokens (issue 17): a token of `read` scope reads and is refused every change (403),
//! an expired or revoked token is refused at its next request (401), the database holds the
//! token's SHA-256 and never the token, users never see or revoke each other's tokens (404)
//! while administrators may, and a token spends its owner's rate-limit budget.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use vmm_e2e::{Api, ClusterOptions, TestCluster};

/// A real public key (ssh-keygen, ed25519), for requests that change something cheaply.
const PUBLIC_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEL4ExQvr2yenWuWW1VazBlavzBomFuxLpKf4pi0TYdv test@vmm";

/// Creates a token and returns (its ID, the token).
pub(crate) async fn create_token(api: &Api, body: Value) -> Result<(String, String)> {
    let response = api.post("/api/tokens", &body).await?.expect_status(201)?;
    let id = response.body["id"].as_str().context("id")?.to_owned();
    let token = response.body["token"].as_str().context("token")?.to_owned();
    Ok((id, token))
}

#[tokio::test(flavor = "multi_thread")]
async fn token_scopes_expiry_revocation_and_hashing_at_rest() {
    let cluster = TestCluster::start(ClusterOptions::with_agents(Vec::new()))
        .await
        .unwrap();
    scopes_expiry_revocation(&cluster).await.unwrap();
}

async fn scopes_expiry_revocation(cluster: &TestCluster) -> Result<()> {
    let alice = cluster.user("alice").await?;
    let (read_id, read_token) =
        create_token(&alice, json!({"name": "ci-read", "scope": "read"})).await?;
    ensure!(
        read_token.starts_with("vmm_pat_") && read_token.len() >= "vmm_pat_".len() + 43,
        "a token is vmm_pat_ and at least 32 random bytes: {read_token}"
    );
    let (write_id, write_token) =
        create_token(&alice, json!({"name": "ci-write", "scope": "write"})).await?;
    let reader = cluster.api().with_token(&read_token);
    let writer = cluster.api().with_token(&write_token);

    // Read scope: GET works, acting as alice; every change is 403.
    reader.get("/api/vms").await?.expect_status(200)?;
    let listed = reader.get("/api/tokens").await?.expect_status(200)?;
    let mut names: Vec<&str> = listed
        .body
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|token| token["name"].as_str())
        .collect();
    names.sort_unstable();
    ensure!(
        names == ["ci-read", "ci-write"],
        "alice's tokens: {names:?}"
    );
    ensure!(
        !listed.body.to_string().contains(&read_token[8..]),
        "a list never shows a token: {}",
        listed.body
    );
    for (method, path, body) in [
        (
            Method::POST,
            "/api/keys",
            Some(json!({"name": "laptop", "public_key": PUBLIC_KEY})),
        ),
        (
            Method::POST,
            "/api/vms",
            Some(json!({"name": "vm", "cpu": 1, "memory": 128})),
        ),
        (Method::DELETE, &*format!("/api/tokens/{write_id}"), None),
        (
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "more", "scope": "write"})),
        ),
    ] {
        let message = reader
            .send(method.clone(), path, body.as_ref())
            .await?
            .expect_error(403)
            .with_context(|| format!("a read token must not {method} {path}"))?;
        ensure!(message.contains("read scope"), "{message}");
    }

    // Write scope: changes work, as alice; creating tokens takes a password login.
    writer
        .post(
            "/api/keys",
            &json!({"name": "laptop", "public_key": PUBLIC_KEY}),
        )
        .await?
        .expect_status(201)?;
    let keys = alice.get("/api/keys").await?.expect_status(200)?;
    ensure!(
        keys.body[0]["name"] == "laptop",
        "alice's key: {}",
        keys.body
    );
    let message = writer
        .post("/api/tokens", &json!({"name": "child", "scope": "write"}))
        .await?
        .expect_error(403)?;
    ensure!(message.contains("password login"), "{message}");

    // Bad requests: 422 naming the problem.
    for (body, says) in [
        (json!({"name": "x", "scope": "admin"}), "scope"),
        (
            json!({"name": "x", "scope": "read", "expires_in": 0}),
            "expires_in",
        ),
        (json!({"name": "no spaces", "scope": "read"}), "name"),
        (json!({"name": "ci-read", "scope": "read"}), "already"),
    ] {
        let response = alice.post("/api/tokens", &body).await?;
        let message = response
            .expect_error_in(&[409, 422])
            .with_context(|| format!("{body}"))?;
        ensure!(message.contains(says), "{body}: {message}");
    }

    // Expiry: a token of 2 s works, then is refused saying why.
    let (_, short_token) = create_token(
        &alice,
        json!({"name": "short", "scope": "read", "expires_in": 2}),
    )
    .await?;
    let short = cluster.api().with_token(&short_token);
    short.get("/api/vms").await?.expect_status(200)?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let message = short.get("/api/vms").await?.expect_error(401)?;
    ensure!(message.contains("expired"), "{message}");

    // Revocation: the next request is refused.
    alice
        .delete(&format!("/api/tokens/{read_id}"))
        .await?
        .expect_status(204)?;
    let message = reader.get("/api/vms").await?.expect_error(401)?;
    ensure!(message.contains("revoked"), "{message}");
    writer.get("/api/vms").await?.expect_status(200)?;

    // At rest: the database files hold each token's SHA-256, never the token.
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(cluster.coordinator_data_dir())? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("coordinator.db") {
            stored.extend(std::fs::read(&path)?);
        }
    }
    ensure!(!stored.is_empty(), "the SQLite files exist");
    let contains = |needle: &[u8]| stored.windows(needle.len()).any(|window| window == needle);
    for token in [&read_token, &write_token, &short_token] {
        ensure!(
            !contains(&token.as_bytes()[8..]),
            "the database must not hold the token {token}"
        );
        ensure!(
            !cluster.coordinator_log().contains(&token[8..]),
            "the log must not hold the token {token}"
        );
    }
    let write_hash: String = Sha256::digest(write_token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    ensure!(
        contains(write_hash.as_bytes()),
        "the database holds the token's SHA-256"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_private_to_their_owner_but_not_to_admins() {
    let cluster = TestCluster::start(ClusterOptions::with_agents(Vec::new()))
        .await
        .unwrap();
    isolation(&cluster).await.unwrap();
}

async fn isolation(cluster: &TestCluster) -> Result<()> {
    let alice = cluster.user("alice").await?;
    let bob = cluster.user("bob").await?;
    let admin = cluster.admin().await?;
    let (alice_id, alice_token) =
        create_token(&alice, json!({"name": "ci", "scope": "write"})).await?;
    let (bob_id, _) = create_token(&bob, json!({"name": "ci", "scope": "write"})).await?;

    // Bob sees only his own and cannot touch alice's: 404, as for no token at all.
    let listed = bob.get("/api/tokens").await?.expect_status(200)?;
    let ids: Vec<&str> = listed
        .body
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|token| token["id"].as_str())
        .collect();
    ensure!(ids == [bob_id.as_str()], "bob's list: {}", listed.body);
    for query in [
        "?user=alice",
        "?all=true",
        &format!("?user={}", alice.user().id),
    ] {
        bob.get(&format!("/api/tokens{query}"))
            .await?
            .expect_error(403)
            .with_context(|| format!("bob lists {query}"))?;
    }
    for id in [alice_id.clone(), uuid::Uuid::new_v4().to_string()] {
        bob.delete(&format!("/api/tokens/{id}"))
            .await?
            .expect_error(404)
            .context("another's token is as absent as a missing one")?;
    }
    cluster
        .api()
        .with_token(&alice_token)
        .get("/api/vms")
        .await?
        .expect_status(200)
        .context("alice's token survives bob's attempt")?;

    // The admin lists anyone's and revokes alice's.
    let all = admin
        .get("/api/tokens?all=true")
        .await?
        .expect_status(200)?;
    ensure!(
        all.body.as_array().map(Vec::len) == Some(2),
        "every token: {}",
        all.body
    );
    let of_alice = admin
        .get("/api/tokens?user=alice")
        .await?
        .expect_status(200)?;
    ensure!(
        of_alice.body[0]["id"] == alice_id.as_str() && of_alice.body[0]["owner"] == "alice",
        "alice's tokens, as the admin sees them: {}",
        of_alice.body
    );
    admin
        .get("/api/tokens?user=nobody-here")
        .await?
        .expect_error(404)?;
    admin
        .delete(&format!("/api/tokens/{alice_id}"))
        .await?
        .expect_status(204)?;
    cluster
        .api()
        .with_token(&alice_token)
        .get("/api/vms")
        .await?
        .expect_error(401)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_spends_its_owners_rate_limit_budget() {
    let cluster = TestCluster::start(
        crate::rate_limit::limited().coordinator_env("TRUSTED_PROXIES", "127.0.0.1/32"),
    )
    .await
    .unwrap();
    rate_limited(&cluster).await.unwrap();
}

async fn rate_limited(cluster: &TestCluster) -> Result<()> {
    use crate::rate_limit::{BURST, allowance, send_until_refused};
    let api = cluster.api();
    let setup = [("x-forwarded-for", "192.0.2.211")];
    let body = json!({"username": "alice", "password": vmm_e2e::cluster::USER_PASSWORD});
    api.send_with_headers(Method::POST, "/api/auth/register", Some(&body), &setup)
        .await?
        .expect_status(201)?;
    let login = api
        .send_with_headers(Method::POST, "/api/auth/login", Some(&body), &setup)
        .await?
        .expect_status(200)?;
    let alice = api.with_token(login.body["token"].as_str().context("token")?);
    let created = alice
        .send_with_headers(
            Method::POST,
            "/api/tokens",
            Some(&json!({"name": "ci", "scope": "read"})),
            &[("x-forwarded-for", "192.0.2.212")],
        )
        .await?
        .expect_status(201)?;
    let token_client = api.with_token(created.body["token"].as_str().context("token")?);
    // Let the user's budget refill from the two requests above.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Her login token and her API token, from two addresses with budgets of their own:
    // together they get one budget, hers.
    let spent = send_until_refused(|i| {
        let client = if i % 2 == 0 {
            alice.clone()
        } else {
            token_client.clone()
        };
        let address = ["198.51.100.41", "198.51.100.42"][i % 2];
        async move {
            client
                .send_with_headers(
                    Method::GET,
                    "/api/vms",
                    None,
                    &[("x-forwarded-for", address)],
                )
                .await
        }
    })
    .await?;
    ensure!(
        spent.passed >= BURST && spent.passed <= allowance(BURST, spent.elapsed),
        "one budget for alice's tokens: {} passed in {:.2}s",
        spent.passed,
        spent.elapsed.as_secs_f64()
    );
    let message = spent.refused.expect_error(429)?;
    ensure!(message.contains("account"), "{message}");
    Ok(())
}
