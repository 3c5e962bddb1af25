//! The headnode's side of mutual TLS: the datacenter's CA (loaded from the
//! pki dir, created at first start), this headnode's own certificate (new at
//! every start), and certificates for nodes' public keys.
//!
//! The CA key stays in its file: it is never written to the database, sent
//! to anyone or logged. What the database holds (fingerprints) cannot
//! command a node.

use std::path::Path;
use std::sync::Arc;

use nereid_api::ServerId;
use nereid_tls::{Ca, Clients, HEADNODE_NAME, Identity, Trust};

use crate::error::{Error, Result};

pub struct Pki {
    ca: Ca,
    identity: Arc<Identity>,
    node_cert_lifetime: std::time::Duration,
}

/// A certificate issued to a node.
pub struct Issued {
    pub pem: String,
    pub sha256: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
}

impl Pki {
    pub fn load(dir: &Path, node_cert_lifetime: std::time::Duration) -> anyhow::Result<Pki> {
        let ca = Ca::load_or_create(dir)?;
        let identity = ca.identity(HEADNODE_NAME)?;
        Ok(Pki {
            ca,
            identity,
            node_cert_lifetime,
        })
    }

    /// The sha256 of the CA certificate, which join tokens carry.
    pub fn ca_fingerprint(&self) -> String {
        self.ca.fingerprint()
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// A certificate naming `server` for a node's public key.
    pub fn issue_node(&self, server: ServerId, public_key: &[u8]) -> Result<Issued> {
        let (pem, not_after) = self
            .ca
            .issue_valid_for(
                &nereid_tls::node_name(&server.to_string()),
                public_key,
                self.node_cert_lifetime,
            )
            .map_err(|e| Error::InvalidArgument(format!("cannot certify the node's key: {e}")))?;
        let der = nereid_tls::pki::certs_from_pem("the issued certificate", &pem)
            .map_err(|e| Error::Internal(e.to_string()))?
            .remove(0);
        Ok(Issued {
            sha256: nereid_tls::fingerprint(&der),
            pem: pem.to_string(),
            not_after: chrono::DateTime::from_timestamp(not_after, 0).unwrap_or_default(),
        })
    }

    /// How this headnode calls agents.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        nereid_tls::client_config(
            Some(self.identity.clone()),
            Trust::Ca(self.ca.cert_der.clone()),
        )
    }

    /// How agents call this headnode (a joining node has no certificate yet).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        nereid_tls::server_config(self.identity.clone(), &self.ca.cert_der, Clients::AnyOrNone)
    }
}
