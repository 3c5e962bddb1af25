//! /v1/accounts

use crate::authz::Action;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nereid_api::{
    Account, AccountCreate, AccountId, ErrorBody, Page, PageParams, QuotaKind, QuotaValues, Quotas,
};

use super::{ApiJson, ApiPath, ApiQuery, OpContext};
use crate::AppState;
use crate::db::{page_limit, parse_page_token};
use crate::error::{Error, Result};

/// Operators see every account, tenants only their own.
#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", params(PageParams),
    responses((status = 200, body = Page<Account>), (status = 401, body = ErrorBody)))]
pub async fn account_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Json<Page<Account>>> {
    let limit = page_limit(q.limit)?;
    let after = parse_page_token(q.page_token.as_deref())?;
    Ok(Json(
        s.db.account_list(p.authorize(Action::AccountRead)?, after, limit)
            .await?,
    ))
}

/// Creates an account (operators only).
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = AccountCreate,
    responses((status = 201, body = Account), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn account_create(
    State(s): State<AppState>,
    p: OpContext,
    ApiJson(body): ApiJson<AccountCreate>,
) -> Result<(StatusCode, Json<Account>)> {
    p.authorize(Action::AccountCreate)?;
    crate::validate::name("name", &body.name)?;
    let account = s.db.account_create(&body.name, body.role).await?;
    tracing::info!(account = %account.id, name = %account.name, role = account.role.as_str(), "account created");
    Ok((StatusCode::CREATED, Json(account)))
}

/// One account; another tenant's account is a 404, as if it did not exist.
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Account), (status = 404, body = ErrorBody)))]
pub async fn account_get(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<AccountId>,
) -> Result<Json<Account>> {
    p.on_behalf_of(Action::AccountRead, Some(id))?;
    Ok(Json(s.db.account_get(id).await?))
}

/// An account's quotas: the limits in force, those set on the account, and
/// its usage. Tenants see their own; another account is a 404.
#[utoipa::path(get, path = "/v1/accounts/{id}/quotas", tag = "accounts", params(("id" = String, Path, format = Uuid)),
    responses((status = 200, body = Quotas), (status = 404, body = ErrorBody)))]
pub async fn quotas_get(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<AccountId>,
) -> Result<Json<Quotas>> {
    p.on_behalf_of(Action::AccountRead, Some(id))?;
    Ok(Json(s.db.quotas_get(id).await?))
}

/// Sets an account's quotas (operators only); a missing or null field is
/// the headnode's default. A limit below the current usage is allowed:
/// nothing new fits until the usage is under it.
#[utoipa::path(put, path = "/v1/accounts/{id}/quotas", tag = "accounts", params(("id" = String, Path, format = Uuid)),
    request_body = QuotaValues,
    responses((status = 200, body = Quotas), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn quotas_set(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<AccountId>,
    ApiJson(body): ApiJson<QuotaValues>,
) -> Result<Json<Quotas>> {
    p.authorize(Action::QuotaSet)?;
    for k in QuotaKind::ALL {
        if let Some(v) = body.get(*k)
            && v > k.largest()
        {
            return Err(Error::invalid(
                k.as_str(),
                format!("{v} is more than the largest limit, {}", k.largest()),
            ));
        }
    }
    let q = s.db.quotas_set(id, &body).await?;
    tracing::info!(account = %id, "quotas set");
    Ok(Json(q))
}
