//! The node's side of mutual TLS: its key and certificate (`node.pem`, mode
//! 0600, one file so that a rotation replaces both at once), the CA it
//! trusts (`ca.crt`), and the key of a rotation in progress
//! (`node.key.next`). The key is made here and never leaves the node.
//!
//! The agent accepts calls only from a certificate of its CA named as a
//! headnode, and calls the headnode only if it presents one. This module
//! must never log a key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nereid_tls::pki::{certs_from_pem, read_file, write_file};
use nereid_tls::{Clients, HEADNODE_NAME, Identity, NodeKey, PkiError, Trust};
use rustls::pki_types::CertificateDer;

pub const NODE_FILE: &str = "node.pem";
pub const CA_FILE: &str = "ca.crt";
const NEXT_KEY_FILE: &str = "node.key.next";

pub struct NodeCerts {
    dir: PathBuf,
    pub identity: Arc<Identity>,
    ca: CertificateDer<'static>,
    /// Serialises rotations (a second RenewKey replaces the first's key).
    rotation: Mutex<()>,
    /// The channel to the headnode (its URL with it): remade when the
    /// certificate changes, since a connection presents the certificate of
    /// its handshake.
    headnode: Mutex<Option<(String, tonic::transport::Channel)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("no rotation is in progress: call RenewKey first")]
    NoPendingKey,
}

impl NodeCerts {
    /// Saves what joining gave this node.
    pub fn save_joined(
        dir: &Path,
        key: &NodeKey,
        cert_pem: &str,
        ca_pem: &str,
    ) -> Result<NodeCerts, PkiError> {
        // Both must parse before anything is written.
        let ca = certs_from_pem("the CA certificate from the headnode", ca_pem)?.remove(0);
        let node = format!("{cert_pem}{}", key.pem());
        let identity = Identity::from_pem(&node, &node)?;
        write_file(&dir.join(CA_FILE), ca_pem.as_bytes(), 0o644)?;
        write_file(&dir.join(NODE_FILE), node.as_bytes(), 0o600)?;
        Ok(NodeCerts {
            dir: dir.into(),
            identity,
            ca,
            rotation: Mutex::new(()),
            headnode: Mutex::new(None),
        })
    }

    /// What an earlier join saved; Ok(None) if the node has no certificate.
    pub fn load(dir: &Path) -> Result<Option<NodeCerts>, PkiError> {
        let (Some(node), Some(ca_pem)) = (
            read_file(&dir.join(NODE_FILE))?,
            read_file(&dir.join(CA_FILE))?,
        ) else {
            return Ok(None);
        };
        let ca = certs_from_pem(&dir.join(CA_FILE).display().to_string(), &ca_pem)?.remove(0);
        Ok(Some(NodeCerts {
            dir: dir.into(),
            identity: Identity::from_pem(&node, &node)?,
            ca,
            rotation: Mutex::new(()),
            headnode: Mutex::new(None),
        }))
    }

    /// How the agent's service accepts calls: from headnodes only.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        nereid_tls::server_config(self.identity.clone(), &self.ca, Clients::Headnode)
    }

    /// Connects to the headnode's registry at `url` (it must present a
    /// headnode certificate of the CA); `headnode` gives the channel.
    pub fn connect(&self, url: &str) -> Result<(), String> {
        let config =
            nereid_tls::client_config(Some(self.identity.clone()), Trust::Ca(self.ca.clone()));
        let channel = nereid_tls::Connector::new(config, HEADNODE_NAME)
            .map_err(|e| e.to_string())?
            .channel(url, |e| {
                e.connect_timeout(std::time::Duration::from_secs(5))
                    .timeout(std::time::Duration::from_secs(600))
            })
            .map_err(|e| format!("the headnode's address {url:?} is invalid: {e}"))?;
        *self.headnode.lock().expect("headnode lock") = Some((url.to_string(), channel));
        Ok(())
    }

    /// The channel to the headnode (None before `connect`).
    pub fn headnode(&self) -> Option<tonic::transport::Channel> {
        self.headnode
            .lock()
            .expect("headnode lock")
            .as_ref()
            .map(|(_, c)| c.clone())
    }

    /// Makes the key of a rotation (kept aside; the current one stays in
    /// use) and returns its public half.
    pub fn renew_key(&self) -> Result<Vec<u8>, CertError> {
        let _one = self.rotation.lock().expect("rotation lock");
        let key = NodeKey::generate()?;
        write_file(&self.dir.join(NEXT_KEY_FILE), key.pem().as_bytes(), 0o600)?;
        Ok(key.public_key())
    }

    /// Installs the certificate issued for the rotation's key; returns its
    /// fingerprint. Connections made from now on present it.
    pub fn install(&self, cert_pem: &str) -> Result<String, CertError> {
        let _one = self.rotation.lock().expect("rotation lock");
        let next = self.dir.join(NEXT_KEY_FILE);
        let key = read_file(&next)?.ok_or(CertError::NoPendingKey)?;
        let node = format!("{cert_pem}{key}");
        // Refuses a certificate for another key before anything changes.
        let checked = Identity::from_pem(&node, &node)?;
        write_file(&self.dir.join(NODE_FILE), node.as_bytes(), 0o600)?;
        self.identity.replace(&node, &node)?;
        let _ = std::fs::remove_file(&next);
        // New connections to the headnode present the new certificate.
        let url = self
            .headnode
            .lock()
            .expect("headnode lock")
            .as_ref()
            .map(|(u, _)| u.clone());
        if let Some(url) = url
            && let Err(e) = self.connect(&url)
        {
            tracing::error!("reconnecting to the headnode: {e}");
        }
        Ok(checked.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_installs_only_a_certificate_for_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = nereid_tls::Ca::load_or_create(&dir.path().join("pki")).unwrap();
        let key = NodeKey::generate().unwrap();
        let (pem, _) = ca.issue("s.node.nereid", &key.public_key()).unwrap();
        let certs = NodeCerts::save_joined(dir.path(), &key, &pem, &ca.cert_pem).unwrap();
        let first = certs.identity.fingerprint();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(NODE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(certs.install(&pem), Err(CertError::NoPendingKey)));

        let public = certs.renew_key().unwrap();
        // A certificate for some other key is refused; nothing changes.
        let stranger = NodeKey::generate().unwrap();
        let (wrong, _) = ca.issue("s.node.nereid", &stranger.public_key()).unwrap();
        assert!(certs.install(&wrong).is_err());
        assert_eq!(certs.identity.fingerprint(), first);
        let (right, _) = ca.issue("s.node.nereid", &public).unwrap();
        let fp = certs.install(&right).unwrap();
        assert_ne!(fp, first);
        assert_eq!(certs.identity.fingerprint(), fp);
        // A restarted agent loads the new certificate.
        let again = NodeCerts::load(dir.path()).unwrap().unwrap();
        assert_eq!(again.identity.fingerprint(), fp);
        assert!(!dir.path().join(NEXT_KEY_FILE).exists());
    }
}
