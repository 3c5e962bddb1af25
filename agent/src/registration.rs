//! The agent's side of the registry: joining with a token on first start
//! (the headnode must present the CA the token names before the node sends
//! anything), then heartbeats at the interval the headnode asks for, over
//! mutual TLS.

use std::time::Duration;

use nereid_proto::v1 as pb;
use nereid_proto::v1::registry_client::RegistryClient;

use crate::certs::NodeCerts;
use crate::identity::Identity;
use crate::sysinfo;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the headnode's address {0:?} is invalid")]
    Address(String),
    #[error(
        "the join token carries no CA fingerprint (it must end with '.<sha256>'); make a new one with `nereid server join-token`"
    )]
    NoFingerprint,
    #[error("cannot reach the headnode at {address}: {message}")]
    Unreachable { address: String, message: String },
    #[error(
        "{address} is not the headnode that made this join token; nothing was sent to it: {message}"
    )]
    WrongHeadnode { address: String, message: String },
    #[error("the headnode refused to register this node: {0}")]
    Refused(String),
    #[error("cannot keep what joining gave this node: {0}")]
    Save(#[from] nereid_tls::PkiError),
}

/// The TLS refusal somewhere in an error's sources, if there is one.
fn tls_refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(t.to_string());
        }
        cur = err.source();
    }
    None
}

/// Registers this node with a join token; retries while the headnode is
/// unreachable. Saves the node's key and certificate in `state_dir`.
pub async fn join(
    headnode: &str,
    token: &str,
    sysinfo: pb::Sysinfo,
    address: String,
    state_dir: &std::path::Path,
) -> Result<(Identity, NodeCerts, u32), JoinError> {
    let (secret, ca_sha256) =
        nereid_tls::split_join_token(token).ok_or(JoinError::NoFingerprint)?;
    let config = nereid_tls::client_config(None, nereid_tls::Trust::Pinned(ca_sha256));
    let channel = nereid_tls::Connector::new(config, nereid_tls::HEADNODE_NAME)
        .map_err(|_| JoinError::Address(headnode.to_string()))?
        .channel(headnode, |e| {
            e.connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30))
        })
        .map_err(|_| JoinError::Address(headnode.to_string()))?;
    let mut client = RegistryClient::new(channel);
    let key = nereid_tls::NodeKey::generate()?;
    let req = pb::RegisterRequest {
        join_token: secret.to_string(),
        sysinfo: Some(sysinfo),
        agent_address: address,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        public_key: key.public_key(),
    };
    let mut attempts = 0;
    let resp = loop {
        match client.register(req.clone()).await {
            Ok(r) => break r.into_inner(),
            Err(st) if st.code() == tonic::Code::Unavailable => {
                if let Some(message) = tls_refusal(&st) {
                    return Err(JoinError::WrongHeadnode {
                        address: headnode.into(),
                        message,
                    });
                }
                if attempts >= 30 {
                    return Err(JoinError::Unreachable {
                        address: headnode.into(),
                        message: st.message().into(),
                    });
                }
                attempts += 1;
                tracing::warn!("headnode unreachable ({}); retrying", st.message());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(st) => return Err(JoinError::Refused(st.message().to_string())),
        }
    };
    let certs = NodeCerts::save_joined(state_dir, &key, &resp.certificate_pem, &resp.ca_pem)?;
    let id = Identity {
        server_id: resp.server_id,
        headnode: headnode.to_string(),
    };
    Ok((id, certs, resp.heartbeat_interval_ms))
}

/// Sends heartbeats forever over the node's channel to the headnode (taken
/// again for each one: a rotated certificate gets a new one). The host's sysinfo (whose
/// probes take seconds) is collected in the background and rides on the
/// first heartbeat after it is ready, so heartbeats start at once.
pub async fn heartbeat_loop(
    id: Identity,
    certs: std::sync::Arc<NodeCerts>,
    address: String,
    overrides: sysinfo::Overrides,
    mut interval_ms: u32,
) {
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
        let req = tonic::Request::new(pb::HeartbeatRequest {
            server_id: id.server_id.clone(),
            usage: Some(sysinfo::usage().await),
            agent_address: address.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            sysinfo: pending_sysinfo.clone(),
        });
        let Some(channel) = certs.headnode() else {
            tracing::error!("no channel to the headnode");
            return;
        };
        match RegistryClient::new(channel).heartbeat(req).await {
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
