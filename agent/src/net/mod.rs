//! Instance networking: one bridge per layer-2 segment (`nb<vid>x<uplink
//! index>`, shared by every network of that nic tag and VLAN) attached to the
//! interface the server's nic tag maps to, or for a VLAN to that interface's
//! 802.1Q sub-interface (`nw<vid>x<index>`), or for an overlay (fabric)
//! network the VNI's bridge with its VXLAN device (`overlay`); per NIC of a container a veth pair whose host end (`nv<12 hex
//! of the instance id><index>`) is a port of that bridge and whose other end
//! is `eth<index>` in the instance's network namespace (`nrd-<uuid>`); per NIC
//! of a VM a tap device (`nt<12 hex><index>`) on the bridge, opened by QEMU.
//!
//! Every port is filtered against spoofing (`antispoof`) from before it
//! exists until after it is gone.
//!
//! Every operation is idempotent (a retry after a crash converges). The
//! kernel is driven through iproute2's `ip`, which speaks netlink; see
//! docs/decisions.md. It must never touch an interface it did not name
//! (`nb*`, `nv*`, `nt*`, `nw*`, `nx*`, `nf*`) other than enslaving the nic tag's uplink to a
//! bridge.

pub mod antispoof;
pub mod firewall;
pub mod nat;
pub mod overlay;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cmd;
use crate::spec::Nic;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("nic tag {0:?} is not mapped to an interface on this node (see `nereid server setup`)")]
    UnknownNicTag(String),
    #[error("network {network}: VLAN {vlan} is outside 1-4094")]
    Vlan { network: String, vlan: u16 },
    #[error("the uplink {0:?} of the nic tag does not exist on this node")]
    NoUplink(String),
    #[error("{0:?} is not a MAC address (six hex pairs separated by ':')")]
    BadMac(String),
    #[error("{0:?} is not an interface or table name this agent makes")]
    BadPort(String),
    #[error("overlay: {0}")]
    Overlay(String),
    #[error(transparent)]
    Cmd(#[from] cmd::CmdError),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The last 12 hex digits of a UUID (the random part of a UUIDv7).
fn tail12(uuid: &str) -> String {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    hex[hex.len().saturating_sub(12)..].to_string()
}

/// The bridge of one layer-2 segment: the uplink with index `uplink_index`,
/// untagged (`vid` 0) or on VLAN `vid`. Every network of that segment shares
/// it (as networks on one nic tag share a wire): `nb<vid>x<index in hex>`.
pub fn bridge_name(uplink_index: u32, vid: u16) -> String {
    format!("nb{vid}x{uplink_index:x}")
}

/// The host end of an instance's NIC `idx` (15 characters at most).
pub fn host_veth_name(instance_id: &str, idx: usize) -> String {
    format!("nv{}{}", tail12(instance_id), idx % 10)
}

/// The most NICs an instance has (names end in one digit).
pub const MAX_NICS: usize = 8;

/// The host end of a VM's NIC `idx`: a tap device.
pub fn tap_name(instance_id: &str, idx: usize) -> String {
    format!("nt{}{}", tail12(instance_id), idx % 10)
}

/// The network namespace of a container instance.
pub fn netns_name(instance_id: &str) -> String {
    format!("nrd-{instance_id}")
}

pub fn netns_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new("/run/netns").join(name)
}

/// Whether a link of this name exists in the agent's network namespace
/// (asked of the kernel, not of /sys, which shows the namespace it was mounted in).
pub fn link_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// The bridge (or other master) a link is a port of.
async fn master_of(name: &str) -> Option<String> {
    let out = cmd::run("ip", &["-o", "link", "show", "dev", name], T)
        .await
        .ok()?;
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "master" {
            return words.next().map(str::to_string);
        }
    }
    None
}

const T: Duration = Duration::from_secs(10);

async fn ip(args: &[&str]) -> Result<(), NetError> {
    cmd::run("ip", args, T).await?;
    Ok(())
}

/// Serialises bridge creation on this node (two instances on one new
/// network), and remembers the bridges found complete in this process.
static BRIDGES: tokio::sync::Mutex<Option<std::collections::HashSet<String>>> =
    tokio::sync::Mutex::const_new(None);

