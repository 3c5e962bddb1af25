//! Simulated agents: one gRPC Agent service in this process answers for
//! every simulated node, over mutual TLS as a real agent does (its
//! certificate, issued by the headnode's CA, names `*.node.nereid`; the name
//! the headnode asks for says which node is called), and one task per node
//! sends the real Registry heartbeats, spread over the interval. What a node "runs" is kept in memory, loaded from the database
//! after seeding and changed by the calls, so ListInstances agrees with the
//! database as a real node's would. Instance calls answer after a latency
//! drawn around the floor measured on real nodes.
//!
//! It must never be linked into the agent: it is a test tool.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::Stream;
use nereid_proto::v1 as pb;
use nereid_proto::v1::agent_server::{Agent, AgentServer};
use tonic::{Request, Response, Status};

/// How long a simulated node takes, as the mean of a uniform draw in
/// [mean/2, 3*mean/2].
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub ensure_instance: Duration,
    pub action: Duration,
}

impl Default for Latency {
    /// The floor measured on this machine's real nodes (EnsureInstance of a
    /// busybox container ~150 ms, start/stop/delete tens of ms).
    fn default() -> Self {
        Latency {
            ensure_instance: Duration::from_millis(150),
            action: Duration::from_millis(30),
        }
    }
}

#[derive(Debug, Clone)]
struct Inst {
    server: String,
    generation: u64,
    metadata_generation: u64,
    running: bool,
}

#[derive(Default)]
struct Nodes {
    instances: HashMap<String, Inst>,
    on_server: HashMap<String, HashSet<String>>,
}

/// The shared state of every simulated node.
#[derive(Default)]
pub struct Sim {
    /// The simulated nodes' server ids.
    servers: RwLock<HashSet<String>>,
    nodes: Mutex<Nodes>,
    latency: Latency,
    pub calls: AtomicU64,
    pub ensures: AtomicU64,
    pub lists: AtomicU64,
    /// Heartbeat round trips (µs) since the last `take_heartbeats`.
    heartbeats: Mutex<Vec<u32>>,
    pub heartbeat_errors: AtomicU64,
}

impl Sim {
    pub fn new(latency: Latency) -> Arc<Sim> {
        Arc::new(Sim {
            latency,
            ..Default::default()
        })
    }

    pub fn add_node(&self, server_id: &str) {
        self.servers.write().unwrap().insert(server_id.to_string());
    }

    /// What the database says runs where (after seeding).
    pub fn load(&self, rows: Vec<(String, String, u64, u64, bool)>) {
        let mut n = self.nodes.lock().unwrap();
        for (id, server, generation, metadata_generation, running) in rows {
            n.on_server
                .entry(server.clone())
                .or_default()
                .insert(id.clone());
            n.instances.insert(
                id,
                Inst {
                    server,
                    generation,
                    metadata_generation,
                    running,
                },
            );
        }
    }

    pub fn instance_count(&self) -> usize {
        self.nodes.lock().unwrap().instances.len()
    }

    pub fn take_heartbeats(&self) -> Vec<u32> {
        std::mem::take(&mut *self.heartbeats.lock().unwrap())
    }

    /// The node a call is for: the name the headnode asked for in the
    /// TLS handshake (`<server id>.node.nereid`).
    fn server_of<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let name = req
            .extensions()
            .get::<nereid_tls::Peer>()
            .and_then(|p| p.server_name.clone())
            .ok_or_else(|| Status::unauthenticated("no server name in the handshake"))?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        let id = name.strip_suffix(".node.nereid").unwrap_or_default();
        if self.servers.read().unwrap().contains(id) {
            Ok(id.to_string())
        } else {
            Err(Status::unauthenticated(format!("no simulated node {name}")))
        }
    }

    async fn wait(&self, mean: Duration) {
        if mean.is_zero() {
            return;
        }
        let f = 0.5 + rand::random::<f64>();
        tokio::time::sleep(mean.mul_f64(f)).await;
    }

    fn status(id: &str, i: &Inst) -> pb::InstanceStatus {
        pb::InstanceStatus {
            spec: Some(pb::InstanceSpec {
                id: id.to_string(),
                generation: i.generation,
                brand: pb::Brand::Container.into(),
                ..Default::default()
            }),
            state: if i.running {
                pb::RunState::Running
            } else {
                pb::RunState::Stopped
            }
            .into(),
            pid: u32::from(i.running),
            metadata_generation: i.metadata_generation,
            ..Default::default()
        }
    }

    /// Start (Some(true)), stop (Some(false)) or reboot (None), after the
    /// latency of an action.
    async fn act(
        &self,
        server: &str,
        id: &str,
        running: Option<bool>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        self.wait(self.latency.action).await;
        let st = self.with(server, id, |i| {
            if let Some(r) = running {
                i.running = r;
            }
            Sim::status(id, i)
        })?;
        Ok(Response::new(st))
    }

    /// Changes an instance the node has; NOT_FOUND otherwise.
    fn with<R>(&self, server: &str, id: &str, f: impl FnOnce(&mut Inst) -> R) -> Result<R, Status> {
        let mut n = self.nodes.lock().unwrap();
        match n.instances.get_mut(id) {
            Some(i) if i.server == server => Ok(f(i)),
            _ => Err(Status::not_found(format!("no instance {id} on this node"))),
        }
    }
}

