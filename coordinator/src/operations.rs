//! Operations: every state-changing request gets an ID, recorded with its outcome, returned
//! in the `Operation-Id` response header and readable later at `GET /api/operations/{id}`.
//! At most one operation per VM is pending at a time (a unique index enforces it).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use sqlx::Row;
use vmm_shared::{HostId, OperationId, OperationKind, UserId, VmId};

use crate::auth::CurrentUser;
use crate::db::{self, Db, DbTransaction};
use crate::error::ApiError;
use crate::http::ApiPath;
use crate::state::AppState;

/// Records a pending operation; a second one in flight on the same VM answers 409.
pub async fn insert_pending(
    tx: &mut DbTransaction,
    id: OperationId,
    kind: OperationKind,
    vm: VmId,
    host: &HostId,
    user: UserId,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO operations (id, kind, vm_id, host_id, user_id, status, created_at)
         VALUES (?, ?, ?, ?, ?, 'pending', ?)",
    )
    .bind(id.to_string())
    .bind(kind.as_str())
    .bind(vm.to_string())
    .bind(host.as_str())
    .bind(user.to_string())
    .bind(db::now())
    .execute(&mut **tx)
    .await
    .map_err(|err| {
        if db::is_unique_violation(&err) {
            ApiError::Conflict(
                "another operation on this VM is in progress; try again when it has finished"
                    .into(),
            )
        } else {
            err.into()
        }
    })?;
    Ok(())
}

/// An operation being carried out by this process: its ID, kind and start time.
#[derive(Clone, Copy, Debug)]
pub struct Operation {
    pub id: OperationId,
    pub kind: OperationKind,
    started: std::time::Instant,
}

impl Operation {
    pub fn begin(kind: OperationKind) -> Self {
        Self {
            id: OperationId::new_random(),
            kind,
            started: std::time::Instant::now(),
        }
    }
}

/// Records the outcome of a pending operation (`Ok(())` succeeded, `Err(reason)` failed)
/// in the database and in the metrics.
pub async fn finish(
    db: &Db,
    operation: Operation,
    outcome: Result<(), &str>,
) -> Result<(), sqlx::Error> {
    crate::telemetry::record_operation(
        operation.kind.as_str(),
        outcome.is_ok(),
        operation.started.elapsed(),
    );
    let id = operation.id;
    let (status, error) = match outcome {
        Ok(()) => ("succeeded", None),
        Err(reason) => ("failed", Some(reason)),
    };
    sqlx::query("UPDATE operations SET status = ?, error = ?, finished_at = ? WHERE id = ? AND status = 'pending'")
        .bind(status)
        .bind(error)
        .bind(db::now())
        .bind(id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

pub async fn fail_all_pending(tx: &mut DbTransaction, reason: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE operations SET status = 'failed', error = ?, finished_at = ? WHERE status = 'pending'")
        .bind(reason)
        .bind(db::now())
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected())
}

/// Whether the VM's create was ever acknowledged by its host.
pub async fn create_succeeded(db: &Db, vm: VmId) -> Result<bool, sqlx::Error> {
    let succeeded: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM operations WHERE vm_id = ? AND kind = 'create' AND status = 'succeeded'",
    )
    .bind(vm.to_string())
    .fetch_one(db)
    .await?;
    Ok(succeeded > 0)
}

#[derive(Debug, Serialize)]
pub struct OperationView {
    id: String,
    kind: String,
    vm_id: String,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
}

/// `GET /api/operations/{id}`: the caller's own operations (an admin's: all).
pub async fn get_operation(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<OperationView>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no operation with ID {id}"));
    let id: OperationId = id.parse().map_err(|_| not_found())?;
    let row = sqlx::query("SELECT * FROM operations WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(&app.db)
        .await?
        .ok_or_else(not_found)?;
    let owner: String = row.try_get("user_id")?;
    if !user.is_admin() && owner != user.id.to_string() {
        return Err(not_found());
    }
    Ok(Json(OperationView {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        vm_id: row.try_get("vm_id")?,
        status: row.try_get("status")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
    }))
}
