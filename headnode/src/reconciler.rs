//! State sync between nodes and the database: a WatchEvents stream per set-up
//! server applies state changes as they happen (guarded by generation), and a
//! periodic pass compares each node's full report with the database.
//!
//! It only settles instances no job is working on, and it never deletes
//! anything: an instance its node no longer has becomes `failed`, the
//! instances of a server whose heartbeats stopped become `unknown`.

use std::collections::{HashMap, HashSet};

use nereid_api::{InstanceId, InstanceState, ServerId};
use tokio::task::JoinHandle;

use crate::AppState;
use crate::db::AgentTarget;

fn reported_state(s: &str) -> Option<InstanceState> {
    match s {
        "running" => Some(InstanceState::Running),
        "stopped" => Some(InstanceState::Stopped),
        _ => None,
    }
}

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
    let on_node: HashMap<String, (String, u64)> = report
        .into_iter()
        .filter_map(|s| {
            let spec = s.spec?;
            Some((spec.id, (s.state, spec.generation)))
        })
        .collect();
    for (id, db_state, _) in settled {
        match on_node.get(&id.to_string()) {
            Some((st, generation)) => {
                if let Some(st) = reported_state(st)
                    && st != db_state
                    && state
                        .db
                        .instance_apply_report(t.server, id, st, *generation)
                        .await?
                {
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
    let mut stream = match state.agents.watch_events(&t).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(server = %t.server, "cannot watch events: {e}");
            return;
        }
    };
    while let Ok(Some(ev)) = stream.message().await {
        let (Ok(id), Some(st)) = (ev.id.parse::<InstanceId>(), reported_state(&ev.state)) else {
            continue;
        };
        match state
            .db
            .instance_apply_report(t.server, id, st, ev.generation)
            .await
        {
            Ok(true) => tracing::info!(instance = %id, "now {st}, as its node reported"),
            Ok(false) => {}
            Err(e) => tracing::warn!("applying an event of {id} failed: {e}"),
        }
    }
}