/// The Agent service of every simulated node.
#[derive(Clone)]
pub struct SimAgent(pub Arc<Sim>);

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for SimAgent {
    async fn renew_key(
        &self,
        req: Request<pb::RenewKeyRequest>,
    ) -> Result<Response<pb::RenewKeyResponse>, Status> {
        self.0.server_of(&req)?;
        Err(Status::unimplemented(
            "simulated nodes keep their certificate",
        ))
    }

    async fn install_certificate(
        &self,
        req: Request<pb::InstallCertificateRequest>,
    ) -> Result<Response<pb::InstallCertificateResponse>, Status> {
        self.0.server_of(&req)?;
        Err(Status::unimplemented(
            "simulated nodes keep their certificate",
        ))
    }

    async fn setup(
        &self,
        req: Request<pb::SetupRequest>,
    ) -> Result<Response<pb::SetupResponse>, Status> {
        self.0.server_of(&req)?;
        Ok(Response::new(pb::SetupResponse { missing: vec![] }))
    }

    async fn get_sysinfo(
        &self,
        req: Request<pb::GetSysinfoRequest>,
    ) -> Result<Response<pb::Sysinfo>, Status> {
        let server = self.0.server_of(&req)?;
        Ok(Response::new(sysinfo(&server)))
    }

    type EnsureImageStream = Streamed<pb::ImageProgress>;

    async fn ensure_image(
        &self,
        req: Request<pb::EnsureImageRequest>,
    ) -> Result<Response<Self::EnsureImageStream>, Status> {
        self.0.server_of(&req)?;
        let ready = pb::ImageProgress {
            phase: "ready".into(),
            ..Default::default()
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(ready)]))))
    }

    async fn ensure_instance(
        &self,
        req: Request<pb::EnsureInstanceRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let server = self.0.server_of(&req)?;
        let r = req.into_inner();
        let spec = r.spec.ok_or_else(|| Status::invalid_argument("no spec"))?;
        let mean = self.0.latency.ensure_instance;
        self.0.wait(mean).await;
        self.0.ensures.fetch_add(1, Ordering::Relaxed);
        let mut n = self.0.nodes.lock().unwrap();
        let md = r.metadata.map(|m| m.generation).unwrap_or(0);
        let inst = n.instances.entry(spec.id.clone()).or_insert(Inst {
            server: server.clone(),
            generation: spec.generation,
            metadata_generation: md,
            running: false,
        });
        if inst.server != server {
            return Err(Status::already_exists("the instance is on another node"));
        }
        inst.generation = inst.generation.max(spec.generation);
        inst.metadata_generation = inst.metadata_generation.max(md);
        inst.running |= r.start;
        let st = Sim::status(&spec.id, inst);
        n.on_server.entry(server).or_default().insert(spec.id);
        Ok(Response::new(st))
    }

    async fn start_instance(
        &self,
        req: Request<pb::InstanceRef>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let server = self.0.server_of(&req)?;
        self.0.act(&server, &req.into_inner().id, Some(true)).await
    }

    async fn stop_instance(
        &self,
        req: Request<pb::StopInstanceRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let server = self.0.server_of(&req)?;
        self.0.act(&server, &req.into_inner().id, Some(false)).await
    }

    async fn reboot_instance(
        &self,
        req: Request<pb::StopInstanceRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let server = self.0.server_of(&req)?;
        self.0.act(&server, &req.into_inner().id, None).await
    }

    async fn delete_instance(
        &self,
        req: Request<pb::InstanceRef>,
    ) -> Result<Response<pb::DeleteInstanceResponse>, Status> {
        let server = self.0.server_of(&req)?;
        let id = req.into_inner().id;
        self.0.wait(self.0.latency.action).await;
        let mut n = self.0.nodes.lock().unwrap();
        if n.instances.get(&id).is_some_and(|i| i.server == server) {
            n.instances.remove(&id);
            if let Some(set) = n.on_server.get_mut(&server) {
                set.remove(&id);
            }
        }
        Ok(Response::new(pb::DeleteInstanceResponse {}))
    }

    async fn get_instance(
        &self,
        req: Request<pb::InstanceRef>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let server = self.0.server_of(&req)?;
        let id = req.into_inner().id;
        let st = self.0.with(&server, &id, |i| Sim::status(&id, i))?;
        Ok(Response::new(st))
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let server = self.0.server_of(&req)?;
        self.0.lists.fetch_add(1, Ordering::Relaxed);
        let n = self.0.nodes.lock().unwrap();
        let instances = n
            .on_server
            .get(&server)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| n.instances.get(id).map(|i| Sim::status(id, i)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(pb::ListInstancesResponse { instances }))
    }

    type WatchEventsStream = Streamed<pb::InstanceEvent>;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.0.server_of(&req)?;
        // Nothing changes on a simulated node by itself.
        Ok(Response::new(Box::pin(futures::stream::pending())))
    }

    async fn get_console(
        &self,
        req: Request<pb::GetConsoleRequest>,
    ) -> Result<Response<pb::GetConsoleResponse>, Status> {
        self.0.server_of(&req)?;
        Ok(Response::new(pb::GetConsoleResponse::default()))
    }

    async fn apply_firewall(
        &self,
        req: Request<pb::FirewallSet>,
    ) -> Result<Response<pb::ApplyFirewallResponse>, Status> {
        self.0.server_of(&req)?;
        let generation = req.into_inner().generation;
        Ok(Response::new(pb::ApplyFirewallResponse { generation }))
    }

    async fn apply_overlay(
        &self,
        req: Request<pb::OverlaySet>,
    ) -> Result<Response<pb::ApplyOverlayResponse>, Status> {
        self.0.server_of(&req)?;
        let generation = req.into_inner().generation;
        Ok(Response::new(pb::ApplyOverlayResponse { generation }))
    }

    async fn set_metadata(
        &self,
        req: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<pb::SetMetadataResponse>, Status> {
        let server = self.0.server_of(&req)?;
        let r = req.into_inner();
        let g = r.metadata.map(|m| m.generation).unwrap_or(0);
        let generation = self.0.with(&server, &r.instance_id, |i| {
            i.metadata_generation = i.metadata_generation.max(g);
            i.metadata_generation
        })?;
        Ok(Response::new(pb::SetMetadataResponse { generation }))
    }

    async fn create_snapshot(
        &self,
        _: Request<pb::SnapshotRef>,
    ) -> Result<Response<pb::SnapshotInfo>, Status> {
        Err(Status::unimplemented("not simulated"))
    }

    async fn delete_snapshot(
        &self,
        _: Request<pb::SnapshotRef>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        Err(Status::unimplemented("not simulated"))
    }

    async fn rollback_snapshot(
        &self,
        _: Request<pb::SnapshotRef>,
    ) -> Result<Response<pb::RollbackSnapshotResponse>, Status> {
        Err(Status::unimplemented("not simulated"))
    }

    async fn list_snapshots(
        &self,
        _: Request<pb::InstanceRef>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        Ok(Response::new(pb::ListSnapshotsResponse::default()))
    }

    type ExportImageStream = Streamed<pb::ExportChunk>;

    async fn export_image(
        &self,
        _: Request<pb::ExportImageRequest>,
    ) -> Result<Response<Self::ExportImageStream>, Status> {
        Err(Status::unimplemented("not simulated"))
    }
}

