//! VM snapshots: `POST /api/vms/{id}/snapshots`, `GET /api/vms/{id}/snapshots`,
//! `POST /api/snapshots/{snapshot_id}/restore` and `DELETE /api/snapshots/{snapshot_id}`.
//!
//! A snapshot's data lives inside its VM's disk image on the host (an internal qcow2
//! snapshot named by the snapshot's ID); the row here is its record. Only the VM's owner
//! (and an admin) sees or touches a VM's snapshots; anyone else gets 404, as for a snapshot
//! that does not exist. Snapshot operations are operations on their VM, so they are
//! serialised with every other operation on it (a second one in flight answers 409).
//!
//! ```text
//!   creating ──ok──▶ ready ──delete──▶ deleting ──ok──▶ (gone)
//!      │                                  │
//!      └── failed: gone      outcome unknown: error (delete again)
//! ```
//!
//! That diagram is a summary: the rules themselves (which snapshot status allows a restore
//! or a delete, what every outcome does) live in `lifecycle`.

pub mod routes;
pub mod store;

use vmm_shared::{SnapshotId, UserId, VmId};

/// Status of a snapshot record (which operation each allows, and what each outcome does to
/// it, is decided in `lifecycle`), and the state a snapshot captured.
pub use vmm_shared::api::snapshots::{CapturedState, SnapshotStatus, SnapshotView};

/// A snapshot as recorded.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub vm_id: VmId,
    pub owner_id: UserId,
    pub name: String,
    pub description: String,
    /// The VM's state when the snapshot was taken.
    pub vm_status: CapturedState,
    pub status: SnapshotStatus,
    pub created_at: String,
}

impl From<Snapshot> for SnapshotView {
    fn from(s: Snapshot) -> Self {
        SnapshotView {
            id: s.id,
            vm_id: s.vm_id,
            name: s.name,
            description: s.description,
            vm_status: s.vm_status,
            status: s.status,
            created_at: s.created_at,
        }
    }
}
