//! /v1/fabrics/vlans: an account's fabric VLANs and the networks on them
//! (operators: any account's, with `owner`). Fabric networks are also listed
//! by /v1/networks for their owner, and used like any network.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nereid_api::{
    AccountId, ErrorBody, FabricNetworkCreate, FabricVlan, FabricVlanCreate, Network, NetworkId,
    Page,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiPath, ApiQuery, OpContext};
use crate::AppState;
use crate::authz::Action;
use crate::db::{NewNetwork, page_limit, parse_page_token};
use crate::error::{Error, Result};
use crate::{ipam, validate};

/// The nic tag fabrics run over: the operator creates it and maps it, at
/// setup, to each node's underlay interface (whose IPv4 address is the
/// node's VXLAN endpoint).
pub const FABRIC_NIC_TAG: &str = "underlay";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FabricOwnerParams {
    /// Operators: the account whose fabric it is (default: the caller's;
    /// listing VLANs without it shows every account's).
    pub owner: Option<AccountId>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FabricNetworkListParams {
    /// Operators: the account whose fabric it is (default: the caller's).
    pub owner: Option<AccountId>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub page_token: Option<String>,
}

fn check_vlan_id(vlan_id: u16) -> Result<()> {
    if vlan_id > 4095 {
        return Err(Error::invalid(
            "vlan_id",
            format!("must be within 0..=4095, got {vlan_id}"),
        ));
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/fabrics/vlans", tag = "fabrics", params(FabricOwnerParams),
    responses((status = 200, body = Page<FabricVlan>), (status = 404, body = ErrorBody)))]
pub async fn vlan_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiQuery(q): ApiQuery<FabricOwnerParams>,
) -> Result<Json<Page<FabricVlan>>> {
    let owner = match q.owner {
        None => p.authorize(Action::FabricRead)?,
        asked => Some(p.on_behalf_of(Action::FabricRead, asked)?),
    };
    Ok(Json(Page {
        items: s.db.fabric_vlan_list(owner).await?,
        next_page_token: None,
    }))
}

