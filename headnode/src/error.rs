//! The headnode's one error enum, used by the datastore, the app logic and the
//! handlers, and the single place where it becomes an HTTP response.
//!
//! It must never put a secret in a message; internal details (SQL errors) go
//! to the log with the request id, the client gets a generic message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nereid_api::{ErrorBody, ErrorCode, ErrorDetail};

tokio::task_local! {
    /// The id of the request being served; set by the request middleware.
    pub static REQUEST_ID: String;
}

/// The current request's id, or "-" outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.clone())
        .unwrap_or_else(|_| "-".to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    RouteNotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    AgentUnavailable {
        server: nereid_api::ServerId,
        message: String,
    },
    /// The agent answered that the request cannot succeed (a retry will not help).
    #[error("{0}")]
    AgentRefused(String),
    /// The node does not have the instance's image (any more): ensure it again.
    #[error("{0}")]
    ImageMissingOnNode(String),
    #[error("{0}")]
    Exhausted(String),
    /// A job's run lost its claim (another run holds it now): it must stop.
    #[error("{0}")]
    LeaseLost(String),
    #[error("no server can take this instance: {0}")]
    InsufficientCapacity(String),
    #[error("{0}")]
    QuotaExceeded(String),
    /// Over a rate limit; try again after this many seconds.
    #[error("{0}")]
    TooManyRequests(String, u64),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    RangeNotSatisfiable(String),
    #[error("{0}")]
    Gone(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn not_found(kind: &'static str, id: impl ToString) -> Error {
        Error::NotFound {
            kind,
            id: id.to_string(),
        }
    }

    pub fn invalid(field: &str, why: impl std::fmt::Display) -> Error {
        Error::InvalidArgument(format!("{field}: {why}"))
    }

    pub fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            Error::InvalidArgument(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument),
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            Error::NotFound { .. } | Error::RouteNotFound(_) => {
                (StatusCode::NOT_FOUND, ErrorCode::NotFound)
            }
            Error::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed)
            }
            Error::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            Error::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
            }
            Error::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
            ),
            Error::AgentUnavailable { .. }
            | Error::AgentRefused(_)
            | Error::ImageMissingOnNode(_) => {
                (StatusCode::BAD_GATEWAY, ErrorCode::AgentUnavailable)
            }
            Error::Exhausted(_) => (StatusCode::CONFLICT, ErrorCode::Exhausted),
            Error::InsufficientCapacity(_) => {
                (StatusCode::CONFLICT, ErrorCode::InsufficientCapacity)
            }
            Error::QuotaExceeded(_) => (StatusCode::CONFLICT, ErrorCode::QuotaExceeded),
            Error::TooManyRequests(..) => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
            }
            Error::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, ErrorCode::RequestTimeout),
            Error::RangeNotSatisfiable(_) => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::RangeNotSatisfiable,
            ),
            Error::Gone(_) => (StatusCode::GONE, ErrorCode::Gone),
            Error::Database(e) if is_unavailable(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            Error::Database(_) | Error::Internal(_) | Error::LeaseLost(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
            }
        }
    }
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    )
}

/// The error chain as one line, for logs.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            Error::Database(e) => {
                tracing::error!(error = %chain(&self), "database error: {e}");
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    "the database is unavailable; try again".to_string()
                } else {
                    "internal error; the headnode's log has the details under this request id"
                        .to_string()
                }
            }
            Error::Internal(m) => {
                tracing::error!("internal error: {m}");
                "internal error; the headnode's log has the details under this request id"
                    .to_string()
            }
            other => other.to_string(),
        };
        let failure = crate::audit::Failure {
            code: code.as_str(),
            message: message.clone(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message,
                request_id: current_request_id(),
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        resp.extensions_mut().insert(failure);
        if let Error::TooManyRequests(_, secs) = &self
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
    }
}
