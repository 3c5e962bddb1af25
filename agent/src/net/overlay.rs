//! The node's end of the fabrics (overlay networks): per VNI a VXLAN device
//! `nx<vni>` (learning off; ARP for a remote address answered from its own
//! neighbour table, `proxy`) on the interface the network's nic tag maps to,
//! from that interface's IPv4 address, as a port of the VNI's bridge
//! `nf<vni>`, where the instances' veths and taps are; and the entries the
//! headnode pushes for the other nodes' instances on those VNIs: their MAC ->
//! the other node's underlay address (forwarding database) and their IP ->
//! MAC (neighbours). There is no flooding entry: a frame for a MAC nobody
//! pushed, broadcast included, never leaves the node.
//!
//! The pushed set is kept in the agent's state directory and applied again
//! to a VNI's device whenever the device is made (after a reboot, or for a
//! VNI new to the node), so pushes may come before the first instance. It
//! must never touch a device it did not name (`nx*`, `nf*`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use nereid_proto::v1 as pb;
use prost::Message;

use super::{NetError, link_exists};
use crate::cmd;
use crate::spec::Nic;

/// The VXLAN device of a VNI (at most 10 characters).
pub fn vxlan_name(vni: u32) -> String {
    format!("nx{vni}")
}

/// The bridge of a VNI's segment on this node.
pub fn bridge_name(vni: u32) -> String {
    format!("nf{vni}")
}

/// VXLAN's IANA port.
const VXLAN_PORT: u16 = 4789;

const T: Duration = Duration::from_secs(10);

/// The newest set and where it is kept; one apply at a time.
struct Kept {
    path: PathBuf,
    set: pb::OverlaySet,
}

static KEPT: tokio::sync::Mutex<Option<Kept>> = tokio::sync::Mutex::const_new(None);

/// At start: the kept set (none before the first push).
pub async fn init(state_dir: &std::path::Path) -> Result<(), NetError> {
    let path = state_dir.join("overlay.pb");
    let set = match tokio::fs::read(&path).await {
        Ok(bytes) => pb::OverlaySet::decode(bytes.as_slice()).unwrap_or_else(|e| {
            tracing::warn!(
                "{}: {e}; waiting for the headnode's next push",
                path.display()
            );
            pb::OverlaySet::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => pb::OverlaySet::default(),
        Err(source) => {
            return Err(NetError::Write {
                path: path.display().to_string(),
                source,
            });
        }
    };
    *KEPT.lock().await = Some(Kept { path, set });
    Ok(())
}

/// One peer, checked: the MAC and addresses are parsed, so nothing else
/// reaches a command line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Peer {
    mac: String,
    ip: Ipv4Addr,
    underlay: Ipv4Addr,
}

/// The set's peers by VNI; a malformed entry refuses the whole set.
fn by_vni(set: &pb::OverlaySet) -> Result<BTreeMap<u32, BTreeSet<Peer>>, NetError> {
    let mut out: BTreeMap<u32, BTreeSet<Peer>> = BTreeMap::new();
    for p in &set.peers {
        let bad =
            |what: &str, v: &str| NetError::Overlay(format!("{what} {v:?} in the overlay set"));
        if p.vni == 0 || p.vni > 16_777_215 {
            return Err(bad("VNI", &p.vni.to_string()));
        }
        let mac: super::antispoof::Mac = p.mac.parse().map_err(|_| bad("MAC", &p.mac))?;
        out.entry(p.vni).or_default().insert(Peer {
            mac: mac.to_string(),
            ip: p.ip.parse().map_err(|_| bad("address", &p.ip))?,
            underlay: p
                .underlay
                .parse()
                .map_err(|_| bad("underlay address", &p.underlay))?,
        });
    }
    Ok(out)
}

/// Replaces the overlay entries with `set` on every VNI device this node
/// has, and keeps the set for the devices made later.
pub async fn apply(set: pb::OverlaySet) -> Result<u64, NetError> {
    let peers = by_vni(&set)?;
    let mut kept = KEPT.lock().await;
    let kept = kept
        .as_mut()
        .ok_or_else(|| NetError::Overlay("the overlay was not initialised".into()))?;
    let tmp = kept.path.with_extension("pb.tmp");
    let write = |source| NetError::Write {
        path: kept.path.display().to_string(),
        source,
    };
    tokio::fs::write(&tmp, set.encode_to_vec())
        .await
        .map_err(write)?;
    tokio::fs::rename(&tmp, &kept.path).await.map_err(write)?;
    let generation = set.generation;
    kept.set = set;
    let empty = BTreeSet::new();
    for vni in local_vnis().await? {
        sync_vni(vni, peers.get(&vni).unwrap_or(&empty)).await?;
    }
    Ok(generation)
}

/// The VNIs this node has a device for.
async fn local_vnis() -> Result<Vec<u32>, NetError> {
    let out = cmd::run("ip", &["-o", "link", "show", "type", "vxlan"], T).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .filter_map(|n| n.split('@').next())
        .filter_map(|n| n.strip_prefix("nx")?.parse().ok())
        .collect())
}

