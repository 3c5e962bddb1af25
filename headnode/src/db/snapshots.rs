//! instance_snapshots: the snapshots the headnode asked nodes to make, with
//! the intent rows that make create and delete retryable by name, and the
//! instance lock a rollback holds while its node works.

use chrono::{DateTime, Utc};
use nereid_api::{AccountId, InstanceId, InstanceState, Snapshot};
use sqlx::{AssertSqlSafe, Postgres, Transaction};
use uuid::Uuid;

use super::Datastore;
use super::states::{INSTANCE_DELETED, JOB_UNFINISHED};
use crate::error::{Error, Result};

#[derive(sqlx::FromRow)]
struct SnapshotRow {
    instance_id: Uuid,
    name: String,
    state: String,
    used_bytes: i64,
    created_at: DateTime<Utc>,
}

impl From<SnapshotRow> for Snapshot {
    fn from(r: SnapshotRow) -> Snapshot {
        Snapshot {
            instance_id: r.instance_id.into(),
            name: r.name,
            state: r.state,
            used_bytes: r.used_bytes as u64,
            created_at: r.created_at,
        }
    }
}

const COLUMNS: &str = "instance_id, name, state, used_bytes, created_at";

/// An instance row locked (`FOR UPDATE`) while its node rolls it back: no
/// job can be queued for it until this ends.
pub struct InstanceLock {
    tx: Transaction<'static, Postgres>,
    pub id: InstanceId,
    pub owner: AccountId,
    pub state: InstanceState,
    /// A job is working on the instance.
    pub busy: bool,
}

impl InstanceLock {
    /// Forgets the snapshots a rollback destroyed, and ends the lock.
    pub async fn finish_rollback(mut self, snapshot: &str, destroyed: &[String]) -> Result<()> {
        sqlx::query("DELETE FROM instance_snapshots WHERE instance_id = $1 AND name = ANY($2)")
            .bind(self.id.as_uuid())
            .bind(destroyed)
            .execute(&mut *self.tx)
            .await?;
        let target = format!("{}@{snapshot}", self.id);
        crate::audit::record(
            &mut self.tx,
            crate::audit::Event::new("instance.snapshot.rollback", "snapshot", &target)
                .owned_by(self.owner),
        )
        .await?;
        self.tx.commit().await?;
        Ok(())
    }
}

