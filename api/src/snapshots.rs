//! Snapshots of instances (CloudAPI's machine snapshots): ZFS snapshots of
//! the instance's dataset on its node.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::InstanceId;

/// A snapshot name: 1-64 of [A-Za-z0-9_.:-], starting with a letter or
/// digit (a ZFS snapshot name that needs no quoting anywhere).
pub fn valid_snapshot_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub instance_id: InstanceId,
    pub name: String,
    /// `creating`, `created` or `deleting`.
    pub state: String,
    /// Bytes only this snapshot holds (what deleting it frees), as its node
    /// last reported.
    pub used_bytes: u64,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/instances/{id}/snapshots`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// 1-64 of [A-Za-z0-9_.:-], starting with a letter or digit; unique per
    /// instance. Default: the time, as `20261128T213715Z`.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
    pub name: Option<String>,
}

/// `POST /v1/instances/{id}/snapshots/{name}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRollback {
    /// Start the instance once rolled back (Triton's "boot from snapshot").
    #[serde(default)]
    pub start: bool,
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotRolledBack {
    pub instance_id: InstanceId,
    pub snapshot: String,
    /// Newer snapshots, destroyed by the rollback.
    pub destroyed: Vec<String>,
    /// The start job, with `start`.
    pub job_id: Option<crate::JobId>,
}
