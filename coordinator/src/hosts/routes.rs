//! `GET /api/hosts`: every host with its capacity, allocation, connection state and the
//! images it caches.
//! Administrators only.

use axum::Json;
use axum::extract::State;

use super::store::{self, HostView};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn list_hosts(
    State(app): State<AppState>,
    user: CurrentUser,
) -> Result<Json<Vec<HostView>>, ApiError> {
    user.require_admin()?;
    Ok(Json(store::list(&app.db).await?))
}
