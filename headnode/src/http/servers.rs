//! /v1/servers: compute nodes and the join tokens that onboard them.
//! Operators only: tenants never see the fleet.

use crate::authz::Action;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nereid_api::{
    ErrorBody, JoinTokenCreate, JoinTokenCreated, Orphan, Page, Server, ServerCertificate,
    ServerId, ServerSetup, ServerStatus,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiPath, ApiQuery, OpContext};
use crate::AppState;
use crate::db::{ServerFilter, page_limit, parse_page_token};
use crate::error::{Error, Result};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ServerListParams {
    pub status: Option<ServerStatus>,
    pub reserved: Option<bool>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/servers", tag = "servers", params(ServerListParams),
    responses((status = 200, body = Page<Server>), (status = 403, body = ErrorBody)))]
pub async fn server_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiQuery(q): ApiQuery<ServerListParams>,
) -> Result<Json<Page<Server>>> {
    p.authorize(Action::ServerRead)?;
    let limit = page_limit(q.limit)?;
    let after = parse_page_token(q.page_token.as_deref())?;
    let filter = ServerFilter {
        status: q.status,
        reserved: q.reserved,
    };
    Ok(Json(s.db.server_list(&filter, after, limit).await?))
}

#[utoipa::path(get, path = "/v1/servers/{id}", tag = "servers", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Server), (status = 404, body = ErrorBody)))]
pub async fn server_get(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ServerId>,
) -> Result<Json<Server>> {
    p.authorize(Action::ServerRead)?;
    Ok(Json(s.db.server_get(id).await?))
}

/// Sets a server up: the agent checks that the zpool and the interfaces exist;
/// if they do, the server becomes `running`, otherwise it stays `unsetup` and
/// the error lists what is missing.
#[utoipa::path(post, path = "/v1/servers/{id}/setup", tag = "servers", params(("id" = String, Path, format = Uuid)),
    request_body = ServerSetup,
    responses((status = 200, body = Server), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn server_setup(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ServerId>,
    ApiJson(body): ApiJson<ServerSetup>,
) -> Result<Json<Server>> {
    p.authorize(Action::ServerWrite)?;
    crate::validate::name("zpool", &body.zpool)?;
    for (tag, iface) in &body.nic_tags {
        crate::validate::name("nic_tags", tag)?;
        crate::validate::interface(&format!("nic_tags.{tag}"), iface)?;
    }
    crate::validate::traits("traits", &body.traits)?;
    Ok(Json(crate::setup::setup_server(&s, id, &body).await?))
}

/// Revokes the node's certificate: refused from now on (heartbeats, image
/// downloads), the server `unknown` with the reason. Nothing on the node
/// stops. A rotation gives the node a new key and certificate; delete the
/// server instead if the node itself is not to be trusted.
#[utoipa::path(post, path = "/v1/servers/{id}/certificate/revoke", tag = "servers", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Server), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn server_certificate_revoke(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ServerId>,
) -> Result<Json<Server>> {
    p.authorize(Action::ServerWrite)?;
    Ok(Json(crate::certificates::revoke(&s, id).await?))
}

/// Gives the node a new certificate for a new key made on the node; the
/// old certificate is refused once the node presents the new one. Nothing
/// on the node restarts.
#[utoipa::path(post, path = "/v1/servers/{id}/certificate", tag = "servers", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = ServerCertificate), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn server_certificate_rotate(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ServerId>,
) -> Result<Json<ServerCertificate>> {
    p.authorize(Action::ServerWrite)?;
    Ok(Json(crate::certificates::rotate(&s, id).await?))
}

#[utoipa::path(post, path = "/v1/servers/{id}/reserve", tag = "servers", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Server), (status = 404, body = ErrorBody)))]
pub async fn server_reserve(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ServerId>,
) -> Result<Json<Server>> {
    p.authorize(Action::ServerWrite)?;
    Ok(Json(s.db.server_set_reserved(id, true).await?))
}

