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
