//! The seed's `user-data`: the user's own user data with the VM's SSH keys merged in, so that
//! cloud-init installs the keys whatever the user gave.
//!
//! cloud-init decides what user data is the way [`kind`] does: MIME multi-part when
//! `mime-version:` appears in its first 4096 bytes; otherwise by how it starts (leading
//! whitespace skipped, case ignored, the longest known prefix wins): `#cloud-config` is
//! cloud-config YAML, `#!` a script, and so on. The rules of [`merge`]:
//!
//! - No user data (or only whitespace): a `#cloud-config` with `ssh_authorized_keys`.
//! - No keys: the user data exactly as given.
//! - `#cloud-config`: parsed (it must be a YAML mapping; its `ssh_authorized_keys`, if any,
//!   a list of strings), and the keys it lacks are added:
//!   - when it has no `ssh_authorized_keys`, as that key appended to the user's text, which
//!     is kept byte for byte (comments too); the result is parsed again and must equal the
//!     user's mapping plus the keys;
//!   - when it has one (or the appended text does not parse as expected, e.g. after an
//!     explicit end-of-document marker), as a MIME multi-part: the user's document as is,
//!     then a cloud-config part with the keys and `Merge-Type: list(append)` rules, which
//!     make cloud-init append them to the user's list.
//!
//!   The user's YAML is never re-serialised: cloud-init reads YAML 1.1, the parser here is
//!   YAML 1.2, and a round trip would change values such as `permissions: 0644` (octal in
//!   1.1) or `yes`/`no` (booleans in 1.1, strings in 1.2).
//! - Anything else (a script, `#cloud-boothook`, `#include`, a Jinja template, an existing
//!   MIME message, unknown text): a MIME multi-part with the user's data as one part, under
//!   the content type cloud-init would give it (a MIME message is nested whole), and the
//!   keys' cloud-config part after it.
//!
//! Parts are `7bit` when ASCII and base64 otherwise: Python's e-mail parser, which
//! cloud-init uses, mangles non-ASCII text in `8bit` parts.

use base64::Engine as _;
use yaml_serde::{Mapping, Value};

use crate::SeedError;

/// How cloud-init merges the keys' part into the cloud-config before it: lists are
/// appended to (so the user's `ssh_authorized_keys` keeps its keys and gains ours), and
/// nothing the user set is replaced.
pub const KEYS_MERGE_TYPE: &str = "dict(recurse_array,no_replace)+list(append)";

/// cloud-init's prefixes and the content type each one means.
const PREFIXES: &[(&str, &str)] = &[
    ("#include", "text/x-include-url"),
    ("#include-once", "text/x-include-once-url"),
    ("#!", "text/x-shellscript"),
    ("#cloud-config", "text/cloud-config"),
    ("#part-handler", "text/part-handler"),
    ("#cloud-boothook", "text/cloud-boothook"),
    ("#cloud-config-archive", "text/cloud-config-archive"),
    ("#cloud-config-jsonp", "text/cloud-config-jsonp"),
    ("## template: jinja", "text/jinja2"),
];

/// What user data without a known prefix is typed as inside a MIME message: cloud-init
/// looks at how such a part starts, as it would at user data given alone.
const UNKNOWN_CONTENT_TYPE: &str = "text/plain";

/// What cloud-init takes some user data to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserDataKind {
    /// A MIME message (`mime-version:` in the first 4096 bytes).
    Mime,
    /// Anything else, by its content type: `text/cloud-config`, `text/x-shellscript`...
    /// and `text/plain` when no known prefix matches.
    Typed(&'static str),
}

/// Classifies user data the way cloud-init does.
pub fn kind(user_data: &str) -> UserDataKind {
    let head = &user_data.as_bytes()[..user_data.len().min(4096)];
    if head
        .to_ascii_lowercase()
        .windows(13)
        .any(|w| w == b"mime-version:")
    {
        return UserDataKind::Mime;
    }
    let start: String = user_data
        .trim_start()
        .chars()
        .take(32)
        .flat_map(char::to_lowercase)
        .collect();
    let content_type = PREFIXES
        .iter()
        .filter(|(prefix, _)| start.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map_or(UNKNOWN_CONTENT_TYPE, |(_, content_type)| content_type);
    UserDataKind::Typed(content_type)
}

/// The seed's user-data: `user_data` with `keys` merged in, by the rules of this module.
/// `keys` must already be checked (one line each).
pub fn merge(user_data: Option<&str>, keys: &[String]) -> Result<String, SeedError> {
    let keys = unique(keys.iter().map(String::as_str));
    let user_data = user_data.filter(|data| !data.trim().is_empty());
    let Some(data) = user_data else {
        return Ok(cloud_config_with_keys(&keys));
    };
    if keys.is_empty() {
        return Ok(data.to_owned());
    }
    match kind(data) {
        UserDataKind::Mime => Ok(multipart(UserPart::Message(data), &keys)),
        UserDataKind::Typed("text/cloud-config") => merge_cloud_config(data, &keys),
        UserDataKind::Typed(content_type) => Ok(multipart(
            UserPart::Typed {
                content_type,
                body: data,
            },
            &keys,
        )),
    }
}

fn merge_cloud_config(data: &str, keys: &[&str]) -> Result<String, SeedError> {
    let settings = parse_cloud_config(data)?;
    let existing = existing_keys(&settings)?;
    let missing: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|key| !existing.contains(key))
        .collect();
    if missing.is_empty() {
        return Ok(data.to_owned());
    }
    if existing.is_empty() && !settings.contains_key("ssh_authorized_keys") {
        let mut appended = data.to_owned();
        if !appended.ends_with('\n') {
            appended.push('\n');
        }
        appended.push_str(&keys_yaml(&missing));
        let mut expected = settings.clone();
        expected.insert(
            "ssh_authorized_keys".into(),
            Value::Sequence(missing.iter().map(|key| Value::from(*key)).collect()),
        );
        if parse_cloud_config(&appended).is_ok_and(|merged| merged == expected) {
            return Ok(appended);
        }
    }
    Ok(multipart(
        UserPart::Typed {
            content_type: "text/cloud-config",
            body: data,
        },
        &missing,
    ))
}

