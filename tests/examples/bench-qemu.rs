//! Benchmark on real QEMU under libvirtd (`qemu:///system`), through the real `coordinator`
//! and `agent` binaries (one agent, polling at the production default of 30 s unless told
//! otherwise), with blank-disk 64 MiB guests as the real-QEMU tests use. Prints a table.
//!
//! ```text
//! cargo build --bins
//! cargo run -p vmm-e2e --example bench-qemu -- [--trials 50] [--pairs 20] [--poll-interval-ms 30000]
//! ```
//!
//! (a) **Out-of-band change → API.** One VM, changed `--trials` times in a row behind the
//! product's back, each change a `virsh` process: `suspend` (→ `paused`), `resume`
//! (→ `running`), `destroy` (→ `stopped`), `start` (→ `running`). Each is timed from just
//! before `virsh` is spawned to the first `GET /api/vms/{id}` that shows the new status
//! (asked every `--api-poll-ms`, default 2 ms). Target (issue 16): p99 ≤ 300 ms.
//!
//! The profile beside it says where the time goes, per change: when `virsh` returned,
//! and when libvirt emitted the change's lifecycle event (`stopped`, `suspended`, ...), as
//! a separate `virsh event --all --loop --timestamp` process saw it (libvirt's own
//! timestamps, ms resolution, on the wall clock). "event → API" is the agent, the
//! coordinator and the API's polling together.
//!
//! (b) **REST create+start vs `virsh define` + `virsh start`**, `--pairs` times,
//! alternating which goes first: `POST /api/vms` (returns once the VM runs: quota, claim,
//! the agent's journal, the disk volume, define, start, the report back) against two
//! `virsh` processes defining and starting an equivalent domain (the REST VM's own XML
//! with another name, no UUID, MAC or product metadata, and a fresh disk volume made
//! beforehand, untimed). Reports both medians and the median of the per-pair ratios.
//! Target (issue 16): ≤ 1.10.
//!
//! Which binaries: `target/debug` next to this example, or `$VMM_E2E_BIN_DIR` (e.g.
//! `target/release` after `cargo build --release --bins`). Needs root and libvirtd
//! (`scripts/setup-host.sh`); leaves nothing behind (its domains, volumes and pool go).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use vmm_e2e::cluster::{QEMU_SYSTEM_URI, domain_name, free_port};
use vmm_e2e::virsh::{self, QemuLeftovers};
use vmm_e2e::{AgentOptions, Api, ClusterOptions, TestCluster};

/// How long one change may take to show before the benchmark gives up on it.
const CHANGE_DEADLINE: Duration = Duration::from_secs(90);
const OUT_OF_BAND_TARGET_MS: f64 = 300.0;
const CREATE_RATIO_TARGET: f64 = 1.10;

struct Options {
    trials: usize,
    pairs: usize,
    poll_interval_ms: u64,
    api_poll: Duration,
}

fn options() -> Options {
    let mut options = Options {
        trials: 50,
        pairs: 20,
        poll_interval_ms: 30_000,
        api_poll: Duration::from_millis(2),
    };
    let mut args = std::env::args().skip(1);
    let number = |flag: &str, value: Option<String>| -> u64 {
        value
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--trials" => options.trials = number(&arg, args.next()) as usize,
            "--pairs" => options.pairs = number(&arg, args.next()) as usize,
            "--poll-interval-ms" => options.poll_interval_ms = number(&arg, args.next()),
            "--api-poll-ms" => {
                options.api_poll = Duration::from_millis(number(&arg, args.next()));
            }
            other => panic!("unknown argument {other}; see the example's doc"),
        }
    }
    options
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = options();
    virsh::require_qemu_system().await;
    virsh::require_storage_driver().await;
    let mut agent = AgentOptions::qemu("bench-qemu");
    agent.poll_interval_ms = options.poll_interval_ms;
    // Declared before the cluster, so it is dropped after the agent has been killed.
    let mut leftovers = QemuLeftovers::new(&agent.storage_pool);
    let pool = agent.storage_pool.clone();
    let cluster = TestCluster::start(ClusterOptions::with_agents(vec![agent])).await?;
    let user = cluster.user("bench").await?;
    let events = EventWatch::start().await?;
    println!(
        "bench-qemu: agent polls every {} ms; binaries from {}",
        options.poll_interval_ms,
        vmm_e2e::process::binary_path("agent")?
            .parent()
            .map(|dir| dir.display().to_string())
            .unwrap_or_default()
    );

    let changes = out_of_band(&user, &events, &mut leftovers, &options).await?;
    let creates = create_pairs(&cluster, &user, &pool, &mut leftovers, &options).await?;
    print_table(&changes, &creates, &options);
    Ok(())
}

