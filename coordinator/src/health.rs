//! `GET /api/health`: whether the database answers, and how many agents are connected.
//! Needs no token. Answers 503 while the database is unreachable.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use vmm_shared::api::health::Health;

use crate::state::AppState;

#[utoipa::path(
    get, path = "/api/health", tag = "system", security(()),
    responses(
        (status = 200, description = "The database answers", body = vmm_shared::api::health::Health),
        (status = 503, description = "The database is unreachable", body = vmm_shared::api::health::Health),
    )
)]
pub async fn health(State(app): State<AppState>) -> (StatusCode, Json<Health>) {
    let agents_connected = app.registry.connected_count() as u64;
    match sqlx::query("SELECT 1").execute(&app.db).await {
        Ok(_) => (
            StatusCode::OK,
            Json(Health {
                status: "ok".into(),
                database: "ok".into(),
                agents_connected,
                code: None,
                message: None,
            }),
        ),
        Err(err) => {
            tracing::error!(error = %err, "health check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "unavailable".into(),
                    database: "unreachable".into(),
                    agents_connected,
                    code: Some(StatusCode::SERVICE_UNAVAILABLE.as_u16()),
                    message: Some("the database is unreachable".into()),
                }),
            )
        }
    }
}
