//! `GET /api/health`: whether the database answers, and how many agents are connected.
//! Needs no token. Answers 503 while the database is unreachable.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

pub async fn health(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let agents = app.registry.connected_count();
    match sqlx::query("SELECT 1").execute(&app.db).await {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "database": "ok", "agents_connected": agents })),
        ),
        Err(err) => {
            tracing::error!(error = %err, "health check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "code": 503,
                    "message": "the database is unreachable",
                    "status": "unavailable",
                    "database": "unreachable",
                    "agents_connected": agents,
                })),
            )
        }
    }
}