/// Makes the NIC's VNI segment exist on this node (bridge, and VXLAN device
/// on the nic tag's interface `uplink` with its entries); returns the bridge.
pub async fn ensure_segment(nic: &Nic, vni: u32, uplink: &str) -> Result<String, NetError> {
    let (br, vx) = (bridge_name(vni), vxlan_name(vni));
    let mut kept = KEPT.lock().await;
    let mut lines = Vec::new();
    if !link_exists(&br) {
        lines.push(format!("link add {br} mtu {} type bridge", nic.mtu));
    }
    let made = !link_exists(&vx);
    if made {
        let local = ipv4_of(uplink).ok_or_else(|| {
            NetError::Overlay(format!(
                "the nic tag {:?}'s interface {uplink} has no IPv4 address to carry VXLAN from",
                nic.nic_tag
            ))
        })?;
        lines.push(format!(
            "link add {vx} mtu {} type vxlan id {vni} local {local} dev {uplink} dstport {VXLAN_PORT} nolearning proxy",
            nic.mtu
        ));
    }
    lines.push(format!("link set {vx} master {br} up"));
    // The bridge learns nothing on the VXLAN port: remote MACs are the
    // pushed entries' alone (a moved or deleted instance leaves no trace).
    lines.push(format!("link set {vx} type bridge_slave learning off"));
    lines.push(format!("link set {br} up"));
    super::ip_batch(None, &lines).await?;
    if made {
        let peers = match kept.as_mut() {
            Some(k) => by_vni(&k.set)?.remove(&vni).unwrap_or_default(),
            None => BTreeSet::new(),
        };
        sync_vni(vni, &peers).await?;
    }
    Ok(br)
}

/// The first IPv4 address of an interface of the agent's namespace.
fn ipv4_of(ifname: &str) -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        (ifa.interface_name == ifname)
            .then(|| ifa.address?.as_sockaddr_in().map(|a| a.ip()))
            .flatten()
    })
}

/// Makes `nx<vni>`'s entries exactly `want`.
async fn sync_vni(vni: u32, want: &BTreeSet<Peer>) -> Result<(), NetError> {
    let vx = vxlan_name(vni);
    let fdb = cmd::run("bridge", &["-j", "fdb", "show", "dev", &vx], T).await?;
    let neigh = cmd::run("ip", &["-j", "neigh", "show", "dev", &vx], T).await?;
    let have = Entries::parse(&fdb, &neigh)
        .map_err(|e| NetError::Overlay(format!("reading {vx}'s entries: {e}")))?;
    let (bridge_lines, ip_lines) = plan(&vx, &have, want);
    if !bridge_lines.is_empty() {
        let input = bridge_lines.join("\n") + "\n";
        cmd::run_with_input("bridge", &["-batch", "-"], Some(&input), T).await?;
    }
    if !ip_lines.is_empty() {
        super::ip_batch(None, &ip_lines).await?;
    }
    tracing::debug!(vni, peers = want.len(), "overlay entries in place");
    Ok(())
}

/// What a VXLAN device holds now: forwarding entries with a remote (MAC ->
/// underlay) and neighbours (IP -> MAC).
#[derive(Debug, Default, PartialEq)]
struct Entries {
    fdb: BTreeSet<(String, String)>,
    neigh: BTreeSet<(String, String)>,
}

impl Entries {
    /// From `bridge -j fdb show dev X` and `ip -j neigh show dev X`.
    fn parse(fdb: &str, neigh: &str) -> Result<Entries, serde_json::Error> {
        let json = |s: &str| -> Result<Vec<serde_json::Value>, serde_json::Error> {
            if s.trim().is_empty() {
                Ok(Vec::new())
            } else {
                serde_json::from_str(s)
            }
        };
        let text = |v: &serde_json::Value, k: &str| v[k].as_str().map(str::to_string);
        Ok(Entries {
            fdb: json(fdb)?
                .iter()
                .filter_map(|e| Some((text(e, "mac")?, text(e, "dst")?)))
                .collect(),
            neigh: json(neigh)?
                .iter()
                .filter_map(|e| Some((text(e, "dst")?, text(e, "lladdr")?)))
                .collect(),
        })
    }
}

