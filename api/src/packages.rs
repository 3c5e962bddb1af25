//! Packages: the sizes instances come in.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AccountId, PackageId};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Package {
    pub id: PackageId,
    pub name: String,
    pub version: String,
    pub description: String,
    pub memory_mb: u64,
    pub swap_mb: u64,
    pub vcpus: u32,
    /// CPU cap in percent of one CPU (100 = one full CPU); 0 = no cap.
    pub cpu_cap: u32,
    pub disk_mb: u64,
    pub brand: crate::Brand,
    #[schema(value_type = Object)]
    pub traits: BTreeMap<String, serde_json::Value>,
    pub active: bool,
    /// Who may use it; empty means everyone.
    pub owners: Vec<AccountId>,
    /// Set once an instance used it: it can then only be deactivated.
    pub used: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageCreate {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub name: String,
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub version: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
    #[schema(minimum = 16, maximum = 4_194_304)]
    pub memory_mb: u64,
    #[serde(default)]
    #[schema(maximum = 4_194_304)]
    pub swap_mb: u64,
    #[schema(minimum = 1, maximum = 512)]
    pub vcpus: u32,
    #[serde(default)]
    #[schema(maximum = 51_200)]
    pub cpu_cap: u32,
    #[schema(minimum = 1, maximum = 1_073_741_824)]
    pub disk_mb: u64,
    pub brand: crate::Brand,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub traits: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub owners: Vec<AccountId>,
}

/// A change to a package. Size fields may be sent but must equal the current
/// values: sizes are immutable (409 otherwise); make a new version instead.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageUpdate {
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    pub active: Option<bool>,
    pub owners: Option<Vec<AccountId>>,
    #[schema(value_type = Option<Object>)]
    pub traits: Option<BTreeMap<String, serde_json::Value>>,
    pub memory_mb: Option<u64>,
    pub swap_mb: Option<u64>,
    pub vcpus: Option<u32>,
    pub cpu_cap: Option<u32>,
    pub disk_mb: Option<u64>,
    pub brand: Option<crate::Brand>,
}
