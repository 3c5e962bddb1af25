//! The metadata service: each instance reads its own metadata (and only its
//! own) through the SmartOS metadata protocol (`protocol`) on a unix socket
//! of its own, `<state>/metadata/<id>/sock/metadata.sock`. The container
//! driver bind-mounts its directory at `/native/.zonecontrol` (where SmartOS
//! LX zones and cloud-init look for it); a VM's QEMU connects to it and
//! carries it to the guest as the virtio-serial port `org.smartos.metadata`.
//! The socket an instance can reach says which instance it is.
//!
//! What the headnode sent is kept in `<state>/metadata/<id>/metadata.json`
//! (written beside and renamed), so a restarted agent serves it again; a
//! newer generation replaces it. Writes by the instance itself (`mdata-put`,
//! `mdata-delete`) change its customer keys on the node until the headnode
//! sends a newer generation.
//!
//! It owns those directories and the listeners; it never touches the
//! instance's dataset or runtime.

pub mod protocol;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use nereid_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Where instances find the socket.
pub const GUEST_DIR: &str = "/native/.zonecontrol";
const SOCKET: &str = "metadata.sock";
/// The longest request line read (a `PUT` of the largest value, base64 twice).
const MAX_LINE: usize = 512 * 1024;
/// Limits on what an instance may write itself.
const MAX_KEYS: usize = 256;
const MAX_VALUE: usize = 64 * 1024;
/// Concurrent connections per instance.
const MAX_CONNECTIONS: usize = 8;

/// An instance's metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Data {
    pub generation: u64,
    pub sdc: BTreeMap<String, String>,
    pub customer: BTreeMap<String, String>,
}

impl From<pb::InstanceMetadata> for Data {
    fn from(m: pb::InstanceMetadata) -> Data {
        Data {
            generation: m.generation,
            sdc: m.sdc.into_iter().collect(),
            customer: m.customer.into_iter().collect(),
        }
    }
}

impl protocol::Keys for Data {
    fn sdc(&self, key: &str) -> Option<String> {
        self.sdc.get(key).cloned()
    }
    fn get(&self, key: &str) -> Option<String> {
        self.customer.get(key).cloned()
    }
    fn keys(&self) -> Vec<String> {
        self.customer.keys().cloned().collect()
    }
    fn put(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        writable(key)?;
        if value.len() > MAX_VALUE {
            return Err(format!("a value is at most {MAX_VALUE} bytes"));
        }
        if !self.customer.contains_key(key) && self.customer.len() >= MAX_KEYS {
            return Err(format!("at most {MAX_KEYS} keys"));
        }
        self.customer.insert(key.to_string(), value.to_string());
        Ok(())
    }
    fn delete(&mut self, key: &str) -> std::result::Result<(), String> {
        writable(key)?;
        self.customer.remove(key);
        Ok(())
    }
}

