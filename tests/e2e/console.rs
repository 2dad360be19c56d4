//! Consoles end to end on real QEMU under libvirtd (`qemu:///system`, TCG), through the
//! coordinator's WebSocket and the agent's console stream:
//!
//! - the serial console of a VM from the test image: a prompt, a command and its output,
//!   the keystroke round trip timed; one session at a time (409), a take-over closing the
//!   first session with its reason; a guest writing without pause to a client that reads
//!   nothing for a minute while the coordinator's memory is sampled (backpressure); the
//!   agent killed mid-session, which closes the WebSocket with its reason;
//! - the screen of a VM: the RFB handshake through the relay (version, security type None,
//!   ClientInit/ServerInit) and a framebuffer update, with the `binary` subprotocol noVNC
//!   may ask for;
//! - tickets: used twice, expired, presented by another user, for another VM, a plain GET;
//!   another user's VM (404) and a VM that is not running (409).
//!
//! Network rule: every connection is to the coordinator on 127.0.0.1.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use vmm_e2e::cluster::domain_name;
use vmm_e2e::console::{self, ConsoleClient, rss_kib};
use vmm_e2e::prometheus::Exposition;
use vmm_e2e::virsh::{self, QemuLeftovers};
use vmm_e2e::{AgentOptions, Api, ClusterOptions, TestCluster, test_image};

const HOST: &str = "console-host";
/// Boot to a shell under TCG on a busy 2-core machine.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);
const ANSWER: Duration = Duration::from_secs(30);
/// Tickets of this cluster expire after this (short, so the test can wait it out).
const TICKET_TTL_SECS: u64 = 3;
/// How long the client reads nothing while the guest writes.
const STALL: Duration = Duration::from_secs(60);
/// How much the coordinator's (and the agent's) memory may grow meanwhile: generous
/// (allocator noise, metrics). A TCG guest's serial port writes some 30 KB/s here, so a
/// minute of it is below this: the RSS bound alone would miss a relay that buffers; the
/// coordinator's own tests flood a console far faster and bound what gets through
/// (`coordinator/tests/console_flow.rs`).
const STALL_GROWTH_LIMIT_KIB: u64 = 8 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn consoles_of_real_vms_through_the_coordinator() {
    let _libvirtd = virsh::qemu_guard().await;
    virsh::require_qemu_system().await;
    virsh::require_storage_driver().await;
    let agent = AgentOptions::qemu(HOST).env("GUEST_ACCEL", "tcg");
    let mut leftovers = QemuLeftovers::new(&agent.storage_pool);
    let options = ClusterOptions::with_agents(vec![agent])
        .coordinator_env("CONSOLE_TICKET_TTL", &format!("{TICKET_TTL_SECS}s"));
    let mut cluster = TestCluster::start(options).await.unwrap();
    consoles(&mut cluster, &mut leftovers).await.unwrap();
}

async fn consoles(cluster: &mut TestCluster, leftovers: &mut QemuLeftovers) -> Result<()> {
    let admin = cluster.admin().await?;
    let image = test_image::image().await?;
    let created = admin
        .create_image(&json!({"name": "console-image", "os": "busybox", "default_user": "root"}))
        .await?;
    admin
        .upload_image(&created.id, std::fs::read(image)?)
        .await?;
    let alice = cluster.user("console-alice").await?;
    let bob = cluster.user("console-bob").await?;
    let serial_vm = create(
        &alice,
        &json!({"name": "console-vm", "cpu": 1, "memory": 256, "image": "console-image"}),
    )
    .await?;
    leftovers.add_domain(&domain_name(&serial_vm));
    // A VM with a blank disk: its screen shows the BIOS, which is all VNC needs.
    let screen_vm = create(
        &alice,
        &json!({"name": "screen-vm", "cpu": 1, "memory": 64, "disk_gb": 1}),
    )
    .await?;
    leftovers.add_domain(&domain_name(&screen_vm));
    let base = cluster.http_url().to_owned();

    tickets(&base, &alice, &bob, &serial_vm, &screen_vm).await?;
    let mut session = serial_session(&base, &alice, &serial_vm).await?;
    let mut session = take_over(&base, &alice, &serial_vm, &mut session).await?;
    metrics(&cluster.api()).await?;
    screen(&base, &alice, &screen_vm).await?;
    backpressure(cluster, &mut session).await?;

    // The agent dies mid-session: the client is told, with a reason.
    let killed = Instant::now();
    cluster.kill_agent(HOST);
    let closed = session.closed(ANSWER).await?;
    eprintln!(
        "console: agent killed; WebSocket closed {:.2}s later with {} {:?}",
        killed.elapsed().as_secs_f64(),
        closed.code,
        closed.reason
    );
    ensure!(closed.code == 4002, "{closed:?}");
    ensure!(closed.reason.contains("agent went away"), "{closed:?}");
    Ok(())
}