// ---- (a) out-of-band changes ------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Change {
    Suspend,
    Resume,
    Destroy,
    Start,
}

impl Change {
    const CYCLE: [Change; 4] = [
        Change::Suspend,
        Change::Resume,
        Change::Destroy,
        Change::Start,
    ];

    fn virsh_command(self) -> &'static str {
        match self {
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::Destroy => "destroy",
            Self::Start => "start",
        }
    }

    /// The status the API shows afterwards.
    fn status(self) -> &'static str {
        match self {
            Self::Suspend => "paused",
            Self::Resume | Self::Start => "running",
            Self::Destroy => "stopped",
        }
    }

    /// The lifecycle event that says the change happened, as `virsh event` names it.
    fn event(self) -> &'static str {
        match self {
            Self::Suspend => "Suspended",
            Self::Resume => "Resumed",
            Self::Destroy => "Stopped",
            Self::Start => "Started",
        }
    }
}

/// One timed change; every leg from just before `virsh` was spawned.
struct ChangeSample {
    change: Change,
    virsh_returned: Duration,
    /// `None` if `virsh event` never printed it.
    event: Option<Duration>,
    api: Duration,
}

async fn out_of_band(
    user: &Api,
    events: &EventWatch,
    leftovers: &mut QemuLeftovers,
    options: &Options,
) -> Result<Vec<ChangeSample>> {
    let vm = user.create_vm("oob", 1, 64, Some(1)).await?;
    let domain = domain_name(&vm.id);
    leftovers.add_domain(&domain);
    ensure!(vm.status == "running", "{vm:?}");
    let mut samples = Vec::with_capacity(options.trials * Change::CYCLE.len());
    for trial in 0..options.trials {
        for change in Change::CYCLE {
            let sample = time_change(user, events, &vm.id, &domain, change, options.api_poll)
                .await
                .with_context(|| format!("trial {trial}: virsh {}", change.virsh_command()))?;
            samples.push(sample);
        }
        eprint!(".");
    }
    eprintln!();
    user.delete_vm(&vm.id).await?;
    Ok(samples)
}

async fn time_change(
    user: &Api,
    events: &EventWatch,
    vm_id: &str,
    domain: &str,
    change: Change,
    api_poll: Duration,
) -> Result<ChangeSample> {
    let wall_start = SystemTime::now();
    let start = Instant::now();
    let virsh = tokio::spawn({
        let domain = domain.to_owned();
        async move { virsh::virsh_ok(&[change.virsh_command(), &domain]).await }
    });
    let mut virsh = Some(virsh);
    let mut virsh_returned = None;
    let api = loop {
        if let Some(handle) = virsh.as_mut().filter(|handle| handle.is_finished()) {
            handle.await??;
            virsh_returned = Some(start.elapsed());
            virsh = None;
        }
        if user.get_vm(vm_id).await?.status == change.status() {
            break start.elapsed();
        }
        if start.elapsed() > CHANGE_DEADLINE {
            bail!("the API did not show {} in time", change.status());
        }
        tokio::time::sleep(api_poll).await;
    };
    let virsh_returned = match (virsh, virsh_returned) {
        (Some(handle), _) => {
            handle.await??;
            start.elapsed()
        }
        (None, Some(returned)) => returned,
        (None, None) => unreachable!("virsh is either running or returned"),
    };
    // The event came before the API showed the change, if it came at all.
    let event = events.first_after(domain, change.event(), wall_start);
    // Let the change's later events (a start's second one) pass before the next change.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(ChangeSample {
        change,
        virsh_returned,
        event,
        api,
    })
}

