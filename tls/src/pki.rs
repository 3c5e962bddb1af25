//! Keys and certificates: the CA, the certificates it issues, a node's own
//! key, and a swappable identity that TLS configs read at every handshake
//! (so a rotated certificate takes effect without a restart).
//!
//! Files with private keys are written with mode 0600; nothing here logs one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SignatureAlgorithm,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// The name every headnode's certificate carries.
pub const HEADNODE_NAME: &str = "headnode.nereid";

/// How long a headnode or node certificate is valid.
pub const CERT_DAYS: i64 = 365;
const CA_DAYS: i64 = 3650;

/// The name a node's certificate carries.
pub fn node_name(server_id: &str) -> String {
    format!("{server_id}.node.nereid")
}

/// The sha256 of a DER certificate, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A join token as given to an agent: the secret, a dot, and the sha256 of
/// the CA the agent must find at the headnode (as kubeadm's discovery hash).
pub fn join_token(secret: &str, ca_sha256: &str) -> String {
    format!("{secret}.{ca_sha256}")
}

/// Splits a join token into its secret and the CA fingerprint; None when it
/// carries no fingerprint.
pub fn split_join_token(token: &str) -> Option<(&str, String)> {
    let (secret, fp) = token.trim().rsplit_once('.')?;
    (fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then(|| (secret, fp.to_ascii_lowercase()))
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not valid: {message}")]
    Invalid { what: String, message: String },
}

fn invalid(what: impl Into<String>, e: impl std::fmt::Display) -> PkiError {
    PkiError::Invalid {
        what: what.into(),
        message: e.to_string(),
    }
}

/// Writes a file atomically (a synced temporary file renamed over it),
/// created with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// [`write_atomic`], with the path in the error.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    write_atomic(path, bytes, mode).map_err(|source| PkiError::Write {
        path: path.into(),
        source,
    })
}

/// Reads a file; Ok(None) when it does not exist.
pub fn read_file(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Read {
            path: path.into(),
            source,
        }),
    }
}

/// The certificates of a PEM text, in order.
pub fn certs_from_pem(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, e))?;
    if certs.is_empty() {
        return Err(invalid(what, "it holds no certificate"));
    }
    Ok(certs)
}

/// A P-256 public key as its raw uncompressed point: what a node sends to
/// be certified (the private half never leaves the node).
struct RawP256<'a>(&'a [u8]);

impl PublicKeyData for RawP256<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

fn validity(params: &mut CertificateParams, lifetime: time::Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that disagree.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + lifetime;
}

/// The datacenter's certificate authority.
pub struct Ca {
    key: KeyPair,
    params: CertificateParams,
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl Ca {
    /// The CA's subject, derived from its key so that loading the key alone
    /// rebuilds the issuer exactly.
    fn params(key: &KeyPair) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Nereid");
        dn.push(
            DnType::CommonName,
            format!(
                "Nereid CA {}",
                &hex::encode(Sha256::digest(key.public_key_raw()))[..16]
            ),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
    }

    /// Loads `ca.key` and `ca.crt` from `dir`, creating both the first time.
    pub fn load_or_create(dir: &Path) -> Result<Ca, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.into(),
            source,
        })?;
        let (key_path, cert_path) = (dir.join("ca.key"), dir.join("ca.crt"));
        if let (Some(key_pem), Some(cert_pem)) = (read_file(&key_path)?, read_file(&cert_path)?) {
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|e| invalid(key_path.display().to_string(), e))?;
            let cert_der = certs_from_pem(&cert_path.display().to_string(), &cert_pem)?.remove(0);
            return Ok(Ca {
                params: Ca::params(&key),
                key,
                cert_pem,
                cert_der,
            });
        }
        let key = KeyPair::generate().map_err(|e| invalid("a new CA key", e))?;
        let mut params = Ca::params(&key);
        validity(&mut params, time::Duration::days(CA_DAYS));
        let cert = params
            .self_signed(&key)
            .map_err(|e| invalid("the new CA certificate", e))?;
        // The key first: a certificate without its key would be useless.
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok(Ca {
            params,
            key,
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
        })
    }

    /// The sha256 of the CA certificate: what a join token carries.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    fn issue_for(
        &self,
        name: &str,
        public_key: &impl PublicKeyData,
        lifetime: time::Duration,
    ) -> Result<(String, time::OffsetDateTime), PkiError> {
        let mut params =
            CertificateParams::new(vec![name.to_string()]).map_err(|e| invalid(name, e))?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        validity(&mut params, lifetime);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(public_key, &issuer)
            .map_err(|e| invalid(format!("the certificate for {name}"), e))?;
        Ok((cert.pem(), params.not_after))
    }

    /// A certificate for `name` on a node's public key (a raw P-256 point,
    /// as [`NodeKey::public_key`] gives it). Returns the PEM and its expiry
    /// (unix seconds). Valid for `CERT_DAYS`.
    pub fn issue(&self, name: &str, public_key: &[u8]) -> Result<(String, i64), PkiError> {
        self.issue_valid_for(
            name,
            public_key,
            std::time::Duration::from_secs(CERT_DAYS as u64 * 86_400),
        )
    }

    /// As [`Ca::issue`], valid for `lifetime` from now.
    pub fn issue_valid_for(
        &self,
        name: &str,
        public_key: &[u8],
        lifetime: std::time::Duration,
    ) -> Result<(String, i64), PkiError> {
        if public_key.len() != 65 || public_key[0] != 4 {
            return Err(invalid(
                "the public key",
                "expected an uncompressed P-256 point (65 bytes starting with 0x04)",
            ));
        }
        let lifetime = time::Duration::try_from(lifetime)
            .map_err(|e| invalid("the certificate's lifetime", e))?;
        let (pem, not_after) = self.issue_for(name, &RawP256(public_key), lifetime)?;
        Ok((pem, not_after.unix_timestamp()))
    }

    /// A new key and a certificate for `name` (a headnode's own identity,
    /// made at every start), with the CA in the chain so that a joining
    /// agent can find the CA it pinned.
    pub fn identity(&self, name: &str) -> Result<Arc<Identity>, PkiError> {
        let key = NodeKey::generate()?;
        let (pem, _) = self.issue(name, &key.public_key())?;
        Identity::from_pem(&format!("{pem}{}", self.cert_pem), &key.pem())
    }
}

