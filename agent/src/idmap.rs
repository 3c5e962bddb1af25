//! The host uid/gid range containers run in (user namespaces), as `/etc/subuid`
//! is for people: `BASE:COUNT`, split into slots of 65536 ids. Slot 0 is
//! shared by every container of the node (images are unpacked shifted into
//! it once, so a clone needs no chown); each later slot is one instance's own
//! (its clone is shifted into it at creation).
//!
//! Host id 0 is never inside a range, and a range may not hold any id of the
//! host's users or groups: the agent refuses to start otherwise.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Ids a container sees: 0..65536.
pub const CONTAINER_IDS: u32 = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub base: u32,
    pub count: u32,
}

impl Default for IdRange {
    /// 1,000,000,000 and 1025 slots (the shared one and 1024 isolated ones).
    fn default() -> Self {
        IdRange {
            base: 1_000_000_000,
            count: CONTAINER_IDS * 1025,
        }
    }
}

impl std::str::FromStr for IdRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (b, c) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not BASE:COUNT"))?;
        let base: u32 = b
            .trim()
            .parse()
            .map_err(|_| format!("base {b:?} is not a number"))?;
        let count: u32 = c
            .trim()
            .parse()
            .map_err(|_| format!("count {c:?} is not a number"))?;
        let r = IdRange { base, count };
        r.check()?;
        Ok(r)
    }
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.base, self.count)
    }
}

impl IdRange {
    fn check(&self) -> Result<(), String> {
        if self.base < CONTAINER_IDS {
            return Err(format!(
                "the range must start at {CONTAINER_IDS} or above (host system ids live below), not {}",
                self.base
            ));
        }
        if self.count < CONTAINER_IDS || !self.count.is_multiple_of(CONTAINER_IDS) {
            return Err(format!(
                "the count must be a multiple of {CONTAINER_IDS} (one container's ids), not {}",
                self.count
            ));
        }
        if u64::from(self.base) + u64::from(self.count) > u64::from(u32::MAX) {
            return Err("the range ends beyond the largest uid".into());
        }
        Ok(())
    }

    /// How many slots of 65536 ids it holds.
    pub fn slots(&self) -> u32 {
        self.count / CONTAINER_IDS
    }

    /// The first host id of slot `k` (0 is the shared slot).
    pub fn slot_base(&self, k: u32) -> u32 {
        self.base + k * CONTAINER_IDS
    }

    fn contains(&self, id: u32) -> bool {
        id >= self.base && u64::from(id) < u64::from(self.base) + u64::from(self.count)
    }

    /// Refuses a range that holds an id of `/etc/passwd` or `/etc/group`
    /// (their contents given): a container would own that user's files.
    pub fn check_host_ids(&self, passwd: &str, group: &str) -> Result<(), String> {
        for (file, text, what) in [
            ("/etc/passwd", passwd, "user"),
            ("/etc/group", group, "group"),
        ] {
            for line in text.lines() {
                let mut f = line.split(':');
                let (Some(name), _, Some(id)) = (f.next(), f.next(), f.next()) else {
                    continue;
                };
                if let Ok(id) = id.parse::<u32>()
                    && self.contains(id)
                {
                    return Err(format!(
                        "the container id range {self} holds the host's {what} {name} (id {id} in {file}); choose another --uid-range"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Shifts the owner of everything under `root` from ids in
/// `from..from+65536` to the same offsets from `to` (an instance moving into
/// its own slot). Modes (setuid bits included) are kept. Returns how many
/// entries changed.
pub fn shift_tree(root: &Path, from: u32, to: u32) -> std::io::Result<u64> {
    let shift = |id: u32| {
        if id >= from && id - from < CONTAINER_IDS {
            to + (id - from)
        } else {
            id
        }
    };
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p)?;
        let (uid, gid) = (shift(md.uid()), shift(md.gid()));
        if (uid, gid) != (md.uid(), md.gid()) {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid))?;
            // chown clears setuid/setgid bits; put the mode back.
            if !md.file_type().is_symlink() {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(md.mode() & 0o7777))?;
            }
            n += 1;
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(n)
}

/// The host's users and groups, to check a range against.
pub fn check_host(range: &IdRange) -> Result<(), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    range.check_host_ids(&passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_parsed_and_bad_ones_refused() {
        let r: IdRange = "1000000000:131072".parse().unwrap();
        assert_eq!((r.slots(), r.slot_base(1)), (2, 1_000_065_536));
        assert!(
            "0:65536"
                .parse::<IdRange>()
                .unwrap_err()
                .contains("65536 or above")
        );
        assert!(
            "100000:1000"
                .parse::<IdRange>()
                .unwrap_err()
                .contains("multiple")
        );
        assert!(
            "4294901760:131072"
                .parse::<IdRange>()
                .unwrap_err()
                .contains("beyond")
        );
        assert!("x".parse::<IdRange>().is_err());
        assert_eq!(IdRange::default().slots(), 1025);
    }

    #[test]
    fn a_range_holding_a_host_user_or_group_is_refused_by_name() {
        let r: IdRange = "100000:65536".parse().unwrap();
        let passwd = "root:x:0:0::/root:/bin/sh\nalice:x:100500:100500::/home/alice:/bin/sh\n";
        let err = r.check_host_ids(passwd, "").unwrap_err();
        assert!(err.contains("alice") && err.contains("100500"), "{err}");
        let err = r.check_host_ids("", "staff:x:165535:\n").unwrap_err();
        assert!(err.contains("group staff"), "{err}");
        assert!(
            r.check_host_ids("root:x:0:0::/:/bin/sh\n", "root:x:0:\n")
                .is_ok()
        );
    }

    #[test]
    fn shifting_a_tree_moves_owners_and_keeps_setuid_bits() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("suid");
        std::fs::write(&f, b"x").unwrap();
        std::os::unix::fs::lchown(&f, Some(200_000), Some(200_005)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("suid", d.path().join("link")).unwrap();
        std::os::unix::fs::lchown(d.path().join("link"), Some(200_000), Some(200_000)).unwrap();
        std::os::unix::fs::lchown(d.path(), Some(200_000), Some(200_000)).unwrap();
        let n = shift_tree(d.path(), 200_000, 300_000).unwrap();
        assert_eq!(n, 3);
        let md = std::fs::metadata(&f).unwrap();
        assert_eq!((md.uid(), md.gid()), (300_000, 300_005));
        assert_eq!(md.mode() & 0o7777, 0o4755);
        let l = std::fs::symlink_metadata(d.path().join("link")).unwrap();
        assert_eq!(l.uid(), 300_000);
    }
}
