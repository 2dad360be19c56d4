//! Seeds built and read back: with this crate's FAT reader and with mtools (an independent
//! FAT implementation), and the user-data rules case by case. How real cloud-init reads
//! the merged user data is checked in `tests/cloud_init_reads_seed.rs`.

use std::collections::BTreeMap;
use std::process::Command;

use base64::Engine as _;
use yaml_serde::Value;

use crate::user_data::{self, KEYS_MERGE_TYPE, UserDataKind};
use crate::{NetworkConfig, Seed, SeedError, build_volume, read_volume, write_volume_file};

const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0Xl+rGlYGF8bk+9huCNdXmoY/C5yqmDAkzkTb+dIBW alice@laptop";
const KEY_B: &str =
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPx bob@desk";

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|key| (*key).to_owned()).collect()
}

fn seed() -> Seed {
    Seed {
        instance_id: "3f0c6a52-8f3e-4b4e-9d7a-1c2b3d4e5f60".into(),
        hostname: "web-1".into(),
        ssh_authorized_keys: keys(&[KEY_A, KEY_B]),
        user_data: Some("#!/bin/sh\necho hello > /run/hello\n".into()),
        network_config: Some(NetworkConfig::Dhcp {
            macs: vec!["52:54:00:AB:cd:01".into()],
        }),
    }
}

fn yaml_value(text: &str) -> Value {
    yaml_serde::from_str(text).unwrap()
}

fn authorized_keys_of(cloud_config: &str) -> Vec<String> {
    yaml_value(cloud_config)["ssh_authorized_keys"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|key| key.as_str().unwrap().to_owned())
        .collect()
}

/// One part of a multipart message: its headers (names in lower case) and its decoded body.
#[derive(Debug)]
struct Part {
    headers: BTreeMap<String, String>,
    body: String,
}

/// A deliberately small MIME reader, enough for the messages this crate writes.
fn parts_of(message: &str) -> Vec<Part> {
    let (headers, body) = message.split_once("\n\n").unwrap();
    let boundary = headers
        .split("boundary=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    let delimiter = format!("\n--{boundary}");
    let body = format!("\n{body}");
    let (_, after_first) = body.split_once(&format!("{delimiter}\n")).unwrap();
    let (inside, epilogue) = after_first.split_once(&format!("{delimiter}--")).unwrap();
    assert_eq!(epilogue, "\n", "nothing follows the closing delimiter");
    inside
        .split(&format!("{delimiter}\n"))
        .map(|part| {
            let (head, body) = part.split_once("\n\n").unwrap();
            let headers: BTreeMap<String, String> = head
                .lines()
                .map(|line| {
                    let (name, value) = line.split_once(": ").unwrap();
                    (name.to_ascii_lowercase(), value.to_owned())
                })
                .collect();
            let body = match headers.get("content-transfer-encoding").map(String::as_str) {
                Some("base64") => String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(body.replace('\n', ""))
                        .unwrap(),
                )
                .unwrap(),
                _ => body.to_owned(),
            };
            Part { headers, body }
        })
        .collect()
}

fn content_type(part: &Part) -> &str {
    part.headers["content-type"].split(';').next().unwrap()
}

fn assert_keys_part(part: &Part, expected: &[&str]) {
    assert_eq!(content_type(part), "text/cloud-config");
    assert_eq!(part.headers["merge-type"], KEYS_MERGE_TYPE);
    assert!(part.body.starts_with("#cloud-config\n"), "{part:?}");
    assert_eq!(authorized_keys_of(&part.body), keys(expected));
}

// ---- the volume ------------------------------------------------------------------------

#[test]
fn volume_holds_every_file_with_its_content() {
    let seed = seed();
    let files = seed.files().unwrap();
    let volume = build_volume(&seed).unwrap();
    let contents = read_volume(&volume).unwrap();
    assert_eq!(contents.label, "CIDATA");
    let expected: BTreeMap<String, Vec<u8>> = [
        ("meta-data", files.meta_data.clone()),
        ("user-data", files.user_data.clone()),
        ("network-config", files.network_config.clone().unwrap()),
    ]
    .into_iter()
    .map(|(name, text)| (name.to_owned(), text.into_bytes()))
    .collect();
    assert_eq!(contents.files, expected);

    let meta = yaml_value(&files.meta_data);
    assert_eq!(
        meta["instance-id"].as_str(),
        Some(seed.instance_id.as_str())
    );
    assert_eq!(meta["local-hostname"].as_str(), Some("web-1"));
}

