//! The JSON error body every failed request answers with, and its stable codes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"error": {"code", "message", "request_id"}}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code (see [`ErrorCode`]).
    pub code: ErrorCode,
    /// What went wrong, for a person; names the field or resource concerned.
    pub message: String,
    /// The id of the request, also in the headnode's log lines and the
    /// `x-request-id` response header.
    pub request_id: String,
}

/// Stable error codes. Clients match on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ErrorCode {
    /// 400: a field is missing, malformed or out of range; the message names it.
    InvalidArgument,
    /// 401: no token, or a token that is unknown or expired.
    Unauthorized,
    /// 403: the account's role may not do this.
    Forbidden,
    /// 404: no such resource (or it belongs to someone else).
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 409: the resource's state does not allow this.
    Conflict,
    /// 409: no server can take the request; the message counts the reasons.
    InsufficientCapacity,
    /// 409: a pool (a network's addresses) has nothing left.
    Exhausted,
    /// 409: the account would go over one of its quotas; the message names
    /// the quota, its limit and the current usage.
    QuotaExceeded,
    /// 416: the Range asked for lies outside the file.
    RangeNotSatisfiable,
    /// 410: what the request resumes from is no longer kept (events older
    /// than their retention).
    Gone,
    /// 413: the request body is larger than the route accepts.
    PayloadTooLarge,
    /// 429: too many requests (per token, or failed logins per address);
    /// `Retry-After` says when to try again.
    TooManyRequests,
    /// 408: the request took longer than the headnode allows.
    RequestTimeout,
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 502: a node did not answer or failed.
    AgentUnavailable,
    /// 500: a bug or an unexpected failure of the headnode; see its log.
    Internal,
    /// 503: the database or another dependency is unavailable.
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "InvalidArgument",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::MethodNotAllowed => "MethodNotAllowed",
            ErrorCode::Conflict => "Conflict",
            ErrorCode::InsufficientCapacity => "InsufficientCapacity",
            ErrorCode::QuotaExceeded => "QuotaExceeded",
            ErrorCode::TooManyRequests => "TooManyRequests",
            ErrorCode::RequestTimeout => "RequestTimeout",
            ErrorCode::Exhausted => "Exhausted",
            ErrorCode::RangeNotSatisfiable => "RangeNotSatisfiable",
            ErrorCode::Gone => "Gone",
            ErrorCode::PayloadTooLarge => "PayloadTooLarge",
            ErrorCode::UnsupportedMediaType => "UnsupportedMediaType",
            ErrorCode::AgentUnavailable => "AgentUnavailable",
            ErrorCode::Internal => "Internal",
            ErrorCode::Unavailable => "Unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
