//! The VFAT volume of a seed: a FAT12/16 file system in memory, labelled `CIDATA`, with the
//! seed's files in its root directory under their long names, and the reverse, for tests
//! and diagnostics.
//!
//! The volume is sized to its contents (1 MiB plus twice the files' size, in 64 KiB
//! steps), its timestamps are fixed, and its serial is given: its bytes depend on its
//! contents only.

use std::collections::BTreeMap;
use std::io::{self, Cursor, Read as _, Write as _};

use fatfs::{Date, DateTime, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider};

/// The volume label cloud-init looks for (it accepts `cidata` and `CIDATA`; FAT labels are
/// conventionally upper case).
pub const SEED_LABEL: &str = "CIDATA";

const STEP: usize = 64 * 1024;
const BASE_SIZE: usize = 1024 * 1024;
/// Some sizes fall between what FAT12 and FAT16 can describe; a few steps up always fits.
const SIZE_ATTEMPTS: usize = 8;

/// What a FAT volume holds: its label and the files of its root directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeContents {
    /// The label of the root directory's volume entry (what `blkid` reports), or else the
    /// boot sector's.
    pub label: String,
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Formats a volume and writes `files` into its root directory.
pub(crate) fn build(files: &[(&str, &[u8])], serial: u32) -> io::Result<Vec<u8>> {
    let content: usize = files.iter().map(|(_, data)| data.len()).sum();
    let mut size = (BASE_SIZE + 2 * content).div_ceil(STEP) * STEP;
    let mut last_error = None;
    for _ in 0..SIZE_ATTEMPTS {
        match build_sized(files, serial, size) {
            Ok(volume) => return Ok(volume),
            Err(error) => last_error = Some(error),
        }
        size += STEP;
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no volume size was tried")))
}

fn build_sized(files: &[(&str, &[u8])], serial: u32, size: usize) -> io::Result<Vec<u8>> {
    let mut label = [b' '; 11];
    label[..SEED_LABEL.len()].copy_from_slice(SEED_LABEL.as_bytes());
    let mut disk = Cursor::new(vec![0u8; size]);
    fatfs::format_volume(
        &mut disk,
        FormatVolumeOptions::new()
            .volume_label(label)
            .volume_id(serial),
    )?;
    let fs = FileSystem::new(&mut disk, FsOptions::new().time_provider(&FIXED_TIME))?;
    {
        let root = fs.root_dir();
        for (name, data) in files {
            let mut file = root.create_file(name)?;
            file.truncate()?;
            file.write_all(data)?;
            file.flush()?;
        }
    }
    fs.unmount()?;
    Ok(disk.into_inner())
}

/// Reads a FAT volume: its label and every file of its root directory.
pub fn read_volume(volume: &[u8]) -> io::Result<VolumeContents> {
    let fs = FileSystem::new(Cursor::new(volume.to_vec()), FsOptions::new())?;
    let label = match fs.read_volume_label_from_root_dir()? {
        Some(label) => label,
        None => fs.volume_label(),
    };
    let mut files = BTreeMap::new();
    for entry in fs.root_dir().iter() {
        let entry = entry?;
        if entry.is_file() {
            let mut data = Vec::new();
            entry.to_file().read_to_end(&mut data)?;
            files.insert(entry.file_name(), data);
        }
    }
    Ok(VolumeContents {
        label: label.trim_end().to_owned(),
        files,
    })
}

/// Every timestamp on the volume: 1980-01-01 00:00, the FAT epoch.
#[derive(Debug)]
struct FixedTime;

static FIXED_TIME: FixedTime = FixedTime;

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }

    fn get_current_date_time(&self) -> DateTime {
        DateTime {
            date: self.get_current_date(),
            time: Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}
