//! /v1/fwrules: firewall rules in Triton's language. Tenants manage their own
//! and read the global ones; operators manage all, and may make global rules
//! or rules for an account. Every change is pushed to the nodes.

use crate::authz::Action;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nereid_api::{ErrorBody, FwRule, FwRuleCreate, FwRuleId, FwRuleUpdate, InstanceId, Page};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiPath, ApiQuery, OpContext};
use crate::AppState;
use crate::db::{page_limit, parse_page_token};
use crate::error::{Error, Result};
use crate::fwrule::{self, Rule};
use crate::validate;

/// The longest rule text.
const MAX_RULE_LEN: usize = 4096;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FwRuleListParams {
    /// Only the rules that apply to this instance.
    pub instance: Option<InstanceId>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub page_token: Option<String>,
}

fn parse_rule(text: &str) -> Result<Rule> {
    if text.len() > MAX_RULE_LEN {
        return Err(Error::invalid(
            "rule",
            format!("at most {MAX_RULE_LEN} bytes"),
        ));
    }
    fwrule::parse(text).map_err(|e| Error::invalid("rule", e))
}

#[utoipa::path(get, path = "/v1/fwrules", tag = "firewall", params(FwRuleListParams),
    responses((status = 200, body = Page<FwRule>), (status = 404, body = ErrorBody)))]
pub async fn fwrule_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiQuery(q): ApiQuery<FwRuleListParams>,
) -> Result<Json<Page<FwRule>>> {
    let limit = page_limit(q.limit)?;
    let after = parse_page_token(q.page_token.as_deref())?;
    let touching = match q.instance {
        Some(id) => Some(
            s.db.fw_instance(id, p.authorize(Action::FwRuleRead)?)
                .await?,
        ),
        None => None,
    };
    Ok(Json(
        s.db.fw_rule_list(
            p.authorize(Action::FwRuleRead)?,
            touching.as_ref(),
            after,
            limit,
        )
        .await?,
    ))
}

#[utoipa::path(post, path = "/v1/fwrules", tag = "firewall", request_body = FwRuleCreate,
    responses((status = 201, body = FwRule), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn fwrule_create(
    State(s): State<AppState>,
    p: OpContext,
    ApiJson(req): ApiJson<FwRuleCreate>,
) -> Result<(StatusCode, Json<FwRule>)> {
    let rule = parse_rule(&req.rule)?;
    validate::text("description", &req.description, 1024)?;
    if req.global || req.owner.is_some() {
        p.authorize(Action::FwRuleForOthers)?;
    } else {
        p.authorize(Action::FwRuleWrite)?;
    }
    if req.global && req.owner.is_some() {
        return Err(Error::invalid("owner", "a global rule has no owner"));
    }
    let owner = if req.global {
        None
    } else {
        Some(req.owner.unwrap_or(p.account_id))
    };
    if let Some(o) = req.owner {
        s.db.accounts_exist(&[o]).await?;
    }
    let created =
        s.db.fw_rule_create(owner, &req.rule, &rule, req.enabled, &req.description)
            .await?;
    tracing::info!(rule = %created.id, "firewall rule created");
    crate::firewall::spawn_sync_all(&s);
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/v1/fwrules/{id}", tag = "firewall", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = FwRule), (status = 404, body = ErrorBody)))]
pub async fn fwrule_get(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<FwRuleId>,
) -> Result<Json<FwRule>> {
    Ok(Json(
        s.db.fw_rule_get(id, p.authorize(Action::FwRuleRead)?)
            .await?,
    ))
}

/// Changes the rule text, `enabled` or the description.
#[utoipa::path(patch, path = "/v1/fwrules/{id}", tag = "firewall", params(("id" = String, Path, format = Uuid)),
    request_body = FwRuleUpdate,
    responses((status = 200, body = FwRule), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn fwrule_update(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<FwRuleId>,
    ApiJson(req): ApiJson<FwRuleUpdate>,
) -> Result<Json<FwRule>> {
    let parsed = req.rule.as_deref().map(parse_rule).transpose()?;
    if let Some(d) = &req.description {
        validate::text("description", d, 1024)?;
    }
    let updated =
        s.db.fw_rule_update(id, p.authorize(Action::FwRuleWrite)?, &req, parsed.as_ref())
            .await?;
    crate::firewall::spawn_sync_all(&s);
    Ok(Json(updated))
}

#[utoipa::path(delete, path = "/v1/fwrules/{id}", tag = "firewall", params(("id" = String, Path, format = Uuid)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn fwrule_delete(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<FwRuleId>,
) -> Result<StatusCode> {
    s.db.fw_rule_delete(id, p.authorize(Action::FwRuleWrite)?)
        .await?;
    crate::firewall::spawn_sync_all(&s);
    Ok(StatusCode::NO_CONTENT)
}