impl Datastore {
    /// Records the intent to snapshot, or finds the row of an earlier try of
    /// the same name still `creating` (the retry completes it). `limit`
    /// bounds the instance's snapshots; the account needs room under its
    /// disk quota.
    pub async fn snapshot_begin(
        &self,
        id: InstanceId,
        scope: Option<AccountId>,
        name: &str,
        limit: usize,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let owner: Option<(Uuid,)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT owner FROM instances WHERE id = $1 AND ($2::uuid IS NULL OR owner = $2)
               AND state <> {INSTANCE_DELETED} FOR UPDATE"
        )))
        .bind(id.as_uuid())
        .bind(scope.map(|o| o.as_uuid()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((owner,)) = owner else {
            return Err(Error::not_found("instance", id));
        };
        // Snapshots hold disk: an account at its disk quota makes no more.
        super::quotas::reserve(
            &mut tx,
            owner.into(),
            &self.default_quotas,
            &super::quotas::Need {
                disk_mb: 1,
                ..Default::default()
            },
        )
        .await?;
        let existing: Vec<(String, String)> =
            sqlx::query_as("SELECT name, state FROM instance_snapshots WHERE instance_id = $1")
                .bind(id.as_uuid())
                .fetch_all(&mut *tx)
                .await?;
        match existing.iter().find(|(n, _)| n == name) {
            Some((_, state)) if state == "creating" => return Ok(()),
            Some(_) => {
                return Err(Error::Conflict(format!(
                    "instance {id} already has a snapshot named {name:?}"
                )));
            }
            None if existing.len() >= limit => {
                return Err(Error::Conflict(format!(
                    "instance {id} has {} snapshots, the most it may have; delete one first",
                    existing.len()
                )));
            }
            None => {}
        }
        sqlx::query(
            "INSERT INTO instance_snapshots (instance_id, name, state) VALUES ($1, $2, 'creating')",
        )
        .bind(id.as_uuid())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        let target = format!("{id}@{name}");
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("instance.snapshot.create", "snapshot", &target)
                .owned_by(owner.into()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The node made it.
    pub async fn snapshot_created(
        &self,
        id: InstanceId,
        name: &str,
        used: u64,
    ) -> Result<Snapshot> {
        sqlx::query_as::<_, SnapshotRow>(AssertSqlSafe(format!(
            "UPDATE instance_snapshots SET state = 'created', used_bytes = $3
              WHERE instance_id = $1 AND name = $2 RETURNING {COLUMNS}"
        )))
        .bind(id.as_uuid())
        .bind(name)
        .bind(used as i64)
        .fetch_optional(&self.pool)
        .await?
        .map(Snapshot::from)
        .ok_or_else(|| Error::not_found("snapshot", name))
    }

    pub async fn snapshot_list(
        &self,
        id: InstanceId,
        scope: Option<AccountId>,
    ) -> Result<Vec<Snapshot>> {
        self.instance_owner_check(id, scope).await?;
        let rows = sqlx::query_as::<_, SnapshotRow>(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM instance_snapshots WHERE instance_id = $1 ORDER BY created_at, name"
        )))
        .bind(id.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Snapshot::from).collect())
    }

    pub async fn snapshot_get(
        &self,
        id: InstanceId,
        scope: Option<AccountId>,
        name: &str,
    ) -> Result<Snapshot> {
        self.instance_owner_check(id, scope).await?;
        sqlx::query_as::<_, SnapshotRow>(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM instance_snapshots WHERE instance_id = $1 AND name = $2"
        )))
        .bind(id.as_uuid())
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(Snapshot::from)
        .ok_or_else(|| Error::not_found("snapshot", crate::validate::truncate(name)))
    }

    /// Marks a snapshot being deleted (a retry finds it so).
    pub async fn snapshot_deleting(
        &self,
        id: InstanceId,
        scope: Option<AccountId>,
        name: &str,
    ) -> Result<()> {
        let owner = self.instance_owner_check(id, scope).await?;
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE instance_snapshots SET state = 'deleting' WHERE instance_id = $1 AND name = $2",
        )
        .bind(id.as_uuid())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(
                "snapshot",
                crate::validate::truncate(name),
            ));
        }
        let target = format!("{id}@{name}");
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("instance.snapshot.delete", "snapshot", &target)
                .owned_by(owner),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records the sizes the node reports (what a snapshot alone holds grows
    /// as the instance changes after it).
    pub async fn snapshot_sizes(&self, id: InstanceId, sizes: &[(String, u64)]) -> Result<()> {
        let (names, bytes): (Vec<&str>, Vec<i64>) =
            sizes.iter().map(|(n, b)| (n.as_str(), *b as i64)).unzip();
        sqlx::query(
            "UPDATE instance_snapshots s SET used_bytes = v.bytes
               FROM unnest($2::text[], $3::bigint[]) AS v(name, bytes)
              WHERE s.instance_id = $1 AND s.name = v.name",
        )
        .bind(id.as_uuid())
        .bind(&names)
        .bind(&bytes)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a snapshot (the node no longer has it, or never made it).
    pub async fn snapshot_forget(&self, id: InstanceId, name: &str) -> Result<()> {
        sqlx::query("DELETE FROM instance_snapshots WHERE instance_id = $1 AND name = $2")
            .bind(id.as_uuid())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Locks the instance for a rollback.
    pub async fn instance_lock(
        &self,
        id: InstanceId,
        scope: Option<AccountId>,
    ) -> Result<InstanceLock> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(Uuid, String, bool)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT owner, state, EXISTS (SELECT 1 FROM jobs j WHERE j.instance_id = i.id
                                          AND j.state IN {JOB_UNFINISHED})
               FROM instances i WHERE id = $1 AND ($2::uuid IS NULL OR owner = $2)
                AND state <> {INSTANCE_DELETED} FOR UPDATE"
        )))
        .bind(id.as_uuid())
        .bind(scope.map(|o| o.as_uuid()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((owner, state, busy)) = row else {
            return Err(Error::not_found("instance", id));
        };
        let state = InstanceState::parse(&state)
            .ok_or_else(|| Error::Internal(format!("instance {id} has state {state:?}")))?;
        Ok(InstanceLock {
            tx,
            id,
            owner: owner.into(),
            state,
            busy,
        })
    }

    /// The instance's owner, if `scope` may see it (404 otherwise).
    async fn instance_owner_check(
        &self,
        id: InstanceId,
        scope: Option<AccountId>,
    ) -> Result<AccountId> {
        let row: Option<(Uuid,)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT owner FROM instances WHERE id = $1 AND ($2::uuid IS NULL OR owner = $2)
               AND state <> {INSTANCE_DELETED}"
        )))
        .bind(id.as_uuid())
        .bind(scope.map(|o| o.as_uuid()))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(o,)| o.into())
            .ok_or_else(|| Error::not_found("instance", id))
    }
}
