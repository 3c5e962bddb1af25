//! /v1/instances/{id}/snapshots: ZFS snapshots of an instance (CloudAPI's
//! machine snapshots); rollback needs the instance stopped.

use crate::authz::Action;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nereid_api::{
    ErrorBody, InstanceId, Snapshot, SnapshotCreate, SnapshotRollback, SnapshotRolledBack,
};

use super::{ApiJson, ApiPath, OpContext};
use crate::AppState;
use crate::error::Result;
use crate::snapshots;

#[utoipa::path(get, path = "/v1/instances/{id}/snapshots", tag = "instances",
    params(("id" = InstanceId, Path)),
    responses((status = 200, body = Vec<Snapshot>), (status = 404, body = ErrorBody)))]
pub async fn snapshot_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<InstanceId>,
) -> Result<Json<Vec<Snapshot>>> {
    Ok(Json(snapshots::list(&s, &p, id).await?))
}

/// Snapshots the instance on its node. A retry of a name whose first try
/// did not finish completes it; a name that exists is a 409, as is the
/// 17th snapshot of an instance.
#[utoipa::path(post, path = "/v1/instances/{id}/snapshots", tag = "instances",
    params(("id" = InstanceId, Path)), request_body = SnapshotCreate,
    responses((status = 201, body = Snapshot), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn snapshot_create(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<InstanceId>,
    ApiJson(req): ApiJson<SnapshotCreate>,
) -> Result<(StatusCode, Json<Snapshot>)> {
    let name = req
        .name
        .unwrap_or_else(|| chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string());
    let snap = snapshots::create(&s, &p, id, &name).await?;
    Ok((StatusCode::CREATED, Json(snap)))
}

#[utoipa::path(get, path = "/v1/instances/{id}/snapshots/{name}", tag = "instances",
    params(("id" = InstanceId, Path), ("name" = String, Path)),
    responses((status = 200, body = Snapshot), (status = 404, body = ErrorBody)))]
pub async fn snapshot_get(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath((id, name)): ApiPath<(InstanceId, String)>,
) -> Result<Json<Snapshot>> {
    Ok(Json(
        s.db.snapshot_get(id, p.authorize(Action::SnapshotRead)?, &name)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/instances/{id}/snapshots/{name}", tag = "instances",
    params(("id" = InstanceId, Path), ("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn snapshot_delete(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath((id, name)): ApiPath<(InstanceId, String)>,
) -> Result<StatusCode> {
    snapshots::delete(&s, &p, id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rolls the stopped instance back to the snapshot (newer snapshots are
/// destroyed, as with `vmadm rollback-snapshot`); with `start`, starts it.
#[utoipa::path(post, path = "/v1/instances/{id}/snapshots/{name}/rollback", tag = "instances",
    params(("id" = InstanceId, Path), ("name" = String, Path)), request_body = SnapshotRollback,
    responses((status = 200, body = SnapshotRolledBack), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn snapshot_rollback(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath((id, name)): ApiPath<(InstanceId, String)>,
    ApiJson(req): ApiJson<SnapshotRollback>,
) -> Result<Json<SnapshotRolledBack>> {
    Ok(Json(
        snapshots::rollback(&s, p, id, &name, req.start).await?,
    ))
}
