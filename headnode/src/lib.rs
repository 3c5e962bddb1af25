//! nereid-headnode: the control plane. Keeps the desired state of the
//! datacenter in PostgreSQL, serves the REST API to people and tools and the
//! gRPC registry to agents, and calls agents to act on nodes.

pub mod agent_client;
pub mod audit;
pub mod authz;
pub mod certificates;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod fault;
pub mod firewall;
pub mod fwrule;
pub mod grpc;
pub mod heartbeats;
pub mod http;
pub mod images;
pub mod imagestore;
pub mod instances;
pub mod ipam;
pub mod jobs;
pub mod metadata;
pub mod metrics;
pub mod openapi;
pub mod overlay;
pub mod pki;
pub mod ratelimit;
pub mod reconciler;
pub mod retention;
pub mod scheduler;
pub mod secrets;
pub mod setup;
pub mod snapshots;
pub mod sshkey;
pub mod validate;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;

/// What every handler and service shares.
#[derive(Clone)]
pub struct AppState {
    pub db: db::Datastore,
    pub config: Arc<Config>,
    pub metrics: Arc<metrics::Metrics>,
    pub agents: agent_client::AgentPool,
    pub images: imagestore::ImageStore,
    pub jobs: jobs::Runner,
    /// The CA and this headnode's certificate.
    pub pki: Arc<pki::Pki>,
    pub limits: Arc<ApiLimits>,
    /// Writes the audit entries of failed requests.
    pub audit: audit::FailureLog,
    /// The change feed's fan-out to this headnode's SSE clients.
    pub events: events::Feed,
}

/// The REST API's rate limits, in memory.
pub struct ApiLimits {
    /// Calls per token (by its hash).
    pub per_token: ratelimit::Limiter<[u8; 32]>,
    /// Failed authentications per client address.
    pub bad_auth: ratelimit::Limiter<std::net::IpAddr>,
    /// Hashes of tokens that authenticated lately: from an address over its
    /// failure limit, only these are still looked up.
    pub known_good: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
    /// When the database last answered /healthz.
    pub health_ok: std::sync::Mutex<Option<std::time::Instant>>,
}

impl ApiLimits {
    pub fn new(l: &config::Limits) -> ApiLimits {
        ApiLimits {
            per_token: ratelimit::Limiter::new(
                l.requests_per_token,
                l.requests_per_token * 2.0,
                100_000,
            ),
            bad_auth: ratelimit::Limiter::new(l.auth_failures_per_address, 20.0, 100_000),
            known_good: Default::default(),
            health_ok: Default::default(),
        }
    }
}

/// The file in the state dir holding the first operator's token (mode 0600).
pub const OPERATOR_TOKEN_FILE: &str = "operator-token";
/// The file in the state dir where a running headnode writes its addresses.
pub const RUN_FILE: &str = "headnode.json";