async fn create(user: &Api, body: &Value) -> Result<String> {
    let vm = user
        .try_create_vm(body)
        .await?
        .expect_status(201)
        .with_context(|| format!("creating {body}"))?
        .body;
    ensure!(vm["status"] == "running", "{vm}");
    Ok(vm["id"].as_str().context("a VM ID")?.to_owned())
}

/// Who may use which ticket, and when.
async fn tickets(
    base: &str,
    alice: &Api,
    bob: &Api,
    serial_vm: &str,
    screen_vm: &str,
) -> Result<()> {
    // Another user's VM is not there for bob.
    let response = console::try_ticket(bob, serial_vm, "serial", false).await?;
    response.expect_error(404)?;
    let bad_type = alice
        .post(
            &format!("/api/vms/{serial_vm}/console"),
            &json!({"type": "rdp"}),
        )
        .await?;
    bad_type.expect_error_in(&[400, 422])?;

    let ticket = console::ticket(alice, serial_vm, "serial", false).await?;
    ensure!(ticket.ticket.len() >= 32, "{ticket:?}");
    ensure!(
        ticket
            .url
            .starts_with(&format!("/api/console/{}", ticket.ticket)),
        "{ticket:?}"
    );
    // A plain GET is told to use a WebSocket, and does not use the ticket up.
    let plain = alice.get(&ticket.url).await?;
    let message = plain.expect_error(400)?;
    ensure!(message.contains("WebSocket"), "{message}");
    let session = console::open(base, &ticket).await?;
    session.close().await?;
    // Used once: never again.
    let reused = console::refused(base, &ticket.url, None).await?;
    ensure!(reused.status == 401, "{reused:?}");
    ensure!(reused.body.contains("used already"), "{reused:?}");

    // Presented with another user's token.
    let ticket = console::ticket(alice, serial_vm, "serial", false).await?;
    let foreign = console::refused(base, &ticket.url, bob.token()).await?;
    ensure!(
        foreign.status == 401 && foreign.body.contains("another user"),
        "{foreign:?}"
    );
    // Presented for another VM.
    let ticket = console::ticket(alice, serial_vm, "serial", false).await?;
    let elsewhere = format!("/api/console/{}?vm={screen_vm}&type=serial", ticket.ticket);
    let other_vm = console::refused(base, &elsewhere, None).await?;
    ensure!(
        other_vm.status == 401 && other_vm.body.contains("another VM"),
        "{other_vm:?}"
    );
    // With the owner's own token it is fine.
    let ticket = console::ticket(alice, serial_vm, "serial", false).await?;
    match console::connect(base, &ticket.url, alice.token(), None).await? {
        Ok(session) => session.close().await?,
        Err(refused) => anyhow::bail!("the owner's token with the ticket: {refused:?}"),
    }
    // Expired.
    let ticket = console::ticket(alice, serial_vm, "serial", false).await?;
    tokio::time::sleep(Duration::from_secs(TICKET_TTL_SECS + 1)).await;
    let expired = console::refused(base, &ticket.url, None).await?;
    ensure!(
        expired.status == 401 && expired.body.contains("expired"),
        "{expired:?}"
    );
    Ok(())
}

/// A prompt, a command and its output, and the keystroke round trip.
async fn serial_session(base: &str, alice: &Api, vm: &str) -> Result<ConsoleClient> {
    let ticket = console::ticket(alice, vm, "serial", false).await?;
    let mut session = console::open(base, &ticket).await?;
    let started = Instant::now();
    // The guest may still be booting: press Enter until a root prompt answers.
    loop {
        let from = session.received.len();
        session.send(b"\r").await?;
        if session
            .read_until_after(from, "# ", Duration::from_secs(3))
            .await
            .is_ok()
        {
            break;
        }
        ensure!(
            started.elapsed() < BOOT_DEADLINE,
            "no shell prompt on the serial console within {BOOT_DEADLINE:?}: {}",
            session.tail(2000)
        );
    }
    eprintln!(
        "console: a root prompt {:.1}s after the session opened",
        started.elapsed().as_secs_f64()
    );

    // Keystroke round trips: each character echoed by the guest's line editor.
    let mut round_trips = Vec::new();
    for key in b"abcdefghij" {
        let from = session.received.len();
        let sent = Instant::now();
        session.send(&[*key]).await?;
        session
            .read_until_after(from, &(*key as char).to_string(), ANSWER)
            .await?;
        round_trips.push(sent.elapsed());
    }
    // Erase them.
    session.send(&[0x7f; 10]).await?;
    round_trips.sort();
    eprintln!(
        "console: keystroke round trip (browser → coordinator → agent → guest → back), 10 \
         keys: median {:.1} ms, max {:.1} ms",
        round_trips[5].as_secs_f64() * 1000.0,
        round_trips[9].as_secs_f64() * 1000.0
    );

    let nonce = std::process::id();
    let from = session.received.len();
    session
        .send(format!("echo console-$((6*7))-{nonce}\r").as_bytes())
        .await?;
    session
        .read_until_after(from, &format!("console-42-{nonce}"), ANSWER)
        .await?;
    let from = session.received.len();
    session.send(b"hostname\r").await?;
    session
        .read_until_after(from, "\nconsole-vm\r", ANSWER)
        .await?;
    Ok(session)
}

