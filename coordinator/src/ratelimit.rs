//! Rate limiting with governor (GCRA), so that no client and no user can take the service
//! for themselves, and passwords cannot be guessed at speed.
//!
//! - Every request is limited per client; a request with a valid token (a login token or
//!   an API token, counted as its owner) is also limited per user, so one user cannot spend the budget of a whole office behind one NAT address,
//!   nor escape their own by changing address.
//! - Login and register have a separate, stricter budget per client; when it is spent even
//!   the right password gets 429.
//! - Failed logins slow down guessing one username without locking its owner out: each
//!   username has a budget of failures (the login budget's size and rate). While it is
//!   spent, a client that has itself failed to log in as that username in the last
//!   [`FAILURE_MEMORY`] gets 429; a client that has not failed is not held back by other
//!   clients' failures. A success forgets the client's failures for that username.
//! - The client is the TCP peer, or, behind a configured trusted proxy, the address the
//!   proxy forwarded (`crate::http::forwarded`). A client that forges forwarding headers
//!   directly gains nothing.
//! - Over budget: 429 with `Retry-After`. Keys idle long enough to be full again are
//!   dropped periodically, so memory stays bounded however many clients come and go.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use vmm_shared::UserId;

use crate::api_tokens::{self, store::Lookup};
use crate::auth::ApiTokenLookup;
use crate::connections::canonical;
use crate::error::ApiError;
use crate::http::forwarded::{ClientAddress, ForwardedHeader};
use crate::state::AppState;

/// How long a failed login marks its client as a guesser of that username.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);

/// Budgets, from configuration.
#[derive(Clone, Debug)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub requests_per_second: NonZeroU32,
    pub burst: NonZeroU32,
    pub login_per_minute: NonZeroU32,
    pub login_burst: NonZeroU32,
    pub trusted_proxies: Vec<IpNet>,
    pub forwarded_header: ForwardedHeader,
}

/// The client address a request is accounted to, put into request extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

pub struct RateLimits {
    settings: RateLimitSettings,
    client_address: ClientAddress,
    per_client: DefaultKeyedRateLimiter<IpAddr>,
    per_user: DefaultKeyedRateLimiter<UserId>,
    login_per_client: DefaultKeyedRateLimiter<IpAddr>,
    login_failures: Mutex<LoginFailures>,
}

/// Failed logins, by username (a budget) and by (username, client) (who failed).
#[derive(Default)]
struct LoginFailures {
    per_username: HashMap<String, Bucket>,
    failed_clients: HashMap<(String, IpAddr), Instant>,
}

/// A token bucket of failures: `tokens` left at `updated`, refilled continuously.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimits {
    pub fn new(settings: RateLimitSettings) -> Self {
        let general = Quota::per_second(settings.requests_per_second).allow_burst(settings.burst);
        let login = Quota::per_minute(settings.login_per_minute).allow_burst(settings.login_burst);
        Self {
            client_address: ClientAddress::new(
                settings.trusted_proxies.clone(),
                settings.forwarded_header,
            ),
            per_client: DefaultKeyedRateLimiter::keyed(general),
            per_user: DefaultKeyedRateLimiter::keyed(general),
            login_per_client: DefaultKeyedRateLimiter::keyed(login),
            login_failures: Mutex::new(LoginFailures::default()),
            settings,
        }
    }

    /// The address to account a request to (see the module doc).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.client_address.client_ip(peer, headers)
    }

    pub fn check_client(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.check(
            &self.per_client,
            &canonical(ip),
            "too many requests from your address",
        )
    }

    pub fn check_user(&self, user: UserId) -> Result<(), ApiError> {
        self.check(&self.per_user, &user, "too many requests for your account")
    }

    /// The stricter budget of login and register, and (login) the slowdown of a client that
    /// failed to log in as `username` while that username's failure budget is spent.
    pub fn check_login(&self, ip: IpAddr, username: Option<&str>) -> Result<(), ApiError> {
        let ip = canonical(ip);
        self.check(&self.login_per_client, &ip, "too many login attempts")?;
        let Some(username) = username else {
            return Ok(());
        };
        if !self.settings.enabled {
            return Ok(());
        }
        let key = (crate::users::username_key(username), ip);
        let now = Instant::now();
        let mut failures = self.failures();
        let failed_lately = failures
            .failed_clients
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < FAILURE_MEMORY);
        if !failed_lately {
            return Ok(());
        }
        let bucket = failures.bucket(&self.settings, &key.0, now);
        if bucket.tokens >= 1.0 {
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / self.failure_refill_per_sec());
        Err(ApiError::TooManyRequests {
            message: format!(
                "too many failed logins for this username; retry in {} s",
                retry_after_secs(wait)
            ),
            retry_after_secs: retry_after_secs(wait),
        })
    }

    /// A login as `username` from `ip` failed: it takes one from the username's failure
    /// budget and marks the client as having failed.
    pub fn record_login_failure(&self, ip: IpAddr, username: &str) {
        let key = (crate::users::username_key(username), canonical(ip));
        let now = Instant::now();
        let mut failures = self.failures();
        let bucket = failures.bucket(&self.settings, &key.0, now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
        failures.failed_clients.insert(key, now);
    }

    /// A login as `username` from `ip` succeeded: the client's failures are forgotten.
    pub fn record_login_success(&self, ip: IpAddr, username: &str) {
        let key = (crate::users::username_key(username), canonical(ip));
        self.failures().failed_clients.remove(&key);
    }

    fn failures(&self) -> MutexGuard<'_, LoginFailures> {
        self.login_failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn failure_refill_per_sec(&self) -> f64 {
        f64::from(self.settings.login_per_minute.get()) / 60.0
    }

    fn check<K: Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        message: &str,
    ) -> Result<(), ApiError> {
        if !self.settings.enabled {
            return Ok(());
        }
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::TooManyRequests {
                message: format!("{message}; retry in {} s", retry_after_secs(wait)),
                retry_after_secs: retry_after_secs(wait),
            }
        })
    }

    /// Drops keys whose budget is full again (they behave exactly like unseen keys) and
    /// gives their memory back.
    pub fn forget_idle(&self) {
        self.per_client.retain_recent();
        self.per_user.retain_recent();
        self.login_per_client.retain_recent();
        self.per_client.shrink_to_fit();
        self.per_user.shrink_to_fit();
        self.login_per_client.shrink_to_fit();
        let now = Instant::now();
        let mut failures = self.failures();
        let settings = &self.settings;
        failures
            .per_username
            .retain(|_, bucket| refilled(settings, *bucket, now).tokens < capacity(settings));
        failures
            .failed_clients
            .retain(|_, at| now.duration_since(*at) < FAILURE_MEMORY);
        failures.per_username.shrink_to_fit();
        failures.failed_clients.shrink_to_fit();
    }

    /// How many keys are tracked across all budgets.
    pub fn tracked_keys(&self) -> usize {
        let failures = self.failures();
        self.per_client.len()
            + self.per_user.len()
            + self.login_per_client.len()
            + failures.per_username.len()
            + failures.failed_clients.len()
    }
}

