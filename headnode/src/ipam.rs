//! IPv4 address math for networks: CIDR parsing, range checks and the
//! validation of a network's addresses, with messages that name the field.
//! Pure functions: who holds which address is decided by the database.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::error::{Error, Result};

/// The largest provision range a network may have (a /16's worth of rows).
pub const MAX_RANGE: u32 = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(field: &str, s: &str) -> Result<Cidr> {
        let (a, p) = s.split_once('/').ok_or_else(|| {
            Error::invalid(
                field,
                format!(
                    "{:?} is not a CIDR such as 10.88.0.0/24",
                    crate::validate::truncate(s)
                ),
            )
        })?;
        let addr: Ipv4Addr = a.parse().map_err(|_| {
            Error::invalid(
                field,
                format!(
                    "{:?} is not an IPv4 address (only IPv4 networks are supported)",
                    crate::validate::truncate(a)
                ),
            )
        })?;
        let prefix: u8 = p.parse().ok().filter(|p| *p <= 32).ok_or_else(|| {
            Error::invalid(field, format!("prefix length {p:?} is not within 0..=32"))
        })?;
        let c = Cidr {
            network: Ipv4Addr::from(u32::from(addr) & Self::mask_of(prefix)),
            prefix,
        };
        if c.network != addr {
            return Err(Error::invalid(
                field,
                format!(
                    "{s} has host bits set; did you mean {}/{prefix}?",
                    c.network
                ),
            ));
        }
        Ok(c)
    }

    fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        }
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !Self::mask_of(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_of(self.prefix) == u32::from(self.network)
    }

    /// An address usable by a host: inside, and neither the network nor the broadcast address.
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && (self.prefix >= 31 || (ip != self.network && ip != self.broadcast()))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

pub fn parse_ip(field: &str, s: &str) -> Result<Ipv4Addr> {
    s.parse().map_err(|_| {
        Error::invalid(
            field,
            format!("{:?} is not an IPv4 address", crate::validate::truncate(s)),
        )
    })
}

/// A network's addresses, checked.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub subnet: Cidr,
    pub gateway: Option<Ipv4Addr>,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub resolvers: Vec<Ipv4Addr>,
    pub routes: BTreeMap<String, String>,
}

impl Addresses {
    /// How many addresses the provision range holds.
    pub fn range_len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }
}

pub fn check_addresses(
    subnet: &str,
    gateway: Option<&str>,
    start: &str,
    end: &str,
    resolvers: &[String],
    routes: &BTreeMap<String, String>,
) -> Result<Addresses> {
    let subnet = Cidr::parse("subnet", subnet)?;
    if subnet.prefix < 8 || subnet.prefix > 30 {
        return Err(Error::invalid(
            "subnet",
            format!(
                "prefix length must be within 8..=30, got /{}",
                subnet.prefix
            ),
        ));
    }
    let gateway = gateway.map(|g| parse_ip("gateway", g)).transpose()?;
    if let Some(g) = gateway
        && !subnet.is_host(g)
    {
        return Err(Error::invalid(
            "gateway",
            format!("{g} is not a host address of {subnet}"),
        ));
    }
    let start = parse_ip("provision_start", start)?;
    let end = parse_ip("provision_end", end)?;
    for (field, ip) in [("provision_start", start), ("provision_end", end)] {
        if !subnet.is_host(ip) {
            return Err(Error::invalid(
                field,
                format!("{ip} is not a host address of {subnet}"),
            ));
        }
    }
    if u32::from(start) > u32::from(end) {
        return Err(Error::invalid(
            "provision_end",
            format!("{end} comes before provision_start {start}"),
        ));
    }
    if u32::from(end) - u32::from(start) >= MAX_RANGE {
        return Err(Error::invalid(
            "provision_end",
            format!("a provision range holds at most {MAX_RANGE} addresses"),
        ));
    }
    if resolvers.len() > 8 {
        return Err(Error::invalid("resolvers", "at most 8 resolvers"));
    }
    let resolvers = resolvers
        .iter()
        .map(|r| parse_ip("resolvers", r))
        .collect::<Result<Vec<_>>>()?;
    if routes.len() > 64 {
        return Err(Error::invalid("routes", "at most 64 routes"));
    }
    for (dest, via) in routes {
        Cidr::parse(&format!("routes.{}", crate::validate::truncate(dest)), dest)?;
        parse_ip(&format!("routes.{dest}"), via)?;
    }
    Ok(Addresses {
        subnet,
        gateway,
        start,
        end,
        resolvers,
        routes: routes.clone(),
    })
}

