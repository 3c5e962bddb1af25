//! The brand-neutral description of an instance, as the headnode asks for it
//! and as the node records it (the `nereid:spec` property of the instance's
//! dataset, so a restarted agent rebuilds everything from ZFS alone), and the
//! conversions to and from its protobuf form.
//!
//! It holds data and validation only: it must never touch the host.

use nereid_api::Brand;
use nereid_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// What the headnode asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub id: String,
    pub hostname: String,
    pub image_id: String,
    /// Records written before VMs existed have no brand: they are containers.
    #[serde(default = "container")]
    pub brand: Brand,
    /// Virtual CPUs of a VM; containers share the node's CPUs under `cpu_cap`.
    #[serde(default)]
    pub vcpus: u32,
    pub memory_mb: u64,
    #[serde(default)]
    pub swap_mb: u64,
    /// Percent of one CPU; 0 = no cap.
    #[serde(default)]
    pub cpu_cap: u32,
    pub disk_mb: u64,
    #[serde(default = "default_pids")]
    pub pids_limit: i64,
    /// The headnode's version of this spec; newer wins.
    #[serde(default)]
    pub generation: u64,
    /// In order; the first is the primary NIC (default route, resolvers).
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// A container in a host id range of its own rather than the node's
    /// shared one.
    #[serde(default)]
    pub isolated_ids: bool,
    /// Recorded by the node, never sent: the first host id of an isolated
    /// container's range (0 until one is given, and for shared ones).
    #[serde(default)]
    pub id_base: u32,
}

/// A NIC of an instance (see `net`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nic {
    pub network_id: String,
    pub nic_tag: String,
    #[serde(default)]
    pub vlan_id: u16,
    /// The VXLAN of an overlay (fabric) network.
    #[serde(default)]
    pub vni: Option<u32>,
    /// This network's gateway is the node's NAT, whose own NIC on the NAT
    /// network this is (`net::nat`).
    #[serde(default)]
    pub nat: Option<Box<Nic>>,
    /// The port may send from any IPv4 address (a NAT gateway's inside port,
    /// which forwards replies to others' traffic).
    #[serde(default)]
    pub allow_ip_spoofing: bool,
    /// Frames from any MAC.
    #[serde(default)]
    pub allow_mac_spoofing: bool,
    /// DHCP server replies.
    #[serde(default)]
    pub allow_dhcp_spoofing: bool,
    pub ip: std::net::Ipv4Addr,
    pub prefix_len: u8,
    #[serde(default)]
    pub gateway: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub resolvers: Vec<std::net::Ipv4Addr>,
    pub mtu: u32,
    pub mac: String,
}

fn container() -> Brand {
    Brand::Container
}

fn default_pids() -> i64 {
    4096
}

/// Why a spec cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

impl InstanceSpec {
    /// Checks what every brand needs.
    pub fn check(&self) -> Result<(), Invalid> {
        if !is_uuid(&self.id) {
            return Err(Invalid(format!("id {:?} is not a UUID", self.id)));
        }
        if !is_uuid(&self.image_id) {
            return Err(Invalid(format!(
                "image_id {:?} is not a UUID",
                self.image_id
            )));
        }
        let h = &self.hostname;
        if h.is_empty()
            || h.len() > 63
            || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || h.starts_with('-')
        {
            return Err(Invalid(format!("hostname {h:?} is not a valid host name")));
        }
        if self.memory_mb < 16 || self.disk_mb < 1 || self.pids_limit < 16 {
            return Err(Invalid(
                "memory_mb >= 16, disk_mb >= 1 and pids_limit >= 16 are required".into(),
            ));
        }
        if self.brand == Brand::Kvm && !(1..=64).contains(&self.vcpus) {
            return Err(Invalid(format!(
                "a VM needs 1 to 64 vcpus, not {}",
                self.vcpus
            )));
        }
        Ok(())
    }
}

