//! nereid-tests: the harness of Nereid's end-to-end tests, reusable from the
//! crates' own tests. It starts real things: a throwaway PostgreSQL cluster
//! from the system's binaries (one per test process, a fresh database per
//! test), real headnode and agent processes, file-backed zpools.
//!
//! Everything it starts is stopped and removed when the test ends, also when
//! it fails; the PostgreSQL cluster goes away when the test process exits,
//! however it exits.

pub mod api;
pub mod datacenter;
pub mod node;
pub mod pg;
pub mod procs;
pub mod sim;
pub mod zfs;

use std::time::Duration;

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A short unique name for host-global things a test creates (pools, links).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether a missing host capability must fail the test (in CI) rather than skip it.
pub fn must_not_skip() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// A number a benchmark reads from the environment (`NEREID_BENCH_RUNS`, ...),
/// or `default` when it is unset or not a number.
pub fn bench_setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether a call failed because its connection did (a refused TLS
/// handshake shows up as any of these, depending on when the client
/// learns of it), not with an answer of the service.
pub fn connection_failed(st: &tonic::Status) -> bool {
    matches!(
        st.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
    )
}

/// Waits until a process's log holds `needle` at least `times` times (a
/// server logs a refused handshake just after the client saw it fail).
pub async fn wait_for_log(proc: &procs::Proc, needle: &str, times: usize) {
    wait_for(
        &format!("{times} x {needle:?} in the {} log", proc.name),
        Duration::from_secs(10),
        || async { (proc.log_text().matches(needle).count() >= times).then_some(()) },
    )
    .await
}
