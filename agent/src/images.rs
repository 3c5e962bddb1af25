//! Images on this node: `<pool>/images/<uuid>`, unpacked from the headnode's
//! image file, read-only, with a `@final` snapshot that instances clone.
//!
//! `ensure` is idempotent: an image with `@final` is done. The file is pulled
//! from the headnode's registry over mutual TLS (FetchImage) into
//! `<pool>/downloads/<uuid>.partial` (staged on the pool, never on the node's
//! root filesystem), resuming from an offset after an interruption, no
//! longer than its known size, and verified
//! by sha256 before anything is unpacked. The image's dataset gets a quota
//! from its declared unpacked size, and unpacking stops at that size (a gzip
//! bomb is refused, not written). A container image is unpacked with its
//! owners shifted into the node's shared container id range, once, so
//! instances clone it without a chown; the shift is recorded on the dataset
//! (`nereid:idshift`). A mismatch, a truncated stream or a refused archive
//! leaves no dataset behind. Two concurrent calls for one image download it
//! once (a lock per image).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::storage::zfs;
use crate::unpack::{self, UnpackError};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image id {0:?} is not a UUID")]
    BadId(String),
    #[error("downloading image {id} from the headnode failed after {attempts} attempts: {message}")]
    Download {
        id: String,
        attempts: u32,
        message: String,
    },
    #[error("image {id}: the file's sha256 is {actual}, expected {expected}; nothing was kept")]
    Checksum {
        id: String,
        expected: String,
        actual: String,
    },
    #[error("image {id} cannot be unpacked")]
    Unpack {
        id: String,
        #[source]
        source: UnpackError,
    },
    #[error("image {id} cannot boot as a VM: {reason}")]
    NotBootable { id: String, reason: String },
    #[error("image {id} is {got} bytes long, more than the {expected} its catalog entry says")]
    TooLong { id: String, expected: u64, got: u64 },
    #[error(
        "image {id} is unpacked on this node for container ids from {found}, but this agent maps containers at {wanted}: delete the image's instances on this node so it can be unpacked again"
    )]
    ShiftMismatch {
        id: String,
        found: String,
        wanted: u32,
    },
    #[error(transparent)]
    Zfs(#[from] zfs::ZfsError),
    #[error("image {id}: {what}")]
    Io {
        id: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where a running ensure is.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Downloading { bytes: u64, total: u64 },
    Verifying,
    Unpacking,
    Ready,
}

/// What to ensure, as the headnode asks for it.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    pub id: String,
    pub sha256: String,
    pub brand: nereid_api::Brand,
    /// The file's size; 0 when unknown.
    pub size: u64,
    /// The most it may unpack to; 0 for the agent's default.
    pub max_unpacked: u64,
}

/// Without a declared limit, an image unpacks to at most this much.
pub const DEFAULT_MAX_UNPACKED: u64 = 16 << 30;
const SHIFT_PROP: &str = "nereid:idshift";

#[derive(Clone)]
pub struct Images {
    pool: String,
    downloads: Arc<tokio::sync::OnceCell<PathBuf>>,
    /// The node's shared container id range starts here.
    shift: u32,
    /// The node's certificates and its mutual-TLS channel to the headnode.
    certs: Arc<crate::certs::NodeCerts>,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Images this process has seen ready (`@final` exists): a repeated
    /// EnsureImage answers without a `zfs` command. `forget` drops one whose
    /// snapshot turned out missing.
    ready: Arc<Mutex<std::collections::HashSet<String>>>,
}

const ATTEMPTS: u32 = 5;

impl Images {
    pub fn new(pool: &str, certs: Arc<crate::certs::NodeCerts>, shift: u32) -> Images {
        Images {
            pool: pool.to_string(),
            downloads: Default::default(),
            shift,
            certs,
            locks: Default::default(),
            ready: Default::default(),
        }
    }

    /// Forgets that an image was ready (its snapshot is gone).
    pub fn forget(&self, id: &str) {
        self.ready.lock().expect("ready set").remove(id);
    }

    pub fn dataset(&self, id: &str) -> String {
        format!("{}/images/{id}", self.pool)
    }

