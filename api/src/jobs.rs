//! Jobs: runs of the headnode's sagas, with their step log.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AccountId, InstanceId, JobId};

crate::named_enum! {
    pub enum JobState {
        Queued = "queued",
        Running = "running",
        /// A step failed for good; the undos of the steps done are running.
        Unwinding = "unwinding",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

impl JobState {
    /// States of a job that still works on (and holds) its instance.
    pub const UNFINISHED: &'static [JobState] =
        &[JobState::Queued, JobState::Running, JobState::Unwinding];

    pub fn is_finished(&self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

crate::named_enum! {
    /// What a job does to its instance.
    pub enum JobKind {
        Provision = "provision",
        Start = "start",
        Stop = "stop",
        Reboot = "reboot",
        Destroy = "destroy",
        /// To another package, on the same server.
        Resize = "resize",
        /// An image made from the instance (which keeps running).
        CreateImage = "create_image",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
    /// Its undo ran.
    Undone,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobStep {
    pub name: String,
    pub state: StepState,
    pub attempts: u32,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    pub instance_id: InstanceId,
    pub owner: AccountId,
    pub state: JobState,
    pub steps: Vec<JobStep>,
    /// How many times a headnode claimed it (more than 1 after a takeover).
    pub attempts: u32,
    pub error: Option<String>,
    /// The server whose agent a step waits for: it does not answer (the job
    /// retries; an operator may force-delete the instance instead).
    pub waiting_on_node: Option<crate::ServerId>,
    pub request_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}
