//! Rate limiting (issues 4 and 13), with small budgets: 429 with `Retry-After` once a budget
//! is spent, `X-Forwarded-For` believed only from a trusted proxy, a per-user budget that no
//! change of address escapes, a login budget per client that refuses even the right
//! password, and failed logins that slow the guessers of a username without locking its
//! owner out.
//!
//! The general budget refills at 1 request per second, so a test cannot assume that no token
//! came back while it ran: from a full bucket of `burst`, at most `burst + ⌊elapsed × rps⌋`
//! requests can pass in `elapsed`, and the checks allow exactly that much. Without the limit
//! (or with a spoofable one) far more would pass. The login budget refills per minute, which
//! no test here lasts, so its counts are exact.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use reqwest::Method;
use serde_json::json;
use vmm_e2e::prometheus::Exposition;
use vmm_e2e::{Api, ClusterOptions, Response, TestCluster};

const RPS: u32 = 1;
pub(crate) const BURST: usize = 5;
const LOGIN_BURST: usize = 3;
/// A loop that sends until it is refused stops after this many requests.
const MAX_REQUESTS: usize = 40;

/// Rate limiting on, with a general budget of [`BURST`] at [`RPS`] per second.
pub(crate) fn limited() -> ClusterOptions {
    let mut options = ClusterOptions::default()
        .coordinator_env("RATE_LIMIT_RPS", &RPS.to_string())
        .coordinator_env("RATE_LIMIT_BURST", &BURST.to_string());
    options.rate_limit = true;
    options
}

/// Rate limiting on, with a generous general budget and a login budget of [`LOGIN_BURST`]
/// per minute.
fn login_limited() -> ClusterOptions {
    let mut options = ClusterOptions::default()
        .coordinator_env("RATE_LIMIT_RPS", "100")
        .coordinator_env("RATE_LIMIT_BURST", "100")
        .coordinator_env("LOGIN_RATE_LIMIT_PER_MINUTE", "1")
        .coordinator_env("LOGIN_RATE_LIMIT_BURST", &LOGIN_BURST.to_string());
    options.rate_limit = true;
    options
}

/// The most requests a full bucket lets through in `elapsed`.
pub(crate) fn allowance(burst: usize, elapsed: Duration) -> usize {
    burst + (elapsed.as_secs_f64() * f64::from(RPS)).floor() as usize
}

/// What a run of requests got until the first 429.
pub(crate) struct Spent {
    pub(crate) passed: usize,
    pub(crate) refused: Response,
    pub(crate) elapsed: Duration,
}

/// Calls `send(i)` for i = 0, 1, … until an answer is 429 (at most [`MAX_REQUESTS`]).
pub(crate) async fn send_until_refused<F, Fut>(mut send: F) -> Result<Spent>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<Response>>,
{
    let started = Instant::now();
    for i in 0..MAX_REQUESTS {
        let response = send(i).await?;
        if response.status == 429 {
            return Ok(Spent {
                passed: i,
                refused: response,
                elapsed: started.elapsed(),
            });
        }
    }
    bail!(
        "{MAX_REQUESTS} requests in {:.1}s and none was refused with 429",
        started.elapsed().as_secs_f64()
    )
}

/// Checks a 429: the JSON error body and a `Retry-After` of 1 to `max_secs` seconds, which
/// it returns.
fn check_429(response: &Response, max_secs: u64) -> Result<u64> {
    response.expect_error(429)?;
    let retry_after = response
        .header("retry-after")
        .with_context(|| format!("a 429 carries Retry-After; headers: {:?}", response.headers))?;
    let secs: u64 = retry_after
        .parse()
        .with_context(|| format!("Retry-After is whole seconds, got {retry_after:?}"))?;
    ensure!(
        (1..=max_secs).contains(&secs),
        "Retry-After {secs} is between 1 and {max_secs} s"
    );
    Ok(secs)
}