impl LoginFailures {
    /// The username's failure budget, refilled up to now.
    fn bucket(
        &mut self,
        settings: &RateLimitSettings,
        username: &str,
        now: Instant,
    ) -> &mut Bucket {
        let bucket = self
            .per_username
            .entry(username.to_owned())
            .or_insert(Bucket {
                tokens: capacity(settings),
                updated: now,
            });
        *bucket = refilled(settings, *bucket, now);
        bucket
    }
}

fn capacity(settings: &RateLimitSettings) -> f64 {
    f64::from(settings.login_burst.get())
}

fn refilled(settings: &RateLimitSettings, bucket: Bucket, now: Instant) -> Bucket {
    let per_sec = f64::from(settings.login_per_minute.get()) / 60.0;
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    Bucket {
        tokens: (bucket.tokens + elapsed * per_sec).min(capacity(settings)),
        updated: now,
    }
}

fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Parses one `TRUSTED_PROXIES` entry: a CIDR (`10.0.0.0/8`) or a single address.
pub fn parse_proxy(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{entry:?} is neither a CIDR nor an IP address"))
}

/// Middleware: accounts each request to its client (and user), refusing it with 429 when
/// the budget is spent. Health and metrics are exempt, so probes and scrapes never starve.
pub async fn limit_requests(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = app.rate_limits.client_ip(peer.ip(), request.headers());
    request.extensions_mut().insert(ClientIp(client));
    let exempt = matches!(request.uri().path(), "/api/health" | "/api/metrics");
    if !exempt {
        if let Err(err) = app.rate_limits.check_client(client) {
            return err.into_response();
        }
        if let Some(Err(err)) = token_user(&app, &mut request)
            .await
            .map(|user| app.rate_limits.check_user(user))
        {
            return err.into_response();
        }
    }
    next.run(request).await
}

