//! Fault injection for crash tests: `NEREID_HEADNODE_FAULT=<point>` kills
//! the headnode with SIGKILL when it reaches that point. Unset in
//! production; it must never do anything else.

/// Kills the headnode here when `NEREID_HEADNODE_FAULT` names `point`.
pub fn point(point: &str) {
    if std::env::var("NEREID_HEADNODE_FAULT").is_ok_and(|f| f == point) {
        eprintln!("fault injection: SIGKILL at {point}");
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}
