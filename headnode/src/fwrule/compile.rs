//! From the enabled rules and the live instances to each node's firewall:
//! which rules touch an instance, what addresses a rule's other side holds,
//! and in which order the node considers them. Pure: no database, no node.

use std::collections::BTreeSet;

use nereid_api::{AccountId, ServerId};
use nereid_proto::v1 as pb;

use super::parse::{Action, Ports, Protocol, Rule, Target, Targets};
use crate::db::{ActiveRule, FwInstance};

fn tag_matches(inst: &FwInstance, key: &str, value: Option<&str>) -> bool {
    match (inst.tags.get(key), value) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(serde_json::Value::String(s)), Some(v)) => s == v,
        // A number or a boolean compares as its JSON text ("1", "true").
        (Some(other), Some(v)) => {
            let text = other.to_string();
            text == v
        }
    }
}

/// Whether one target names the instance (addresses never do).
fn target_names(t: &Target, inst: &FwInstance) -> bool {
    match t {
        Target::Vm(id) => *id == inst.id.as_uuid(),
        Target::Tag { key, value } => tag_matches(inst, key, value.as_deref()),
        Target::Ip(_) | Target::Subnet(..) => false,
    }
}

/// Whether these targets name the instance (`any` names addresses, not
/// instances: it never does).
fn names(targets: &Targets, inst: &FwInstance) -> bool {
    match targets {
        Targets::Any => false,
        Targets::AllVms => true,
        Targets::List(list) => list.iter().any(|t| target_names(t, inst)),
    }
}

/// Whether a rule applies to the instance (on either side).
pub fn touches(rule: &Rule, inst: &FwInstance) -> bool {
    names(&rule.from, inst) || names(&rule.to, inst)
}

/// The addresses of `targets` as seen by a rule of `owner` (None: global);
/// None means any address.
fn peers(targets: &Targets, owner: Option<AccountId>, all: &[FwInstance]) -> Option<Vec<String>> {
    let mine = |i: &&FwInstance| owner.is_none_or(|o| i.owner == o);
    let mut out = BTreeSet::new();
    match targets {
        Targets::Any => return None,
        Targets::AllVms => {
            for i in all.iter().filter(mine) {
                out.extend(i.ips.iter().map(|ip| ip.to_string()));
            }
        }
        Targets::List(list) => {
            for t in list {
                match t {
                    Target::Ip(ip) => {
                        out.insert(ip.to_string());
                    }
                    Target::Subnet(net, len) => {
                        out.insert(format!("{net}/{len}"));
                    }
                    Target::Vm(_) | Target::Tag { .. } => {
                        for i in all.iter().filter(mine).filter(|i| target_names(t, i)) {
                            out.extend(i.ips.iter().map(|ip| ip.to_string()));
                        }
                    }
                }
            }
        }
    }
    Some(out.into_iter().collect())
}

