//! Instances, their NICs and the capacity they hold on servers.
//!
//! Capacity is taken by a conditional update of the server row (so racing
//! placements cannot over-commit) and given back by flipping the instance's
//! `capacity_held` in the same transaction (so it is given back once).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use nereid_api::{
    Accelerator, AccountId, Brand, ImageId, Instance, InstanceId, InstanceNic, InstanceState,
    JobId, NetworkId, PackageId, Page, ServerId, ServerSetup,
};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Postgres, Transaction};
use uuid::Uuid;

use super::Datastore;
use super::jobs::{Fence, NewJob, fence_check};
use super::states::{
    INSTANCE_DELETED, INSTANCE_FAILED, INSTANCE_PROVISIONING, INSTANCE_SETTLED, INSTANCE_UNKNOWN,
    INSTANCE_UP_OR_DOWN, JOB_UNFINISHED,
};
use crate::error::{Error, Result};
use crate::scheduler::{Candidate, Rejection};

/// What `POST /v1/instances` records, with its IDs chosen up front.
pub struct NewInstance {
    pub id: InstanceId,
    pub owner: AccountId,
    pub alias: String,
    pub brand: Brand,
    pub image_id: ImageId,
    pub package_id: PackageId,
    pub ram_mb: u64,
    pub disk_mb: u64,
    pub vcpus: u32,
    pub networks: Vec<NetworkId>,
    pub tags: BTreeMap<String, serde_json::Value>,
    pub metadata: BTreeMap<String, String>,
    pub firewall_enabled: bool,
    pub deletion_protection: bool,
    pub isolated_ids: bool,
    pub nic_options: Vec<nereid_api::NicOptions>,
    pub idempotency_key: Option<String>,
    /// Whether the package is already marked used (skips a write).
    pub package_used: bool,
}

/// How a create ended.
pub enum Created {
    /// Placed on a server, with its provision job queued.
    New(Instance, JobId),
    /// The idempotency key was used before: the first instance and its job.
    Replayed(Instance, JobId),
}

#[derive(Debug, Default, Clone)]
pub struct InstanceFilter {
    pub owner: Option<AccountId>,
    pub state: Option<InstanceState>,
    pub server: Option<ServerId>,
    pub alias: Option<String>,
    /// `key` or `key=value` (string values).
    pub tag: Option<(String, Option<String>)>,
}

/// An instance's NIC with what the agent needs to plumb it.
#[derive(Debug, Clone)]
pub struct NicPlan {
    pub network_id: NetworkId,
    pub nic_tag: String,
    pub vlan_id: u16,
    /// The VXLAN id of an overlay (fabric) network.
    pub vni: Option<u32>,
    /// The node provides the gateway and NATs it out (a fabric network's).
    pub internet_nat: bool,
    /// That NAT's own NIC on the NAT network, once the node has one.
    pub nat: Option<Box<NicPlan>>,
    /// What an operator lets it send beyond its MAC and address.
    pub options: nereid_api::NicOptions,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<String>,
    pub resolvers: Vec<String>,
    pub mtu: u32,
    pub mac: String,
}