fn writable(key: &str) -> std::result::Result<(), String> {
    if key.starts_with("sdc:") {
        return Err("Cannot update the \"sdc\" Namespace.".into());
    }
    if key.len() > 128 || key.chars().any(char::is_control) {
        return Err("a key is 1-128 characters without control characters".into());
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("instance {id}'s metadata: {what}")]
pub struct MetadataError {
    pub id: String,
    pub what: String,
}

type Result<T> = std::result::Result<T, MetadataError>;

struct Served {
    data: Arc<RwLock<Data>>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// The node's metadata service.
#[derive(Clone)]
pub struct Metadata {
    dir: PathBuf,
    served: Arc<Mutex<HashMap<String, Served>>>,
}

impl Metadata {
    pub fn new(state_dir: &Path) -> Metadata {
        Metadata {
            dir: state_dir.join("metadata"),
            served: Default::default(),
        }
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// The directory holding the instance's socket (bind-mounted into it).
    pub fn socket_dir(&self, id: &str) -> PathBuf {
        self.instance_dir(id).join("sock")
    }

    fn err(id: &str, what: impl std::fmt::Display) -> MetadataError {
        MetadataError {
            id: id.to_string(),
            what: what.to_string(),
        }
    }

    fn load(&self, id: &str) -> Result<Option<Data>> {
        let path = self.instance_dir(id).join("metadata.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Self::err(id, format!("{} is corrupt: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::err(id, format!("reading {}: {e}", path.display()))),
        }
    }

    fn save(&self, id: &str, data: &Data) -> Result<()> {
        let dir = self.instance_dir(id);
        let path = dir.join("metadata.json");
        let tmp = dir.join(".metadata.json.tmp");
        let json = serde_json::to_vec(data).expect("metadata serializes");
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&tmp, json))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Self::err(id, format!("writing {}: {e}", path.display())))
    }

    /// Makes the instance's metadata exist (`data` when it is newer than
    /// what the node has) and served. Idempotent.
    pub fn install(&self, id: &str, data: Option<Data>) -> Result<u64> {
        let mut served = self.served.lock().expect("metadata");
        let current = match served.get(id) {
            Some(s) => Some(s.data.read().expect("metadata").clone()),
            None => self.load(id)?,
        };
        let (data, changed) = match (current, data) {
            (Some(cur), Some(new)) if new.generation > cur.generation => (new, true),
            (Some(cur), _) => (cur, false),
            (None, new) => (new.unwrap_or_default(), true),
        };
        if changed {
            self.save(id, &data)?;
        }
        let generation = data.generation;
        match served.get(id) {
            Some(s) => *s.data.write().expect("metadata") = data,
            None => {
                let s = self.serve(id, data)?;
                served.insert(id.to_string(), s);
            }
        }
        Ok(generation)
    }

    /// Replaces the metadata of an instance being served when `data` is
    /// newer; returns the generation in force. None: not served here.
    pub fn set(&self, id: &str, data: Data) -> Result<Option<u64>> {
        let served = self.served.lock().expect("metadata");
        let Some(s) = served.get(id) else {
            return Ok(None);
        };
        let mut cur = s.data.write().expect("metadata");
        if data.generation > cur.generation {
            self.save(id, &data)?;
            *cur = data;
        }
        Ok(Some(cur.generation))
    }

    /// What the instance is served now (None: it is not).
    pub fn data(&self, id: &str) -> Option<Data> {
        self.served
            .lock()
            .expect("metadata")
            .get(id)
            .map(|s| s.data.read().expect("metadata").clone())
    }

    /// The generation served to the instance (0: none).
    pub fn generation(&self, id: &str) -> u64 {
        self.served
            .lock()
            .expect("metadata")
            .get(id)
            .map(|s| s.data.read().expect("metadata").generation)
            .unwrap_or(0)
    }

    /// Stops serving the instance and removes its files. Idempotent.
    pub fn remove(&self, id: &str) -> Result<()> {
        self.served.lock().expect("metadata").remove(id);
        match std::fs::remove_dir_all(self.instance_dir(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Self::err(
                id,
                format!("removing {}: {e}", self.instance_dir(id).display()),
            )),
            _ => Ok(()),
        }
    }

    /// The instance's socket (a VM's QEMU connects to it).
    pub fn socket_path(&self, id: &str) -> PathBuf {
        self.socket_dir(id).join(SOCKET)
    }

    /// Binds the instance's socket (replacing a stale one) and serves it.
    fn serve(&self, id: &str, data: Data) -> Result<Served> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.socket_dir(id);
        let path = self.socket_path(id);
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)))
            .map_err(|e| Self::err(id, format!("making {}: {e}", dir.display())))?;
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| Self::err(id, format!("binding {}: {e}", path.display())))?;
        // The instance's root is not the host's: anyone may connect; only
        // this instance can see the socket.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).map_err(|e| {
            Self::err(
                id,
                format!("opening {} to the instance: {e}", path.display()),
            )
        })?;
        let data = Arc::new(RwLock::new(data));
        let (this, shared, id_owned) = (self.clone(), data.clone(), id.to_string());
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let listener = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    drop(conn); // too many at once: the client retries
                    continue;
                };
                let (this, shared, id) = (this.clone(), shared.clone(), id_owned.clone());
                tokio::spawn(async move {
                    this.session(&id, conn, &shared).await;
                    drop(permit);
                });
            }
        });
        Ok(Served { data, listener })
    }

    /// Answers one connection's lines until it closes or sends a line
    /// longer than the limit.
    async fn session(&self, id: &str, conn: tokio::net::UnixStream, data: &RwLock<Data>) {
        let (rd, mut wr) = conn.into_split();
        let mut rd = BufReader::new(rd);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = match (&mut rd)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await
            {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if n > MAX_LINE {
                let _ = wr.write_all(b"FAILURE\n").await;
                return;
            }
            let text = String::from_utf8_lossy(&line);
            let (answer, changed) = {
                let mut d = data.write().expect("metadata");
                let before = d.customer.clone();
                let a = protocol::answer(&text, &mut *d);
                (a, (d.customer != before).then(|| d.clone()))
            };
            if let Some(d) = changed
                && let Err(e) = self.save(id, &d)
            {
                tracing::warn!("{e}");
            }
            if let Some(a) = answer
                && wr.write_all(a.as_bytes()).await.is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    async fn ask(path: &Path, lines: &[String]) -> Vec<String> {
        let conn = tokio::net::UnixStream::connect(path).await.unwrap();
        let (rd, mut wr) = conn.into_split();
        let mut rd = BufReader::new(rd).lines();
        let mut out = Vec::new();
        for l in lines {
            wr.write_all(l.as_bytes()).await.unwrap();
            out.push(rd.next_line().await.unwrap().unwrap());
        }
        out
    }

    fn get(key: &str) -> String {
        let body = format!(
            "0000abcd GET {}",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        format!(
            "V2 {} {:08x} {body}\n",
            body.len(),
            protocol::crc32(body.as_bytes())
        )
    }

    fn data(generation: u64, uuid: &str) -> Data {
        Data {
            generation,
            sdc: [("uuid".to_string(), uuid.to_string())].into(),
            customer: Default::default(),
        }
    }

    #[tokio::test]
    async fn each_instance_has_its_own_socket_and_newer_generations_win() {
        let dir = tempfile::tempdir().unwrap();
        let md = Metadata::new(dir.path());
        assert_eq!(md.install("a", Some(data(2, "uuid-a"))).unwrap(), 2);
        md.install("b", Some(data(1, "uuid-b"))).unwrap();
        let sock_a = md.socket_dir("a").join(SOCKET);
        let got = ask(&sock_a, &["NEGOTIATE V2\n".into(), get("sdc:uuid")]).await;
        assert_eq!(got[0], "V2_OK");
        assert!(
            got[1].ends_with(&base64::engine::general_purpose::STANDARD.encode("uuid-a")),
            "{got:?}"
        );
        // Older generations are ignored, newer ones replace, and persist.
        assert_eq!(md.set("a", data(1, "old")).unwrap(), Some(2));
        assert_eq!(md.set("a", data(3, "new")).unwrap(), Some(3));
        assert_eq!(md.load("a").unwrap().unwrap().sdc["uuid"], "new");
        assert_eq!(md.set("zzz", data(9, "x")).unwrap(), None);
        // A restarted agent serves what it had.
        drop(md);
        let md = Metadata::new(dir.path());
        assert_eq!(md.install("a", None).unwrap(), 3);
        let got = ask(&sock_a, &["NEGOTIATE V2\n".into(), get("sdc:uuid")]).await;
        assert!(got[1].ends_with(&base64::engine::general_purpose::STANDARD.encode("new")));
        md.remove("a").unwrap();
        assert!(!md.instance_dir("a").exists());
        assert_eq!(md.generation("a"), 0);
    }
}