/// The mapping of settings a cloud-config holds (an empty document holds none).
fn parse_cloud_config(data: &str) -> Result<Mapping, SeedError> {
    let value: Value = yaml_serde::from_str(data).map_err(|error| {
        SeedError::UserData(format!(
            "it starts with #cloud-config but is not valid YAML: {error}"
        ))
    })?;
    match value {
        Value::Null => Ok(Mapping::new()),
        Value::Mapping(settings) => Ok(settings),
        _ => Err(SeedError::UserData(
            "it starts with #cloud-config but is not a YAML mapping of settings".into(),
        )),
    }
}

fn existing_keys(settings: &Mapping) -> Result<Vec<&str>, SeedError> {
    let not_a_list = || {
        SeedError::UserData(
            "its ssh_authorized_keys must be a list of strings (one public key each)".into(),
        )
    };
    match settings.get("ssh_authorized_keys") {
        None => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| item.as_str().ok_or_else(not_a_list))
            .collect(),
        Some(_) => Err(not_a_list()),
    }
}

fn unique<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = Vec::new();
    for key in keys {
        if !seen.contains(&key) {
            seen.push(key);
        }
    }
    seen
}

/// `ssh_authorized_keys:` and one line per key, double-quoted.
fn keys_yaml(keys: &[&str]) -> String {
    let mut yaml = String::from("ssh_authorized_keys:\n");
    for key in keys {
        yaml.push_str(&format!("- {}\n", crate::yaml_string(key)));
    }
    yaml
}

fn cloud_config_with_keys(keys: &[&str]) -> String {
    if keys.is_empty() {
        "#cloud-config\n".to_owned()
    } else {
        format!("#cloud-config\n{}", keys_yaml(keys))
    }
}

enum UserPart<'a> {
    /// A whole MIME message, nested as it is (its headers become the part's headers).
    Message(&'a str),
    /// Content with the type cloud-init would give it.
    Typed {
        content_type: &'static str,
        body: &'a str,
    },
}

/// A multipart/mixed message: the user's part, then the keys' cloud-config part.
fn multipart(user: UserPart<'_>, keys: &[&str]) -> String {
    let user_part = match user {
        UserPart::Message(message) => {
            let mut part = message.to_owned();
            if !part.ends_with('\n') {
                part.push('\n');
            }
            part
        }
        UserPart::Typed { content_type, body } => text_part(content_type, body, None),
    };
    let keys_part = text_part(
        "text/cloud-config",
        &cloud_config_with_keys(keys),
        Some(("Merge-Type", KEYS_MERGE_TYPE)),
    );
    let boundary = boundary_absent_from(&[&user_part, &keys_part]);
    format!(
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"\n\
         MIME-Version: 1.0\n\
         \n\
         --{boundary}\n\
         {user_part}\
         --{boundary}\n\
         {keys_part}\
         --{boundary}--\n"
    )
}

/// One text part: headers, a blank line, the body, and the line break that belongs to the
/// delimiter after it (so the part's content is exactly `body`).
fn text_part(content_type: &str, body: &str, extra_header: Option<(&str, &str)>) -> String {
    let (charset, encoding, encoded) = if body.is_ascii() {
        ("us-ascii", "7bit", body.to_owned())
    } else {
        ("utf-8", "base64", base64_lines(body.as_bytes()))
    };
    let mut part = format!(
        "Content-Type: {content_type}; charset=\"{charset}\"\n\
         MIME-Version: 1.0\n\
         Content-Transfer-Encoding: {encoding}\n"
    );
    if let Some((name, value)) = extra_header {
        part.push_str(&format!("{name}: {value}\n"));
    }
    part.push('\n');
    part.push_str(&encoded);
    part.push('\n');
    part
}

/// Base64 in lines of 76 characters, as MIME asks.
fn base64_lines(bytes: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|chunk| std::str::from_utf8(chunk).unwrap_or_default())
        .collect();
    lines.join("\n")
}

/// A boundary that occurs in none of the parts. Derived from their contents, so that the
/// same input always gives the same message.
fn boundary_absent_from(parts: &[&str]) -> String {
    let seed = parts.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, part| {
        part.bytes().fold(hash, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    });
    (0u64..)
        .map(|attempt| format!("==vmm-seed-{:016x}==", seed.wrapping_add(attempt)))
        .find(|boundary| !parts.iter().any(|part| part.contains(boundary.as_str())))
        .unwrap_or_default()
}