/// The user a request's bearer token belongs to, if it is valid: a login token's subject,
/// or an API token's owner (whose lookup is kept in the request for `CurrentUser`).
async fn token_user(app: &AppState, request: &mut Request) -> Option<UserId> {
    if !app.rate_limits.settings.enabled {
        return None;
    }
    let token = request
        .headers()
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?
        .trim()
        .to_owned();
    if api_tokens::is_api_token(&token) {
        let lookup = api_tokens::authenticate(&app.db, &token).await.ok()?;
        let owner = match &lookup {
            Lookup::Valid { grant, .. } => Some(grant.owner),
            Lookup::Expired(_) | Lookup::Unknown => None,
        };
        request.extensions_mut().insert(ApiTokenLookup(lookup));
        return owner;
    }
    app.tokens.user_of(&token).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(trusted: &[&str]) -> RateLimits {
        RateLimits::new(RateLimitSettings {
            enabled: true,
            requests_per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
            login_per_minute: NonZeroU32::new(1).unwrap(),
            login_burst: NonZeroU32::new(2).unwrap(),
            trusted_proxies: trusted.iter().map(|p| parse_proxy(p).unwrap()).collect(),
            forwarded_header: ForwardedHeader::XForwardedFor,
        })
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_count_only_behind_trusted_proxies() {
        let peer = ip("127.0.0.1");
        let spoofed = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(limits(&[]).client_ip(peer, &spoofed), peer);
        let trusted = limits(&["127.0.0.0/8"]);
        assert_eq!(trusted.client_ip(peer, &spoofed), ip("203.0.113.9"));
        // The right-most untrusted hop is the client; what it claims before that is ignored.
        let chain = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9, 127.0.0.2")]);
        assert_eq!(trusted.client_ip(peer, &chain), ip("203.0.113.9"));
        let garbage = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(trusted.client_ip(peer, &garbage), peer);
        // X-Real-IP is not the configured header: never a fallback.
        let real_ip = headers(&[("x-real-ip", "192.0.2.7")]);
        assert_eq!(trusted.client_ip(peer, &real_ip), peer);
        let both = headers(&[
            ("x-forwarded-for", "garbage, 203.0.113.9"),
            ("x-real-ip", "192.0.2.7"),
        ]);
        assert_eq!(trusted.client_ip(peer, &both), ip("203.0.113.9"));
    }

    #[test]
    fn budget_is_spent_then_refused_with_retry_after() {
        let limits = limits(&[]);
        let client = ip("192.0.2.1");
        for _ in 0..3 {
            limits.check_client(client).unwrap();
        }
        match limits.check_client(client) {
            Err(ApiError::TooManyRequests {
                retry_after_secs, ..
            }) => assert!(retry_after_secs >= 1),
            other => panic!("expected 429, got {other:?}"),
        }
        // Another client has its own budget.
        limits.check_client(ip("192.0.2.2")).unwrap();
    }

    #[test]
    fn login_budget_is_per_client() {
        let limits = limits(&[]);
        let a = ip("192.0.2.1");
        limits.check_login(a, Some("alice")).unwrap();
        limits.check_login(a, None).unwrap();
        assert!(
            limits.check_login(a, Some("bob")).is_err(),
            "a's budget is spent"
        );
        limits.check_login(ip("192.0.2.2"), Some("alice")).unwrap();
    }

    /// The lockout of the finding: a few wrong passwords for a username from anywhere must
    /// not keep its owner out, from a client that never failed.
    #[test]
    fn failures_slow_the_failing_clients_and_never_the_owner() {
        let limits = limits(&[]);
        let (guesser_1, guesser_2, guesser_3) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        // Two failures spend alice's failure budget of two.
        for guesser in [guesser_1, guesser_2] {
            limits.check_login(guesser, Some("alice")).unwrap();
            limits.record_login_failure(guesser, "alice");
        }
        // A guesser that failed is slowed, whatever the case of the name …
        match limits.check_login(guesser_1, Some("ALICE")) {
            Err(ApiError::TooManyRequests {
                retry_after_secs,
                message,
            }) => {
                assert!((1..=60).contains(&retry_after_secs), "{retry_after_secs}");
                assert!(message.contains("failed logins"), "{message}");
            }
            other => panic!("expected 429, got {other:?}"),
        }
        // … a client that never failed is not: the owner logs in.
        limits.check_login(guesser_3, Some("alice")).unwrap();
        limits
            .check_login(ip("198.51.100.7"), Some("alice"))
            .unwrap();
        // Other usernames are untouched, also for the guessers.
        limits.check_login(guesser_2, Some("bob")).unwrap();
        // A success forgets the client's failures.
        limits.record_login_success(guesser_2, "Alice");
        let fresh = limits_with_big_client_budget();
        fresh.record_login_failure(guesser_2, "alice");
        fresh.record_login_failure(guesser_2, "alice");
        assert!(fresh.check_login(guesser_2, Some("alice")).is_err());
        fresh.record_login_success(guesser_2, "alice");
        fresh.check_login(guesser_2, Some("alice")).unwrap();
    }

    fn limits_with_big_client_budget() -> RateLimits {
        RateLimits::new(RateLimitSettings {
            login_per_minute: NonZeroU32::new(1).unwrap(),
            login_burst: NonZeroU32::new(2).unwrap(),
            burst: NonZeroU32::new(100).unwrap(),
            ..limits(&[]).settings
        })
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let limits = RateLimits::new(RateLimitSettings {
            enabled: true,
            requests_per_second: NonZeroU32::new(1000).unwrap(),
            burst: NonZeroU32::new(1).unwrap(),
            login_per_minute: NonZeroU32::new(60_000).unwrap(),
            login_burst: NonZeroU32::new(1).unwrap(),
            trusted_proxies: vec![],
            forwarded_header: ForwardedHeader::XForwardedFor,
        });
        for i in 0..1000u32 {
            limits.check_client(IpAddr::from(i.to_be_bytes())).unwrap();
        }
        limits.record_login_failure(ip("192.0.2.1"), "alice");
        assert_eq!(limits.tracked_keys(), 1002);
        std::thread::sleep(Duration::from_millis(20));
        limits.forget_idle();
        // The failure budget refilled; the client's failure is remembered for a while.
        assert_eq!(limits.tracked_keys(), 1);
    }
}