/// Runs the headnode until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state dir {}", config.state_dir.display()))?;
    std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", config.state_dir.display()))?;

    let db = db::Datastore::connect(
        &config.database_url,
        config.heartbeat_deadline(),
        Duration::from_secs(30),
        config.limits.db_api_connections,
    )
    .await?
    .with_default_quotas(config.default_quotas);
    // The job workers (and the reconciler) and the agents' registry get
    // pools of their own: a flood of API calls cannot starve them.
    let jobs_db = db.with_pool(config.limits.db_jobs_connections).await?;
    let registry_db = db.with_pool(config.limits.db_registry_connections).await?;
    let token_path = config.state_dir.join(OPERATOR_TOKEN_FILE);
    if db
        .bootstrap_first_operator(|secret| write_secret_file(&token_path, secret))
        .await?
    {
        tracing::info!(path = %token_path.display(), "created the first operator account 'admin'; its token is in this file (root only)");
    }

    let images = imagestore::ImageStore::open(&config.image_store)
        .with_context(|| format!("opening the image store {}", config.image_store.display()))?;
    sweep_image_store(&db, &images).await?;

    let rest = tokio::net::TcpListener::bind(config.rest_listen)
        .await
        .with_context(|| format!("binding the REST API to {}", config.rest_listen))?;
    let grpc = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("binding the gRPC API to {}", config.grpc_listen))?;
    let rest_addr = rest.local_addr()?;
    let grpc_addr = grpc.local_addr()?;
    let pki = Arc::new(
        pki::Pki::load(&config.pki_dir, config.node_cert_lifetime)
            .with_context(|| format!("loading the CA from {}", config.pki_dir.display()))?,
    );
    let recorded = db.datacenter_ca(&pki.ca_fingerprint()).await?;
    if recorded != pki.ca_fingerprint() {
        anyhow::bail!(
            "this database belongs to a datacenter whose CA has sha256 {recorded}, but the pki dir {} holds a CA with sha256 {}: start every headnode of a datacenter with the same --pki-dir",
            config.pki_dir.display(),
            pki.ca_fingerprint()
        );
    }
    tracing::info!(ca_sha256 = %pki.ca_fingerprint(), "mutual TLS with agents");
    let metrics = Arc::new(metrics::Metrics::default());
    let state = AppState {
        audit: audit::FailureLog::start(jobs_db.pool().clone(), metrics.clone()),
        images,
        db,
        config: Arc::new(config.clone()),
        metrics,
        agents: agent_client::AgentPool::new(pki.client_config()),
        jobs: jobs::Runner::new(),
        pki: pki.clone(),
        limits: Arc::new(ApiLimits::new(&config.limits)),
        events: events::Feed::new(),
    };
    let jobs_state = AppState {
        db: jobs_db,
        ..state.clone()
    };
    tokio::spawn(state.jobs.clone().run(jobs_state.clone()));
    tokio::spawn(state.events.clone().pump(jobs_state.db.pool().clone()));
    tokio::spawn(retention::run(jobs_state.clone()));
    tokio::spawn(reconciler::run(jobs_state));
    write_run_file(
        &config.state_dir.join(RUN_FILE),
        rest_addr,
        config.rest_tls.is_some(),
        grpc_addr,
    )?;
    tracing::info!(%rest_addr, %grpc_addr, "headnode listening");

    let shutdown = shutdown_signal();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let rest_task = {
        let mut rx = stop_rx.clone();
        let app = http::router(state.clone())
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        let stop = async move {
            let _ = rx.changed().await;
        };
        match &config.rest_tls {
            None => {
                tokio::spawn(
                    async move { axum::serve(rest, app).with_graceful_shutdown(stop).await },
                )
            }
            Some((cert, key)) => {
                use axum::serve::ListenerExt;
                // (tap_io: the peer's address as connect info, as for TCP.)
                let certificate = http::tls::RestCertificate::load(cert, key)?;
                let tls = http::tls::TlsListener::new(rest, &certificate)?.tap_io(|_| ());
                certificate.reload_on_sighup()?;
                tracing::info!(cert = %cert.display(), "the REST API serves TLS (SIGHUP reloads it)");
                tokio::spawn(
                    async move { axum::serve(tls, app).with_graceful_shutdown(stop).await },
                )
            }
        }
    };
    let grpc_task = {
        let mut rx = stop_rx.clone();
        let svc = nereid_proto::v1::registry_server::RegistryServer::new(
            grpc::RegistryService::new(AppState {
                db: registry_db,
                ..state.clone()
            }),
        );
        let incoming = nereid_tls::incoming(grpc, pki.server_config());
        let per_conn = config.limits.max_concurrent_grpc_per_connection;
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .timeout(Duration::from_secs(30))
                .concurrency_limit_per_connection(per_conn)
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.changed().await;
                })
                .await
        })
    };
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = rest_task.await;
        let _ = grpc_task.await;
    })
    .await;
    let _ = std::fs::remove_file(config.state_dir.join(RUN_FILE));
    Ok(())
}

/// Removes stored files that no image_files row knows (a crash between
/// storing a file and committing its row).
async fn sweep_image_store(
    db: &db::Datastore,
    images: &imagestore::ImageStore,
) -> anyhow::Result<()> {
    let known: std::collections::HashSet<String> =
        db.image_file_hashes().await?.into_iter().collect();
    for sha in images.list() {
        if !known.contains(&sha) && sha.len() == 64 {
            db.image_file_collect(&sha, || images.remove(&sha)).await?;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Writes a secret to a file only root can read, atomically (temp + rename).
fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    nereid_tls::pki::write_atomic(path, format!("{secret}\n").as_bytes(), 0o600)
}

fn write_run_file(
    path: &Path,
    rest: SocketAddr,
    rest_tls: bool,
    grpc: SocketAddr,
) -> anyhow::Result<()> {
    let body = serde_json::json!({ "rest": rest.to_string(), "rest_tls": rest_tls,
        "grpc": grpc.to_string(), "pid": std::process::id() });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
