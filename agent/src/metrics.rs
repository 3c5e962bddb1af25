//! The agent's Prometheus metrics: its gRPC calls (by method and status
//! code, with latencies), the host commands it runs (by program and verb,
//! with latencies and failures), and its instances by state. Served as text
//! on `--metrics-listen`.
//!
//! Counters live in one process-wide registry, so the command runner and
//! the gRPC layer record without a handle threaded through every driver. It
//! must never hold a label made of request data (ids, names, paths): labels
//! come from the code's own method names and command verbs, and the number
//! of label sets is capped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::codegen::http;

/// Histogram bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// At most this many label sets per family; later ones are folded into
/// `other` (a bug making labels from data cannot grow memory without end).
const MAX_SERIES: usize = 256;

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }
}

#[derive(Default)]
struct Families {
    /// (method, code) -> calls.
    rpcs: BTreeMap<(String, String), u64>,
    /// method -> latency.
    rpc_latency: BTreeMap<String, Histogram>,
    /// command -> latency.
    commands: BTreeMap<String, Histogram>,
    /// command -> failures (non-zero exit, timeout, could not start).
    command_failures: BTreeMap<String, u64>,
}

fn capped<'a, V: Default>(map: &'a mut BTreeMap<String, V>, key: &str) -> &'a mut V {
    if !map.contains_key(key) && map.len() >= MAX_SERIES {
        return map.entry("other".to_string()).or_default();
    }
    map.entry(key.to_string()).or_default()
}

static REGISTRY: LazyLock<Mutex<Families>> = LazyLock::new(Default::default);
static SCRAPES: AtomicU64 = AtomicU64::new(0);

fn registry() -> std::sync::MutexGuard<'static, Families> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records one host command: `program` and its verb (the first argument
/// that looks like one: `zfs clone`, `runc state`, `ip link`).
pub fn command_done(program: &str, args: &[&str], took: Duration, ok: bool) {
    let name = command_name(program, args);
    let mut r = registry();
    capped(&mut r.commands, &name).observe(took);
    if !ok {
        *capped(&mut r.command_failures, &name) += 1;
    }
}

/// `program verb`: the verb is the first argument made of lowercase letters
/// (options, their values, ids, paths and names never are).
fn command_name(program: &str, args: &[&str]) -> String {
    let program = program.rsplit('/').next().unwrap_or(program);
    let mut skip_next = false;
    for a in args {
        if skip_next {
            skip_next = false;
            continue;
        }
        if *a == "--root" || *a == "-n" || *a == "-o" || *a == "-t" {
            skip_next = true;
            continue;
        }
        if !a.is_empty() && a.len() <= 16 && a.bytes().all(|b| b.is_ascii_lowercase()) {
            return format!("{program} {a}");
        }
    }
    program.to_string()
}

fn rpc_done(method: &str, code: &str, took: Duration) {
    let mut r = registry();
    let key = (method.to_string(), code.to_string());
    if !r.rpcs.contains_key(&key) && r.rpcs.len() >= MAX_SERIES {
        *r.rpcs
            .entry(("other".into(), code.to_string()))
            .or_default() += 1;
    } else {
        *r.rpcs.entry(key).or_default() += 1;
    }
    capped(&mut r.rpc_latency, method).observe(took);
}

/// The gRPC status names, by code.
fn code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "Cancelled",
        "2" => "Unknown",
        "3" => "InvalidArgument",
        "4" => "DeadlineExceeded",
        "5" => "NotFound",
        "6" => "AlreadyExists",
        "7" => "PermissionDenied",
        "8" => "ResourceExhausted",
        "9" => "FailedPrecondition",
        "10" => "Aborted",
        "11" => "OutOfRange",
        "12" => "Unimplemented",
        "13" => "Internal",
        "14" => "Unavailable",
        "15" => "DataLoss",
        "16" => "Unauthenticated",
        _ => "Other",
    }
}

