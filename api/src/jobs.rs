//! Jobs: runs of the headnode's sagas, with their step log.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AccountId, InstanceId, JobId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    /// A step failed for good; the undos of the steps done are running.
    Unwinding,
    Succeeded,
    Failed,
}

impl JobState {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Unwinding => "unwinding",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Unwinding,
            JobState::Succeeded,
            JobState::Failed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    pub fn is_finished(&self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
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
    /// `provision`, `start`, `stop`, `reboot` or `destroy`.
    pub kind: String,
    pub instance_id: InstanceId,
    pub owner: AccountId,
    pub state: JobState,
    pub steps: Vec<JobStep>,
    /// How many times a headnode claimed it (more than 1 after a takeover).
    pub attempts: u32,
    pub error: Option<String>,
    pub request_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}