#[derive(sqlx::FromRow)]
struct InstanceRow {
    id: Uuid,
    owner: Uuid,
    alias: String,
    brand: String,
    accelerator: Option<String>,
    image_id: Option<Uuid>,
    package_id: Uuid,
    server_id: Option<Uuid>,
    state: String,
    ram_mb: i64,
    disk_mb: i64,
    vcpus: i32,
    networks: Vec<Uuid>,
    tags: Json<BTreeMap<String, serde_json::Value>>,
    metadata: Json<BTreeMap<String, String>>,
    firewall_enabled: bool,
    deletion_protection: bool,
    isolated_ids: bool,
    error: Option<String>,
    job_id: Option<Uuid>,
    nics: Json<Vec<InstanceNic>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl InstanceRow {
    fn into_api(self) -> Result<Instance> {
        let state = InstanceState::parse(&self.state).ok_or_else(|| {
            Error::Internal(format!("instance {} has state {:?}", self.id, self.state))
        })?;
        let brand = Brand::parse(&self.brand).ok_or_else(|| {
            Error::Internal(format!("instance {} has brand {:?}", self.id, self.brand))
        })?;
        Ok(Instance {
            id: self.id.into(),
            owner: self.owner.into(),
            alias: self.alias,
            brand,
            accelerator: self.accelerator.as_deref().and_then(Accelerator::parse),
            image_id: self.image_id.map(Into::into),
            package_id: self.package_id.into(),
            server_id: self.server_id.map(Into::into),
            state,
            memory_mb: self.ram_mb as u64,
            disk_mb: self.disk_mb as u64,
            vcpus: self.vcpus as u32,
            networks: self.networks.into_iter().map(Into::into).collect(),
            nics: self.nics.0,
            tags: self.tags.0,
            metadata: self.metadata.0,
            firewall_enabled: self.firewall_enabled,
            deletion_protection: self.deletion_protection,
            isolated_ids: self.isolated_ids,
            error: self.error,
            job_id: self.job_id.map(Into::into),
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const SELECT: &str = "SELECT i.id, i.owner, i.alias, i.brand, i.accelerator, i.image_id, i.package_id, i.server_id, i.state,
        i.ram_mb, i.disk_mb, i.vcpus, i.networks, i.tags, i.metadata, i.firewall_enabled,
        i.deletion_protection, i.isolated_ids, i.error,
        (SELECT j.id FROM jobs j WHERE j.instance_id = i.id ORDER BY j.created_at DESC LIMIT 1) AS job_id,
        COALESCE((SELECT jsonb_agg(jsonb_build_object('network_id', n.network_id, 'ip', host(n.ip),
                    'prefix_len', masklen(w.subnet), 'gateway', host(w.gateway), 'mac', n.mac,
                    'primary', n.idx = 0, 'options', COALESCE(i.nic_options -> n.idx, '{}'::jsonb)) ORDER BY n.idx)
                  FROM instance_nics n JOIN networks w ON w.id = n.network_id
                  WHERE n.instance_id = i.id), '[]'::jsonb) AS nics,
        i.created_at, i.updated_at
    FROM instances i";

/// A MAC address in the locally administered range, from the instance id and NIC index.
fn mac_for(id: InstanceId, idx: u32) -> String {
    let b = id.as_uuid().into_bytes();
    // 0x92: locally administered, unicast. The last bytes of a UUIDv7 are random.
    format!(
        "92:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[11],
        b[12],
        b[13],
        b[14],
        b[15] ^ (idx as u8)
    )
}

impl Datastore {
    /// Records a new instance, places it on the first server of `ranked`
    /// that still has room (a conditional update per try), and queues its
    /// provision job; all in one transaction, so a 409 leaves nothing.
    pub async fn instance_create(
        &self,
        new: &NewInstance,
        ranked: &[Candidate],
        job: &NewJob,
    ) -> Result<Created> {
        if let Some(key) = &new.idempotency_key
            && let Some(found) = self.instance_by_idempotency_key(new.owner, key).await?
        {
            return Ok(found);
        }
        let mut tx = self.pool.begin().await?;
        // The owner's quotas, counted from the rows under the account's lock.
        let need = super::quotas::Need {
            instances: 1,
            memory_mb: new.ram_mb,
            disk_mb: new.disk_mb,
            vcpus: new.vcpus.into(),
            ..Default::default()
        };
        super::quotas::reserve(&mut tx, new.owner, &self.default_quotas, &need).await?;
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO instances (id, owner, alias, brand, image_id, package_id, state, ram_mb, disk_mb,
                    vcpus, tags, metadata, firewall_enabled, networks, idempotency_key, isolated_ids,
                    deletion_protection, nic_options)
             VALUES ($1, $2, $3, $4, $5, $6, {INSTANCE_PROVISIONING}, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                     $17)
             ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        )))
        .bind(new.id.as_uuid())
        .bind(new.owner.as_uuid())
        .bind(&new.alias)
        .bind(new.brand.as_str())
        .bind(new.image_id.as_uuid())
        .bind(new.package_id.as_uuid())
        .bind(new.ram_mb as i64)
        .bind(new.disk_mb as i64)
        .bind(new.vcpus as i32)
        .bind(Json(&new.tags))
        .bind(Json(&new.metadata))
        .bind(new.firewall_enabled)
        .bind(new.networks.iter().map(|n| n.as_uuid()).collect::<Vec<_>>())
        .bind(new.idempotency_key.as_deref())
        .bind(new.isolated_ids)
        .bind(new.deletion_protection)
        .bind(Json(&new.nic_options))
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            _ if super::is_unique_violation(&e, "instances_alias_idx") => {
                Error::Conflict(format!("you already have an instance named {:?}", new.alias))
            }
            sqlx::Error::Database(d) if d.constraint() == Some("instances_image_id_fkey") => {
                Error::Conflict(format!("image {} was deleted meanwhile", new.image_id))
            }
            _ => e.into(),
        })?;
        if inserted.rows_affected() == 0 {
            // A concurrent request with the same key won.
            drop(tx);
            let key = new.idempotency_key.as_deref().unwrap_or_default();
            return self
                .instance_by_idempotency_key(new.owner, key)
                .await?
                .ok_or_else(|| Error::Internal("an idempotency key vanished".into()));
        }
        if !new.package_used {
            sqlx::query("UPDATE packages SET used = true WHERE id = $1 AND NOT used")
                .bind(new.package_id.as_uuid())
                .execute(&mut *tx)
                .await?;
        }
        super::jobs::insert(&mut tx, job).await?;
        // Last, so the server row stays locked only from here to the commit.
        let mut placed = None;
        for c in ranked {
            if reserve(&mut tx, c, new).await? {
                placed = Some(c.id);
                break;
            }
        }
        let Some(server) = placed else {
            let mut r = Rejection {
                servers: ranked.len(),
                ..Default::default()
            };
            r.reasons
                .insert("filled up by concurrent placements".into(), ranked.len());
            return Err(Error::InsufficientCapacity(r.to_string()));
        };
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("instance.create", "instance", new.id).owned_by(new.owner),
        )
        .await?;
        tx.commit().await?;
        self.candidate_cache
            .note_placement(server, new.ram_mb, new.disk_mb, new.vcpus)
            .await;
        Ok(Created::New(self.instance_get(new.id, None).await?, job.id))
    }

    async fn instance_by_idempotency_key(
        &self,
        owner: AccountId,
        key: &str,
    ) -> Result<Option<Created>> {
        let row = sqlx::query_as::<_, InstanceRow>(AssertSqlSafe(format!(
            "{SELECT} WHERE i.owner = $1 AND i.idempotency_key = $2"
        )))
        .bind(owner.as_uuid())
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let first_job: (Uuid,) = sqlx::query_as(
            "SELECT id FROM jobs WHERE instance_id = $1 ORDER BY created_at LIMIT 1",
        )
        .bind(row.id)
        .fetch_one(&self.pool)
        .await?;
        Ok(Some(Created::Replayed(row.into_api()?, first_job.0.into())))
    }

    /// One instance; with `owner`, another account's instance is NotFound.
    /// Deleted instances stay readable.
    pub async fn instance_get(&self, id: InstanceId, owner: Option<AccountId>) -> Result<Instance> {
        sqlx::query_as::<_, InstanceRow>(AssertSqlSafe(format!(
            "{SELECT} WHERE i.id = $1 AND ($2::uuid IS NULL OR i.owner = $2)"
        )))
        .bind(id.as_uuid())
        .bind(owner.map(|o| o.as_uuid()))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::not_found("instance", id))?
        .into_api()
    }

    /// Instances, oldest first; deleted ones only when `state=deleted` is asked.
    pub async fn instance_list(
        &self,
        f: &InstanceFilter,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<Instance>> {
        let (tag_key, tag_value) = match &f.tag {
            Some((k, v)) => (Some(k.as_str()), v.as_deref()),
            None => (None, None),
        };
        let rows = sqlx::query_as::<_, InstanceRow>(AssertSqlSafe(format!(
            "{SELECT} WHERE ($1::uuid IS NULL OR i.owner = $1)
               AND (CASE WHEN $2::text IS NULL THEN i.state <> {INSTANCE_DELETED} ELSE i.state = $2 END)
               AND ($3::uuid IS NULL OR i.server_id = $3)
               AND ($4::text IS NULL OR i.alias = $4)
               AND ($5::text IS NULL OR (i.tags ? $5 AND ($6::text IS NULL OR i.tags->>$5 = $6)))
               AND ($7::uuid IS NULL OR i.id > $7)
             ORDER BY i.id LIMIT $8"
        )))
        .bind(f.owner.map(|o| o.as_uuid()))
        .bind(f.state.map(|s| s.as_str()))
        .bind(f.server.map(|s| s.as_uuid()))
        .bind(f.alias.as_deref())
        .bind(tag_key)
        .bind(tag_value)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .into_iter()
            .map(InstanceRow::into_api)
            .collect::<Result<Vec<_>>>()?;
        Ok(super::into_page(items, limit, |i| i.id.as_uuid()))
    }

    /// Sets the state (and bumps `updated_at`); `from` limits the states it
    /// may leave. A job's run passes its fence: the write then happens only
    /// while the run holds its claim.
    pub async fn instance_set_state(
        &self,
        id: InstanceId,
        to: InstanceState,
        from: &[InstanceState],
        error: Option<&str>,
        fence: Option<&Fence>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        if let Some(f) = fence {
            fence_check(&mut tx, f).await?;
        }
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let done = sqlx::query(AssertSqlSafe(format!(
            "UPDATE instances SET state = $2, error = COALESCE($4, error), updated_at = now(),
                    deleted_at = CASE WHEN $2 = {INSTANCE_DELETED} THEN now() ELSE deleted_at END
             WHERE id = $1 AND (cardinality($3::text[]) = 0 OR state = ANY($3))"
        )))
        .bind(id.as_uuid())
        .bind(to.as_str())
        .bind(&from)
        .bind(error)
        .execute(&mut *tx)
        .await?;
        if to == InstanceState::Deleted && done.rows_affected() == 1 {
            forget_snapshots(&mut tx, id).await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// A state a node reported (with why, for a failure), applied when it is
    /// about the generation the database has (or newer) and no job is
    /// working on the instance.
    pub async fn instance_apply_report(
        &self,
        server: ServerId,
        id: InstanceId,
        state: InstanceState,
        generation: u64,
        reason: Option<&str>,
    ) -> Result<bool> {
        let done = sqlx::query(AssertSqlSafe(format!(
            "UPDATE instances i SET state = $3, updated_at = now(),
                    error = CASE WHEN $3 = {INSTANCE_FAILED} THEN COALESCE($5, i.error) ELSE i.error END
             WHERE i.id = $1 AND i.server_id = $2 AND i.generation <= $4 AND i.state <> $3
               AND i.state IN {INSTANCE_SETTLED}
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.instance_id = i.id
                               AND j.state IN {JOB_UNFINISHED})"
        )))
        .bind(id.as_uuid())
        .bind(server.as_uuid())
        .bind(state.as_str())
        .bind(generation as i64)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the accelerator a VM runs under, as its node reported it.
    pub async fn instance_set_accelerator(
        &self,
        id: InstanceId,
        a: Accelerator,
        fence: &Fence,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        fence_check(&mut tx, fence).await?;
        sqlx::query(
            "UPDATE instances SET accelerator = $2 WHERE id = $1 AND accelerator IS DISTINCT FROM $2",
        )
        .bind(id.as_uuid())
        .bind(a.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The settled instances (no job working on them) of these servers, by
    /// server: one statement for many servers (the reconciler's pass).
    pub async fn instances_settled_on(
        &self,
        servers: &[ServerId],
    ) -> Result<HashMap<ServerId, Vec<(InstanceId, InstanceState, u64)>>> {
        let ids: Vec<Uuid> = servers.iter().map(|s| s.as_uuid()).collect();
        let rows: Vec<(Uuid, Uuid, String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT i.server_id, i.id, i.state, i.metadata_generation FROM instances i
             WHERE i.server_id = ANY($1) AND i.state IN {INSTANCE_SETTLED}
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.instance_id = i.id
                               AND j.state IN {JOB_UNFINISHED})"
        )))
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut by_server: HashMap<ServerId, Vec<_>> = HashMap::new();
        for (server, id, st, g) in rows {
            if let Some(st) = InstanceState::parse(&st) {
                by_server
                    .entry(server.into())
                    .or_default()
                    .push((id.into(), st, g as u64));
            }
        }
        Ok(by_server)
    }

    /// Marks `unknown` the settled instances of servers whose heartbeats stopped.
    pub async fn instances_mark_unknown_on_lost_servers(&self) -> Result<u64> {
        let done = sqlx::query(AssertSqlSafe(format!(
            "UPDATE instances i SET state = {INSTANCE_UNKNOWN}, updated_at = now()
             FROM {} WHERE s.id = i.server_id AND s.status = {INSTANCE_UNKNOWN}
               AND i.state IN {INSTANCE_UP_OR_DOWN}
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.instance_id = i.id
                               AND j.state IN {JOB_UNFINISHED})",
            super::servers::SERVERS
        )))
        .bind(self.heartbeat_deadline.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Gives the instance's capacity back to its server, once.
    pub async fn instance_release_capacity(&self, id: InstanceId, fence: &Fence) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        fence_check(&mut tx, fence).await?;
        release_capacity(&mut tx, id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives every address of the instance back to its network (NIC rows first).
    pub async fn instance_free_nics(&self, id: InstanceId, fence: &Fence) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        fence_check(&mut tx, fence).await?;
        free_nics(&mut tx, id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes an instance without its node (an operator's way out when the
    /// node does not answer): the job working on it is ended (its run's
    /// fence no longer holds, so it stops), its capacity and addresses are
    /// given back, and what it may have left on its node is recorded, to be
    /// removed there once the node answers. Deleting a deleted one is a no-op.
    pub async fn instance_force_delete(&self, id: InstanceId, reason: &str) -> Result<Instance> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(Option<Uuid>, String, Uuid)> = sqlx::query_as(
            "SELECT server_id, state, owner FROM instances WHERE id = $1 FOR UPDATE",
        )
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((server, state, owner)) = row else {
            return Err(Error::not_found("instance", id));
        };
        if state != InstanceState::Deleted.as_str() {
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE jobs SET state = 'failed', error = $2, finished_at = now(), updated_at = now(),
                        lease_owner = NULL, lease_token = NULL
                 WHERE instance_id = $1 AND state IN {JOB_UNFINISHED}"
            )))
            .bind(id.as_uuid())
            .bind(reason)
            .execute(&mut *tx)
            .await?;
            release_capacity(&mut tx, id).await?;
            free_nics(&mut tx, id).await?;
            if let Some(server) = server {
                sqlx::query(
                    "INSERT INTO node_leftovers (server_id, instance_id) VALUES ($1, $2)
                     ON CONFLICT DO NOTHING",
                )
                .bind(server)
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE instances SET state = {INSTANCE_DELETED}, deleted_at = now(), updated_at = now(),
                        error = COALESCE(error, $2) WHERE id = $1"
            )))
            .bind(id.as_uuid())
            .bind(reason)
            .execute(&mut *tx)
            .await?;
            forget_snapshots(&mut tx, id).await?;
            crate::audit::record(
                &mut tx,
                crate::audit::Event::new("instance.force_delete", "instance", id)
                    .owned_by(owner.into()),
            )
            .await?;
        }
        tx.commit().await?;
        self.instance_get(id, None).await
    }

    /// The live instances of a server (to retire it).
    pub async fn instances_live_on(&self, server: ServerId) -> Result<Vec<InstanceId>> {
        let rows: Vec<(Uuid,)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT id FROM instances WHERE server_id = $1 AND state <> {INSTANCE_DELETED}"
        )))
        .bind(server.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0.into()).collect())
    }

    /// What force-deleted instances may have left on this server.
    /// What forced deletes left on nodes, by server (a short list: rows
    /// go once the node removed them).
    pub async fn leftovers(&self) -> Result<HashMap<ServerId, Vec<InstanceId>>> {
        let rows: Vec<(Uuid, Uuid)> =
            sqlx::query_as("SELECT server_id, instance_id FROM node_leftovers")
                .fetch_all(&self.pool)
                .await?;
        let mut by_server: HashMap<ServerId, Vec<InstanceId>> = HashMap::new();
        for (server, id) in rows {
            by_server.entry(server.into()).or_default().push(id.into());
        }
        Ok(by_server)
    }

    pub async fn leftover_removed(&self, server: ServerId, id: InstanceId) -> Result<()> {
        sqlx::query("DELETE FROM node_leftovers WHERE server_id = $1 AND instance_id = $2")
            .bind(server.as_uuid())
            .bind(id.as_uuid())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Allocates an address on each of the instance's networks that has no
    /// NIC yet: one statement per NIC takes the lowest free address and
    /// writes the NIC row together (so a crash never leaves one without the
    /// other), and does nothing for a NIC that exists.
    pub async fn instance_allocate_nics(&self, id: InstanceId, fence: &Fence) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        fence_check(&mut tx, fence).await?;
        let (networks,): (Vec<Uuid>,) =
            sqlx::query_as("SELECT networks FROM instances WHERE id = $1")
                .bind(id.as_uuid())
                .fetch_one(&mut *tx)
                .await?;
        for (idx, net) in networks.iter().enumerate() {
            let done: Option<(bool,)> = sqlx::query_as(
                "WITH existing AS (
                     SELECT 1 FROM instance_nics WHERE instance_id = $2 AND idx = $3),
                 taken AS (
                     UPDATE network_ips SET owner_type = 'instance', owner_id = $2, updated_at = now()
                     WHERE NOT EXISTS (SELECT 1 FROM existing) AND (network_id, ip) = (
                         SELECT network_id, ip FROM network_ips
                         WHERE network_id = $1 AND owner_type IS NULL AND in_range
                         ORDER BY ip LIMIT 1 FOR UPDATE SKIP LOCKED)
                     RETURNING network_id, ip),
                 nic AS (
                     INSERT INTO instance_nics (instance_id, idx, network_id, ip, mac)
                     SELECT $2, $3, network_id, ip, $4 FROM taken RETURNING 1)
                 SELECT EXISTS (SELECT 1 FROM existing) OR EXISTS (SELECT 1 FROM nic)",
            )
            .bind(net)
            .bind(id.as_uuid())
            .bind(idx as i32)
            .bind(mac_for(id, idx as u32))
            .fetch_optional(&mut *tx)
            .await?;
            if !done.is_some_and(|d| d.0) {
                return Err(Error::Exhausted(format!(
                    "network {net} has no free address left in its provision range"
                )));
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// What the node's spec needs of an instance and its package, in one query.
    pub async fn instance_sizes(&self, id: InstanceId) -> Result<InstanceSizes> {
        type Row = (
            String,
            Option<Uuid>,
            String,
            i64,
            i64,
            i32,
            i64,
            i64,
            i32,
            bool,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT i.alias, i.image_id, i.brand, p.memory_mb, p.swap_mb, p.cpu_cap, p.disk_mb,
                    i.generation, p.vcpus, i.isolated_ids
             FROM instances i JOIN packages p ON p.id = i.package_id WHERE i.id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        let r = row.ok_or_else(|| Error::not_found("instance", id))?;
        let brand = Brand::parse(&r.2)
            .ok_or_else(|| Error::Internal(format!("instance {id} has brand {:?}", r.2)))?;
        Ok(InstanceSizes {
            alias: r.0,
            image_id: r.1.map(Into::into),
            brand,
            memory_mb: r.3 as u64,
            swap_mb: r.4 as u64,
            cpu_cap: r.5 as u32,
            disk_mb: r.6 as u64,
            generation: r.7 as u64,
            vcpus: r.8 as u32,
            isolated_ids: r.9,
        })
    }

    pub async fn instance_nic_plans(&self, id: InstanceId) -> Result<Vec<NicPlan>> {
        type Row = (
            Uuid,
            String,
            i32,
            String,
            i32,
            Option<String>,
            Vec<String>,
            i32,
            String,
            Option<i32>,
            bool,
            Option<Json<nereid_api::NicOptions>>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT n.network_id, w.nic_tag, w.vlan_id, host(n.ip), masklen(w.subnet), host(w.gateway),
                    ARRAY(SELECT host(r) FROM unnest(w.resolvers) r), w.mtu, n.mac, w.vni,
                    w.internet_nat AND w.gateway IS NOT NULL, i.nic_options -> n.idx
             FROM instance_nics n JOIN networks w ON w.id = n.network_id
             JOIN instances i ON i.id = n.instance_id
             WHERE n.instance_id = $1 ORDER BY n.idx",
        )
        .bind(id.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(NicPlan {
                    network_id: r.0.into(),
                    nic_tag: r.1,
                    vlan_id: r.2 as u16,
                    vni: r.9.map(|v| v as u32),
                    internet_nat: r.10,
                    nat: None,
                    options: r.11.map(|o| o.0).unwrap_or_default(),
                    ip: r.3.parse().map_err(|_| {
                        Error::Internal(format!("instance {id} has a NIC with address {:?}", r.3))
                    })?,
                    prefix_len: r.4 as u8,
                    gateway: r.5,
                    resolvers: r.6,
                    mtu: r.7 as u32,
                    mac: r.8,
                })
            })
            .collect()
    }

    /// The server an instance is on, with what it takes to call its agent.
    pub async fn instance_placement(&self, id: InstanceId) -> Result<Option<AgentTarget>> {
        let row: Option<(Uuid, String, Option<Json<ServerSetup>>)> = sqlx::query_as(
            "SELECT s.id, s.agent_address, s.setup FROM instances i
             JOIN servers s ON s.id = i.server_id WHERE i.id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(id, address, setup)| AgentTarget {
            server: id.into(),
            address,
            setup: setup.map(|s| s.0).unwrap_or_default(),
        }))
    }

    /// What the database knows of these instance ids: (id, server, state).
    pub async fn instances_known(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, Option<Uuid>, String)>> {
        Ok(
            sqlx::query_as("SELECT id, server_id, state FROM instances WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// The agent of one set-up server.
    pub async fn agent_target(&self, server: ServerId) -> Result<AgentTarget> {
        self.agent_targets_where(Some(server))
            .await?
            .pop()
            .ok_or_else(|| Error::Conflict(format!("server {server} is not set up")))
    }

    /// Every set-up server's agent (for the reconciler).
    pub async fn agent_targets(&self) -> Result<Vec<AgentTarget>> {
        self.agent_targets_where(None).await
    }

    async fn agent_targets_where(&self, only: Option<ServerId>) -> Result<Vec<AgentTarget>> {
        let rows: Vec<(Uuid, String, Option<Json<ServerSetup>>)> = sqlx::query_as(
            "SELECT id, agent_address, setup FROM servers
             WHERE setup_state = 'setup' AND ($1::uuid IS NULL OR id = $1)",
        )
        .bind(only.map(|s| s.as_uuid()))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, address, setup)| AgentTarget {
                server: id.into(),
                address,
                setup: setup.map(|s| s.0).unwrap_or_default(),
            })
            .collect())
    }
}