/// Renders every family; `instances` are the node's instances by state
/// (None when the node is not set up or cannot list them).
pub fn render(instances: Option<&BTreeMap<&'static str, u64>>) -> String {
    SCRAPES.fetch_add(1, Ordering::Relaxed);
    let r = registry();
    let mut out = String::new();
    out.push_str("# HELP nereid_agent_rpc_total gRPC calls answered, by method and status code.\n# TYPE nereid_agent_rpc_total counter\n");
    for ((m, c), n) in &r.rpcs {
        let _ = writeln!(
            out,
            "nereid_agent_rpc_total{{method=\"{m}\",code=\"{c}\"}} {n}"
        );
    }
    histograms(
        &mut out,
        "nereid_agent_rpc_duration_seconds",
        "How long gRPC calls took until their answer began.",
        "method",
        &r.rpc_latency,
    );
    histograms(
        &mut out,
        "nereid_agent_command_duration_seconds",
        "How long host commands (zfs, zpool, runc, ip, ...) took.",
        "command",
        &r.commands,
    );
    out.push_str("# HELP nereid_agent_command_failures_total Host commands that failed, timed out or could not start.\n# TYPE nereid_agent_command_failures_total counter\n");
    for (c, n) in &r.command_failures {
        let _ = writeln!(
            out,
            "nereid_agent_command_failures_total{{command=\"{c}\"}} {n}"
        );
    }
    drop(r);
    out.push_str(
        "# HELP nereid_agent_instances Instances on this node, by state.\n# TYPE nereid_agent_instances gauge\n",
    );
    if let Some(by_state) = instances {
        for (state, n) in by_state {
            let _ = writeln!(out, "nereid_agent_instances{{state=\"{state}\"}} {n}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP nereid_agent_instances_listed Whether the node could list its instances (0: not set up, or its pool cannot be seen).\n# TYPE nereid_agent_instances_listed gauge\nnereid_agent_instances_listed {}",
        u8::from(instances.is_some())
    );
    out
}

fn histograms(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    map: &BTreeMap<String, Histogram>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (l, h) in map {
        for (b, n) in BUCKETS.iter().zip(h.buckets.iter()) {
            let _ = writeln!(out, "{name}_bucket{{{label}=\"{l}\",le=\"{b}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{label}=\"{l}\",le=\"+Inf\"}} {}\n{name}_sum{{{label}=\"{l}\"}} {}\n{name}_count{{{label}=\"{l}\"}} {}",
            h.count, h.sum, h.count
        );
    }
}

/// A tower layer counting the gRPC calls of the service it wraps.
#[derive(Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // `/nereid.v1.Agent/EnsureInstance` -> `EnsureInstance`; anything
        // not ours is `other` (the path is the caller's data).
        let method = req
            .uri()
            .path()
            .strip_prefix("/nereid.v1.Agent/")
            .filter(|m| m.len() <= 40 && m.bytes().all(|b| b.is_ascii_alphabetic()))
            .unwrap_or("other")
            .to_string();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await;
            let code = match &resp {
                // An error answer carries its status in the headers
                // (trailers-only); a call that succeeded has it in the
                // trailers, which come later: no status header means OK.
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(code_name)
                    .unwrap_or("OK"),
                Err(_) => "Transport",
            };
            rpc_done(&method, code, started.elapsed());
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_named_by_program_and_verb_never_by_their_data() {
        assert_eq!(
            command_name("zfs", &["clone", "-o", "quota=1G", "a@b", "c"]),
            "zfs clone"
        );
        assert_eq!(
            command_name("runc", &["--root", "/var/lib/x", "state", "0b1c"]),
            "runc state"
        );
        assert_eq!(
            command_name("ip", &["-n", "nrd-abc", "link", "set", "lo", "up"]),
            "ip link"
        );
        assert_eq!(command_name("ip", &["-batch", "-"]), "ip");
        assert_eq!(
            command_name("/usr/sbin/zpool", &["list", "-H"]),
            "zpool list"
        );
        // An id made of letters only, longer than a verb, is not one.
        assert_eq!(
            command_name("zfs", &["-H", "abcdefghijklmnopqrstuvwxyz"]),
            "zfs"
        );
    }

    #[test]
    fn label_sets_are_capped() {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..(MAX_SERIES + 10) {
            *capped(&mut m, &format!("k{i}")) += 1;
        }
        assert_eq!(m.len(), MAX_SERIES + 1);
        assert_eq!(m["other"], 10);
    }

    #[test]
    fn a_histogram_counts_into_every_bucket_at_or_above_the_value() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(30));
        assert_eq!(h.buckets[..4], [0, 0, 0, 0]);
        assert!(h.buckets[4..].iter().all(|n| *n == 1));
        assert_eq!(h.count, 1);
    }
}
