//! Prometheus metrics of the headnode, rendered in the text format. Counters
//! live here; gauges that the database knows (servers by status) are read at
//! scrape time.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    http_by_class: [AtomicU64; 6],
    pub registrations: AtomicU64,
    pub registrations_refused: AtomicU64,
    pub heartbeats: AtomicU64,
    pub heartbeats_refused: AtomicU64,
    pub audit_failures_dropped: AtomicU64,
    /// The reconciler's last pass over every node, in µs (0: none yet).
    pub reconcile_last_pass_us: AtomicU64,
    pub reconcile_passes: AtomicU64,
}

impl Metrics {
    pub fn http_request(&self, status: u16) {
        let class = (status / 100).min(5) as usize;
        self.http_by_class[class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, servers_by_status: &[(String, i64)]) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP nereid_http_requests_total REST requests answered, by status class.\n",
        );
        out.push_str("# TYPE nereid_http_requests_total counter\n");
        for (class, c) in self.http_by_class.iter().enumerate().skip(1) {
            let _ = writeln!(
                out,
                "nereid_http_requests_total{{class=\"{class}xx\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        for (name, help, v) in [
            (
                "nereid_agent_registrations_total",
                "Nodes registered.",
                &self.registrations,
            ),
            (
                "nereid_agent_registrations_refused_total",
                "Registrations refused.",
                &self.registrations_refused,
            ),
            (
                "nereid_agent_heartbeats_total",
                "Heartbeats accepted.",
                &self.heartbeats,
            ),
            (
                "nereid_agent_heartbeats_refused_total",
                "Heartbeats refused (unknown server or not its certificate).",
                &self.heartbeats_refused,
            ),
            (
                "nereid_audit_failures_dropped_total",
                "Failed requests not written to the audit log because its queue was full.",
                &self.audit_failures_dropped,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP nereid_reconcile_passes_total Reconciler passes over every node.\n# TYPE nereid_reconcile_passes_total counter\nnereid_reconcile_passes_total {}",
            self.reconcile_passes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP nereid_reconcile_last_pass_seconds How long the reconciler's last pass took.\n# TYPE nereid_reconcile_last_pass_seconds gauge\nnereid_reconcile_last_pass_seconds {:.6}",
            self.reconcile_last_pass_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        out.push_str("# HELP nereid_servers Servers by status.\n# TYPE nereid_servers gauge\n");
        for (status, n) in servers_by_status {
            let _ = writeln!(out, "nereid_servers{{status=\"{status}\"}} {n}");
        }
        out
    }
}
