//! Keeps each node's overlay (fabric) forwarding entries equal to where the
//! instances on the VNIs it carries live: for every other node's instance
//! NIC on those VNIs, its MAC and address behind that node's underlay
//! address. Pushed when an instance is about to start on a node, after one
//! comes or goes (to every node sharing its VNIs), and on every reconcile
//! pass (a node that missed a push converges there). It never decides who
//! may use a network (that is the create's checks) and never writes the
//! database.

use nereid_api::{InstanceId, ServerId};
use nereid_proto::v1 as pb;

use crate::AppState;
use crate::agent_client::Pushed;
use crate::db::{AgentTarget, OverlayPeer};
use crate::error::Result;

/// The set of one node, from its peers (in the datastore's stable order); a
/// peer whose node shows no underlay address is left out until it does.
pub fn node_overlay(peers: &[OverlayPeer]) -> pb::OverlaySet {
    let mut set = pb::OverlaySet {
        generation: 0,
        peers: peers
            .iter()
            .filter_map(|p| {
                Some(pb::OverlayPeer {
                    vni: p.vni,
                    mac: p.mac.clone(),
                    ip: p.ip.clone(),
                    underlay: p.underlay.clone()?,
                })
            })
            .collect(),
    };
    set.generation = crate::agent_client::generation_of(&set);
    set
}

/// Compiles and pushes one node's overlay (nothing is sent when the node has
/// this generation already).
pub async fn sync_server(state: &AppState, t: &AgentTarget) -> Result<()> {
    let lock = state.agents.push_lock(t.server, Pushed::Overlay);
    let _held = lock.lock().await;
    let peers = state.db.overlay_peers(t.server).await?;
    let unreachable = peers.iter().filter(|p| p.underlay.is_none()).count();
    if unreachable > 0 {
        tracing::warn!(server = %t.server, unreachable,
            "peers on nodes with no address on their overlay network's nic tag are left out");
    }
    let set = node_overlay(&peers);
    let (generation, n) = (set.generation, set.peers.len());
    if state.agents.apply_overlay(t, set).await? {
        tracing::info!(server = %t.server, generation, peers = n, "overlay pushed");
    }
    Ok(())
}

/// After an instance came or went: pushes, in the background, every node
/// that runs an instance on one of its VNIs (none for an instance on no
/// overlay network).
pub fn spawn_sync_peers(state: &AppState, instance: InstanceId) {
    use futures::StreamExt;
    let state = state.clone();
    tokio::spawn(async move {
        let servers = match state.db.overlay_servers_of(instance).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%instance, "overlay sync: {e}");
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

async fn sync_logged(state: &AppState, server: ServerId) {
    let result = match state.db.agent_target(server).await {
        Ok(t) => sync_server(state, &t).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(%server, "overlay sync: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(mac: &str, underlay: Option<&str>) -> OverlayPeer {
        OverlayPeer {
            vni: 8_388_608,
            mac: mac.into(),
            ip: "192.168.7.10".into(),
            underlay: underlay.map(str::to_string),
        }
    }

    #[test]
    fn generations_follow_content_and_peers_without_an_underlay_wait() {
        let a = node_overlay(&[peer("92:00:00:00:00:01", Some("172.31.5.11"))]);
        let b = node_overlay(&[
            peer("92:00:00:00:00:01", Some("172.31.5.11")),
            peer("92:00:00:00:00:02", None),
        ]);
        assert_eq!(a.peers.len(), 1);
        assert_eq!(a, b);
        let moved = node_overlay(&[peer("92:00:00:00:00:01", Some("172.31.5.12"))]);
        assert_ne!(a.generation, moved.generation);
        assert_ne!(node_overlay(&[]).generation, a.generation);
    }
}
