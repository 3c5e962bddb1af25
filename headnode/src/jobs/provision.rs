//! The provision saga: reserve capacity -> allocate NICs and IPs -> ensure
//! the image on the node -> ensure the instance -> wait for running -> mark
//! running. Capacity is reserved when the job is created (so a request that
//! cannot be placed is a 409 at once); its step is recorded done then.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use nereid_api::InstanceState;

use super::{Ctx, Saga, Step, StepError, StepResult};
use crate::agent_client::{NodeState, convert};
use crate::db::AgentTarget;
use crate::error::Error;

/// How many provision steps the create request does itself (reserve capacity).
pub const PROVISION_STEPS_DONE_AT_CREATE: usize = 1;

pub(super) fn saga() -> Saga {
    Saga {
        steps: vec![
            Step {
                name: "reserve_capacity",
                forward: |_| async { Ok(()) }.boxed(),
                undo: Some(|c| release_capacity(c).boxed()),
                saved: true,
            },
            Step {
                name: "allocate_nics",
                forward: |c| allocate_nics(c).boxed(),
                undo: Some(|c| free_nics(c).boxed()),
                saved: true,
            },
            Step {
                name: "ensure_image",
                forward: |c| ensure_image(c).boxed(),
                undo: None,
                saved: false,
            },
            Step {
                name: "ensure_instance",
                forward: |c| ensure_instance(c).boxed(),
                undo: Some(|c| delete_on_node(c).boxed()),
                saved: true,
            },
            Step {
                name: "wait_running",
                forward: |c| wait_running(c).boxed(),
                undo: None,
                saved: false,
            },
            Step {
                name: "mark_running",
                forward: |c| mark_running(c).boxed(),
                undo: None,
                saved: true,
            },
        ],
        on_failure: |c, e| mark_failed(c, e).boxed(),
    }
}

/// The agent of the instance's server.
pub(super) async fn target(c: &Ctx) -> Result<AgentTarget, StepError> {
    c.state
        .db
        .instance_placement(c.job.instance_id)
        .await?
        .ok_or_else(|| StepError::Fail("the instance is not placed on a server".into()))
}

pub(super) async fn release_capacity(c: &Ctx) -> StepResult {
    Ok(c.state
        .db
        .instance_release_capacity(c.job.instance_id, &c.fence)
        .await?)
}

async fn allocate_nics(c: &Ctx) -> StepResult {
    c.state
        .db
        .instance_allocate_nics(c.job.instance_id, &c.fence)
        .await?;
    Ok(())
}

pub(super) async fn free_nics(c: &Ctx) -> StepResult {
    Ok(c.state
        .db
        .instance_free_nics(c.job.instance_id, &c.fence)
        .await?)
}

async fn ensure_image(c: &Ctx) -> StepResult {
    let t = target(c).await?;
    ensure_image_on(c, &t).await
}

async fn ensure_image_on(c: &Ctx, t: &AgentTarget) -> StepResult {
    let sizes = c.state.db.instance_sizes(c.job.instance_id).await?;
    let image_id = sizes
        .image_id
        .ok_or_else(|| StepError::Fail("the instance's image was deleted".into()))?;
    if c.state.agents.image_known(t.server, image_id) {
        return Ok(());
    }
    let image = c.state.db.image_get(image_id, None).await?;
    let file = image
        .file
        .ok_or_else(|| StepError::Fail(format!("image {} has no file", image.id)))?;
    let pull = crate::agent_client::ImagePull {
        id: image.id,
        brand: sizes.brand,
        sha256: file.sha256,
        size: file.size,
        max_unpacked: image
            .unpacked_size
            .unwrap_or(c.state.config.max_unpacked_image_bytes),
    };
    // The node may fetch only what it was asked to ensure.
    c.state.db.image_grant(t.server, image.id).await?;
    c.state.agents.ensure_image(t, &pull).await?;
    Ok(())
}

