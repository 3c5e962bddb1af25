//! Who each end accepts: the TLS configurations of headnode and agents.
//!
//! - An agent accepts calls only from a certificate of its CA named
//!   [`HEADNODE_NAME`] (another node's certificate is refused in the
//!   handshake).
//! - The headnode's registry accepts any client of its CA, or none (a
//!   joining node has no certificate yet; Register is then authorised by
//!   the join token, and every other call by the certificate's fingerprint).
//! - A joining agent trusts the one CA whose fingerprint its token carries,
//!   found in the chain the headnode presents.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};

use crate::pki::{HEADNODE_NAME, Identity, fingerprint};

/// What a client trusts.
#[derive(Clone)]
pub enum Trust {
    /// Certificates of this CA (the name is checked by the connector).
    Ca(CertificateDer<'static>),
    /// The CA (in the presented chain) whose sha256 is this hex string.
    Pinned(String),
}

/// Which clients a server accepts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Clients {
    /// Certificates of the CA named [`HEADNODE_NAME`], and nothing else.
    Headnode,
    /// Any certificate of the CA, or no certificate at all.
    AnyOrNone,
}

const ALPN_H2: &[u8] = b"h2";

fn roots(ca: &CertificateDer<'static>) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    // A CA that does not parse makes an empty store: nothing verifies.
    let _ = roots.add(ca.clone());
    Arc::new(roots)
}

/// The client side: who we are (none when joining) and whom we trust.
pub fn client_config(identity: Option<Arc<Identity>>, trust: Trust) -> Arc<ClientConfig> {
    let provider = crate::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions");
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        Trust::Ca(ca) => rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots(&ca),
            provider.clone(),
        )
        .build()
        // A CA that does not parse: an empty pin trusts nothing.
        .map(|v| v as Arc<dyn ServerCertVerifier>)
        .unwrap_or_else(|_| Arc::new(Pinned::new(String::new()))),
        Trust::Pinned(fp) => Arc::new(Pinned::new(fp)),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(id) => builder.with_client_cert_resolver(id),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(config)
}

/// The server side: our identity, the CA and which clients we accept.
pub fn server_config(
    identity: Arc<Identity>,
    ca: &CertificateDer<'static>,
    clients: Clients,
) -> Arc<ServerConfig> {
    let provider = crate::provider();
    let inner =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca), provider.clone());
    let inner = match clients {
        Clients::Headnode => inner.build(),
        Clients::AnyOrNone => inner.allow_unauthenticated().build(),
    };
    let verifier: Arc<dyn ClientCertVerifier> = match inner {
        Ok(inner) => Arc::new(NamedClient {
            inner,
            name: (clients == Clients::Headnode).then_some(HEADNODE_NAME),
        }),
        // The CA did not parse: accept no client at all.
        Err(_) => Arc::new(NamedClient::refuse_all()),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(config)
}

/// A plain TLS server (the REST API): this certificate chain and key, no
/// client certificates, HTTP/1.1.
pub fn https_config(identity: Arc<Identity>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Client certificates of the CA, and (when set) only those valid for `name`.
#[derive(Debug)]
struct NamedClient {
    inner: Arc<dyn ClientCertVerifier>,
    name: Option<&'static str>,
}

impl NamedClient {
    fn refuse_all() -> NamedClient {
        NamedClient {
            inner: Arc::new(RefuseAll),
            name: Some(HEADNODE_NAME),
        }
    }
}

impl ClientCertVerifier for NamedClient {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(name) = self.name {
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            let name = ServerName::try_from(name).expect("a valid DNS name");
            rustls::client::verify_server_name(&parsed, &name)?;
        }
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Refuses every client (a server whose CA would not load).
#[derive(Debug)]
struct RefuseAll;

impl ClientCertVerifier for RefuseAll {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Err(rustls::Error::General(
            "no CA to verify clients with".into(),
        ))
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "no CA to verify clients with".into(),
        ))
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "no CA to verify clients with".into(),
        ))
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        crate::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Trusts the CA with a known fingerprint, found in the presented chain,
/// and the leaf it signed for the name asked.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Pinned {
    fn new(fingerprint: String) -> Pinned {
        Pinned {
            fingerprint: fingerprint.to_ascii_lowercase(),
            provider: crate::provider(),
        }
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| !self.fingerprint.is_empty() && fingerprint(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the headnode presented no CA with the fingerprint of the join token (is this the headnode that made the token?)"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &[],
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
