//! Durable jobs: the saga runner. Workers claim jobs from PostgreSQL with
//! `FOR UPDATE SKIP LOCKED` and a lease they renew while they work; a job
//! whose lease ran out (its headnode died or stalled) is claimed again by any
//! headnode and resumes at its first step not recorded as done. Every step is
//! idempotent and has an undo; a step that fails for good unwinds the steps
//! before it, newest first, and the undos resume after a crash too.
//!
//! It must never hold a database transaction across an agent call, and never
//! act for a job whose lease it lost: every claim has its own fencing token,
//! checked by every write of the run (the job's and its steps'), and a run
//! that could not renew its lease before the lease ends stops at once (its
//! in-flight node call is dropped), so no two runs of a job act together.

mod create_image;
mod lifecycle;
mod provision;
mod resize;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use nereid_api::{Job, JobKind, JobState, JobStep, StepState};
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;

use crate::AppState;
use crate::error::Error;

pub use create_image::CREATE_IMAGE_STEPS_DONE_AT_REQUEST;
pub use provision::PROVISION_STEPS_DONE_AT_CREATE;
pub use resize::RESIZE_STEPS_DONE_AT_REQUEST;

/// What a step's failure means for the job.
#[derive(Debug)]
pub enum StepError {
    /// Worth another attempt (a node or the database did not answer).
    Retry(String),
    /// Cannot succeed: unwind.
    Fail(String),
    /// This run no longer holds the job: stop, leave it to the holder.
    LeaseLost(String),
    /// A node did not answer: like Retry, and the job says which.
    NodeAway(nereid_api::ServerId, String),
}

impl From<Error> for StepError {
    fn from(e: Error) -> StepError {
        match e {
            Error::LeaseLost(m) => StepError::LeaseLost(m),
            Error::AgentUnavailable { server, message } => StepError::NodeAway(server, message),
            Error::ImageMissingOnNode(m) => StepError::Retry(m),
            Error::Database(ref d) => StepError::Retry(format!("database: {d}")),
            other => StepError::Fail(other.to_string()),
        }
    }
}

pub type StepResult = Result<(), StepError>;
type StepFn = for<'a> fn(&'a Ctx) -> BoxFuture<'a, StepResult>;

/// One step of a saga.
pub struct Step {
    pub name: &'static str,
    pub forward: StepFn,
    pub undo: Option<StepFn>,
    /// Whether its end is saved at once. A step that is cheap to run again
    /// (it checks before it acts, and acts on nothing costly) leaves it to
    /// the next save: after a crash in between it simply runs again.
    pub saved: bool,
}

/// What a step works with.
pub struct Ctx {
    pub state: AppState,
    pub job: Job,
    /// This run's claim: steps pass it to every write they make.
    pub fence: crate::db::Fence,
    /// The state the node reported for the instance earlier in this run
    /// (saves a call); empty after a takeover, so steps then ask the node.
    pub reported: std::sync::Mutex<Option<crate::agent_client::NodeState>>,
}

type FailureFn = for<'a> fn(&'a Ctx, &'a str) -> BoxFuture<'a, StepResult>;

/// The steps of a kind of job, and what to do when it fails for good.
pub struct Saga {
    steps: Vec<Step>,
    on_failure: FailureFn,
}

fn saga(kind: JobKind) -> Saga {
    match kind {
        JobKind::Provision => provision::saga(),
        JobKind::Destroy => lifecycle::destroy(),
        JobKind::Start | JobKind::Stop | JobKind::Reboot => lifecycle::action(kind),
        JobKind::Resize => resize::saga(),
        JobKind::CreateImage => create_image::saga(),
    }
}

/// The fresh step log of a kind of job (the first `done` steps already done).
pub fn step_log(kind: JobKind, done: usize) -> Vec<JobStep> {
    let now = Utc::now();
    saga(kind)
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| JobStep {
            name: s.name.to_string(),
            state: if i < done {
                StepState::Done
            } else {
                StepState::Pending
            },
            attempts: u32::from(i < done),
            error: None,
            started_at: (i < done).then_some(now),
            finished_at: (i < done).then_some(now),
        })
        .collect()
}

/// A forward step gets this many attempts before the job unwinds.
const MAX_ATTEMPTS: u32 = 6;

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.min(5))
}

/// The headnode's job workers. `wake` after queueing a job to start it at once.
#[derive(Clone)]
pub struct Runner {
    notify: Arc<Notify>,
}

