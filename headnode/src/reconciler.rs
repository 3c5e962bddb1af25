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
//! One headnode at a time runs it (a lease in the database). A pass reads
//! the database in a few statements per `CHUNK` servers (never one per
//! server), asks the nodes at most `CONCURRENT` at a time, each within
//! `NODE_TIMEOUT`, writes the servers' sync errors in one statement (only
//! those that changed), and pushes the firewall and overlay sets of a
//! rolling share of the servers (see `Sweep`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use nereid_api::{InstanceId, InstanceState, ServerId};
use tokio::task::JoinHandle;

use crate::AppState;
use crate::agent_client::NodeInstance;
use crate::db::AgentTarget;

const LEASE: &str = "reconciler";
const CONCURRENT: usize = 32;
/// Servers whose settled instances one statement reads.
const CHUNK: usize = 250;
/// A pass pushes the sets of one server in this many (see `Sweep`).
const SWEEP: u64 = 6;
const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until the process ends; works while this headnode holds the lease.
pub async fn run(state: AppState) {
    let me = uuid::Uuid::new_v4();
    let mut watchers: HashMap<ServerId, JoinHandle<()>> = HashMap::new();
    let missing = Missing::default();
    let mut sweep = Sweep::default();
    let mut last_pass = Duration::ZERO;
    loop {
        // A pass that takes longer than the interval waits as long as it
        // took: the reconciler uses at most half of the time (and of the
        // database) however large the fleet.
        let pause = state.config.reconcile_interval.max(last_pass);
        let ttl = pause * 3 + NODE_TIMEOUT;
        match state.db.lease_take(LEASE, me, ttl).await {
            Ok(true) => {
                let started = std::time::Instant::now();
                match pass(&state, &mut watchers, &missing, &mut sweep).await {
                    Ok(()) => {
                        let m = &state.metrics;
                        last_pass = started.elapsed();
                        m.reconcile_last_pass_us.store(
                            last_pass.as_micros() as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        m.reconcile_passes
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!("reconcile pass failed: {e}"),
                }
            }
            Ok(false) => {
                // Another headnode reconciles: no watchers here either,
                // and a full push when this one takes over again.
                for (_, h) in watchers.drain() {
                    h.abort();
                }
                sweep = Sweep::default();
            }
            Err(e) => tracing::warn!("cannot take the reconciler's lease: {e}"),
        }
        tokio::time::sleep(state.config.reconcile_interval.max(last_pass)).await;
    }
}

async fn pass(
    state: &AppState,
    watchers: &mut HashMap<ServerId, JoinHandle<()>>,
    missing: &Missing,
    sweep: &mut Sweep,
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
    let mut leftovers = state.db.leftovers().await?;
    sweep.next_pass(state.agents.take_failed_pushes());
    let mut outcomes = Vec::with_capacity(targets.len());
    // The database is read a chunk of servers at a time, before their nodes
    // are asked: an instance settled before the node was asked must be in
    // its answer.
    for chunk in targets.chunks(CHUNK) {
        // A node's event stream starts with its chunk, so a headnode that
        // takes over does not open every node's connection at once.
        for t in chunk {
            watchers
                .entry(t.server)
                .or_insert_with(|| tokio::spawn(watch(state.clone(), t.clone())));
        }
        let ids: Vec<ServerId> = chunk.iter().map(|t| t.server).collect();
        let mut settled = state.db.instances_settled_on(&ids).await?;
        let work: Vec<_> = chunk
            .iter()
            .map(|t| {
                let mine = settled.remove(&t.server).unwrap_or_default();
                let left = leftovers.remove(&t.server).unwrap_or_default();
                (t.clone(), mine, left, sweep.due(t.server))
            })
            .collect();
        let done: Vec<(ServerId, Option<String>, bool)> = futures::stream::iter(work)
            .map(|(t, mine, left, due)| async move {
                let t = &t;
                let outcome = match tokio::time::timeout(
                    NODE_TIMEOUT,
                    compare(state, t, mine, missing),
                )
                .await
                {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!("the node did not answer within {NODE_TIMEOUT:?}")),
                };
                let mut pushed = true;
                match &outcome {
                    None => {
                        remove_leftovers(state, t, left).await;
                        if due {
                            pushed = push_sets(state, t).await;
                        }
                    }
                    Some(e) => {
                        tracing::debug!(server = %t.server, "cannot compare with the node: {e}");
                        // Pushed in full once it answers again.
                        pushed = false;
                    }
                }
                (t.server, outcome, pushed)
            })
            .buffer_unordered(CONCURRENT)
            .collect()
            .await;
        for (server, outcome, pushed) in done {
            if !pushed {
                state.agents.push_failed(server);
            }
            outcomes.push((server, outcome));
        }
    }
    if let Err(e) = state.db.servers_set_sync_error(&outcomes).await {
        tracing::warn!("recording the servers' sync state failed: {e}");
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

/// Pushes a node's firewall and overlay sets again (nothing is sent when it
/// has them); false when one failed.
async fn push_sets(state: &AppState, t: &AgentTarget) -> bool {
    let mut ok = true;
    if let Err(e) = crate::firewall::sync_server(state, t).await {
        tracing::warn!(server = %t.server, "firewall sync: {e}");
        ok = false;
    }
    if let Err(e) = crate::overlay::sync_server(state, t).await {
        tracing::warn!(server = %t.server, "overlay sync: {e}");
        ok = false;
    }
    ok
}

/// Which servers' firewall and overlay sets a pass pushes again. Every
/// change pushes its sets when it happens; a pass repairs what a failed
/// push or a headnode dying mid-push left behind. Compiling a node's sets
/// costs queries, so a pass takes a rolling `SWEEP`th of the servers (every
/// server at least every `SWEEP` passes), every server on this headnode's
/// first pass, and at once those a push from this headnode failed to reach
/// and those that did not answer the last pass.
#[derive(Default)]
struct Sweep {
    passes: u64,
    /// Marked for a push since the last pass (`AgentPool::push_failed`).
    due_now: HashSet<ServerId>,
}

impl Sweep {
    fn next_pass(&mut self, marked: HashSet<ServerId>) {
        self.passes += 1;
        self.due_now = marked;
    }

    fn due(&self, server: ServerId) -> bool {
        let slot = u64::from(server.as_uuid().as_u128() as u8) % SWEEP;
        self.passes == 1 || self.passes % SWEEP == slot || self.due_now.contains(&server)
    }
}

/// Instances a node's report did not hold, since when: one is marked failed
/// only once it stayed missing for `MISSING_FOR` (a pool being imported can
/// answer before all its datasets are there).
type Missing = std::sync::Mutex<HashMap<InstanceId, tokio::time::Instant>>;

fn missing_for(state: &AppState) -> Duration {
    state.config.reconcile_interval * 2
}

/// Applies one node's full report to its `settled` instances, which were
/// read before the node was asked (an instance settled before then must be
/// in its answer).
async fn compare(
    state: &AppState,
    t: &AgentTarget,
    settled: Vec<(InstanceId, InstanceState, u64)>,
    missing: &Missing,
) -> crate::error::Result<()> {
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
async fn remove_leftovers(state: &AppState, t: &AgentTarget, ids: Vec<InstanceId>) {
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