#[test]
fn volume_reads_back_with_mtools() {
    let seed = seed();
    let files = seed.files().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.img");
    write_volume_file(&path, &seed).unwrap();

    let mtools = |tool: &str, args: &[&str]| -> String {
        let output = Command::new(tool)
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&path)
            .args(args)
            .output()
            .unwrap_or_else(|error| {
                panic!("cannot run {tool} ({error}): mtools is needed; run scripts/setup-host.sh")
            });
        assert!(
            output.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let label = mtools("mlabel", &["-s", "::"]);
    assert!(label.contains("Volume label is CIDATA"), "{label}");
    let mut listed: Vec<String> = mtools("mdir", &["-b", "::/"])
        .lines()
        .map(|line| line.trim_start_matches("::/").to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, ["meta-data", "network-config", "user-data"]);
    assert_eq!(mtools("mtype", &["::/meta-data"]), files.meta_data);
    assert_eq!(mtools("mtype", &["::/user-data"]), files.user_data);
    assert_eq!(
        mtools("mtype", &["::/network-config"]),
        files.network_config.unwrap()
    );
}

#[test]
fn volume_file_is_private_and_complete() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.img");
    std::fs::write(&path, b"an older seed").unwrap();
    write_volume_file(&path, &seed()).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        build_volume(&seed()).unwrap()
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
}

#[test]
fn same_seed_same_bytes_and_vms_differ() {
    assert_eq!(
        build_volume(&seed()).unwrap(),
        build_volume(&seed()).unwrap()
    );
    let other = Seed {
        instance_id: "another-vm".into(),
        ..seed()
    };
    assert_ne!(
        build_volume(&seed()).unwrap(),
        build_volume(&other).unwrap()
    );
}

#[test]
fn large_user_data_fits() {
    let script = format!("#!/bin/sh\n{}", "echo 0123456789abcdef\n".repeat(200_000));
    let seed = Seed {
        user_data: Some(script.clone()),
        ssh_authorized_keys: Vec::new(),
        network_config: None,
        ..seed()
    };
    let contents = read_volume(&build_volume(&seed).unwrap()).unwrap();
    assert_eq!(contents.files["user-data"], script.into_bytes());
    assert!(!contents.files.contains_key("network-config"));
}

#[test]
fn network_config_is_dhcp_by_mac() {
    let config = NetworkConfig::Dhcp {
        macs: vec!["52:54:00:AB:CD:01".into(), "52:54:00:00:00:02".into()],
    }
    .to_yaml()
    .unwrap();
    let value = yaml_value(&config);
    assert_eq!(value["version"].as_u64(), Some(2));
    let ethernets = value["ethernets"].as_mapping().unwrap();
    assert_eq!(ethernets.len(), 2);
    assert_eq!(
        value["ethernets"]["nic0"]["match"]["macaddress"].as_str(),
        Some("52:54:00:ab:cd:01")
    );
    assert_eq!(value["ethernets"]["nic0"]["dhcp4"].as_bool(), Some(true));
    assert_eq!(
        value["ethernets"]["nic1"]["match"]["macaddress"].as_str(),
        Some("52:54:00:00:00:02")
    );
}