/// The `bridge -batch` and `ip -batch` lines that turn `have` into `want`
/// on device `vx`.
fn plan(vx: &str, have: &Entries, want: &BTreeSet<Peer>) -> (Vec<String>, Vec<String>) {
    let want_fdb: BTreeSet<(String, String)> = want
        .iter()
        .map(|p| (p.mac.clone(), p.underlay.to_string()))
        .collect();
    let want_neigh: BTreeSet<(String, String)> = want
        .iter()
        .map(|p| (p.ip.to_string(), p.mac.clone()))
        .collect();
    let mut bridge = Vec::new();
    for (mac, dst) in have.fdb.difference(&want_fdb) {
        bridge.push(format!("fdb del {mac} dev {vx} dst {dst} self"));
    }
    for (mac, dst) in want_fdb.difference(&have.fdb) {
        bridge.push(format!(
            "fdb replace {mac} dev {vx} dst {dst} self permanent"
        ));
    }
    let mut ip = Vec::new();
    let wanted_ips: BTreeSet<&String> = want_neigh.iter().map(|(i, _)| i).collect();
    for (addr, _) in have.neigh.difference(&want_neigh) {
        if !wanted_ips.contains(addr) {
            ip.push(format!("neigh del {addr} dev {vx}"));
        }
    }
    for (addr, mac) in want_neigh.difference(&have.neigh) {
        ip.push(format!(
            "neigh replace {addr} lladdr {mac} dev {vx} nud permanent"
        ));
    }
    (bridge, ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(mac: &str, ip: &str, underlay: &str) -> Peer {
        Peer {
            mac: mac.into(),
            ip: ip.parse().unwrap(),
            underlay: underlay.parse().unwrap(),
        }
    }

    #[test]
    fn device_names_fit_the_kernel_limit() {
        assert_eq!(vxlan_name(16_777_215), "nx16777215");
        assert_eq!(bridge_name(8_388_608), "nf8388608");
        assert!(vxlan_name(16_777_215).len() <= 15);
    }

    #[test]
    fn the_plan_adds_what_is_missing_moves_what_moved_and_removes_what_went() {
        let have = Entries::parse(
            r#"[{"mac":"92:00:00:00:00:01","dst":"192.0.2.2","flags":["self"],"state":"permanent"},
                {"mac":"92:00:00:00:00:09","dst":"192.0.2.3","flags":["self"],"state":"permanent"},
                {"mac":"92:00:00:00:00:07","master":"nf7","state":""}]"#,
            r#"[{"dst":"10.0.0.1","lladdr":"92:00:00:00:00:01","state":["PERMANENT"]},
                {"dst":"10.0.0.9","lladdr":"92:00:00:00:00:09","state":["PERMANENT"]}]"#,
        )
        .unwrap();
        // 01 moved to another node, 09 went, 02 came.
        let want = BTreeSet::from([
            peer("92:00:00:00:00:01", "10.0.0.1", "192.0.2.4"),
            peer("92:00:00:00:00:02", "10.0.0.2", "192.0.2.2"),
        ]);
        let (bridge, ip) = plan("nx7", &have, &want);
        assert_eq!(
            bridge,
            vec![
                "fdb del 92:00:00:00:00:01 dev nx7 dst 192.0.2.2 self",
                "fdb del 92:00:00:00:00:09 dev nx7 dst 192.0.2.3 self",
                "fdb replace 92:00:00:00:00:01 dev nx7 dst 192.0.2.4 self permanent",
                "fdb replace 92:00:00:00:00:02 dev nx7 dst 192.0.2.2 self permanent",
            ]
        );
        assert_eq!(
            ip,
            vec![
                "neigh del 10.0.0.9 dev nx7",
                "neigh replace 10.0.0.2 lladdr 92:00:00:00:00:02 dev nx7 nud permanent",
            ]
        );
        // Applied, nothing is left to do.
        let now = Entries {
            fdb: want
                .iter()
                .map(|p| (p.mac.clone(), p.underlay.to_string()))
                .collect(),
            neigh: want
                .iter()
                .map(|p| (p.ip.to_string(), p.mac.clone()))
                .collect(),
        };
        assert_eq!(plan("nx7", &now, &want), (vec![], vec![]));
    }

    #[test]
    fn a_set_with_text_that_is_not_an_address_is_refused_whole() {
        for (mac, ip, underlay) in [
            ("92:00:00:00:00:01 dev lo", "10.0.0.1", "192.0.2.1"),
            (
                "92:00:00:00:00:01",
                "10.0.0.1; ip link del eth0",
                "192.0.2.1",
            ),
            ("92:00:00:00:00:01", "10.0.0.1", ""),
        ] {
            let set = pb::OverlaySet {
                generation: 1,
                peers: vec![pb::OverlayPeer {
                    vni: 7,
                    mac: mac.into(),
                    ip: ip.into(),
                    underlay: underlay.into(),
                }],
            };
            assert!(by_vni(&set).is_err(), "{mac} {ip} {underlay}");
        }
    }
}