    pub fn snapshot(&self, id: &str) -> String {
        format!("{}/images/{id}@final", self.pool)
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("image locks")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// True if the image is unpacked and final on this node (for a
    /// container image: shifted into this node's container id range).
    pub async fn is_ready(&self, id: &str) -> Result<bool, ImageError> {
        if !zfs::exists(&self.snapshot(id)).await? {
            return Ok(false);
        }
        let props = zfs::get(&self.dataset(id), &[SHIFT_PROP]).await?;
        match props.get(SHIFT_PROP) {
            Some(v) if v != &self.shift.to_string() && v != "none" => {
                Err(ImageError::ShiftMismatch {
                    id: id.into(),
                    found: v.clone(),
                    wanted: self.shift,
                })
            }
            // Unpacked before ids were shifted: as unusable as a wrong shift.
            None => Err(ImageError::ShiftMismatch {
                id: id.into(),
                found: "0 (unshifted)".into(),
                wanted: self.shift,
            }),
            Some(_) => Ok(true),
        }
    }

    /// `<pool>/downloads`, made once per agent process: downloads are
    /// staged on the pool, not on the node's root filesystem.
    async fn downloads(&self) -> Result<PathBuf, ImageError> {
        let ds = format!("{}/downloads", self.pool);
        let mnt = self
            .downloads
            .get_or_try_init(|| async {
                zfs::ensure(&ds, &[("atime", "off")]).await?;
                zfs::mountpoint(&ds).await
            })
            .await?;
        Ok(mnt.clone())
    }

    pub async fn ensure(
        &self,
        req: &ImageRequest,
        progress: impl Fn(Progress),
    ) -> Result<(), ImageError> {
        let id = req.id.as_str();
        uuid_like(id)?;
        if self.ready.lock().expect("ready set").contains(id) {
            progress(Progress::Ready);
            return Ok(());
        }
        let lock = self.lock(id);
        let _held = lock.lock().await;
        if self.is_ready(id).await? {
            self.ready.lock().expect("ready set").insert(id.to_string());
            progress(Progress::Ready);
            return Ok(());
        }
        let partial = self.downloads().await?.join(format!("{id}.partial"));
        // A partial file left by a crash is resumed; one that could not be
        // completed after all retries is removed, so a failure leaves nothing.
        if let Err(e) = self.download(req, &partial, &progress).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }

        progress(Progress::Verifying);
        let actual = file_sha256(&partial)
            .await
            .map_err(|source| ImageError::Io {
                id: id.into(),
                what: "hashing the download".into(),
                source,
            })?;
        if actual != req.sha256.to_ascii_lowercase() {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(ImageError::Checksum {
                id: id.into(),
                expected: req.sha256.clone(),
                actual,
            });
        }

        progress(Progress::Unpacking);
        let result = self.unpack(req, &partial).await;
        let _ = tokio::fs::remove_file(&partial).await;
        if result.is_err() {
            let _ = zfs::destroy(&self.dataset(id), true).await;
        }
        result?;
        self.ready.lock().expect("ready set").insert(id.to_string());
        progress(Progress::Ready);
        Ok(())
    }

    async fn unpack(
        &self,
        req: &ImageRequest,
        archive: &std::path::Path,
    ) -> Result<(), ImageError> {
        let id = req.id.as_str();
        let ds = self.dataset(id);
        let max = if req.max_unpacked == 0 {
            DEFAULT_MAX_UNPACKED
        } else {
            req.max_unpacked
        };
        // Room for metadata beyond the files' bytes.
        let quota = max.saturating_add((max / 8).max(16 << 20));
        let shift = (req.brand == nereid_api::Brand::Container).then_some(self.shift);
        zfs::ensure(&format!("{}/images", self.pool), &[("atime", "off")]).await?;
        // A dataset without @final is what a crash left: start again.
        zfs::destroy(&ds, true).await?;
        let shift_prop = shift
            .map(|s| s.to_string())
            .unwrap_or_else(|| "none".into());
        zfs::create(
            &ds,
            &[
                ("atime", "off"),
                ("quota", &quota.to_string()),
                (SHIFT_PROP, &shift_prop),
            ],
        )
        .await?;
        let mnt = zfs::mountpoint(&ds).await?;
        let archive = archive.to_path_buf();
        let owned_id = id.to_string();
        let root = mnt.clone();
        let opts = unpack::Options {
            max_bytes: max,
            shift,
        };
        tokio::task::spawn_blocking(move || {
            // The dataset's root is the container's /: owned by its root.
            if let Some(base) = shift {
                std::os::unix::fs::lchown(&mnt, Some(base), Some(base)).map_err(|source| {
                    UnpackError::Write {
                        entry: "/".into(),
                        source,
                    }
                })?;
            }
            unpack::unpack_tar_gz(&archive, &mnt, opts)
        })
        .await
        .map_err(|e| ImageError::Io {
            id: owned_id.clone(),
            what: format!("unpack task: {e}"),
            source: std::io::Error::other("join"),
        })?
        .map_err(|source| ImageError::Unpack {
            id: owned_id,
            source,
        })?;
        if req.brand == nereid_api::Brand::Kvm {
            crate::runtime::kvm::image::check(&root)
                .await
                .map_err(|reason| ImageError::NotBootable {
                    id: id.to_string(),
                    reason,
                })?;
        }
        zfs::set(&ds, "readonly", "on").await?;
        zfs::snapshot(&self.snapshot(id)).await?;
        Ok(())
    }