/// A key made where it is used.
pub struct NodeKey(KeyPair);

impl NodeKey {
    pub fn generate() -> Result<NodeKey, PkiError> {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(NodeKey)
            .map_err(|e| invalid("a new key", e))
    }

    pub fn from_pem(pem: &str) -> Result<NodeKey, PkiError> {
        KeyPair::from_pem(pem)
            .map(NodeKey)
            .map_err(|e| invalid("the key", e))
    }

    /// The public key as a raw uncompressed P-256 point.
    pub fn public_key(&self) -> Vec<u8> {
        self.0.public_key_raw().to_vec()
    }

    pub fn pem(&self) -> String {
        self.0.serialize_pem()
    }
}

/// A certificate chain and its key, replaceable while TLS configs use it.
#[derive(Debug)]
pub struct Identity {
    current: RwLock<Arc<CertifiedKey>>,
}

fn certified(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, PkiError> {
    let chain = certs_from_pem("the certificate", chain_pem)?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| invalid("the key", e))?;
    CertifiedKey::from_der(chain, key, &crate::provider())
        .map(Arc::new)
        .map_err(|e| invalid("the certificate and key", e))
}

impl Identity {
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Arc<Identity>, PkiError> {
        Ok(Arc::new(Identity {
            current: RwLock::new(certified(chain_pem, key_pem)?),
        }))
    }

    /// Swaps in a new certificate and key (they must match); connections
    /// made from now on present it.
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), PkiError> {
        let new = certified(chain_pem, key_pem)?;
        *self.current.write().expect("identity lock") = new;
        Ok(())
    }

    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.current.read().expect("identity lock").clone()
    }

    /// The sha256 of the end-entity certificate presented now.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.certified_key().cert[0])
    }
}

impl rustls::server::ResolvesServerCert for Identity {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

impl rustls::client::ResolvesClientCert for Identity {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reloaded_ca_issues_certificates_that_chain_to_the_same_root() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A certificate from the reloaded CA verifies against the first one's root.
        let key = NodeKey::generate().unwrap();
        let (pem, not_after) = again.issue(&node_name("s1"), &key.public_key()).unwrap();
        assert!(not_after > time::OffsetDateTime::now_utc().unix_timestamp());
        let leaf = certs_from_pem("leaf", &pem).unwrap().remove(0);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let parsed = rustls::server::ParsedCertificate::try_from(&leaf).unwrap();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &[],
            rustls::pki_types::UnixTime::now(),
            crate::provider().signature_verification_algorithms.all,
        )
        .unwrap();
        let name = rustls::pki_types::ServerName::try_from(node_name("s1")).unwrap();
        rustls::client::verify_server_name(&parsed, &name).unwrap();
        let other = rustls::pki_types::ServerName::try_from(node_name("s2")).unwrap();
        assert!(rustls::client::verify_server_name(&parsed, &other).is_err());
        // The identity takes the key and refuses a key of another certificate.
        let id = Identity::from_pem(&pem, &key.pem()).unwrap();
        assert_eq!(id.fingerprint(), fingerprint(&leaf));
        let stranger = NodeKey::generate().unwrap();
        assert!(id.replace(&pem, &stranger.pem()).is_err());
    }

    #[test]
    fn a_join_token_splits_into_its_secret_and_fingerprint() {
        let fp = "ab".repeat(32);
        let t = join_token("nrdjoin_123", &fp);
        assert_eq!(split_join_token(&t), Some(("nrdjoin_123", fp.clone())));
        assert_eq!(
            split_join_token(&format!(" {t}\n")).unwrap().0,
            "nrdjoin_123"
        );
        assert_eq!(split_join_token("nrdjoin_123"), None);
        assert_eq!(
            split_join_token(&format!("nrdjoin_123.{}", "zz".repeat(32))),
            None
        );
        assert_eq!(split_join_token(&format!(".{fp}")), None);
    }

    #[test]
    fn a_public_key_that_is_not_a_p256_point_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        assert!(ca.issue("x", &[4u8; 10]).is_err());
        assert!(ca.issue("x", &[2u8; 65]).is_err());
    }
}
