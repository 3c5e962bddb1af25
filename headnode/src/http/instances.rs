//! /v1/instances and /v1/jobs.

use crate::authz::Action;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use nereid_api::{
    AccountId, ErrorBody, Instance, InstanceAccepted, InstanceConsole, InstanceCreate, InstanceId,
    InstanceState, Job, JobId, JobKind, JobState, Page, ServerId,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiPath, ApiQuery, OpContext};
use crate::AppState;
use crate::db::{InstanceFilter, InstanceFlag, page_limit, parse_page_token};
use crate::error::{Error, Result};
use crate::instances;

#[utoipa::path(post, path = "/v1/instances", tag = "instances", request_body = InstanceCreate,
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,128}$", description = "A retried create with the same key returns the first instance (200)")),
    responses((status = 202, body = InstanceAccepted), (status = 200, body = InstanceAccepted),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn instance_create(
    State(s): State<AppState>,
    p: OpContext,
    headers: HeaderMap,
    ApiJson(req): ApiJson<InstanceCreate>,
) -> Result<(StatusCode, Json<InstanceAccepted>)> {
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Error::invalid("Idempotency-Key", "must be printable ASCII"))?
                .to_string(),
        ),
        None => None,
    };
    let (accepted, new) = instances::create(&s, p, req, key).await?;
    let status = if new {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(accepted)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InstanceListParams {
    /// One state; `deleted` lists deleted instances, which are hidden otherwise.
    pub state: Option<InstanceState>,
    /// Operators only: one account's instances.
    pub owner: Option<AccountId>,
    pub server: Option<ServerId>,
    pub alias: Option<String>,
    /// `key` or `key=value`.
    pub tag: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/instances", tag = "instances", params(InstanceListParams),
    responses((status = 200, body = Page<Instance>), (status = 400, body = ErrorBody)))]
pub async fn instance_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiQuery(q): ApiQuery<InstanceListParams>,
) -> Result<Json<Page<Instance>>> {
    let limit = page_limit(q.limit)?;
    let after = parse_page_token(q.page_token.as_deref())?;
    let owner = match p.authorize(Action::InstanceRead)? {
        Some(me) => Some(me),
        None => q.owner,
    };
    let filter = InstanceFilter {
        owner,
        state: q.state,
        server: q.server,
        alias: q.alias,
        tag: q.tag.map(|t| match t.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (t, None),
        }),
    };
    Ok(Json(s.db.instance_list(&filter, after, limit).await?))
}

#[utoipa::path(get, path = "/v1/instances/{id}", tag = "instances", params(("id" = InstanceId, Path)),
    responses((status = 200, body = Instance), (status = 404, body = ErrorBody)))]
pub async fn instance_get(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<InstanceId>,
) -> Result<Json<Instance>> {
    Ok(Json(
        s.db.instance_get(id, p.authorize(Action::InstanceRead)?)
            .await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsoleParams {
    /// How many of the last lines (default 100, at most 10000).
    #[param(minimum = 1, maximum = 10_000)]
    pub tail: Option<u32>,
}

#[utoipa::path(get, path = "/v1/instances/{id}/console", tag = "instances",
    params(("id" = InstanceId, Path), ConsoleParams),
    responses((status = 200, body = InstanceConsole), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 502, body = ErrorBody)))]
pub async fn instance_console(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<InstanceId>,
    ApiQuery(q): ApiQuery<ConsoleParams>,
) -> Result<Json<InstanceConsole>> {
    Ok(Json(instances::console(&s, p, id, q.tail).await?))
}

macro_rules! action {
    ($fn:ident, $path:literal, $kind:expr, $method:ident) => {
        #[utoipa::path($method, path = $path, tag = "instances", params(("id" = InstanceId, Path)),
            responses((status = 202, body = InstanceAccepted), (status = 404, body = ErrorBody),
                (status = 409, body = ErrorBody)))]
        pub async fn $fn(
            State(s): State<AppState>,
            p: OpContext,
            ApiPath(id): ApiPath<InstanceId>,
        ) -> Result<(StatusCode, Json<InstanceAccepted>)> {
            Ok((
                StatusCode::ACCEPTED,
                Json(instances::act(&s, p, id, $kind).await?),
            ))
        }
    };
}

