//! The headnode's configuration: a TOML file, overridden by `NEREID_*`
//! environment variables, overridden by command-line flags.
//!
//! Owns parsing and defaults only; it must never open sockets or files other
//! than the config file itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

#[derive(Debug, Clone, Parser, Default)]
#[command(
    name = "nereid-headnode",
    version,
    about = "Nereid headnode: REST API, datastore and agent registry"
)]
pub struct Flags {
    /// A TOML config file; flags and environment variables override its values.
    #[arg(long, env = "NEREID_CONFIG")]
    pub config: Option<PathBuf>,
    /// PostgreSQL URL, e.g. postgres://nereid@127.0.0.1:5432/nereid
    #[arg(long, env = "NEREID_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Address of the REST API (port 0 picks a free port).
    #[arg(long, env = "NEREID_REST_LISTEN")]
    pub rest_listen: Option<SocketAddr>,
    /// Address of the agents' gRPC API (port 0 picks a free port).
    #[arg(long, env = "NEREID_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// Where the headnode keeps its files (the first operator token, the run file).
    #[arg(long, env = "NEREID_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How often agents send heartbeats, in milliseconds.
    #[arg(long, env = "NEREID_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "NEREID_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Serve the REST API over TLS with this certificate chain (PEM); needs
    /// `--rest-tls-key`.
    #[arg(long, env = "NEREID_REST_TLS_CERT")]
    pub rest_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--rest-tls-cert`.
    #[arg(long, env = "NEREID_REST_TLS_KEY")]
    pub rest_tls_key: Option<PathBuf>,
    /// Where the CA's key and certificate are kept (default `<state-dir>/pki`);
    /// headnodes of one datacenter share it.
    #[arg(long, env = "NEREID_PKI_DIR")]
    pub pki_dir: Option<PathBuf>,
    /// How long a node's certificate is valid, in seconds (default one
    /// year); an expired one is refused, and its server shown `unknown`
    /// with the reason until it is rotated or the node re-joins.
    #[arg(long, env = "NEREID_NODE_CERT_LIFETIME_SECS")]
    pub node_cert_lifetime_secs: Option<u64>,
    /// The network (by name) fabric gateways NAT out to: each node running
    /// instances of a fabric network with `internet_nat` takes an address of it.
    #[arg(long, env = "NEREID_FABRIC_NAT_NETWORK")]
    pub fabric_nat_network: Option<String>,
    /// How long a claimed job stays this headnode's without renewal, in ms;
    /// a dead headnode's jobs are taken over after it.
    #[arg(long, env = "NEREID_JOB_LEASE_MS")]
    pub job_lease_ms: Option<u64>,
    /// How many jobs this headnode works on at once.
    #[arg(long, env = "NEREID_JOB_WORKERS")]
    pub job_workers: Option<usize>,
    /// How often the reconciler compares each node's instances with the database, in ms.
    #[arg(long, env = "NEREID_RECONCILE_INTERVAL_MS")]
    pub reconcile_interval_ms: Option<u64>,
    /// How long finished jobs and deleted instances are kept, in hours
    /// (default 720: 30 days).
    #[arg(long, env = "NEREID_HISTORY_RETENTION_HOURS")]
    pub history_retention_hours: Option<f64>,
    /// How often the history past its retention is deleted, in ms
    /// (default 600000: 10 minutes).
    #[arg(long, env = "NEREID_RETENTION_INTERVAL_MS")]
    pub retention_interval_ms: Option<u64>,
    /// A default quota, KIND=LIMIT (instances, memory_mb, disk_mb, vcpus,
    /// images, image_bytes), for accounts that set none; repeatable, over
    /// the config file's [default_quotas].
    #[arg(long = "default-quota", value_parser = parse_quota)]
    pub default_quotas: Vec<(nereid_api::QuotaKind, u64)>,
    /// The largest image file an upload may send, in bytes.
    #[arg(long, env = "NEREID_MAX_IMAGE_BYTES")]
    pub max_image_bytes: Option<u64>,
    /// How much an image that declares no unpacked size may unpack to on a
    /// node, in bytes.
    #[arg(long, env = "NEREID_MAX_UNPACKED_IMAGE_BYTES")]
    pub max_unpacked_image_bytes: Option<u64>,
    /// Requests per second one API token may make (over [limits]).
    #[arg(long, env = "NEREID_REQUESTS_PER_TOKEN")]
    pub requests_per_token: Option<f64>,
    /// Failed authentications per second one address may make (over [limits]).
    #[arg(long, env = "NEREID_AUTH_FAILURES_PER_ADDRESS")]
    pub auth_failures_per_address: Option<f64>,
}

fn parse_quota(s: &str) -> Result<(nereid_api::QuotaKind, u64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KIND=LIMIT"))?;
    let kind: nereid_api::QuotaKind = k.trim().parse()?;
    let limit: u64 = v
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a number"))?;
    if limit > kind.largest() {
        return Err(format!("{kind} may be at most {}", kind.largest()));
    }
    Ok((kind, limit))
}

/// The file form; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    rest_listen: Option<SocketAddr>,
    grpc_listen: Option<SocketAddr>,
    state_dir: Option<PathBuf>,
    heartbeat_interval_ms: Option<u64>,
    missed_heartbeats: Option<u32>,
    max_body_bytes: Option<usize>,
    max_image_bytes: Option<u64>,
    image_store: Option<PathBuf>,
    log_format: Option<String>,
    pki_dir: Option<PathBuf>,
    node_cert_lifetime_secs: Option<u64>,
    fabric_nat_network: Option<String>,
    rest_tls_cert: Option<PathBuf>,
    rest_tls_key: Option<PathBuf>,
    job_lease_ms: Option<u64>,
    job_workers: Option<usize>,
    reconcile_interval_ms: Option<u64>,
    history_retention_hours: Option<f64>,
    retention_interval_ms: Option<u64>,
    max_unpacked_image_bytes: Option<u64>,
    default_quotas: Option<nereid_api::QuotaValues>,
    limits: Option<Limits>,
}

/// Limits on the REST API and the database (the `[limits]` table).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Requests per second one API token may make (twice that at once); 0: no limit.
    pub requests_per_token: f64,
    /// Failed authentications per second one client address may make (20
    /// at once); past it, its unknown tokens are refused without a lookup.
    pub auth_failures_per_address: f64,
    /// A REST request (except image file transfers) gets this long.
    pub request_timeout_ms: u64,
    /// REST requests served at once; more wait.
    pub max_concurrent_requests: usize,
    /// gRPC calls served at once per agent connection.
    pub max_concurrent_grpc_per_connection: usize,
    /// Connections of the REST API's, the job workers' and the agents'
    /// (registry) database pools: one cannot starve another.
    pub db_api_connections: u32,
    pub db_jobs_connections: u32,
    pub db_registry_connections: u32,
    /// `/metrics` only with an operator's token.
    pub metrics_need_token: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            requests_per_token: 1000.0,
            auth_failures_per_address: 1.0,
            request_timeout_ms: 30_000,
            max_concurrent_requests: 512,
            max_concurrent_grpc_per_connection: 256,
            db_api_connections: 24,
            db_jobs_connections: 20,
            db_registry_connections: 8,
            metrics_need_token: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub rest_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub state_dir: PathBuf,
    pub heartbeat_interval: Duration,
    /// This many missed intervals turn a server `unknown`.
    pub missed_heartbeats: u32,
    /// The largest JSON body a route accepts.
    pub max_body_bytes: usize,
    /// The largest image file an upload may send.
    pub max_image_bytes: u64,
    /// How much an image that declares no unpacked size may unpack to.
    pub max_unpacked_image_bytes: u64,
    /// The quotas of accounts that set none of their own.
    pub default_quotas: nereid_api::QuotaValues,
    pub limits: Limits,
    /// Where image files are stored (default: `<state_dir>/images`).
    pub image_store: PathBuf,
    pub log_format: LogFormat,
    /// The CA's key and certificate (default `<state_dir>/pki`).
    pub pki_dir: PathBuf,
    /// How long the certificates issued to nodes are valid.
    pub node_cert_lifetime: Duration,
    /// The network fabric gateways NAT out to, by name.
    pub fabric_nat_network: Option<String>,
    /// The REST API's certificate chain and key files (PEM), when it serves TLS.
    pub rest_tls: Option<(PathBuf, PathBuf)>,
    pub job_lease: Duration,
    pub job_workers: usize,
    pub reconcile_interval: Duration,
    /// How long finished jobs and deleted instances are kept.
    pub history_retention: Duration,
    /// How often what is past the retention is deleted.
    pub retention_interval: Duration,
}

/// The quotas of an account nobody set any for: generous for one tenant
/// of a small cloud, but bounded.
pub const DEFAULT_QUOTAS: nereid_api::QuotaValues = nereid_api::QuotaValues {
    instances: Some(1000),
    memory_mb: Some(1 << 20),
    disk_mb: Some(10 << 20),
    vcpus: Some(1024),
    images: Some(100),
    image_bytes: Some(100 << 30),
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let database_url = flags
            .database_url
            .clone()
            .or(file.database_url)
            .ok_or_else(|| ConfigError::Invalid("database_url is required (--database-url, NEREID_DATABASE_URL or the config file)".into()))?;
        let heartbeat_ms = flags
            .heartbeat_interval_ms
            .or(file.heartbeat_interval_ms)
            .unwrap_or(5000);
        if !(100..=600_000).contains(&heartbeat_ms) {
            return Err(ConfigError::Invalid(format!(
                "heartbeat_interval_ms must be within 100..=600000, got {heartbeat_ms}"
            )));
        }
        let log_format = match flags.log_format.clone().or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "log_format must be text or json, got {other:?}"
                )));
            }
        };
        let state_dir = flags
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/nereid/headnode"));
        let job_lease_ms = flags.job_lease_ms.or(file.job_lease_ms).unwrap_or(15_000);
        if !(500..=600_000).contains(&job_lease_ms) {
            return Err(ConfigError::Invalid(format!(
                "job_lease_ms must be within 500..=600000, got {job_lease_ms}"
            )));
        }
        let job_workers = flags.job_workers.or(file.job_workers).unwrap_or(32);
        if !(1..=1024).contains(&job_workers) {
            return Err(ConfigError::Invalid(format!(
                "job_workers must be within 1..=1024, got {job_workers}"
            )));
        }
        let reconcile_ms = flags
            .reconcile_interval_ms
            .or(file.reconcile_interval_ms)
            .unwrap_or(10_000)
            .max(100);
        let retention_hours = flags
            .history_retention_hours
            .or(file.history_retention_hours)
            .unwrap_or(720.0);
        if !(retention_hours.is_finite() && (0.001..=1e6).contains(&retention_hours)) {
            return Err(ConfigError::Invalid(format!(
                "history_retention_hours must be within 0.001..=1000000, got {retention_hours}"
            )));
        }
        let retention_interval_ms = flags
            .retention_interval_ms
            .or(file.retention_interval_ms)
            .unwrap_or(600_000)
            .max(100);
        let mut default_quotas = file.default_quotas.unwrap_or(DEFAULT_QUOTAS);
        for (kind, limit) in &flags.default_quotas {
            default_quotas.set(*kind, Some(*limit));
        }
        for k in nereid_api::QuotaKind::ALL {
            if default_quotas.get(*k).is_some_and(|v| v > k.largest()) {
                return Err(ConfigError::Invalid(format!(
                    "default_quotas.{k} may be at most {}",
                    k.largest()
                )));
            }
        }
        let mut limits = file.limits.unwrap_or_default();
        if let Some(r) = flags.requests_per_token {
            limits.requests_per_token = r;
        }
        if let Some(r) = flags.auth_failures_per_address {
            limits.auth_failures_per_address = r;
        }
        if limits.requests_per_token < 0.0 || limits.auth_failures_per_address < 0.0 {
            return Err(ConfigError::Invalid(
                "rate limits may not be negative".into(),
            ));
        }
        if limits.db_api_connections == 0
            || limits.db_jobs_connections == 0
            || limits.db_registry_connections == 0
            || limits.max_concurrent_requests == 0
        {
            return Err(ConfigError::Invalid(
                "connection and concurrency limits must be at least 1".into(),
            ));
        }
        let rest_tls = match (
            flags.rest_tls_cert.clone().or(file.rest_tls_cert),
            flags.rest_tls_key.clone().or(file.rest_tls_key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "rest_tls_cert and rest_tls_key go together".into(),
                ));
            }
        };
        let node_cert_lifetime_secs = flags
            .node_cert_lifetime_secs
            .or(file.node_cert_lifetime_secs)
            .unwrap_or(365 * 86_400);
        if !(1..=10 * 365 * 86_400).contains(&node_cert_lifetime_secs) {
            return Err(ConfigError::Invalid(
                "node_cert_lifetime_secs must be within 1..=315360000 (ten years)".into(),
            ));
        }
        Ok(Config {
            rest_tls,
            limits,
            default_quotas,
            max_unpacked_image_bytes: flags
                .max_unpacked_image_bytes
                .or(file.max_unpacked_image_bytes)
                .unwrap_or(16 << 30),
            pki_dir: flags
                .pki_dir
                .clone()
                .or(file.pki_dir)
                .unwrap_or_else(|| state_dir.join("pki")),
            node_cert_lifetime: Duration::from_secs(node_cert_lifetime_secs),
            fabric_nat_network: flags.fabric_nat_network.clone().or(file.fabric_nat_network),
            job_lease: Duration::from_millis(job_lease_ms),
            job_workers,
            reconcile_interval: Duration::from_millis(reconcile_ms),
            history_retention: Duration::from_secs_f64(retention_hours * 3600.0),
            retention_interval: Duration::from_millis(retention_interval_ms),
            image_store: file.image_store.unwrap_or_else(|| state_dir.join("images")),
            max_image_bytes: flags
                .max_image_bytes
                .or(file.max_image_bytes)
                .unwrap_or(64 << 30),
            database_url,
            rest_listen: flags
                .rest_listen
                .or(file.rest_listen)
                .unwrap_or_else(|| "127.0.0.1:8440".parse().unwrap()),
            grpc_listen: flags
                .grpc_listen
                .or(file.grpc_listen)
                .unwrap_or_else(|| "0.0.0.0:8441".parse().unwrap()),
            state_dir,
            heartbeat_interval: Duration::from_millis(heartbeat_ms),
            missed_heartbeats: file.missed_heartbeats.unwrap_or(3).max(1),
            max_body_bytes: file.max_body_bytes.unwrap_or(1024 * 1024),
            log_format,
        })
    }

    /// How old the last heartbeat may be before the server is `unknown`.
    pub fn heartbeat_deadline(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile_dir();
        let path = dir.join("headnode.toml");
        std::fs::write(&path, "database_url = \"postgres://file\"\nrest_listen = \"127.0.0.1:9000\"\nheartbeat_interval_ms = 2000\n").unwrap();
        let flags = Flags {
            config: Some(path),
            rest_listen: Some("127.0.0.1:9001".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::load(&flags).unwrap();
        assert_eq!(c.database_url, "postgres://file");
        assert_eq!(c.rest_listen.port(), 9001);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.heartbeat_deadline(), Duration::from_secs(6));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile_dir();
        let path = dir.join("bad.toml");
        std::fs::write(
            &path,
            "database_url = \"x\"\nrest_listn = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let err = Config::load(&Flags {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn default_quotas_come_from_the_file_then_the_flags() {
        let dir = tempfile_dir();
        let path = dir.join("q.toml");
        std::fs::write(
            &path,
            "database_url = \"x\"\n[default_quotas]\ninstances = 5\nmemory_mb = 2048\n",
        )
        .unwrap();
        let c = Config::load(&Flags {
            config: Some(path),
            default_quotas: vec![parse_quota("memory_mb=1024").unwrap()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.default_quotas.instances, Some(5));
        assert_eq!(c.default_quotas.memory_mb, Some(1024));
        assert_eq!(
            c.default_quotas.disk_mb, None,
            "the file's table replaces the built-in defaults"
        );
        assert!(parse_quota("instances=-1").is_err());
        assert!(parse_quota("bogus=1").unwrap_err().contains("instances"));
        assert!(
            parse_quota("instances=99999999999")
                .unwrap_err()
                .contains("at most")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_database_url_is_a_clear_error() {
        let err = Config::load(&Flags::default()).unwrap_err();
        assert!(err.to_string().contains("database_url is required"));
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("nereid-config-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
