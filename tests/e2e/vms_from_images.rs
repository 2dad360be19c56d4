//! VMs made from images, end to end on real QEMU under libvirtd (`qemu:///system`, TCG:
//! `GUEST_ACCEL=tcg`, see `tests/image/README.md` for why not KVM here):
//!
//! - the test image uploaded through the API; a VM from it with a freshly generated key
//!   answers SSH on the port its `ssh` names, and `hostname` prints the VM's name; deleting
//!   it removes its overlay and seed from the pool and keeps the cached base. Boot-to-SSH and
//!   the time to create a VM from a cached image against a blank disk are printed;
//! - a second host fetches the image on first use and verifies it; a transfer whose bytes
//!   do not match the image's checksum (the coordinator's stored file tampered with after
//!   upload) is refused, and nothing of it is cached on any host;
//! - `network:NAME` (a NAT network the test defines) and `bridge:NAME` (a bridge the test
//!   makes) checked by the domain XML, the reported lease and the tap on the bridge.
//!
//! Network rule: the only connections are to 127.0.0.1 (the API, and SSH through the
//! `user`-mode forward). A guest's private address is compared with libvirt's lease table,
//! never connected to.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use vmm_e2e::cluster::domain_name;
use vmm_e2e::guest::{SshKey, ssh, tail};
use vmm_e2e::virsh::{self, QemuLeftovers};
use vmm_e2e::{AgentOptions, Api, ClusterOptions, TestCluster, test_image, wait_until};

/// Boot to SSH under TCG takes 15-25 s here alone; a busy 2-core CI machine is slower.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// How long a reported address may take to show after the guest's DHCP lease.
const ADDRESS_DEADLINE: Duration = Duration::from_secs(240);

/// An agent on real QEMU with TCG guests.
fn qemu_agent(host_id: &str) -> AgentOptions {
    AgentOptions::qemu(host_id).env("GUEST_ACCEL", "tcg")
}

/// Uploads the test image as the admin and returns its ID.
async fn upload_test_image(admin: &Api, name: &str) -> Result<String> {
    let path = test_image::image().await?;
    let image = admin
        .create_image(&json!({"name": name, "os": "busybox", "default_user": "root"}))
        .await?;
    let uploaded = admin.upload_image(&image.id, std::fs::read(path)?).await?;
    ensure!(uploaded.status == "ready", "{uploaded:?}");
    Ok(image.id)
}

/// `POST /api/vms` with `body`; the VM's JSON once it answered 201.
async fn create(user: &Api, body: &Value) -> Result<Value> {
    let response = user.try_create_vm(body).await?;
    let response = response
        .expect_status(201)
        .with_context(|| format!("creating a VM from {body}"))?;
    Ok(response.body)
}

async fn vm_json(user: &Api, id: &str) -> Result<Value> {
    Ok(user
        .get(&format!("/api/vms/{id}"))
        .await?
        .expect_status(200)?
        .body)
}

fn text<'a>(vm: &'a Value, field: &str) -> Result<&'a str> {
    vm[field]
        .as_str()
        .with_context(|| format!("the VM has no {field:?}: {vm}"))
}

/// The loopback port of the VM's SSH forward; fails unless its host is in 127.0.0.0/8.
fn ssh_port(vm: &Value) -> Result<u16> {
    let ssh = &vm["ssh"];
    let host = ssh["host"]
        .as_str()
        .with_context(|| format!("no ssh host in {vm}"))?;
    let address: std::net::IpAddr = host.parse()?;
    ensure!(
        address.is_loopback(),
        "the test connects only to loopback; the VM's ssh host is {host}"
    );
    let port = ssh["port"]
        .as_u64()
        .with_context(|| format!("no ssh port in {vm}"))?;
    Ok(u16::try_from(port)?)
}

/// Runs `hostname` over SSH until the guest answers; returns what it printed.
async fn hostname_over_ssh(port: u16, key: &SshKey) -> Result<String> {
    wait_until("the guest to answer SSH", BOOT_DEADLINE, || async {
        let out = ssh(port, key, "hostname").await?;
        if out.success {
            Ok(Some(out.stdout.trim().to_owned()))
        } else {
            bail!("ssh: {}", out.stderr.trim())
        }
    })
    .await
}

