//! Exit notifications of containers' init processes, without polling: a
//! pidfd per running container (the kernel makes it readable when the
//! process ends), awaited by a task of its own.
//!
//! It only waits and tells; it never signals or otherwise acts on a
//! process, and a pid it cannot open (already gone) counts as exited.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// Returns once process `pid` has ended.
pub async fn wait(pid: u32) {
    let Ok(pid_t) = nix::libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // (or -1); nothing else is read or written.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid_t, 0) };
    if fd < 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(nix::libc::ESRCH) {
            return;
        }
        // A kernel without pidfds.
        return poll_proc(pid).await;
    }
    // SAFETY: the descriptor was just returned to us and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it (open,
    // the same descriptor) until it is dropped.
    match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
        Ok(fd) => {
            let _ = fd.readable().await;
        }
        Err(_) => poll_proc(pid).await,
    }
}

/// Where a pidfd cannot be had: looks at /proc once a second.
async fn poll_proc(pid: u32) {
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn an_exit_is_noticed_and_a_gone_pid_counts_as_exited() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let started = std::time::Instant::now();
        super::wait(pid).await;
        assert!(started.elapsed() >= std::time::Duration::from_millis(250));
        child.wait().await.unwrap();
        // Reaped: the pid is gone.
        tokio::time::timeout(std::time::Duration::from_secs(5), super::wait(pid))
            .await
            .unwrap();
    }
}
