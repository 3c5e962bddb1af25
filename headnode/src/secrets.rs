//! Bearer secrets: API tokens and join tokens. (Nodes and headnodes prove
//! who they are with certificates; see `pki`.)
//!
//! A secret is 32 random bytes, hex-encoded behind a prefix that says what it
//! is. Only its sha256 is stored (secrets are high-entropy, so a fast hash is
//! enough). This module must never log a secret.

use rand::RngCore;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    ApiToken,
    JoinToken,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::ApiToken => "nrd_",
            Kind::JoinToken => "nrdjoin_",
        }
    }
}

/// A new random secret of this kind.
pub fn generate(kind: Kind) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{}{}", kind.prefix(), hex::encode(bytes))
}

/// The stored form of a secret.
pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_unique_prefixed_and_hash_stably() {
        let a = generate(Kind::ApiToken);
        let b = generate(Kind::ApiToken);
        assert_ne!(a, b);
        assert!(a.starts_with("nrd_") && a.len() == 4 + 64);
        assert!(generate(Kind::JoinToken).starts_with("nrdjoin_"));
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a).len(), 32);
    }
}
