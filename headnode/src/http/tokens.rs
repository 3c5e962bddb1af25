//! /v1/tokens

use crate::authz::Action;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nereid_api::{AccountId, ErrorBody, Page, Token, TokenCreate, TokenCreated, TokenId};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiPath, ApiQuery, OpContext};
use crate::AppState;
use crate::db::{page_limit, parse_page_token};
use crate::error::{Error, Result};
use crate::secrets;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TokenListParams {
    /// Only this account's tokens (operators); tenants always see their own.
    pub account_id: Option<AccountId>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub page_token: Option<String>,
}

/// The longest token lifetime a request may ask for (10 years).
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(TokenListParams),
    responses((status = 200, body = Page<Token>), (status = 401, body = ErrorBody)))]
pub async fn token_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiQuery(q): ApiQuery<TokenListParams>,
) -> Result<Json<Page<Token>>> {
    let limit = page_limit(q.limit)?;
    let after = parse_page_token(q.page_token.as_deref())?;
    // Operators see every account's tokens unless they ask for one.
    let account = match p.authorize(Action::TokenRead)? {
        Some(_) => Some(p.on_behalf_of(Action::TokenRead, q.account_id)?),
        None => q.account_id,
    };
    Ok(Json(s.db.token_list(account, after, limit).await?))
}

/// Creates a token; the answer is the only time its secret is shown.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = TokenCreate,
    responses((status = 201, body = TokenCreated), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn token_create(
    State(s): State<AppState>,
    p: OpContext,
    ApiJson(body): ApiJson<TokenCreate>,
) -> Result<(StatusCode, Json<TokenCreated>)> {
    crate::validate::name("name", &body.name)?;
    let account = p.on_behalf_of(Action::TokenWrite, body.account_id)?;
    let expires_at = match body.ttl_seconds {
        None => None,
        Some(t) if t == 0 || t > MAX_TTL_SECONDS => {
            return Err(Error::invalid(
                "ttl_seconds",
                format!("must be within 1..={MAX_TTL_SECONDS}"),
            ));
        }
        Some(t) => Some(chrono::Utc::now() + chrono::Duration::seconds(t as i64)),
    };
    let secret = secrets::generate(secrets::Kind::ApiToken);
    let token =
        s.db.token_create(account, &body.name, expires_at, &secrets::hash(&secret))
            .await?;
    tracing::info!(token = %token.id, account = %account, "token created");
    Ok((StatusCode::CREATED, Json(TokenCreated { token, secret })))
}

/// Revokes a token.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, format = Uuid)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn token_delete(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(id): ApiPath<TokenId>,
) -> Result<StatusCode> {
    s.db.token_delete(id, p.authorize(Action::TokenWrite)?)
        .await?;
    tracing::info!(token = %id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}
