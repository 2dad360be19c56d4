//! What the agent does at start, before it accepts any command, to pick up after an earlier
//! run that may have died mid-operation (`kill -9`, a crash, a power cut):
//!
//! 1. Open the operation [`Journal`] and log the operations it shows as accepted without a
//!    result. Nothing is redone here: the coordinator already treats the operation as
//!    failed or unknown, and the agent's inventory tells it what exists. A repeat of such an
//!    operation resumes it (see [`crate::commands`]).
//! 2. Delete the disk and seed volumes of product VMs that have no domain: what a create
//!    cut short between making them and defining the domain leaves. Every deletion is
//!    logged.
//! 3. Remove the temporary files of image fetches cut short, and records of images whose
//!    base is gone (see [`crate::images`]): neither ever counts as cached.
//!
//! Never stops, starts or undefines a domain.

use std::path::Path;

use anyhow::Context as _;

use crate::hypervisor::HypervisorHandle;
use crate::images::ImageCache;
use crate::journal::Journal;

/// Opens the journal in `data_dir`, sweeps the storage pool and the image cache; returns
/// the journal.
pub async fn recover_at_start(
    data_dir: &Path,
    hypervisor: &HypervisorHandle,
    images: &ImageCache,
) -> anyhow::Result<Journal> {
    let dir = data_dir.to_path_buf();
    let journal = tokio::task::spawn_blocking(move || Journal::open(&dir))
        .await
        .context("the journal's opening task failed")??;

    let interrupted = journal
        .take_interrupted()
        .await
        .context("cannot read the operation journal")?;
    for operation in &interrupted {
        tracing::warn!(
            operation_id = %operation.operation_id,
            vm_id = %operation.vm_id,
            action = %operation.kind,
            accepted_at_unix_ms = operation.accepted_at_unix_ms,
            "operation interrupted by the agent's last stop; a repeat of it resumes it"
        );
    }

    let removed = hypervisor
        .call(|hv| hv.remove_orphan_volumes())
        .await
        .context("cannot sweep the storage pool for disks left by interrupted creates")?;
    let image_files_removed = images
        .sweep()
        .await
        .context("cannot sweep the image cache for fetches cut short")?;
    tracing::info!(
        interrupted_operations = interrupted.len(),
        orphaned_volumes_removed = removed.len(),
        image_files_removed,
        "start-up recovery done"
    );
    Ok(journal)
}
