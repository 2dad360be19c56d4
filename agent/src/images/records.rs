//! What the agent knows of the images it verified: one small file per cached image,
//! `<cache dir>/<image id>.verified`, holding the SHA-256 it checked, the file's size and
//! its format. Written before the image becomes a base volume (a record without a base is
//! ignored, and swept at start), through a temporary file renamed into place and synced,
//! so a record is whole or absent.
//!
//! Also names the temporary files of fetches in progress (`<image id>.fetch-<random>`),
//! which the start-up sweep removes: a fetch cut short by the agent's death never counts
//! as cached.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::hypervisor::{ImageFormat, ImageId};

/// The verified facts of one cached image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedImage {
    pub sha256: String,
    pub size_bytes: u64,
    pub format: ImageFormat,
}

const RECORD_SUFFIX: &str = ".verified";
const FETCH_INFIX: &str = ".fetch-";

pub fn record_path(dir: &Path, image_id: ImageId) -> PathBuf {
    dir.join(format!("{image_id}{RECORD_SUFFIX}"))
}

/// A fresh name for a fetch of `image_id` in progress.
pub fn fetch_path(dir: &Path, image_id: ImageId) -> PathBuf {
    dir.join(format!(
        "{image_id}{FETCH_INFIX}{:016x}",
        rand::random::<u64>()
    ))
}

/// The record of `image_id`, if there is a whole one.
pub fn read(dir: &Path, image_id: ImageId) -> io::Result<Option<VerifiedImage>> {
    let text = match std::fs::read_to_string(record_path(dir, image_id)) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    Ok(parse(&text))
}

fn parse(text: &str) -> Option<VerifiedImage> {
    let mut sha256 = None;
    let mut size_bytes = None;
    let mut format = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("sha256", value)) if is_sha256(value) => sha256 = Some(value.to_owned()),
            Some(("size_bytes", value)) => size_bytes = value.parse().ok(),
            Some(("format", value)) => format = ImageFormat::parse(value),
            _ => {}
        }
    }
    Some(VerifiedImage {
        sha256: sha256?,
        size_bytes: size_bytes?,
        format: format?,
    })
}

/// Lower-case hex, 64 digits.
pub fn is_sha256(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Writes the record of `image_id`, whole or not at all.
pub fn write(dir: &Path, image_id: ImageId, verified: &VerifiedImage) -> io::Result<()> {
    let path = record_path(dir, image_id);
    let temporary = dir.join(format!(".{image_id}{RECORD_SUFFIX}.tmp"));
    let text = format!(
        "sha256 {}\nsize_bytes {}\nformat {}\n",
        verified.sha256, verified.size_bytes, verified.format
    );
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

pub fn remove(dir: &Path, image_id: ImageId) -> io::Result<()> {
    match std::fs::remove_file(record_path(dir, image_id)) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// What is in the cache directory: records by image, and leftovers (fetches in progress
/// and half-written records, by path).
#[derive(Debug, Default)]
pub struct DirListing {
    pub records: Vec<ImageId>,
    pub leftovers: Vec<PathBuf>,
}

pub fn list(dir: &Path) -> io::Result<DirListing> {
    let mut listing = DirListing::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(listing),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(RECORD_SUFFIX) {
            if let Ok(image_id) = id.parse() {
                listing.records.push(image_id);
            }
        } else if name.contains(FETCH_INFIX) || name.ends_with(".tmp") {
            listing.leftovers.push(entry.path());
        }
    }
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_partial_ones_are_absent() {
        let dir = tempfile::tempdir().unwrap();
        let image_id = ImageId::new_random();
        assert_eq!(read(dir.path(), image_id).unwrap(), None);
        let verified = VerifiedImage {
            sha256: "ab".repeat(32),
            size_bytes: 15_000_000,
            format: ImageFormat::Qcow2,
        };
        write(dir.path(), image_id, &verified).unwrap();
        assert_eq!(read(dir.path(), image_id).unwrap(), Some(verified));
        // A record cut short reads as none.
        std::fs::write(record_path(dir.path(), image_id), "sha256 ").unwrap();
        assert_eq!(read(dir.path(), image_id).unwrap(), None);
        let fetch = fetch_path(dir.path(), image_id);
        std::fs::write(&fetch, b"partial").unwrap();
        let listing = list(dir.path()).unwrap();
        assert_eq!(listing.records, [image_id]);
        assert_eq!(listing.leftovers, [fetch]);
        remove(dir.path(), image_id).unwrap();
        remove(dir.path(), image_id).unwrap();
        assert!(list(dir.path()).unwrap().records.is_empty());
        assert!(!is_sha256(&"AB".repeat(32)) && !is_sha256("ab") && is_sha256(&"0f".repeat(32)));
    }
}
