//! /v1/nictags, /v1/networks and /v1/networks/{id}/ips.

use crate::authz::Action;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nereid_api::{
    ErrorBody, Network, NetworkCreate, NetworkId, NetworkIp, NetworkIpAllocate, NicTag,
    NicTagCreate, Page,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiPath, ApiQuery, OpContext};
use crate::AppState;
use crate::db::{NewNetwork, page_limit, parse_page_token};
use crate::error::{Error, Result};
use crate::{ipam, validate};

/// The first VNI of the fabrics' range (migration 0017).
pub const FABRIC_VNI_FIRST: u32 = 1 << 23;

#[utoipa::path(get, path = "/v1/nictags", tag = "networks", responses((status = 200, body = Page<NicTag>)))]
pub async fn nic_tag_list(State(s): State<AppState>, p: OpContext) -> Result<Json<Page<NicTag>>> {
    p.authorize(Action::NicTagRead)?;
    Ok(Json(Page {
        items: s.db.nic_tag_list().await?,
        next_page_token: None,
    }))
}

#[utoipa::path(post, path = "/v1/nictags", tag = "networks", request_body = NicTagCreate,
    responses((status = 201, body = NicTag), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn nic_tag_create(
    State(s): State<AppState>,
    p: OpContext,
    ApiJson(req): ApiJson<NicTagCreate>,
) -> Result<(StatusCode, Json<NicTag>)> {
    p.authorize(Action::NicTagWrite)?;
    validate::name("name", &req.name)?;
    validate::text("description", &req.description, 1024)?;
    let mtu = req.mtu.unwrap_or(1500);
    if !(576..=9000).contains(&mtu) {
        return Err(Error::invalid("mtu", "must be within 576..=9000"));
    }
    Ok((
        StatusCode::CREATED,
        Json(
            s.db.nic_tag_create(&req.name, mtu, &req.description)
                .await?,
        ),
    ))
}

#[utoipa::path(delete, path = "/v1/nictags/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn nic_tag_delete(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode> {
    p.authorize(Action::NicTagWrite)?;
    s.db.nic_tag_delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NetworkListParams {
    pub nic_tag: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/networks", tag = "networks", params(NetworkListParams),
    responses((status = 200, body = Page<Network>)))]
pub async fn network_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiQuery(q): ApiQuery<NetworkListParams>,
) -> Result<Json<Page<Network>>> {
    let limit = page_limit(q.limit)?;
    let after = parse_page_token(q.page_token.as_deref())?;
    Ok(Json(
        s.db.network_list(
            p.authorize(Action::NetworkRead)?,
            q.nic_tag.as_deref(),
            None,
            after,
            limit,
        )
        .await?,
    ))
}

