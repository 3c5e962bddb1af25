//! Anti-spoofing on every instance port: the agent's own nftables table (bridge
//! family, `--nft-table`, default `nereid`) lets a frame that enters a bridge
//! from an instance's veth or tap through only if it carries the NIC's MAC, is
//! IPv4 or ARP, claims only the NIC's address in ARP and IPv4 (ARP probes from
//! 0.0.0.0 aside), and is not a DHCP server's reply.
//!
//! Layout: a `prerouting` base chain with one rule, `iifname vmap @ports`, and
//! per protected port a chain `port_<ifname>` that the `ports` map names. Every
//! change is one `nft -f` transaction that also re-asserts the skeleton, so it
//! is atomic and idempotent (releasing a port that has no chain succeeds).
//! A port's rules are in place before the port exists, so there is no moment
//! when an instance's frames pass unfiltered.
//!
//! Rule text is built only from typed values (a parsed MAC, IPv4 addresses,
//! interface names this agent made); it must never touch another table.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::time::Duration;

use crate::cmd;
use crate::net::NetError;

static TABLE: OnceLock<String> = OnceLock::new();

/// The table this agent owns (set once at start; `nereid` until then).
fn table() -> &'static str {
    TABLE.get().map(String::as_str).unwrap_or("nereid")
}

/// A MAC address in nft's notation, parsed so that no other text gets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac([u8; 6]);