    /// Pulls the file into `partial`, resuming from what is already there.
    async fn download(
        &self,
        req: &ImageRequest,
        partial: &std::path::Path,
        progress: &impl Fn(Progress),
    ) -> Result<(), ImageError> {
        let id = req.id.as_str();
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            match self.download_once(id, req.size, partial, progress).await {
                Ok(()) => return Ok(()),
                Err(DownloadFailure::TooLong(got)) => {
                    return Err(ImageError::TooLong {
                        id: id.into(),
                        expected: req.size,
                        got,
                    });
                }
                Err(DownloadFailure::Fatal(m)) => {
                    return Err(ImageError::Download {
                        id: id.into(),
                        attempts: attempt,
                        message: m,
                    });
                }
                Err(DownloadFailure::Retry(m)) => {
                    tracing::warn!(image = id, attempt, "download interrupted ({m}); resuming");
                    last = m;
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
            }
        }
        Err(ImageError::Download {
            id: id.into(),
            attempts: ATTEMPTS,
            message: last,
        })
    }

    /// One attempt; stops as soon as more than `size` bytes (when known) arrived.
    async fn download_once(
        &self,
        id: &str,
        size: u64,
        partial: &std::path::Path,
        progress: &impl Fn(Progress),
    ) -> Result<(), DownloadFailure> {
        use nereid_proto::v1::registry_client::RegistryClient;
        let have = tokio::fs::metadata(partial)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let request = nereid_proto::v1::FetchImageRequest {
            image_id: id.to_string(),
            offset: have,
        };
        let channel = self.certs.headnode().ok_or_else(|| {
            DownloadFailure::Fatal("the agent is not connected to a headnode".into())
        })?;
        let mut stream = match RegistryClient::new(channel).fetch_image(request).await {
            Ok(r) => r.into_inner(),
            // The partial file is longer than the image (stale): start over.
            Err(st) if st.code() == tonic::Code::OutOfRange => {
                let _ = tokio::fs::remove_file(partial).await;
                return Err(DownloadFailure::Retry(
                    "the partial file is past the image's end; restarting".into(),
                ));
            }
            Err(st) => return Err(fetch_failure(&st)),
        };
        let mut file = open(partial, have > 0).await?;
        let (mut done, mut total, mut last_report) = (have, 0, 0);
        loop {
            let chunk = match stream.message().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(st) => {
                    // Keep what arrived: the next attempt resumes after it.
                    file.flush()
                        .await
                        .map_err(|e| DownloadFailure::Fatal(e.to_string()))?;
                    return Err(fetch_failure(&st));
                }
            };
            total = chunk.total;
            file.write_all(&chunk.data).await.map_err(|e| {
                DownloadFailure::Fatal(format!("writing {}: {e}", partial.display()))
            })?;
            let first = done == have;
            done += chunk.data.len() as u64;
            if size > 0 && done > size {
                return Err(DownloadFailure::TooLong(done));
            }
            if first {
                // Crash tests stop here, with the first piece on disk.
                file.flush()
                    .await
                    .map_err(|e| DownloadFailure::Fatal(e.to_string()))?;
                crate::fault::point("fetch_image:after_first_chunk");
            }
            if done - last_report >= 4 << 20 {
                progress(Progress::Downloading { bytes: done, total });
                last_report = done;
            }
        }
        file.flush()
            .await
            .map_err(|e| DownloadFailure::Fatal(e.to_string()))?;
        if total > 0 && done < total {
            return Err(DownloadFailure::Retry(format!(
                "the stream ended at {done} of {total} bytes"
            )));
        }
        progress(Progress::Downloading { bytes: done, total });
        Ok(())
    }
}

/// What a failed FetchImage means: worth another attempt, or not.
fn fetch_failure(st: &tonic::Status) -> DownloadFailure {
    use tonic::Code;
    let message = format!("the headnode answered {:?}: {}", st.code(), st.message());
    match st.code() {
        Code::NotFound
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::InvalidArgument
        | Code::FailedPrecondition => DownloadFailure::Fatal(message),
        _ => DownloadFailure::Retry(message),
    }
}

enum DownloadFailure {
    Retry(String),
    Fatal(String),
    /// More bytes than the image's size arrived.
    TooLong(u64),
}

async fn open(
    path: &std::path::Path,
    append: bool,
) -> Result<tokio::io::BufWriter<tokio::fs::File>, DownloadFailure> {
    let f = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .await
        .map_err(|e| DownloadFailure::Fatal(format!("opening {}: {e}", path.display())))?;
    Ok(tokio::io::BufWriter::with_capacity(1 << 20, f))
}

async fn file_sha256(path: &std::path::Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(path)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h)?;
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}

fn uuid_like(id: &str) -> Result<(), ImageError> {
    let ok = id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ImageError::BadId(id.chars().take(64).collect()))
    }
}