/// The spec the node runs: sizes from the package, NICs from the database.
pub(super) async fn instance_spec(c: &Ctx) -> Result<convert::Spec, StepError> {
    let db = &c.state.db;
    let id = c.job.instance_id;
    let mut nics = db.instance_nic_plans(id).await?;
    // A fabric network's gateway is the node's own NAT, on the NAT network.
    if nics.iter().any(|n| n.internet_nat) {
        let server = target(c).await?.server;
        let external = c
            .state
            .config
            .fabric_nat_network
            .as_deref()
            .ok_or_else(|| {
                StepError::Fail(
                    "the instance's fabric network NATs out, and this headnode has no \
                 --fabric-nat-network"
                        .into(),
                )
            })?;
        for nic in nics.iter_mut().filter(|n| n.internet_nat) {
            let nat = db
                .fabric_nat_ensure(nic.network_id, server, external)
                .await?;
            nic.nat = Some(Box::new(nat));
        }
    }
    Ok(convert::Spec {
        id,
        sizes: db.instance_sizes(id).await?,
        nics,
        metadata: Some(crate::metadata::build(&c.state, id).await?),
    })
}

async fn ensure_instance(c: &Ctx) -> StepResult {
    let spec = instance_spec(c).await?;
    let t = target(c).await?;
    // The node's firewall knows the instance before it starts, and its
    // overlay where the instance's fabric peers are.
    crate::firewall::sync_server(&c.state, &t).await?;
    crate::overlay::sync_server(&c.state, &t).await?;
    let node = match c.state.agents.ensure_instance(&t, &spec, true).await {
        // The image went missing from the node since it was ensured: pull it again.
        Err(Error::ImageMissingOnNode(_)) => {
            if let Some(image) = spec.sizes.image_id {
                c.state.agents.forget_image(t.server, image);
            }
            ensure_image_on(c, &t).await?;
            c.state.agents.ensure_instance(&t, &spec, true).await?
        }
        other => other?,
    };
    if let Some(a) = node.accelerator {
        c.state
            .db
            .instance_set_accelerator(c.job.instance_id, a, &c.fence)
            .await?;
    }
    *c.reported.lock().expect("reported") = Some(node.state);
    Ok(())
}

pub(super) async fn delete_on_node(c: &Ctx) -> StepResult {
    match c.state.db.instance_placement(c.job.instance_id).await? {
        Some(t) => Ok(c
            .state
            .agents
            .delete_instance(&t, c.job.instance_id)
            .await?),
        None => Ok(()),
    }
}

/// Until the node reports the instance running (EnsureInstance with start
/// answers once it runs, so this is normally one call).
async fn wait_running(c: &Ctx) -> StepResult {
    if *c.reported.lock().expect("reported") == Some(NodeState::Running) {
        return Ok(());
    }
    let t = target(c).await?;
    for _ in 0..60 {
        match c.state.agents.get_instance(&t, c.job.instance_id).await? {
            Some(s) if s.state == NodeState::Running => {
                if let Some(a) = s.accelerator {
                    c.state
                        .db
                        .instance_set_accelerator(c.job.instance_id, a, &c.fence)
                        .await?;
                }
                return Ok(());
            }
            Some(s) if s.state == NodeState::Failed => {
                return Err(StepError::Fail(format!(
                    "the instance failed on its node: {}",
                    s.reason.unwrap_or_default()
                )));
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            None => {
                return Err(StepError::Fail(
                    "the node does not have the instance it just made".into(),
                ));
            }
        }
    }
    Err(StepError::Retry(
        "the instance did not reach running within 30 s".into(),
    ))
}

async fn mark_running(c: &Ctx) -> StepResult {
    c.state
        .db
        .instance_set_state(
            c.job.instance_id,
            InstanceState::Running,
            &[InstanceState::Provisioning],
            None,
            Some(&c.fence),
        )
        .await?;
    // Rules on other nodes that name it (tags, `all vms`) take its address;
    // its fabric peers learn where it is.
    crate::firewall::spawn_sync_naming(&c.state, c.job.owner);
    crate::overlay::spawn_sync_peers(&c.state, c.job.instance_id);
    Ok(())
}

fn mark_failed<'a>(c: &'a Ctx, error: &'a str) -> BoxFuture<'a, StepResult> {
    async move {
        c.state
            .db
            .instance_set_state(
                c.job.instance_id,
                InstanceState::Failed,
                &[],
                Some(error),
                Some(&c.fence),
            )
            .await?;
        crate::firewall::spawn_sync_naming(&c.state, c.job.owner);
        crate::overlay::spawn_sync_peers(&c.state, c.job.instance_id);
        Ok(())
    }
    .boxed()
}