/// An instance's name, image and package sizes (for the node's spec).
#[derive(Debug, Clone)]
pub struct InstanceSizes {
    pub alias: String,
    pub image_id: Option<ImageId>,
    pub brand: Brand,
    /// The package's vCPUs (what a VM gets; containers ignore it).
    pub vcpus: u32,
    /// A container in a host id range of its own.
    pub isolated_ids: bool,
    pub memory_mb: u64,
    pub swap_mb: u64,
    pub cpu_cap: u32,
    pub disk_mb: u64,
    pub generation: u64,
}

/// How to reach the agent of a server.
#[derive(Debug, Clone)]
pub struct AgentTarget {
    pub server: ServerId,
    pub address: String,
    pub setup: ServerSetup,
}

/// Gives the instance's capacity back to its server, once (the flag on the
/// instance says whether it still holds it).
async fn release_capacity(tx: &mut Transaction<'_, Postgres>, id: InstanceId) -> Result<()> {
    let held: Option<(Uuid, i64, i64, i32)> = sqlx::query_as(
        "UPDATE instances SET capacity_held = false WHERE id = $1 AND capacity_held
         RETURNING server_id, ram_mb, disk_mb, vcpus",
    )
    .bind(id.as_uuid())
    .fetch_optional(&mut **tx)
    .await?;
    if let Some((server, ram, disk, vcpus)) = held {
        sqlx::query(
            "UPDATE servers SET used_ram_mb = used_ram_mb - $2, used_disk_mb = used_disk_mb - $3,
                    used_vcpus = used_vcpus - $4 WHERE id = $1",
        )
        .bind(server)
        .bind(ram)
        .bind(disk)
        .bind(vcpus)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Gives every address of the instance back to its network (NIC rows first).
async fn free_nics(tx: &mut Transaction<'_, Postgres>, id: InstanceId) -> Result<()> {
    sqlx::query("DELETE FROM instance_nics WHERE instance_id = $1")
        .bind(id.as_uuid())
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE network_ips SET owner_type = NULL, owner_id = NULL, updated_at = now()
         WHERE owner_type = 'instance' AND owner_id = $1 AND in_range",
    )
    .bind(id.as_uuid())
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "DELETE FROM network_ips WHERE owner_type = 'instance' AND owner_id = $1 AND NOT in_range",
    )
    .bind(id.as_uuid())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Takes the instance's capacity on `c` if it still fits (decided by the row's
/// current values, not the snapshot's) and places the instance there, in one
/// statement.
async fn reserve(
    tx: &mut Transaction<'_, Postgres>,
    c: &Candidate,
    new: &NewInstance,
) -> Result<bool> {
    let done = sqlx::query(
        "WITH r AS (
             UPDATE servers SET used_ram_mb = used_ram_mb + $2, used_disk_mb = used_disk_mb + $3,
                    used_vcpus = used_vcpus + $4
             WHERE id = $1 AND NOT reserved AND setup_state = 'setup'
               AND used_ram_mb + $2 <= $5 AND used_disk_mb + $3 <= $6 AND used_vcpus + $4 <= $7
             RETURNING id)
         UPDATE instances SET server_id = r.id, capacity_held = true FROM r WHERE instances.id = $8",
    )
    .bind(c.id.as_uuid())
    .bind(new.ram_mb as i64)
    .bind(new.disk_mb as i64)
    .bind(new.vcpus as i32)
    .bind(c.ram_total_mb as i64)
    .bind(c.disk_total_mb as i64)
    .bind(c.vcpus_total as i32)
    .bind(new.id.as_uuid())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A deleted instance's snapshots went with its dataset.
async fn forget_snapshots(tx: &mut sqlx::PgConnection, id: InstanceId) -> Result<()> {
    sqlx::query("DELETE FROM instance_snapshots WHERE instance_id = $1")
        .bind(id.as_uuid())
        .execute(tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_locally_administered_unicast_and_differ_per_nic() {
        let id = InstanceId::new();
        let a = mac_for(id, 0);
        let b = mac_for(id, 1);
        assert_ne!(a, b);
        assert!(a.starts_with("92:"));
        assert_eq!(a.len(), 17);
    }
}
