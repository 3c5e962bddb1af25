//! Rotating a node's certificate without restarting anything on it: the
//! node makes a new key, the CA certifies it, the node installs it. And
//! revoking one: refused at once, short of deleting the server.
//!
//! Each step can be interrupted: until the node presents the new
//! certificate the old one keeps working (both are accepted), and the
//! first heartbeat with the new one retires the old. A rotation run again
//! starts over with another key.

use nereid_api::{ServerCertificate, ServerId};

use crate::AppState;
use crate::error::{Error, Result};

pub async fn rotate(s: &AppState, id: ServerId) -> Result<ServerCertificate> {
    let server = s.db.server_get(id).await?;
    let address = server.agent_address;
    let public_key = s.agents.renew_key(id, &address).await?;
    let issued = s.pki.issue_node(id, &public_key)?;
    s.db.server_cert_rotating(id, &issued.sha256, issued.not_after)
        .await?;
    crate::fault::point("rotate_certificate:pending");
    let presented = s
        .agents
        .install_certificate(id, &address, &issued.pem)
        .await?;
    if presented != issued.sha256 {
        return Err(Error::Internal(format!(
            "server {id} installed a certificate with sha256 {presented}, not the one issued ({})",
            issued.sha256
        )));
    }
    s.db.server_cert_rotated(id, &issued.sha256).await?;
    tracing::info!(server = %id, sha256 = %issued.sha256, not_after = %issued.not_after, "node certificate rotated");
    Ok(ServerCertificate {
        sha256: issued.sha256,
        not_after: issued.not_after,
        revoked_at: None,
    })
}

/// Revokes the server's certificate (and a rotation's pending one): its
/// heartbeats and image downloads are refused from now on and the server is
/// `unknown`, with the reason, until a rotation gives the node a new key.
/// Revoking again changes nothing.
pub async fn revoke(s: &AppState, id: ServerId) -> Result<nereid_api::Server> {
    let at = s.db.server_cert_revoke(id).await?;
    tracing::warn!(server = %id, revoked_at = %at, "node certificate revoked");
    s.db.server_get(id).await
}