/// The backing file `qemu-img info` names for a disk (`qemu-img -U`: the VM may run).
async fn backing_file(disk: &Path) -> Result<Option<String>> {
    let output = tokio::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(disk)
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "qemu-img info {}: {}",
        disk.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let info: Value = serde_json::from_slice(&output.stdout)?;
    Ok(info["backing-filename"].as_str().map(str::to_owned))
}

async fn sha256sum(path: &Path) -> Result<String> {
    let output = tokio::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .await?;
    ensure!(output.status.success(), "sha256sum {}", path.display());
    Ok(String::from_utf8(output.stdout)?
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_owned())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_from_an_uploaded_image_answers_ssh_with_its_name() {
    let _libvirtd = virsh::qemu_guard().await;
    virsh::require_qemu_system().await;
    virsh::require_storage_driver().await;
    let agent = qemu_agent("image-host");
    let mut leftovers = QemuLeftovers::new(&agent.storage_pool);
    let cluster = TestCluster::start(ClusterOptions::with_agents(vec![agent]))
        .await
        .unwrap();
    vm_from_image_answers_ssh(&cluster, &mut leftovers)
        .await
        .unwrap();
}

async fn vm_from_image_answers_ssh(
    cluster: &TestCluster,
    leftovers: &mut QemuLeftovers,
) -> Result<()> {
    let admin = cluster.admin().await?;
    let image_id = upload_test_image(&admin, "test-image").await?;
    let user = cluster.user("image-user").await?;
    let keys = tempfile::tempdir()?;
    let key = SshKey::generate(keys.path(), "guest-key").await?;
    user.add_key("laptop", &key.public_key).await?;
    let agent = cluster.agent("image-host");

    let started = Instant::now();
    let vm = create(
        &user,
        &json!({"name": "ssh-guest", "cpu": 1, "memory": 256, "image": "test-image"}),
    )
    .await?;
    let first_create = started.elapsed();
    let vm_id = text(&vm, "id")?.to_owned();
    leftovers.add_domain(&domain_name(&vm_id));
    ensure!(text(&vm, "status")? == "running", "{vm}");
    ensure!(text(&vm, "image")? == image_id, "{vm}");
    ensure!(
        vm["ssh"]["user"] == "root",
        "the image's default user: {vm}"
    );
    let port = ssh_port(&vm)?;

    let printed = hostname_over_ssh(port, &key).await?;
    let boot_to_ssh = started.elapsed();
    ensure!(
        printed == "ssh-guest",
        "hostname printed {printed:?}, the VM is called ssh-guest"
    );
    eprintln!(
        "vm from image: create (first on this host, image fetched) {:.1}s, create to first \
         successful ssh under TCG {:.1}s",
        first_create.as_secs_f64(),
        boot_to_ssh.as_secs_f64()
    );

    // On the host: an overlay of the cached base, and a read-only seed.
    let base = format!("vmm-image-{image_id}");
    let seed = format!("vmm-{vm_id}-seed.img");
    let disk = agent.disk_path(&vm_id);
    let backing = backing_file(&disk).await?;
    ensure!(
        backing
            .as_deref()
            .is_some_and(|backing| backing.ends_with(&base)),
        "the disk's backing file is {backing:?}, not the cached {base}"
    );
    let files = agent.pool_files();
    ensure!(files.contains(&seed), "no seed in the pool: {files:?}");
    let xml = virsh::dumpxml(&domain_name(&vm_id)).await?;
    ensure!(xml.contains("<readonly/>"), "the seed is read-only:\n{xml}");
    ensure!(xml.contains("<backend type='passt'/>"), "{xml}");
    ensure!(
        sha256sum(&agent.pool_dir().join(&base)).await?
            == admin.get_image(&image_id).await?.sha256.unwrap_or_default(),
        "the cached base is the image"
    );

    user.delete_vm(&vm_id).await?;
    let files = agent.pool_files();
    ensure!(
        !files.contains(&seed) && !files.contains(&format!("vmm-{vm_id}.qcow2")),
        "the overlay and the seed are gone: {files:?}"
    );
    ensure!(files.contains(&base), "the cached base stays: {files:?}");

    // Create from the cached image against a blank disk, a few times each, each VM deleted
    // before the next.
    let mut cached = Vec::new();
    let mut blank = Vec::new();
    for round in 0..3 {
        for (from_image, samples) in [(true, &mut cached), (false, &mut blank)] {
            let mut body = json!({"name": format!("timed-{round}-{from_image}"), "cpu": 1,
                "memory": 128, "disk_gb": 1});
            if from_image {
                body["image"] = json!(image_id);
                body["ssh_keys"] = json!([]);
            }
            let started = Instant::now();
            let vm = create(&user, &body).await?;
            samples.push(started.elapsed());
            let id = text(&vm, "id")?.to_owned();
            leftovers.add_domain(&domain_name(&id));
            user.delete_vm(&id).await?;
        }
    }
    eprintln!(
        "create to running (API, real QEMU, TCG), median of 3: from the cached image {:.2}s \
         ({:?}), from a blank disk {:.2}s ({:?})",
        median(cached.clone()).as_secs_f64(),
        cached,
        median(blank.clone()).as_secs_f64(),
        blank
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_host_fetches_and_verifies_the_image_and_a_tampered_one_is_refused() {
    let _libvirtd = virsh::qemu_guard().await;
    virsh::require_qemu_system().await;
    virsh::require_storage_driver().await;
    let agents = vec![qemu_agent("fetch-a"), qemu_agent("fetch-b")];
    let mut leftovers: Vec<QemuLeftovers> = agents
        .iter()
        .map(|agent| QemuLeftovers::new(&agent.storage_pool))
        .collect();
    let cluster = TestCluster::start(ClusterOptions::with_agents(agents).placement("spread"))
        .await
        .unwrap();
    second_host_fetches(&cluster, &mut leftovers[0])
        .await
        .unwrap();
}

async fn second_host_fetches(cluster: &TestCluster, leftovers: &mut QemuLeftovers) -> Result<()> {
    let admin = cluster.admin().await?;
    let image_id = upload_test_image(&admin, "shared-image").await?;
    let sha256 = admin
        .get_image(&image_id)
        .await?
        .sha256
        .context("a ready image has a checksum")?;
    let user = cluster.user("fetch-user").await?;
    let base = format!("vmm-image-{image_id}");

    // Spread placement: the second VM goes to the host without the first.
    let mut hosts = HashSet::new();
    for name in ["first", "second"] {
        let vm = create(
            &user,
            &json!({"name": name, "cpu": 1, "memory": 128, "image": "shared-image",
                "ssh_authorized_keys": []}),
        )
        .await?;
        leftovers.add_domain(&domain_name(text(&vm, "id")?));
        hosts.insert(text(&vm, "host")?.to_owned());
    }
    ensure!(hosts.len() == 2, "the VMs share a host: {hosts:?}");
    for host in ["fetch-a", "fetch-b"] {
        let agent = cluster.agent(host);
        let cached = agent.pool_dir().join(&base);
        ensure!(cached.is_file(), "{host} has no cached {base}");
        ensure!(
            sha256sum(&cached).await? == sha256,
            "{host}'s cached copy is not the image"
        );
        let log = agent.log();
        ensure!(
            log.contains("image fetched, verified and cached"),
            "{host} fetched the image itself:\n{}",
            tail(&log, 20)
        );
    }

    // An image whose stored file no longer matches its checksum: every byte after the
    // first sector turned upside down, size kept.
    let tampered = admin
        .create_image(&json!({"name": "tampered-image", "os": "busybox"}))
        .await?;
    let mut raw = vec![0_u8; 1024 * 1024];
    raw[510] = 0x55;
    raw[511] = 0xaa;
    admin.upload_image(&tampered.id, raw.clone()).await?;
    let stored = cluster
        .coordinator_data_dir()
        .join("images")
        .join(&tampered.id);
    let mut bytes = std::fs::read(&stored)?;
    ensure!(bytes == raw, "the coordinator stores the uploaded bytes");
    for byte in &mut bytes[512..] {
        *byte = !*byte;
    }
    std::fs::write(&stored, &bytes)?;

    let refused = user
        .try_create_vm(&json!({"name": "from-tampered", "cpu": 1, "memory": 128,
            "image": "tampered-image", "ssh_authorized_keys": []}))
        .await?;
    let message = refused.expect_error_in(&[409, 422, 500, 502, 503])?;
    ensure!(
        message.contains("SHA-256"),
        "the refusal names the checksum: {message}"
    );
    for host in ["fetch-a", "fetch-b"] {
        let agent = cluster.agent(host);
        let files = agent.pool_files();
        ensure!(
            !files.iter().any(|name| name.contains(&tampered.id)),
            "{host} cached something of the tampered image: {files:?}"
        );
        let cache_dir = agent.data_dir.join("image-cache");
        let kept: Vec<String> = std::fs::read_dir(&cache_dir)
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok())
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        ensure!(
            !kept.iter().any(|name| name.contains(&tampered.id)),
            "{host} kept a file of the tampered image: {kept:?}"
        );
    }
    let vms = user.list_vms().await?;
    ensure!(
        vms.iter()
            .all(|vm| vm.name != "from-tampered" || vm.status == "error"),
        "the refused VM does not run: {vms:?}"
    );
    Ok(())
}

/// A libvirt NAT network the test defines and removes again.
struct TestNetwork {
    name: String,
}

impl TestNetwork {
    async fn define() -> Result<Self> {
        let unique = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let name = format!("vmm-e2e-{unique}");
        let bridge = format!("vmmnat{unique}");
        // A /24 no other network of the host uses.
        let taken = tokio::process::Command::new("ip")
            .args(["-4", "-o", "addr"])
            .output()
            .await?;
        let taken = String::from_utf8_lossy(&taken.stdout).into_owned();
        let third = (150..250)
            .find(|n| !taken.contains(&format!("192.168.{n}.")))
            .context("no free 192.168.x.0/24")?;
        let xml = format!(
            "<network><name>{name}</name><forward mode='nat'/>\
             <bridge name='{bridge}' stp='on' delay='0'/>\
             <ip address='192.168.{third}.1' netmask='255.255.255.0'>\
             <dhcp><range start='192.168.{third}.10' end='192.168.{third}.99'/></dhcp>\
             </ip></network>"
        );
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("network.xml");
        std::fs::write(&path, xml)?;
        virsh::virsh_ok(&["net-define", &path.to_string_lossy()]).await?;
        let network = Self { name };
        virsh::virsh_ok(&["net-start", &network.name]).await?;
        Ok(network)
    }

    /// The addresses `virsh net-dhcp-leases` lists for a MAC.
    async fn leases_of(&self, mac: &str) -> Result<Vec<String>> {
        let table = virsh::virsh_ok(&["net-dhcp-leases", &self.name]).await?;
        Ok(table
            .lines()
            .filter(|line| {
                line.to_ascii_lowercase()
                    .contains(&mac.to_ascii_lowercase())
            })
            .filter_map(|line| {
                line.split_whitespace()
                    .find(|field| field.contains('/') && field.contains('.'))
                    .and_then(|cidr| cidr.split('/').next())
                    .map(str::to_owned)
            })
            .collect())
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let run = |args: &[&str]| {
            let _ = std::process::Command::new("virsh")
                .args(["-c", "qemu:///system"])
                .args(args)
                .output();
        };
        run(&["net-destroy", &self.name]);
        run(&["net-undefine", &self.name]);
    }
}

/// A host bridge the test makes with `ip link` and removes again.
struct TestBridge(String);

impl TestBridge {
    async fn create() -> Result<Self> {
        let name = format!("vmmbr{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        for args in [
            vec!["link", "add", name.as_str(), "type", "bridge"],
            vec!["link", "set", name.as_str(), "up"],
        ] {
            let status = tokio::process::Command::new("ip")
                .args(&args)
                .status()
                .await?;
            ensure!(status.success(), "ip {}", args.join(" "));
        }
        Ok(Self(name))
    }

    /// The interfaces enslaved to the bridge.
    async fn ports(&self) -> Result<Vec<String>> {
        let output = tokio::process::Command::new("ip")
            .args(["-o", "link", "show", "master", &self.0])
            .output()
            .await?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split(':').nth(1))
            .map(|name| name.trim().split('@').next().unwrap_or_default().to_owned())
            .collect())
    }
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .output();
    }
}

