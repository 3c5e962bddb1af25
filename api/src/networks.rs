//! NIC tags, networks and their IP addresses.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AccountId, NetworkId};

/// A name for a physical network a server's interface is attached to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NicTag {
    pub name: String,
    pub mtu: u32,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicTagCreate {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub name: String,
    /// 576..=9000, default 1500.
    #[schema(minimum = 576, maximum = 9000)]
    pub mtu: Option<u32>,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Network {
    pub id: NetworkId,
    pub name: String,
    pub nic_tag: String,
    /// 0 = untagged, else 2..=4094.
    pub vlan_id: u16,
    /// The VXLAN id of an overlay network (every fabric network has one).
    pub vni: Option<u32>,
    /// The fabric VLAN of a fabric network (whose only user is `owners[0]`).
    pub fabric_vlan_id: Option<u16>,
    /// A fabric network whose gateway each node provides, NATed out to the
    /// datacenter's NAT network.
    pub internet_nat: bool,
    /// IPv4 CIDR, e.g. 10.88.0.0/24.
    pub subnet: String,
    pub gateway: Option<String>,
    pub provision_start: String,
    pub provision_end: String,
    pub resolvers: Vec<String>,
    /// destination CIDR -> next hop
    pub routes: BTreeMap<String, String>,
    pub mtu: u32,
    /// Who may use it; empty means everyone.
    pub owners: Vec<AccountId>,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub name: String,
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub nic_tag: String,
    /// 0 = untagged, else 2..=4094 (VLAN 1 is refused).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 4094)]
    pub vlan_id: u16,
    /// An overlay network: VXLAN over the nic tag's interface. VNIs from
    /// 8388608 up are the fabrics'.
    #[schema(minimum = 1, maximum = 8_388_607)]
    pub vni: Option<u32>,
    /// IPv4 CIDR with a prefix of 8..=30 and no host bits, e.g. 10.88.0.0/24.
    #[schema(format = "ipv4-cidr")]
    pub subnet: String,
    /// A host address of the subnet.
    #[schema(format = Ipv4)]
    pub gateway: Option<String>,
    /// The first address instances get: a host address of the subnet.
    #[schema(format = Ipv4)]
    pub provision_start: String,
    /// The last, at or after `provision_start`; at most 65,536 addresses in all.
    #[schema(format = Ipv4)]
    pub provision_end: String,
    #[serde(default)]
    #[schema(max_items = 8)]
    pub resolvers: Vec<String>,
    #[serde(default)]
    pub routes: BTreeMap<String, String>,
    /// Default: the nic tag's MTU.
    #[schema(minimum = 576, maximum = 9000)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub owners: Vec<AccountId>,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
}

/// An address of a network that is taken.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkIp {
    pub network_id: NetworkId,
    pub ip: String,
    /// Held by an operator rather than an instance.
    pub reserved: bool,
    /// What holds it: `reservation` or `instance`.
    pub owner_type: String,
    pub owner_id: Option<uuid::Uuid>,
    pub updated_at: DateTime<Utc>,
}

/// Take an address: a given one, or the lowest free one of the provision range.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkIpAllocate {
    #[schema(format = Ipv4)]
    pub ip: Option<String>,
}

/// A named, ordered list of networks of one nic tag: an instance asking for
/// the pool gets the first of them with a free address.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkPool {
    pub id: crate::NetworkPoolId,
    pub name: String,
    pub nic_tag: String,
    /// In the order they are tried.
    pub networks: Vec<NetworkId>,
    /// Who may use it; empty means everyone.
    pub owners: Vec<AccountId>,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkPoolCreate {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    pub name: String,
    /// Network ids or names, all on one nic tag, in the order they are tried.
    #[schema(min_items = 1, max_items = 64)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub owners: Vec<AccountId>,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
}