/// `virsh event --all --loop --timestamp` in the background: when libvirt emitted each
/// lifecycle event, by its own clock.
struct EventWatch {
    seen: Arc<Mutex<Vec<(String, String, SystemTime)>>>,
    child: std::process::Child,
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EventWatch {
    async fn start() -> Result<Self> {
        let mut child = std::process::Command::new("virsh")
            .args([
                "-c",
                QEMU_SYSTEM_URI,
                "event",
                "--all",
                "--loop",
                "--timestamp",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot run `virsh event`")?;
        let stdout = child.stdout.take().context("virsh event's stdout")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let lines_seen = Arc::clone(&seen);
        // The events carry libvirt's timestamps: reading them late changes nothing.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(event) = parse_event_line(&line) {
                    lines_seen.lock().unwrap().push(event);
                }
            }
        });
        // `virsh event` registers within a few milliseconds; be sure before timing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Self { seen, child })
    }

    /// How long after `since` the first `kind` event of `domain` came.
    fn first_after(&self, domain: &str, kind: &str, since: SystemTime) -> Option<Duration> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, seen_kind, _)| name == domain && seen_kind == kind)
            .find_map(|(_, _, at)| at.duration_since(since).ok())
    }
}

/// `2026-12-01 23:32:27.826+0000: event 'lifecycle' for domain 'NAME': Stopped Destroyed`
/// → (NAME, `Stopped`, the time).
fn parse_event_line(line: &str) -> Option<(String, String, SystemTime)> {
    let (stamp, rest) = line.split_once(": event 'lifecycle' for domain '")?;
    let (name, rest) = rest.split_once("': ")?;
    let kind = rest.split_whitespace().next()?;
    let at = chrono::DateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.3f%z").ok()?;
    Some((name.to_owned(), kind.to_owned(), SystemTime::from(at)))
}

// ---- (b) REST create+start vs virsh define+start ------------------------------------------

struct CreatePair {
    rest: Duration,
    virsh: Duration,
}

async fn create_pairs(
    cluster: &TestCluster,
    user: &Api,
    pool: &str,
    leftovers: &mut QemuLeftovers,
    options: &Options,
) -> Result<Vec<CreatePair>> {
    let mut pairs = Vec::with_capacity(options.pairs);
    let mut template = None;
    for pair in 0..options.pairs {
        let (rest, vm_id) = time_rest_create(user, pair, leftovers).await?;
        if template.is_none() {
            let xml = virsh::virsh_ok(&["dumpxml", "--inactive", &domain_name(&vm_id)]).await?;
            let disk = cluster.agent("bench-qemu").disk_path(&vm_id);
            template = Some((xml, disk.display().to_string()));
        }
        let (xml, disk) = template.as_ref().unwrap();
        // Alternate which goes first, so a drift of the machine's load cancels out.
        let virsh = if pair % 2 == 0 {
            user.delete_vm(&vm_id).await?;
            time_virsh_create(xml, disk, pool, pair, leftovers).await?
        } else {
            let virsh = time_virsh_create(xml, disk, pool, pair, leftovers).await?;
            user.delete_vm(&vm_id).await?;
            virsh
        };
        pairs.push(CreatePair { rest, virsh });
        eprint!(".");
    }
    eprintln!();
    Ok(pairs)
}

async fn time_rest_create(
    user: &Api,
    pair: usize,
    leftovers: &mut QemuLeftovers,
) -> Result<(Duration, String)> {
    let start = Instant::now();
    let vm = user
        .create_vm(&format!("create-{pair}"), 1, 64, Some(1))
        .await?;
    let took = start.elapsed();
    leftovers.add_domain(&domain_name(&vm.id));
    ensure!(vm.status == "running", "{vm:?}");
    Ok((took, vm.id))
}

