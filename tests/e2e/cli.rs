//! `vmmctl`, the command-line client, run as a process against a live cluster through a
//! whole session: login (the token kept 0600), create, wait, snapshot, restore, delete, with
//! `--output json` parsed; API tokens through `VMM_TOKEN`, a read token refused a change
//! with its exit code; and the exit codes of the other failures (not found, conflict, not
//! logged in, usage, unreachable).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use vmm_e2e::cluster::USER_PASSWORD;
use vmm_e2e::process::binary_path;
use vmm_e2e::{ClusterOptions, TestCluster};

/// What one run of `vmmctl` did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Result<Self> {
        ensure!(
            self.code == 0,
            "vmmctl failed with {}: {}",
            self.code,
            self.stderr
        );
        Ok(self)
    }

    fn failed_with(self, code: i32) -> Result<Self> {
        ensure!(
            self.code == code,
            "expected exit code {code}, got {}; stdout {:?}, stderr {:?}",
            self.code,
            self.stdout,
            self.stderr
        );
        ensure!(
            self.stderr.starts_with("vmmctl: ") || code == 2,
            "the error goes to stderr: {:?}",
            self.stderr
        );
        Ok(self)
    }

    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("--output json prints JSON: {:?}", self.stdout))
    }
}

/// `vmmctl` with a home of its own: no stored login but what this session stores, and only
/// the environment given.
#[derive(Clone)]
struct Vmmctl {
    binary: PathBuf,
    home: PathBuf,
    url: String,
}

impl Vmmctl {
    async fn run(&self, args: &[&str]) -> Result<Run> {
        self.run_with(args, &[], None).await
    }

