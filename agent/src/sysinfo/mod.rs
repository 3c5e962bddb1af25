//! What this node is: read from the host (/proc, /sys, /etc, getifaddrs, the
//! zfs tools) and from capability probes. Read-only: it must never change the
//! host.

mod parse;
mod probe;

use std::collections::BTreeMap;
use std::path::Path;

use nereid_proto::v1 as pb;

use crate::storage::zpool;

/// Values the operator may override (several test nodes on one machine).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub machine_id: Option<String>,
    pub hostname: Option<String>,
    /// Memory to offer instead of MemTotal.
    pub memory_mb: Option<u64>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn read_trim(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub async fn collect(o: &Overrides) -> pb::Sysinfo {
    let (cpu_model, cpu_count) = parse::cpuinfo(&read("/proc/cpuinfo"));
    let hostname = o.hostname.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let machine_id = o
        .machine_id
        .clone()
        .unwrap_or_else(|| read_trim("/etc/machine-id"));
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let capabilities = probe::capabilities().await;
    pb::Sysinfo {
        hostname,
        machine_id,
        cpu_model,
        cpu_count,
        memory_bytes: match o.memory_mb {
            Some(mb) => mb << 20,
            None => parse::meminfo(&read("/proc/meminfo"), "MemTotal").unwrap_or(0),
        },
        disks: disks(),
        zpools: zpools().await,
        nics: nics(),
        capabilities: Some(capabilities),
        kernel,
        os: parse::os_release(&read("/etc/os-release")),
    }
}

/// The host's capabilities (probed once per agent process).
pub async fn capabilities() -> pb::Capabilities {
    probe::capabilities().await
}

pub async fn usage() -> pb::Usage {
    let meminfo = read("/proc/meminfo");
    pb::Usage {
        memory_total_bytes: parse::meminfo(&meminfo, "MemTotal").unwrap_or(0),
        memory_available_bytes: parse::meminfo(&meminfo, "MemAvailable").unwrap_or(0),
        load1: parse::loadavg(&read("/proc/loadavg")),
        uptime_seconds: parse::uptime(&read("/proc/uptime")),
        zpools: zpools().await,
    }
}

async fn zpools() -> Vec<pb::ZpoolInfo> {
    match zpool::list().await {
        Ok(pools) => pools
            .into_iter()
            .map(|p| pb::ZpoolInfo {
                size_bytes: p.used_bytes + p.available_bytes,
                allocated_bytes: p.used_bytes,
                free_bytes: p.available_bytes,
                health: p.health,
                name: p.name,
            })
            .collect(),
        Err(e) => {
            tracing::debug!("no zpools: {e}");
            Vec::new()
        }
    }
}

/// Block devices backed by a device (not loop, ram or zram).
fn disks() -> Vec<pb::DiskInfo> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut disks: Vec<_> = entries
        .flatten()
        .filter(|e| e.path().join("device").exists())
        .map(|e| {
            let p = e.path();
            pb::DiskInfo {
                name: e.file_name().to_string_lossy().into_owned(),
                size_bytes: read_trim(p.join("size")).parse::<u64>().unwrap_or(0) * 512,
                model: read_trim(p.join("device/model")),
                rotational: read_trim(p.join("queue/rotational")) == "1",
            }
        })
        .collect();
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks
}

/// The interfaces of the agent's network namespace, as the kernel lists
/// them (getifaddrs: names, link and IP addresses, flags). `/sys/class/net`
/// shows the namespace sysfs was mounted in, which need not be the agent's
/// (`nsenter --net`), so its attributes (MTU, kind) are read only for an
/// interface whose ifindex there is the kernel's; otherwise MTU 0, kind "other".
fn nics() -> Vec<pb::NicInfo> {
    let mut found: BTreeMap<String, pb::NicInfo> = BTreeMap::new();
    if let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() {
        for ifa in ifaddrs {
            let nic = found
                .entry(ifa.interface_name.clone())
                .or_insert_with(|| pb::NicInfo {
                    name: ifa.interface_name.clone(),
                    kind: "other".into(),
                    ..Default::default()
                });
            nic.up |= ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
            let Some(addr) = ifa.address else { continue };
            if let Some(mac) = addr.as_link_addr().and_then(|l| l.addr()) {
                nic.mac = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                continue;
            }
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                Some(std::net::IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6()
                    .map(|v6| std::net::IpAddr::V6(v6.ip()))
            };
            let Some(ip) = ip else { continue };
            let prefix = ifa.netmask.and_then(|m| {
                m.as_sockaddr_in()
                    .map(|n| u32::from(n.ip()).count_ones())
                    .or_else(|| m.as_sockaddr_in6().map(|n| u128::from(n.ip()).count_ones()))
            });
            nic.addresses.push(match prefix {
                Some(p) => format!("{ip}/{p}"),
                None => ip.to_string(),
            });
        }
    }
    for nic in found.values_mut() {
        let p = std::path::Path::new("/sys/class/net").join(&nic.name);
        let index = nix::net::if_::if_nametoindex(nic.name.as_str()).ok();
        if index.is_none() || read_trim(p.join("ifindex")).parse::<u32>().ok() != index {
            continue;
        }
        nic.kind = if nic.name == "lo" {
            "loopback".to_string()
        } else if let Some(t) = parse::devtype(&read_trim(p.join("uevent"))) {
            t
        } else if p.join("device").exists() {
            "physical".to_string()
        } else {
            "virtual".to_string()
        };
        nic.mtu = read_trim(p.join("mtu")).parse().unwrap_or(0);
        if nic.mac.is_empty() {
            nic.mac = read_trim(p.join("address"));
        }
    }
    found.into_values().collect()
}

/// True if a network interface of this name exists on the host.
pub fn interface_exists(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('/')
        && name != "."
        && name != ".."
        && nix::net::if_::if_nametoindex(name).is_ok()
}