/// An unauthenticated request that the limiter counts (it answers 401 when allowed).
async fn probe(api: &Api, headers: &[(&str, &str)]) -> Result<Response> {
    let response = api
        .send_with_headers(Method::GET, "/api/vms", None, headers)
        .await?;
    ensure!(
        matches!(response.status, 401 | 429),
        "an unauthenticated GET /api/vms answers 401, or 429 when limited; got {} {}",
        response.status,
        response.body
    );
    Ok(response)
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_burst_answers_429_with_retry_after_and_spoofing_gains_nothing() {
    let cluster = TestCluster::start(limited()).await.unwrap();
    burst_and_spoofing(&cluster).await.unwrap();
}

async fn burst_and_spoofing(cluster: &TestCluster) -> Result<()> {
    let api = cluster.api();
    let spent = send_until_refused(|_| probe(&api, &[])).await?;
    ensure!(
        spent.passed >= BURST && spent.passed <= allowance(BURST, spent.elapsed),
        "a full budget of {BURST} lets {BURST} requests through, plus {RPS}/s; {} passed in {:.2}s",
        spent.passed,
        spent.elapsed.as_secs_f64()
    );
    let retry_after = check_429(&spent.refused, 1)?;

    // The test's address is not a trusted proxy: a forged X-Forwarded-For or X-Real-IP,
    // a new one each time, buys no new budget.
    let started = Instant::now();
    let mut passed = 0;
    for i in 0..BURST {
        let forged = format!("203.0.113.{}", i + 1);
        let header = if i % 2 == 0 {
            "x-forwarded-for"
        } else {
            "x-real-ip"
        };
        if probe(&api, &[(header, &forged)]).await?.status != 429 {
            passed += 1;
        }
    }
    ensure!(
        passed <= allowance(0, started.elapsed()) + 1,
        "forged forwarding headers must not buy budget: {passed} of {BURST} forged requests \
         passed in {:.2}s",
        started.elapsed().as_secs_f64()
    );

    // Probes and scrapes are never limited.
    cluster
        .api()
        .health()
        .await
        .context("health while limited")?;
    let metrics = Exposition::parse(&cluster.api().get_text("/api/metrics").await?)?;
    ensure!(
        metrics.sum("rate_limited_requests_total", &[("endpoint", "/api/vms")]) >= 1.0,
        "refusals are counted in rate_limited_requests_total{{endpoint=\"/api/vms\"}}: {:?}",
        metrics
            .find("rate_limited_requests_total", &[])
            .collect::<Vec<_>>()
    );

    // It is a rate, not a ban: after Retry-After the client is served again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let response = probe(&api, &[]).await?;
    ensure!(
        response.status == 401,
        "after waiting Retry-After ({retry_after} s) the request is served: {} {}",
        response.status,
        response.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_each_forwarded_address_has_its_own_budget() {
    let cluster = TestCluster::start(limited().coordinator_env("TRUSTED_PROXIES", "127.0.0.1/32"))
        .await
        .unwrap();
    trusted_proxy(&cluster).await.unwrap();
}

async fn trusted_proxy(cluster: &TestCluster) -> Result<()> {
    let api = cluster.api();
    let first = [("x-forwarded-for", "198.51.100.7")];
    let spent = send_until_refused(|_| probe(&api, &first)).await?;
    ensure!(
        spent.passed >= BURST && spent.passed <= allowance(BURST, spent.elapsed),
        "198.51.100.7 has a budget of {BURST}: {} passed in {:.2}s",
        spent.passed,
        spent.elapsed.as_secs_f64()
    );
    check_429(&spent.refused, 1)?;

    // Another forwarded address has a full budget of its own: its first BURST pass …
    let second = [("x-forwarded-for", "198.51.100.8")];
    for i in 0..BURST {
        let response = probe(&api, &second).await?;
        ensure!(
            response.status == 401,
            "request {} from a second forwarded address is within its own budget: {}",
            i + 1,
            response.body
        );
    }
    // … and the proxy's own requests (no forwarded address) count for the proxy.
    let response = probe(&api, &[]).await?;
    ensure!(
        response.status == 401,
        "the proxy itself was never limited: {}",
        response.body
    );

    // The client is the right-most address that is not a trusted proxy: what a client puts
    // before it is not believed.
    let chained = [("x-forwarded-for", "192.0.2.99, 198.51.100.7")];
    let started = Instant::now();
    let mut passed = 0;
    for _ in 0..BURST {
        if probe(&api, &chained).await?.status != 429 {
            passed += 1;
        }
    }
    ensure!(
        passed <= allowance(0, started.elapsed()) + 1,
        "a request forwarded for 198.51.100.7 counts for 198.51.100.7 whatever the client \
         claimed before it: {passed} of {BURST} passed"
    );
    Ok(())
}

/// Issue 13: behind a trusted proxy, one unparsable entry a client put in X-Forwarded-For
/// used to throw the header away, and the limiter then believed the X-Real-IP the client
/// sent: a fresh budget for every request.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_spoofed_forwarding_entries_buy_no_fresh_budget() {
    let cluster = TestCluster::start(limited().coordinator_env("TRUSTED_PROXIES", "127.0.0.1/32"))
        .await
        .unwrap();
    garbage_forwarding(&cluster).await.unwrap();
}

async fn garbage_forwarding(cluster: &TestCluster) -> Result<()> {
    let api = cluster.api();
    // What the proxy forwards: the client's own entries (garbage, spoofed addresses), then
    // the address the proxy saw, 198.51.100.50. The client also sends its own X-Real-IP and
    // Forwarded, new each time.
    let spent = send_until_refused(|i| {
        let api = api.clone();
        async move {
            let garbage = ["not-an-ip", "<script>", "", "1.2.3.4:99999", "unknown"][i % 5];
            let forwarded_for = format!("{garbage}, 203.0.113.{i}, 198.51.100.50");
            let real_ip = format!("192.0.2.{i}");
            let rfc_forwarded = format!("for=192.0.2.{}", i + 100);
            probe(
                &api,
                &[
                    ("x-forwarded-for", &forwarded_for),
                    ("x-real-ip", &real_ip),
                    ("forwarded", &rfc_forwarded),
                ],
            )
            .await
        }
    })
    .await?;
    ensure!(
        spent.passed >= BURST && spent.passed <= allowance(BURST, spent.elapsed),
        "every request counts for 198.51.100.50, whatever came before it: {} passed in {:.2}s",
        spent.passed,
        spent.elapsed.as_secs_f64()
    );
    check_429(&spent.refused, 1)?;
    // The client's address is not refused because of garbage the proxy forwarded for
    // another one: a different client still has its budget.
    let other = probe(&api, &[("x-forwarded-for", "garbage, 198.51.100.51")]).await?;
    ensure!(
        other.status == 401,
        "198.51.100.51 has its own budget: {} {}",
        other.status,
        other.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_users_budget_is_shared_across_addresses() {
    let cluster = TestCluster::start(limited().coordinator_env("TRUSTED_PROXIES", "127.0.0.1/32"))
        .await
        .unwrap();
    per_user(&cluster).await.unwrap();
}

async fn per_user(cluster: &TestCluster) -> Result<()> {
    // Register and log in through other forwarded addresses, so that the addresses used
    // below start with full budgets.
    let api = cluster.api();
    for (name, address) in [("alice", "192.0.2.201"), ("bob", "192.0.2.202")] {
        let forwarded = [("x-forwarded-for", address)];
        let body = json!({"username": name, "password": vmm_e2e::cluster::USER_PASSWORD});
        api.send_with_headers(Method::POST, "/api/auth/register", Some(&body), &forwarded)
            .await?
            .expect_status(201)?;
    }
    let login = |name: &'static str, address: &'static str| {
        let api = api.clone();
        async move {
            let body = json!({"username": name, "password": vmm_e2e::cluster::USER_PASSWORD});
            let response = api
                .send_with_headers(
                    Method::POST,
                    "/api/auth/login",
                    Some(&body),
                    &[("x-forwarded-for", address)],
                )
                .await?
                .expect_status(200)?;
            let token = response.body["token"]
                .as_str()
                .context("login answers a token")?
                .to_owned();
            anyhow::Ok(api.with_token(&token))
        }
    };
    let alice = login("alice", "192.0.2.201").await?;
    let bob = login("bob", "192.0.2.202").await?;

    // Alice alternates between two addresses, each with a budget of BURST: together they
    // would allow 2 × BURST, but her own budget is BURST.
    let addresses = ["198.51.100.21", "198.51.100.22"];
    let spent = send_until_refused(|i| {
        let alice = alice.clone();
        let address = addresses[i % 2];
        async move {
            alice
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
        "alice's own budget is {BURST} however many addresses she uses: {} passed in {:.2}s",
        spent.passed,
        spent.elapsed.as_secs_f64()
    );
    check_429(&spent.refused, 1)?;

    // A fresh address does not help her …
    let started = Instant::now();
    let mut passed = 0;
    for i in 0..BURST {
        let fresh = format!("198.51.100.{}", 100 + i);
        let response = alice
            .send_with_headers(
                Method::GET,
                "/api/vms",
                None,
                &[("x-forwarded-for", &fresh)],
            )
            .await?;
        if response.status != 429 {
            passed += 1;
        }
    }
    ensure!(
        passed <= allowance(0, started.elapsed()) + 1,
        "new addresses do not refill alice's budget: {passed} of {BURST} passed"
    );
    // … and her budget is hers alone: bob, behind the same address, is served.
    let response = bob
        .send_with_headers(
            Method::GET,
            "/api/vms",
            None,
            &[("x-forwarded-for", addresses[0])],
        )
        .await?;
    ensure!(
        response.status == 200,
        "bob has his own budget, and the address still has room: {} {}",
        response.status,
        response.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn login_budget_refuses_even_the_right_password() {
    let cluster = TestCluster::start(login_limited()).await.unwrap();
    login_from_one_address(&cluster).await.unwrap();
}

async fn login_from_one_address(cluster: &TestCluster) -> Result<()> {
    let api = cluster.api();
    // Registering spends the address's login budget too.
    api.register("victim", vmm_e2e::cluster::USER_PASSWORD)
        .await?;
    for attempt in 1..LOGIN_BURST {
        api.try_login("victim", "wrong-password-123")
            .await?
            .expect_error(401)
            .with_context(|| format!("guess {attempt} is within the budget"))?;
    }
    let response = api
        .try_login("victim", vmm_e2e::cluster::USER_PASSWORD)
        .await?;
    check_429(&response, 60).context("the right password after the budget is spent")?;
    // Forged forwarding headers from an untrusted client change nothing.
    for forged in ["203.0.113.50", "203.0.113.51"] {
        let body = json!({"username": "victim", "password": vmm_e2e::cluster::USER_PASSWORD});
        let response = api
            .send_with_headers(
                Method::POST,
                "/api/auth/login",
                Some(&body),
                &[("x-forwarded-for", forged)],
            )
            .await?;
        check_429(&response, 60).with_context(|| format!("login forged as from {forged}"))?;
        let body = json!({"username": format!("other-{forged}"), "password": "whatever-123"});
        let response = api
            .send_with_headers(
                Method::POST,
                "/api/auth/register",
                Some(&body),
                &[("x-real-ip", forged)],
            )
            .await?;
        check_429(&response, 60).with_context(|| format!("register forged as from {forged}"))?;
    }
    // The general budget is separate: the API still answers other requests.
    api.get("/api/vms").await?.expect_error(401)?;
    Ok(())
}

/// The targeted lockout of issue 13: a few wrong passwords for a username from anywhere
/// used to lock its owner out, even with the right password from a client that never
/// failed. Now the guessers are slowed and the owner logs in.
#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_slow_the_guessers_but_never_lock_out_the_owner() {
    let cluster =
        TestCluster::start(login_limited().coordinator_env("TRUSTED_PROXIES", "127.0.0.1/32"))
            .await
            .unwrap();
    login_from_many_addresses(&cluster).await.unwrap();
}

async fn login_from_many_addresses(cluster: &TestCluster) -> Result<()> {
    let api = cluster.api();
    let attempt = |username: &str, password: &str, address: String| {
        let api = api.clone();
        let body = json!({"username": username, "password": password});
        async move {
            api.send_with_headers(
                Method::POST,
                "/api/auth/login",
                Some(&body),
                &[("x-forwarded-for", &address)],
            )
            .await
        }
    };
    let body = json!({"username": "victim", "password": vmm_e2e::cluster::USER_PASSWORD});
    api.send_with_headers(
        Method::POST,
        "/api/auth/register",
        Some(&body),
        &[("x-forwarded-for", "192.0.2.1")],
    )
    .await?
    .expect_status(201)?;

    // A botnet: every guess from a new address. They spend victim's budget of failures.
    for i in 0..LOGIN_BURST {
        attempt(
            "victim",
            "wrong-password-123",
            format!("198.51.100.{}", i + 1),
        )
        .await?
        .expect_error(401)
        .with_context(|| format!("guess {} is answered", i + 1))?;
    }
    // The owner, from an address that never failed, logs in with the right password …
    let response = attempt(
        "victim",
        vmm_e2e::cluster::USER_PASSWORD,
        "203.0.113.200".into(),
    )
    .await?;
    response
        .expect_status(200)
        .context("the owner logs in from a client that never failed, during the attack")?;
    // … while a guesser that failed before is slowed, with the right password too, whatever
    // the case of the name.
    for (username, password, address) in [
        ("victim", "wrong-password-456", "198.51.100.1"),
        ("victim", vmm_e2e::cluster::USER_PASSWORD, "198.51.100.2"),
        ("VICTIM", "wrong-password-789", "198.51.100.3"),
    ] {
        let response = attempt(username, password, address.into()).await?;
        check_429(&response, 60)
            .with_context(|| format!("{username} from {address}, which failed before"))?;
        let message = response.expect_error(429)?;
        ensure!(
            message.contains("failed logins"),
            "the 429 says why: {message}"
        );
    }
    // Other accounts are untouched, also from the guessing addresses.
    let response = attempt("somebody-else", "wrong-password-123", "198.51.100.1".into()).await?;
    response
        .expect_error(401)
        .context("another username from an address that guessed before")?;
    Ok(())
}