pub fn check_vlan(vlan_id: u16) -> Result<()> {
    match vlan_id {
        0 | 2..=4094 => Ok(()),
        1 => Err(Error::invalid(
            "vlan_id",
            "VLAN 1 is the default VLAN of most switches and is refused; use 0 for untagged",
        )),
        v => Err(Error::invalid(
            "vlan_id",
            format!("must be 0 (untagged) or within 2..=4094, got {v}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_host_bits_are_refused_with_a_suggestion() {
        let c = Cidr::parse("subnet", "10.88.0.0/24").unwrap();
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 88, 0, 255));
        assert!(c.is_host(Ipv4Addr::new(10, 88, 0, 1)));
        assert!(!c.is_host(Ipv4Addr::new(10, 88, 0, 0)));
        assert!(!c.is_host(Ipv4Addr::new(10, 88, 0, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 88, 1, 1)));
        let e = Cidr::parse("subnet", "10.88.0.5/24")
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean 10.88.0.0/24"), "{e}");
        for bad in [
            "10.88.0.0",
            "10.88.0.0/33",
            "10.88.0/24",
            "fd00::/64",
            "x/y",
            "",
        ] {
            assert!(
                Cidr::parse("subnet", bad)
                    .unwrap_err()
                    .to_string()
                    .starts_with("subnet:"),
                "{bad}"
            );
        }
    }

    #[test]
    fn addresses_must_lie_inside_the_subnet() {
        let none = BTreeMap::new();
        let ok = check_addresses(
            "10.88.0.0/24",
            Some("10.88.0.1"),
            "10.88.0.10",
            "10.88.0.250",
            &["1.1.1.1".into()],
            &none,
        )
        .unwrap();
        assert_eq!(ok.range_len(), 241);
        let err = |r: Result<Addresses>| r.unwrap_err().to_string();
        assert!(
            err(check_addresses(
                "10.88.0.0/24",
                Some("10.88.1.1"),
                "10.88.0.10",
                "10.88.0.20",
                &[],
                &none
            ))
            .starts_with("gateway:")
        );
        assert!(
            err(check_addresses(
                "10.88.0.0/24",
                None,
                "10.88.0.0",
                "10.88.0.20",
                &[],
                &none
            ))
            .starts_with("provision_start:")
        );
        assert!(
            err(check_addresses(
                "10.88.0.0/24",
                None,
                "10.88.0.10",
                "10.88.0.255",
                &[],
                &none
            ))
            .starts_with("provision_end:")
        );
        assert!(
            err(check_addresses(
                "10.88.0.0/24",
                None,
                "10.88.0.20",
                "10.88.0.10",
                &[],
                &none
            ))
            .starts_with("provision_end:")
        );
        assert!(
            err(check_addresses(
                "10.0.0.0/8",
                None,
                "10.0.0.1",
                "10.2.0.1",
                &[],
                &none
            ))
            .contains("at most 65536")
        );
        assert!(
            err(check_addresses(
                "10.88.0.0/24",
                None,
                "10.88.0.1",
                "10.88.0.2",
                &["dns".into()],
                &none
            ))
            .starts_with("resolvers:")
        );
        let routes = BTreeMap::from([("10.0.0.0/8".to_string(), "nowhere".to_string())]);
        assert!(
            err(check_addresses(
                "10.88.0.0/24",
                None,
                "10.88.0.1",
                "10.88.0.2",
                &[],
                &routes
            ))
            .starts_with("routes.10.0.0.0/8:")
        );
    }

    #[test]
    fn vlan_1_and_out_of_range_ids_are_refused() {
        assert!(check_vlan(0).is_ok());
        assert!(check_vlan(2).is_ok());
        assert!(check_vlan(4094).is_ok());
        assert!(check_vlan(1).unwrap_err().to_string().contains("VLAN 1"));
        assert!(check_vlan(4095).is_err());
    }
}
