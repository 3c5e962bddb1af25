//! nereid-agent: runs on every compute node and makes the node's real state
//! match what the headnode wants. Its identity and setup live in its state
//! dir, so a restarted agent is the same server.

pub mod certs;
pub mod cmd;
pub mod config;
pub mod export;
pub mod fault;
pub mod identity;
pub mod idmap;
pub mod images;
pub mod metadata;
pub mod metrics;
pub mod net;
pub mod registration;
pub mod runtime;
pub mod service;
pub mod spec;
pub mod storage;
pub mod sysinfo;
pub mod unpack;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::config::Flags;
use crate::identity::Identity;

pub const IDENTITY_FILE: &str = "identity.json";
pub const SETUP_FILE: &str = "setup.json";
/// Where a running agent writes its addresses and pid.
pub const RUN_FILE: &str = "agent.json";

pub async fn run(flags: Flags) -> anyhow::Result<()> {
    std::fs::create_dir_all(&flags.state_dir)
        .with_context(|| format!("creating {}", flags.state_dir.display()))?;
    idmap::check_host(&flags.uid_range).map_err(anyhow::Error::msg)?;
    std::fs::set_permissions(&flags.state_dir, std::fs::Permissions::from_mode(0o700))?;
    let overrides = sysinfo::Overrides {
        machine_id: flags.machine_id.clone(),
        hostname: flags.hostname.clone(),
        memory_mb: flags.memory_mb,
    };

    let listener = tokio::net::TcpListener::bind(flags.listen)
        .await
        .with_context(|| format!("binding the agent's gRPC service to {}", flags.listen))?;
    let bound = listener.local_addr()?;
    let address = match (flags.advertise, bound.ip().is_unspecified()) {
        (Some(ip), _) => SocketAddr::new(ip, bound.port()),
        (None, false) => bound,
        (None, true) => bail!("--advertise is required when listening on {bound}: the headnode needs an address to reach this agent"),
    }
    .to_string();

    let identity_path = flags.state_dir.join(IDENTITY_FILE);
    let (identity, certs, interval_ms) = match identity::load::<Identity>(&identity_path)? {
        Some(id) => {
            let Some(certs) = certs::NodeCerts::load(&flags.state_dir)? else {
                bail!(
                    "{} exists but {} does not: this node joined without a certificate (before mutual TLS) or lost it; delete server {} (`nereid server delete`), remove {} and join again with a new token",
                    identity_path.display(),
                    flags.state_dir.join(certs::NODE_FILE).display(),
                    id.server_id,
                    identity_path.display()
                );
            };
            tracing::info!(server = %id.server_id, "using the identity in {}", identity_path.display());
            (id, certs, 5000)
        }
        None => {
            let token = match (&flags.join_token, &flags.join_token_file) {
                (Some(t), _) => t.clone(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .with_context(|| format!("reading the join token from {}", f.display()))?,
                (None, None) => bail!(
                    "this node has not joined yet ({} does not exist): start it with --join-token from `nereid server join-token create`",
                    identity_path.display()
                ),
            };
            let info = sysinfo::collect(&overrides).await;
            let (id, certs, interval) = registration::join(
                &flags.headnode,
                &token,
                info,
                address.clone(),
                &flags.state_dir,
            )
            .await?;
            identity::save(&identity_path, &id)?;
            tracing::info!(server = %id.server_id, "joined the headnode; identity saved in {}", identity_path.display());
            (id, certs, interval)
        }
    };

    net::antispoof::init(&flags.nft_table)
        .await
        .with_context(|| format!("making the nftables table bridge {}", flags.nft_table))?;
    let firewall = Arc::new(net::firewall::Firewall::new(
        &flags.nft_table,
        &flags.state_dir,
    ));
    if let Err(e) = firewall.restore().await {
        tracing::error!("restoring the node's firewall: {}", error_chain(&e));
    }
    net::overlay::init(&flags.state_dir)
        .await
        .context("reading the kept overlay set")?;
    net::nat::init(&flags.state_dir)
        .await
        .context("making the directory of the fabric NATs")?;
    let certs = Arc::new(certs);
    certs
        .connect(&identity.headnode)
        .map_err(anyhow::Error::msg)?;
    let node = std::sync::Arc::new(std::sync::RwLock::new(None));
    if let Some(setup) = identity::load::<identity::Setup>(&flags.state_dir.join(SETUP_FILE))? {
        let runtime =
            service::NodeRuntime::start(&setup, &flags.state_dir, certs.clone(), flags.uid_range);
        match runtime.instances.list().await {
            Ok(list) => {
                runtime.instances.serve_metadata(&list);
                let specs: Vec<_> = list.iter().map(|i| &i.spec).collect();
                if let Err(e) = net::protect_instances(&specs).await {
                    tracing::warn!("re-asserting the anti-spoofing rules: {e}");
                }
                tracing::info!(zpool = %setup.zpool, instances = list.len(), "recovered the node's instances from ZFS, runc and QEMU")
            }
            Err(e) => tracing::warn!("cannot list instances yet: {}", error_chain(&e)),
        }
        let parent = format!("{}/instances", setup.zpool);
        match runtime.exporter.sweep(&parent).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed what interrupted image exports left"),
            Err(e) => tracing::warn!("sweeping interrupted image exports: {}", error_chain(&e)),
        }
        *node.write().expect("node lock") = Some(runtime);
    }
    let node_for_metrics = node.clone();
    let svc = service::AgentService {
        state_dir: flags.state_dir.clone(),
        overrides: overrides.clone(),
        certs: certs.clone(),
        ids: flags.uid_range,
        node,
        firewall,
    };
    let server = nereid_proto::v1::agent_server::AgentServer::new(svc);
    let metrics_addr = match flags.metrics_listen {
        Some(at) => Some(serve_metrics(at, node_for_metrics).await?),
        None => None,
    };
    write_run_file(&flags.state_dir, &address, metrics_addr)?;
    // Only headnodes of the CA get through the handshake.
    let incoming = nereid_tls::incoming(listener, certs.server_config());
    tracing::info!(%address, "agent listening");
    let heartbeats = tokio::spawn(registration::heartbeat_loop(
        identity,
        certs,
        address,
        overrides,
        interval_ms,
    ));
    // Node work (a pull, a VM's boot) can take minutes; a burst of
    // provisions arrives over the one connection of a headnode.
    let serve = tonic::transport::Server::builder()
        .timeout(std::time::Duration::from_secs(900))
        .concurrency_limit_per_connection(512)
        .layer(metrics::RpcMetricsLayer)
        .add_service(server)
        .serve_with_incoming_shutdown(incoming, shutdown());
    serve.await.context("the agent's gRPC service failed")?;
    heartbeats.abort();
    tracing::info!("agent stopped");
    Ok(())
}

