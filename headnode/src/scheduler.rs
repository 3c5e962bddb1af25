//! The scheduler: which servers can take an instance, best first. Filters
//! reject servers (each rejection counted under its reason, for the 409's
//! message), weights order the rest, a random draw breaks ties.
//!
//! A pure function over a snapshot of the servers. It must never reserve
//! anything itself: the datastore's conditional update decides, so two
//! placements racing on one snapshot can never over-commit a server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use nereid_api::{ServerId, ServerStatus};

/// What an instance needs.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub ram_mb: u64,
    pub disk_mb: u64,
    pub vcpus: u32,
    /// The host capabilities it needs: the brand's (`runc` for containers,
    /// `qemu` for VMs) and `vlan` for a VLAN-tagged network.
    pub capabilities: BTreeSet<String>,
    pub nic_tags: BTreeSet<String>,
    /// Package and image traits; a server must have each with an equal value.
    pub traits: BTreeMap<String, serde_json::Value>,
    pub affinity: Vec<Affinity>,
}

/// A server as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: ServerId,
    pub status: ServerStatus,
    pub reserved: bool,
    /// Capacity after overprovision ratios.
    pub ram_total_mb: u64,
    pub disk_total_mb: u64,
    pub vcpus_total: u32,
    pub ram_used_mb: u64,
    pub disk_used_mb: u64,
    pub vcpus_used: u32,
    /// What rarely changes is shared between the snapshots of a server.
    pub nic_tags: Arc<BTreeSet<String>>,
    pub capabilities: Arc<BTreeSet<String>>,
    pub traits: Arc<BTreeMap<String, serde_json::Value>>,
    /// Aliases of the requesting owner's live instances on this server.
    pub owner_aliases: Vec<String>,
}

/// A placement rule (Triton's affinity syntax).
#[derive(Debug, Clone, PartialEq)]
pub struct Affinity {
    pub target: AffinityTarget,
    /// `==` (true) or `!=` (false).
    pub together: bool,
    /// `==~` / `!=~`: a preference, not a rule.
    pub soft: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AffinityTarget {
    /// A glob (`*` only) over the owner's instance aliases.
    Instance(String),
    Server(ServerId),
}

impl Affinity {
    /// Parses `instance==web*`, `instance!=~db1`, `server==<uuid>`
    /// (`container` is a synonym of `instance`); exactly the OpenAPI
    /// document's `AFFINITY` pattern.
    pub fn parse(s: &str) -> Result<Affinity, String> {
        let unreadable = || format!("{s:?} is not a rule like instance==web* or instance!=~db1");
        let (key, rest) = ["instance", "container", "server"]
            .into_iter()
            .find_map(|k| Some((k, s.strip_prefix(k)?)))
            .ok_or_else(|| format!("{s:?}: the key is instance or server"))?;
        let (together, rest) = match (rest.strip_prefix("=="), rest.strip_prefix("!=")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            (None, None) => return Err(unreadable()),
        };
        let (soft, value) = match rest.strip_prefix('~') {
            Some(v) => (true, v),
            None => (false, rest),
        };
        if value.is_empty() || value.starts_with('~') || value.chars().count() > 128 {
            return Err(format!("{s:?} has an empty or overlong value"));
        }
        let target = match key {
            "server" => AffinityTarget::Server(
                crate::db::parse_uuid(value)
                    .map(ServerId)
                    .ok_or_else(|| format!("{s:?}: {value:?} is not a server id"))?,
            ),
            _ => AffinityTarget::Instance(value.to_string()),
        };
        Ok(Affinity {
            target,
            together,
            soft,
        })
    }

