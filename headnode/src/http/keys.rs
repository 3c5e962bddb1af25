//! /v1/keys: the caller's SSH public keys (operators: any account's, with
//! `owner`). A key is named by its name or its fingerprint.

use crate::authz::Action;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nereid_api::{AccountId, ErrorBody, Page, SshKey, SshKeyCreate};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiJson, ApiPath, ApiQuery, OpContext};
use crate::AppState;
use crate::db::page_limit;
use crate::error::{Error, Result};
use crate::sshkey;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyListParams {
    /// Operators: only this account's keys (default: every account's).
    pub owner: Option<AccountId>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `<owner id>/<name>` of the last key of the previous page.
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}/[A-Za-z0-9._@:+/=-]{1,64}$"
    )]
    pub page_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KeyOwnerParams {
    /// Operators: the account whose key it is (default: the caller).
    pub owner: Option<AccountId>,
}

/// Key names: 1-64 of letters, digits and `._@:+/=-` (so a comment such as
/// `me@laptop` or a fingerprint can be one).
fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._@:+/=-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            "1-64 of letters, digits and ._@:+/=-",
        ))
    }
}

/// `<owner id>/<name>`: the position after which the next page starts.
fn parse_key_token(t: Option<&str>) -> Result<Option<(uuid::Uuid, String)>> {
    t.map(|t| {
        t.split_once('/')
            .filter(|(_, n)| check_name(n).is_ok())
            .and_then(|(o, n)| Some((crate::db::parse_uuid(o)?, n.to_string())))
            .ok_or_else(|| Error::invalid("page_token", "malformed page token"))
    })
    .transpose()
}

#[utoipa::path(get, path = "/v1/keys", tag = "keys", params(KeyListParams),
    responses((status = 200, body = Page<SshKey>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn key_list(
    State(s): State<AppState>,
    p: OpContext,
    ApiQuery(q): ApiQuery<KeyListParams>,
) -> Result<Json<Page<SshKey>>> {
    let limit = page_limit(q.limit)?;
    let after = parse_key_token(q.page_token.as_deref())?;
    let owner = match q.owner {
        None => p.authorize(Action::KeyRead)?,
        asked => Some(p.on_behalf_of(Action::KeyRead, asked)?),
    };
    Ok(Json(s.db.key_list(owner, after, limit).await?))
}

/// Adds a public key; malformed keys, DSA and RSA under 2048 bits are refused.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = SshKeyCreate,
    responses((status = 201, body = SshKey), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn key_create(
    State(s): State<AppState>,
    p: OpContext,
    ApiJson(req): ApiJson<SshKeyCreate>,
) -> Result<(StatusCode, Json<SshKey>)> {
    let owner = p.on_behalf_of(Action::KeyWrite, req.owner)?;
    let key = sshkey::parse(&req.key).map_err(|e| Error::invalid("key", e))?;
    let name = match req.name {
        Some(n) => {
            check_name(&n)?;
            n
        }
        None if check_name(&key.comment).is_ok() => key.comment.clone(),
        None => key.fingerprint.clone(),
    };
    let created = s.db.key_create(owner, &name, &key).await?;
    tracing::info!(account = %owner, fingerprint = %created.fingerprint, "ssh key added");
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/v1/keys/{name}", tag = "keys",
    params(("name" = String, Path, description = "The key's name or fingerprint"), KeyOwnerParams),
    responses((status = 200, body = SshKey), (status = 404, body = ErrorBody)))]
pub async fn key_get(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<KeyOwnerParams>,
) -> Result<Json<SshKey>> {
    Ok(Json(
        s.db.key_get(p.on_behalf_of(Action::KeyRead, q.owner)?, &name)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/keys/{name}", tag = "keys",
    params(("name" = String, Path, description = "The key's name or fingerprint"), KeyOwnerParams),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn key_delete(
    State(s): State<AppState>,
    p: OpContext,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<KeyOwnerParams>,
) -> Result<StatusCode> {
    s.db.key_delete(p.on_behalf_of(Action::KeyWrite, q.owner)?, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
