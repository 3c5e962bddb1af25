//! The history retention's deletes: finished jobs and deleted instances
//! older than a cutoff, a bounded batch per statement. Never a job that is
//! not finished, never an instance that is not deleted.

use std::time::Duration;

use super::Datastore;
use crate::error::Result;

impl Datastore {
    /// Deletes up to `batch` jobs that finished more than `older` ago;
    /// returns how many.
    pub async fn prune_jobs(&self, older: Duration, batch: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM jobs WHERE id IN (
                SELECT id FROM jobs WHERE state IN ('succeeded', 'failed')
                   AND finished_at < now() - make_interval(secs => $1)
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(older.as_secs_f64())
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Deletes up to `batch` instances deleted more than `older` ago, with
    /// their finished jobs and what rows they kept (NICs, snapshots); one
    /// still worked on by a job stays. Returns how many.
    pub async fn prune_instances(&self, older: Duration, batch: i64) -> Result<u64> {
        let (n,): (i64,) = sqlx::query_as(
            "WITH old AS (
                SELECT i.id FROM instances i
                 WHERE i.state = 'deleted' AND i.deleted_at < now() - make_interval(secs => $1)
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.instance_id = i.id
                                     AND j.state IN ('queued', 'running', 'unwinding'))
                 LIMIT $2 FOR UPDATE SKIP LOCKED),
              j AS (DELETE FROM jobs WHERE instance_id IN (SELECT id FROM old)),
              n AS (DELETE FROM instance_nics WHERE instance_id IN (SELECT id FROM old)),
              s AS (DELETE FROM instance_snapshots WHERE instance_id IN (SELECT id FROM old)),
              d AS (DELETE FROM instances WHERE id IN (SELECT id FROM old) RETURNING 1)
             SELECT count(*) FROM d",
        )
        .bind(older.as_secs_f64())
        .bind(batch)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }
}