/// One writer at a time; `force` takes over and closes the first session with its reason.
async fn take_over(
    base: &str,
    alice: &Api,
    vm: &str,
    first: &mut ConsoleClient,
) -> Result<ConsoleClient> {
    let busy = console::try_ticket(alice, vm, "serial", false).await?;
    let message = busy.expect_error(409)?;
    ensure!(message.contains("force"), "{message}");
    let ticket = console::ticket(alice, vm, "serial", true).await?;
    let mut second = console::open(base, &ticket).await?;
    let closed = first.closed(ANSWER).await?;
    ensure!(closed.code == 4001, "{closed:?}");
    ensure!(closed.reason.contains("took over"), "{closed:?}");
    let from = second.received.len();
    second.send(b"echo second-$((2+3))\r").await?;
    second.read_until_after(from, "second-5", ANSWER).await?;
    Ok(second)
}

/// The open session and the bytes relayed show in the metrics.
async fn metrics(api: &Api) -> Result<()> {
    let text = api.get_text("/api/metrics").await?;
    let exposition = Exposition::parse(&text)?;
    let open = exposition.value("console_sessions_open", &[("type", "serial")])?;
    ensure!(
        open == 1.0,
        "one serial session is open, the metrics say {open}"
    );
    let to_client = exposition.sum(
        "console_bytes_total",
        &[("type", "serial"), ("direction", "to_client")],
    );
    let to_guest = exposition.sum(
        "console_bytes_total",
        &[("type", "serial"), ("direction", "to_guest")],
    );
    ensure!(to_client > 0.0 && to_guest > 0.0, "{to_client} {to_guest}");
    let taken_over = exposition.sum(
        "console_sessions_total",
        &[("type", "serial"), ("end", "taken_over")],
    );
    ensure!(taken_over >= 1.0, "{taken_over}");
    Ok(())
}

/// The screen: the RFB handshake through the relay, then a framebuffer update.
async fn screen(base: &str, alice: &Api, vm: &str) -> Result<()> {
    let ticket = console::ticket(alice, vm, "vnc", false).await?;
    let mut rfb = match console::connect(base, &ticket.url, None, Some("binary")).await? {
        Ok(session) => session,
        Err(refused) => anyhow::bail!("the screen was refused: {refused:?}"),
    };
    ensure!(
        rfb.protocol.as_deref() == Some("binary"),
        "the subprotocol noVNC asks for is chosen: {:?}",
        rfb.protocol
    );
    let started = Instant::now();
    let version = rfb.read_exact(12, ANSWER).await?;
    ensure!(version.starts_with(b"RFB 003."), "{version:?}");
    rfb.send(b"RFB 003.008\n").await?;
    let count = rfb.read_exact(1, ANSWER).await?[0];
    let types = rfb.read_exact(usize::from(count), ANSWER).await?;
    ensure!(
        types == [1],
        "security types offered on the relay: {types:?} (1 is None)"
    );
    rfb.send(&[1]).await?;
    let result = rfb.read_exact(4, ANSWER).await?;
    ensure!(result == [0, 0, 0, 0], "SecurityResult {result:?}");
    rfb.send(&[1]).await?; // ClientInit, shared
    let init = rfb.read_exact(24, ANSWER).await?;
    let width = u16::from_be_bytes([init[0], init[1]]);
    let height = u16::from_be_bytes([init[2], init[3]]);
    let name_length = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
    let name = rfb.read_exact(name_length as usize, ANSWER).await?;
    ensure!(width > 0 && height > 0, "{width}x{height}");
    let mut request = vec![3, 0, 0, 0, 0, 0];
    request.extend_from_slice(&width.to_be_bytes());
    request.extend_from_slice(&height.to_be_bytes());
    rfb.send(&request).await?;
    let update = rfb.read_exact(4, ANSWER).await?;
    ensure!(update[0] == 0, "a FramebufferUpdate (type 0): {update:?}");
    let rectangles = u16::from_be_bytes([update[2], update[3]]);
    ensure!(rectangles > 0, "{update:?}");
    eprintln!(
        "console: VNC {width}x{height} {:?}, handshake and first update in {:.0} ms",
        String::from_utf8_lossy(&name),
        started.elapsed().as_secs_f64() * 1000.0
    );
    rfb.close().await?;

    // Stopped: no console.
    alice.action(vm, "force_stop").await?;
    let stopped = console::try_ticket(alice, vm, "vnc", false).await?;
    stopped.expect_error(409)?;
    Ok(())
}

