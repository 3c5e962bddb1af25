//! Fabrics: an account's own VLANs, carried between nodes over VXLAN, and
//! the networks on them (Triton's CloudAPI fabrics).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AccountId;

/// One of an account's fabric VLANs: a layer-2 segment of its own.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FabricVlan {
    pub owner: AccountId,
    /// 0..=4095, unique in the account.
    pub vlan_id: u16,
    /// The VXLAN id the datacenter gave it (unique in the datacenter).
    pub vni: u32,
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FabricVlanCreate {
    #[schema(minimum = 0, maximum = 4095)]
    pub vlan_id: u16,
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
    /// Operators: the account it is for (default: the caller's).
    pub owner: Option<AccountId>,
}

/// A network on a fabric VLAN. Its subnet may overlap other accounts'
/// networks, never another of the same account's fabric networks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FabricNetworkCreate {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub name: String,
    /// IPv4 CIDR with a prefix of 8..=30 and no host bits, e.g. 192.168.128.0/24.
    #[schema(format = "ipv4-cidr")]
    pub subnet: String,
    /// A host address of the subnet; the nodes route it out through NAT.
    #[schema(format = Ipv4)]
    pub gateway: Option<String>,
    #[schema(format = Ipv4)]
    pub provision_start: String,
    #[schema(format = Ipv4)]
    pub provision_end: String,
    #[serde(default)]
    #[schema(max_items = 8)]
    pub resolvers: Vec<String>,
    #[serde(default)]
    pub routes: BTreeMap<String, String>,
    /// The gateway NATs out to the datacenter's NAT network (default: when
    /// there is a gateway).
    pub internet_nat: Option<bool>,
    /// Default and most: the underlay's MTU less the 50 bytes of VXLAN.
    #[schema(minimum = 576, maximum = 8950)]
    pub mtu: Option<u32>,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
}
