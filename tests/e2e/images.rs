//! The image catalogue and users' SSH keys, through the API of the real coordinator:
//! the test image imported by upload and by download from a loopback server the test runs,
//! every kind of bad input refused with a clear 4xx that keeps nothing (no record change, no
//! file left in the coordinator's image directory), a download cut off by a restart started
//! again, and keys kept per user.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use vmm_e2e::file_server::FileServer;
use vmm_e2e::guest::SshKey;
use vmm_e2e::{ClusterOptions, TestCluster, test_image, wait_until};

/// A DSA key and an RSA key of 1024 bits, made by `ssh-keygen` (OpenSSH 9.2); newer OpenSSH
/// releases cannot make DSA keys any more, so they are kept here rather than generated.
const DSA: &str = "ssh-dss AAAAB3NzaC1kc3MAAACBAOQLsGHifzgHtLUlhSECVV6/BHlX5kJoUP070m8djmOgL7vr+I3wRMRIE8nKXKlU6Kfu7Xfuqxob2Zvi7f+c6q4pu5rwoHuR7xBbO0dYlsfvN4FNyjsSn5YlBlsG7WbLlEKlrTUMwmIwW/jm1wE43Y/SjLzFlJjNRN39yLYqbff9AAAAFQD69ZCjOcWm6/2mXvPSbKMN0XbQwwAAAIBHKbyHQUb+gCt8hYZjL4+ds6W8u1NWTzveWsDFjc/nYfHJ7bxRegz0uUkWdqXQKdH0PdlQ+wcVZwrC1OfCZr/QcBjimOMKarxZwxPmDHk34rOM4a7jhAf+dAVn6e/cpWTZB9iIqaLmsVlUQYsO5W69hB5HydypMslRkg8iO2HIDwAAAIEAleF/E50Yqij2C0Wq6YtX2JL176gxipeHxJeaDilk/R8Cwv8UdkeaeVSdxubwoeSBGw1//H79vThT0npRSVupJfPSGt9QOMbXZTS6iFJ8L0JLu+uoPj811Tr0aq9zNiDcK2mciFqJZ86ix/bXL20SLoeYGsRKqDC/Inh1MBxixXI= test@vmm";
const RSA_1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQCqDTMd74Nf0g/9LeKsPUNH2yix7cmf4WlYzOaHriGrU2/KNELwGCdQqgo5q6qdXrH3DJmGIa4fmMNP0o7AbkM7ufmTNVRO1fURxMKDVOp6gLd6yu8CBu3gIALuMON02uqNPUeaPhjYeZF5G2N2f7JUDvoqUj6gCYlW+JPUw6snvQ== test@vmm";

/// The SHA-256 of `path` as `sha256sum` prints it.
async fn sha256sum(path: &Path) -> Result<String> {
    let output = tokio::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "sha256sum {} failed",
        path.display()
    );
    let text = String::from_utf8(output.stdout)?;
    Ok(text
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_owned())
}

/// The virtual size `qemu-img info` reports for `path`.
async fn virtual_size(path: &Path) -> Result<u64> {
    let output = tokio::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .await?;
    ensure!(output.status.success(), "qemu-img info failed");
    let info: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    info["virtual-size"].as_u64().context("no virtual-size")
}

/// The files in the coordinator's image directory, sorted.
fn image_files(cluster: &TestCluster) -> Result<Vec<String>> {
    let dir = cluster.coordinator_data_dir().join("images");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    Ok(names)
}

/// A qcow2 made by `qemu-img create` in `dir` with extra arguments, as bytes.
async fn qemu_img_create(dir: &Path, name: &str, args: &[&str]) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let status = tokio::process::Command::new("qemu-img")
        .current_dir(dir)
        .arg("create")
        .args(args)
        .arg(&path)
        .arg("64M")
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    ensure!(status.success(), "qemu-img create {args:?} failed");
    Ok(std::fs::read(path)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_test_image_is_imported_by_upload_and_by_download() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    import_the_test_image(&cluster).await.unwrap();
}

