//! Instance snapshots: the app logic between the API and the node. A row is
//! written before the node is asked and settled after, so every step can be
//! retried by name after a failure or a crash; a rollback holds the
//! instance's row locked while its node works, so no start can slip in.
//!
//! It never runs a snapshot operation without its database record first.

use crate::authz::Action;
use nereid_api::{InstanceId, InstanceState, JobKind, Snapshot, SnapshotRolledBack};

use crate::AppState;
use crate::authz::OpContext;
use crate::error::{Error, Result};

/// The most snapshots an instance may have.
pub const MAX_PER_INSTANCE: usize = 16;

pub fn check_name(name: &str) -> Result<()> {
    if nereid_api::valid_snapshot_name(name) {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            "1-64 of [A-Za-z0-9_.:-], starting with a letter or digit",
        ))
    }
}

async fn placement(s: &AppState, id: InstanceId) -> Result<crate::db::AgentTarget> {
    s.db.instance_placement(id).await?.ok_or_else(|| {
        Error::Conflict(format!(
            "instance {id} is on no server: it has no dataset to snapshot"
        ))
    })
}

/// Snapshots the instance (running or not: a crash-consistent copy).
pub async fn create(s: &AppState, p: &OpContext, id: InstanceId, name: &str) -> Result<Snapshot> {
    check_name(name)?;
    let inst =
        s.db.instance_get(id, p.authorize(Action::SnapshotWrite)?)
            .await?;
    if matches!(
        inst.state,
        InstanceState::Provisioning | InstanceState::Deleting
    ) {
        return Err(Error::Conflict(format!(
            "instance {id} is {}; snapshot it once that is done",
            inst.state
        )));
    }
    s.db.snapshot_begin(
        id,
        p.authorize(Action::SnapshotWrite)?,
        name,
        MAX_PER_INSTANCE,
    )
    .await?;
    let t = placement(s, id).await?;
    match s.agents.create_snapshot(&t, id, name).await {
        Ok(info) => {
            let snap = s.db.snapshot_created(id, name, info.used_bytes).await?;
            refresh_sizes(s, &t, id).await;
            Ok(snap)
        }
        Err(e @ Error::AgentRefused(_)) => {
            // Refused for good (the node does not have the instance): nothing was made.
            s.db.snapshot_forget(id, name).await?;
            Err(e)
        }
        // The node may or may not have made it: the row stays `creating`
        // and a retry of the same name completes it.
        Err(e) => Err(e),
    }
}

/// Records the sizes of the instance's snapshots as its node has them now
/// (best effort: a node that does not answer leaves the last ones).
pub async fn refresh_sizes(s: &AppState, t: &crate::db::AgentTarget, id: InstanceId) {
    match s.agents.list_snapshots(t, id).await {
        Ok(list) => {
            let sizes: Vec<(String, u64)> =
                list.into_iter().map(|i| (i.name, i.used_bytes)).collect();
            if let Err(e) = s.db.snapshot_sizes(id, &sizes).await {
                tracing::warn!(instance = %id, "recording snapshot sizes: {e}");
            }
        }
        Err(e) => tracing::debug!(instance = %id, "snapshot sizes not refreshed: {e}"),
    }
}

/// The instance's snapshots, their sizes refreshed from its node.
pub async fn list(s: &AppState, p: &OpContext, id: InstanceId) -> Result<Vec<Snapshot>> {
    let list =
        s.db.snapshot_list(id, p.authorize(Action::SnapshotRead)?)
            .await?;
    if !list.is_empty()
        && let Some(t) = s.db.instance_placement(id).await?
    {
        refresh_sizes(s, &t, id).await;
        return s
            .db
            .snapshot_list(id, p.authorize(Action::SnapshotRead)?)
            .await;
    }
    Ok(list)
}

/// Deletes a snapshot on the node, then its record.
pub async fn delete(s: &AppState, p: &OpContext, id: InstanceId, name: &str) -> Result<()> {
    s.db.snapshot_deleting(id, p.authorize(Action::SnapshotWrite)?, name)
        .await?;
    let t = placement(s, id).await?;
    s.agents.delete_snapshot(&t, id, name).await?;
    s.db.snapshot_forget(id, name).await
}

/// Rolls a stopped instance back to a snapshot (newer ones are destroyed),
/// and starts it with `start`.
pub async fn rollback(
    s: &AppState,
    p: OpContext,
    id: InstanceId,
    name: &str,
    start: bool,
) -> Result<SnapshotRolledBack> {
    let snap =
        s.db.snapshot_get(id, p.authorize(Action::SnapshotWrite)?, name)
            .await?;
    if snap.state != "created" {
        return Err(Error::Conflict(format!(
            "snapshot {name} is {}; only a created one can be rolled back to",
            snap.state
        )));
    }
    let t = placement(s, id).await?;
    let lock =
        s.db.instance_lock(id, p.authorize(Action::SnapshotWrite)?)
            .await?;
    if lock.state != InstanceState::Stopped || lock.busy {
        return Err(Error::Conflict(format!(
            "instance {id} is {}{}; stop it before rolling back",
            lock.state,
            if lock.busy {
                " with a job working on it"
            } else {
                ""
            }
        )));
    }
    let destroyed = s.agents.rollback_snapshot(&t, id, name).await?;
    lock.finish_rollback(name, &destroyed).await?;
    tracing::info!(instance = %id, snapshot = name, destroyed = destroyed.len(), "rolled back");
    let job_id = if start {
        Some(
            crate::instances::act(s, p, id, JobKind::Start)
                .await?
                .job_id,
        )
    } else {
        None
    };
    Ok(SnapshotRolledBack {
        instance_id: id,
        snapshot: name.to_string(),
        destroyed,
        job_id,
    })
}
