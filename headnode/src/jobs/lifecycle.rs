//! The sagas that change an existing instance. Start, stop and reboot are one
//! saga shape (act on the node, then record the state it settles in) read
//! from the `ACTIONS` table; destroy removes the instance from its node and
//! gives back what it held. Their steps are forward-only (an undo of "stop"
//! would be a start); a failure settles the instance on what its node reports.

use futures::FutureExt;
use futures::future::BoxFuture;
use nereid_api::{InstanceState, JobKind};

use super::provision::{delete_on_node, free_nics, release_capacity, target};
use super::{Ctx, Saga, Step, StepResult};
use crate::agent_client::NodeState;

/// An action on a running or stopped instance, as a two-step saga.
struct NodeAction {
    kind: JobKind,
    /// The name of the step that asks the node.
    on_node: &'static str,
    /// The name of the step that records `settles_in`.
    mark: &'static str,
    settles_in: InstanceState,
}

const ACTIONS: [NodeAction; 3] = [
    NodeAction {
        kind: JobKind::Start,
        on_node: "start_on_node",
        mark: "mark_running",
        settles_in: InstanceState::Running,
    },
    NodeAction {
        kind: JobKind::Stop,
        on_node: "stop_on_node",
        mark: "mark_stopped",
        settles_in: InstanceState::Stopped,
    },
    NodeAction {
        kind: JobKind::Reboot,
        on_node: "reboot_on_node",
        mark: "mark_running",
        settles_in: InstanceState::Running,
    },
];

fn action_of(kind: JobKind) -> &'static NodeAction {
    ACTIONS
        .iter()
        .find(|a| a.kind == kind)
        .expect("start, stop and reboot are in ACTIONS")
}

/// The saga of start, stop or reboot.
pub(super) fn action(kind: JobKind) -> Saga {
    let a = action_of(kind);
    Saga {
        steps: vec![
            Step {
                name: a.on_node,
                forward: |c| on_node(c).boxed(),
                undo: None,
                saved: true,
            },
            Step {
                name: a.mark,
                forward: |c| mark(c, action_of(c.job.kind).settles_in).boxed(),
                undo: None,
                saved: true,
            },
        ],
        on_failure: |c, e| settle_from_node(c, e).boxed(),
    }
}

pub(super) fn destroy() -> Saga {
    Saga {
        steps: vec![
            Step {
                name: "delete_on_node",
                forward: |c| delete_on_node(c).boxed(),
                undo: None,
                saved: true,
            },
            Step {
                name: "free_nics",
                forward: |c| free_nics(c).boxed(),
                undo: None,
                saved: false,
            },
            Step {
                name: "release_capacity",
                forward: |c| release_capacity(c).boxed(),
                undo: None,
                saved: false,
            },
            Step {
                name: "mark_deleted",
                forward: |c| mark_deleted(c).boxed(),
                undo: None,
                saved: true,
            },
        ],
        on_failure: |c, e| {
            async move {
                c.state
                    .db
                    .instance_set_state(
                        c.job.instance_id,
                        InstanceState::Failed,
                        &[],
                        Some(e),
                        Some(&c.fence),
                    )
                    .await?;
                Ok(())
            }
            .boxed()
        },
    }
}

async fn on_node(c: &Ctx) -> StepResult {
    let t = target(c).await?;
    let id = c.job.instance_id;
    let agents = &c.state.agents;
    let node = match c.job.kind {
        JobKind::Start => agents.start_instance(&t, id).await?,
        JobKind::Reboot => agents.stop_instance(&t, id, true).await?,
        _ => agents.stop_instance(&t, id, false).await?,
    };
    if let Some(a) = node.accelerator {
        c.state.db.instance_set_accelerator(id, a, &c.fence).await?;
    }
    Ok(())
}

async fn mark(c: &Ctx, to: InstanceState) -> StepResult {
    c.state
        .db
        .instance_set_state(c.job.instance_id, to, &[], None, Some(&c.fence))
        .await?;
    Ok(())
}

/// The instance is gone: rules elsewhere that named its address follow.
async fn mark_deleted(c: &Ctx) -> StepResult {
    mark(c, InstanceState::Deleted).await?;
    crate::firewall::spawn_sync_naming(&c.state, c.job.owner);
    crate::overlay::spawn_sync_peers(&c.state, c.job.instance_id);
    Ok(())
}

/// After a failed start/stop/reboot: the state the node reports, or `unknown`.
pub(super) fn settle_from_node<'a>(c: &'a Ctx, error: &'a str) -> BoxFuture<'a, StepResult> {
    async move {
        let reported = match target(c).await {
            Ok(t) => c
                .state
                .agents
                .get_instance(&t, c.job.instance_id)
                .await
                .ok()
                .flatten(),
            Err(_) => None,
        };
        let state = match reported.map(|s| s.state) {
            Some(NodeState::Running) => InstanceState::Running,
            Some(NodeState::Stopped) => InstanceState::Stopped,
            Some(NodeState::Failed) => InstanceState::Failed,
            None => InstanceState::Unknown,
        };
        c.state
            .db
            .instance_set_state(c.job.instance_id, state, &[], Some(error), Some(&c.fence))
            .await?;
        Ok(())
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_has_its_own_step_names_and_settled_state() {
        let names = |k| action(k).steps.iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(names(JobKind::Start), ["start_on_node", "mark_running"]);
        assert_eq!(names(JobKind::Stop), ["stop_on_node", "mark_stopped"]);
        assert_eq!(names(JobKind::Reboot), ["reboot_on_node", "mark_running"]);
        assert_eq!(action_of(JobKind::Stop).settles_in, InstanceState::Stopped);
    }
}