/// Serves `GET /metrics` on `at`; returns the bound address.
async fn serve_metrics(
    at: SocketAddr,
    node: Arc<std::sync::RwLock<Option<service::NodeRuntime>>>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .with_context(|| format!("binding the agent's metrics to {at}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let node = node.clone();
            async move {
                let by_state = instances_by_state(&node).await;
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    metrics::render(by_state.as_ref()),
                )
            }
        }),
    );
    tracing::info!(%bound, "metrics listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("the metrics listener failed: {e}");
        }
    });
    Ok(bound)
}

/// The node's instances counted by state; None when it is not set up or
/// cannot list them within 10 s.
async fn instances_by_state(
    node: &std::sync::RwLock<Option<service::NodeRuntime>>,
) -> Option<std::collections::BTreeMap<&'static str, u64>> {
    let instances = node.read().expect("node lock").as_ref()?.instances.clone();
    let list = tokio::time::timeout(std::time::Duration::from_secs(10), instances.list())
        .await
        .ok()?
        .ok()?;
    let mut by_state: std::collections::BTreeMap<&'static str, u64> =
        ["running", "stopped", "failed"].map(|s| (s, 0)).into();
    for inst in list {
        *by_state.entry(inst.state.as_str()).or_default() += 1;
    }
    Some(by_state)
}

fn write_run_file(
    state_dir: &std::path::Path,
    grpc: &str,
    metrics: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "grpc": grpc,
        "metrics": metrics.map(|m| m.to_string()),
        "pid": std::process::id(),
    });
    let path = state_dir.join(RUN_FILE);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
