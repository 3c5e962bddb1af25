//! Jobs: the durable state of sagas. A worker claims a job with
//! `FOR UPDATE SKIP LOCKED` and holds it with a lease; every claim gets its
//! own fencing token, and every write of that run (to the job, and by its
//! steps to what they change, see `fence_check`) is guarded by the token, so
//! a run whose lease was taken over (it stalled, the database was away) can
//! no longer change anything, even on the same headnode.

use chrono::{DateTime, Utc};
use nereid_api::{AccountId, InstanceId, Job, JobId, JobKind, JobState, JobStep, Page};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::Datastore;
use super::states::{JOB_FINISHED, JOB_LEASED, JOB_QUEUED, JOB_RUNNING};

/// The claim a run holds: its job and the fencing token of that claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub job: JobId,
    pub token: Uuid,
}

/// Inside a transaction of a step: fails with `LeaseLost` unless the run
/// still holds its claim, and holds the job's row (FOR SHARE) so no new
/// claim can take it before the transaction ends.
pub(super) async fn fence_check(tx: &mut Transaction<'_, Postgres>, f: &Fence) -> Result<()> {
    let held: Option<(Uuid,)> =
        sqlx::query_as("SELECT id FROM jobs WHERE id = $1 AND lease_token = $2 FOR SHARE")
            .bind(f.job.as_uuid())
            .bind(f.token)
            .fetch_optional(&mut **tx)
            .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(Error::LeaseLost(format!(
            "job {} was claimed again; this run no longer holds it",
            f.job
        ))),
    }
}
use crate::error::{Error, Result};

pub struct NewJob {
    pub id: JobId,
    pub kind: JobKind,
    pub instance_id: InstanceId,
    pub owner: AccountId,
    pub steps: Vec<JobStep>,
    pub request_id: String,
    /// What its steps need beyond the instance (`{}` for most kinds).
    pub params: serde_json::Value,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    kind: String,
    instance_id: Uuid,
    owner: Uuid,
    state: String,
    steps: Json<Vec<JobStep>>,
    attempts: i32,
    error: Option<String>,
    waiting_on: Option<Uuid>,
    request_id: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl JobRow {
    fn into_api(self) -> Result<Job> {
        let state = JobState::parse(&self.state).ok_or_else(|| {
            Error::Internal(format!("job {} has state {:?}", self.id, self.state))
        })?;
        let kind = JobKind::parse(&self.kind)
            .ok_or_else(|| Error::Internal(format!("job {} has kind {:?}", self.id, self.kind)))?;
        Ok(Job {
            id: self.id.into(),
            kind,
            instance_id: self.instance_id.into(),
            owner: self.owner.into(),
            state,
            steps: self.steps.0,
            attempts: self.attempts as u32,
            error: self.error,
            waiting_on_node: self.waiting_on.map(Into::into),
            request_id: self.request_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        })
    }
}

const COLUMNS: &str = "id, kind, instance_id, owner, state, steps, attempts, error, waiting_on,
    request_id, created_at, updated_at, finished_at";

pub(super) async fn insert(tx: &mut Transaction<'_, Postgres>, job: &NewJob) -> Result<()> {
    sqlx::query(
        "INSERT INTO jobs (id, kind, instance_id, owner, steps, request_id, params)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(job.id.as_uuid())
    .bind(job.kind.as_str())
    .bind(job.instance_id.as_uuid())
    .bind(job.owner.as_uuid())
    .bind(Json(&job.steps))
    .bind(&job.request_id)
    .bind(Json(&job.params))
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if super::is_unique_violation(&e, "jobs_one_active_per_instance") {
            Error::Conflict(format!(
                "instance {} has a job in progress; wait for it to finish",
                job.instance_id
            ))
        } else {
            e.into()
        }
    })?;
    Ok(())
}