/// A guest writing without pause to a client that reads nothing: the coordinator's memory
/// stays flat, and the output flows again once the client reads.
async fn backpressure(cluster: &TestCluster, session: &mut ConsoleClient) -> Result<()> {
    let from = session.received.len();
    session.send(b"yes console-flood\r").await?;
    session
        .read_until_after(
            from,
            "console-flood\r\nconsole-flood\r\nconsole-flood",
            ANSWER,
        )
        .await?;
    session.read_for(Duration::from_secs(2)).await?;
    let flowing = session.received.len() - from;
    let coordinator = cluster.coordinator_pid();
    let agent = cluster.agent(HOST).pid();
    let before = (rss_kib(coordinator)?, rss_kib(agent)?);
    let mut samples = vec![before];
    let stalled = Instant::now();
    while stalled.elapsed() < STALL {
        tokio::time::sleep(Duration::from_secs(5)).await;
        samples.push((rss_kib(coordinator)?, rss_kib(agent)?));
    }
    let coordinator_max = samples.iter().map(|s| s.0).max().unwrap_or_default();
    let agent_max = samples.iter().map(|s| s.1).max().unwrap_or_default();
    eprintln!(
        "console: guest writing, client reading nothing for {}s: coordinator RSS {} KiB → max \
         {} KiB (+{} KiB), agent RSS {} KiB → max {} KiB (+{} KiB); samples (coordinator, \
         agent) KiB: {samples:?}; the guest wrote {} B/s while read",
        STALL.as_secs(),
        before.0,
        coordinator_max,
        coordinator_max.saturating_sub(before.0),
        before.1,
        agent_max,
        agent_max.saturating_sub(before.1),
        flowing / 2,
    );
    ensure!(
        coordinator_max.saturating_sub(before.0) < STALL_GROWTH_LIMIT_KIB,
        "the coordinator grew by {} KiB while the client read nothing",
        coordinator_max - before.0
    );
    ensure!(
        agent_max.saturating_sub(before.1) < STALL_GROWTH_LIMIT_KIB,
        "the agent grew by {} KiB while the client read nothing",
        agent_max - before.1
    );
    // Reading again: it flows (what waited in buffers first), then Ctrl-C stops it.
    let resumed = session.received.len();
    session.read_for(Duration::from_secs(3)).await?;
    ensure!(
        session.received.len() - resumed > 10_000,
        "the output flows again once the client reads"
    );
    stop_the_flood(session).await
}

/// Ctrl-C stops the guest's `yes`; an echo that comes back shows the shell answers again.
/// Pressed again (with a new echo) when nothing came back after a while, as a user would:
/// on a loaded CI machine one press once got no echo within two minutes (why is not known:
/// the agent had written every byte to the guest's serial port). Each press and its outcome
/// are printed, so a failure says what the console showed.
async fn stop_the_flood(session: &mut ConsoleClient) -> Result<()> {
    const PRESS_PATIENCE: Duration = Duration::from_secs(20);
    const PRESSES: u32 = 6;
    let stopping = Instant::now();
    for press in 1..=PRESSES {
        let from = session.received.len();
        session.send(&[3]).await?;
        // The shell computes the marker, so the echo of the typed line does not match it.
        session
            .send(format!("\recho flood-$((40+{press}))-over\r").as_bytes())
            .await?;
        let marker = format!("flood-{}-over", 40 + press);
        let answered = session
            .read_until_after(from, &marker, PRESS_PATIENCE)
            .await;
        eprintln!(
            "console: Ctrl-C press {press}, {:.1}s after the first: {} B received since the \
             press; {}",
            stopping.elapsed().as_secs_f64(),
            session.received.len() - from,
            match &answered {
                Ok(_) => "the echo came back".to_owned(),
                Err(error) => format!("{error:#}"),
            }
        );
        if answered.is_ok() {
            return Ok(());
        }
    }
    anyhow::bail!(
        "the flood did not stop after {PRESSES} presses of Ctrl-C over {:.0}s; the console \
         showed: {}",
        stopping.elapsed().as_secs_f64(),
        session.tail(600)
    )
}
