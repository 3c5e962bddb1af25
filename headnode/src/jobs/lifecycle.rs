//! The sagas that change an existing instance: start, stop, reboot and
//! destroy. Their steps are forward-only (an undo of "stop" would be a
//! start); a failure settles the instance on what its node reports.

use futures::FutureExt;
use futures::future::BoxFuture;
use nereid_api::InstanceState;

use super::provision::{delete_on_node, free_nics, release_capacity, target};
use super::{Ctx, Saga, Step, StepResult};

pub(super) const START: Saga = Saga {
    steps: &[
        Step {
            name: "start_on_node",
            forward: |c| on_node(c, Action::Start).boxed(),
            undo: None,
        },
        Step {
            name: "mark_running",
            forward: |c| mark(c, InstanceState::Running).boxed(),
            undo: None,
        },
    ],
    on_failure: |c, e| settle_from_node(c, e).boxed(),
};

pub(super) const STOP: Saga = Saga {
    steps: &[
        Step {
            name: "stop_on_node",
            forward: |c| on_node(c, Action::Stop).boxed(),
            undo: None,
        },
        Step {
            name: "mark_stopped",
            forward: |c| mark(c, InstanceState::Stopped).boxed(),
            undo: None,
        },
    ],
    on_failure: |c, e| settle_from_node(c, e).boxed(),
};

pub(super) const REBOOT: Saga = Saga {
    steps: &[
        Step {
            name: "reboot_on_node",
            forward: |c| on_node(c, Action::Reboot).boxed(),
            undo: None,
        },
        Step {
            name: "mark_running",
            forward: |c| mark(c, InstanceState::Running).boxed(),
            undo: None,
        },
    ],
    on_failure: |c, e| settle_from_node(c, e).boxed(),
};

pub(super) const DESTROY: Saga = Saga {
    steps: &[
        Step {
            name: "delete_on_node",
            forward: |c| delete_on_node(c).boxed(),
            undo: None,
        },
        Step {
            name: "free_nics",
            forward: |c| free_nics(c).boxed(),
            undo: None,
        },
        Step {
            name: "release_capacity",
            forward: |c| release_capacity(c).boxed(),
            undo: None,
        },
        Step {
            name: "mark_deleted",
            forward: |c| mark(c, InstanceState::Deleted).boxed(),
            undo: None,
        },
    ],
    on_failure: |c, e| {
        async move {
            c.state
                .db
                .instance_set_state(c.job.instance_id, InstanceState::Failed, &[], Some(e))
                .await?;
            Ok(())
        }
        .boxed()
    },
};

#[derive(Clone, Copy)]
enum Action {
    Start,
    Stop,
    Reboot,
}

async fn on_node(c: &Ctx, a: Action) -> StepResult {
    let t = target(c).await?;
    let id = c.job.instance_id;
    match a {
        Action::Start => c.state.agents.start_instance(&t, id).await?,
        Action::Stop => c.state.agents.stop_instance(&t, id, false).await?,
        Action::Reboot => c.state.agents.stop_instance(&t, id, true).await?,
    };
    Ok(())
}

async fn mark(c: &Ctx, to: InstanceState) -> StepResult {
    c.state
        .db
        .instance_set_state(c.job.instance_id, to, &[], None)
        .await?;
    Ok(())
}

/// After a failed start/stop/reboot: the state the node reports, or `unknown`.
fn settle_from_node<'a>(c: &'a Ctx, error: &'a str) -> BoxFuture<'a, StepResult> {
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
        let state = match reported.as_ref().map(|s| s.state.as_str()) {
            Some("running") => InstanceState::Running,
            Some("stopped") => InstanceState::Stopped,
            _ => InstanceState::Unknown,
        };
        c.state
            .db
            .instance_set_state(c.job.instance_id, state, &[], Some(error))
            .await?;
        Ok(())
    }
    .boxed()
}
