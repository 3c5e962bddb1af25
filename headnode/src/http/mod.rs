//! The REST API: the router, the request middleware (request id, logging,
//! metrics), bearer authentication and the extractors that turn every bad
//! input into a JSON error body.
//!
//! Handlers here are thin: authenticate, validate, call the datastore or the
//! app layer, return a view. No SQL and no agent calls in this module tree.

pub(crate) mod accounts;
pub(crate) mod audit;
pub(crate) mod events;
mod extract;
pub(crate) mod fabrics;
pub(crate) mod fwrules;
pub(crate) mod images;
pub(crate) mod instance_meta;
pub(crate) mod instances;
pub(crate) mod keys;
pub(crate) mod networks;
pub(crate) mod packages;
pub(crate) mod pools;
pub(crate) mod servers;
pub(crate) mod snapshots;
mod system;
pub mod tls;
pub(crate) mod tokens;

pub use crate::authz::{Action, OpContext};
pub use extract::{ApiJson, ApiPath, ApiQuery};

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tracing::Instrument;

use crate::AppState;
use crate::error::{Error, REQUEST_ID};

pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi))
        .route(
            "/v1/accounts",
            get(accounts::account_list).post(accounts::account_create),
        )
        .route("/v1/accounts/{id}", get(accounts::account_get))
        .route(
            "/v1/accounts/{id}/quotas",
            get(accounts::quotas_get).put(accounts::quotas_set),
        )
        .route(
            "/v1/tokens",
            get(tokens::token_list).post(tokens::token_create),
        )
        .route(
            "/v1/tokens/{id}",
            axum::routing::delete(tokens::token_delete),
        )
        .route("/v1/servers", get(servers::server_list))
        .route("/v1/servers/join-tokens", post(servers::join_token_create))
        .route(
            "/v1/servers/{id}",
            get(servers::server_get).delete(servers::server_delete),
        )
        .route("/v1/servers/{id}/setup", post(servers::server_setup))
        .route("/v1/servers/{id}/orphans", get(servers::server_orphans))
        .route(
            "/v1/servers/{id}/certificate",
            post(servers::server_certificate_rotate),
        )
        .route(
            "/v1/servers/{id}/certificate/revoke",
            post(servers::server_certificate_revoke),
        )
        .route("/v1/servers/{id}/reserve", post(servers::server_reserve))
        .route(
            "/v1/servers/{id}/unreserve",
            post(servers::server_unreserve),
        )
        .route(
            "/v1/images",
            get(images::image_list).post(images::image_create),
        )
        .route(
            "/v1/images/{id}",
            get(images::image_get).delete(images::image_delete),
        )
        .route(
            "/v1/images/{id}/file",
            get(images::image_file_get)
                .put(images::image_file_put)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/images/{id}/activate", post(images::image_activate))
        .route("/v1/images/{id}/disable", post(images::image_disable))
        .route("/v1/images/{id}/enable", post(images::image_enable))
        .route(
            "/v1/fwrules",
            get(fwrules::fwrule_list).post(fwrules::fwrule_create),
        )
        .route(
            "/v1/fwrules/{id}",
            get(fwrules::fwrule_get)
                .patch(fwrules::fwrule_update)
                .delete(fwrules::fwrule_delete),
        )
        .route("/v1/keys", get(keys::key_list).post(keys::key_create))
        .route(
            "/v1/keys/{name}",
            get(keys::key_get).delete(keys::key_delete),
        )
        .route(
            "/v1/packages",
            get(packages::package_list).post(packages::package_create),
        )
        .route(
            "/v1/packages/{id}",
            get(packages::package_get)
                .patch(packages::package_update)
                .delete(packages::package_delete),
        )
        .route(
            "/v1/nictags",
            get(networks::nic_tag_list).post(networks::nic_tag_create),
        )
        .route(
            "/v1/nictags/{name}",
            axum::routing::delete(networks::nic_tag_delete),
        )
        .route(
            "/v1/network-pools",
            get(pools::pool_list).post(pools::pool_create),
        )
        .route(
            "/v1/network-pools/{id}",
            get(pools::pool_get).delete(pools::pool_delete),
        )
        .route(
            "/v1/fabrics/vlans",
            get(fabrics::vlan_list).post(fabrics::vlan_create),
        )
        .route(
            "/v1/fabrics/vlans/{vlan_id}",
            get(fabrics::vlan_get).delete(fabrics::vlan_delete),
        )
        .route(
            "/v1/fabrics/vlans/{vlan_id}/networks",
            get(fabrics::network_list).post(fabrics::network_create),
        )
        .route(
            "/v1/fabrics/vlans/{vlan_id}/networks/{id}",
            axum::routing::delete(fabrics::network_delete),
        )
        .route(
            "/v1/networks",
            get(networks::network_list).post(networks::network_create),
        )
        .route(
            "/v1/networks/{id}",
            get(networks::network_get).delete(networks::network_delete),
        )
        .route(
            "/v1/networks/{id}/ips",
            get(networks::network_ip_list).post(networks::network_ip_allocate),
        )
        .route(
            "/v1/networks/{id}/ips/{ip}",
            axum::routing::delete(networks::network_ip_free),
        )
        .route(
            "/v1/instances",
            get(instances::instance_list).post(instances::instance_create),
        )
        .route(
            "/v1/instances/{id}",
            get(instances::instance_get).delete(instances::instance_delete),
        )
        .route("/v1/instances/{id}/start", post(instances::instance_start))
        .route(
            "/v1/instances/{id}/tags",
            get(instance_meta::tags_get)
                .put(instance_meta::tags_put)
                .post(instance_meta::tags_post)
                .delete(instance_meta::tags_clear),
        )
        .route(
            "/v1/instances/{id}/tags/{key}",
            get(instance_meta::tag_get).delete(instance_meta::tag_delete),
        )
        .route(
            "/v1/instances/{id}/metadata",
            get(instance_meta::metadata_get)
                .put(instance_meta::metadata_put)
                .post(instance_meta::metadata_post)
                .delete(instance_meta::metadata_clear),
        )
        .route(
            "/v1/instances/{id}/metadata/{key}",
            get(instance_meta::metadata_key_get).delete(instance_meta::metadata_key_delete),
        )
        .route(
            "/v1/instances/{id}/snapshots",
            get(snapshots::snapshot_list).post(snapshots::snapshot_create),
        )
        .route(
            "/v1/instances/{id}/snapshots/{name}",
            get(snapshots::snapshot_get).delete(snapshots::snapshot_delete),
        )
        .route(
            "/v1/instances/{id}/snapshots/{name}/rollback",
            post(snapshots::snapshot_rollback),
        )
        .route(
            "/v1/instances/{id}/images",
            post(images::image_from_instance),
        )
        .route(
            "/v1/instances/{id}/resize",
            post(instance_meta::instance_resize),
        )
        .route(
            "/v1/instances/{id}/rename",
            post(instance_meta::instance_rename),
        )
        .route(
            "/v1/instances/{id}/enable-deletion-protection",
            post(instances::instance_enable_deletion_protection),
        )
        .route(
            "/v1/instances/{id}/disable-deletion-protection",
            post(instances::instance_disable_deletion_protection),
        )
        .route(
            "/v1/instances/{id}/enable-firewall",
            post(instances::instance_enable_firewall),
        )
        .route(
            "/v1/instances/{id}/disable-firewall",
            post(instances::instance_disable_firewall),
        )
        .route("/v1/instances/{id}/stop", post(instances::instance_stop))
        .route(
            "/v1/instances/{id}/reboot",
            post(instances::instance_reboot),
        )
        .route(
            "/v1/instances/{id}/console",
            get(instances::instance_console),
        )
        .route("/v1/jobs", get(instances::job_list))
        .route("/v1/audit", get(audit::audit_list))
        .route("/v1/events", get(events::events))
        .route("/v1/jobs/{id}", get(instances::job_get))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            state.config.limits.max_concurrent_requests,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}

