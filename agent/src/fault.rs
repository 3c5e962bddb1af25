//! Fault injection for crash tests: `NEREID_AGENT_FAULT=<point>` makes the
//! agent abort (as if `kill -9`ed) when it reaches that point. Unset in
//! production, where `point` is one environment lookup.

/// Aborts the process if the fault named `name` is armed.
pub fn point(name: &str) {
    if std::env::var("NEREID_AGENT_FAULT").is_ok_and(|f| f == name) {
        eprintln!("fault injection: aborting at {name}");
        std::process::abort();
    }
}

/// Holds a call at the point `name` for a while, once per process, when
/// `NEREID_AGENT_DELAY=<name>:<milliseconds>` is set: crash tests use it to
/// keep a node call in flight while they break something else.
pub async fn delay(name: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static DONE: AtomicBool = AtomicBool::new(false);
    let Ok(spec) = std::env::var("NEREID_AGENT_DELAY") else {
        return;
    };
    let Some((point, ms)) = spec.rsplit_once(':') else {
        return;
    };
    if point == name
        && let Ok(ms) = ms.parse::<u64>()
        && !DONE.swap(true, Ordering::SeqCst)
    {
        eprintln!("fault injection: holding {name} for {ms} ms");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}