/// Makes the bridge of the NIC's segment exist, up, with the nic tag's
/// uplink (or its VLAN sub-interface) as a port.
pub async fn ensure_bridge(
    nic: &Nic,
    nic_tags: &BTreeMap<String, String>,
) -> Result<String, NetError> {
    if nic.vlan_id > 4094 {
        return Err(NetError::Vlan {
            network: nic.network_id.clone(),
            vlan: nic.vlan_id,
        });
    }
    let uplink = nic_tags
        .get(&nic.nic_tag)
        .ok_or_else(|| NetError::UnknownNicTag(nic.nic_tag.clone()))?;
    let index = nix::net::if_::if_nametoindex(uplink.as_str())
        .map_err(|_| NetError::NoUplink(uplink.clone()))?;
    if let Some(vni) = nic.vni {
        return overlay::ensure_segment(nic, vni, uplink).await;
    }
    let br = bridge_name(index, nic.vlan_id);
    let mut known = BRIDGES.lock().await;
    let known = known.get_or_insert_with(Default::default);
    if known.contains(&br) && link_exists(&br) {
        return Ok(br);
    }
    let mtu = nic.mtu.to_string();
    if !link_exists(&br) {
        ip(&["link", "add", &br, "mtu", &mtu, "type", "bridge"]).await?;
    }
    // An untagged network's bridge takes the uplink itself; a VLAN's takes
    // the uplink's 802.1Q sub-interface for that VLAN.
    let port = if nic.vlan_id == 0 {
        uplink.clone()
    } else {
        let sub = vlan_link_name(index, nic.vlan_id);
        let lines = vlan_lines(uplink, nic.vlan_id, &sub, nic.mtu, link_exists(&sub));
        ip_batch(None, &lines).await?;
        sub
    };
    if master_of(&port).await.as_deref() != Some(br.as_str()) {
        ip(&["link", "set", &port, "master", &br, "up"]).await?;
    }
    ip(&["link", "set", &br, "up"]).await?;
    known.insert(br.clone());
    Ok(br)
}

/// The 802.1Q sub-interface of the uplink with index `uplink_index` for VLAN
/// `vid`: `nw<vid>x<index in hex>`, 15 characters at most.
pub fn vlan_link_name(uplink_index: u32, vid: u16) -> String {
    format!("nw{vid}x{uplink_index:x}")
}

/// The `ip -batch` lines that make VLAN `vid`'s sub-interface `sub` of
/// `uplink` exist and up (it becomes a port of the network's bridge after).
fn vlan_lines(uplink: &str, vid: u16, sub: &str, mtu: u32, exists: bool) -> Vec<String> {
    let mut lines = Vec::new();
    if !exists {
        lines.push(format!(
            "link add link {uplink} name {sub} mtu {mtu} type vlan id {vid}"
        ));
    }
    lines.push(format!("link set {uplink} up"));
    lines.push(format!("link set {sub} up"));
    lines
}

/// Runs `ip [-n netns] -batch -` with these command lines.
async fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), NetError> {
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    let input = lines.join("\n") + "\n";
    cmd::run_with_input("ip", &args, Some(&input), T).await?;
    Ok(())
}

/// Plumbs every NIC of an instance into its namespace `netns` (and sets its
/// loopback up): bridge, veth, MAC, address, default route via the primary
/// NIC's gateway; and the node's NAT of a network whose gateway it provides.
/// Idempotent: host ends left by an interrupted run are replaced.
pub async fn plumb(
    instance_id: &str,
    netns: &str,
    nics: &[Nic],
    nic_tags: &BTreeMap<String, String>,
) -> Result<(), NetError> {
    plumb_into(instance_id, netns, nics, nic_tags).await?;
    nat::ensure(nics, nic_tags).await
}

/// `plumb` without the NATs: two `ip -batch` runs, one on each side.
async fn plumb_into(
    instance_id: &str,
    netns: &str,
    nics: &[Nic],
    nic_tags: &BTreeMap<String, String>,
) -> Result<(), NetError> {
    protect_ports(nics, |idx| host_veth_name(instance_id, idx)).await?;
    let mut host = Vec::new();
    let mut guest = vec!["link set lo up".to_string()];
    for (idx, nic) in nics.iter().enumerate() {
        let br = ensure_bridge(nic, nic_tags).await?;
        let h = host_veth_name(instance_id, idx);
        let g = format!("eth{idx}");
        let mtu = nic.mtu;
        if link_exists(&h) {
            host.push(format!("link del {h}"));
        }
        host.push(format!(
            "link add {h} mtu {mtu} type veth peer name {g} netns {netns} mtu {mtu} address {}",
            nic.mac
        ));
        host.push(format!("link set {h} master {br} up"));
        guest.push(format!(
            "addr replace {}/{} dev {g}",
            nic.ip, nic.prefix_len
        ));
        guest.push(format!("link set {g} up"));
        if idx == 0
            && let Some(gw) = nic.gateway
        {
            guest.push(format!("route replace default via {gw} dev {g}"));
        }
    }
    if !host.is_empty() {
        ip_batch(None, &host).await?;
    }
    ip_batch(Some(netns), &guest).await
}