/// Panics, naming the fix, unless libvirtd has its network driver.
async fn require_network_driver() {
    let output = virsh::virsh(&["net-list", "--all"])
        .await
        .expect("virsh runs");
    assert!(
        output.status.success(),
        "`virsh net-list` failed: {}\nlibvirtd needs its network driver \
         (libvirt-daemon-driver-network, dnsmasq-base), loaded: run scripts/setup-host.sh as \
         root, which restarts a libvirtd started before the driver was installed",
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn network_and_bridge_modes_show_in_the_domain_and_the_lease_is_reported() {
    let _libvirtd = virsh::qemu_guard().await;
    virsh::require_qemu_system().await;
    virsh::require_storage_driver().await;
    require_network_driver().await;
    let network = TestNetwork::define().await.unwrap();
    let bridge = TestBridge::create().await.unwrap();
    let agents = vec![
        qemu_agent("on-network").env("NETWORK", &format!("network:{}", network.name)),
        qemu_agent("on-bridge").env("NETWORK", &format!("bridge:{}", bridge.0)),
    ];
    let mut leftovers: Vec<QemuLeftovers> = agents
        .iter()
        .map(|agent| QemuLeftovers::new(&agent.storage_pool))
        .collect();
    let cluster = TestCluster::start(ClusterOptions::with_agents(agents).placement("spread"))
        .await
        .unwrap();
    network_and_bridge(&cluster, &network, &bridge, &mut leftovers[0])
        .await
        .unwrap();
}

async fn network_and_bridge(
    cluster: &TestCluster,
    network: &TestNetwork,
    bridge: &TestBridge,
    leftovers: &mut QemuLeftovers,
) -> Result<()> {
    let admin = cluster.admin().await?;
    upload_test_image(&admin, "net-image").await?;
    let user = cluster.user("net-user").await?;
    let mut by_host = std::collections::HashMap::new();
    for name in ["one", "two"] {
        let vm = create(
            &user,
            &json!({"name": name, "cpu": 1, "memory": 256, "image": "net-image",
                "ssh_authorized_keys": []}),
        )
        .await?;
        leftovers.add_domain(&domain_name(text(&vm, "id")?));
        by_host.insert(text(&vm, "host")?.to_owned(), vm);
    }
    let on_network = by_host
        .get("on-network")
        .context("no VM on the network host")?;
    let on_bridge = by_host
        .get("on-bridge")
        .context("no VM on the bridge host")?;
    for vm in [on_network, on_bridge] {
        ensure!(vm["ssh"].is_null(), "only user mode forwards SSH: {vm}");
    }

    // The network VM: its NIC on the network, and the lease dnsmasq gave it reported.
    let domain = domain_name(text(on_network, "id")?);
    let xml = virsh::dumpxml(&domain).await?;
    ensure!(
        xml.contains("<interface type='network'>")
            && xml.contains(&format!("network='{}'", network.name)),
        "the NIC is on {}:\n{xml}",
        network.name
    );
    let mac = first_mac(&xml)?;
    let id = text(on_network, "id")?.to_owned();
    let reported = wait_until("the VM's address in the API", ADDRESS_DEADLINE, || async {
        let vm = vm_json(&user, &id).await?;
        let addresses: Vec<String> = vm["addresses"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok((!addresses.is_empty()).then_some(addresses))
    })
    .await?;
    let leases = network.leases_of(&mac).await?;
    ensure!(
        !leases.is_empty() && reported == leases,
        "the API reports {reported:?}, libvirt's lease table for {mac} says {leases:?}"
    );

    // The bridge VM: its NIC is a tap on the bridge.
    let domain = domain_name(text(on_bridge, "id")?);
    let xml = virsh::dumpxml(&domain).await?;
    ensure!(
        xml.contains("<interface type='bridge'>")
            && xml.contains(&format!("<source bridge='{}'/>", bridge.0)),
        "the NIC is on {}:\n{xml}",
        bridge.0
    );
    let ports = bridge.ports().await?;
    ensure!(
        ports
            .iter()
            .any(|port| xml.contains(&format!("dev='{port}'"))),
        "the VM's tap is not on the bridge: ports {ports:?}\n{xml}"
    );
    for vm in by_host.values() {
        user.delete_vm(text(vm, "id")?).await?;
    }
    ensure!(
        bridge.ports().await?.is_empty(),
        "the tap leaves the bridge with its VM"
    );
    Ok(())
}

/// The MAC of the domain's first NIC.
fn first_mac(xml: &str) -> Result<String> {
    let start = xml
        .find("<mac address='")
        .context("the domain has no MAC")?
        + "<mac address='".len();
    Ok(xml[start..start + 17].to_owned())
}
