//! nereid-tls: the mutual TLS that headnode and agents speak to each other.
//!
//! The headnode's CA (created once, its key never in the database) signs
//! every certificate. A headnode presents the name [`HEADNODE_NAME`]; a node
//! presents [`node_name`] of its server id, for a key that was made on the
//! node and never left it. An agent that joins knows only the CA's
//! fingerprint (it rides in the join token), so it checks the headnode before
//! it sends anything.
//!
//! This crate holds keys and certificates; it must never log a private key.

pub mod pki;
pub mod transport;
pub mod verify;

pub use pki::{
    Ca, HEADNODE_NAME, Identity, NodeKey, PkiError, fingerprint, join_token, node_name,
    split_join_token,
};
pub use transport::{Connector, Peer, TlsConn, incoming};
pub use verify::{Clients, Trust, client_config, https_config, server_config};

/// The one crypto provider (aws-lc-rs, as the rest of the workspace uses).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
