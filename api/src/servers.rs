//! Compute nodes: their state, what they reported about themselves, their setup,
//! and the join tokens that let a node register.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{JoinTokenId, ServerId};

crate::named_enum! {
    pub enum ServerStatus {
        /// Registered, waiting for an operator's setup.
        Unsetup = "unsetup",
        /// Setup is being applied.
        SettingUp = "setting_up",
        /// Set up and heartbeating: schedulable unless reserved.
        Running = "running",
        /// Heartbeats stopped (3 intervals missed). Nothing is destroyed.
        Unknown = "unknown",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Server {
    pub id: ServerId,
    pub hostname: String,
    pub status: ServerStatus,
    /// Why it is `unknown` (no heartbeat since when, its certificate
    /// expired or was revoked); null otherwise.
    pub status_reason: Option<String>,
    /// A reserved server takes no new instances.
    pub reserved: bool,
    pub machine_id: String,
    pub sysinfo: Sysinfo,
    pub setup: Option<ServerSetup>,
    pub usage: Option<Usage>,
    /// Where the headnode reaches the agent.
    pub agent_address: String,
    pub agent_version: String,
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Why the last comparison of its instances with the node failed (the
    /// node cannot see its pool, did not answer, ...); null when it worked.
    pub sync_error: Option<String>,
    /// The certificate the node proves itself with (mutual TLS); null for
    /// a server registered before certificates, which must re-join.
    pub certificate: Option<ServerCertificate>,
    pub created_at: DateTime<Utc>,
}

/// A node's certificate: issued by the datacenter's CA for a key that never
/// left the node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerCertificate {
    /// The sha256 (hex) of the certificate.
    pub sha256: String,
    pub not_after: DateTime<Utc>,
    /// When an operator revoked it (refused since); null if it was not.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An instance a node has that the database does not place on it (unknown,
/// deleted, or placed elsewhere): a leftover for an operator to look at.
/// Nothing removes it automatically.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Orphan {
    pub instance_id: String,
    /// `running`, `stopped` or `failed`, as the node reports it.
    pub state: String,
    /// What the database knows of it: `unknown`, `deleted`, or
    /// `on server <id>`.
    pub known_as: String,
}

/// What an operator decides at setup.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSetup {
    /// The zpool instances live on.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub zpool: String,
    /// nic tag -> interface name on the node.
    #[serde(default)]
    pub nic_tags: BTreeMap<String, String>,
    /// Free-form traits matched by packages and images.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub traits: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sysinfo {
    pub hostname: String,
    pub machine_id: String,
    pub cpu_model: String,
    pub cpu_count: u32,
    pub memory_bytes: u64,
    pub kernel: String,
    pub os: String,
    pub disks: Vec<Disk>,
    pub zpools: Vec<Zpool>,
    pub nics: Vec<Nic>,
    pub capabilities: BTreeMap<String, Capability>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Disk {
    pub name: String,
    pub size_bytes: u64,
    pub model: String,
    pub rotational: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Zpool {
    pub name: String,
    pub size_bytes: u64,
    pub allocated_bytes: u64,
    pub free_bytes: u64,
    pub health: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    pub addresses: Vec<String>,
    pub mtu: u32,
    pub up: bool,
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Capability {
    pub available: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub load1: f64,
    pub uptime_seconds: u64,
    pub zpools: Vec<Zpool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenCreate {
    /// Lifetime in seconds (60..=604800, default 3600).
    #[schema(minimum = 60, maximum = 604_800)]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenCreated {
    pub id: JoinTokenId,
    /// Give this to `nereid-agent --join-token`; it is shown once. It ends
    /// with `.` and the CA's fingerprint, so the node checks the headnode
    /// before it sends anything.
    pub token: String,
    /// The sha256 of the datacenter's CA certificate.
    pub ca_sha256: String,
    pub expires_at: DateTime<Utc>,
}
