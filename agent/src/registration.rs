//! The agent's side of the registry: joining with a token on first start, then
//! heartbeats at the interval the headnode asks for.

use std::time::Duration;

use nereid_proto::v1 as pb;
use nereid_proto::v1::registry_client::RegistryClient;
use tonic::transport::{Channel, Endpoint};

use crate::identity::{self, Identity};
use crate::sysinfo;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the headnode's address {0:?} is invalid")]
    Address(String),
    #[error("cannot reach the headnode at {address}: {message}")]
    Unreachable { address: String, message: String },
    #[error("the headnode refused to register this node: {0}")]
    Refused(String),
}

pub fn channel(headnode: &str) -> Result<Channel, JoinError> {
    Ok(Endpoint::from_shared(headnode.to_string())
        .map_err(|_| JoinError::Address(headnode.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect_lazy())
}

/// Registers this node with a join token; retries while the headnode is unreachable.
pub async fn join(
    headnode: &str,
    token: &str,
    sysinfo: pb::Sysinfo,
    address: String,
) -> Result<(Identity, u32), JoinError> {
    let mut client = RegistryClient::new(channel(headnode)?);
    let req = pb::RegisterRequest {
        join_token: token.trim().to_string(),
        sysinfo: Some(sysinfo),
        agent_address: address,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut attempts = 0;
    let resp = loop {
        match client.register(req.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(st) if st.code() == tonic::Code::Unavailable && attempts < 30 => {
                attempts += 1;
                tracing::warn!("headnode unreachable ({}); retrying", st.message());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(st) if st.code() == tonic::Code::Unavailable => {
                return Err(JoinError::Unreachable {
                    address: headnode.into(),
                    message: st.message().into(),
                });
            }
            Err(st) => return Err(JoinError::Refused(st.message().to_string())),
        }
    };
    let id = Identity {
        server_id: resp.server_id,
        node_credential: resp.node_credential,
        control_key_sha256: identity::hash_hex(&resp.control_key),
        headnode: headnode.to_string(),
    };
    Ok((id, resp.heartbeat_interval_ms))
}

/// Sends heartbeats forever. The host's sysinfo (whose probes take seconds)
/// is collected in the background and rides on the first heartbeat after it
/// is ready, so heartbeats start at once.
pub async fn heartbeat_loop(
    id: Identity,
    address: String,
    overrides: sysinfo::Overrides,
    mut interval_ms: u32,
) {
    let mut client = match channel(&id.headnode) {
        Ok(ch) => RegistryClient::new(ch),
        Err(e) => {
            tracing::error!("{e}");
            return;
        }
    };
    let (info_tx, mut info_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = info_tx.send(sysinfo::collect(&overrides).await);
    });
    let mut pending_sysinfo: Option<pb::Sysinfo> = None;
    let mut sysinfo_sent = false;
    let mut failures = 0u32;
    loop {
        if !sysinfo_sent && pending_sysinfo.is_none() {
            pending_sysinfo = info_rx.try_recv().ok();
        }
        let mut req = tonic::Request::new(pb::HeartbeatRequest {
            server_id: id.server_id.clone(),
            usage: Some(sysinfo::usage().await),
            agent_address: address.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            sysinfo: pending_sysinfo.clone(),
        });
        if let Ok(v) = format!("Bearer {}", id.node_credential).parse() {
            req.metadata_mut().insert(nereid_proto::AUTHORIZATION, v);
        }
        match client.heartbeat(req).await {
            Ok(r) => {
                if failures > 0 {
                    tracing::info!("heartbeats accepted again after {failures} failures");
                }
                failures = 0;
                if pending_sysinfo.take().is_some() {
                    sysinfo_sent = true;
                }
                let asked = r.into_inner().heartbeat_interval_ms;
                if asked >= 100 {
                    interval_ms = asked;
                }
            }
            Err(st) => {
                failures += 1;
                if st.code() == tonic::Code::Unauthenticated {
                    tracing::error!(
                        "the headnode refused this node's heartbeat: {}",
                        st.message()
                    );
                } else {
                    tracing::warn!("heartbeat failed: {} ({:?})", st.message(), st.code());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(interval_ms.into())).await;
    }
}