/// cloud-init reads YAML 1.1: there, plain `yes` is a boolean, `1:20` and a MAC address
/// are base-60 integers, `0644` is octal. Every value this crate writes is quoted.
#[test]
fn values_are_quoted_for_yaml_1_1() {
    let ambiguous = Seed {
        instance_id: "1:20".into(),
        hostname: "yes".into(),
        ssh_authorized_keys: keys(&["0644"]),
        user_data: None,
        network_config: Some(NetworkConfig::Dhcp {
            macs: vec!["52:54:00:12:34:56".into()],
        }),
    };
    let files = ambiguous.files().unwrap();
    assert_eq!(
        files.meta_data,
        "instance-id: \"1:20\"\nlocal-hostname: \"yes\"\n"
    );
    assert_eq!(
        files.user_data,
        "#cloud-config\nssh_authorized_keys:\n- \"0644\"\n"
    );
    let network = files.network_config.unwrap();
    assert!(
        network.contains("macaddress: \"52:54:00:12:34:56\"\n"),
        "{network}"
    );
    let meta = yaml_value(&files.meta_data);
    assert_eq!(meta["instance-id"].as_str(), Some("1:20"));
    assert_eq!(meta["local-hostname"].as_str(), Some("yes"));
    let unicode = Seed {
        ssh_authorized_keys: keys(&["ssh-ed25519 AAAA \"grüße\" \\o/"]),
        ..seed()
    };
    assert_eq!(
        authorized_keys_of(&user_data::merge(None, &unicode.ssh_authorized_keys).unwrap()),
        unicode.ssh_authorized_keys
    );
    assert_eq!(
        NetworkConfig::Dhcp { macs: Vec::new() }.to_yaml().unwrap(),
        "version: 2\nethernets: {}\n"
    );
}

#[test]
fn bad_values_are_refused_and_named() {
    let refused = |seed: Seed| seed.files().unwrap_err();
    assert!(matches!(
        refused(Seed {
            hostname: "".into(),
            ..seed()
        }),
        SeedError::InvalidHostname(_)
    ));
    assert!(matches!(
        refused(Seed {
            hostname: "web-1\nlocal-hostname: evil".into(),
            ..seed()
        }),
        SeedError::InvalidHostname(_)
    ));
    assert!(matches!(
        refused(Seed {
            instance_id: " ".into(),
            ..seed()
        }),
        SeedError::InvalidInstanceId(_)
    ));
    let error = refused(Seed {
        ssh_authorized_keys: keys(&[
            KEY_A,
            "ssh-ed25519 AAAA x\ncommand=\"evil\" ssh-ed25519 AAAA",
        ]),
        ..seed()
    });
    assert!(
        matches!(error, SeedError::InvalidSshKey { index: 1 }),
        "{error}"
    );
    assert!(matches!(
        refused(Seed {
            ssh_authorized_keys: keys(&["   "]),
            ..seed()
        }),
        SeedError::InvalidSshKey { index: 0 }
    ));
    let error = refused(Seed {
        network_config: Some(NetworkConfig::Dhcp {
            macs: vec!["52:54:00:zz:00:01".into()],
        }),
        ..seed()
    });
    assert!(error.to_string().contains("52:54:00:zz:00:01"), "{error}");
}

// ---- user-data -------------------------------------------------------------------------

#[test]
fn kinds_follow_cloud_init() {
    use UserDataKind::{Mime, Typed};
    let cases = [
        ("#cloud-config\na: 1\n", Typed("text/cloud-config")),
        ("  \n#Cloud-Config\n", Typed("text/cloud-config")),
        (
            "#cloud-config-archive\n- a\n",
            Typed("text/cloud-config-archive"),
        ),
        (
            "#cloud-config-jsonp\n[]\n",
            Typed("text/cloud-config-jsonp"),
        ),
        ("#!/bin/bash\ntrue\n", Typed("text/x-shellscript")),
        (
            "#include\nhttp://example.invalid/x\n",
            Typed("text/x-include-url"),
        ),
        (
            "#include-once\nhttp://example.invalid/x\n",
            Typed("text/x-include-once-url"),
        ),
        ("#cloud-boothook\n#!/bin/sh\n", Typed("text/cloud-boothook")),
        ("#part-handler\n", Typed("text/part-handler")),
        ("## template: jinja\n#cloud-config\n", Typed("text/jinja2")),
        ("just some text\n", Typed("text/plain")),
        ("Content-Type: text/plain\nMIME-Version: 1.0\n\nhi\n", Mime),
        ("#!/bin/sh\n# MIME-Version: 1.0 in a comment\n", Mime),
    ];
    for (data, expected) in cases {
        assert_eq!(user_data::kind(data), expected, "{data:?}");
    }
    let late = format!("#!/bin/sh\n{}\n# mime-version: 1.0\n", "#".repeat(5000));
    assert_eq!(user_data::kind(&late), Typed("text/x-shellscript"));
}

