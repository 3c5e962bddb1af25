//! Images made from instances: a transient snapshot of the instance's
//! dataset (`@_export-<image>`, a name no user snapshot can have), cloned
//! read-only to `<pool>/exports/<image>`, written as the image file the
//! node's image pipeline reads (a tar.gz: a container's root filesystem with
//! its owners shifted back to container ids, or a VM's boot files), and
//! streamed in chunks with its sha256. The clone and the snapshot are
//! destroyed when the export ends however it ends, and `sweep` removes what
//! a crashed agent left.
//!
//! It must never change the instance's own files, and never put an entry in
//! the file that unpacking would refuse (device nodes, FIFOs, sockets,
//! symlinks out of the root): those are left out and counted.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::idmap::{CONTAINER_IDS, IdRange};
use crate::storage::zfs::{self, ZfsError};

/// Snapshots of exports start with this (user snapshot names cannot).
pub const SNAPSHOT_PREFIX: &str = "_export-";
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error("writing the image of instance {id} from {path}")]
    Io {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the receiver of the image of instance {0} went away")]
    Hangup(String),
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub sha256: String,
    pub size: u64,
    pub unpacked_bytes: u64,
    pub skipped: u64,
}

/// What to write: every entry of the root (a container) or only the named
/// files at its top (a VM's boot files).
#[derive(Debug, Clone, Copy)]
pub enum Selection {
    /// Owners in the node's container id range are written as container ids.
    RootFs(IdRange),
    Files(&'static [&'static str]),
}

#[derive(Clone)]
pub struct Exporter {
    pool: String,
}

impl Exporter {
    pub fn new(pool: &str) -> Exporter {
        Exporter {
            pool: pool.to_string(),
        }
    }

    fn clone_name(&self, tag: &str) -> String {
        format!("{}/exports/{tag}", self.pool)
    }

    /// Clones `snapshot` read-only and writes it into `out`; the clone and
    /// the snapshot are destroyed afterwards, whatever happened.
    pub async fn export(
        &self,
        id: &str,
        snapshot: &str,
        tag: &str,
        selection: Selection,
        out: mpsc::Sender<Bytes>,
    ) -> Result<Summary, ExportError> {
        let clone = self.clone_name(tag);
        let result = async {
            zfs::ensure(&format!("{}/exports", self.pool), &[]).await?;
            zfs::destroy(&clone, true).await?;
            zfs::clone(snapshot, &clone, &[("readonly", "on")]).await?;
            let root = zfs::mountpoint(&clone).await?;
            let id = id.to_string();
            let id_for_error = id.clone();
            tokio::task::spawn_blocking(move || write_image(&id, &root, selection, out))
                .await
                .map_err(|e| ExportError::Io {
                    id: id_for_error.clone(),
                    path: PathBuf::new(),
                    source: std::io::Error::other(e.to_string()),
                })?
        }
        .await;
        if let Err(e) = zfs::destroy(&clone, true).await {
            tracing::warn!("removing the export clone {clone}: {e}");
        }
        if let Err(e) = zfs::destroy(snapshot, false).await {
            tracing::warn!("removing the export snapshot {snapshot}: {e}");
        }
        result
    }

