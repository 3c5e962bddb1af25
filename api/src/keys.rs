//! SSH public keys of an account (CloudAPI's `/my/keys`): what goes into its
//! instances' `root_authorized_keys`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AccountId;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SshKey {
    /// Unique among the owner's keys.
    pub name: String,
    pub owner: AccountId,
    /// As `ssh-keygen -l` shows it: `SHA256:` and the unpadded base64 of
    /// the SHA-256 of the key blob.
    pub fingerprint: String,
    /// `RSA`, `ED25519`, `ECDSA`, `ED25519-SK` or `ECDSA-SK`.
    #[serde(rename = "type")]
    pub key_type: String,
    pub bits: u32,
    /// The key as given, on one line: `<type> <base64> [comment]`.
    pub key: String,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SshKeyCreate {
    /// 1-64 of letters, digits and `._@:+/=-`. Default: the key's comment
    /// when it is a valid name, else its fingerprint.
    #[schema(pattern = "^[A-Za-z0-9._@:+/=-]{1,64}$")]
    pub name: Option<String>,
    /// One OpenSSH public key line (`ssh-ed25519 AAAA... you@host`): RSA
    /// (2048 bits or more), Ed25519, ECDSA and their `-sk` kinds.
    #[schema(format = "ssh-public-key", max_length = 8192)]
    pub key: String,
    /// Operators only: the account to add it to (default: the caller).
    pub owner: Option<AccountId>,
}