#[utoipa::path(post, path = "/v1/fabrics/vlans", tag = "fabrics", request_body = FabricVlanCreate,
    responses((status = 201, body = FabricVlan), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn vlan_create(
    State(s): State<AppState>,
    p: OpContext,
    ApiJson(req): ApiJson<FabricVlanCreate>,
) -> Result<(StatusCode, Json<FabricVlan>)> {
    let owner = p.on_behalf_of(Action::FabricWrite, req.owner)?;
    check_vlan_id(req.vlan_id)?;
    validate::name("name", &req.name)?;
    validate::text("description", &req.description, 1024)?;
    let vlan =
        s.db.fabric_vlan_create(owner, req.vlan_id, &req.name, &req.description)
            .await?;
    tracing::info!(account = %owner, vlan = vlan.vlan_id, vni = vlan.vni, "fabric VLAN created");
    Ok((StatusCode::CREATED, Json(vlan)))
}

#[utoipa::path(get, path = "/v1/fabrics/vlans/{vlan_id}", tag = "fabrics",
    params(("vlan_id" = u16, Path, minimum = 0, maximum = 4095), FabricOwnerParams),
    responses((status = 200, body = FabricVlan), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn vlan_get(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(vlan_id): ApiPath<u16>,
    ApiQuery(q): ApiQuery<FabricOwnerParams>,
) -> Result<Json<FabricVlan>> {
    check_vlan_id(vlan_id)?;
    let owner = p.on_behalf_of(Action::FabricRead, q.owner)?;
    Ok(Json(s.db.fabric_vlan_get(owner, vlan_id).await?))
}

#[utoipa::path(delete, path = "/v1/fabrics/vlans/{vlan_id}", tag = "fabrics",
    params(("vlan_id" = u16, Path, minimum = 0, maximum = 4095), FabricOwnerParams),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn vlan_delete(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(vlan_id): ApiPath<u16>,
    ApiQuery(q): ApiQuery<FabricOwnerParams>,
) -> Result<StatusCode> {
    check_vlan_id(vlan_id)?;
    let owner = p.on_behalf_of(Action::FabricWrite, q.owner)?;
    s.db.fabric_vlan_delete(owner, vlan_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/fabrics/vlans/{vlan_id}/networks", tag = "fabrics",
    params(("vlan_id" = u16, Path, minimum = 0, maximum = 4095), FabricNetworkListParams),
    responses((status = 200, body = Page<Network>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn network_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(vlan_id): ApiPath<u16>,
    ApiQuery(q): ApiQuery<FabricNetworkListParams>,
) -> Result<Json<Page<Network>>> {
    check_vlan_id(vlan_id)?;
    let owner = p.on_behalf_of(Action::FabricRead, q.owner)?;
    let limit = page_limit(q.limit)?;
    let after = parse_page_token(q.page_token.as_deref())?;
    s.db.fabric_vlan_get(owner, vlan_id).await?;
    Ok(Json(
        s.db.network_list(None, None, Some((owner, vlan_id)), after, limit)
            .await?,
    ))
}

/// A network on the VLAN: its subnet may overlap other accounts' (409 when
/// it overlaps one of the same account's fabric networks).
#[utoipa::path(post, path = "/v1/fabrics/vlans/{vlan_id}/networks", tag = "fabrics",
    params(("vlan_id" = u16, Path, minimum = 0, maximum = 4095), FabricOwnerParams),
    request_body = FabricNetworkCreate,
    responses((status = 201, body = Network), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn network_create(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(vlan_id): ApiPath<u16>,
    ApiQuery(q): ApiQuery<FabricOwnerParams>,
    ApiJson(req): ApiJson<FabricNetworkCreate>,
) -> Result<(StatusCode, Json<Network>)> {
    check_vlan_id(vlan_id)?;
    let owner = p.on_behalf_of(Action::FabricWrite, q.owner)?;
    validate::name("name", &req.name)?;
    validate::text("description", &req.description, 1024)?;
    if let Some(m) = req.mtu
        && !(576..=8950).contains(&m)
    {
        return Err(Error::invalid("mtu", "must be within 576..=8950"));
    }
    let addresses = ipam::check_addresses(
        &req.subnet,
        req.gateway.as_deref(),
        &req.provision_start,
        &req.provision_end,
        &req.resolvers,
        &req.routes,
    )?;
    let internet_nat = req.internet_nat.unwrap_or(req.gateway.is_some());
    if internet_nat {
        if req.gateway.is_none() {
            return Err(Error::invalid(
                "internet_nat",
                "needs a gateway (the address the nodes NAT from)",
            ));
        }
        if s.config.fabric_nat_network.is_none() {
            return Err(Error::Conflict(
                "internet_nat: this datacenter has no NAT network (the headnode's \
                 --fabric-nat-network); create the network with internet_nat false"
                    .into(),
            ));
        }
    }
    let vlan = s.db.fabric_vlan_get(owner, vlan_id).await?;
    let network =
        s.db.network_create(&NewNetwork {
            name: &req.name,
            nic_tag: FABRIC_NIC_TAG,
            vlan_id: 0,
            vni: Some(vlan.vni),
            addresses: &addresses,
            mtu: req.mtu,
            owners: &[owner],
            description: &req.description,
            fabric: Some((owner, vlan_id)),
            internet_nat,
        })
        .await
        .map_err(|e| match e {
            Error::NotFound { .. } => Error::Conflict(format!(
                "fabrics are not set up in this datacenter: an operator must create the nic tag \
                 {FABRIC_NIC_TAG:?} and map it to each node's underlay interface"
            )),
            e => e,
        })?;
    tracing::info!(account = %owner, network = %network.id, subnet = %network.subnet, vni = vlan.vni,
        "fabric network created");
    Ok((StatusCode::CREATED, Json(network)))
}

#[utoipa::path(delete, path = "/v1/fabrics/vlans/{vlan_id}/networks/{id}", tag = "fabrics",
    params(("vlan_id" = u16, Path, minimum = 0, maximum = 4095), ("id" = String, Path, format = Uuid),
        FabricOwnerParams),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn network_delete(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath((vlan_id, id)): ApiPath<(u16, NetworkId)>,
    ApiQuery(q): ApiQuery<FabricOwnerParams>,
) -> Result<StatusCode> {
    check_vlan_id(vlan_id)?;
    let owner = p.on_behalf_of(Action::FabricWrite, q.owner)?;
    s.db.network_delete(id, Some((owner, vlan_id))).await?;
    Ok(StatusCode::NO_CONTENT)
}
