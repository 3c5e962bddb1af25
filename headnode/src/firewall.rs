//! Keeps each node's firewall equal to what the enabled rules compile to for
//! the instances it runs: pushed at once after a rule changes or an instance
//! comes or goes, and on every reconcile pass (a node that missed a push, or
//! a headnode that restarted, converges there). It never decides what a
//! rule means (that is `fwrule`) and never writes the database.

use nereid_api::{AccountId, ServerId};

use crate::AppState;
use crate::db::AgentTarget;
use crate::error::Result;

/// Compiles and pushes one node's firewall (nothing is sent when the node
/// has this generation already).
pub async fn sync_server(state: &AppState, t: &AgentTarget) -> Result<()> {
    // Compiled under the lock: the last sync to take it reads the newest rows.
    let lock = state
        .agents
        .push_lock(t.server, crate::agent_client::Pushed::Firewall);
    let _held = lock.lock().await;
    let owners = state.db.fw_owners_on(t.server).await?;
    let set = if owners.is_empty() {
        crate::fwrule::node_firewall(t.server, &[], &[])
    } else {
        let rules = state.db.fw_rules_active(&owners).await?;
        // A global rule's `all vms` and tags reach every owner's instances.
        let everyone = rules.iter().any(|r| r.owner.is_none());
        let instances = if everyone {
            state.db.fw_instances(None).await?
        } else {
            state.db.fw_instances(Some(&owners)).await?
        };
        crate::fwrule::node_firewall(t.server, &rules, &instances)
    };
    let generation = set.generation;
    if state.agents.apply_firewall(t, set).await? {
        tracing::info!(server = %t.server, generation, "firewall pushed");
    }
    Ok(())
}

/// Pushes every set-up node's firewall (after a rule changed), a few at a
/// time; failures are logged, the reconciler retries them.
pub async fn sync_all(state: &AppState) {
    use futures::StreamExt;
    let targets = match state.db.agent_targets().await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("firewall sync: {e}");
            return;
        }
    };
    futures::stream::iter(targets)
        .for_each_concurrent(8, |t| async move {
            if let Err(e) = sync_server(state, &t).await {
                tracing::warn!(server = %t.server, "firewall sync: {e}");
            }
        })
        .await;
}

/// `sync_all` in the background (the request that changed a rule does not wait).
pub fn spawn_sync_all(state: &AppState) {
    let state = state.clone();
    tokio::spawn(async move { sync_all(&state).await });
}

/// After an instance of `owner` came or went (or changed address): pushes,
/// in the background, the nodes whose rules may name it — none when neither
/// the owner nor an operator has an enabled rule.
pub fn spawn_sync_naming(state: &AppState, owner: AccountId) {
    use futures::StreamExt;
    let state = state.clone();
    tokio::spawn(async move {
        let servers = match state.db.fw_servers_naming(owner).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%owner, "firewall sync: {e}");
                return;
            }
        };
        futures::stream::iter(servers)
            .for_each_concurrent(8, |server| {
                let state = state.clone();
                async move { sync_logged(&state, server).await }
            })
            .await;
    });
}

/// Pushes one server's firewall in the background (an instance came or went).
pub fn spawn_sync_server(state: &AppState, server: ServerId) {
    let state = state.clone();
    tokio::spawn(async move { sync_logged(&state, server).await });
}

/// Syncs one server by id; a failure is logged (the reconciler retries).
async fn sync_logged(state: &AppState, server: ServerId) {
    let result = match state.db.agent_target(server).await {
        Ok(t) => sync_server(state, &t).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(%server, "firewall sync: {e}");
    }
}
