//! Benchmark: memory the rate limiter holds per tracked client, and that idle clients are
//! given back. Prints figures; asserts nothing.
//!
//!     cargo run --release -p vmm-coordinator --example ratelimit_memory [clients]
// A benchmark: a failed `unwrap` ends the run with the reason.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use vmm_coordinator::ratelimit::{RateLimitSettings, RateLimits};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let clients: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let limits = RateLimits::new(RateLimitSettings {
        enabled: true,
        requests_per_second: NonZeroU32::new(10).unwrap(),
        burst: NonZeroU32::new(20).unwrap(),
        login_per_minute: NonZeroU32::new(10).unwrap(),
        login_burst: NonZeroU32::new(5).unwrap(),
        trusted_proxies: Vec::new(),
        forwarded_header: vmm_coordinator::http::forwarded::ForwardedHeader::XForwardedFor,
    });
    for (family, make) in [
        (
            "IPv4",
            (|i: u32| IpAddr::V4(Ipv4Addr::from(i))) as fn(u32) -> IpAddr,
        ),
        ("IPv6", |i: u32| {
            IpAddr::V6(Ipv6Addr::from(u128::from(i) << 64 | 1))
        }),
    ] {
        let before = rss_kib();
        let started = Instant::now();
        for i in 0..clients {
            let _ = limits.check_client(make(i));
        }
        let elapsed = started.elapsed();
        let after = rss_kib();
        let per_client = (after.saturating_sub(before) as f64 * 1024.0) / f64::from(clients);
        println!(
            "{family}: {clients} clients tracked: RSS {before} KiB -> {after} KiB, {per_client:.0} bytes per client, \
             {:.0} ns per check",
            elapsed.as_nanos() as f64 / f64::from(clients)
        );
        // A budget of 20 at 10/s is full again after 2 s; then the keys are idle.
        std::thread::sleep(Duration::from_millis(2100));
        limits.forget_idle();
        println!(
            "{family}: after forget_idle: {} keys tracked, RSS {} KiB",
            limits.tracked_keys(),
            rss_kib()
        );
    }
}
