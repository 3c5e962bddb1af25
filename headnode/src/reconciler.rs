//! State sync between nodes and the database: a WatchEvents stream per set-up
//! server applies state changes as they happen (guarded by generation), and a
//! periodic pass compares each node's full report with the database.
//!
//! It only settles instances no job is working on, and it never deletes
//! anything: an instance its node no longer has becomes `failed`, one its
//! node reports failed (a VM whose QEMU died) too, with the node's reason;
//! one marked failed that its node reports again returns to what it is; the
//! instances of a server whose heartbeats stopped become `unknown`. A node
//! that cannot answer for its instances (it cannot see its pool, it does not
//! answer) changes nothing: the server's `sync_error` says why.
//!
//! One headnode at a time runs it (a lease in the database); a pass asks the
//! nodes at most `CONCURRENT` at a time, each within `NODE_TIMEOUT`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use nereid_api::{InstanceId, InstanceState, ServerId};
use tokio::task::JoinHandle;

use crate::AppState;
use crate::agent_client::NodeInstance;
use crate::db::AgentTarget;

const LEASE: &str = "reconciler";
const CONCURRENT: usize = 16;
const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until the process ends; works while this headnode holds the lease.
pub async fn run(state: AppState) {
    let me = uuid::Uuid::new_v4();
    let mut watchers: HashMap<ServerId, JoinHandle<()>> = HashMap::new();
    let missing = Missing::default();
    loop {
        let ttl = state.config.reconcile_interval * 3 + NODE_TIMEOUT;
        match state.db.lease_take(LEASE, me, ttl).await {
            Ok(true) => {
                let started = std::time::Instant::now();
                match pass(&state, &mut watchers, &missing).await {
                    Ok(()) => {
                        let m = &state.metrics;
                        m.reconcile_last_pass_us.store(
                            started.elapsed().as_micros() as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        m.reconcile_passes
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!("reconcile pass failed: {e}"),
                }
            }
            Ok(false) => {
                // Another headnode reconciles: no watchers here either.
                for (_, h) in watchers.drain() {
                    h.abort();
                }
            }
            Err(e) => tracing::warn!("cannot take the reconciler's lease: {e}"),
        }
        tokio::time::sleep(state.config.reconcile_interval).await;
    }
}

async fn pass(
    state: &AppState,
    watchers: &mut HashMap<ServerId, JoinHandle<()>>,
    missing: &Missing,
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
    }
    futures::stream::iter(&targets)
        .for_each_concurrent(CONCURRENT, |t| async move {
            let outcome = match tokio::time::timeout(NODE_TIMEOUT, compare(state, t, missing)).await
            {
                Ok(Ok(())) => {
                    remove_leftovers(state, t).await;
                    if let Err(e) = crate::firewall::sync_server(state, t).await {
                        tracing::warn!(server = %t.server, "firewall sync: {e}");
                    }
                    if let Err(e) = crate::overlay::sync_server(state, t).await {
                        tracing::warn!(server = %t.server, "overlay sync: {e}");
                    }
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("the node did not answer within {NODE_TIMEOUT:?}")),
            };
            if let Some(e) = &outcome {
                tracing::debug!(server = %t.server, "cannot compare with the node: {e}");
            }
            if let Err(e) = state
                .db
                .server_set_sync_error(t.server, outcome.as_deref())
                .await
            {
                tracing::warn!(server = %t.server, "recording the sync state failed: {e}");
            }
        })
        .await;
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
/// Instances a node's report did not hold, since when: one is marked failed
/// only once it stayed missing for `MISSING_FOR` (a pool being imported can
/// answer before all its datasets are there).
type Missing = std::sync::Mutex<HashMap<InstanceId, tokio::time::Instant>>;

fn missing_for(state: &AppState) -> Duration {
    state.config.reconcile_interval * 2
}

async fn compare(state: &AppState, t: &AgentTarget, missing: &Missing) -> crate::error::Result<()> {
    let settled = state.db.instances_settled_on(t.server).await?;
    // Asked even with nothing settled there: a node that cannot answer for
    // its instances shows up in the server's sync_error.
    let report = state.agents.list_instances(t).await?;
    let on_node: HashMap<String, NodeInstance> =
        report.into_iter().map(|s| (s.id.clone(), s)).collect();
    for (id, db_state, metadata_generation) in settled {
        match on_node.get(&id.to_string()) {
            Some(node) => {
                missing.lock().expect("missing").remove(&id);
                // A metadata change the node missed (it was down, the push failed).
                if node.metadata_generation < metadata_generation
                    && let Err(e) = crate::metadata::push(state, id).await
                {
                    tracing::warn!(instance = %id, "metadata push: {e}");
                }
                let st = node.state.instance_state();
                if st != db_state && apply(state, t, id, node).await? {
                    tracing::info!(instance = %id, "now {st}, as its node reports");
                }
            }
            None => {
                let since = *missing
                    .lock()
                    .expect("missing")
                    .entry(id)
                    .or_insert_with(tokio::time::Instant::now);
                if since.elapsed() < missing_for(state) {
                    continue;
                }
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
                        None,
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

/// Removes from a node that answers again what instances deleted by force
/// left there.
async fn remove_leftovers(state: &AppState, t: &AgentTarget) {
    let Ok(ids) = state.db.leftovers_on(t.server).await else {
        return;
    };
    for id in ids {
        match state.agents.delete_instance(t, id).await {
            Ok(()) => {
                tracing::info!(server = %t.server, instance = %id, "removed what a forced delete left on the node");
                let _ = state.db.leftover_removed(t.server, id).await;
            }
            Err(e) => {
                tracing::warn!(server = %t.server, instance = %id, "cannot remove a leftover yet: {e}")
            }
        }
    }
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
