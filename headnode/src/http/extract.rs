//! Extractors whose rejections are JSON error bodies with stable codes, and
//! the bearer-token principal.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use nereid_api::{AccountId, Role, ServerId};

use crate::AppState;
use crate::error::Error;

/// A JSON body; malformed JSON, wrong types and unknown fields are 400, a body
/// over the limit 413, a missing content type 415.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Error))]
pub struct ApiJson<T>(pub T);

/// Path parameters; a malformed id is 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Error))]
pub struct ApiPath<T>(pub T);

/// Query parameters; unknown or malformed ones are 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Error))]
pub struct ApiQuery<T>(pub T);

impl From<JsonRejection> for Error {
    fn from(r: JsonRejection) -> Error {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                Error::PayloadTooLarge("the request body is larger than this route accepts".into())
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Error::UnsupportedMediaType(
                "the request body must be JSON with `Content-Type: application/json`".into(),
            ),
            _ => match r {
                JsonRejection::JsonSyntaxError(e) => Error::InvalidArgument(format!(
                    "malformed JSON: {}",
                    inner_text(&e.body_text())
                )),
                JsonRejection::JsonDataError(e) => {
                    Error::InvalidArgument(inner_text(&e.body_text()))
                }
                other => Error::InvalidArgument(format!(
                    "unreadable request body: {}",
                    other.body_text()
                )),
            },
        }
    }
}

impl From<PathRejection> for Error {
    fn from(r: PathRejection) -> Error {
        Error::InvalidArgument(format!("path: {}", inner_text(&r.body_text())))
    }
}

impl From<QueryRejection> for Error {
    fn from(r: QueryRejection) -> Error {
        Error::InvalidArgument(format!("query: {}", inner_text(&r.body_text())))
    }
}

/// Drops axum's generic preamble ("Failed to deserialize ...: ") and keeps
/// serde's message, which names the field.
fn inner_text(s: &str) -> String {
    for prefix in [
        "Failed to deserialize the JSON body into the target type: ",
        "Failed to parse the request body as JSON: ",
        "Failed to deserialize query string: ",
        "Invalid URL: ",
    ] {
        if let Some(rest) = s.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    s.to_string()
}

/// The authenticated caller.
#[derive(Debug, Clone, Copy)]
pub struct Principal {
    pub account_id: AccountId,
    pub role: Role,
}

impl Principal {
    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }

    pub fn require_operator(&self) -> Result<(), Error> {
        if self.is_operator() {
            Ok(())
        } else {
            Err(Error::Forbidden("this needs an operator account".into()))
        }
    }

    /// The owner a query is limited to: None for operators (everything),
    /// the caller's own account for tenants.
    pub fn owner_scope(&self) -> Option<AccountId> {
        if self.is_operator() {
            None
        } else {
            Some(self.account_id)
        }
    }
}

/// The bearer secret of a request, or a 401.
fn bearer(parts: &Parts) -> Result<&str, Error> {
    let missing =
        || Error::Unauthorized("missing bearer token: send `Authorization: Bearer <token>`".into());
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(missing)?;
    let value = header.to_str().map_err(|_| missing())?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or_else(missing)
}

async fn principal(token: &str, state: &AppState) -> Result<Principal, Error> {
    let owner = state
        .db
        .token_authenticate(&crate::secrets::hash(token))
        .await?
        .ok_or_else(|| Error::Unauthorized("the bearer token is unknown or expired".into()))?;
    tracing::Span::current().record("account", tracing::field::display(owner.account_id));
    Ok(Principal {
        account_id: owner.account_id,
        role: owner.role,
    })
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        principal(bearer(parts)?, state).await
    }
}

/// An account, or a node presenting its node credential (agents pulling images).
#[derive(Debug, Clone, Copy)]
pub enum Caller {
    Account(Principal),
    Node(ServerId),
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = bearer(parts)?;
        if token.starts_with(crate::secrets::NODE_CREDENTIAL_PREFIX) {
            let server = state
                .db
                .server_id_by_credential(&crate::secrets::hash(token))
                .await?
                .ok_or_else(|| Error::Unauthorized("the node credential is unknown".into()))?;
            return Ok(Caller::Node(server));
        }
        Ok(Caller::Account(principal(token, state).await?))
    }
}