pub fn brand_from_pb(b: i32) -> Result<Brand, Invalid> {
    match pb::Brand::try_from(b) {
        // Headnodes from before VMs send no brand: containers.
        Ok(pb::Brand::Unspecified) | Ok(pb::Brand::Container) => Ok(Brand::Container),
        Ok(pb::Brand::Kvm) => Ok(Brand::Kvm),
        Err(_) => Err(Invalid(format!("brand {b} is not known to this agent"))),
    }
}

pub fn brand_to_pb(b: Brand) -> pb::Brand {
    match b {
        Brand::Container => pb::Brand::Container,
        Brand::Kvm => pb::Brand::Kvm,
    }
}

impl TryFrom<pb::InstanceSpec> for InstanceSpec {
    type Error = Invalid;

    fn try_from(s: pb::InstanceSpec) -> Result<InstanceSpec, Invalid> {
        Ok(InstanceSpec {
            brand: brand_from_pb(s.brand)?,
            id: s.id,
            hostname: s.hostname,
            image_id: s.image_id,
            vcpus: s.vcpus,
            memory_mb: s.memory_mb,
            swap_mb: s.swap_mb,
            cpu_cap: s.cpu_cap,
            disk_mb: s.disk_mb,
            pids_limit: if s.pids_limit == 0 {
                default_pids()
            } else {
                s.pids_limit
            },
            generation: s.generation,
            nics: s
                .nics
                .into_iter()
                .map(Nic::try_from)
                .collect::<Result<Vec<_>, Invalid>>()?,
            isolated_ids: s.isolated_ids,
            id_base: 0,
        })
    }
}

impl From<&InstanceSpec> for pb::InstanceSpec {
    fn from(s: &InstanceSpec) -> pb::InstanceSpec {
        pb::InstanceSpec {
            id: s.id.clone(),
            hostname: s.hostname.clone(),
            image_id: s.image_id.clone(),
            brand: brand_to_pb(s.brand).into(),
            vcpus: s.vcpus,
            memory_mb: s.memory_mb,
            swap_mb: s.swap_mb,
            cpu_cap: s.cpu_cap,
            disk_mb: s.disk_mb,
            pids_limit: s.pids_limit,
            generation: s.generation,
            nics: s.nics.iter().map(pb::NicSpec::from).collect(),
            isolated_ids: s.isolated_ids,
        }
    }
}

fn is_mac(m: &str) -> bool {
    m.len() == 17
        && m.split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()))
}

impl TryFrom<pb::NicSpec> for Nic {
    type Error = Invalid;

    fn try_from(mut n: pb::NicSpec) -> Result<Nic, Invalid> {
        let nat = match n.nat.take() {
            Some(x) if x.nat.is_some() => {
                return Err(Invalid(format!(
                    "nic {}: a NAT's NIC has no NAT of its own",
                    n.network_id
                )));
            }
            Some(x) => Some(Box::new(Nic::try_from(*x)?)),
            None => None,
        };
        if nat.is_some() && n.gateway.is_empty() {
            return Err(Invalid(format!(
                "nic {}: a NATed network needs a gateway",
                n.network_id
            )));
        }
        let addr = |field: &str, v: &str| {
            v.parse::<std::net::Ipv4Addr>().map_err(|_| {
                Invalid(format!(
                    "nic {}: {field} {v:?} is not an IPv4 address",
                    n.network_id
                ))
            })
        };
        if !is_mac(&n.mac) {
            return Err(Invalid(format!(
                "nic {}: mac {:?} is malformed",
                n.network_id, n.mac
            )));
        }
        if n.prefix_len == 0 || n.prefix_len > 32 || !(576..=9000).contains(&n.mtu) {
            return Err(Invalid(format!(
                "nic {}: prefix_len must be 1..=32 and mtu 576..=9000",
                n.network_id
            )));
        }
        Ok(Nic {
            ip: addr("ip", &n.ip)?,
            gateway: if n.gateway.is_empty() {
                None
            } else {
                Some(addr("gateway", &n.gateway)?)
            },
            resolvers: n
                .resolvers
                .iter()
                .map(|r| addr("resolver", r))
                .collect::<Result<_, _>>()?,
            prefix_len: n.prefix_len as u8,
            vlan_id: n.vlan_id as u16,
            vni: (n.vni != 0).then_some(n.vni),
            nat,
            allow_ip_spoofing: n.allow_ip_spoofing,
            allow_mac_spoofing: n.allow_mac_spoofing,
            allow_dhcp_spoofing: n.allow_dhcp_spoofing,
            mtu: n.mtu,
            mac: n.mac.to_ascii_lowercase(),
            network_id: n.network_id,
            nic_tag: n.nic_tag,
        })
    }
}

