//! Console logs: a writer that keeps a log bounded by rotating it (`log` ->
//! `log.1`, the older half dropped), and the reader that serves the end of it.
//!
//! Plain files only; it must never block on anything but the file system.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::Console;

/// The most a read looks at, from the end (the tail of a log, not all of it).
const MAX_READ: u64 = 1 << 20;

/// Appends to `path`; once it holds `max_bytes`, it becomes `path.1` (the
/// previous `.1` is dropped) and a new `path` starts. At most about
/// 2 x `max_bytes` are ever on disk.
pub struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    file: File,
    size: u64,
}

pub fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

impl Rotating {
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Rotating> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Rotating {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            file,
            size,
        })
    }

    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.size >= self.max_bytes {
                self.rotate()?;
            }
            let room = (self.max_bytes - self.size) as usize;
            let n = room.min(data.len());
            self.file.write_all(&data[..n])?;
            self.size += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        std::fs::rename(&self.path, rotated(&self.path))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// The last `tail_lines` lines of the logs `paths` (oldest first; missing
/// ones are empty), looking at no more than the last MiB of them.
pub fn read_tail(paths: &[PathBuf], tail_lines: usize) -> io::Result<Console> {
    let mut chunks = Vec::new();
    let mut budget = MAX_READ;
    let mut cut = false;
    for p in paths.iter().rev() {
        if budget == 0 {
            cut |= p.exists();
            break;
        }
        let mut f = match File::open(p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let take = len.min(budget);
        if take < len {
            cut = true;
            f.seek(SeekFrom::Start(len - take))?;
        }
        let mut buf = Vec::with_capacity(take as usize);
        f.take(take).read_to_end(&mut buf)?;
        budget -= take;
        chunks.push(buf);
    }
    let bytes: Vec<u8> = chunks.into_iter().rev().flatten().collect();
    let text = String::from_utf8_lossy(&bytes);
    // A read that started mid-file starts mid-line: drop that partial line.
    let text = if cut {
        text.split_once('\n').map(|(_, r)| r).unwrap_or("")
    } else {
        &text
    };
    let (text, fewer) = super::tail(text, tail_lines);
    Ok(Console {
        text,
        truncated: cut || fewer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotating_log_never_holds_more_than_twice_its_bound_and_reads_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = Rotating::open(&path, 100).unwrap();
        for i in 0..1000 {
            log.write(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= 100 && size(&rotated(&path)) <= 100);
        let c = read_tail(&[rotated(&path), path.clone()], 3).unwrap();
        assert_eq!(c.text, "line 0997\nline 0998\nline 0999\n");
        assert!(c.truncated);
        // A reopened log continues where it was.
        drop(log);
        let mut log = Rotating::open(&path, 100).unwrap();
        log.write(b"after\n").unwrap();
        let c = read_tail(&[rotated(&path), path.clone()], 1).unwrap();
        assert_eq!(c.text, "after\n");
    }

    #[test]
    fn missing_logs_read_as_empty_and_invalid_utf8_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let c = read_tail(&[dir.path().join("nope")], 10).unwrap();
        assert_eq!((c.text.as_str(), c.truncated), ("", false));
        let p = dir.path().join("bin");
        std::fs::write(&p, b"ok \xff\n").unwrap();
        assert_eq!(read_tail(&[p], 10).unwrap().text, "ok \u{fffd}\n");
    }
}
