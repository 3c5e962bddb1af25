//! Unpacking an image archive (tar.gz) into a directory, refusing anything
//! that could write outside it or create devices: absolute paths, `..`,
//! relative symlinks that climb out of the root, hard links to outside
//! names, device nodes and FIFOs. The error names the bad entry.
//!
//! Absolute symlink targets (`/bin/busybox`) are kept: inside a container
//! they resolve against the container's root. Writing *through* a symlink is
//! prevented by `tar`'s `unpack_in`, which checks every parent directory.
//!
//! Bounded: the sizes the entries declare (which is all the tar reader
//! yields) may not add up to more than the limit, so a small archive of
//! zeros (a gzip bomb) stops at the limit, before anything is written past
//! it. Owners can be shifted into a container id range as entries land.

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
    #[error(
        "the archive unpacks to more than the {limit} bytes it may take (entry {entry:?} reaches {reached}); a declared unpacked size must cover it"
    )]
    TooLarge {
        entry: String,
        limit: u64,
        reached: u64,
    },
}

/// How to unpack.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The most the entries may hold in all, in bytes.
    pub max_bytes: u64,
    /// Own every entry by `base + uid`, `base + gid` (a container image);
    /// None keeps the unpacking user (root) as the owner.
    pub shift: Option<u32>,
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
pub(crate) fn check(
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
pub fn unpack_tar_gz(archive: &Path, dest: &Path, opts: Options) -> Result<u64, UnpackError> {
    let f = std::fs::File::open(archive).map_err(UnpackError::Read)?;
    unpack(
        flate2::read::GzDecoder::new(std::io::BufReader::with_capacity(1 << 20, f)),
        dest,
        opts,
    )
}

/// Owns an unpacked entry by the shifted ids of its header; puts its mode
/// back (chown clears setuid and setgid bits).
fn shift_owner(path: &Path, h: &tar::Header, base: u32, name: &str) -> Result<(), UnpackError> {
    let id = |v: std::io::Result<u64>, what: &'static str| -> Result<u32, UnpackError> {
        let v = v.map_err(UnpackError::Read)?;
        if v >= u64::from(crate::idmap::CONTAINER_IDS) {
            return Err(UnpackError::Refused {
                entry: name.to_string(),
                why: what,
            });
        }
        Ok(base + v as u32)
    };
    let uid = id(h.uid(), "its uid is beyond the 65536 ids of a container")?;
    let gid = id(h.gid(), "its gid is beyond the 65536 ids of a container")?;
    let write = |source| UnpackError::Write {
        entry: name.to_string(),
        source,
    };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(write)?;
    if h.entry_type() != tar::EntryType::Symlink {
        use std::os::unix::fs::PermissionsExt;
        let mode = h.mode().map_err(UnpackError::Read)? & 0o7777;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(write)?;
    }
    Ok(())
}

pub fn unpack<R: Read>(reader: R, dest: &Path, opts: Options) -> Result<u64, UnpackError> {
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    let mut n = 0;
    let mut total: u64 = 0;
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
        total = total.saturating_add(entry.header().entry_size().map_err(UnpackError::Read)?);
        if total > opts.max_bytes {
            return Err(UnpackError::TooLarge {
                entry: name,
                limit: opts.max_bytes,
                reached: total,
            });
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
        if let Some(base) = opts.shift
            && !matches!(
                entry.header().entry_type(),
                tar::EntryType::XHeader
                    | tar::EntryType::XGlobalHeader
                    | tar::EntryType::GNULongName
                    | tar::EntryType::GNULongLink
            )
        {
            shift_owner(&dest.join(&norm), entry.header(), base, &name)?;
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: Options = Options {
        max_bytes: 1 << 30,
        shift: None,
    };

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
        let err = unpack(&data[..], dir.path(), OPTS).unwrap_err();
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
        assert_eq!(unpack(&data[..], dir.path(), OPTS).unwrap(), 5);
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
        assert!(unpack(&data[..], dir.path(), OPTS).is_err());
        assert!(
            !outside.path().join("owned").exists(),
            "nothing may be written outside the root"
        );
    }

    #[test]
    fn entries_adding_up_past_the_limit_are_refused_before_they_are_written() {
        let data = archive(|b| {
            raw(b, tar::EntryType::Regular, "./a", None, &[1u8; 600]);
            raw(b, tar::EntryType::Regular, "./b", None, &[2u8; 600]);
        });
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            max_bytes: 1000,
            shift: None,
        };
        let err = unpack(&data[..], dir.path(), opts).unwrap_err();
        assert!(
            matches!(&err, UnpackError::TooLarge { entry, limit: 1000, reached: 1200 } if entry == "./b"),
            "{err}"
        );
        assert!(!dir.path().join("b").exists());
    }

    #[test]
    fn owners_are_shifted_into_the_container_range_and_setuid_survives() {
        use std::os::unix::fs::MetadataExt;
        let data = archive(|b| {
            let mut h = header(tar::EntryType::Regular, 3);
            h.set_mode(0o4755);
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            b.append_data(&mut h, "bin/suid", &b"ELF"[..]).unwrap();
            let mut h = header(tar::EntryType::Regular, 1);
            h.set_uid(1000);
            h.set_gid(100);
            h.set_cksum();
            b.append_data(&mut h, "home/f", &b"x"[..]).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            max_bytes: 1 << 20,
            shift: Some(500_000),
        };
        unpack(&data[..], dir.path(), opts).unwrap();
        let s = std::fs::metadata(dir.path().join("bin/suid")).unwrap();
        assert_eq!(
            (s.uid(), s.gid(), s.mode() & 0o7777),
            (500_000, 500_000, 0o4755)
        );
        let f = std::fs::metadata(dir.path().join("home/f")).unwrap();
        assert_eq!((f.uid(), f.gid()), (501_000, 500_100));
        // An owner beyond a container's ids is refused.
        let data = archive(|b| {
            let mut h = header(tar::EntryType::Regular, 1);
            h.set_uid(70_000);
            h.set_cksum();
            b.append_data(&mut h, "big", &b"x"[..]).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let err = unpack(&data[..], dir.path(), opts).unwrap_err();
        assert!(err.to_string().contains("beyond the 65536 ids"), "{err}");
    }
}