/// The host a simulated node reports: 64 CPUs, 512 GiB, a 16 TiB pool.
pub fn sysinfo(hostname: &str) -> pb::Sysinfo {
    let yes = || {
        Some(pb::Capability {
            available: true,
            detail: "simulated".into(),
        })
    };
    pb::Sysinfo {
        hostname: hostname.to_string(),
        machine_id: format!("sim-machine-{hostname}"),
        cpu_model: "Simulated CPU".into(),
        cpu_count: 64,
        memory_bytes: 512 << 30,
        disks: vec![],
        zpools: vec![pb::ZpoolInfo {
            name: "zones".into(),
            size_bytes: 16 << 40,
            allocated_bytes: 0,
            free_bytes: 16 << 40,
            health: "ONLINE".into(),
        }],
        nics: vec![pb::NicInfo {
            name: "eth0".into(),
            mac: "02:00:00:00:00:01".into(),
            addresses: vec![],
            mtu: 1500,
            up: true,
            kind: "physical".into(),
        }],
        capabilities: Some(pb::Capabilities {
            zfs: yes(),
            runc: yes(),
            nftables: yes(),
            ..Default::default()
        }),
        kernel: "6.1.0-sim".into(),
        os: "Debian GNU/Linux 12 (simulated)".into(),
    }
}

