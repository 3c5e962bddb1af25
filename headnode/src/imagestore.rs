//! The image file store on the headnode's disk: content-addressed
//! (`files/<first two hex>/<sha256>`), so identical files are stored once.
//! Uploads stream into `tmp/` while their sha256 and size are computed, and
//! are renamed into place only when complete and verified; `tmp/` is emptied
//! at start, so a crashed upload leaves nothing.
//!
//! This module owns the files only; which image points at which file is the
//! datastore's business. It must never hold a whole file in memory.

use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// A finished upload waiting in tmp/ to be committed or discarded.
pub struct Received {
    pub temp: PathBuf,
    pub sha256: String,
    pub size: u64,
}

const WRITE_BUFFER: usize = 1024 * 1024;

impl ImageStore {
    /// Opens (creates) the store and removes temp files of crashed uploads.
    pub fn open(root: &Path) -> std::io::Result<ImageStore> {
        std::fs::create_dir_all(root.join("files"))?;
        let tmp = root.join("tmp");
        if tmp.exists() {
            let mut removed = 0;
            for e in std::fs::read_dir(&tmp)?.flatten() {
                if std::fs::remove_file(e.path()).is_ok() {
                    removed += 1;
                }
            }
            if removed > 0 {
                tracing::info!(removed, "removed temp files of interrupted uploads");
            }
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(ImageStore {
            root: root.to_path_buf(),
        })
    }

    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.root.join("files").join(&sha256[..2]).join(sha256)
    }

    /// Every file in the store (for the start-up sweep of unreferenced files).
    pub fn list(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(dirs) = std::fs::read_dir(self.root.join("files")) {
            for d in dirs.flatten() {
                if let Ok(files) = std::fs::read_dir(d.path()) {
                    out.extend(
                        files
                            .flatten()
                            .map(|f| f.file_name().to_string_lossy().into_owned()),
                    );
                }
            }
        }
        out
    }

    /// Streams a body into tmp/, hashing it on the way. Hashing and writing
    /// run on a blocking thread fed by a small channel, in parallel with
    /// receiving (at most a few chunks are in memory). Any error (the client
    /// went away, the body is too large, a disk error) removes the temp file.
    pub async fn receive<S, E>(&self, mut body: S, max_size: u64) -> Result<Received>
    where
        S: Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let temp = self.root.join("tmp").join(uuid::Uuid::new_v4().to_string());
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
        let writer = {
            let temp = temp.clone();
            tokio::task::spawn_blocking(move || write_and_hash(&temp, rx))
        };
        let mut size = 0u64;
        let received: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    Error::InvalidArgument(format!("the upload was interrupted: {e}"))
                })?;
                size += chunk.len() as u64;
                if size > max_size {
                    return Err(Error::PayloadTooLarge(format!(
                        "image files are limited to {max_size} bytes"
                    )));
                }
                // Waits only when the writer is 16 chunks behind.
                tx.send(chunk)
                    .await
                    .map_err(|_| Error::Internal("the image writer stopped".into()))?;
            }
            Ok(())
        }
        .await;
        drop(tx);
        let written = writer
            .await
            .map_err(|e| Error::Internal(format!("image writer: {e}")))?;
        let result = match (received, written) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(Error::Internal(format!("writing {}: {e}", temp.display()))),
            (Ok(()), Ok(sha256)) => Ok(Received {
                temp: temp.clone(),
                sha256,
                size,
            }),
        };
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    /// Moves a received file into place (a no-op if that content is already stored).
    pub async fn commit(&self, r: &Received) -> Result<()> {
        let dest = self.path_of(&r.sha256);
        let dir = dest.parent().expect("store path has a parent");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| Error::Internal(format!("creating {}: {e}", dir.display())))?;
        if tokio::fs::metadata(&dest).await.is_ok() {
            let _ = tokio::fs::remove_file(&r.temp).await;
            return Ok(());
        }
        tokio::fs::rename(&r.temp, &dest).await.map_err(|e| {
            Error::Internal(format!(
                "moving {} to {}: {e}",
                r.temp.display(),
                dest.display()
            ))
        })
    }

    pub async fn discard(&self, r: &Received) {
        let _ = tokio::fs::remove_file(&r.temp).await;
    }

    pub async fn remove(&self, sha256: &str) {
        let p = self.path_of(sha256);
        if let Err(e) = tokio::fs::remove_file(&p).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", p.display());
        }
    }
}