fn entry(rule: &Rule, peers: Vec<String>) -> pb::FirewallRule {
    let (protocol, ports, icmp) = match &rule.protocol {
        Protocol::Tcp(p) | Protocol::Udp(p) => {
            let proto = if matches!(rule.protocol, Protocol::Tcp(_)) {
                pb::FirewallProtocol::Tcp
            } else {
                pb::FirewallProtocol::Udp
            };
            let ranges = match p {
                Ports::All => Vec::new(),
                Ports::List(l) => l
                    .iter()
                    .map(|(a, b)| pb::PortRange {
                        first: u32::from(*a),
                        last: u32::from(*b),
                    })
                    .collect(),
            };
            (proto, ranges, Vec::new())
        }
        Protocol::Icmp(types) => {
            let all = types.iter().any(|t| t.r#type.is_none());
            let matches = if all {
                Vec::new()
            } else {
                types
                    .iter()
                    .filter_map(|t| {
                        Some(pb::IcmpMatch {
                            r#type: u32::from(t.r#type?),
                            code: t.code.map(u32::from),
                        })
                    })
                    .collect()
            };
            (pb::FirewallProtocol::Icmp, Vec::new(), matches)
        }
    };
    pb::FirewallRule {
        allow: rule.action == Action::Allow,
        peers,
        protocol: protocol as i32,
        ports,
        icmp,
    }
}

/// The firewall of `server`: every firewalled instance on it with the rules
/// (of its owner, and global ones) that name it, in the order they apply:
/// higher priority first, and BLOCK before ALLOW at equal priority.
pub fn node_firewall(
    server: ServerId,
    rules: &[ActiveRule],
    all: &[FwInstance],
) -> pb::FirewallSet {
    let mut ordered: Vec<&ActiveRule> = rules.iter().collect();
    ordered.sort_by_key(|r| {
        (
            std::cmp::Reverse(r.rule.priority),
            r.rule.action == Action::Allow,
            r.id,
        )
    });
    let mut instances = Vec::new();
    for inst in all
        .iter()
        .filter(|i| i.server == Some(server) && i.firewall_enabled && !i.ips.is_empty())
    {
        let (mut inbound, mut outbound) = (Vec::new(), Vec::new());
        for r in ordered
            .iter()
            .filter(|r| r.owner.is_none_or(|o| o == inst.owner))
        {
            for (side, other, out) in [
                (&r.rule.to, &r.rule.from, &mut inbound),
                (&r.rule.from, &r.rule.to, &mut outbound),
            ] {
                if !names(side, inst) {
                    continue;
                }
                match peers(other, r.owner, all) {
                    None => out.push(entry(&r.rule, Vec::new())),
                    Some(p) if !p.is_empty() => out.push(entry(&r.rule, p)),
                    Some(_) => {} // names nobody: matches nothing
                }
            }
        }
        let mut ips: Vec<String> = inst.ips.iter().map(|ip| ip.to_string()).collect();
        ips.sort();
        instances.push(pb::InstanceFirewall {
            instance_id: inst.id.to_string(),
            ips,
            inbound,
            outbound,
        });
    }
    instances.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let mut set = pb::FirewallSet {
        generation: 0,
        instances,
    };
    set.generation = crate::agent_client::generation_of(&set);
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fwrule::parse;
    use std::collections::BTreeMap;

    fn inst(
        owner: AccountId,
        server: ServerId,
        ip: &str,
        tags: &[(&str, &str)],
        fw: bool,
    ) -> FwInstance {
        FwInstance {
            id: nereid_api::InstanceId::new(),
            owner,
            server: Some(server),
            firewall_enabled: fw,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                .collect::<BTreeMap<_, _>>(),
            ips: vec![ip.parse().unwrap()],
        }
    }

    fn active(owner: Option<AccountId>, text: &str) -> ActiveRule {
        ActiveRule {
            id: nereid_api::FwRuleId::new(),
            owner,
            rule: parse(text).unwrap(),
        }
    }

    #[test]
    fn a_tag_rule_opens_the_tagged_instance_to_the_named_peers_only() {
        let (alice, bob) = (AccountId::new(), AccountId::new());
        let s = ServerId::new();
        let web = inst(alice, s, "10.0.0.10", &[("role", "web")], true);
        let db = inst(alice, s, "10.0.0.11", &[("role", "db")], true);
        let bobs = inst(bob, s, "10.0.0.12", &[("role", "web")], true);
        let all = vec![web.clone(), db.clone(), bobs.clone()];
        let rules = vec![
            active(
                Some(alice),
                "FROM tag role=db TO tag role=web ALLOW tcp PORT 5432",
            ),
            active(
                Some(alice),
                "FROM any TO tag role=web ALLOW tcp PORTS 80, 8000-8080",
            ),
        ];
        let set = node_firewall(s, &rules, &all);
        let get = |i: &FwInstance| {
            set.instances
                .iter()
                .find(|f| f.instance_id == i.id.to_string())
                .unwrap()
                .clone()
        };
        let w = get(&web);
        assert_eq!(w.inbound.len(), 2);
        let from_db = w.inbound.iter().find(|r| !r.peers.is_empty()).unwrap();
        assert_eq!(from_db.peers, vec!["10.0.0.11"]);
        let from_any = w.inbound.iter().find(|r| r.peers.is_empty()).unwrap();
        assert_eq!(
            from_any.ports,
            vec![
                pb::PortRange {
                    first: 80,
                    last: 80
                },
                pb::PortRange {
                    first: 8000,
                    last: 8080
                }
            ]
        );
        // The db side: an outbound ALLOW to web's address.
        let d = get(&db);
        assert!(d.inbound.is_empty());
        assert_eq!(d.outbound[0].peers, vec!["10.0.0.10"]);
        // Bob's web instance carries the same tag and gets none of Alice's rules.
        let b = get(&bobs);
        assert!(b.inbound.is_empty() && b.outbound.is_empty());
    }

    #[test]
    fn higher_priority_first_and_block_before_allow_at_equal_priority() {
        let a = AccountId::new();
        let s = ServerId::new();
        let i = inst(a, s, "10.0.0.10", &[], true);
        let rules = vec![
            active(Some(a), "FROM any TO all vms ALLOW tcp PORT 22"),
            active(Some(a), "FROM any TO all vms BLOCK tcp PORT 22"),
            active(Some(a), "FROM any TO all vms ALLOW tcp PORT 22 PRIORITY 5"),
        ];
        let set = node_firewall(s, &rules, std::slice::from_ref(&i));
        let order: Vec<bool> = set.instances[0].inbound.iter().map(|r| r.allow).collect();
        assert_eq!(order, vec![true, false, true]);
    }

    #[test]
    fn instances_without_their_firewall_or_elsewhere_are_left_out_and_generations_follow_content() {
        let a = AccountId::new();
        let (s, other) = (ServerId::new(), ServerId::new());
        let on = inst(a, s, "10.0.0.10", &[], true);
        let off = inst(a, s, "10.0.0.11", &[], false);
        let away = inst(a, other, "10.0.0.12", &[], true);
        let all = vec![on.clone(), off, away];
        let rules = vec![active(Some(a), "FROM all vms TO all vms ALLOW icmp TYPE 8")];
        let set = node_firewall(s, &rules, &all);
        assert_eq!(set.instances.len(), 1);
        assert_eq!(set.instances[0].instance_id, on.id.to_string());
        // `all vms` as the other side: every instance of the owner, wherever.
        assert_eq!(
            set.instances[0].inbound[0].peers,
            vec!["10.0.0.10", "10.0.0.11", "10.0.0.12"]
        );
        assert_eq!(node_firewall(s, &rules, &all).generation, set.generation);
        let fewer = node_firewall(s, &[], &all);
        assert_ne!(fewer.generation, set.generation);
    }

    #[test]
    fn a_global_rule_applies_to_every_owner() {
        let (a, b) = (AccountId::new(), AccountId::new());
        let s = ServerId::new();
        let all = vec![
            inst(a, s, "10.0.0.10", &[], true),
            inst(b, s, "10.0.0.11", &[], true),
        ];
        let set = node_firewall(
            s,
            &[active(None, "FROM any TO all vms ALLOW tcp PORT 22")],
            &all,
        );
        assert!(set.instances.iter().all(|i| i.inbound.len() == 1));
    }
}