    /// Whether `c` satisfies the rule.
    fn holds(&self, c: &Candidate) -> bool {
        let matches = match &self.target {
            AffinityTarget::Instance(glob) => c.owner_aliases.iter().any(|a| glob_match(glob, a)),
            AffinityTarget::Server(id) => c.id == *id,
        };
        matches == self.together
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let mut rest = s;
    let last = parts.len() - 1;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == last {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Why no server could take the request, counted per filter.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rejection {
    pub servers: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.servers == 0 {
            return f.write_str("no server is set up");
        }
        let plural = if self.servers == 1 { "" } else { "s" };
        write!(f, "{} server{plural}: ", self.servers)?;
        let mut first = true;
        // Largest counts first, then by name, so the message reads well and is stable.
        let mut reasons: Vec<_> = self.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (reason, n) in reasons {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{n} {reason}")?;
        }
        Ok(())
    }
}

/// The first filter `c` fails, as the reason to count.
fn reject_reason(req: &Request, c: &Candidate) -> Option<String> {
    if c.status != ServerStatus::Running {
        return Some(c.status.as_str().to_string());
    }
    if c.reserved {
        return Some("reserved".into());
    }
    if let Some(cap) = req
        .capabilities
        .iter()
        .find(|k| !c.capabilities.contains(*k))
    {
        return Some(format!("lack {cap}"));
    }
    if let Some(tag) = req.nic_tags.iter().find(|t| !c.nic_tags.contains(*t)) {
        return Some(format!("lack nic tag {tag}"));
    }
    if let Some((k, _)) = req.traits.iter().find(|(k, v)| c.traits.get(*k) != Some(v)) {
        return Some(format!("lack trait {k}"));
    }
    if c.ram_used_mb + req.ram_mb > c.ram_total_mb {
        return Some("lacked memory".into());
    }
    if c.disk_used_mb + req.disk_mb > c.disk_total_mb {
        return Some("lacked disk".into());
    }
    if c.vcpus_used + req.vcpus > c.vcpus_total {
        return Some("lacked CPU".into());
    }
    if let Some(rule) = req.affinity.iter().find(|a| !a.soft && !a.holds(c)) {
        return Some(match &rule.target {
            AffinityTarget::Instance(g) if rule.together => format!("host no instance {g}"),
            AffinityTarget::Instance(g) => format!("host instance {g}"),
            AffinityTarget::Server(_) if rule.together => "are not the server asked for".into(),
            AffinityTarget::Server(_) => "are the server excluded".into(),
        });
    }
    None
}

/// Higher is better: free memory after placement (as a fraction), fewer of
/// the owner's instances (spread), soft affinity rules kept.
fn weight(req: &Request, c: &Candidate) -> f64 {
    let free = (c.ram_total_mb - c.ram_used_mb - req.ram_mb) as f64 / c.ram_total_mb.max(1) as f64;
    let spread = 1.0 / (1.0 + c.owner_aliases.len() as f64);
    let soft: f64 = req
        .affinity
        .iter()
        .filter(|a| a.soft)
        .map(|a| if a.holds(c) { 1.0 } else { -1.0 })
        .sum();
    free + spread + 2.0 * soft
}

/// How many of the servers that can take an instance a placement scores: a
/// random sample, so a placement costs the same among 100 servers or
/// 10,000, and concurrent placements spread instead of all trying the one
/// best server.
pub const SAMPLE: usize = 64;

/// Up to `k` servers drawn at random (their indexes) among those that pass
/// every filter but the owner's instance affinity (which needs the owner's
/// aliases, read afterwards for the sample only); the rejection, every
/// server counted, when none passes.
pub fn sample_feasible(
    req: &Request,
    candidates: &[Candidate],
    k: usize,
    mut draw: impl FnMut() -> u64,
) -> Result<Vec<usize>, Rejection> {
    let base = Request {
        affinity: req
            .affinity
            .iter()
            .filter(|a| matches!(a.target, AffinityTarget::Server(_)))
            .cloned()
            .collect(),
        ..req.clone()
    };
    let mut rejection = Rejection {
        servers: candidates.len(),
        ..Default::default()
    };
    let mut picked = Vec::with_capacity(k);
    let mut seen = 0u64;
    for (i, c) in candidates.iter().enumerate() {
        if let Some(reason) = reject_reason(&base, c) {
            *rejection.reasons.entry(reason).or_default() += 1;
            continue;
        }
        seen += 1;
        if picked.len() < k {
            picked.push(i);
        } else {
            // Reservoir sampling: each passing server is kept with k/seen.
            let j = (draw() % seen) as usize;
            if j < k {
                picked[j] = i;
            }
        }
    }
    if picked.is_empty() {
        return Err(rejection);
    }
    Ok(picked)
}

/// The servers that can take `req`, best first; `tie` draws a random
/// number per server to break ties.
pub fn rank(
    req: &Request,
    candidates: &[Candidate],
    mut tie: impl FnMut() -> u64,
) -> Result<Vec<ServerId>, Rejection> {
    let mut rejection = Rejection {
        servers: candidates.len(),
        ..Default::default()
    };
    let mut fit: Vec<(f64, u64, ServerId)> = Vec::new();
    for c in candidates {
        match reject_reason(req, c) {
            Some(reason) => *rejection.reasons.entry(reason).or_default() += 1,
            None => fit.push((weight(req, c), tie(), c.id)),
        }
    }
    if fit.is_empty() {
        return Err(rejection);
    }
    fit.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    Ok(fit.into_iter().map(|(_, _, id)| id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(n: u128) -> Candidate {
        Candidate {
            id: ServerId(uuid::Uuid::from_u128(n)),
            status: ServerStatus::Running,
            reserved: false,
            ram_total_mb: 4096,
            disk_total_mb: 10_000,
            vcpus_total: 8,
            ram_used_mb: 0,
            disk_used_mb: 0,
            vcpus_used: 0,
            nic_tags: Arc::new(["admin".to_string()].into()),
            capabilities: Arc::new(["runc".to_string()].into()),
            traits: Arc::new(BTreeMap::new()),
            owner_aliases: vec![],
        }
    }

    fn request() -> Request {
        Request {
            ram_mb: 1024,
            disk_mb: 1000,
            vcpus: 1,
            capabilities: ["runc".to_string()].into(),
            nic_tags: ["admin".to_string()].into(),
            ..Default::default()
        }
    }

    fn no_tie() -> impl FnMut() -> u64 {
        || 0
    }

    #[test]
    fn rejection_counts_each_server_under_its_first_failing_filter() {
        let mut lacks_memory = server(1);
        lacks_memory.ram_used_mb = 3500;
        let mut lacks_memory2 = server(2);
        lacks_memory2.ram_total_mb = 512;
        let mut reserved = server(3);
        reserved.reserved = true;
        let mut no_tag = server(4);
        Arc::make_mut(&mut no_tag.nic_tags).clear();
        let mut req = request();
        req.nic_tags.insert("external".into());
        Arc::make_mut(&mut no_tag.nic_tags).insert("admin".into());
        let mut lacks_memory_with_tag = lacks_memory.clone();
        Arc::make_mut(&mut lacks_memory_with_tag.nic_tags).insert("external".into());
        let mut lacks_memory2_with_tag = lacks_memory2.clone();
        Arc::make_mut(&mut lacks_memory2_with_tag.nic_tags).insert("external".into());
        let err = rank(
            &req,
            &[
                lacks_memory_with_tag,
                lacks_memory2_with_tag,
                reserved,
                no_tag,
            ],
            no_tie(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "4 servers: 2 lacked memory, 1 lack nic tag external, 1 reserved"
        );
    }

    #[test]
    fn placement_prefers_the_server_with_more_free_memory() {
        let mut busy = server(1);
        busy.ram_used_mb = 2048;
        let idle = server(2);
        let order = rank(&request(), &[busy.clone(), idle.clone()], no_tie()).unwrap();
        assert_eq!(order, vec![idle.id, busy.id]);
    }

    #[test]
    fn placement_spreads_one_owners_instances() {
        let mut has_two = server(1);
        has_two.owner_aliases = vec!["a".into(), "b".into()];
        let empty = server(2);
        let order = rank(&request(), &[has_two.clone(), empty.clone()], no_tie()).unwrap();
        assert_eq!(order[0], empty.id);
    }

    #[test]
    fn hard_anti_affinity_excludes_servers_with_matching_aliases() {
        let mut web = server(1);
        web.owner_aliases = vec!["web1".into()];
        let other = server(2);
        let mut req = request();
        req.affinity = vec![Affinity::parse("instance!=web*").unwrap()];
        assert_eq!(
            rank(&req, &[web.clone(), other.clone()], no_tie()).unwrap(),
            vec![other.id]
        );
        let err = rank(&req, &[web], no_tie()).unwrap_err();
        assert_eq!(err.to_string(), "1 server: 1 host instance web*");
    }

    #[test]
    fn soft_affinity_orders_but_never_excludes() {
        let mut db = server(1);
        db.owner_aliases = vec!["db1".into()];
        db.ram_used_mb = 1024; // less free memory, but the soft rule wins
        let other = server(2);
        let mut req = request();
        req.affinity = vec![Affinity::parse("instance==~db*").unwrap()];
        assert_eq!(
            rank(&req, &[other.clone(), db.clone()], no_tie()).unwrap(),
            vec![db.id, other.id]
        );
    }

    #[test]
    fn capacity_counts_cpu_and_disk_too() {
        let mut cpu = server(1);
        cpu.vcpus_used = 8;
        let mut disk = server(2);
        disk.disk_used_mb = 9500;
        let err = rank(&request(), &[cpu, disk], no_tie()).unwrap_err();
        assert_eq!(err.to_string(), "2 servers: 1 lacked CPU, 1 lacked disk");
    }

    #[test]
    fn ties_are_broken_by_the_random_draw() {
        let a = server(1);
        let b = server(2);
        let mut draws = [1u64, 2].into_iter();
        let order = rank(&request(), &[a.clone(), b.clone()], || {
            draws.next().unwrap()
        })
        .unwrap();
        assert_eq!(order, vec![b.id, a.id]);
    }

    #[test]
    fn affinity_parse_refuses_what_it_cannot_read() {
        assert!(Affinity::parse("instance<>web").is_err());
        assert!(Affinity::parse("flavor==big").is_err());
        assert!(Affinity::parse("server==not-a-uuid").is_err());
        assert!(Affinity::parse("instance==").is_err());
        let a = Affinity::parse("instance!=~db*").unwrap();
        assert!(a.soft && !a.together);
    }

    #[test]
    fn glob_matches_stars_anywhere() {
        assert!(glob_match("web*", "web12"));
        assert!(glob_match("*-db", "eu-db"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn a_server_not_running_is_rejected_by_its_status() {
        let mut s = server(1);
        s.status = ServerStatus::Unknown;
        let err = rank(&request(), &[s], no_tie()).unwrap_err();
        assert_eq!(err.to_string(), "1 server: 1 unknown");
        assert_eq!(
            rank(&request(), &[], no_tie()).unwrap_err().to_string(),
            "no server is set up"
        );
    }

    #[test]
    fn a_placement_scores_a_random_sample_of_the_servers_that_fit_and_counts_all_when_none_does() {
        let mut servers: Vec<Candidate> = (0..200).map(server).collect();
        for s in servers.iter_mut().take(50) {
            s.ram_used_mb = s.ram_total_mb;
        }
        let req = Request {
            ram_mb: 512,
            nic_tags: ["admin".to_string()].into(),
            ..Default::default()
        };
        let mut n = 0u64;
        let mut draw = || {
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            n >> 11
        };
        let picked = sample_feasible(&req, &servers, SAMPLE, &mut draw).unwrap();
        assert_eq!(picked.len(), SAMPLE);
        let distinct: BTreeSet<usize> = picked.iter().copied().collect();
        assert_eq!(distinct.len(), SAMPLE);
        assert!(picked.iter().all(|i| *i >= 50), "only servers with room");
        // Reservoir sampling reaches past the first 64 that fit.
        assert!(picked.iter().any(|i| *i >= 50 + SAMPLE));

        for s in servers.iter_mut() {
            s.ram_used_mb = s.ram_total_mb;
        }
        let err = sample_feasible(&req, &servers, SAMPLE, &mut draw).unwrap_err();
        assert_eq!(err.to_string(), "200 servers: 200 lacked memory");
    }
}