/// Makes a tap device per NIC of a VM, each a port of its network's bridge,
/// in one `ip -batch` run. Idempotent: existing taps are kept (QEMU may hold
/// them open) and only attached and brought up again.
pub async fn plumb_taps(
    instance_id: &str,
    nics: &[Nic],
    nic_tags: &BTreeMap<String, String>,
) -> Result<(), NetError> {
    protect_ports(nics, |idx| tap_name(instance_id, idx)).await?;
    let mut lines = Vec::new();
    for (idx, nic) in nics.iter().enumerate() {
        let br = ensure_bridge(nic, nic_tags).await?;
        lines.extend(tap_lines(
            &tap_name(instance_id, idx),
            &br,
            nic.mtu,
            link_exists,
        ));
    }
    if !lines.is_empty() {
        ip_batch(None, &lines).await?;
    }
    nat::ensure(nics, nic_tags).await
}

/// Puts the anti-spoofing rules of every NIC's port (named by `port`) in
/// place, before the port exists.
async fn protect_ports(nics: &[Nic], port: impl Fn(usize) -> String) -> Result<(), NetError> {
    antispoof::protect(&ports_of(nics, port)?).await
}

fn ports_of(
    nics: &[Nic],
    port: impl Fn(usize) -> String,
) -> Result<Vec<antispoof::Port>, NetError> {
    nics.iter()
        .enumerate()
        .map(|(idx, nic)| {
            Ok(antispoof::Port {
                ifname: port(idx),
                mac: nic.mac.parse()?,
                ips: vec![nic.ip],
                any_ip: nic.allow_ip_spoofing,
                any_mac: nic.allow_mac_spoofing,
                dhcp_server: nic.allow_dhcp_spoofing,
            })
        })
        .collect()
}

/// Re-asserts the anti-spoofing rules of these instances' ports in one
/// transaction (at agent start: rules removed by hand, or made by an older
/// agent, come back). An instance with a bad MAC is skipped and named.
pub async fn protect_instances(specs: &[&crate::spec::InstanceSpec]) -> Result<(), NetError> {
    let mut ports = Vec::new();
    for spec in specs {
        let id = spec.id.as_str();
        let found = match spec.brand {
            nereid_api::Brand::Kvm => ports_of(&spec.nics, |idx| tap_name(id, idx)),
            nereid_api::Brand::Container => ports_of(&spec.nics, |idx| host_veth_name(id, idx)),
        };
        match found {
            Ok(p) => ports.extend(p),
            Err(e) => tracing::warn!(instance = %id, "no anti-spoofing rules: {e}"),
        }
    }
    antispoof::protect(&ports).await
}

/// Forgets the anti-spoofing rules of `nics` ports (a failure is logged:
/// rules for a port that no longer exists match nothing).
async fn release_ports(nics: usize, port: impl Fn(usize) -> String) {
    let names: Vec<String> = (0..nics).map(port).collect();
    if let Err(e) = antispoof::release(&names).await {
        tracing::warn!("removing the anti-spoofing rules of {names:?}: {e}");
    }
}

/// The `ip -batch` lines that make tap `tap` a port of `br`.
fn tap_lines(tap: &str, br: &str, mtu: u32, exists: impl Fn(&str) -> bool) -> Vec<String> {
    let mut lines = Vec::new();
    if !exists(tap) {
        lines.push(format!("tuntap add dev {tap} mode tap"));
    }
    lines.push(format!("link set {tap} mtu {mtu} master {br} up"));
    lines
}

/// Removes a VM's taps.
pub async fn unplumb_taps(instance_id: &str, nics: usize) {
    for idx in 0..nics {
        let tap = tap_name(instance_id, idx);
        if link_exists(&tap) {
            let _ = ip(&["link", "del", &tap]).await;
        }
    }
    release_ports(nics, |idx| tap_name(instance_id, idx)).await;
}