/// The certificate every simulated node presents (seeded nodes also
/// heartbeat with it): issued by the headnode's CA for `*.node.nereid`.
pub fn fleet_identity(ca: &nereid_tls::Ca) -> anyhow::Result<Arc<nereid_tls::Identity>> {
    let key = nereid_tls::NodeKey::generate()?;
    let (pem, _) = ca.issue("*.node.nereid", &key.public_key())?;
    Ok(nereid_tls::Identity::from_pem(&pem, &key.pem())?)
}

/// Serves the simulated agents on a free loopback port, over mutual TLS
/// (headnode certificates of the CA only); returns host:port.
pub async fn serve(
    sim: Arc<Sim>,
    ca: &nereid_tls::Ca,
    identity: Arc<nereid_tls::Identity>,
) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = nereid_tls::server_config(identity, &ca.cert_der, nereid_tls::Clients::Headnode);
    let incoming = nereid_tls::incoming(listener, config);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(1 << 20))
            .add_service(AgentServer::new(SimAgent(sim)))
            .serve_with_incoming(incoming)
            .await;
    });
    Ok(addr.to_string())
}

fn with_timeout<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(Duration::from_secs(10));
    r
}

/// Registers a simulated node with a join token through the real Register
/// call (checking the headnode against the token's CA fingerprint); returns
/// (server id, the node's certificate and key).
pub async fn register(
    grpc_url: &str,
    join_token: &str,
    hostname: &str,
    agent_address: &str,
) -> anyhow::Result<(String, Arc<nereid_tls::Identity>)> {
    let (secret, fp) = nereid_tls::split_join_token(join_token)
        .ok_or_else(|| anyhow::anyhow!("the join token has no CA fingerprint"))?;
    let config = nereid_tls::client_config(None, nereid_tls::Trust::Pinned(fp));
    let ch =
        nereid_tls::Connector::new(config, nereid_tls::HEADNODE_NAME)?.channel(grpc_url, |e| e)?;
    let key = nereid_tls::NodeKey::generate()?;
    let r = pb::registry_client::RegistryClient::new(ch)
        .register(pb::RegisterRequest {
            join_token: secret.to_string(),
            sysinfo: Some(sysinfo(hostname)),
            agent_address: agent_address.to_string(),
            agent_version: "sim".into(),
            public_key: key.public_key(),
        })
        .await?
        .into_inner();
    let identity = nereid_tls::Identity::from_pem(&r.certificate_pem, &key.pem())?;
    Ok((r.server_id, identity))
}

/// Sends every node's heartbeats, spread evenly over `interval`, until the
/// returned handles are aborted; `per_connection` nodes share a connection
/// (1: a connection per node, as real agents have; more where the process
/// may not hold two descriptors per node).
/// A connection carries the certificate of its first node, so nodes that
/// share one must share their certificate (seeded nodes do).
pub fn heartbeats(
    sim: Arc<Sim>,
    grpc_url: &str,
    ca: &nereid_tls::Ca,
    agent_address: &str,
    nodes: Vec<(String, Arc<nereid_tls::Identity>)>,
    interval: Duration,
    per_connection: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let n = nodes.len().max(1) as u32;
    let per_connection = per_connection.max(1);
    let channels: Vec<_> = nodes
        .chunks(per_connection)
        .filter_map(|chunk| {
            let config = nereid_tls::client_config(
                Some(chunk[0].1.clone()),
                nereid_tls::Trust::Ca(ca.cert_der.clone()),
            );
            nereid_tls::Connector::new(config, nereid_tls::HEADNODE_NAME)
                .ok()?
                .channel(grpc_url, |e| e)
                .ok()
        })
        .collect();
    nodes
        .into_iter()
        .enumerate()
        .map(|(i, (server, _))| {
            let sim = sim.clone();
            let address = agent_address.to_string();
            let ch = channels[i / per_connection].clone();
            tokio::spawn(async move {
                tokio::time::sleep(interval / n * i as u32).await;
                let mut c = pb::registry_client::RegistryClient::new(ch);
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let msg = pb::HeartbeatRequest {
                        server_id: server.clone(),
                        usage: Some(pb::Usage {
                            memory_total_bytes: 512 << 30,
                            memory_available_bytes: 400 << 30,
                            load1: 1.0,
                            uptime_seconds: 86_400,
                            zpools: vec![],
                        }),
                        agent_address: address.clone(),
                        agent_version: "sim".into(),
                        sysinfo: None,
                    };
                    let t = Instant::now();
                    match c.heartbeat(with_timeout(msg)).await {
                        Ok(_) => sim
                            .heartbeats
                            .lock()
                            .unwrap()
                            .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                        Err(_) => {
                            sim.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect()
}
