//! A fabric network's gateway on this node (Triton's NAT zone, one per
//! network and node): a network namespace `nrg-<12 hex>` (from the NAT's MAC,
//! which the headnode makes unique per network and node) with two NICs made
//! like an instance's: `eth0` on the NAT network (the address the headnode
//! gave it, default route through that network's gateway) and `eth1` on the
//! fabric network holding the fabric's gateway address; forwarding on and
//! everything leaving `eth0` masqueraded. Every node that runs instances of
//! the network has its own, so the gateway is always local (the overlay never
//! carries it).
//!
//! Each NAT is recorded in `<state>/nat/<netns>` (its network id) so that the
//! last instance of its network leaving the node removes it, and nothing else
//! is ever removed. The inside port may forward replies from any address
//! (its anti-spoofing keeps only its MAC), the outside one only its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{NetError, host_veth_name, link_exists, netns_path};
use crate::cmd;
use crate::spec::Nic;

static DIR: tokio::sync::Mutex<Option<PathBuf>> = tokio::sync::Mutex::const_new(None);

const T: Duration = Duration::from_secs(10);

/// At start: where the NATs of this node are recorded.
pub async fn init(state_dir: &Path) -> Result<(), NetError> {
    let dir = state_dir.join("nat");
    std::fs::create_dir_all(&dir).map_err(|source| NetError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    *DIR.lock().await = Some(dir);
    Ok(())
}

/// The 12 hex digits of a MAC (the NAT's name on this node).
fn mac_hex(mac: &str) -> String {
    mac.chars().filter(|c| c.is_ascii_hexdigit()).collect()
}

pub fn netns_name(nat_mac: &str) -> String {
    format!("nrg-{}", mac_hex(nat_mac))
}

/// The masquerade of everything leaving by `eth0`, replacing any earlier one.
const NAT_SCRIPT: &str = "add table ip nereid_nat\n\
     delete table ip nereid_nat\n\
     add table ip nereid_nat\n\
     add chain ip nereid_nat post { type nat hook postrouting priority srcnat ; policy accept ; }\n\
     add rule ip nereid_nat post oifname \"eth0\" masquerade\n";

/// The two NICs of a NAT: outside on the NAT network, inside holding the
/// fabric network's gateway address (from a MAC derived from the outside's).
fn nics_of(nic: &Nic, outside: &Nic) -> Result<[Nic; 2], NetError> {
    let gateway = nic.gateway.ok_or_else(|| {
        NetError::Overlay(format!(
            "network {} NATs out but has no gateway",
            nic.network_id
        ))
    })?;
    let hex = mac_hex(&outside.mac);
    let inside_mac = format!(
        "9a:{}:{}:{}:{}:{}",
        &hex[2..4],
        &hex[4..6],
        &hex[6..8],
        &hex[8..10],
        &hex[10..12]
    );
    let inside = Nic {
        ip: gateway,
        gateway: None,
        resolvers: Vec::new(),
        mac: inside_mac,
        nat: None,
        allow_ip_spoofing: true,
        ..nic.clone()
    };
    let outside = Nic {
        nat: None,
        allow_ip_spoofing: false,
        allow_mac_spoofing: false,
        allow_dhcp_spoofing: false,
        ..outside.clone()
    };
    Ok([outside, inside])
}

/// Makes the NAT of every NIC of `nics` that has one exist (a complete one
/// is left alone; a half-made one is made again).
pub async fn ensure(
    nics: &[Nic],
    nic_tags: &std::collections::BTreeMap<String, String>,
) -> Result<(), NetError> {
    for nic in nics {
        let Some(outside) = nic.nat.as_deref() else {
            continue;
        };
        if mac_hex(&outside.mac).len() != 12 {
            return Err(NetError::BadMac(outside.mac.clone()));
        }
        let dir = DIR.lock().await;
        let dir = dir
            .as_ref()
            .ok_or_else(|| NetError::Overlay("the NATs were not initialised".into()))?;
        let ns = netns_name(&outside.mac);
        let key = ns.trim_start_matches("nrg-").to_string();
        let ports = [host_veth_name(&key, 0), host_veth_name(&key, 1)];
        if netns_path(&ns).exists() && ports.iter().all(|p| link_exists(p)) {
            continue;
        }
        let record = dir.join(&ns);
        std::fs::write(&record, &nic.network_id).map_err(|source| NetError::Write {
            path: record.display().to_string(),
            source,
        })?;
        if !netns_path(&ns).exists() {
            cmd::run("ip", &["netns", "add", &ns], T).await?;
        }
        super::plumb_into(&key, &ns, &nics_of(nic, outside)?, nic_tags).await?;
        cmd::run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
            T,
        )
        .await?;
        cmd::run_with_input(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            Some(NAT_SCRIPT),
            T,
        )
        .await?;
        tracing::info!(network = %nic.network_id, netns = %ns, outside = %outside.ip,
            "fabric gateway NAT in place");
    }
    Ok(())
}