    /// Removes the clones and snapshots of exports a crashed agent left.
    pub async fn sweep(&self, instances_parent: &str) -> Result<usize, ZfsError> {
        let mut removed = 0;
        let exports = format!("{}/exports", self.pool);
        if zfs::exists(&exports).await? {
            for name in zfs::get_tree(&exports, &["type"]).await?.into_keys() {
                if name != exports && !name.contains('@') {
                    zfs::destroy(&name, true).await?;
                    removed += 1;
                }
            }
        }
        if zfs::exists(instances_parent).await? {
            for name in zfs::get_tree(instances_parent, &["type"])
                .await?
                .into_keys()
            {
                if name
                    .split_once('@')
                    .is_some_and(|(_, s)| s.starts_with(SNAPSHOT_PREFIX))
                {
                    zfs::destroy(&name, false).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// Counts, hashes and hands on the compressed bytes in chunks.
struct ChunkSink {
    out: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    hasher: Sha256,
    size: u64,
}

impl ChunkSink {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.out
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "receiver gone"))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush_chunk()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A host id as the container sees it: ids of the node's container range
/// (any slot) fold back to 0..65536; anything else (a file the node wrote
/// as itself) becomes root's, which inside a container is no one special.
fn container_id(host: u32, ids: IdRange) -> u64 {
    let end = u64::from(ids.base) + u64::from(ids.count) * u64::from(CONTAINER_IDS);
    if host >= ids.base && u64::from(host) < end {
        u64::from((host - ids.base) % CONTAINER_IDS)
    } else {
        0
    }
}

/// Writes the tar.gz of `root` into `out` (blocking).
pub fn write_image(
    id: &str,
    root: &Path,
    selection: Selection,
    out: mpsc::Sender<Bytes>,
) -> Result<Summary, ExportError> {
    let io = |path: &Path, source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::BrokenPipe {
            ExportError::Hangup(id.to_string())
        } else {
            ExportError::Io {
                id: id.to_string(),
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let sink = ChunkSink {
        out,
        buf: Vec::with_capacity(CHUNK),
        hasher: Sha256::new(),
        size: 0,
    };
    let gz = flate2::write::GzEncoder::new(sink, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut summary = Summary::default();
    match selection {
        Selection::Files(names) => {
            for name in names {
                let path = root.join(name);
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                if !meta.is_file() {
                    summary.skipped += 1;
                    continue;
                }
                append(&mut tar, &path, Path::new(name), &meta, None, &mut summary)
                    .map_err(|e| io(&path, e))?;
            }
        }
        Selection::RootFs(ids) => {
            let mut stack = vec![PathBuf::new()];
            while let Some(rel) = stack.pop() {
                let dir = root.join(&rel);
                let mut entries: Vec<_> = std::fs::read_dir(&dir)
                    .map_err(|e| io(&dir, e))?
                    .collect::<std::io::Result<_>>()
                    .map_err(|e| io(&dir, e))?;
                entries.sort_by_key(|e| e.file_name());
                for e in entries {
                    let name = rel.join(e.file_name());
                    let path = e.path();
                    let meta = std::fs::symlink_metadata(&path).map_err(|e| io(&path, e))?;
                    append(&mut tar, &path, &name, &meta, Some(ids), &mut summary)
                        .map_err(|e| io(&path, e))?;
                    if meta.is_dir() {
                        stack.push(name);
                    }
                }
            }
        }
    }
    let gz = tar.into_inner().map_err(|e| io(root, e))?;
    let mut sink = gz.finish().map_err(|e| io(root, e))?;
    sink.flush_chunk().map_err(|e| io(root, e))?;
    summary.sha256 = hex::encode(sink.hasher.finalize());
    summary.size = sink.size;
    Ok(summary)
}

/// One entry, unless unpacking would refuse it (then it is counted as skipped).
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: &Path,
    meta: &std::fs::Metadata,
    ids: Option<IdRange>,
    summary: &mut Summary,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        tar::EntryType::Regular
    } else if ft.is_dir() {
        tar::EntryType::Directory
    } else if ft.is_symlink() {
        tar::EntryType::Symlink
    } else {
        summary.skipped += 1;
        return Ok(());
    };
    let link = if ft.is_symlink() {
        Some(std::fs::read_link(path)?)
    } else {
        None
    };
    let shown = name.display().to_string();
    if crate::unpack::check(&shown, name, kind, link.as_deref()).is_err() {
        tracing::info!(entry = %shown, "left out of the image: unpacking would refuse it");
        summary.skipped += 1;
        return Ok(());
    }
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    h.set_entry_type(kind);
    let (uid, gid) = match ids {
        Some(ids) => (container_id(meta.uid(), ids), container_id(meta.gid(), ids)),
        None => (0, 0),
    };
    h.set_uid(uid);
    h.set_gid(gid);
    match kind {
        tar::EntryType::Regular => {
            h.set_size(meta.len());
            summary.unpacked_bytes += meta.len();
            let f = std::fs::File::open(path)?;
            // A file that shrank meanwhile cannot (the clone is read-only).
            tar.append_data(&mut h, name, f)
        }
        tar::EntryType::Symlink => {
            h.set_size(0);
            tar.append_link(&mut h, name, link.as_deref().unwrap_or(Path::new("")))
        }
        _ => {
            h.set_size(0);
            tar.append_data(&mut h, name, std::io::empty())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    const IDS: IdRange = IdRange {
        base: 1_000_000_000,
        count: 4,
    };

    #[test]
    fn host_ids_of_any_slot_fold_back_to_container_ids() {
        assert_eq!(container_id(1_000_000_000, IDS), 0);
        assert_eq!(container_id(1_000_000_000 + 65536 * 2 + 33, IDS), 33);
        assert_eq!(container_id(1_000_000_000 + 65536 * 4, IDS), 0);
        assert_eq!(container_id(0, IDS), 0);
        assert_eq!(container_id(1000, IDS), 0);
    }

    fn collect(rx: &mut mpsc::Receiver<Bytes>) -> Vec<u8> {
        let mut all = Vec::new();
        while let Ok(c) = rx.try_recv() {
            all.extend_from_slice(&c);
        }
        all
    }

    #[test]
    fn a_root_filesystem_round_trips_through_unpack_with_owners_and_modes() {
        let src = tempfile::tempdir().unwrap();
        let r = src.path();
        std::fs::create_dir_all(r.join("etc/app")).unwrap();
        std::fs::write(r.join("etc/app/conf"), b"key=value\n").unwrap();
        std::fs::set_permissions(
            r.join("etc/app/conf"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::os::unix::fs::chown(
            r.join("etc/app/conf"),
            Some(IDS.base + 65536 + 42),
            Some(IDS.base + 7),
        )
        .unwrap();
        symlink("/bin/busybox", r.join("sh")).unwrap();
        symlink("../../../../etc/shadow", r.join("etc/app/escape")).unwrap();
        nix::unistd::mkfifo(
            &r.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();

        let (tx, mut rx) = mpsc::channel(1024);
        let s = write_image("test", r, Selection::RootFs(IDS), tx).unwrap();
        let bytes = collect(&mut rx);
        assert_eq!(s.size, bytes.len() as u64);
        assert_eq!(s.sha256, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(s.unpacked_bytes, 10);
        assert_eq!(s.skipped, 2, "the FIFO and the escaping symlink");

        let dst = tempfile::tempdir().unwrap();
        let opts = crate::unpack::Options {
            max_bytes: s.unpacked_bytes,
            shift: Some(2_000_000_000),
        };
        crate::unpack::unpack(flate2::read::GzDecoder::new(&bytes[..]), dst.path(), opts).unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dst.path().join("etc/app/conf")).unwrap();
        assert_eq!(m.uid(), 2_000_000_042);
        assert_eq!(m.gid(), 2_000_000_007);
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(
            std::fs::read(dst.path().join("etc/app/conf")).unwrap(),
            b"key=value\n"
        );
        assert_eq!(
            std::fs::read_link(dst.path().join("sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert!(!dst.path().join("fifo").exists());
        assert!(std::fs::symlink_metadata(dst.path().join("etc/app/escape")).is_err());
    }

    #[test]
    fn a_vm_keeps_only_its_boot_files() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("vmlinuz"), b"kernel").unwrap();
        std::fs::write(src.path().join("console.log"), b"secret output").unwrap();
        std::fs::create_dir(src.path().join("seed")).unwrap();
        let (tx, mut rx) = mpsc::channel(1024);
        let s = write_image(
            "test",
            src.path(),
            Selection::Files(&["vmlinuz", "initramfs.gz", "cmdline"]),
            tx,
        )
        .unwrap();
        let bytes = collect(&mut rx);
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["vmlinuz"]);
        assert_eq!(s.unpacked_bytes, 6);
    }

    #[test]
    fn a_receiver_that_hangs_up_stops_the_export() {
        let src = tempfile::tempdir().unwrap();
        let noise: Vec<u8> = (0..4 * CHUNK as u32)
            .map(|i| i.wrapping_mul(2654435761) as u8)
            .collect();
        std::fs::write(src.path().join("big"), &noise).unwrap();
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let err = write_image("test", src.path(), Selection::RootFs(IDS), tx).unwrap_err();
        assert!(matches!(err, ExportError::Hangup(_)), "{err}");
    }
}