impl std::str::FromStr for Mac {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Mac, NetError> {
        let bad = || NetError::BadMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// What may leave one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The host end: `nv...` (veth) or `nt...` (tap).
    pub ifname: String,
    pub mac: Mac,
    pub ips: Vec<Ipv4Addr>,
    /// Any IPv4 source and ARP sender address (Triton's `allow_ip_spoofing`);
    /// the MAC and protocol rules still hold.
    pub any_ip: bool,
    /// Frames from any MAC (`allow_mac_spoofing`).
    pub any_mac: bool,
    /// DHCP server replies (`allow_dhcp_spoofing`).
    pub dhcp_server: bool,
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The lines that make sure the table, its map and base chain exist.
fn skeleton(t: &str) -> String {
    format!(
        "add table bridge {t}\n\
         add map bridge {t} ports {{ type ifname : verdict ; }}\n\
         add chain bridge {t} prerouting {{ type filter hook prerouting priority -300 ; policy accept ; }}\n\
         flush chain bridge {t} prerouting\n\
         add rule bridge {t} prerouting iifname vmap @ports\n"
    )
}

/// The transaction that protects `ports` (replacing what they had).
pub fn protect_script(t: &str, ports: &[Port]) -> Result<String, NetError> {
    let mut s = skeleton(t);
    for p in ports {
        if !valid_ifname(&p.ifname) {
            return Err(NetError::BadPort(p.ifname.clone()));
        }
        let (c, m) = (format!("port_{}", p.ifname), p.mac);
        let ips: Vec<String> = p.ips.iter().map(Ipv4Addr::to_string).collect();
        let (arp_rule, ip_rule) = if p.any_ip {
            (None, None)
        } else if ips.is_empty() {
            (
                Some("0.0.0.0".to_string()),
                Some("ether type ip drop".to_string()),
            )
        } else {
            (
                Some(format!("{{ 0.0.0.0, {} }}", ips.join(", "))),
                Some(format!("ip saddr != {{ {} }} drop", ips.join(", "))),
            )
        };
        let arp_rule = arp_rule
            .map(|a| format!("add rule bridge {t} {c} arp saddr ip != {a} drop\n"))
            .unwrap_or_default();
        let ip_rule = ip_rule
            .map(|r| format!("add rule bridge {t} {c} {r}\n"))
            .unwrap_or_default();
        let (mac_rules, dhcp_rule) = (
            if p.any_mac {
                String::new()
            } else {
                format!(
                    "add rule bridge {t} {c} ether saddr != {m} drop\n\
                     add rule bridge {t} {c} arp saddr ether != {m} drop\n"
                )
            },
            if p.dhcp_server {
                String::new()
            } else {
                format!("add rule bridge {t} {c} udp sport 67 drop\n")
            },
        );
        let _ = write!(
            s,
            "add chain bridge {t} {c}\n\
             flush chain bridge {t} {c}\n\
             {mac_rules}\
             add rule bridge {t} {c} ether type != {{ ip, arp }} drop\n\
             {arp_rule}\
             {ip_rule}\
             {dhcp_rule}\
             add element bridge {t} ports {{ \"{}\" : jump {c} }}\n",
            p.ifname
        );
    }
    Ok(s)
}

/// The transaction that forgets `ifnames` (whether they were protected or not).
pub fn release_script(t: &str, ifnames: &[String]) -> Result<String, NetError> {
    let mut s = skeleton(t);
    for i in ifnames {
        if !valid_ifname(i) {
            return Err(NetError::BadPort(i.clone()));
        }
        let c = format!("port_{i}");
        let _ = write!(
            s,
            "add chain bridge {t} {c}\n\
             add element bridge {t} ports {{ \"{i}\" : jump {c} }}\n\
             delete element bridge {t} ports {{ \"{i}\" }}\n\
             flush chain bridge {t} {c}\n\
             delete chain bridge {t} {c}\n"
        );
    }
    Ok(s)
}

const T: Duration = Duration::from_secs(10);

async fn apply(script: &str) -> Result<(), NetError> {
    cmd::run_with_input("nft", &["-f", "-"], Some(script), T).await?;
    Ok(())
}

/// Names the table (once, at start) and makes its skeleton exist; a node
/// without a working nft refuses to run instances unprotected.
pub async fn init(table_name: &str) -> Result<(), NetError> {
    if !valid_ifname(table_name) {
        return Err(NetError::BadPort(table_name.to_string()));
    }
    let _ = TABLE.set(table_name.to_string());
    apply(&skeleton(table())).await
}

pub async fn protect(ports: &[Port]) -> Result<(), NetError> {
    if ports.is_empty() {
        return Ok(());
    }
    apply(&protect_script(table(), ports)?).await
}

pub async fn release(ifnames: &[String]) -> Result<(), NetError> {
    if ifnames.is_empty() {
        return Ok(());
    }
    apply(&release_script(table(), ifnames)?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly_and_print_in_nft_notation() {
        let m: Mac = "92:00:0A:ff:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "92:00:0a:ff:00:01");
        for bad in [
            "",
            "92:00:0a:ff:00",
            "92:00:0a:ff:00:01:02",
            "92:00:0a:ff:00:1",
            "92:00:0a:ff:00:zz",
            "92:00:0a:ff:00:01 drop",
            "92:00:0a:ff:00:+1",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_port_may_send_only_its_mac_and_addresses_and_no_dhcp_replies() {
        let s = protect_script(
            "nereid",
            &[Port {
                ifname: "nv1a2b3c4d5e6f0".into(),
                mac: "92:00:00:00:00:01".parse().unwrap(),
                ips: vec!["10.0.0.5".parse().unwrap()],
                any_ip: false,
                any_mac: false,
                dhcp_server: false,
            }],
        )
        .unwrap();
        let c = "add rule bridge nereid port_nv1a2b3c4d5e6f0";
        for line in [
            "add rule bridge nereid prerouting iifname vmap @ports".to_string(),
            format!("{c} ether saddr != 92:00:00:00:00:01 drop"),
            format!("{c} ether type != {{ ip, arp }} drop"),
            format!("{c} arp saddr ether != 92:00:00:00:00:01 drop"),
            format!("{c} arp saddr ip != {{ 0.0.0.0, 10.0.0.5 }} drop"),
            format!("{c} ip saddr != {{ 10.0.0.5 }} drop"),
            format!("{c} udp sport 67 drop"),
            "add element bridge nereid ports { \"nv1a2b3c4d5e6f0\" : jump port_nv1a2b3c4d5e6f0 }"
                .to_string(),
        ] {
            assert!(s.lines().any(|l| l == line), "missing {line:?} in\n{s}");
        }
        // The port's chain is emptied before its rules are added (a retry
        // replaces them), and the base rule is never doubled.
        let flush = s
            .find("flush chain bridge nereid port_nv1a2b3c4d5e6f0")
            .unwrap();
        assert!(flush < s.find(c).unwrap());
        assert_eq!(s.matches("iifname vmap @ports").count(), 1);
    }

    #[test]
    fn a_port_allowed_other_macs_or_dhcp_replies_keeps_its_address_rules() {
        let port = |any_mac, dhcp_server| Port {
            ifname: "nv1a2b3c4d5e6f0".into(),
            mac: "92:00:00:00:00:01".parse().unwrap(),
            ips: vec!["10.0.0.5".parse().unwrap()],
            any_ip: false,
            any_mac,
            dhcp_server,
        };
        let s = protect_script("nereid", &[port(true, false)]).unwrap();
        assert!(
            !s.contains("ether saddr") && !s.contains("arp saddr ether"),
            "{s}"
        );
        assert!(
            s.contains("ip saddr != { 10.0.0.5 } drop") && s.contains("udp sport 67 drop"),
            "{s}"
        );
        let s = protect_script("nereid", &[port(false, true)]).unwrap();
        assert!(!s.contains("udp sport 67"), "{s}");
        assert!(s.contains("ether saddr != 92:00:00:00:00:01 drop"), "{s}");
    }

    #[test]
    fn a_port_allowed_any_address_keeps_its_mac_and_protocol_rules() {
        let s = protect_script(
            "nereid",
            &[Port {
                ifname: "nv1a2b3c4d5e6f0".into(),
                mac: "92:00:00:00:00:01".parse().unwrap(),
                ips: vec!["10.0.0.1".parse().unwrap()],
                any_ip: true,
                any_mac: false,
                dhcp_server: false,
            }],
        )
        .unwrap();
        assert!(s.contains("ether saddr != 92:00:00:00:00:01 drop"), "{s}");
        assert!(s.contains("ether type != { ip, arp } drop"), "{s}");
        assert!(s.contains("udp sport 67 drop"), "{s}");
        assert!(
            !s.contains("ip saddr") && !s.contains("arp saddr ip"),
            "{s}"
        );
    }

    #[test]
    fn names_that_are_not_ours_are_refused() {
        let port = |ifname: &str| Port {
            ifname: ifname.into(),
            mac: "92:00:00:00:00:01".parse().unwrap(),
            ips: vec![],
            any_ip: false,
            any_mac: false,
            dhcp_server: false,
        };
        for bad in ["", "a b", "x;flush ruleset", "nv\"x", "abcdefghijklmnop"] {
            assert!(protect_script("nereid", &[port(bad)]).is_err(), "{bad:?}");
            assert!(
                release_script("nereid", &[bad.to_string()]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn releasing_is_one_transaction_that_works_whether_or_not_the_port_was_protected() {
        let s = release_script("t1", &["nt1a2b3c4d5e6f1".into()]).unwrap();
        let add = s.find("add element bridge t1 ports").unwrap();
        let del = s.find("delete element bridge t1 ports").unwrap();
        let chain = s
            .find("delete chain bridge t1 port_nt1a2b3c4d5e6f1")
            .unwrap();
        assert!(add < del && del < chain, "{s}");
    }
}
