//! Instances: containers (and later VMs) of a tenant, placed on a server.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AccountId, ImageId, InstanceId, JobId, NetworkId, PackageId, ServerId};

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Provisioning,
    Running,
    Stopping,
    Stopped,
    Failed,
    Deleting,
    Deleted,
    /// Its server stopped reporting, or stopped reporting this instance.
    Unknown,
}

impl InstanceState {
    pub const ALL: [InstanceState; 8] = [
        InstanceState::Provisioning,
        InstanceState::Running,
        InstanceState::Stopping,
        InstanceState::Stopped,
        InstanceState::Failed,
        InstanceState::Deleting,
        InstanceState::Deleted,
        InstanceState::Unknown,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            InstanceState::Provisioning => "provisioning",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Failed => "failed",
            InstanceState::Deleting => "deleting",
            InstanceState::Deleted => "deleted",
            InstanceState::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<InstanceState> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An address of a network held by an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InstanceNic {
    pub network_id: NetworkId,
    pub ip: String,
    /// The prefix length of the network's subnet.
    pub prefix_len: u8,
    pub gateway: Option<String>,
    pub mac: String,
    pub primary: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: InstanceId,
    pub owner: AccountId,
    pub alias: String,
    /// `container` or `kvm`.
    pub brand: String,
    /// Null only for a deleted instance whose image was deleted since.
    pub image_id: Option<ImageId>,
    pub package_id: PackageId,
    /// Null until the scheduler placed it (or once its server was deleted).
    pub server_id: Option<ServerId>,
    pub state: InstanceState,
    pub memory_mb: u64,
    pub disk_mb: u64,
    /// The virtual CPUs it holds on its server (VMs); containers share the
    /// server's CPUs under their package's cpu_cap and hold none.
    pub vcpus: u32,
    /// The networks asked for, in order; `nics` fills in as they are allocated.
    pub networks: Vec<NetworkId>,
    pub nics: Vec<InstanceNic>,
    #[schema(value_type = Object)]
    pub tags: BTreeMap<String, serde_json::Value>,
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<String, String>,
    pub firewall_enabled: bool,
    /// Why the instance failed, when it did.
    pub error: Option<String>,
    /// The job working on it now, or the last one.
    pub job_id: Option<JobId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/instances`. `image` and `package` take an id or a name
/// (a package name picks its newest active version).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceCreate {
    /// 1-63 of [a-zA-Z0-9-], unique among the owner's instances; also the
    /// host name. Default: the first 8 characters of the id.
    pub alias: Option<String>,
    pub image: String,
    pub package: String,
    /// Network ids or names; the first is the primary NIC.
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub tags: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub firewall_enabled: bool,
    /// Placement rules: `instance==web*` / `instance!=db1` (hard) or
    /// `instance==~web*` / `instance!=~db*` (soft), matched against the
    /// aliases of the owner's instances; `server==<id>` pins a server.
    #[serde(default)]
    pub affinity: Vec<String>,
    /// Operators only: create the instance for this account.
    pub owner: Option<AccountId>,
}

/// What `POST /v1/instances` and the actions answer (202): the instance and
/// the job that works on it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceAccepted {
    pub instance: Instance,
    pub job_id: JobId,
}
