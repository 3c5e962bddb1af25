//! /v1/audit: the audit log, newest first. Operators read all of it; a
//! tenant reads the entries it made and those about what it owns.

use crate::authz::Action;
use axum::Json;
use axum::extract::State;
use nereid_api::{AccountId, AuditEntry, ErrorBody, Page};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiQuery, OpContext};
use crate::AppState;
use crate::db::{AuditFilter, page_limit, parse_page_token};
use crate::error::{Error, Result};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditListParams {
    /// Only what this account did.
    pub actor: Option<AccountId>,
    /// Only entries about this target (an id, a name, or a failed request's path).
    pub target: Option<String>,
    /// Only actions starting with this, e.g. `instance.`.
    pub action: Option<String>,
    /// Only requests that failed.
    pub failed: Option<bool>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditListParams),
    responses((status = 200, body = Page<AuditEntry>), (status = 400, body = ErrorBody)))]
pub async fn audit_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiQuery(q): ApiQuery<AuditListParams>,
) -> Result<Json<Page<AuditEntry>>> {
    let limit = page_limit(q.limit)?;
    let before = parse_page_token(q.page_token.as_deref())?;
    for (name, v) in [("target", &q.target), ("action", &q.action)] {
        if v.as_ref().is_some_and(|v| v.len() > 256) {
            return Err(Error::InvalidArgument(format!(
                "{name} is longer than 256 bytes"
            )));
        }
    }
    let filter = AuditFilter {
        visible_to: p.authorize(Action::AuditRead)?,
        actor: q.actor,
        target: q.target,
        action_prefix: q.action,
        failed_only: q.failed.unwrap_or(false),
    };
    Ok(Json(s.db.audit_list(&filter, before, limit).await?))
}
