//! File-backed zpools for tests, each with a unique name, destroyed on drop.

use std::process::Command;

use tempfile::TempDir;

pub struct TestPool {
    pub name: String,
    /// The pool's file and mountpoint. Kept on disk if the pool cannot be
    /// destroyed: removing a live zfs-fuse mountpoint wedges the pool.
    dir: Option<TempDir>,
}

/// True if zfs works on this host (zfs-fuse running or kernel ZFS). In CI a
/// missing ZFS fails the test; elsewhere the test is skipped with a reason.
pub fn available() -> bool {
    let ok = Command::new("zpool")
        .args(["list", "-H"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            !crate::must_not_skip(),
            "ZFS is not usable on this host (is zfs-fuse running?) and CI must not skip"
        );
        eprintln!("skipped: ZFS is not usable here (start zfs-fuse, or run deploy/dev test)");
    }
    ok
}

impl TestPool {
    /// Where the pool's root dataset is mounted.
    pub fn mountpoint(&self) -> std::path::PathBuf {
        self.dir
            .as_ref()
            .map(|d| d.path().join("mnt"))
            .unwrap_or_default()
    }

    /// Exports the pool (a node that cannot see it any more); `import`
    /// brings it back.
    pub fn export(&self) {
        let out = Command::new("zpool")
            .args(["export", "-f", &self.name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "zpool export {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn import(&self) {
        let dir = self.dir.as_ref().expect("the pool's dir").path();
        let out = Command::new("zpool")
            .args(["import", "-d"])
            .arg(dir)
            .arg(&self.name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "zpool import {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn create(size: &str) -> TestPool {
        let name = crate::unique_name("nrdt");
        let dir = tempfile::Builder::new()
            .prefix("nereid-pool-")
            .tempdir()
            .unwrap();
        let img = dir.path().join("pool.img");
        let st = Command::new("truncate")
            .args(["-s", size])
            .arg(&img)
            .status()
            .unwrap();
        assert!(st.success());
        let out = Command::new("zpool")
            .args(["create", "-m"])
            .arg(dir.path().join("mnt"))
            .arg(&name)
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "zpool create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestPool {
            name,
            dir: Some(dir),
        }
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        // A process that was just killed (an agent and its `zpool`/`zfs`
        // children) can keep the pool busy a moment, and zfs-fuse can stall
        // for seconds under load: retry for up to ~30 s.
        let mut last = String::new();
        for _ in 0..150 {
            let _ = Command::new("zfs")
                .args(["unmount", "-f", &self.name])
                .output();
            match Command::new("zpool")
                .args(["destroy", "-f", &self.name])
                .output()
            {
                Ok(o) if o.status.success() => return,
                Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => last = e.to_string(),
            }
            let exists = Command::new("zpool")
                .args(["list", "-H", "-o", "name", &self.name])
                .output();
            if exists.is_ok_and(|o| !o.status.success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let kept = self.dir.take().map(|d| d.keep());
        eprintln!(
            "zpool destroy {} kept failing ({last}); its files stay in {kept:?} for `zpool destroy -f {}`",
            self.name, self.name
        );
    }
}