/// Removes the NATs whose network none of `remaining` (the node's instances'
/// NICs) uses any more.
pub async fn sweep<'a>(remaining: impl Iterator<Item = &'a Nic>) -> Result<(), NetError> {
    let used: std::collections::BTreeSet<String> = remaining
        .filter(|n| n.nat.is_some())
        .map(|n| n.network_id.clone())
        .collect();
    let dir = DIR.lock().await;
    let Some(dir) = dir.as_ref() else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let ns = e.file_name().to_string_lossy().into_owned();
        let network = std::fs::read_to_string(e.path()).unwrap_or_default();
        if !ns.starts_with("nrg-") || used.contains(network.trim()) {
            continue;
        }
        remove(&ns).await;
        let _ = std::fs::remove_file(e.path());
        tracing::info!(%network, netns = %ns, "fabric gateway NAT removed (no instance of its network is left)");
    }
    Ok(())
}

/// Removes one NAT (what is already gone is fine).
async fn remove(ns: &str) {
    let key = ns.trim_start_matches("nrg-");
    if netns_path(ns).exists() {
        let _ = cmd::run("ip", &["netns", "del", ns], T).await;
    }
    super::unplumb(key, 2).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nat_holds_the_gateway_inside_and_its_own_address_outside() {
        let fabric = Nic {
            network_id: "f".into(),
            nic_tag: "underlay".into(),
            vlan_id: 0,
            vni: Some(8_388_608),
            nat: None,
            allow_ip_spoofing: false,
            allow_mac_spoofing: false,
            allow_dhcp_spoofing: false,
            ip: "192.168.60.10".parse().unwrap(),
            prefix_len: 24,
            gateway: Some("192.168.60.1".parse().unwrap()),
            resolvers: vec![],
            mtu: 1450,
            mac: "92:00:00:00:00:01".into(),
        };
        let outside = Nic {
            network_id: "n".into(),
            nic_tag: "admin".into(),
            vni: None,
            ip: "10.213.5.40".parse().unwrap(),
            gateway: Some("10.213.5.1".parse().unwrap()),
            mtu: 1500,
            mac: "96:aa:bb:cc:dd:ee".into(),
            ..fabric.clone()
        };
        let [o, i] = nics_of(&fabric, &outside).unwrap();
        assert_eq!(
            (o.ip.to_string(), o.gateway),
            (outside.ip.to_string(), outside.gateway)
        );
        assert!(!o.allow_ip_spoofing);
        assert_eq!(i.ip.to_string(), "192.168.60.1");
        assert_eq!((i.gateway, i.vni, i.mtu), (None, Some(8_388_608), 1450));
        assert!(i.allow_ip_spoofing);
        assert_eq!(i.mac, "9a:aa:bb:cc:dd:ee");
        assert_eq!(netns_name(&outside.mac), "nrg-96aabbccddee");
        let mut no_gateway = fabric.clone();
        no_gateway.gateway = None;
        assert!(nics_of(&no_gateway, &outside).is_err());
    }
}
