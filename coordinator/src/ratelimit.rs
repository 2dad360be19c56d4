//! Rate limiting with governor (GCRA), so that no client and no user can take the service
//! for themselves, and passwords cannot be guessed at speed.
//!
//! - Every request is limited per client; a request with a valid token is also limited per
//!   user, so one user cannot spend the budget of a whole office behind one NAT address,
//!   nor escape their own by changing address.
//! - Login and register have a separate, stricter budget per client and (login) per
//!   username; when it is spent even the right password gets 429.
//! - The client is the TCP peer. `X-Forwarded-For` / `X-Real-IP` are believed only when the
//!   peer is a configured trusted proxy; then the client is the right-most forwarded address
//!   that is not itself a trusted proxy. A client that forges the header directly gains
//!   nothing.
//! - Over budget: 429 with `Retry-After`. Keys idle long enough to be full again are
//!   dropped periodically, so memory stays bounded however many clients come and go.

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use ipnet::IpNet;
use vmm_shared::UserId;

use crate::error::ApiError;
use crate::state::AppState;

/// Budgets, from configuration.
#[derive(Clone, Debug)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub requests_per_second: NonZeroU32,
    pub burst: NonZeroU32,
    pub login_per_minute: NonZeroU32,
    pub login_burst: NonZeroU32,
    pub trusted_proxies: Vec<IpNet>,
}

/// The client address a request is accounted to, put into request extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

pub struct RateLimits {
    settings: RateLimitSettings,
    per_client: DefaultKeyedRateLimiter<IpAddr>,
    per_user: DefaultKeyedRateLimiter<UserId>,
    login_per_client: DefaultKeyedRateLimiter<IpAddr>,
    login_per_username: DefaultKeyedRateLimiter<String>,
}

impl RateLimits {
    pub fn new(settings: RateLimitSettings) -> Self {
        let general = Quota::per_second(settings.requests_per_second).allow_burst(settings.burst);
        let login = Quota::per_minute(settings.login_per_minute).allow_burst(settings.login_burst);
        Self {
            per_client: DefaultKeyedRateLimiter::keyed(general),
            per_user: DefaultKeyedRateLimiter::keyed(general),
            login_per_client: DefaultKeyedRateLimiter::keyed(login),
            login_per_username: DefaultKeyedRateLimiter::keyed(login),
            settings,
        }
    }

    /// The address to account a request to (see the module doc).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|part| part.trim().parse::<IpAddr>())
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        if let Some(client) = forwarded.iter().rev().find(|ip| !self.is_trusted(**ip)) {
            return *client;
        }
        if let Some(first) = forwarded.first() {
            return *first;
        }
        headers
            .get("x-real-ip")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(peer)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.settings
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&ip))
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

    /// The stricter budget of login and register.
    pub fn check_login(&self, ip: IpAddr, username: Option<&str>) -> Result<(), ApiError> {
        let message = "too many login attempts";
        self.check(&self.login_per_client, &canonical(ip), message)?;
        if let Some(username) = username {
            self.check(
                &self.login_per_username,
                &username.to_ascii_lowercase(),
                message,
            )?;
        }
        Ok(())
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
        self.login_per_username.retain_recent();
        self.per_client.shrink_to_fit();
        self.per_user.shrink_to_fit();
        self.login_per_client.shrink_to_fit();
        self.login_per_username.shrink_to_fit();
    }

    /// How many keys are tracked across all budgets.
    pub fn tracked_keys(&self) -> usize {
        self.per_client.len()
            + self.per_user.len()
            + self.login_per_client.len()
            + self.login_per_username.len()
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
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
        if let Some(Err(err)) =
            token_user(&app, request.headers()).map(|user| app.rate_limits.check_user(user))
        {
            return err.into_response();
        }
    }
    next.run(request).await
}

fn token_user(app: &AppState, headers: &HeaderMap) -> Option<UserId> {
    let token = headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    app.tokens
        .verify(token.trim())
        .ok()
        .map(|claims| claims.sub)
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
        })
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn forwarded_headers_count_only_behind_trusted_proxies() {
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let spoofed = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(limits(&[]).client_ip(peer, &spoofed), peer);
        let trusted = limits(&["127.0.0.0/8"]);
        assert_eq!(
            trusted.client_ip(peer, &spoofed),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // The right-most untrusted hop is the client; what it claims before that is ignored.
        let chain = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9, 127.0.0.2")]);
        assert_eq!(
            trusted.client_ip(peer, &chain),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        let garbage = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(trusted.client_ip(peer, &garbage), peer);
        let real_ip = headers(&[("x-real-ip", "192.0.2.7")]);
        assert_eq!(
            trusted.client_ip(peer, &real_ip),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn budget_is_spent_then_refused_with_retry_after() {
        let limits = limits(&[]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            limits.check_client(ip).unwrap();
        }
        match limits.check_client(ip) {
            Err(ApiError::TooManyRequests {
                retry_after_secs, ..
            }) => assert!(retry_after_secs >= 1),
            other => panic!("expected 429, got {other:?}"),
        }
        // Another client has its own budget.
        limits.check_client("192.0.2.2".parse().unwrap()).unwrap();
    }

    #[test]
    fn login_budget_is_per_client_and_per_username() {
        let limits = limits(&[]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        limits.check_login(a, Some("alice")).unwrap();
        limits.check_login(b, Some("Alice")).unwrap();
        // Alice's budget is spent, whichever address tries next.
        assert!(
            limits
                .check_login("192.0.2.3".parse().unwrap(), Some("alice"))
                .is_err()
        );
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let limits = RateLimits::new(RateLimitSettings {
            enabled: true,
            requests_per_second: NonZeroU32::new(1000).unwrap(),
            burst: NonZeroU32::new(1).unwrap(),
            login_per_minute: NonZeroU32::new(1).unwrap(),
            login_burst: NonZeroU32::new(1).unwrap(),
            trusted_proxies: vec![],
        });
        for i in 0..1000u32 {
            limits.check_client(IpAddr::from(i.to_be_bytes())).unwrap();
        }
        assert_eq!(limits.tracked_keys(), 1000);
        std::thread::sleep(Duration::from_millis(20));
        limits.forget_idle();
        assert_eq!(limits.tracked_keys(), 0);
    }
}
