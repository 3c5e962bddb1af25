//! State sync between nodes and the database: a WatchEvents stream per set-up
//! server applies state changes as they happen (guarded by generation), and a
//! periodic pass compares each node's full report with the database.
//!
//! It only settles instances no job is working on, and it never deletes
//! anything: an instance its node no longer has becomes `failed`, one its
//! node reports failed (a VM whose QEMU died) too, with the node's reason;
//! the instances of a server whose heartbeats stopped become `unknown`.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use nereid_api::{InstanceId, InstanceState, ServerId};
use tokio::task::JoinHandle;

use crate::AppState;
use crate::agent_client::NodeInstance;
use crate::db::AgentTarget;

/// Runs until the process ends.
pub async fn run(state: AppState) {
    let mut watchers: HashMap<ServerId, JoinHandle<()>> = HashMap::new();
    loop {
        if let Err(e) = pass(&state, &mut watchers).await {
            tracing::warn!("reconcile pass failed: {e}");
        }
        tokio::time::sleep(state.config.reconcile_interval).await;
    }
}

async fn pass(
    state: &AppState,
    watchers: &mut HashMap<ServerId, JoinHandle<()>>,
) -> crate::error::Result<()> {
    let lost = state.db.instances_mark_unknown_on_lost_servers().await?;
    if lost > 0 {
        tracing::warn!(
            instances = lost,
            "instances of unreachable servers are now unknown"
        );
    }
    let targets = state.db.agent_targets().await?;
    watchers.retain(|_, h| !h.is_finished());
    for t in &targets {
        watchers
            .entry(t.server)
            .or_insert_with(|| tokio::spawn(watch(state.clone(), t.clone())));
        if let Err(e) = compare(state, t).await {
            tracing::debug!(server = %t.server, "cannot compare with the node: {e}");
        }
    }
    let known: HashSet<ServerId> = targets.iter().map(|t| t.server).collect();
    watchers.retain(|id, h| {
        let keep = known.contains(id);
        if !keep {
            h.abort();
        }
        keep
    });
    Ok(())
}

/// Applies one node's full report. The database is read first: an instance
/// settled before the node was asked must be in its answer.
async fn compare(state: &AppState, t: &AgentTarget) -> crate::error::Result<()> {
    let settled = state.db.instances_settled_on(t.server).await?;
    if settled.is_empty() {
        return Ok(());
    }
    let report = state.agents.list_instances(t).await?;
    let on_node: HashMap<String, NodeInstance> =
        report.into_iter().map(|s| (s.id.clone(), s)).collect();
    for (id, db_state, _) in settled {
        match on_node.get(&id.to_string()) {
            Some(node) => {
                let st = node.state.instance_state();
                if st != db_state && apply(state, t, id, node).await? {
                    tracing::info!(instance = %id, "now {st}, as its node reports");
                }
            }
            None => {
                let msg = format!("server {} no longer has this instance", t.server);
                if state
                    .db
                    .instance_set_state(
                        id,
                        InstanceState::Failed,
                        &[
                            InstanceState::Running,
                            InstanceState::Stopped,
                            InstanceState::Unknown,
                        ],
                        Some(&msg),
                    )
                    .await?
                {
                    tracing::warn!(instance = %id, "{msg}; marked failed");
                }
            }
        }
    }
    Ok(())
}

/// Follows a node's WatchEvents stream until it breaks (the next pass
/// starts a new one).
async fn watch(state: AppState, t: AgentTarget) {
    let stream = match state.agents.watch_events(&t).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(server = %t.server, "cannot watch events: {e}");
            return;
        }
    };
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        let Ok(id) = ev.id.parse::<InstanceId>() else {
            continue;
        };
        match apply(&state, &t, id, &ev).await {
            Ok(true) => {
                tracing::info!(instance = %id, "now {}, as its node reported", ev.state.instance_state())
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("applying an event of {id} failed: {e}"),
        }
    }
}

/// Applies what a node reports of one instance (guarded by generation and
/// by no job working on it); true when the state changed.
async fn apply(
    state: &AppState,
    t: &AgentTarget,
    id: InstanceId,
    node: &NodeInstance,
) -> crate::error::Result<bool> {
    let st = node.state.instance_state();
    let reason = (st == InstanceState::Failed).then(|| {
        format!(
            "server {} reports: {}",
            t.server,
            node.reason.as_deref().unwrap_or("it failed")
        )
    });
    state
        .db
        .instance_apply_report(t.server, id, st, node.generation, reason.as_deref())
        .await
}
