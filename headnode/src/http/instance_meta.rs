//! An instance's tags and metadata after create (CloudAPI's semantics: PUT
//! replaces, POST merges, DELETE removes one key or all), its alias and its
//! size. Every change reaches the instance's metadata
//! service (`mdata-get`) without a restart; tag changes also re-push its
//! node's firewall (rules name tags).

use crate::authz::Action;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nereid_api::{
    ErrorBody, Instance, InstanceAccepted, InstanceId, InstanceRename, InstanceResize,
};
use serde_json::{Map, Value};

use super::{ApiJson, ApiPath, OpContext};
use crate::AppState;
use crate::db::{MapChange, MapChanged, MapField};
use crate::error::{Error, Result};
use crate::instances::{check_metadata, check_tags};

fn check(field: MapField, map: &Map<String, Value>) -> Result<()> {
    match field {
        MapField::Tags => check_tags(map.iter()),
        MapField::Metadata => {
            let strings = crate::db::metadata_strings(map)?;
            check_metadata(strings.iter().map(|(k, v)| (*k, *v)))
        }
    }
}

async fn change(
    s: &AppState,
    p: &OpContext,
    id: InstanceId,
    field: MapField,
    change: MapChange,
) -> Result<Map<String, Value>> {
    let MapChanged { map, server, .. } =
        s.db.instance_map_change(
            id,
            p.authorize(Action::InstanceWrite)?,
            field,
            change,
            |m| check(field, m),
        )
        .await?;
    crate::metadata::spawn_push(s, id);
    if let (MapField::Tags, Some(server)) = (field, server) {
        crate::firewall::spawn_sync_server(s, server);
    }
    Ok(map)
}

fn to_map<T: serde::Serialize>(m: T) -> Map<String, Value> {
    match serde_json::to_value(m) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

macro_rules! map_routes {
    ($field:expr, $name:literal, $body:ty,
     $get:ident, $put:ident, $post:ident, $clear:ident, $get_key:ident, $delete_key:ident) => {
        #[utoipa::path(get, path = concat!("/v1/instances/{id}/", $name), tag = "instances",
            params(("id" = InstanceId, Path)),
            responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
        pub async fn $get(
            State(s): State<AppState>,
            p: OpContext,
            ApiPath(id): ApiPath<InstanceId>,
        ) -> Result<Json<Map<String, Value>>> {
            Ok(Json(s.db.instance_map(id, p.authorize(Action::InstanceRead)?, $field).await?))
        }

        /// Replaces all of them.
        #[utoipa::path(put, path = concat!("/v1/instances/{id}/", $name), tag = "instances",
            params(("id" = InstanceId, Path)), request_body = Object,
            responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
        pub async fn $put(
            State(s): State<AppState>,
            p: OpContext,
            ApiPath(id): ApiPath<InstanceId>,
            ApiJson(body): ApiJson<$body>,
        ) -> Result<Json<Map<String, Value>>> {
            Ok(Json(change(&s, &p, id, $field, MapChange::Replace(to_map(body))).await?))
        }

        /// Adds these, replacing the values of keys that exist.
        #[utoipa::path(post, path = concat!("/v1/instances/{id}/", $name), tag = "instances",
            params(("id" = InstanceId, Path)), request_body = Object,
            responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
        pub async fn $post(
            State(s): State<AppState>,
            p: OpContext,
            ApiPath(id): ApiPath<InstanceId>,
            ApiJson(body): ApiJson<$body>,
        ) -> Result<Json<Map<String, Value>>> {
            Ok(Json(change(&s, &p, id, $field, MapChange::Merge(to_map(body))).await?))
        }

        /// Removes all of them.
        #[utoipa::path(delete, path = concat!("/v1/instances/{id}/", $name), tag = "instances",
            params(("id" = InstanceId, Path)),
            responses((status = 204), (status = 404, body = ErrorBody)))]
        pub async fn $clear(
            State(s): State<AppState>,
            p: OpContext,
            ApiPath(id): ApiPath<InstanceId>,
        ) -> Result<StatusCode> {
            change(&s, &p, id, $field, MapChange::Clear).await?;
            Ok(StatusCode::NO_CONTENT)
        }

        #[utoipa::path(get, path = concat!("/v1/instances/{id}/", $name, "/{key}"), tag = "instances",
            params(("id" = InstanceId, Path), ("key" = String, Path)),
            responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
        pub async fn $get_key(
            State(s): State<AppState>,
            p: OpContext,
            ApiPath((id, key)): ApiPath<(InstanceId, String)>,
        ) -> Result<Json<Value>> {
            let mut map = s.db.instance_map(id, p.authorize(Action::InstanceRead)?, $field).await?;
            map.remove(&key)
                .map(Json)
                .ok_or_else(|| Error::not_found($field.noun(), crate::validate::truncate(&key)))
        }

        #[utoipa::path(delete, path = concat!("/v1/instances/{id}/", $name, "/{key}"), tag = "instances",
            params(("id" = InstanceId, Path), ("key" = String, Path)),
            responses((status = 204), (status = 404, body = ErrorBody)))]
        pub async fn $delete_key(
            State(s): State<AppState>,
            p: OpContext,
            ApiPath((id, key)): ApiPath<(InstanceId, String)>,
        ) -> Result<StatusCode> {
            change(&s, &p, id, $field, MapChange::Remove(key)).await?;
            Ok(StatusCode::NO_CONTENT)
        }
    };
}

map_routes!(
    MapField::Tags,
    "tags",
    Map<String, Value>,
    tags_get,
    tags_put,
    tags_post,
    tags_clear,
    tag_get,
    tag_delete
);
map_routes!(
    MapField::Metadata,
    "metadata",
    std::collections::BTreeMap<String, String>,
    metadata_get,
    metadata_put,
    metadata_post,
    metadata_clear,
    metadata_key_get,
    metadata_key_delete
);

/// Renames the instance (its alias; `sdc:alias` follows at once, the host
/// name of a running instance at its next start).
#[utoipa::path(post, path = "/v1/instances/{id}/rename", tag = "instances",
    params(("id" = InstanceId, Path)), request_body = InstanceRename,
    responses((status = 200, body = Instance), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn instance_rename(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<InstanceId>,
    ApiJson(req): ApiJson<InstanceRename>,
) -> Result<Json<Instance>> {
    crate::instances::check_alias(&req.alias)?;
    s.db.instance_rename(id, p.authorize(Action::InstanceWrite)?, &req.alias)
        .await?;
    crate::metadata::spawn_push(&s, id);
    Ok(Json(s.db.instance_get(id, None).await?))
}

/// Resizes the instance to another package of its brand, on the same
/// server: containers live (memory, swap, CPU cap, pids and the dataset
/// quota change in place), VMs while stopped. The new size is reserved at
/// once: a 409 `InsufficientCapacity` says what its server lacks, a 409
/// `QuotaExceeded` which quota; the node applies it in the job (202).
#[utoipa::path(post, path = "/v1/instances/{id}/resize", tag = "instances",
    params(("id" = InstanceId, Path)), request_body = InstanceResize,
    responses((status = 202, body = InstanceAccepted), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn instance_resize(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<InstanceId>,
    ApiJson(req): ApiJson<InstanceResize>,
) -> Result<(StatusCode, Json<InstanceAccepted>)> {
    let accepted = crate::instances::resize(&s, p, id, &req.package).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}