action!(
    instance_start,
    "/v1/instances/{id}/start",
    JobKind::Start,
    post
);
action!(
    instance_stop,
    "/v1/instances/{id}/stop",
    JobKind::Stop,
    post
);
action!(
    instance_reboot,
    "/v1/instances/{id}/reboot",
    JobKind::Reboot,
    post
);
/// Sets a switch of the instance; its node's firewall follows a firewall change at once.
async fn switch(
    s: &AppState,
    p: &OpContext,
    id: InstanceId,
    flag: InstanceFlag,
    on: bool,
) -> Result<Instance> {
    s.db.instance_set_flag(id, p.authorize(Action::InstanceWrite)?, flag, on)
        .await?;
    let inst = s.db.instance_get(id, None).await?;
    if let (InstanceFlag::Firewall, Some(server)) = (flag, inst.server_id) {
        crate::firewall::spawn_sync_server(s, server);
    }
    Ok(inst)
}

macro_rules! switch {
    ($fn:ident, $path:literal, $flag:expr, $on:expr, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "instances", params(("id" = InstanceId, Path)),
                    responses((status = 200, body = Instance), (status = 404, body = ErrorBody)))]
        pub async fn $fn(
            State(s): State<AppState>,
            p: OpContext,
            ApiPath(id): ApiPath<InstanceId>,
        ) -> Result<Json<Instance>> {
            Ok(Json(switch(&s, &p, id, $flag, $on).await?))
        }
    };
}

switch!(
    instance_enable_firewall,
    "/v1/instances/{id}/enable-firewall",
    InstanceFlag::Firewall,
    true,
    "Turns the instance's firewall on (Triton's enable_firewall): inbound only as rules allow."
);
switch!(
    instance_disable_firewall,
    "/v1/instances/{id}/disable-firewall",
    InstanceFlag::Firewall,
    false,
    "Turns the instance's firewall off (Triton's disable_firewall)."
);
switch!(
    instance_enable_deletion_protection,
    "/v1/instances/{id}/enable-deletion-protection",
    InstanceFlag::DeletionProtection,
    true,
    "Refuses DELETE (forced or not) until it is turned off (Triton's enable_deletion_protection)."
);
switch!(
    instance_disable_deletion_protection,
    "/v1/instances/{id}/disable-deletion-protection",
    InstanceFlag::DeletionProtection,
    false,
    "Lets DELETE through again (Triton's disable_deletion_protection)."
);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    /// Operators only: delete now, without the node (for a node that does
    /// not answer). The job working on the instance ends, its capacity and
    /// addresses are given back, and what it left on its node is removed
    /// there once the node answers again. Answers 200 with the instance.
    pub force: Option<bool>,
}

/// Deletes an instance: a `destroy` job (202), or at once with `force`.
#[utoipa::path(delete, path = "/v1/instances/{id}", tag = "instances", params(("id" = InstanceId, Path), DeleteParams),
    responses((status = 202, body = InstanceAccepted), (status = 200, body = Instance),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn instance_delete(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<InstanceId>,
    ApiQuery(q): ApiQuery<DeleteParams>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    if q.force == Some(true) {
        p.authorize(Action::InstanceForceDelete)?;
        instances::refuse_if_protected(&s.db.instance_get(id, None).await?)?;
        let inst =
            s.db.instance_force_delete(id, "deleted by force: its node did not answer")
                .await?;
        tracing::warn!(instance = %id, "instance deleted by force");
        return Ok((StatusCode::OK, Json(inst)).into_response());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(instances::act(&s, p, id, JobKind::Destroy).await?),
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobListParams {
    pub instance: Option<InstanceId>,
    pub state: Option<JobState>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobListParams),
    responses((status = 200, body = Page<Job>), (status = 400, body = ErrorBody)))]
pub async fn job_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiQuery(q): ApiQuery<JobListParams>,
) -> Result<Json<Page<Job>>> {
    let limit = page_limit(q.limit)?;
    let after = parse_page_token(q.page_token.as_deref())?;
    Ok(Json(
        s.db.job_list(
            p.authorize(Action::JobRead)?,
            q.instance,
            q.state,
            after,
            limit,
        )
        .await?,
    ))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = JobId, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
pub async fn job_get(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<JobId>,
) -> Result<Json<Job>> {
    Ok(Json(s.db.job_get(id, p.authorize(Action::JobRead)?).await?))
}