#[test]
fn no_user_data_gives_a_cloud_config_with_the_keys() {
    let merged = user_data::merge(None, &keys(&[KEY_A, KEY_B, KEY_A])).unwrap();
    assert!(merged.starts_with("#cloud-config\n"), "{merged}");
    assert_eq!(authorized_keys_of(&merged), keys(&[KEY_A, KEY_B]));
    assert_eq!(
        user_data::merge(Some(" \n"), &[]).unwrap(),
        "#cloud-config\n"
    );
    for line in merged.lines().skip(2) {
        assert!(line.starts_with("- "), "one key per line: {line:?}");
    }
}

#[test]
fn user_data_without_keys_is_kept_as_is() {
    let data = "#cloud-config\n# mine\npackages: [htop]\n";
    assert_eq!(user_data::merge(Some(data), &[]).unwrap(), data);
    assert_eq!(
        user_data::merge(Some("#!/bin/sh\n"), &[]).unwrap(),
        "#!/bin/sh\n"
    );
}

#[test]
fn cloud_config_gains_the_keys_and_keeps_every_byte() {
    let data = "#cloud-config\n# a comment the user wants kept\nwrite_files:\n  - path: /etc/x\n    permissions: 0644\n    content: |\n      hello\npackage_upgrade: yes\n";
    let merged = user_data::merge(Some(data), &keys(&[KEY_A])).unwrap();
    assert!(
        merged.starts_with(data),
        "the user's text is a prefix:\n{merged}"
    );
    let value = yaml_value(&merged);
    let mut expected = yaml_value(data);
    expected.as_mapping_mut().unwrap().insert(
        "ssh_authorized_keys".into(),
        Value::Sequence(vec![KEY_A.into()]),
    );
    assert_eq!(value, expected);

    // No final line break in the user's text.
    let merged = user_data::merge(Some("#cloud-config\nhostname: x"), &keys(&[KEY_A])).unwrap();
    assert_eq!(authorized_keys_of(&merged), keys(&[KEY_A]));
    assert_eq!(yaml_value(&merged)["hostname"].as_str(), Some("x"));

    // An empty cloud-config.
    let merged = user_data::merge(Some("#cloud-config\n"), &keys(&[KEY_A])).unwrap();
    assert_eq!(authorized_keys_of(&merged), keys(&[KEY_A]));
}

#[test]
fn cloud_config_with_its_own_keys_gets_a_keys_part_appended_to_its_list() {
    let data = format!("#cloud-config\nssh_authorized_keys:\n  - {KEY_B}\nruncmd: [date]\n");
    let merged = user_data::merge(Some(&data), &keys(&[KEY_A, KEY_B])).unwrap();
    let parts = parts_of(&merged);
    assert_eq!(parts.len(), 2, "{merged}");
    assert_eq!(content_type(&parts[0]), "text/cloud-config");
    assert_eq!(parts[0].body, data, "the user's document is untouched");
    // Only the key the user's list lacks.
    assert_keys_part(&parts[1], &[KEY_A]);

    // Every key already there: nothing to add.
    let merged = user_data::merge(Some(&data), &keys(&[KEY_B])).unwrap();
    assert_eq!(merged, data);
}

#[test]
fn cloud_config_that_cannot_take_an_appended_key_gets_a_keys_part() {
    let data = "#cloud-config\n---\nhostname: x\n...\n";
    let merged = user_data::merge(Some(data), &keys(&[KEY_A])).unwrap();
    let parts = parts_of(&merged);
    assert_eq!(parts[0].body, data);
    assert_keys_part(&parts[1], &[KEY_A]);
}

#[test]
fn bad_cloud_config_is_refused_with_the_reason() {
    let error = |data: &str| {
        user_data::merge(Some(data), &keys(&[KEY_A]))
            .unwrap_err()
            .to_string()
    };
    assert!(error("#cloud-config\nfoo: [unclosed\n").contains("not valid YAML"));
    assert!(error("#cloud-config\n- a\n- b\n").contains("not a YAML mapping"));
    assert!(error("#cloud-config\nssh_authorized_keys: one-key\n").contains("list of strings"));
    assert!(error("#cloud-config\nssh_authorized_keys:\n  - {a: 1}\n").contains("list of strings"));
}