async fn import_the_test_image(cluster: &TestCluster) -> Result<()> {
    let path = test_image::image().await?;
    let bytes = std::fs::read(path)?;
    let sha256 = sha256sum(path).await?;
    let virtual_size = virtual_size(path).await?;
    let admin = cluster.admin().await?;

    let created = admin
        .create_image(&json!({"name": "test-image", "os": "Debian test image"}))
        .await?;
    ensure!(created.status == "pending", "{created:?}");
    ensure!(created.default_user == "root" && created.sha256.is_none());
    let uploaded = admin.upload_image(&created.id, bytes.clone()).await?;
    ensure!(uploaded.status == "ready", "{uploaded:?}");
    ensure!(uploaded.format.as_deref() == Some("qcow2"), "{uploaded:?}");
    ensure!(
        uploaded.size_bytes == Some(bytes.len() as u64),
        "{uploaded:?}"
    );
    ensure!(
        uploaded.virtual_size_bytes == Some(virtual_size),
        "{uploaded:?}"
    );
    ensure!(
        uploaded.sha256.as_deref() == Some(sha256.as_str()),
        "{uploaded:?}"
    );

    let server = FileServer::start(vec![("/images/test-image.qcow2", bytes.clone())]).await?;
    let downloading = admin
        .create_image(&json!({
            "name": "test-image-downloaded",
            "source_url": server.url("/images/test-image.qcow2"),
            "sha256": sha256.to_uppercase(),
            "default_user": "debian",
            "min_disk_gb": 2,
        }))
        .await?;
    ensure!(downloading.status == "downloading", "{downloading:?}");
    let downloaded = admin.wait_for_download(&downloading.id).await?;
    ensure!(downloaded.status == "ready", "{downloaded:?}");
    ensure!(
        (
            downloaded.format.as_deref(),
            downloaded.size_bytes,
            downloaded.virtual_size_bytes,
            downloaded.sha256.as_deref(),
            downloaded.min_disk_gb,
            downloaded.default_user.as_str(),
        ) == (
            Some("qcow2"),
            Some(bytes.len() as u64),
            Some(virtual_size),
            Some(sha256.as_str()),
            Some(2),
            "debian"
        ),
        "{downloaded:?}"
    );

    // Every user reads the catalogue; the files are exactly the two images'.
    let user = cluster.user("reader").await?;
    let names: Vec<String> = user
        .list_images()
        .await?
        .into_iter()
        .map(|image| image.name)
        .collect();
    ensure!(
        names == ["test-image", "test-image-downloaded"],
        "{names:?}"
    );
    let mut expected_files = vec![created.id.clone(), downloading.id.clone()];
    expected_files.sort();
    ensure!(image_files(cluster)? == expected_files);
    for id in &expected_files {
        let stored = std::fs::read(cluster.coordinator_data_dir().join("images").join(id))?;
        ensure!(
            stored == bytes,
            "the stored file of image {id} differs from the one sent"
        );
    }
    let metrics = cluster.api().get_text("/api/metrics").await?;
    ensure!(
        metrics.contains("images{status=\"ready\"} 2"),
        "image gauges: {}",
        metrics
            .lines()
            .filter(|line| line.starts_with("image"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_image_input_is_refused_and_keeps_nothing() {
    let options = ClusterOptions::default().coordinator_env("IMAGE_MAX_BYTES", "1048576");
    let cluster = TestCluster::start(options).await.unwrap();
    bad_image_input(&cluster).await.unwrap();
}

async fn bad_image_input(cluster: &TestCluster) -> Result<()> {
    let admin = cluster.admin().await?;
    let user = cluster.user("not-an-admin").await?;
    let scratch = tempfile::tempdir()?;
    let valid_qcow2 = qemu_img_create(scratch.path(), "valid.qcow2", &["-f", "qcow2"]).await?;

    // Only administrators create, upload and delete.
    user.post("/api/images", &json!({"name": "mine"}))
        .await?
        .expect_error(403)?;
    let image = admin.create_image(&json!({"name": "target"})).await?;
    let file_path = format!("/api/images/{}/file", image.id);
    user.put_bytes(&file_path, valid_qcow2.clone())
        .await?
        .expect_error(403)?;
    user.delete(&format!("/api/images/{}", image.id))
        .await?
        .expect_error(403)?;
    let seen = user.get_image(&image.id).await?;
    ensure!(seen.status == "pending", "{seen:?}");

    // Requests that name something impossible.
    for (body, says) in [
        (
            json!({"name": "x", "source_url": "ftp://127.0.0.1/x.qcow2"}),
            "http or https",
        ),
        (
            json!({"name": "x", "source_url": "/etc/passwd"}),
            "not a URL",
        ),
        (json!({"name": "x", "sha256": "1234"}), "sha256"),
        (json!({"name": "x y"}), "name"),
        (
            json!({"name": "x", "default_user": "root\nx"}),
            "default_user",
        ),
        (json!({"name": "x", "format": "qcow2"}), "format"),
    ] {
        let message = admin.post("/api/images", &body).await?.expect_error(422)?;
        ensure!(message.contains(says), "{body}: {message}");
    }
    admin
        .post("/api/images", &json!({"name": "target"}))
        .await?
        .expect_error(409)?;

    // A file over IMAGE_MAX_BYTES, a file that is not an image, an overlay with a backing
    // file, a file whose checksum is not the expected one: refused, nothing kept.
    let too_big = vec![7u8; 1_500_000];
    let message = admin
        .try_upload_image(&image.id, too_big)
        .await?
        .expect_error(413)?;
    ensure!(message.contains("1048576"), "{message}");
    let not_an_image = b"#!/bin/sh\necho this is a script, not a disk\n".repeat(100);
    let message = admin
        .try_upload_image(&image.id, not_an_image)
        .await?
        .expect_error(422)?;
    ensure!(message.contains("not a disk image"), "{message}");
    qemu_img_create(scratch.path(), "base.qcow2", &["-f", "qcow2"]).await?;
    let overlay = qemu_img_create(
        scratch.path(),
        "overlay.qcow2",
        &["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2"],
    )
    .await?;
    let message = admin
        .try_upload_image(&image.id, overlay)
        .await?
        .expect_error(422)?;
    ensure!(message.contains("backing file"), "{message}");
    let expecting = admin
        .create_image(&json!({"name": "expecting", "sha256": "0".repeat(64)}))
        .await?;
    let message = admin
        .try_upload_image(&expecting.id, valid_qcow2.clone())
        .await?
        .expect_error(422)?;
    ensure!(
        message.contains(&"0".repeat(64)) && message.contains("SHA-256 is"),
        "{message}"
    );
    for id in [&image.id, &expecting.id] {
        let after = admin.get_image(id).await?;
        ensure!(
            after.status == "pending" && after.sha256.is_none(),
            "{after:?}"
        );
    }
    ensure!(
        image_files(cluster)?.is_empty(),
        "{:?}",
        image_files(cluster)?
    );

    // Downloads that fail end `error` with a message, and keep no file.
    let server = FileServer::start(vec![]).await?;
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    for (name, url, says) in [
        ("not-found", server.url("/missing.qcow2"), "404"),
        (
            "nobody-listens",
            format!("http://127.0.0.1:{closed_port}/image.qcow2"),
            "Connection refused",
        ),
    ] {
        let created = admin
            .create_image(&json!({"name": name, "source_url": url}))
            .await?;
        let failed = admin.wait_for_download(&created.id).await?;
        ensure!(failed.status == "error", "{failed:?}");
        let error = failed.error.clone().unwrap_or_default();
        ensure!(error.contains(says) && error.contains(&url), "{failed:?}");
        ensure!(failed.sha256.is_none() && failed.size_bytes.is_none());
    }
    ensure!(
        image_files(cluster)?.is_empty(),
        "{:?}",
        image_files(cluster)?
    );

    // An image in error takes an upload; a ready image takes no other file.
    let failed = admin
        .list_images()
        .await?
        .into_iter()
        .find(|image| image.name == "not-found")
        .context("the failed download is listed")?;
    let recovered = admin.upload_image(&failed.id, valid_qcow2.clone()).await?;
    ensure!(
        recovered.status == "ready" && recovered.error.is_none(),
        "{recovered:?}"
    );
    let message = admin
        .try_upload_image(&failed.id, valid_qcow2)
        .await?
        .expect_error(409)?;
    ensure!(message.contains("ready"), "{message}");

    // Deleting removes the record and the file.
    admin
        .delete(&format!("/api/images/{}", failed.id))
        .await?
        .expect_status(204)?;
    admin
        .get(&format!("/api/images/{}", failed.id))
        .await?
        .expect_error(404)?;
    ensure!(
        image_files(cluster)?.is_empty(),
        "{:?}",
        image_files(cluster)?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_cut_off_by_a_restart_is_started_again() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    restarted_download(&mut cluster).await.unwrap();
}

async fn restarted_download(cluster: &mut TestCluster) -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let file = qemu_img_create(scratch.path(), "image.qcow2", &["-f", "qcow2"]).await?;
    let server =
        FileServer::start_stalling_first(vec![("/image.qcow2", file.clone())], 4096).await?;
    let admin = cluster.admin().await?;
    let image = admin
        .create_image(&json!({"name": "interrupted", "source_url": server.url("/image.qcow2")}))
        .await?;
    wait_until(
        "the first download to start",
        Duration::from_secs(30),
        || async { Ok((server.files_served() == 1).then_some(())) },
    )
    .await?;
    ensure!(admin.get_image(&image.id).await?.status == "downloading");

    cluster.restart_coordinator().await?;
    let admin = cluster.admin().await?;
    let image = admin.wait_for_download(&image.id).await?;
    ensure!(image.status == "ready", "{image:?}");
    ensure!(image.size_bytes == Some(file.len() as u64), "{image:?}");
    ensure!(
        server.files_served() == 2,
        "downloaded {} times",
        server.files_served()
    );
    ensure!(image_files(cluster)? == std::slice::from_ref(&image.id));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_keys_are_per_user_and_invalid_keys_are_refused() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    ssh_keys(&cluster).await.unwrap();
}

async fn ssh_keys(cluster: &TestCluster) -> Result<()> {
    let alice = cluster.user("alice").await?;
    let bob = cluster.user("bob").await?;
    let scratch = tempfile::tempdir()?;
    let key = SshKey::generate(scratch.path(), "laptop").await?;
    let fingerprint = fingerprint_of(&key.private_key.with_extension("pub")).await?;

    let stored = alice
        .add_key("laptop", &format!("  {}\n", key.public_key))
        .await?;
    ensure!(stored.key_type == "ssh-ed25519", "{stored:?}");
    ensure!(
        stored.fingerprint == fingerprint,
        "{stored:?} vs {fingerprint}"
    );
    ensure!(stored.public_key == key.public_key, "{stored:?}");
    ensure!(alice.list_keys().await? == std::slice::from_ref(&stored));

    // The same name or the same key again: 409, naming what exists.
    let other = SshKey::generate(scratch.path(), "desktop").await?;
    alice
        .post(
            "/api/keys",
            &json!({"name": "laptop", "public_key": other.public_key}),
        )
        .await?
        .expect_error(409)?;
    let message = alice
        .post(
            "/api/keys",
            &json!({"name": "again", "public_key": key.public_key}),
        )
        .await?
        .expect_error(409)?;
    ensure!(message.contains("laptop"), "{message}");

    // Invalid keys of several kinds: 422 saying what is wrong; nothing stored.
    let private_key = std::fs::read_to_string(&key.private_key)?;
    for (public_key, says) in [
        ("garbage".to_owned(), "not an OpenSSH public key"),
        (
            format!("ssh-ed25519 {}", "A".repeat(60)),
            "not an OpenSSH public key",
        ),
        (DSA.to_owned(), "DSA"),
        (RSA_1024.to_owned(), "1024 bits"),
        (private_key, "private key"),
        (
            format!("no-pty {}", key.public_key),
            "not an OpenSSH public key",
        ),
    ] {
        let message = alice
            .post(
                "/api/keys",
                &json!({"name": "bad", "public_key": public_key}),
            )
            .await?
            .expect_error(422)?;
        ensure!(message.contains(says), "{public_key:.40}: {message}");
    }
    ensure!(alice.list_keys().await?.len() == 1);

    // Another user sees none of them and cannot delete them.
    ensure!(bob.list_keys().await?.is_empty());
    bob.delete(&format!("/api/keys/{}", stored.id))
        .await?
        .expect_error(404)?;
    alice
        .delete(&format!("/api/keys/{}", stored.id))
        .await?
        .expect_status(204)?;
    ensure!(alice.list_keys().await?.is_empty());
    alice
        .delete(&format!("/api/keys/{}", stored.id))
        .await?
        .expect_error(404)?;
    Ok(())
}

/// The fingerprint `ssh-keygen -l` prints for the public key file at `path`.
async fn fingerprint_of(path: &Path) -> Result<String> {
    let output = tokio::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(path)
        .output()
        .await?;
    ensure!(output.status.success(), "ssh-keygen -l failed");
    String::from_utf8(output.stdout)?
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .context("ssh-keygen -l printed no fingerprint")
}

#[tokio::test(flavor = "multi_thread")]
async fn vms_from_images_are_checked_before_anything_is_created() {
    let _libvirtd = vmm_e2e::virsh::qemu_guard().await;
    vmm_e2e::virsh::require_qemu_system().await;
    vmm_e2e::virsh::require_storage_driver().await;
    // The test driver keeps volumes without contents and refuses VMs from images, so the
    // VMs this test does create run on real QEMU (TCG; the image is empty, the guests only
    // run their firmware).
    let agent = vmm_e2e::AgentOptions::qemu("images-host").env("GUEST_ACCEL", "tcg");
    let _leftovers = vmm_e2e::virsh::QemuLeftovers::new(&agent.storage_pool);
    let cluster = TestCluster::start(ClusterOptions::with_agents(vec![agent]))
        .await
        .unwrap();
    vms_from_images(&cluster).await.unwrap();
}

/// What is checked here is the coordinator's side; the agent makes what it is asked.
async fn vms_from_images(cluster: &TestCluster) -> Result<()> {
    let admin = cluster.admin().await?;
    let alice = cluster.user("alice").await?;
    let bob = cluster.user("bob").await?;
    let scratch = tempfile::tempdir()?;

    // A 3 GiB (virtual) qcow2 that asks for at least 4 GB, and an image still pending.
    let path = scratch.path().join("big.qcow2");
    let status = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg("3G")
        .status()
        .await?;
    ensure!(status.success());
    let image = admin
        .create_image(&json!({"name": "distro", "min_disk_gb": 4, "default_user": "debian"}))
        .await?;
    let image = admin.upload_image(&image.id, std::fs::read(&path)?).await?;
    let pending = admin.create_image(&json!({"name": "not-yet"})).await?;

    let key = SshKey::generate(scratch.path(), "alice").await?;
    let stored = alice.add_key("alice-laptop", &key.public_key).await?;
    let bobs_key = bob
        .add_key(
            "bob-laptop",
            &SshKey::generate(scratch.path(), "bob").await?.public_key,
        )
        .await?;

    let base = json!({"name": "web", "cpu": 1, "memory": 128, "image": "distro"});
    let with = |extra: serde_json::Value| {
        let mut body = base.clone();
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    };
    let refusals: Vec<(serde_json::Value, u16, &str)> = vec![
        (
            with(json!({"disk_gb": 2})),
            422,
            "virtual size is 3221225472 bytes",
        ),
        (with(json!({"disk_gb": 3})), 422, "min_disk_gb 4"),
        (
            with(json!({"image": "no-such-image"})),
            422,
            "no-such-image",
        ),
        (with(json!({"image": pending.id})), 409, "pending"),
        (
            with(json!({"user_data": "x".repeat(64 * 1024 + 1)})),
            422,
            "user_data is 65537 bytes",
        ),
        (
            with(json!({"ssh_authorized_keys": [key.public_key, "ssh-rsa AAAA"]})),
            422,
            "ssh_authorized_keys[1]",
        ),
        (with(json!({"ssh_authorized_keys": [DSA]})), 422, "DSA"),
        (
            with(json!({"ssh_keys": [bobs_key.id]})),
            422,
            "no key with ID",
        ),
        (
            with(json!({"ssh_keys": ["not-an-id"]})),
            422,
            "no key with ID",
        ),
        (
            json!({"name": "blank", "cpu": 1, "memory": 128, "user_data": "#cloud-config\n"}),
            422,
            "need an \"image\"",
        ),
        (with(json!({"ssh_keys": "all"})), 422, "ssh_keys"),
    ];
    for (body, status, says) in &refusals {
        let message = alice
            .try_create_vm(body)
            .await?
            .expect_error(*status)
            .with_context(|| format!("creating with {body:.200}"))?;
        ensure!(message.contains(says), "{body:.200}: {message}");
    }
    // A body over 256 KiB is refused before it is read.
    let huge = with(json!({"user_data": "x".repeat(300 * 1024)}));
    alice.try_create_vm(&huge).await?.expect_error(413)?;
    // Nothing was created, no quota claimed.
    ensure!(alice.list_vms().await?.is_empty());
    ensure!(alice.quota().await?.usage == Default::default());

    // The defaults: the disk holds the image and its minimum (at least 10 GB), all of the
    // caller's keys, the user data as given.
    let vm: vmm_e2e::Vm = alice
        .try_create_vm(&with(
            json!({"user_data": "#cloud-config\n", "image": image.id}),
        ))
        .await?
        .expect_status(201)?
        .json()?;
    ensure!(vm.image.as_deref() == Some(image.id.as_str()), "{vm:?}");
    // The agent forwards SSH (its default user-mode networking), as the image's user.
    ensure!(
        vm.disk_gb == 10
            && vm.addresses.is_empty()
            && vm
                .ssh
                .as_ref()
                .is_some_and(|ssh| ssh.user.as_deref() == Some("debian")),
        "{vm:?}"
    );
    let by_name: vmm_e2e::Vm = alice
        .try_create_vm(&json!({
            "name": "db", "cpu": 1, "memory": 128, "image": "distro", "disk_gb": 4,
            "ssh_keys": [stored.id], "ssh_authorized_keys": [key.public_key]
        }))
        .await?
        .expect_status(201)?
        .json()?;
    ensure!(
        by_name.disk_gb == 4 && by_name.image == vm.image,
        "{by_name:?}"
    );
    let blank = alice.create_vm("blank", 1, 128, None).await?;
    ensure!(blank.image.is_none() && blank.disk_gb == 10, "{blank:?}");

    // An image a VM uses cannot be deleted; once its VMs are gone it can.
    let message = admin
        .delete(&format!("/api/images/{}", image.id))
        .await?
        .expect_error(409)?;
    ensure!(message.contains("2 VM(s)"), "{message}");
    alice.delete_vm(&vm.id).await?;
    alice.delete_vm(&by_name.id).await?;
    admin
        .delete(&format!("/api/images/{}", image.id))
        .await?
        .expect_status(204)?;
    let message = alice.try_create_vm(&base).await?.expect_error(422)?;
    ensure!(message.contains("distro"), "{message}");
    Ok(())
}
