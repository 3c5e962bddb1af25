//! The datastore: every SQL statement of the headnode lives under this module,
//! one file per resource, methods named resource-first (`server_get`,
//! `account_create`). It owns the connection pool and the migrations.
//!
//! It must never call an agent or know about HTTP.

mod accounts;
mod audit;
mod candidates;
mod fabrics;
mod fwrules;
mod images;
mod instance_meta;
mod instances;
mod jobs;
mod join_tokens;
mod keys;
mod leases;
mod networks;
mod packages;
mod pools;
pub mod primary;
mod quotas;
mod resize;
mod retention;
mod servers;
mod snapshots;
mod states;
mod tokens;

pub use audit::AuditFilter;
pub use fabrics::OverlayPeer;
pub use fwrules::{ActiveRule, FwInstance};
pub use images::ImageFilter;
pub use instance_meta::{InstanceFlag, MapChange, MapChanged, MapField, metadata_strings};
pub use instances::{AgentTarget, Created, InstanceFilter, InstanceSizes, NewInstance, NicPlan};
pub use jobs::{Fence, NewJob};
pub use join_tokens::JoinTokenRefusal;
pub use keys::MetadataSource;
pub use networks::NewNetwork;
pub use packages::PackageFilter;
pub use quotas::Need;
pub use servers::{Beat, NewServer, ServerFilter, SetupBegin};
pub use snapshots::InstanceLock;
pub use tokens::TokenOwner;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Datastore {
    pool: PgPool,
    /// How old the last heartbeat may be before a server is `unknown`.
    heartbeat_deadline: Duration,
    /// The quotas of accounts that set none of their own.
    default_quotas: nereid_api::QuotaValues,
    /// What the scheduler keeps of the servers between placements.
    candidate_cache: std::sync::Arc<candidates::CandidateCache>,
    /// The database's hosts and which takes writes (every pool follows it).
    primary: std::sync::Arc<primary::Primary>,
}

impl Datastore {
    /// Connects (retrying for up to `wait`) and applies the embedded migrations.
    pub async fn connect(
        url: &str,
        heartbeat_deadline: Duration,
        wait: Duration,
        max_connections: u32,
    ) -> anyhow::Result<Datastore> {
        let hosts = primary::hosts(url)?;
        let deadline = tokio::time::Instant::now() + wait;
        // With several hosts, the one that takes writes.
        let current = loop {
            if hosts.len() == 1 {
                break 0;
            }
            match primary::find(&hosts).await {
                Some(i) => break i,
                None if tokio::time::Instant::now() < deadline => {
                    tracing::warn!("no database host takes writes yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                None => anyhow::bail!("none of the database's hosts takes writes"),
            }
        };
        let primary = primary::Primary::new(hosts, current);
        let opts: PgConnectOptions = primary.options();
        let pool = loop {
            match PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts.clone())
                .await
            {
                Ok(p) => break p,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!("database not reachable yet ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(anyhow::anyhow!(e).context("cannot connect to the database")),
            }
        };
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!(e).context("applying database migrations"))?;
        primary.follow(&pool);
        primary.spawn_watch();
        Ok(Datastore {
            pool,
            heartbeat_deadline,
            default_quotas: Default::default(),
            candidate_cache: Default::default(),
            primary,
        })
    }

    /// The same database through a pool of its own, of `max_connections`.
    pub async fn with_pool(&self, max_connections: u32) -> anyhow::Result<Datastore> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(self.primary.options())
            .await?;
        self.primary.follow(&pool);
        Ok(Datastore {
            pool,
            ..self.clone()
        })
    }

    /// The quotas of accounts that set none of their own.
    pub fn with_default_quotas(mut self, q: nereid_api::QuotaValues) -> Datastore {
        self.default_quotas = q;
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Decodes a page token (the id of the last item of the previous page).
pub fn parse_page_token(token: Option<&str>) -> Result<Option<uuid::Uuid>> {
    token
        .map(|t| parse_uuid(t).ok_or_else(|| Error::invalid("page_token", "malformed page token")))
        .transpose()
}

/// A UUID in its hyphenated form only (what the OpenAPI document's pattern
/// says; `Uuid::parse_str` would also take the simple, braced and URN forms).
pub fn parse_uuid(s: &str) -> Option<uuid::Uuid> {
    (s.len() == 36)
        .then(|| uuid::Uuid::parse_str(s).ok())
        .flatten()
}

/// Checks `limit` and returns it with its default.
pub fn page_limit(limit: Option<u32>) -> Result<i64> {
    let l = limit.unwrap_or(nereid_api::DEFAULT_PAGE_LIMIT);
    if l == 0 || l > nereid_api::MAX_PAGE_LIMIT {
        return Err(Error::invalid(
            "limit",
            format!("must be within 1..={}", nereid_api::MAX_PAGE_LIMIT),
        ));
    }
    Ok(l as i64)
}

/// Cuts a fetched `limit + 1` rows down to a page; the next page token is
/// `token_of` the last item kept (its id, or its address for IP listings).
pub fn into_page<T, K: ToString>(
    mut rows: Vec<T>,
    limit: i64,
    token_of: impl Fn(&T) -> K,
) -> nereid_api::Page<T> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_page_token = if more {
        rows.last().map(|r| token_of(r).to_string())
    } else {
        None
    };
    nereid_api::Page {
        items: rows,
        next_page_token,
    }
}

/// True when the error is a violation of the named unique constraint.
pub fn is_unique_violation(e: &sqlx::Error, constraint: &str) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.code().as_deref() == Some("23505") && d.constraint() == Some(constraint)
        }
        _ => false,
    }
}
