//! The provision saga: reserve capacity -> allocate NICs and IPs -> ensure
//! the image on the node -> ensure the instance -> wait for running -> mark
//! running. Capacity is reserved when the job is created (so a request that
//! cannot be placed is a 409 at once); its step is recorded done then.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use nereid_api::InstanceState;
use nereid_proto::v1 as pb;

use super::{Ctx, Saga, Step, StepError, StepResult};
use crate::db::AgentTarget;

/// How many provision steps the create request does itself (reserve capacity).
pub fn provision_steps() -> usize {
    1
}

pub(super) const SAGA: Saga = Saga {
    steps: &[
        Step {
            name: "reserve_capacity",
            forward: |_| async { Ok(()) }.boxed(),
            undo: Some(|c| release_capacity(c).boxed()),
        },
        Step {
            name: "allocate_nics",
            forward: |c| allocate_nics(c).boxed(),
            undo: Some(|c| free_nics(c).boxed()),
        },
        Step {
            name: "ensure_image",
            forward: |c| ensure_image(c).boxed(),
            undo: None,
        },
        Step {
            name: "ensure_instance",
            forward: |c| ensure_instance(c).boxed(),
            undo: Some(|c| delete_on_node(c).boxed()),
        },
        Step {
            name: "wait_running",
            forward: |c| wait_running(c).boxed(),
            undo: None,
        },
        Step {
            name: "mark_running",
            forward: |c| mark_running(c).boxed(),
            undo: None,
        },
    ],
    on_failure: |c, e| mark_failed(c, e).boxed(),
};

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
        .instance_release_capacity(c.job.instance_id)
        .await?)
}

async fn allocate_nics(c: &Ctx) -> StepResult {
    c.state.db.instance_allocate_nics(c.job.instance_id).await?;
    Ok(())
}

pub(super) async fn free_nics(c: &Ctx) -> StepResult {
    Ok(c.state.db.instance_free_nics(c.job.instance_id).await?)
}

async fn ensure_image(c: &Ctx) -> StepResult {
    let t = target(c).await?;
    ensure_image_on(c, &t).await
}

async fn ensure_image_on(c: &Ctx, t: &AgentTarget) -> StepResult {
    let image_id = c
        .state
        .db
        .instance_sizes(c.job.instance_id)
        .await?
        .image_id
        .ok_or_else(|| StepError::Fail("the instance's image was deleted".into()))?;
    if c.state.agents.image_known(t.server, image_id) {
        return Ok(());
    }
    let image = c.state.db.image_get(image_id, None).await?;
    let url = format!("{}/v1/images/{}/file", c.state.public_url, image.id);
    let sha256 = image
        .file
        .map(|f| f.sha256)
        .ok_or_else(|| StepError::Fail(format!("image {} has no file", image.id)))?;
    c.state
        .agents
        .ensure_image(t, image.id, &url, &sha256)
        .await?;
    Ok(())
}

/// The spec the node runs: sizes from the package, NICs from the database.
pub(super) async fn instance_spec(c: &Ctx) -> Result<pb::InstanceSpec, StepError> {
    let db = &c.state.db;
    let id = c.job.instance_id;
    let inst = db.instance_sizes(id).await?;
    let nics = db.instance_nic_plans(id).await?;
    Ok(pb::InstanceSpec {
        id: id.to_string(),
        hostname: inst.alias,
        image_id: inst.image_id.map(|i| i.to_string()).unwrap_or_default(),
        brand: inst.brand,
        memory_mb: inst.memory_mb,
        swap_mb: inst.swap_mb,
        cpu_cap: inst.cpu_cap,
        disk_mb: inst.disk_mb,
        pids_limit: 0,
        generation: inst.generation,
        nics: nics
            .into_iter()
            .map(|n| pb::NicSpec {
                network_id: n.network_id.to_string(),
                nic_tag: n.nic_tag,
                vlan_id: n.vlan_id.into(),
                ip: n.ip.to_string(),
                prefix_len: n.prefix_len.into(),
                gateway: n.gateway.unwrap_or_default(),
                resolvers: n.resolvers,
                mtu: n.mtu,
                mac: n.mac,
            })
            .collect(),
    })
}

async fn ensure_instance(c: &Ctx) -> StepResult {
    let spec = instance_spec(c).await?;
    let t = target(c).await?;
    let status = match c.state.agents.ensure_instance(&t, spec.clone(), true).await {
        // The image went missing from the node since it was ensured: pull it again.
        Err(crate::error::Error::AgentRefused(m)) if m.contains("is not on this node") => {
            if let Ok(image) = spec.image_id.parse() {
                c.state.agents.forget_image(t.server, image);
            }
            ensure_image_on(c, &t).await?;
            c.state.agents.ensure_instance(&t, spec, true).await?
        }
        other => other?,
    };
    *c.reported.lock().expect("reported") = Some(status.state);
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
    if c.reported.lock().expect("reported").as_deref() == Some("running") {
        return Ok(());
    }
    let t = target(c).await?;
    for _ in 0..60 {
        match c.state.agents.get_instance(&t, c.job.instance_id).await? {
            Some(s) if s.state == "running" => return Ok(()),
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
        )
        .await?;
    Ok(())
}

fn mark_failed<'a>(c: &'a Ctx, error: &'a str) -> BoxFuture<'a, StepResult> {
    async move {
        c.state
            .db
            .instance_set_state(c.job.instance_id, InstanceState::Failed, &[], Some(error))
            .await?;
        Ok(())
    }
    .boxed()
}