/// Defines and starts a copy of `xml` (named `bench-virsh-<pair>`, on a fresh volume) with
/// two `virsh` processes; returns how long those took. Removes the domain and volume.
async fn time_virsh_create(
    xml: &str,
    template_disk: &str,
    pool: &str,
    pair: usize,
    leftovers: &mut QemuLeftovers,
) -> Result<Duration> {
    let name = format!("bench-virsh-{}-{pair}", std::process::id());
    let volume = format!("{name}.qcow2");
    virsh::virsh_ok(&["vol-create-as", pool, &volume, "1G", "--format", "qcow2"]).await?;
    let path = virsh::virsh_ok(&["vol-path", "--pool", pool, &volume]).await?;
    let definition = equivalent_domain(xml, &name, template_disk, path.trim())?;
    let file = std::env::temp_dir().join(format!("{name}.xml"));
    std::fs::write(&file, definition)?;
    leftovers.add_domain(&name);

    let start = Instant::now();
    let defined = virsh::virsh_ok(&["define", file.to_str().context("temp path")?]).await;
    let started = match defined {
        Ok(_) => virsh::virsh_ok(&["start", &name]).await,
        Err(error) => Err(error),
    };
    let took = start.elapsed();
    let _ = std::fs::remove_file(&file);
    let state = virsh::domstate(&name).await;
    let _ = virsh::virsh(&["destroy", &name]).await;
    let _ = virsh::virsh(&["undefine", &name]).await;
    let _ = virsh::virsh(&["vol-delete", "--pool", pool, &volume]).await;
    started?;
    ensure!(state? == "running", "{name} did not run");
    Ok(took)
}

/// The agent's XML of a VM as a domain of its own: another name and disk, no UUID, MAC
/// address or product metadata (libvirt makes up the first two), and its SSH port forward
/// on a port of its own (from the kernel's ephemeral range, which the agent's SSH ports are
/// not taken from). The template's port belongs to the first pair's REST VM; once that VM
/// is gone the agent may give the same port to a later pair's VM, which runs beside the
/// copy in every other pair, and passt would then fail to bind it.
fn equivalent_domain(xml: &str, name: &str, template_disk: &str, disk: &str) -> Result<String> {
    let forwarded_port = free_port()?.port();
    let mut out = String::with_capacity(xml.len());
    let mut in_metadata = false;
    for line in xml.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("<metadata") {
            in_metadata = !trimmed.ends_with("</metadata>") && !trimmed.ends_with("/>");
            continue;
        }
        if in_metadata {
            in_metadata = !trimmed.starts_with("</metadata>");
            continue;
        }
        if trimmed.starts_with("<uuid>") || trimmed.starts_with("<mac address=") {
            continue;
        }
        if trimmed.starts_with("<name>") {
            out.push_str(&format!("  <name>{name}</name>\n"));
            continue;
        }
        if trimmed.starts_with("<range start=") && trimmed.ends_with("to='22'/>") {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&format!(
                "{indent}<range start='{forwarded_port}' to='22'/>\n"
            ));
            continue;
        }
        out.push_str(&line.replace(template_disk, disk));
        out.push('\n');
    }
    ensure!(
        out.contains(disk),
        "the template names no disk {template_disk}"
    );
    ensure!(
        !xml.contains("<portForward") || out.contains(&format!("start='{forwarded_port}'")),
        "the template's SSH port forward has a form this copy does not know"
    );
    Ok(out)
}

// ---- the table --------------------------------------------------------------------------

fn percentile(samples: &[f64], p: usize) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn verdict(pass: bool) -> &'static str {
    if pass { "met" } else { "MISSED" }
}