/// The writer thread of an upload: hashes and writes each chunk, syncs at the end.
fn write_and_hash(
    path: &Path,
    mut chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> std::io::Result<String> {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    while let Some(chunk) = chunks.blocking_recv() {
        hasher.update(&chunk);
        out.write_all(&chunk)?;
    }
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok(hex::encode(hasher.finalize()))
}

/// A single byte range of a `Range` header, resolved against a file size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    Full,
    /// Inclusive start and end.
    Partial(u64, u64),
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n`. Several ranges, other
/// units or garbage are served as the full file, as RFC 9110 allows.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(start), _) if start >= size => RangeRequest::Unsatisfiable,
        (Some(start), Some(end)) if end >= start => RangeRequest::Partial(start, end.min(size - 1)),
        (Some(_), Some(_)) => RangeRequest::Full,
        (Some(start), None) if b.is_empty() => RangeRequest::Partial(start, size - 1),
        (None, Some(n)) if a.is_empty() && n > 0 => {
            if size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(size.saturating_sub(n), size - 1)
            }
        }
        _ => RangeRequest::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_resolved_against_the_file_size() {
        assert_eq!(parse_range(None, 100), RangeRequest::Full);
        assert_eq!(
            parse_range(Some("bytes=0-9"), 100),
            RangeRequest::Partial(0, 9)
        );
        assert_eq!(
            parse_range(Some("bytes=90-"), 100),
            RangeRequest::Partial(90, 99)
        );
        assert_eq!(
            parse_range(Some("bytes=90-500"), 100),
            RangeRequest::Partial(90, 99)
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            RangeRequest::Partial(90, 99)
        );
        assert_eq!(
            parse_range(Some("bytes=-500"), 100),
            RangeRequest::Partial(0, 99)
        );
        assert_eq!(
            parse_range(Some("bytes=100-"), 100),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=5-2"), 100), RangeRequest::Full);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), RangeRequest::Full);
        assert_eq!(parse_range(Some("items=0-1"), 100), RangeRequest::Full);
        assert_eq!(parse_range(Some("bytes=x-y"), 100), RangeRequest::Full);
    }

    #[tokio::test]
    async fn an_interrupted_upload_leaves_no_temp_file_and_a_finished_one_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let broken = futures::stream::iter(vec![
            Ok(bytes::Bytes::from_static(b"abc")),
            Err("connection reset"),
        ]);
        assert!(store.receive(broken, 1 << 20).await.is_err());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );

        let too_big =
            futures::stream::iter(vec![Ok::<_, String>(bytes::Bytes::from(vec![0u8; 2048]))]);
        assert!(matches!(
            store.receive(too_big, 1024).await,
            Err(Error::PayloadTooLarge(_))
        ));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );

        for _ in 0..2 {
            let ok =
                futures::stream::iter(vec![Ok::<_, String>(bytes::Bytes::from_static(b"hello"))]);
            let r = store.receive(ok, 1 << 20).await.unwrap();
            assert_eq!(
                r.sha256,
                "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
            );
            assert_eq!(r.size, 5);
            store.commit(&r).await.unwrap();
        }
        assert_eq!(store.list().len(), 1);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );

        // A leftover temp file (a crashed upload) is removed when the store opens.
        std::fs::write(dir.path().join("tmp/left-over"), b"x").unwrap();
        ImageStore::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
