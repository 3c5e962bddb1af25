//! Unpacking an image archive (tar.gz) into a directory, refusing anything
//! that could write outside it or create devices: absolute paths, `..`,
//! relative symlinks that climb out of the root, hard links to outside
//! names, device nodes and FIFOs. The error names the bad entry.
//!
//! Absolute symlink targets (`/bin/busybox`) are kept: inside a container
//! they resolve against the container's root. Writing *through* a symlink is
//! prevented by `tar`'s `unpack_in`, which checks every parent directory.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("archive entry {entry:?} is refused: {why}")]
    Refused { entry: String, why: &'static str },
    #[error("reading the archive")]
    Read(#[source] std::io::Error),
    #[error("unpacking entry {entry:?}")]
    Write {
        entry: String,
        #[source]
        source: std::io::Error,
    },
}

/// Normalizes a relative path without touching the disk; None if it climbs
/// above its start or is absolute.
fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Checks one entry; returns its normalized path.
fn check(
    entry: &str,
    path: &Path,
    kind: tar::EntryType,
    link: Option<&Path>,
) -> Result<PathBuf, UnpackError> {
    let refuse = |why| UnpackError::Refused {
        entry: entry.to_string(),
        why,
    };
    if path.is_absolute() {
        return Err(refuse("absolute path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(refuse("path contains '..'"));
    }
    let norm = normalize(path).ok_or_else(|| refuse("path escapes the root"))?;
    match kind {
        tar::EntryType::Regular | tar::EntryType::Directory | tar::EntryType::Continuous => {}
        tar::EntryType::Symlink => {
            let target = link.ok_or_else(|| refuse("symlink without a target"))?;
            if !target.is_absolute() {
                let base = norm.parent().unwrap_or(Path::new(""));
                if normalize(&base.join(target)).is_none() {
                    return Err(refuse("symlink points outside the root"));
                }
            }
        }
        tar::EntryType::Link => {
            let target = link.ok_or_else(|| refuse("hard link without a target"))?;
            if target.is_absolute()
                || normalize(target).is_none()
                || target.components().any(|c| c == Component::ParentDir)
            {
                return Err(refuse("hard link points outside the root"));
            }
        }
        tar::EntryType::Char | tar::EntryType::Block => return Err(refuse("device node")),
        tar::EntryType::Fifo => return Err(refuse("FIFO")),
        tar::EntryType::XHeader
        | tar::EntryType::XGlobalHeader
        | tar::EntryType::GNULongName
        | tar::EntryType::GNULongLink => {}
        _ => return Err(refuse("unsupported entry type")),
    }
    Ok(norm)
}

/// Unpacks a gzip-compressed tar into `dest` (which must exist). Returns the
/// number of entries. On error, `dest` may hold part of the archive: the
/// caller removes it.
pub fn unpack_tar_gz(archive: &Path, dest: &Path) -> Result<u64, UnpackError> {
    let f = std::fs::File::open(archive).map_err(UnpackError::Read)?;
    unpack(
        flate2::read::GzDecoder::new(std::io::BufReader::with_capacity(1 << 20, f)),
        dest,
    )
}

pub fn unpack<R: Read>(reader: R, dest: &Path) -> Result<u64, UnpackError> {
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    let mut n = 0;
    for entry in ar.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let path = entry.path().map_err(UnpackError::Read)?.into_owned();
        let name = path.display().to_string();
        let link = entry
            .link_name()
            .map_err(UnpackError::Read)?
            .map(|l| l.into_owned());
        let norm = check(&name, &path, entry.header().entry_type(), link.as_deref())?;
        if norm.as_os_str().is_empty() {
            continue; // "./" itself
        }
        let unpacked = entry.unpack_in(dest).map_err(|source| UnpackError::Write {
            entry: name.clone(),
            source,
        })?;
        if !unpacked {
            return Err(UnpackError::Refused {
                entry: name,
                why: "it would be written outside the root",
            });
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    /// Writes a raw name into the header, bypassing the builder's own checks.
    fn raw(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        name: &str,
        link: Option<&str>,
        data: &[u8],
    ) {
        let mut h = header(kind, data.len() as u64);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn refused(data: Vec<u8>, entry: &str) {
        let dir = tempfile::tempdir().unwrap();
        let err = unpack(&data[..], dir.path()).unwrap_err();
        match &err {
            UnpackError::Refused { entry: e, .. } => assert_eq!(e, entry, "{err}"),
            other => panic!("expected a refusal of {entry}, got {other}"),
        }
        assert!(err.to_string().contains(entry));
    }

    #[test]
    fn a_plain_rootfs_unpacks_with_absolute_symlinks_kept() {
        let data = archive(|b| {
            raw(b, tar::EntryType::Directory, "./bin/", None, b"");
            raw(b, tar::EntryType::Regular, "./bin/busybox", None, b"ELF");
            raw(
                b,
                tar::EntryType::Symlink,
                "./bin/sh",
                Some("/bin/busybox"),
                b"",
            );
            raw(
                b,
                tar::EntryType::Symlink,
                "./bin/ash",
                Some("busybox"),
                b"",
            );
            raw(
                b,
                tar::EntryType::Link,
                "./bin/bb2",
                Some("./bin/busybox"),
                b"",
            );
        });
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(unpack(&data[..], dir.path()).unwrap(), 5);
        assert_eq!(
            std::fs::read(dir.path().join("bin/busybox")).unwrap(),
            b"ELF"
        );
        assert_eq!(
            std::fs::read_link(dir.path().join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
    }

    #[test]
    fn absolute_paths_dotdot_escaping_links_and_devices_are_refused_by_name() {
        refused(
            archive(|b| raw(b, tar::EntryType::Regular, "/etc/evil", None, b"x")),
            "/etc/evil",
        );
        refused(
            archive(|b| raw(b, tar::EntryType::Regular, "a/../../evil", None, b"x")),
            "a/../../evil",
        );
        refused(
            archive(|b| raw(b, tar::EntryType::Symlink, "up", Some("../../../etc"), b"")),
            "up",
        );
        refused(
            archive(|b| raw(b, tar::EntryType::Link, "hard", Some("/etc/shadow"), b"")),
            "hard",
        );
        refused(
            archive(|b| raw(b, tar::EntryType::Link, "hard2", Some("../x"), b"")),
            "hard2",
        );
        refused(
            archive(|b| raw(b, tar::EntryType::Char, "dev/null", None, b"")),
            "dev/null",
        );
        refused(
            archive(|b| raw(b, tar::EntryType::Block, "dev/sda", None, b"")),
            "dev/sda",
        );
        refused(
            archive(|b| raw(b, tar::EntryType::Fifo, "pipe", None, b"")),
            "pipe",
        );
    }

    #[test]
    fn writing_through_a_symlink_to_outside_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().display().to_string();
        let data = archive(|b| {
            raw(b, tar::EntryType::Symlink, "escape", Some(&target), b"");
            raw(b, tar::EntryType::Regular, "escape/owned", None, b"x");
        });
        let dir = tempfile::tempdir().unwrap();
        assert!(unpack(&data[..], dir.path()).is_err());
        assert!(
            !outside.path().join("owned").exists(),
            "nothing may be written outside the root"
        );
    }
}
