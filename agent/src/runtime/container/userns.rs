//! The user and network namespaces of a container, made together before
//! runc runs: a user namespace mapping the container's ids 0..65536 onto its
//! host range, and a network namespace owned by it. Both are kept by bind
//! mounts (`/run/nereid/userns/<uuid>`, `/run/netns/nrd-<uuid>`, where `ip`
//! finds it), so the NICs can be plumbed before the container starts and
//! runc joins both. A network namespace owned by the container's user
//! namespace is what lets the container mount its own sysfs and lets
//! `runc exec` join it.
//!
//! It must never leave a namespace file that is not a namespace: a file
//! found without one behind it (a crash between the steps) is made again.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

const NSFS_MAGIC: i64 = 0x6e73_6673;
pub const USERNS_DIR: &str = "/run/nereid/userns";

pub fn userns_path(id: &str) -> PathBuf {
    Path::new(USERNS_DIR).join(id)
}

/// Whether `path` is a namespace kept by a bind mount (not a bare file).
pub fn is_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == NSFS_MAGIC)
        .unwrap_or(false)
}

fn io(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

/// Makes the pair exist: a user namespace with ids 0..65536 at host
/// `base..base+65536`, and a network namespace it owns. Idempotent.
pub fn create(user: &Path, net: &Path, base: u32) -> std::io::Result<()> {
    if is_namespace(user) && is_namespace(net) {
        return Ok(());
    }
    remove(user, net);
    for dir in [user.parent(), net.parent()].into_iter().flatten() {
        std::fs::create_dir_all(dir)?;
    }
    // A child that only waits: it makes the namespaces, we map and keep them.
    let mut child = unsafe {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep")
            .arg("60")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .pre_exec(|| {
                nix::sched::unshare(
                    nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNET,
                )
                .map_err(std::io::Error::from)
            })
            .spawn()?
    };
    let pid = child.id();
    let result = (|| {
        let map = format!("0 {base} {}\n", crate::idmap::CONTAINER_IDS);
        std::fs::write(format!("/proc/{pid}/uid_map"), &map)
            .map_err(|e| io("writing uid_map", e))?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &map)
            .map_err(|e| io("writing gid_map", e))?;
        for (kind, target) in [("user", user), ("net", net)] {
            std::fs::File::create(target)?;
            nix::mount::mount(
                Some(Path::new(&format!("/proc/{pid}/ns/{kind}"))),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                io(
                    &format!("keeping the {kind} namespace at {}", target.display()),
                    e,
                )
            })?;
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    if result.is_err() {
        remove(user, net);
    }
    result
}

/// Lets go of both namespaces (they end with their last user); missing
/// ones are fine.
pub fn remove(user: &Path, net: &Path) {
    for p in [net, user] {
        let _ = nix::mount::umount2(p, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_made_kept_mapped_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let (user, net) = (d.path().join("u/one"), d.path().join("n/one"));
        create(&user, &net, 300_000).unwrap();
        assert!(is_namespace(&user) && is_namespace(&net));
        // Made again (a no-op) when both are there.
        create(&user, &net, 300_000).unwrap();
        // A bare file (a crash half-way) is not a namespace.
        let bare = d.path().join("bare");
        std::fs::write(&bare, b"").unwrap();
        assert!(!is_namespace(&bare));
        remove(&user, &net);
        assert!(!user.exists() && !net.exists());
    }
}