fn print_table(changes: &[ChangeSample], creates: &[CreatePair], options: &Options) {
    println!();
    println!(
        "(a) out-of-band change → API (agent polls every {} ms; API asked every {} ms)",
        options.poll_interval_ms,
        options.api_poll.as_millis()
    );
    println!(
        "{:<34} {:>4} {:>9} {:>9} {:>9}   {:<16}",
        "change → status in the API", "n", "p50 ms", "p99 ms", "max ms", "target p99 ≤ 300"
    );
    let mut by_change: HashMap<Change, Vec<&ChangeSample>> = HashMap::new();
    for sample in changes {
        by_change.entry(sample.change).or_default().push(sample);
    }
    let row = |label: &str, api: &[f64]| {
        let p99 = percentile(api, 99);
        println!(
            "{:<34} {:>4} {:>9.0} {:>9.0} {:>9.0}   {:<16}",
            label,
            api.len(),
            percentile(api, 50),
            p99,
            percentile(api, 100),
            verdict(p99 <= OUT_OF_BAND_TARGET_MS)
        );
    };
    for change in Change::CYCLE {
        let samples = by_change.get(&change).map(Vec::as_slice).unwrap_or(&[]);
        let api: Vec<f64> = samples.iter().map(|s| millis(s.api)).collect();
        row(
            &format!("virsh {} → {}", change.virsh_command(), change.status()),
            &api,
        );
    }
    let all: Vec<f64> = changes.iter().map(|s| millis(s.api)).collect();
    row("all changes", &all);

    println!();
    println!("    profile, p50 / p99 ms from the spawn of virsh:");
    println!(
        "    {:<16} {:>15} {:>19} {:>15} {:>13}",
        "change", "virsh returned", "libvirt event", "API", "event → API"
    );
    for change in Change::CYCLE {
        let samples = by_change.get(&change).map(Vec::as_slice).unwrap_or(&[]);
        let returned: Vec<f64> = samples.iter().map(|s| millis(s.virsh_returned)).collect();
        let event: Vec<f64> = samples.iter().filter_map(|s| s.event.map(millis)).collect();
        let api: Vec<f64> = samples.iter().map(|s| millis(s.api)).collect();
        let after_event: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.event.map(|event| millis(s.api) - millis(event)))
            .collect();
        let pair = |values: &[f64]| {
            format!(
                "{:.0} / {:.0}",
                percentile(values, 50),
                percentile(values, 99)
            )
        };
        println!(
            "    {:<16} {:>15} {:>13} ({:>3}) {:>15} {:>13}",
            change.virsh_command(),
            pair(&returned),
            pair(&event),
            event.len(),
            pair(&api),
            pair(&after_event)
        );
    }

    println!();
    println!(
        "(b) REST create+start vs virsh define+start, {} pairs",
        creates.len()
    );
    let rest: Vec<f64> = creates.iter().map(|p| millis(p.rest)).collect();
    let virsh: Vec<f64> = creates.iter().map(|p| millis(p.virsh)).collect();
    let ratios: Vec<f64> = creates
        .iter()
        .map(|p| p.rest.as_secs_f64() / p.virsh.as_secs_f64())
        .collect();
    println!("{:<34} {:>9} {:>9} {:>9}", "", "p50 ms", "min ms", "max ms");
    for (label, values) in [
        ("REST POST /api/vms (running)", &rest),
        ("virsh define + virsh start", &virsh),
    ] {
        println!(
            "{:<34} {:>9.0} {:>9.0} {:>9.0}",
            label,
            percentile(values, 50),
            percentile(values, 0),
            percentile(values, 100)
        );
    }
    let median_ratio = percentile(&ratios, 50);
    println!(
        "{:<34} {:>9.3}   target ≤ {CREATE_RATIO_TARGET:.2}: {}",
        "REST / virsh, median of pairs",
        median_ratio,
        verdict(median_ratio <= CREATE_RATIO_TARGET)
    );
    println!(
        "{:<34} {:>9.3}",
        "REST / virsh, ratio of medians",
        percentile(&rest, 50) / percentile(&virsh, 50)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virsh_event_lines_are_read() {
        let (name, kind, at) = parse_event_line(
            "2026-12-01 23:32:27.826+0000: event 'lifecycle' for domain 'vmm-x': Stopped Destroyed",
        )
        .unwrap();
        assert_eq!((name.as_str(), kind.as_str()), ("vmm-x", "Stopped"));
        let since_epoch = at.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(since_epoch.as_millis() % 1000, 826);
        assert!(parse_event_line("event loop ended").is_none());
    }

    #[test]
    fn the_equivalent_domain_has_no_identity_of_the_template() {
        let xml = "<domain type='qemu'>\n  <name>vmm-1</name>\n  <uuid>1</uuid>\n  \
                   <metadata>\n    <vmm:instance xmlns:vmm='x'>1</vmm:instance>\n  </metadata>\n  \
                   <devices>\n    <disk><source file='/p/vmm-1.qcow2'/></disk>\n    \
                   <interface>\n      <mac address='52:54:00:00:00:01'/>\n    </interface>\n  \
                   </devices>\n\
                   </domain>\n";
        let copy = equivalent_domain(xml, "copy", "/p/vmm-1.qcow2", "/p/copy.qcow2").unwrap();
        assert!(copy.contains("<name>copy</name>"), "{copy}");
        assert!(copy.contains("/p/copy.qcow2"), "{copy}");
        for gone in ["<uuid>", "metadata", "vmm:instance", "<mac", "vmm-1"] {
            assert!(!copy.contains(gone), "{gone} left in {copy}");
        }
    }
}