#[test]
fn script_becomes_a_part_next_to_the_keys() {
    let script = "#!/bin/sh\necho hi > /run/marker\n";
    let merged = user_data::merge(Some(script), &keys(&[KEY_A])).unwrap();
    assert!(merged.contains("MIME-Version: 1.0"));
    let parts = parts_of(&merged);
    assert_eq!(parts.len(), 2);
    assert_eq!(content_type(&parts[0]), "text/x-shellscript");
    assert_eq!(parts[0].headers["content-transfer-encoding"], "7bit");
    assert_eq!(parts[0].body, script);
    assert_keys_part(&parts[1], &[KEY_A]);

    // Without a final line break the part's content is still exactly the script.
    let parts = parts_of(&user_data::merge(Some("#!/bin/sh\ntrue"), &keys(&[KEY_A])).unwrap());
    assert_eq!(parts[0].body, "#!/bin/sh\ntrue");
}

#[test]
fn non_ascii_parts_are_base64() {
    let script = "#!/bin/sh\necho 'grüße, 世界' > /run/marker\n";
    let merged = user_data::merge(Some(script), &keys(&[KEY_A])).unwrap();
    assert!(merged.is_ascii());
    let parts = parts_of(&merged);
    assert_eq!(parts[0].headers["content-transfer-encoding"], "base64");
    assert!(parts[0].headers["content-type"].contains("utf-8"));
    assert_eq!(parts[0].body, script);
}

#[test]
fn other_content_keeps_its_type() {
    for (data, expected) in [
        ("#cloud-boothook\n#!/bin/sh\ntrue\n", "text/cloud-boothook"),
        (
            "## template: jinja\n#cloud-config\nhostname: {{ v1.local_hostname }}\n",
            "text/jinja2",
        ),
        (
            "#include\nhttp://example.invalid/more\n",
            "text/x-include-url",
        ),
        ("hello\n", "text/plain"),
    ] {
        let parts = parts_of(&user_data::merge(Some(data), &keys(&[KEY_A])).unwrap());
        assert_eq!(content_type(&parts[0]), expected);
        assert_eq!(parts[0].body, data);
        assert_keys_part(&parts[1], &[KEY_A]);
    }
}

#[test]
fn a_mime_message_is_nested_whole() {
    let message = "Content-Type: multipart/mixed; boundary=\"inner\"\nMIME-Version: 1.0\n\n--inner\nContent-Type: text/x-shellscript\n\n#!/bin/sh\ntrue\n--inner--\n";
    let merged = user_data::merge(Some(message), &keys(&[KEY_A])).unwrap();
    let (_, after_headers) = merged.split_once("\n\n").unwrap();
    assert!(after_headers.contains(message), "{merged}");
    let parts = parts_of(&merged);
    assert_eq!(parts.len(), 2);
    assert!(parts[0].headers["content-type"].starts_with("multipart/mixed; boundary=\"inner\""));
    assert_keys_part(&parts[1], &[KEY_A]);
}

#[test]
fn the_boundary_never_occurs_in_a_part() {
    let script = "#!/bin/sh\ntrue\n";
    let first = user_data::merge(Some(script), &keys(&[KEY_A])).unwrap();
    let boundary = first
        .split("boundary=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    // A script that contains the boundary the first message used.
    let tricky = format!("#!/bin/sh\n# --{boundary}\ntrue\n");
    let merged = user_data::merge(Some(&tricky), &keys(&[KEY_A])).unwrap();
    let parts = parts_of(&merged);
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].body, tricky);
}

#[test]
fn long_keys_stay_on_one_line() {
    let long_key = format!("ssh-rsa {} user@example", "A".repeat(700));
    let merged = user_data::merge(None, std::slice::from_ref(&long_key)).unwrap();
    assert!(
        merged
            .lines()
            .any(|line| line == format!("- \"{long_key}\"")),
        "{merged}"
    );
    let with_hash = "ssh-ed25519 AAAAC3Nza #not-a-comment".to_owned();
    let merged = user_data::merge(None, std::slice::from_ref(&with_hash)).unwrap();
    assert_eq!(authorized_keys_of(&merged), vec![with_hash]);
}
