//! The servers as the scheduler sees them. What rarely changes (capacity
//! totals from the parsed sysinfo, capabilities, nic tags, traits) is
//! cached per datastore and re-read for a server only when its
//! `static_version` moved; placements read just the narrow columns that move
//! with placements and heartbeats (used capacity, status), and share one
//! such read for up to 200 ms (each adding its own placement to it), so a
//! placement among 10,000 servers parses no JSON and rarely scans. The owner's instance
//! aliases (for spreading and affinity) are read only for the servers asked.
//!
//! A stale view is harmless: the conditional update of the placement is
//! the arbiter. It must never be used to decide anything the database does
//! not check again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use nereid_api::{AccountId, ServerId, ServerSetup, ServerStatus, Sysinfo};
use sqlx::AssertSqlSafe;
use sqlx::types::Json;
use uuid::Uuid;

use super::Datastore;
use super::states::INSTANCE_DELETED;
use crate::error::{Error, Result};
use crate::scheduler::Candidate;

/// A server's rarely-changing part, as of `version`.
#[derive(Debug, Clone)]
struct Static {
    version: i64,
    /// A candidate with this part filled and the moving part zero.
    base: Candidate,
}

/// How long one read of the moving columns serves placements: concurrent
/// placements share it instead of each scanning every server (a placement
/// in it adds its own reservation, and the conditional update decides).
const MOVING_MAX_AGE: Duration = Duration::from_millis(200);

/// The cached static parts, by server, and the last read of the moving ones.
#[derive(Default)]
pub struct CandidateCache {
    statics: RwLock<HashMap<Uuid, Arc<Static>>>,
    moving: tokio::sync::Mutex<Option<(Instant, Arc<Vec<MovingRow>>)>>,
}

impl CandidateCache {
    /// A placement on `server` (committed): the shared read counts it.
    pub async fn note_placement(&self, server: ServerId, ram_mb: u64, disk_mb: u64, vcpus: u32) {
        let mut moving = self.moving.lock().await;
        if let Some((_, rows)) = moving.as_mut()
            && let Some(r) = Arc::make_mut(rows)
                .iter_mut()
                .find(|r| r.0 == server.as_uuid())
        {
            r.3 += ram_mb as i64;
            r.4 += disk_mb as i64;
            r.5 += vcpus as i32;
        }
    }
}

#[derive(sqlx::FromRow)]
struct StaticRow {
    id: Uuid,
    static_version: i64,
    reserved: bool,
    sysinfo: Json<Sysinfo>,
    setup: Option<Json<ServerSetup>>,
    overprovision_ram: f32,
    overprovision_disk: f32,
    overprovision_cpu: f32,
}

impl StaticRow {
    fn into_static(self) -> Static {
        let setup = self.setup.map(|s| s.0).unwrap_or_default();
        let pool_bytes = self
            .sysinfo
            .zpools
            .iter()
            .find(|z| z.name == setup.zpool)
            .map(|z| z.size_bytes)
            .unwrap_or(0);
        Static {
            version: self.static_version,
            base: Candidate {
                id: self.id.into(),
                status: ServerStatus::Unknown,
                reserved: self.reserved,
                ram_total_mb: ((self.sysinfo.memory_bytes >> 20) as f64
                    * self.overprovision_ram as f64) as u64,
                disk_total_mb: ((pool_bytes >> 20) as f64 * self.overprovision_disk as f64) as u64,
                vcpus_total: (self.sysinfo.cpu_count as f64 * self.overprovision_cpu as f64) as u32,
                ram_used_mb: 0,
                disk_used_mb: 0,
                vcpus_used: 0,
                nic_tags: Arc::new(setup.nic_tags.keys().cloned().collect()),
                capabilities: Arc::new(
                    self.sysinfo
                        .capabilities
                        .iter()
                        .filter(|(_, c)| c.available)
                        .map(|(k, _)| k.clone())
                        .collect(),
                ),
                traits: Arc::new(setup.traits.clone()),
                owner_aliases: Vec::new(),
            },
        }
    }
}

type MovingRow = (Uuid, i64, String, i64, i64, i32);

impl Datastore {
    /// Every server as the scheduler sees it (without owner aliases); with
    /// `fresh`, never from the shared read.
    pub async fn scheduler_candidates(&self, fresh: bool) -> Result<Vec<Candidate>> {
        self.candidates(None, fresh).await
    }

