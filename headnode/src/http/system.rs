//! /healthz, /metrics and /openapi.json: unauthenticated.

use crate::authz::Action;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

use crate::AppState;
use crate::error::Result;

/// 200 when the database answers.
/// Answers from the database's last answer if it is under a second old: a
/// flood of health checks costs at most one query a second.
pub async fn healthz(State(s): State<AppState>) -> Result<Json<serde_json::Value>> {
    let fresh = s
        .limits
        .health_ok
        .lock()
        .expect("health")
        .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1));
    if !fresh {
        s.db.ping().await?;
        *s.limits.health_ok.lock().expect("health") = Some(std::time::Instant::now());
    }
    Ok(Json(
        json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}),
    ))
}

/// Prometheus metrics; with `metrics_need_token`, for operators only.
pub async fn metrics(
    State(s): State<AppState>,
    p: Result<super::OpContext, crate::error::Error>,
) -> Result<impl IntoResponse> {
    if s.config.limits.metrics_need_token {
        p?.authorize(Action::MetricsRead)?;
    }
    let servers = s.db.server_count_by_status().await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(&servers),
    ))
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::spec())
}