    async fn run_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Result<Run> {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(args)
            .env_clear()
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join("config"))
            .env("VMM_URL", &self.url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().context("starting vmmctl")?;
        let mut input = child.stdin.take().context("stdin")?;
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).await?;
        }
        drop(input);
        let output = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            child.wait_with_output(),
        )
        .await
        .with_context(|| format!("vmmctl {args:?} did not finish"))??;
        Ok(Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    fn credentials(&self) -> PathBuf {
        self.home
            .join("config")
            .join("vmmctl")
            .join("credentials.json")
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_session_through_vmmctl() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    session(&cluster).await.unwrap();
}

async fn session(cluster: &TestCluster) -> Result<()> {
    cluster.api().register("alice", USER_PASSWORD).await?;
    let home = tempfile::tempdir()?;
    let cli = Vmmctl {
        binary: binary_path("vmmctl")?,
        home: home.path().to_path_buf(),
        url: cluster.http_url().to_owned(),
    };

    // Not logged in yet: exit code 4, saying what to do.
    let run = cli.run(&["vm", "list"]).await?.failed_with(4)?;
    ensure!(run.stderr.contains("vmmctl login"), "{}", run.stderr);

    // Login: a wrong password is the API's 401; the right one keeps the token, 0600.
    cli.run_with(
        &["login", "--username", "alice", "--password-stdin"],
        &[],
        Some("not-the-password\n"),
    )
    .await?
    .failed_with(4)?;
    ensure!(!cli.credentials().exists(), "a failed login keeps nothing");
    cli.run_with(
        &[
            "login",
            "--username",
            "alice",
            "--password-stdin",
            "-o",
            "json",
        ],
        &[],
        Some(&format!("{USER_PASSWORD}\n")),
    )
    .await?
    .ok()?;
    check_private(&cli.credentials())?;
    let stored = std::fs::read_to_string(cli.credentials())?;
    ensure!(
        !stored.contains(USER_PASSWORD),
        "the password is never stored"
    );

    // Create, wait, list: JSON for scripts.
    let vm = cli
        .run(&[
            "vm",
            "create",
            "web-1",
            "--cpu",
            "1",
            "--memory",
            "128",
            "--disk-gb",
            "1",
            "-o",
            "json",
        ])
        .await?
        .ok()?
        .json()?;
    ensure!(vm["name"] == "web-1" && vm["status"] == "running", "{vm}");
    let id = vm["id"].as_str().context("id")?.to_owned();
    let waited = cli
        .run(&["vm", "wait", "web-1", "--timeout", "60s", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    ensure!(
        waited["id"] == id.as_str() && waited["status"] == "running",
        "{waited}"
    );
    let listed = cli.run(&["vm", "list", "-o", "json"]).await?.ok()?.json()?;
    ensure!(
        listed.as_array().map(Vec::len) == Some(1) && listed[0]["id"] == id.as_str(),
        "{listed}"
    );
    // The table names the VM too.
    let table = cli.run(&["vm", "list"]).await?.ok()?;
    ensure!(
        table.stdout.starts_with("ID") && table.stdout.contains("web-1"),
        "{}",
        table.stdout
    );
    // The same name again: the API's 409 and its message.
    let run = cli
        .run(&[
            "vm",
            "create",
            "web-1",
            "--cpu",
            "1",
            "--memory",
            "128",
            "--disk-gb",
            "1",
        ])
        .await?
        .failed_with(5)?;
    ensure!(
        run.stderr.contains("web-1") && run.stderr.contains("409"),
        "{}",
        run.stderr
    );
    cli.run(&["vm", "show", "no-such-vm"])
        .await?
        .failed_with(3)?;

    // Snapshot of the running VM, stop it, restore: it runs again.
    let snapshot = cli
        .run(&["snapshot", "create", "web-1", "snap-1", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    ensure!(
        snapshot["name"] == "snap-1" && snapshot["vm_status"] == "running",
        "{snapshot}"
    );
    let stopped = cli
        .run(&["vm", "stop", &id, "-o", "json"])
        .await?
        .ok()?
        .json()?;
    ensure!(stopped["status"] == "stopped", "{stopped}");
    cli.run(&[
        "vm",
        "wait",
        "web-1",
        "--status",
        "stopped",
        "--timeout",
        "30s",
    ])
    .await?
    .ok()?;
    let restored = cli
        .run(&["snapshot", "restore", "web-1", "snap-1", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    ensure!(
        restored["status"] == "running",
        "restored as taken: {restored}"
    );
    let snapshots = cli
        .run(&["snapshot", "list", "web-1", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    ensure!(snapshots.as_array().map(Vec::len) == Some(1), "{snapshots}");
    cli.run(&["snapshot", "delete", "web-1", "snap-1"])
        .await?
        .ok()?;
    let snapshots = cli
        .run(&["snapshot", "list", "web-1", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    ensure!(snapshots == serde_json::json!([]), "{snapshots}");

    // API tokens: created once, used through VMM_TOKEN without any stored login.
    let read = cli
        .run(&[
            "token",
            "create",
            "ci-read",
            "--scope",
            "read",
            "--expires-in",
            "1h",
            "-o",
            "json",
        ])
        .await?
        .ok()?
        .json()?;
    let read_token = read["token"].as_str().context("token")?.to_owned();
    ensure!(read_token.starts_with("vmm_pat_"), "{read}");
    let write_token = cli
        .run(&["token", "create", "ci-write", "--scope", "write"])
        .await?
        .ok()?
        .stdout
        .trim()
        .to_owned();
    ensure!(
        write_token.starts_with("vmm_pat_"),
        "the table form prints the token alone"
    );
    let tokens = cli
        .run(&["token", "list", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    let mut names: Vec<&str> = tokens
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|token| token["name"].as_str())
        .collect();
    names.sort_unstable();
    ensure!(names == ["ci-read", "ci-write"], "{tokens}");
    ensure!(
        !tokens.to_string().contains(&read_token),
        "lists never show tokens"
    );

    let elsewhere = tempfile::tempdir()?;
    let script = Vmmctl {
        binary: cli.binary.clone(),
        home: elsewhere.path().to_path_buf(),
        url: cli.url.clone(),
    };
    let with_read = [("VMM_TOKEN", read_token.as_str())];
    let listed = script
        .run_with(&["vm", "list", "-o", "json"], &with_read, None)
        .await?
        .ok()?
        .json()?;
    ensure!(
        listed[0]["name"] == "web-1",
        "the read token reads: {listed}"
    );
    let run = script
        .run_with(&["vm", "stop", "web-1"], &with_read, None)
        .await?
        .failed_with(4)?;
    ensure!(run.stderr.contains("read scope"), "{}", run.stderr);

    // Delete with the write token; the VM is gone for everyone.
    let with_write = [("VMM_TOKEN", write_token.as_str())];
    script
        .run_with(&["vm", "delete", "web-1"], &with_write, None)
        .await?
        .ok()?;
    cli.run(&["vm", "show", &id]).await?.failed_with(3)?;
    let listed = cli.run(&["vm", "list", "-o", "json"]).await?.ok()?.json()?;
    ensure!(listed == serde_json::json!([]), "{listed}");

    // Revoked: refused at once.
    cli.run(&["token", "revoke", "ci-read"]).await?.ok()?;
    script
        .run_with(&["vm", "list"], &with_read, None)
        .await?
        .failed_with(4)?;

    // Usage errors are clap's exit code 2; an unreachable coordinator is 7.
    cli.run(&["vm", "frobnicate"]).await?.failed_with(2)?;
    let closed = vmm_e2e::cluster::free_port()?;
    script
        .run_with(
            &["--url", &format!("http://{closed}"), "vm", "list"],
            &with_write,
            None,
        )
        .await?
        .failed_with(7)?;
    let completions = cli.run(&["completions", "bash"]).await?.ok()?;
    ensure!(completions.stdout.contains("vmmctl"), "a completion script");

    cli.run(&["logout"]).await?.ok()?;
    ensure!(!cli.credentials().exists(), "logout forgets the token");
    Ok(())
}

fn check_private(path: &Path) -> Result<()> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("login keeps the token in {}", path.display()))?
        .permissions()
        .mode();
    ensure!(
        mode & 0o777 == 0o600,
        "{} has mode {:o}",
        path.display(),
        mode & 0o777
    );
    let dir_mode = std::fs::metadata(path.parent().context("a directory")?)?
        .permissions()
        .mode();
    ensure!(
        dir_mode & 0o077 == 0,
        "its directory is private: {:o}",
        dir_mode & 0o777
    );
    Ok(())
}

/// A real public key (ssh-keygen, ed25519).
const PUBLIC_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEL4ExQvr2yenWuWW1VazBlavzBomFuxLpKf4pi0TYdv test@vmm";

#[tokio::test(flavor = "multi_thread")]
async fn images_keys_quotas_users_and_hosts_through_vmmctl() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    administration(&cluster).await.unwrap();
}

async fn administration(cluster: &TestCluster) -> Result<()> {
    cluster.api().register("alice", USER_PASSWORD).await?;
    let home = tempfile::tempdir()?;
    let admin = Vmmctl {
        binary: binary_path("vmmctl")?,
        home: home.path().join("admin"),
        url: cluster.http_url().to_owned(),
    };
    let (admin_name, admin_password) = cluster.admin_credentials();
    admin
        .run_with(
            &["login", "-u", admin_name, "--password-stdin"],
            &[],
            Some(admin_password),
        )
        .await?
        .ok()?;

    // Upload: a real qcow2 becomes a ready image; a file that is no image is refused with
    // the API's message, and the image made for it is gone again.
    let files = tempfile::tempdir()?;
    let qcow2 = files.path().join("tiny.qcow2");
    let status = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("64M")
        .status()
        .await?;
    ensure!(status.success(), "qemu-img create failed");
    let image = admin
        .run(&[
            "image",
            "upload",
            "tiny",
            qcow2.to_str().context("path")?,
            "--os",
            "none",
            "-o",
            "json",
        ])
        .await?
        .ok()?
        .json()?;
    ensure!(
        image["status"] == "ready" && image["format"] == "qcow2",
        "{image}"
    );
    let garbage = files.path().join("garbage.img");
    std::fs::write(&garbage, vec![7u8; 4096])?;
    let run = admin
        .run(&[
            "image",
            "upload",
            "garbage",
            garbage.to_str().context("path")?,
        ])
        .await?
        .failed_with(1)?;
    ensure!(run.stderr.contains("422"), "{}", run.stderr);
    let images = admin
        .run(&["image", "list", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    let names: Vec<&str> = images
        .as_array()
        .context("a list")?
        .iter()
        .filter_map(|image| image["name"].as_str())
        .collect();
    ensure!(
        names == ["tiny"],
        "a refused upload leaves no image: {images}"
    );

    // Alice: her key by file, her quota as the admin set it.
    let alice = Vmmctl {
        home: home.path().join("alice"),
        ..admin.clone()
    };
    alice
        .run_with(
            &["login", "-u", "alice", "--password-stdin"],
            &[],
            Some(USER_PASSWORD),
        )
        .await?
        .ok()?;
    let key_file = files.path().join("id_ed25519.pub");
    std::fs::write(&key_file, format!("{PUBLIC_KEY}\n"))?;
    let key = alice
        .run(&[
            "key",
            "add",
            "laptop",
            key_file.to_str().context("path")?,
            "-o",
            "json",
        ])
        .await?
        .ok()?
        .json()?;
    ensure!(
        key["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("SHA256:")),
        "{key}"
    );
    alice.run(&["key", "remove", "laptop"]).await?.ok()?;
    alice
        .run(&["key", "remove", "laptop"])
        .await?
        .failed_with(3)?;

    admin
        .run(&["quota", "set", "alice", "--vms", "3", "--cpu", "6"])
        .await?
        .ok()?;
    let quota = alice
        .run(&["quota", "show", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    ensure!(
        quota["quota"]["max_vms"] == 3 && quota["quota"]["max_cpu"] == 6,
        "{quota}"
    );
    // Administration is for administrators: 403 is exit code 4.
    alice.run(&["user", "list"]).await?.failed_with(4)?;
    alice.run(&["host", "list"]).await?.failed_with(4)?;

    let users = admin
        .run(&["user", "list", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    ensure!(
        users
            .as_array()
            .is_some_and(|users| users.iter().any(|user| user["username"] == "alice")),
        "{users}"
    );
    admin.run(&["user", "role", "alice", "admin"]).await?.ok()?;
    alice.run(&["user", "list"]).await?.ok()?;
    let hosts = admin
        .run(&["host", "list", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    ensure!(hosts[0]["id"] == "host-a", "{hosts}");
    let table = admin.run(&["host", "list"]).await?.ok()?;
    ensure!(table.stdout.contains("host-a"), "{}", table.stdout);
    let drained = admin
        .run(&["host", "drain", "host-a", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    ensure!(drained["status"] == "draining", "{drained}");
    let undrained = admin
        .run(&["host", "undrain", "HOST-A", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    ensure!(undrained["status"] == "connected", "{undrained}");
    admin
        .run(&["host", "drain", "no-such-host"])
        .await?
        .failed_with(3)?;

    admin.run(&["image", "delete", "tiny"]).await?.ok()?;
    admin
        .run(&["image", "delete", "tiny"])
        .await?
        .failed_with(3)?;
    Ok(())
}