#[utoipa::path(post, path = "/v1/servers/{id}/unreserve", tag = "servers", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Server), (status = 404, body = ErrorBody)))]
pub async fn server_unreserve(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ServerId>,
) -> Result<Json<Server>> {
    p.authorize(Action::ServerWrite)?;
    Ok(Json(s.db.server_set_reserved(id, false).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ServerDeleteParams {
    /// Retire a dead server: its instances are deleted by force first.
    pub force: Option<bool>,
}

/// Forgets a server. Its node's certificate stops working; to bring the node
/// back, give it a new join token. A server with live instances is a 409,
/// unless `force` deletes them first (their capacity and addresses given
/// back; the node is not asked).
#[utoipa::path(delete, path = "/v1/servers/{id}", tag = "servers", params(("id" = String, Path, format = Uuid), ServerDeleteParams),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn server_delete(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ServerId>,
    ApiQuery(q): ApiQuery<ServerDeleteParams>,
) -> Result<StatusCode> {
    p.authorize(Action::ServerWrite)?;
    if q.force == Some(true) {
        s.db.server_get(id).await?;
        for inst in s.db.instances_live_on(id).await? {
            s.db.instance_force_delete(inst, "deleted by force: its server was retired")
                .await?;
        }
    }
    s.db.server_delete(id).await?;
    s.agents.forget(id);
    tracing::info!(server = %id, "server deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Makes a single-use, expiring token that lets one node join.
#[utoipa::path(post, path = "/v1/servers/join-tokens", tag = "servers", request_body = JoinTokenCreate,
    responses((status = 201, body = JoinTokenCreated), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn join_token_create(
    State(s): State<AppState>,
    p: OpContext,
    ApiJson(body): ApiJson<JoinTokenCreate>,
) -> Result<(StatusCode, Json<JoinTokenCreated>)> {
    p.authorize(Action::JoinTokenCreate)?;
    let ttl = body.ttl_seconds.unwrap_or(3600);
    if !(60..=604_800).contains(&ttl) {
        return Err(Error::invalid(
            "ttl_seconds",
            "must be within 60..=604800 (one minute to one week)",
        ));
    }
    let token = crate::secrets::generate(crate::secrets::Kind::JoinToken);
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(ttl as i64);
    let id =
        s.db.join_token_create(p.account_id, &crate::secrets::hash(&token), expires_at)
            .await?;
    tracing::info!(join_token = %id, %expires_at, "join token created");
    Ok((
        StatusCode::CREATED,
        Json(JoinTokenCreated {
            id,
            token: nereid_tls::join_token(&token, &s.pki.ca_fingerprint()),
            ca_sha256: s.pki.ca_fingerprint(),
            expires_at,
        }),
    ))
}

/// Instances the node has that the database does not place on it: unknown
/// to the database, deleted there, or placed on another server. Asked of
/// the node now; nothing is removed.
#[utoipa::path(get, path = "/v1/servers/{id}/orphans", tag = "servers", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Vec<Orphan>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn server_orphans(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<ServerId>,
) -> Result<Json<Vec<Orphan>>> {
    p.authorize(Action::ServerRead)?;
    s.db.server_get(id).await?;
    let t = s.db.agent_target(id).await?;
    let on_node = s.agents.list_instances(&t).await?;
    let ids: Vec<uuid::Uuid> = on_node.iter().filter_map(|n| n.id.parse().ok()).collect();
    let known: std::collections::HashMap<uuid::Uuid, (Option<uuid::Uuid>, String)> =
        s.db.instances_known(&ids)
            .await?
            .into_iter()
            .map(|(i, server, state)| (i, (server, state)))
            .collect();
    let mut out = Vec::new();
    for n in on_node {
        let known_as = match n.id.parse::<uuid::Uuid>().ok().and_then(|i| known.get(&i)) {
            None => Some("unknown".to_string()),
            Some((_, state)) if state == "deleted" => Some("deleted".to_string()),
            Some((server, _)) if *server != Some(id.as_uuid()) => Some(format!(
                "on server {}",
                server
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "none".into())
            )),
            Some(_) => None,
        };
        if let Some(known_as) = known_as {
            out.push(Orphan {
                instance_id: n.id.clone(),
                state: n.state.instance_state().to_string(),
                known_as,
            });
        }
    }
    Ok(Json(out))
}
