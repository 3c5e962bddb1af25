//! The resize saga: the new size was reserved and recorded by the request
//! (step 1, whose undo gives the old size back); the node then applies the
//! new spec: a running container's cgroup limits change in place, the
//! dataset quota follows, a stopped instance takes it at its next start.

use futures::FutureExt;
use nereid_api::InstanceState;

use super::provision::{instance_spec, target};
use super::{Ctx, Saga, Step, StepResult};

/// The steps the resize request does itself (the reservation).
pub const RESIZE_STEPS_DONE_AT_REQUEST: usize = 1;

pub(super) fn saga() -> Saga {
    Saga {
        steps: vec![
            Step {
                name: "reserve_size",
                forward: |_| async { Ok(()) }.boxed(),
                undo: Some(|c| revert(c).boxed()),
                saved: true,
            },
            Step {
                name: "resize_on_node",
                forward: |c| on_node(c).boxed(),
                undo: None,
                saved: true,
            },
        ],
        on_failure: |c, e| super::lifecycle::settle_from_node(c, e).boxed(),
    }
}

/// EnsureInstance with the spec the database now holds (a newer
/// generation), keeping the instance running or stopped as it is.
async fn on_node(c: &Ctx) -> StepResult {
    let running = c
        .state
        .db
        .instance_get(c.job.instance_id, None)
        .await?
        .state
        == InstanceState::Running;
    let spec = instance_spec(c).await?;
    let t = target(c).await?;
    c.state.agents.ensure_instance(&t, &spec, running).await?;
    Ok(())
}

/// The old size back in the database, then on the node.
async fn revert(c: &Ctx) -> StepResult {
    c.state
        .db
        .instance_resize_revert(c.job.instance_id, &c.fence)
        .await?;
    on_node(c).await
}