impl From<&Nic> for pb::NicSpec {
    fn from(n: &Nic) -> pb::NicSpec {
        pb::NicSpec {
            network_id: n.network_id.clone(),
            nic_tag: n.nic_tag.clone(),
            vlan_id: n.vlan_id.into(),
            ip: n.ip.to_string(),
            prefix_len: n.prefix_len.into(),
            gateway: n.gateway.map(|g| g.to_string()).unwrap_or_default(),
            resolvers: n.resolvers.iter().map(|r| r.to_string()).collect(),
            mtu: n.mtu,
            mac: n.mac.clone(),
            vni: n.vni.unwrap_or(0),
            nat: n.nat.as_deref().map(|x| Box::new(x.into())),
            allow_ip_spoofing: n.allow_ip_spoofing,
            allow_mac_spoofing: n.allow_mac_spoofing,
            allow_dhcp_spoofing: n.allow_dhcp_spoofing,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn spec(brand: Brand) -> InstanceSpec {
        InstanceSpec {
            id: "0192f0c4-5b7e-7c3a-9d4e-1a2b3c4d5e6f".into(),
            hostname: "web1".into(),
            image_id: "0192f0c4-5b7e-7c3a-9d4e-000000000001".into(),
            brand,
            vcpus: 2,
            memory_mb: 128,
            swap_mb: 64,
            cpu_cap: 50,
            disk_mb: 1024,
            pids_limit: 100,
            generation: 1,
            nics: vec![Nic {
                network_id: "n1".into(),
                nic_tag: "admin".into(),
                vlan_id: 0,
                vni: None,
                nat: None,
                allow_ip_spoofing: false,
                allow_mac_spoofing: false,
                allow_dhcp_spoofing: false,
                ip: "10.0.0.5".parse().unwrap(),
                prefix_len: 24,
                gateway: Some("10.0.0.1".parse().unwrap()),
                resolvers: vec!["10.0.0.53".parse().unwrap()],
                mtu: 1500,
                mac: "92:00:00:00:00:01".into(),
            }],
            isolated_ids: false,
            id_base: 0,
        }
    }

    #[test]
    fn a_spec_survives_the_round_trip_through_protobuf() {
        for brand in [Brand::Container, Brand::Kvm] {
            let s = spec(brand);
            let back = InstanceSpec::try_from(pb::InstanceSpec::from(&s)).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn records_from_before_vms_are_containers() {
        let old = r#"{"id":"x","hostname":"h","image_id":"i","memory_mb":64,"disk_mb":10}"#;
        let s: InstanceSpec = serde_json::from_str(old).unwrap();
        assert_eq!(s.brand, Brand::Container);
        assert_eq!(s.pids_limit, 4096);
        assert_eq!(brand_from_pb(0).unwrap(), Brand::Container);
        assert!(brand_from_pb(99).is_err());
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let mut s = spec(Brand::Kvm);
        s.vcpus = 0;
        assert!(s.check().unwrap_err().0.contains("vcpus"));
        let mut s = spec(Brand::Container);
        s.hostname = "-bad".into();
        assert!(s.check().unwrap_err().0.contains("host name"));
        let mut n = pb::NicSpec::from(&spec(Brand::Container).nics[0]);
        n.mac = "zz".into();
        assert!(Nic::try_from(n).unwrap_err().0.contains("mac"));
    }
}
