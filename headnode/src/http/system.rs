//! /healthz, /metrics and /openapi.json: unauthenticated.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

use crate::AppState;
use crate::error::Result;

/// 200 when the database answers.
pub async fn healthz(State(s): State<AppState>) -> Result<Json<serde_json::Value>> {
    s.db.ping().await?;
    Ok(Json(
        json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}),
    ))
}

pub async fn metrics(State(s): State<AppState>) -> Result<impl IntoResponse> {
    let servers = s.db.server_count_by_status().await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(&servers),
    ))
}

pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::spec())
}