    /// One server as the scheduler sees it, with `owner`'s aliases on it
    /// (a resize stays on its server).
    pub async fn candidate(&self, server: ServerId, owner: AccountId) -> Result<Candidate> {
        let mut c = self
            .candidates(Some(server), true)
            .await?
            .pop()
            .ok_or_else(|| Error::not_found("server", server))?;
        self.fill_owner_aliases(owner, std::slice::from_mut(&mut c), true)
            .await?;
        Ok(c)
    }

    async fn candidates(&self, only: Option<ServerId>, fresh: bool) -> Result<Vec<Candidate>> {
        // One placement reads, concurrent ones wait for that read.
        let mut shared = match only {
            None => Some(self.candidate_cache.moving.lock().await),
            Some(_) => None,
        };
        if let Some(Some((at, rows))) = shared.as_deref()
            && !fresh
            && at.elapsed() < MOVING_MAX_AGE
        {
            let rows = rows.clone();
            drop(shared);
            return self.build(&rows, false).await;
        }
        let moving: Vec<MovingRow> = sqlx::query_as(concat!(
            "SELECT id, static_version, ",
            super::servers::server_status_sql!(),
            ", used_ram_mb, used_disk_mb, used_vcpus
               FROM servers WHERE $2::uuid IS NULL OR id = $2"
        ))
        .bind(self.heartbeat_deadline.as_secs_f64())
        .bind(only.map(|s| s.as_uuid()))
        .fetch_all(&self.pool)
        .await?;
        let moving = Arc::new(moving);
        if let Some(guard) = shared.as_mut() {
            **guard = Some((Instant::now(), moving.clone()));
        }
        drop(shared);
        self.build(&moving, only.is_none()).await
    }

    /// Candidates from a read of the moving columns, re-reading the static
    /// part of servers whose version moved (and, after a full read,
    /// forgetting servers that are gone).
    async fn build(&self, moving: &[MovingRow], full: bool) -> Result<Vec<Candidate>> {
        let stale: Vec<Uuid> = {
            let cache = self
                .candidate_cache
                .statics
                .read()
                .expect("candidate cache");
            moving
                .iter()
                .filter(|(id, v, ..)| cache.get(id).is_none_or(|s| s.version != *v))
                .map(|(id, ..)| *id)
                .collect()
        };
        if !stale.is_empty() {
            let rows: Vec<StaticRow> = sqlx::query_as(
                "SELECT id, static_version, reserved, sysinfo, setup, overprovision_ram,
                        overprovision_disk, overprovision_cpu
                   FROM servers WHERE id = ANY($1)",
            )
            .bind(&stale)
            .fetch_all(&self.pool)
            .await?;
            let mut cache = self
                .candidate_cache
                .statics
                .write()
                .expect("candidate cache");
            if full {
                // Deleted servers leave the cache on a full read.
                let live: std::collections::HashSet<Uuid> = moving.iter().map(|m| m.0).collect();
                cache.retain(|id, _| live.contains(id));
            }
            for r in rows {
                cache.insert(r.id, Arc::new(r.into_static()));
            }
        }
        let cache = self
            .candidate_cache
            .statics
            .read()
            .expect("candidate cache");
        Ok(moving
            .iter()
            .filter_map(|(id, _, status, ram, disk, vcpus)| {
                let s = cache.get(id)?;
                let mut c = s.base.clone();
                c.status = ServerStatus::parse(status).unwrap_or(ServerStatus::Unknown);
                c.ram_used_mb = (*ram).max(0) as u64;
                c.disk_used_mb = (*disk).max(0) as u64;
                c.vcpus_used = (*vcpus).max(0) as u32;
                Some(c)
            })
            .collect())
    }

    /// Fills in `owner`'s live instance aliases on each of `servers`: read
    /// by server for a few (`by_server`), else all of the owner's at once.
    pub async fn fill_owner_aliases(
        &self,
        owner: AccountId,
        servers: &mut [Candidate],
        by_server: bool,
    ) -> Result<()> {
        let ids: Vec<Uuid> = servers.iter().map(|c| c.id.as_uuid()).collect();
        let only = if by_server {
            "AND server_id = ANY($2)"
        } else {
            "AND $2::uuid[] IS NOT NULL"
        };
        let rows: Vec<(Uuid, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT server_id, alias FROM instances
              WHERE owner = $1 AND state <> {INSTANCE_DELETED} AND server_id IS NOT NULL {only}"
        )))
        .bind(owner.as_uuid())
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut by: HashMap<Uuid, Vec<String>> = HashMap::new();
        for (server, alias) in rows {
            by.entry(server).or_default().push(alias);
        }
        for c in servers {
            c.owner_aliases = by.remove(&c.id.as_uuid()).unwrap_or_default();
        }
        Ok(())
    }
}
