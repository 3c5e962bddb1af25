//! Every conversion between the agents' protobuf messages and the
//! headnode's types: sysinfo and usage (registry), instance specs (sagas),
//! instance states and events (sagas, reconciler), typed error details.

use std::collections::BTreeMap;

use nereid_api::{self as api, Accelerator, Brand, InstanceId, InstanceState};
use nereid_proto::v1 as pb;

use crate::db::{InstanceSizes, NicPlan};
use crate::error::{Error, Result};

/// What a node is asked to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: InstanceId,
    pub sizes: InstanceSizes,
    pub nics: Vec<NicPlan>,
    /// What it reads through its metadata service from its first boot.
    pub metadata: Option<pb::InstanceMetadata>,
}

/// What a node sees of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Running,
    Stopped,
    /// Stopped by itself, not cleanly (its VMM crashed or was killed).
    Failed,
}

impl NodeState {
    pub fn instance_state(&self) -> InstanceState {
        match self {
            NodeState::Running => InstanceState::Running,
            NodeState::Stopped => InstanceState::Stopped,
            NodeState::Failed => InstanceState::Failed,
        }
    }
}

/// An instance as its node reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInstance {
    pub id: String,
    pub state: NodeState,
    pub generation: u64,
    /// The metadata generation the node serves it (0: none, or not said).
    pub metadata_generation: u64,
    pub reason: Option<String>,
    pub accelerator: Option<Accelerator>,
}

pub fn brand(b: Brand) -> pb::Brand {
    match b {
        Brand::Container => pb::Brand::Container,
        Brand::Kvm => pb::Brand::Kvm,
    }
}

pub fn spec(s: &Spec) -> pb::InstanceSpec {
    let z = &s.sizes;
    pb::InstanceSpec {
        id: s.id.to_string(),
        hostname: z.alias.clone(),
        image_id: z.image_id.map(|i| i.to_string()).unwrap_or_default(),
        brand: brand(z.brand).into(),
        vcpus: z.vcpus,
        memory_mb: z.memory_mb,
        swap_mb: z.swap_mb,
        cpu_cap: z.cpu_cap,
        disk_mb: z.disk_mb,
        pids_limit: 0,
        generation: z.generation,
        nics: s.nics.iter().map(nic_spec).collect(),
        isolated_ids: z.isolated_ids,
    }
}

fn nic_spec(n: &crate::db::NicPlan) -> pb::NicSpec {
    pb::NicSpec {
        network_id: n.network_id.to_string(),
        nic_tag: n.nic_tag.clone(),
        vlan_id: n.vlan_id.into(),
        ip: n.ip.to_string(),
        prefix_len: n.prefix_len.into(),
        gateway: n.gateway.clone().unwrap_or_default(),
        resolvers: n.resolvers.clone(),
        mtu: n.mtu,
        mac: n.mac.clone(),
        vni: n.vni.unwrap_or(0),
        nat: n.nat.as_deref().map(|x| Box::new(nic_spec(x))),
        allow_ip_spoofing: n.options.allow_ip_spoofing,
        allow_mac_spoofing: n.options.allow_mac_spoofing,
        allow_dhcp_spoofing: n.options.allow_dhcp_spoofing,
    }
}

fn node_state(s: i32) -> Result<NodeState> {
    match pb::RunState::try_from(s) {
        Ok(pb::RunState::Running) => Ok(NodeState::Running),
        Ok(pb::RunState::Stopped) => Ok(NodeState::Stopped),
        Ok(pb::RunState::Failed) => Ok(NodeState::Failed),
        _ => Err(Error::AgentRefused(format!(
            "the agent reported an instance state this headnode does not know ({s})"
        ))),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub fn node_instance(st: pb::InstanceStatus) -> Result<NodeInstance> {
    let spec = st.spec.unwrap_or_default();
    Ok(NodeInstance {
        id: spec.id,
        state: node_state(st.state)?,
        generation: spec.generation,
        metadata_generation: st.metadata_generation,
        reason: non_empty(st.reason),
        accelerator: match pb::Accelerator::try_from(st.accelerator) {
            Ok(pb::Accelerator::Kvm) => Some(Accelerator::Kvm),
            Ok(pb::Accelerator::Tcg) => Some(Accelerator::Tcg),
            _ => None,
        },
    })
}

/// An event; None for a state this headnode does not know.
pub fn event(e: pb::InstanceEvent) -> Option<NodeInstance> {
    Some(NodeInstance {
        state: node_state(e.state).ok()?,
        id: e.id,
        generation: e.generation,
        metadata_generation: 0,
        reason: non_empty(e.reason),
        accelerator: None,
    })
}

/// The typed reason an agent gave in a status's details, if any.
pub fn error_reason(st: &tonic::Status) -> Option<pb::ErrorReason> {
    if st.details().is_empty() {
        return None;
    }
    let d: pb::ErrorDetail = prost::Message::decode(st.details()).ok()?;
    pb::ErrorReason::try_from(d.reason).ok()
}

pub fn sysinfo(s: pb::Sysinfo) -> api::Sysinfo {
    let mut capabilities = BTreeMap::new();
    if let Some(c) = s.capabilities {
        for (name, cap) in [
            ("zfs", c.zfs),
            ("runc", c.runc),
            ("qemu", c.qemu),
            ("kvm", c.kvm),
            ("vxlan", c.vxlan),
            ("vlan", c.vlan),
            ("nftables", c.nftables),
            ("zvol", c.zvol),
        ] {
            let cap = cap.unwrap_or_default();
            capabilities.insert(
                name.to_string(),
                api::Capability {
                    available: cap.available,
                    detail: cap.detail,
                },
            );
        }
    }
    api::Sysinfo {
        hostname: s.hostname,
        machine_id: s.machine_id,
        cpu_model: s.cpu_model,
        cpu_count: s.cpu_count,
        memory_bytes: s.memory_bytes,
        kernel: s.kernel,
        os: s.os,
        disks: s
            .disks
            .into_iter()
            .map(|d| api::Disk {
                name: d.name,
                size_bytes: d.size_bytes,
                model: d.model,
                rotational: d.rotational,
            })
            .collect(),
        zpools: s.zpools.into_iter().map(zpool).collect(),
        nics: s
            .nics
            .into_iter()
            .map(|n| api::Nic {
                name: n.name,
                mac: n.mac,
                addresses: n.addresses,
                mtu: n.mtu,
                up: n.up,
                kind: n.kind,
            })
            .collect(),
        capabilities,
    }
}

pub fn zpool(z: pb::ZpoolInfo) -> api::Zpool {
    api::Zpool {
        name: z.name,
        size_bytes: z.size_bytes,
        allocated_bytes: z.allocated_bytes,
        free_bytes: z.free_bytes,
        health: z.health,
    }
}

pub fn usage(u: pb::Usage) -> api::Usage {
    api::Usage {
        memory_total_bytes: u.memory_total_bytes,
        memory_available_bytes: u.memory_available_bytes,
        load1: if u.load1.is_finite() { u.load1 } else { 0.0 },
        uptime_seconds: u.uptime_seconds,
        zpools: u.zpools.into_iter().map(zpool).collect(),
    }
}
