//! The audit log's entries: one per mutation made through the API (and per
//! mutating request that failed), with who made it, from where and under
//! which request id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AccountId;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// The authenticated account; none for the system's own work.
    pub actor: Option<AccountId>,
    /// The actor's role when it acted, or `system`.
    pub actor_role: String,
    /// `<resource>.<verb>` (e.g. `instance.create`) for a change made, or
    /// `<METHOD> <route>` for a request that failed.
    pub action: String,
    /// What kind of thing the target is (`instance`, `image`, ..., or
    /// `request` for a request that failed).
    pub target_kind: String,
    /// The target's id (or name), or the failed request's path.
    pub target_id: String,
    /// The account the target belongs to.
    pub owner: Option<AccountId>,
    /// The request's id, as in the `x-request-id` header and the log.
    pub request_id: String,
    /// The client's address.
    pub source: Option<String>,
    /// `ok`, or the error code the request failed with.
    pub result: String,
    /// The error message of a request that failed.
    pub message: Option<String>,
}