#[utoipa::path(post, path = "/v1/networks", tag = "networks", request_body = NetworkCreate,
    responses((status = 201, body = Network), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn network_create(
    State(s): State<AppState>,
    p: OpContext,
    ApiJson(req): ApiJson<NetworkCreate>,
) -> Result<(StatusCode, Json<Network>)> {
    p.authorize(Action::NetworkWrite)?;
    validate::name("name", &req.name)?;
    validate::name("nic_tag", &req.nic_tag)?;
    validate::text("description", &req.description, 1024)?;
    ipam::check_vlan(req.vlan_id)?;
    if let Some(v) = req.vni
        && !(1..FABRIC_VNI_FIRST).contains(&v)
    {
        return Err(Error::invalid(
            "vni",
            format!(
                "must be within 1..={} (VNIs from {FABRIC_VNI_FIRST} up are the fabrics')",
                FABRIC_VNI_FIRST - 1
            ),
        ));
    }
    if let Some(m) = req.mtu
        && !(576..=9000).contains(&m)
    {
        return Err(Error::invalid("mtu", "must be within 576..=9000"));
    }
    let addresses = ipam::check_addresses(
        &req.subnet,
        req.gateway.as_deref(),
        &req.provision_start,
        &req.provision_end,
        &req.resolvers,
        &req.routes,
    )?;
    s.db.accounts_exist(&req.owners).await?;
    let network =
        s.db.network_create(&NewNetwork {
            name: &req.name,
            nic_tag: &req.nic_tag,
            vlan_id: req.vlan_id,
            vni: req.vni,
            addresses: &addresses,
            mtu: req.mtu,
            owners: &req.owners,
            description: &req.description,
            fabric: None,
            internet_nat: false,
        })
        .await?;
    tracing::info!(network = %network.id, name = %network.name, subnet = %network.subnet, "network created");
    Ok((StatusCode::CREATED, Json(network)))
}

#[utoipa::path(get, path = "/v1/networks/{id}", tag = "networks", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Network), (status = 404, body = ErrorBody)))]
pub async fn network_get(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<NetworkId>,
) -> Result<Json<Network>> {
    Ok(Json(
        s.db.network_get(id, p.authorize(Action::NetworkRead)?)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/networks/{id}", tag = "networks", params(("id" = String, Path, format = Uuid)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn network_delete(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<NetworkId>,
) -> Result<StatusCode> {
    p.authorize(Action::NetworkWrite)?;
    s.db.network_delete(id, None).await?;
    tracing::info!(network = %id, "network deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct IpListParams {
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The last address of the previous page.
    #[param(format = Ipv4)]
    pub page_token: Option<String>,
}

/// The taken addresses of a network.
#[utoipa::path(get, path = "/v1/networks/{id}/ips", tag = "networks", params(("id" = String, Path, format = Uuid), IpListParams),
    responses((status = 200, body = Page<NetworkIp>), (status = 404, body = ErrorBody)))]
pub async fn network_ip_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<NetworkId>,
    ApiQuery(q): ApiQuery<IpListParams>,
) -> Result<Json<Page<NetworkIp>>> {
    p.authorize(Action::NetworkIpRead)?;
    let limit = page_limit(q.limit)?;
    let after = q
        .page_token
        .as_deref()
        .map(|t| ipam::parse_ip("page_token", t))
        .transpose()?;
    Ok(Json(s.db.network_ip_list(id, after, limit).await?))
}

/// Reserves an address: the given one, or the lowest free one of the
/// provision range (409 `Exhausted` when none is left).
#[utoipa::path(post, path = "/v1/networks/{id}/ips", tag = "networks", params(("id" = String, Path, format = Uuid)),
    request_body = NetworkIpAllocate,
    responses((status = 201, body = NetworkIp), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn network_ip_allocate(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<NetworkId>,
    ApiJson(req): ApiJson<NetworkIpAllocate>,
) -> Result<(StatusCode, Json<NetworkIp>)> {
    p.authorize(Action::NetworkIpWrite)?;
    let ip = match req.ip {
        None => {
            s.db.network_ip_allocate(id, "reservation", Some(p.account_id.as_uuid()))
                .await?
        }
        Some(ip) => {
            let ip = ipam::parse_ip("ip", &ip)?;
            let net = s.db.network_get(id, None).await?;
            let subnet = ipam::Cidr::parse("subnet", &net.subnet)?;
            if !subnet.is_host(ip) {
                return Err(Error::Conflict(format!(
                    "ip: {ip} is not a host address of network {id}'s subnet {subnet}"
                )));
            }
            if net.gateway.as_deref() == Some(ip.to_string().as_str()) {
                return Err(Error::Conflict(format!(
                    "{ip} is the gateway of network {id}"
                )));
            }
            s.db.network_ip_reserve(id, ip, "reservation", Some(p.account_id.as_uuid()))
                .await?
        }
    };
    Ok((StatusCode::CREATED, Json(ip)))
}

#[utoipa::path(delete, path = "/v1/networks/{id}/ips/{ip}", tag = "networks",
    params(("id" = String, Path, format = Uuid), ("ip" = String, Path, format = Ipv4)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn network_ip_free(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath((id, ip)): ApiPath<(NetworkId, String)>,
) -> Result<StatusCode> {
    p.authorize(Action::NetworkIpWrite)?;
    let ip = ipam::parse_ip("ip", &ip)?;
    s.db.network_ip_free(id, ip).await?;
    Ok(StatusCode::NO_CONTENT)
}