/// Removes the host ends of an instance's NICs (deleting the namespace
/// removes them too; this covers a namespace that is already gone).
pub async fn unplumb(instance_id: &str, nics: usize) {
    for idx in 0..nics {
        let host = host_veth_name(instance_id, idx);
        if link_exists(&host) {
            let _ = ip(&["link", "del", &host]).await;
        }
    }
    release_ports(nics, |idx| host_veth_name(instance_id, idx)).await;
}

/// The instance's `/etc/resolv.conf`, from the primary NIC's resolvers; None
/// when there are none. The agent keeps it in the bundle and bind-mounts it
/// (read-only) over the image's file, which is never written.
pub fn resolv_conf(nics: &[Nic]) -> Option<String> {
    let primary = nics.first()?;
    if primary.resolvers.is_empty() {
        return None;
    }
    Some(
        primary
            .resolvers
            .iter()
            .map(|r| format!("nameserver {r}\n"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_the_kernel_limit_and_differ_per_nic() {
        let id = "0192f0c4-5b7e-7c3a-9d4e-1a2b3c4d5e6f";
        assert_eq!(bridge_name(7, 0), "nb0x7");
        assert_eq!(bridge_name(7, 100), "nb100x7");
        assert!(bridge_name(u32::MAX, 4094).len() <= 15);
        assert_ne!(bridge_name(7, 0), bridge_name(8, 0));
        assert_eq!(host_veth_name(id, 0), "nv1a2b3c4d5e6f0");
        assert_ne!(host_veth_name(id, 0), host_veth_name(id, 1));
        assert!(host_veth_name(id, 9).len() <= 15);
        assert_eq!(tap_name(id, 1), "nt1a2b3c4d5e6f1");
        assert_ne!(tap_name(id, 0), host_veth_name(id, 0));
    }

    #[test]
    fn a_vlan_network_gets_one_8021q_sub_interface_per_uplink_and_vlan() {
        assert_eq!(vlan_link_name(7, 100), "nw100x7");
        assert_eq!(vlan_link_name(u32::MAX, 4094), "nw4094xffffffff");
        assert!(vlan_link_name(u32::MAX, 4094).len() <= 15);
        assert_ne!(vlan_link_name(7, 100), vlan_link_name(8, 100));
        assert_ne!(vlan_link_name(7, 100), vlan_link_name(7, 101));
        assert_eq!(
            vlan_lines("eth1", 100, "nw100x7", 1500, false),
            vec![
                "link add link eth1 name nw100x7 mtu 1500 type vlan id 100",
                "link set eth1 up",
                "link set nw100x7 up"
            ]
        );
        assert_eq!(
            vlan_lines("eth1", 100, "nw100x7", 1500, true),
            vec!["link set eth1 up", "link set nw100x7 up"]
        );
    }

    #[test]
    fn a_missing_tap_is_created_and_every_tap_attached_and_up() {
        assert_eq!(
            tap_lines("nt1", "nb1", 1500, |_| false),
            vec![
                "tuntap add dev nt1 mode tap",
                "link set nt1 mtu 1500 master nb1 up"
            ]
        );
        assert_eq!(
            tap_lines("nt1", "nb1", 9000, |_| true),
            vec!["link set nt1 mtu 9000 master nb1 up"]
        );
    }

    #[test]
    fn resolv_conf_lists_the_primary_nics_resolvers() {
        let nic = |resolvers: Vec<&str>| Nic {
            network_id: "n".into(),
            nic_tag: "admin".into(),
            vlan_id: 0,
            vni: None,
            nat: None,
            allow_ip_spoofing: false,
            allow_mac_spoofing: false,
            allow_dhcp_spoofing: false,
            ip: "10.0.0.5".parse().unwrap(),
            prefix_len: 24,
            gateway: None,
            resolvers: resolvers.into_iter().map(|r| r.parse().unwrap()).collect(),
            mtu: 1500,
            mac: "92:00:00:00:00:01".into(),
        };
        assert_eq!(
            resolv_conf(&[nic(vec!["10.0.0.53", "10.0.0.54"]), nic(vec!["9.9.9.9"])]).as_deref(),
            Some("nameserver 10.0.0.53\nnameserver 10.0.0.54\n")
        );
        assert_eq!(resolv_conf(&[nic(vec![])]), None);
        assert_eq!(resolv_conf(&[]), None);
    }
}
