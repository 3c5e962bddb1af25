//! /v1/network-pools: named, ordered lists of networks of one nic tag (NAPI's
//! network pools). Operators make and delete them; anyone reads those they
//! may use, and names one in an instance's `networks` like a network.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nereid_api::{ErrorBody, NetworkId, NetworkPool, NetworkPoolCreate, NetworkPoolId, Page};

use super::{ApiJson, ApiPath, OpContext};
use crate::AppState;
use crate::authz::Action;
use crate::error::{Error, Result};
use crate::validate;

#[utoipa::path(get, path = "/v1/network-pools", tag = "networks",
    responses((status = 200, body = Page<NetworkPool>)))]
pub async fn pool_list(State(s): State<AppState>, p: OpContext) -> Result<Json<Page<NetworkPool>>> {
    Ok(Json(Page {
        items: s.db.pool_list(p.authorize(Action::NetworkRead)?).await?,
        next_page_token: None,
    }))
}

/// A pool of existing networks, all on one nic tag (400 otherwise).
#[utoipa::path(post, path = "/v1/network-pools", tag = "networks", request_body = NetworkPoolCreate,
    responses((status = 201, body = NetworkPool), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn pool_create(
    State(s): State<AppState>,
    p: OpContext,
    ApiJson(req): ApiJson<NetworkPoolCreate>,
) -> Result<(StatusCode, Json<NetworkPool>)> {
    p.authorize(Action::NetworkWrite)?;
    validate::name("name", &req.name)?;
    validate::text("description", &req.description, 1024)?;
    if req.networks.is_empty() || req.networks.len() > 64 {
        return Err(Error::invalid("networks", "must list 1 to 64 networks"));
    }
    let mut ids: Vec<NetworkId> = Vec::new();
    let mut nic_tag: Option<String> = None;
    for r in &req.networks {
        let net = match r.parse::<NetworkId>() {
            Ok(id) => s.db.network_get(id, None).await,
            Err(_) => s.db.network_get_by_name(r, None).await,
        }?;
        if net.fabric_vlan_id.is_some() {
            return Err(Error::invalid(
                "networks",
                format!("{r:?} is an account's fabric network; pools hold shared networks"),
            ));
        }
        if ids.contains(&net.id) {
            return Err(Error::invalid("networks", format!("{r:?} is listed twice")));
        }
        match &nic_tag {
            Some(t) if *t != net.nic_tag => {
                return Err(Error::invalid(
                    "networks",
                    format!(
                        "a pool's networks share one nic tag: {r:?} is on {:?}, the first on {t:?}",
                        net.nic_tag
                    ),
                ));
            }
            _ => nic_tag = Some(net.nic_tag.clone()),
        }
        ids.push(net.id);
    }
    s.db.accounts_exist(&req.owners).await?;
    let pool =
        s.db.pool_create(
            &req.name,
            nic_tag.as_deref().unwrap_or_default(),
            &ids,
            &req.owners,
            &req.description,
        )
        .await?;
    tracing::info!(pool = %pool.id, name = %pool.name, networks = ids.len(), "network pool created");
    Ok((StatusCode::CREATED, Json(pool)))
}

#[utoipa::path(get, path = "/v1/network-pools/{id}", tag = "networks", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = NetworkPool), (status = 404, body = ErrorBody)))]
pub async fn pool_get(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<NetworkPoolId>,
) -> Result<Json<NetworkPool>> {
    Ok(Json(
        s.db.pool_get(id, p.authorize(Action::NetworkRead)?).await?,
    ))
}

#[utoipa::path(delete, path = "/v1/network-pools/{id}", tag = "networks", params(("id" = String, Path, format = Uuid)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn pool_delete(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<NetworkPoolId>,
) -> Result<StatusCode> {
    p.authorize(Action::NetworkWrite)?;
    s.db.pool_delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
