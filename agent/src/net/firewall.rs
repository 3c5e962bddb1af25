//! The node's firewall: the rule set the headnode compiles for this node,
//! enforced in the agent's own nftables table of the inet family (same name
//! as its anti-spoofing table, which is of the bridge family). Bridged IPv4
//! passes the forward hook (br_netfilter), so one table covers containers and
//! VMs alike, by address: anti-spoofing makes a port's source address its
//! own. Per firewalled instance an inbound chain (replies and allowed traffic
//! in, the rest dropped) and an outbound chain (blocked traffic dropped, the
//! rest on), reached through address maps.
//!
//! A set replaces the whole table in one `nft -f` transaction, is kept in the
//! agent's state directory and applied again when the agent starts. It must
//! never touch another table; rule text is built from parsed addresses and
//! numbers only.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use nereid_proto::v1 as pb;
use prost::Message;

use crate::cmd;

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("firewall set: {0}")]
    Invalid(String),
    #[error(transparent)]
    Cmd(#[from] cmd::CmdError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// An address or a subnet, parsed.
fn peer(text: &str) -> Result<String, FirewallError> {
    let bad = || FirewallError::Invalid(format!("{text:?} is not an IPv4 address or subnet"));
    match text.split_once('/') {
        Some((a, l)) => {
            let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
            let l: u8 = l.parse().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
            Ok(format!("{a}/{l}"))
        }
        None => text
            .parse::<Ipv4Addr>()
            .map(|a| a.to_string())
            .map_err(|_| bad()),
    }
}

/// The match part of a rule toward `dir` ("saddr" for inbound peers,
/// "daddr" for outbound ones).
fn matches(r: &pb::FirewallRule, dir: &str) -> Result<String, FirewallError> {
    let mut m = String::new();
    if !r.peers.is_empty() {
        let peers = r
            .peers
            .iter()
            .map(|p| peer(p))
            .collect::<Result<Vec<_>, _>>()?;
        let _ = write!(m, "ip {dir} {{ {} }} ", peers.join(", "));
    }
    let proto = pb::FirewallProtocol::try_from(r.protocol)
        .map_err(|_| FirewallError::Invalid(format!("unknown protocol {}", r.protocol)))?;
    let ports = || -> Result<String, FirewallError> {
        let mut out = Vec::new();
        for p in &r.ports {
            let ok = |n: u32| (1..=65535).contains(&n);
            if !ok(p.first) || !ok(p.last) || p.first > p.last {
                return Err(FirewallError::Invalid(format!(
                    "bad port range {}-{}",
                    p.first, p.last
                )));
            }
            out.push(if p.first == p.last {
                p.first.to_string()
            } else {
                format!("{}-{}", p.first, p.last)
            });
        }
        Ok(out.join(", "))
    };
    match proto {
        pb::FirewallProtocol::Tcp | pb::FirewallProtocol::Udp => {
            let name = if proto == pb::FirewallProtocol::Tcp {
                "tcp"
            } else {
                "udp"
            };
            if r.ports.is_empty() {
                let _ = write!(m, "meta l4proto {name}");
            } else {
                let _ = write!(m, "{name} dport {{ {} }}", ports()?);
            }
        }
        pb::FirewallProtocol::Icmp => {
            m.push_str("meta l4proto icmp");
            // One type (and code) per rule line: see `lines`.
        }
        pb::FirewallProtocol::Unspecified => {
            return Err(FirewallError::Invalid("a rule without a protocol".into()));
        }
    }
    Ok(m)
}

/// The rule lines of one compiled rule (an ICMP rule with several types
/// becomes one line per type).
fn lines(r: &pb::FirewallRule, dir: &str, verdict: &str) -> Result<Vec<String>, FirewallError> {
    let base = matches(r, dir)?;
    if r.protocol == pb::FirewallProtocol::Icmp as i32 && !r.icmp.is_empty() {
        let mut out = Vec::new();
        for i in &r.icmp {
            let t = u8::try_from(i.r#type)
                .map_err(|_| FirewallError::Invalid(format!("ICMP type {}", i.r#type)))?;
            let mut l = format!("{base} icmp type {t}");
            if let Some(c) = i.code {
                let c = u8::try_from(c)
                    .map_err(|_| FirewallError::Invalid(format!("ICMP code {c}")))?;
                let _ = write!(l, " icmp code {c}");
            }
            out.push(format!("{l} {verdict}"));
        }
        return Ok(out);
    }
    Ok(vec![format!("{base} {verdict}")])
}

/// The transaction that replaces table `inet <t>` with this set.
pub fn script(t: &str, set: &pb::FirewallSet) -> Result<String, FirewallError> {
    let mut s = format!(
        "add table inet {t}\ndelete table inet {t}\nadd table inet {t}\n\
         add chain inet {t} forward {{ type filter hook forward priority 0 ; policy accept ; }}\n\
         add map inet {t} outbound {{ type ipv4_addr : verdict ; }}\n\
         add map inet {t} inbound {{ type ipv4_addr : verdict ; }}\n\
         add rule inet {t} forward ip saddr vmap @outbound\n\
         add rule inet {t} forward ip daddr vmap @inbound\n"
    );
    for (k, inst) in set.instances.iter().enumerate() {
        let ips = inst
            .ips
            .iter()
            .map(|ip| {
                ip.parse::<Ipv4Addr>()
                    .map_err(|_| FirewallError::Invalid(format!("instance address {ip:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if ips.is_empty() {
            continue;
        }
        let (inc, out) = (format!("in{k}"), format!("out{k}"));
        let _ = writeln!(s, "add chain inet {t} {inc}\nadd chain inet {t} {out}");
        let _ = writeln!(
            s,
            "add rule inet {t} {inc} ct state established,related accept"
        );
        let _ = writeln!(s, "add rule inet {t} {inc} ct state invalid drop");
        for r in &inst.inbound {
            for l in lines(r, "saddr", if r.allow { "accept" } else { "drop" })? {
                let _ = writeln!(s, "add rule inet {t} {inc} {l}");
            }
        }
        let _ = writeln!(s, "add rule inet {t} {inc} drop");
        let _ = writeln!(
            s,
            "add rule inet {t} {out} ct state established,related return"
        );
        for r in &inst.outbound {
            for l in lines(r, "daddr", if r.allow { "return" } else { "drop" })? {
                let _ = writeln!(s, "add rule inet {t} {out} {l}");
            }
        }
        let _ = writeln!(s, "add rule inet {t} {out} return");
        for ip in ips {
            let _ = writeln!(s, "add element inet {t} inbound {{ {ip} : jump {inc} }}");
            let _ = writeln!(s, "add element inet {t} outbound {{ {ip} : jump {out} }}");
        }
    }
    Ok(s)
}

/// The firewall this agent enforces.
pub struct Firewall {
    table: String,
    path: PathBuf,
    applied: tokio::sync::Mutex<Option<u64>>,
}

const T: Duration = Duration::from_secs(20);

impl Firewall {
    pub fn new(table: &str, state_dir: &std::path::Path) -> Firewall {
        Firewall {
            table: table.to_string(),
            path: state_dir.join("firewall.pb"),
            applied: tokio::sync::Mutex::new(None),
        }
    }

    /// Applies the set unless its generation is the one in force; keeps it
    /// for the next start.
    pub async fn apply(&self, set: &pb::FirewallSet) -> Result<u64, FirewallError> {
        let mut applied = self.applied.lock().await;
        if *applied == Some(set.generation) {
            return Ok(set.generation);
        }
        let text = script(&self.table, set)?;
        cmd::run_with_input("nft", &["-f", "-"], Some(&text), T).await?;
        let tmp = self.path.with_extension("tmp");
        let io = |source| FirewallError::Io {
            path: self.path.display().to_string(),
            source,
        };
        tokio::fs::write(&tmp, set.encode_to_vec())
            .await
            .map_err(io)?;
        tokio::fs::rename(&tmp, &self.path).await.map_err(io)?;
        *applied = Some(set.generation);
        tracing::info!(
            generation = set.generation,
            instances = set.instances.len(),
            "firewall applied"
        );
        Ok(set.generation)
    }

    /// At start: the kept set again (an empty one if there is none, so the
    /// table exists and holds only what it should).
    pub async fn restore(&self) -> Result<(), FirewallError> {
        let set = match tokio::fs::read(&self.path).await {
            Ok(bytes) => pb::FirewallSet::decode(bytes.as_slice())
                .map_err(|e| FirewallError::Invalid(format!("{}: {e}", self.path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => pb::FirewallSet::default(),
            Err(source) => {
                return Err(FirewallError::Io {
                    path: self.path.display().to_string(),
                    source,
                });
            }
        };
        self.apply(&set).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(allow: bool, peers: &[&str], proto: pb::FirewallProtocol) -> pb::FirewallRule {
        pb::FirewallRule {
            allow,
            peers: peers.iter().map(|p| p.to_string()).collect(),
            protocol: proto as i32,
            ports: vec![],
            icmp: vec![],
        }
    }

    #[test]
    fn an_instance_gets_an_inbound_chain_that_drops_by_default_and_an_outbound_one_that_returns() {
        let mut web = rule(true, &[], pb::FirewallProtocol::Tcp);
        web.ports = vec![
            pb::PortRange {
                first: 80,
                last: 80,
            },
            pb::PortRange {
                first: 8000,
                last: 8080,
            },
        ];
        let mut ping = rule(true, &["10.0.0.0/24"], pb::FirewallProtocol::Icmp);
        ping.icmp = vec![
            pb::IcmpMatch {
                r#type: 8,
                code: Some(0),
            },
            pb::IcmpMatch {
                r#type: 0,
                code: None,
            },
        ];
        let set = pb::FirewallSet {
            generation: 7,
            instances: vec![pb::InstanceFirewall {
                instance_id: "i".into(),
                ips: vec!["10.0.0.5".into()],
                inbound: vec![web, ping],
                outbound: vec![rule(false, &["10.9.9.9"], pb::FirewallProtocol::Udp)],
            }],
        };
        let s = script("t", &set).unwrap();
        for line in [
            "add rule inet t forward ip saddr vmap @outbound",
            "add rule inet t forward ip daddr vmap @inbound",
            "add rule inet t in0 ct state established,related accept",
            "add rule inet t in0 tcp dport { 80, 8000-8080 } accept",
            "add rule inet t in0 ip saddr { 10.0.0.0/24 } meta l4proto icmp icmp type 8 icmp code 0 accept",
            "add rule inet t in0 ip saddr { 10.0.0.0/24 } meta l4proto icmp icmp type 0 accept",
            "add rule inet t in0 drop",
            "add rule inet t out0 ip daddr { 10.9.9.9 } meta l4proto udp drop",
            "add rule inet t out0 return",
            "add element inet t inbound { 10.0.0.5 : jump in0 }",
            "add element inet t outbound { 10.0.0.5 : jump out0 }",
        ] {
            assert!(s.lines().any(|l| l == line), "missing {line:?} in\n{s}");
        }
        // The table is replaced, never added to.
        assert!(s.starts_with("add table inet t\ndelete table inet t\nadd table inet t\n"));
    }

    #[test]
    fn text_that_is_not_an_address_or_a_port_is_refused() {
        for bad in [
            "10.0.0.1; flush ruleset",
            "10.0.0.0/33",
            "x",
            "10.0.0.1/8 }",
        ] {
            let set = pb::FirewallSet {
                generation: 1,
                instances: vec![pb::InstanceFirewall {
                    instance_id: "i".into(),
                    ips: vec!["10.0.0.5".into()],
                    inbound: vec![rule(true, &[bad], pb::FirewallProtocol::Tcp)],
                    outbound: vec![],
                }],
            };
            assert!(script("t", &set).is_err(), "{bad:?}");
        }
        let mut r = rule(true, &[], pb::FirewallProtocol::Tcp);
        r.ports = vec![pb::PortRange { first: 0, last: 80 }];
        let set = pb::FirewallSet {
            generation: 1,
            instances: vec![pb::InstanceFirewall {
                instance_id: "i".into(),
                ips: vec!["10.0.0.5".into()],
                inbound: vec![r],
                outbound: vec![],
            }],
        };
        assert!(script("t", &set).is_err());
    }
}
