//! Benchmark: what a create's placement read (`hosts::store::placement_candidates`, run
//! inside the claim's write transaction) costs as the fleet grows. Each fleet is a SQLite
//! file made by the coordinator itself (`db::connect`: its migrations, its SQLite build),
//! with N hosts registered through `register_session` and 50-52 VMs' worth of allocation
//! each, at random; the VM asked for is 1 vCPU, 64 MiB, 1 GB. Prints figures; asserts
//! nothing.
//!
//!     cargo run --release -p vmm-coordinator --example placement_read [hosts…]
//!
//! Columns, each the median of 7 rounds of 200 reads, in µs per read:
//! - `spread`, `pack`: without an image;
//! - `image 1 in 4`: spread, for an image that every fourth host caches (the second read,
//!   which looks for a caching host among the best ones' ties, runs whenever the best host
//!   does not cache it);
//! - `image nowhere`: the same for an image no host caches: the second read then walks every
//!   host tied for the most free memory, here about a third of the fleet (its worst case);
//! - `sort all`: a statement that filters and sorts every connected host, as the claim read
//!   them before migration 0014, for comparison on the same file;
//! - `spread, 1 in 10 lost`: spread again after every tenth host became unreachable with
//!   nothing left allocated on it, so with the most free memory of all, where hosts that
//!   receive no VMs end up (drained ones too): the first a walk would meet, had the placement
//!   indexes not put hosts that cannot be placed apart (migration 0015).
// A benchmark: a failed `unwrap` ends the run with the reason.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use sqlx::AnyConnection;
use vmm_coordinator::config::Placement;
use vmm_coordinator::db::{self, Backend, Db};
use vmm_coordinator::hosts::store::{
    HostRegistration, PLACEMENT_CANDIDATES, PlacementQuery, placement_candidates, register_session,
};
use vmm_shared::{HostId, ImageId, VmSize};

const ROUNDS: usize = 7;
const READS_PER_ROUND: u32 = 200;

/// The read before migration 0014: every connected host filtered, then sorted.
const SORT_ALL: &str = "SELECT h.id FROM hosts h LEFT JOIN host_allocations a ON a.host_id = h.id
     WHERE h.status = 'connected' AND h.drained_at IS NULL
       AND COALESCE(a.cpu, 0) + 1 <= h.cpus * 4.0
       AND COALESCE(a.memory_mib, 0) + 64 <= h.memory_mib
       AND COALESCE(a.disk_gb, 0) + 1 <= h.disk_gb
     ORDER BY h.memory_mib - COALESCE(a.memory_mib, 0) DESC,
              CASE WHEN EXISTS (SELECT 1 FROM host_images hi
                                WHERE hi.host_id = h.id AND hi.image_id = $1)
                   THEN 1 ELSE 0 END DESC,
              COALESCE(a.vms, 0) ASC, h.id ASC
     LIMIT 8";

/// A small deterministic generator, so that every run builds the same fleets.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

