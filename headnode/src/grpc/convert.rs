//! Conversions from the agents' protobuf messages to the REST types.

use std::collections::BTreeMap;

use nereid_api as api;
use nereid_proto::v1 as pb;

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