/// Bounds how long a request may take; image file transfers (which stream
/// gigabytes) are bounded by their own progress instead.
async fn time_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    if req.uri().path().ends_with("/file") {
        return next.run(req).await;
    }
    let limit = std::time::Duration::from_millis(state.config.limits.request_timeout_ms);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => Error::RequestTimeout(format!(
            "the request took longer than {} ms; nothing was done past that point (retry with the same Idempotency-Key where there is one)",
            limit.as_millis()
        ))
        .into_response(),
    }
}

async fn not_found(method: Method, uri: Uri) -> Error {
    Error::RouteNotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Error {
    Error::MethodNotAllowed(format!("{} does not accept {method}", uri.path()))
}

/// A client-chosen request id is kept if it is short and plain; otherwise a new one is made.
fn request_id_from(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Gives every request an id (in the task-local the error bodies read, in the
/// log span, in the `x-request-id` response header), logs it once, counts it.
async fn request_context(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let id = request_id_from(&req);
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let audit_ctx = Arc::new(crate::audit::RequestContext {
        request_id: id.clone(),
        source: req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip()),
        ..Default::default()
    });
    let mut resp = crate::audit::CONTEXT
        .scope(
            audit_ctx.clone(),
            REQUEST_ID.scope(id.clone(), next.run(req).instrument(span.clone())),
        )
        .await;
    let status = resp.status();
    if crate::audit::is_mutation(&method)
        && let Some(failure) = resp.extensions_mut().remove::<crate::audit::Failure>()
    {
        let action = crate::audit::failed_action(&method, &path);
        state.audit.submit(&audit_ctx, action, path, failure);
    }
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            latency_ms = started.elapsed().as_millis() as u64,
            "request done"
        )
    });
    state.metrics.http_request(status.as_u16());
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}