/// A fleet of `hosts` connected hosts, and two images: one every fourth host caches, one
/// no host caches.
async fn fleet(db: &Db, hosts: usize) -> (ImageId, ImageId) {
    let mut random = Lcg(hosts as u64);
    let (cached, nowhere) = (ImageId::new_random(), ImageId::new_random());
    let mut tx = db::begin_write(db).await.unwrap();
    for image in [cached, nowhere] {
        sqlx::query(
            "INSERT INTO images (id, name, status, default_user, created_at)
             VALUES ($1, $2, 'ready', 'debian', $3)",
        )
        .bind(image)
        .bind(image.to_string())
        .bind(db::now())
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for i in 0..hosts {
        let id: HostId = format!("host-{i:06}").parse().unwrap();
        let registration = HostRegistration {
            id: id.clone(),
            cpus: 64,
            memory_mib: 16_384,
            disk_gb: 10_000,
            libvirt_version: "11.3.0".into(),
            hypervisor: "QEMU".into(),
            kvm_usable: true,
            agent_version: "bench".into(),
        };
        register_session(&mut tx, &registration).await.unwrap();
        let vms = 50 + random.below(3) as i64;
        sqlx::query(
            "UPDATE host_allocations SET vms = $1, cpu = $1, memory_mib = 64 * $1, disk_gb = $1,
                 free_memory_mib = 16384 - 64 * $1
             WHERE host_id = $2",
        )
        .bind(vms)
        .bind(&id)
        .execute(&mut *tx)
        .await
        .unwrap();
        if i % 4 == 3 {
            sqlx::query(
                "INSERT INTO host_images (host_id, image_id, sha256, size_bytes, updated_at)
                 VALUES ($1, $2, 'ff', 1, $3)",
            )
            .bind(&id)
            .bind(cached)
            .bind(db::now())
            .execute(&mut *tx)
            .await
            .unwrap();
        }
    }
    tx.commit().await.unwrap();
    (cached, nowhere)
}

/// One of the reads the benchmark times.
#[derive(Clone, Copy)]
enum Read {
    Candidates(Placement, Option<ImageId>),
    SortAll(ImageId),
}

/// Runs `read` once; returns how many hosts it found.
async fn read_once(conn: &mut AnyConnection, read: Read) -> usize {
    let size = VmSize {
        cpu: 1,
        memory_mib: 64,
        disk_gb: 1,
    };
    match read {
        Read::Candidates(placement, image) => {
            let query = PlacementQuery {
                size: &size,
                placement,
                cpu_allocation_ratio: 4.0,
                image,
            };
            placement_candidates(conn, Backend::Sqlite, &query, PLACEMENT_CANDIDATES)
                .await
                .unwrap()
                .len()
        }
        Read::SortAll(image) => {
            let found: Vec<String> = sqlx::query_scalar(SORT_ALL)
                .bind(image)
                .fetch_all(conn)
                .await
                .unwrap();
            found.len()
        }
    }
}

/// The median over the rounds of µs per `read`.
async fn median_micros(conn: &mut AnyConnection, read: Read) -> f64 {
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..READS_PER_ROUND {
            assert!(read_once(conn, read).await > 0, "the read found no host");
        }
        rounds.push(started.elapsed().as_secs_f64() * 1e6 / f64::from(READS_PER_ROUND));
    }
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

async fn measure(hosts: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let db = db::connect(&db::default_url(dir.path())).await.unwrap();
    let (cached, nowhere) = fleet(&db, hosts).await;
    let mut conn = db.acquire().await.unwrap();
    let mut figures = Vec::new();
    for read in [
        Read::Candidates(Placement::Spread, None),
        Read::Candidates(Placement::Pack, None),
        Read::Candidates(Placement::Spread, Some(cached)),
        Read::Candidates(Placement::Spread, Some(nowhere)),
        Read::SortAll(cached),
    ] {
        figures.push(median_micros(&mut conn, read).await);
    }
    sqlx::query(
        "UPDATE host_allocations SET vms = 0, cpu = 0, memory_mib = 0, disk_gb = 0,
             free_memory_mib = 16384
         WHERE CAST(substr(host_id, 6) AS INTEGER) % 10 = 0",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE hosts SET status = 'unreachable' WHERE CAST(substr(id, 6) AS INTEGER) % 10 = 0",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    figures.push(median_micros(&mut conn, Read::Candidates(Placement::Spread, None)).await);
    drop(conn);
    db.close().await;
    figures
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut counts: Vec<usize> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse().expect("host counts are whole numbers"))
        .collect();
    if counts.is_empty() {
        counts = vec![100, 1_000, 5_000];
    }
    println!(
        "{:>8} {:>10} {:>10} {:>15} {:>16} {:>11} {:>22}",
        "hosts",
        "spread µs",
        "pack µs",
        "image 1 in 4 µs",
        "image nowhere µs",
        "sort all µs",
        "spread, 1 in 10 lost µs"
    );
    for hosts in counts {
        let figures = measure(hosts).await;
        println!(
            "{hosts:>8} {:>10.1} {:>10.1} {:>15.1} {:>16.1} {:>11.1} {:>22.1}",
            figures[0], figures[1], figures[2], figures[3], figures[4], figures[5]
        );
    }
}