impl Runner {
    pub fn new() -> Runner {
        Runner {
            notify: Arc::new(Notify::new()),
        }
    }

    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Claims and runs jobs until the process ends.
    pub async fn run(self, state: AppState) {
        let worker = Uuid::new_v4();
        let slots = Arc::new(Semaphore::new(state.config.job_workers));
        tracing::info!(%worker, workers = state.config.job_workers, "job runner started");
        loop {
            let permit = slots.clone().acquire_owned().await.expect("semaphore open");
            match state.db.job_claim(worker, state.config.job_lease).await {
                Ok(Some((job, fence))) => {
                    let state = state.clone();
                    // Another free slot may find more work at once.
                    self.notify.notify_one();
                    tokio::spawn(async move {
                        run_job(state, job, fence).await;
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        _ = self.notify.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::warn!("claiming a job failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

impl Default for Runner {
    fn default() -> Self {
        Runner::new()
    }
}

/// Runs one claimed job while renewing its lease. It stops acting (drops
/// the step in flight) as soon as the lease is lost, or when it could not be
/// renewed before it ends: a renewal is counted from when it was sent, so
/// this run stops no later than the database lets another claim it.
async fn run_job(state: AppState, job: Job, fence: crate::db::Fence) {
    let id = job.id;
    let lease = state.config.job_lease;
    let span = tracing::info_span!("job", job = %id, kind = %job.kind, instance = %job.instance_id, request_id = %job.request_id);
    let _enter = span.clone();
    let claimed = tokio::time::Instant::now();
    let renew = {
        let db = state.db.clone();
        async move {
            let mut valid_until = claimed + lease;
            let mut next = claimed + lease / 3;
            loop {
                tokio::time::sleep_until(next.min(valid_until)).await;
                let now = tokio::time::Instant::now();
                if now >= valid_until {
                    return "its lease ran out before it could be renewed";
                }
                match tokio::time::timeout(valid_until - now, db.job_renew(&fence, lease)).await {
                    Ok(Ok(true)) => {
                        valid_until = now + lease;
                        next = now + lease / 3;
                    }
                    Ok(Ok(false)) => return "another run holds it",
                    Ok(Err(e)) => {
                        tracing::warn!("renewing the lease of job {id} failed: {e}");
                        next = now + lease / 10;
                    }
                    Err(_) => next = now,
                }
            }
        }
    };
    let request_id = job.request_id.clone();
    let drive = crate::error::REQUEST_ID.scope(
        request_id,
        Driver {
            ctx: Ctx {
                state,
                job,
                fence,
                reported: Default::default(),
            },
            waiting_on: None,
        }
        .drive(),
    );
    tokio::select! {
        _ = drive => {}
        why = renew => tracing::warn!(parent: &span, "stopped working on job {id}: {why}"),
    }
}

struct Driver {
    ctx: Ctx,
    /// The node a step waits for, saved with the job.
    waiting_on: Option<nereid_api::ServerId>,
}

/// Why driving stopped early.
enum Stop {
    LeaseLost,
    Deferred,
}

impl Driver {
    async fn save(&mut self, state: JobState, error: Option<&str>) -> Result<(), Stop> {
        match self
            .ctx
            .state
            .db
            .job_save(
                &self.ctx.fence,
                state,
                &self.ctx.job.steps,
                error,
                self.waiting_on,
            )
            .await
        {
            Ok(true) => {
                self.ctx.job.state = state;
                Ok(())
            }
            Ok(false) => Err(Stop::LeaseLost),
            Err(e) => {
                // The database is away: leave the job to be claimed again.
                tracing::warn!("saving job {} failed: {e}", self.ctx.job.id);
                Err(Stop::Deferred)
            }
        }
    }

    async fn drive(mut self) {
        let saga = saga(self.ctx.job.kind);
        if self.ctx.job.steps.len() != saga.steps.len() {
            let _ = self
                .save(
                    JobState::Failed,
                    Some("the step log does not match the saga"),
                )
                .await;
            return;
        }
        let outcome = if self.ctx.job.state == JobState::Unwinding {
            let error = self.ctx.job.error.clone().unwrap_or_default();
            self.unwind(&saga, &error).await
        } else {
            self.forward(&saga).await
        };
        match outcome {
            Ok(()) | Err(Stop::LeaseLost) => {}
            Err(Stop::Deferred) => {
                let _ = self
                    .ctx
                    .state
                    .db
                    .job_defer(&self.ctx.fence, Duration::from_secs(2))
                    .await;
            }
        }
    }

    async fn forward(&mut self, saga: &Saga) -> Result<(), Stop> {
        let kind = self.ctx.job.kind;
        let mut fresh_mark = false;
        for (i, step) in saga.steps.iter().enumerate() {
            if self.ctx.job.steps[i].state == StepState::Done {
                continue;
            }
            loop {
                // A step the previous save already marked running (with its
                // attempt counted) needs no save of its own.
                let marked = self.ctx.job.steps[i].state == StepState::Running && fresh_mark;
                if !marked {
                    let s = &mut self.ctx.job.steps[i];
                    s.state = StepState::Running;
                    s.attempts += 1;
                    s.started_at.get_or_insert_with(Utc::now);
                    self.save(JobState::Running, None).await?;
                }
                fresh_mark = false;
                fault_point(kind, step.name, "before");
                let result = match (step.forward)(&self.ctx).await {
                    Err(StepError::NodeAway(server, m)) => {
                        self.waiting_on = Some(server);
                        Err(StepError::Retry(m))
                    }
                    other => {
                        self.waiting_on = None;
                        other
                    }
                };
                let attempts = self.ctx.job.steps[i].attempts;
                match result {
                    Ok(()) => {
                        fault_point(kind, step.name, "after");
                        let now = Utc::now();
                        let s = &mut self.ctx.job.steps[i];
                        s.state = StepState::Done;
                        s.error = None;
                        s.finished_at = Some(now);
                        // One write records this step done and the next one
                        // started (or, after the last, the job succeeded).
                        if let Some(next) = self.ctx.job.steps.get_mut(i + 1)
                            && next.state != StepState::Done
                        {
                            next.state = StepState::Running;
                            next.attempts += 1;
                            next.started_at.get_or_insert(now);
                            fresh_mark = true;
                        }
                        if i + 1 == saga.steps.len() {
                            self.save(JobState::Succeeded, None).await?;
                            tracing::info!("job succeeded");
                            return Ok(());
                        }
                        if step.saved {
                            self.save(JobState::Running, None).await?;
                        }
                        break;
                    }
                    Err(StepError::LeaseLost(m)) => {
                        tracing::warn!(step = step.name, "stopping: {m}");
                        return Err(Stop::LeaseLost);
                    }
                    Err(StepError::Retry(m)) if attempts < MAX_ATTEMPTS => {
                        tracing::info!(step = step.name, attempts, "step failed, retrying: {m}");
                        self.ctx.job.steps[i].error = Some(m);
                        self.save(JobState::Running, None).await?;
                        tokio::time::sleep(backoff(attempts)).await;
                    }
                    Err(StepError::Retry(m))
                    | Err(StepError::Fail(m))
                    | Err(StepError::NodeAway(_, m)) => {
                        let error = format!("{}: {m}", step.name);
                        tracing::warn!("job failed at {error}; unwinding");
                        let s = &mut self.ctx.job.steps[i];
                        s.state = StepState::Failed;
                        s.error = Some(m);
                        s.finished_at = Some(Utc::now());
                        self.save(JobState::Unwinding, Some(&error)).await?;
                        return self.unwind(saga, &error).await;
                    }
                }
            }
        }
        self.save(JobState::Succeeded, None).await?;
        tracing::info!("job succeeded");
        Ok(())
    }

    /// Runs the undo of every step that did (or may have done) something,
    /// newest first, then the saga's failure handler.
    async fn unwind(&mut self, saga: &Saga, error: &str) -> Result<(), Stop> {
        for (i, step) in saga.steps.iter().enumerate().rev() {
            let st = self.ctx.job.steps[i].state;
            if !matches!(st, StepState::Done | StepState::Failed | StepState::Running) {
                continue;
            }
            let Some(undo) = step.undo else { continue };
            let mut tries = 0;
            loop {
                match undo(&self.ctx).await {
                    Ok(()) => {
                        self.waiting_on = None;
                        break;
                    }
                    Err(StepError::LeaseLost(m)) => {
                        tracing::warn!(step = step.name, "stopping the unwind: {m}");
                        return Err(Stop::LeaseLost);
                    }
                    Err(StepError::NodeAway(server, m)) => {
                        self.waiting_on = Some(server);
                        tries += 1;
                        tracing::warn!(step = step.name, tries, "undo waits for a node: {m}");
                        if tries >= MAX_ATTEMPTS {
                            // Say so, then come back to it later: nothing may leak.
                            let _ = self.save(JobState::Unwinding, Some(error)).await;
                            return Err(Stop::Deferred);
                        }
                        tokio::time::sleep(backoff(tries)).await;
                    }
                    Err(StepError::Retry(m)) | Err(StepError::Fail(m)) => {
                        tries += 1;
                        tracing::warn!(step = step.name, tries, "undo failed: {m}");
                        if tries >= MAX_ATTEMPTS {
                            // Nothing may leak: come back to it later.
                            return Err(Stop::Deferred);
                        }
                        tokio::time::sleep(backoff(tries)).await;
                    }
                }
            }
            fault_point(self.ctx.job.kind, step.name, "undone");
            self.ctx.job.steps[i].state = StepState::Undone;
            self.save(JobState::Unwinding, Some(error)).await?;
        }
        if let Err(e) = (saga.on_failure)(&self.ctx, error).await {
            tracing::warn!("the failure handler failed: {e:?}");
            return Err(Stop::Deferred);
        }
        self.save(JobState::Failed, Some(error)).await?;
        Ok(())
    }
}

/// Crash tests: the job fault points are `<kind>:<step>:<before|after|undone>`.
fn fault_point(kind: JobKind, step: &str, when: &str) {
    crate::fault::point(&format!("{kind}:{step}:{when}"));
}

/// Queues a job whose first `done` steps are already done (in the caller's
/// transaction) and returns its record.
pub fn new_job(
    kind: JobKind,
    instance: nereid_api::InstanceId,
    owner: nereid_api::AccountId,
    done: usize,
) -> crate::db::NewJob {
    crate::db::NewJob {
        id: nereid_api::JobId::new(),
        kind,
        instance_id: instance,
        owner,
        steps: step_log(kind, done),
        request_id: crate::error::current_request_id(),
        params: serde_json::json!({}),
    }
}
