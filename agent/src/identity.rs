//! The node's identity, kept in the state dir so a restarted agent is the same
//! server: its server id and its headnode (its key and certificate are in
//! `certs`). Also the setup the headnode applied.
//!
//! Files are written atomically with mode 0600; this module must never log
//! their secrets.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub server_id: String,
    /// The headnode this identity belongs to.
    pub headnode: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub zpool: String,
    pub nic_tags: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads a JSON state file; Ok(None) when it does not exist.
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Corrupt {
                    path: path.into(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Read {
            path: path.into(),
            source,
        }),
    }
}

/// Writes a JSON state file atomically, readable by root only.
pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(value).expect("state serializes");
    nereid_tls::pki::write_atomic(path, &bytes, 0o600).map_err(|source| StateError::Write {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_a_save_and_load_with_owner_only_mode() {
        let dir = std::env::temp_dir().join(format!("nereid-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("identity.json");
        assert!(load::<Identity>(&path).unwrap().is_none());
        let id = Identity {
            server_id: "s".into(),
            headnode: "h".into(),
        };
        save(&path, &id).unwrap();
        let back: Identity = load(&path).unwrap().unwrap();
        assert_eq!(back.server_id, id.server_id);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            load::<Identity>(&path),
            Err(StateError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