impl Datastore {
    /// Queues a job on an existing instance, moving the instance to `state`
    /// when it is in one of `from` (409 otherwise, or when a job runs).
    pub async fn job_queue_action(
        &self,
        job: &NewJob,
        from: &[nereid_api::InstanceState],
        to: nereid_api::InstanceState,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let from_s: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let current: Option<(String,)> =
            sqlx::query_as("SELECT state FROM instances WHERE id = $1 FOR UPDATE")
                .bind(job.instance_id.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
        let Some((current,)) = current else {
            return Err(Error::not_found("instance", job.instance_id));
        };
        if !from_s.contains(&current.as_str()) {
            return Err(Error::Conflict(format!(
                "instance {} is {current}; {} needs it to be {}",
                job.instance_id,
                job.kind,
                from_s.join(" or ")
            )));
        }
        insert(&mut tx, job).await?;
        sqlx::query("UPDATE instances SET state = $2, updated_at = now() WHERE id = $1")
            .bind(job.instance_id.as_uuid())
            .bind(to.as_str())
            .execute(&mut *tx)
            .await?;
        let action = format!("instance.{}", job.kind.as_str());
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new(&action, "instance", job.instance_id).owned_by(job.owner),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// What a job's steps need beyond its instance (set when it was queued).
    pub async fn job_params(&self, id: JobId) -> Result<serde_json::Value> {
        let row: Option<(serde_json::Value,)> =
            sqlx::query_as("SELECT params FROM jobs WHERE id = $1")
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.ok_or_else(|| Error::not_found("job", id))?.0)
    }

    pub async fn job_get(&self, id: JobId, owner: Option<AccountId>) -> Result<Job> {
        sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs WHERE id = $1 AND ($2::uuid IS NULL OR owner = $2)"
        )))
        .bind(id.as_uuid())
        .bind(owner.map(|o| o.as_uuid()))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::not_found("job", id))?
        .into_api()
    }

    pub async fn job_list(
        &self,
        owner: Option<AccountId>,
        instance: Option<InstanceId>,
        state: Option<JobState>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<Job>> {
        let rows = sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs WHERE ($1::uuid IS NULL OR owner = $1)
               AND ($2::uuid IS NULL OR instance_id = $2) AND ($3::text IS NULL OR state = $3)
               AND ($4::uuid IS NULL OR id > $4) ORDER BY id LIMIT $5"
        )))
        .bind(owner.map(|o| o.as_uuid()))
        .bind(instance.map(|i| i.as_uuid()))
        .bind(state.map(|s| s.as_str()))
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let jobs = rows
            .into_iter()
            .map(JobRow::into_api)
            .collect::<Result<Vec<_>>>()?;
        Ok(super::into_page(jobs, limit, |j| j.id.as_uuid()))
    }

    /// Claims the oldest runnable job: queued, or left by a run whose lease
    /// ran out. Takes the lease for `lease` from now, with a new fencing token.
    pub async fn job_claim(
        &self,
        worker: Uuid,
        lease: std::time::Duration,
    ) -> Result<Option<(Job, Fence)>> {
        let token = Uuid::new_v4();
        let row = sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET state = CASE WHEN state = {JOB_QUEUED} THEN {JOB_RUNNING} ELSE state END,
                    lease_owner = $1, lease_until = now() + make_interval(secs => $2),
                    lease_token = $3, attempts = attempts + 1, updated_at = now()
             WHERE id = (SELECT id FROM jobs
                         WHERE run_after <= now() AND (state = {JOB_QUEUED}
                            OR (state IN {JOB_LEASED} AND lease_until < now()))
                         ORDER BY run_after, created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING {COLUMNS}"
        )))
        .bind(worker)
        .bind(lease.as_secs_f64())
        .bind(token)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let job = r.into_api()?;
            let fence = Fence { job: job.id, token };
            Ok((job, fence))
        })
        .transpose()
    }

    /// Extends the lease; false when this run no longer holds it.
    pub async fn job_renew(&self, f: &Fence, lease: std::time::Duration) -> Result<bool> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET lease_until = now() + make_interval(secs => $3)
             WHERE id = $1 AND lease_token = $2 AND state IN {JOB_LEASED}"
        )))
        .bind(f.job.as_uuid())
        .bind(f.token)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Writes the step log and state of a job this run holds; false when
    /// the lease is lost.
    pub async fn job_save(
        &self,
        f: &Fence,
        state: JobState,
        steps: &[JobStep],
        error: Option<&str>,
        waiting_on: Option<nereid_api::ServerId>,
    ) -> Result<bool> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE jobs SET state = $3, steps = $4, error = $5, waiting_on = $6, updated_at = now(),
                    finished_at = CASE WHEN $3 IN {JOB_FINISHED} THEN now() END,
                    lease_owner = CASE WHEN $3 IN {JOB_FINISHED} THEN NULL ELSE lease_owner END,
                    lease_token = CASE WHEN $3 IN {JOB_FINISHED} THEN NULL ELSE lease_token END
             WHERE id = $1 AND lease_token = $2 AND state IN {JOB_LEASED}"
        )))
        .bind(f.job.as_uuid())
        .bind(f.token)
        .bind(state.as_str())
        .bind(Json(steps))
        .bind(error)
        .bind(waiting_on.map(|s| s.as_uuid()))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Lets a job wait (a transient failure): another claim may take it after `delay`.
    pub async fn job_defer(&self, f: &Fence, delay: std::time::Duration) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET run_after = now() + make_interval(secs => $3), lease_until = now()
             WHERE id = $1 AND lease_token = $2",
        )
        .bind(f.job.as_uuid())
        .bind(f.token)
        .bind(delay.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
