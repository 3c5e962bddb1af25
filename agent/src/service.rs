//! The agent's gRPC service (headnode -> agent). Every call must carry the
//! control key the headnode issued at registration; others are refused.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::Stream;
use nereid_proto::v1 as pb;
use nereid_proto::v1::agent_server::Agent;
use tonic::{Request, Response, Status};

use crate::identity::{self, Setup};
use crate::images::{ImageError, Images, Progress};
use crate::runtime::container::{Containers, Instance, InstanceError};
use crate::runtime::oci::{InstanceSpec, Nic};
use crate::sysinfo;

/// What a set-up node runs instances with; absent until setup names the pool.
#[derive(Clone)]
pub struct NodeRuntime {
    pub images: Images,
    pub containers: Containers,
}

impl NodeRuntime {
    /// Builds the runtime for a pool and starts watching runc for state changes.
    pub fn start(setup: &Setup, state_dir: &std::path::Path, credential: &str) -> NodeRuntime {
        let pool = setup.zpool.as_str();
        let containers = Containers::new(pool, state_dir, setup.nic_tags.clone());
        tokio::spawn(containers.clone().watch_runc(Duration::from_secs(1)));
        NodeRuntime {
            images: Images::new(pool, state_dir, credential),
            containers,
        }
    }
}

pub struct AgentService {
    pub state_dir: PathBuf,
    pub overrides: sysinfo::Overrides,
    pub credential: String,
    pub node: Arc<RwLock<Option<NodeRuntime>>>,
}

impl AgentService {
    fn node(&self) -> Result<NodeRuntime, Status> {
        self.node.read().expect("node lock").clone().ok_or_else(|| {
            Status::failed_precondition(
                "this node is not set up yet (no zpool): run `nereid server setup` first",
            )
        })
    }
}

fn instance_status(e: InstanceError) -> Status {
    let msg = crate::error_chain(&e);
    match e {
        InstanceError::NotFound(_) => Status::not_found(msg),
        InstanceError::Invalid(_) => Status::invalid_argument(msg),
        InstanceError::ImageMissing(_) => Status::failed_precondition(msg),
        InstanceError::Conflict { .. } => Status::already_exists(msg),
        _ => Status::internal(msg),
    }
}

fn image_status(e: ImageError) -> Status {
    let msg = crate::error_chain(&e);
    match e {
        ImageError::BadId(_) => Status::invalid_argument(msg),
        ImageError::Checksum { .. } | ImageError::Unpack { .. } => Status::data_loss(msg),
        ImageError::Download { .. } => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

fn spec_from_pb(s: Option<pb::InstanceSpec>) -> Result<InstanceSpec, Status> {
    let s = s.ok_or_else(|| Status::invalid_argument("spec is required"))?;
    if !s.brand.is_empty() && s.brand != "container" {
        return Err(Status::unimplemented(format!(
            "brand {:?} is not supported by this agent yet",
            s.brand
        )));
    }
    Ok(InstanceSpec {
        id: s.id,
        hostname: s.hostname,
        image_id: s.image_id,
        memory_mb: s.memory_mb,
        swap_mb: s.swap_mb,
        cpu_cap: s.cpu_cap,
        disk_mb: s.disk_mb,
        pids_limit: if s.pids_limit == 0 {
            4096
        } else {
            s.pids_limit
        },
        generation: s.generation,
        nics: s
            .nics
            .into_iter()
            .map(nic_from_pb)
            .collect::<Result<Vec<_>, Status>>()?,
    })
}

fn nic_from_pb(n: pb::NicSpec) -> Result<Nic, Status> {
    let addr = |field: &str, v: &str| {
        v.parse::<std::net::Ipv4Addr>().map_err(|_| {
            Status::invalid_argument(format!(
                "nic {}: {field} {v:?} is not an IPv4 address",
                n.network_id
            ))
        })
    };
    let mac_ok = n.mac.len() == 17
        && n.mac
            .split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
    if !mac_ok {
        return Err(Status::invalid_argument(format!(
            "nic {}: mac {:?} is malformed",
            n.network_id, n.mac
        )));
    }
    if n.prefix_len == 0 || n.prefix_len > 32 || !(576..=9000).contains(&n.mtu) {
        return Err(Status::invalid_argument(format!(
            "nic {}: prefix_len must be 1..=32 and mtu 576..=9000",
            n.network_id
        )));
    }
    Ok(Nic {
        ip: addr("ip", &n.ip)?,
        gateway: if n.gateway.is_empty() {
            None
        } else {
            Some(addr("gateway", &n.gateway)?)
        },
        resolvers: n
            .resolvers
            .iter()
            .map(|r| addr("resolver", r))
            .collect::<Result<_, _>>()?,
        prefix_len: n.prefix_len as u8,
        vlan_id: n.vlan_id as u16,
        mtu: n.mtu,
        mac: n.mac.to_ascii_lowercase(),
        network_id: n.network_id,
        nic_tag: n.nic_tag,
    })
}

fn nic_to_pb(n: &Nic) -> pb::NicSpec {
    pb::NicSpec {
        network_id: n.network_id.clone(),
        nic_tag: n.nic_tag.clone(),
        vlan_id: n.vlan_id.into(),
        ip: n.ip.to_string(),
        prefix_len: n.prefix_len.into(),
        gateway: n.gateway.map(|g| g.to_string()).unwrap_or_default(),
        resolvers: n.resolvers.iter().map(|r| r.to_string()).collect(),
        mtu: n.mtu,
        mac: n.mac.clone(),
    }
}

fn spec_to_pb(s: &InstanceSpec) -> pb::InstanceSpec {
    pb::InstanceSpec {
        id: s.id.clone(),
        hostname: s.hostname.clone(),
        image_id: s.image_id.clone(),
        brand: "container".into(),
        memory_mb: s.memory_mb,
        swap_mb: s.swap_mb,
        cpu_cap: s.cpu_cap,
        disk_mb: s.disk_mb,
        pids_limit: s.pids_limit,
        generation: s.generation,
        nics: s.nics.iter().map(nic_to_pb).collect(),
    }
}

fn status_to_pb(i: &Instance) -> pb::InstanceStatus {
    pb::InstanceStatus {
        spec: Some(spec_to_pb(&i.spec)),
        state: i.state.as_str().into(),
        pid: i.pid,
    }
}

fn timeout_of(secs: u32) -> Duration {
    Duration::from_secs(if secs == 0 {
        10
    } else {
        u64::from(secs.min(600))
    })
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Checks the control key of each call against the hash in the identity.
pub fn auth_interceptor(
    control_key_sha256: Arc<String>,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let presented = req
            .metadata()
            .get(nereid_proto::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("the control key is required"))?;
        if identity::hash_hex(presented.trim()) != *control_key_sha256 {
            return Err(Status::unauthenticated("wrong control key"));
        }
        Ok(req)
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn setup(
        &self,
        req: Request<pb::SetupRequest>,
    ) -> Result<Response<pb::SetupResponse>, Status> {
        let req = req.into_inner();
        let mut missing = Vec::new();
        match crate::storage::zpool::list().await {
            Ok(pools) if pools.iter().any(|p| p.name == req.zpool) => {}
            Ok(pools) => missing.push(format!(
                "zpool {:?} does not exist (this node has: {})",
                req.zpool,
                if pools.is_empty() {
                    "none".to_string()
                } else {
                    pools
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
            Err(e) => missing.push(format!("zpool {:?} cannot be checked: {e}", req.zpool)),
        }
        let mut tags: Vec<_> = req.nic_tags.iter().collect();
        tags.sort();
        for (tag, iface) in tags {
            if !sysinfo::interface_exists(iface) {
                missing.push(format!(
                    "interface {iface:?} (for nic tag {tag:?}) does not exist"
                ));
            }
        }
        if missing.is_empty() {
            let setup = Setup {
                zpool: req.zpool,
                nic_tags: req.nic_tags.into_iter().collect(),
            };
            identity::save(&self.state_dir.join(crate::SETUP_FILE), &setup)
                .map_err(|e| Status::internal(e.to_string()))?;
            let mut node = self.node.write().expect("node lock");
            if node.is_none() {
                *node = Some(NodeRuntime::start(
                    &setup,
                    &self.state_dir,
                    &self.credential,
                ));
            }
            tracing::info!(zpool = %setup.zpool, "setup recorded");
        } else {
            tracing::warn!("setup refused: {}", missing.join("; "));
        }
        Ok(Response::new(pb::SetupResponse { missing }))
    }

    async fn get_sysinfo(
        &self,
        _req: Request<pb::GetSysinfoRequest>,
    ) -> Result<Response<pb::Sysinfo>, Status> {
        Ok(Response::new(sysinfo::collect(&self.overrides).await))
    }
    type EnsureImageStream = Streamed<pb::ImageProgress>;

    async fn ensure_image(
        &self,
        req: Request<pb::EnsureImageRequest>,
    ) -> Result<Response<Self::EnsureImageStream>, Status> {
        let node = self.node()?;
        let req = req.into_inner();
        if !(req.sha256.len() == 64 && req.sha256.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(Status::invalid_argument("sha256 must be 64 hex digits"));
        }
        if !(req.url.starts_with("http://") || req.url.starts_with("https://")) {
            return Err(Status::invalid_argument("url must be http(s)"));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let report = move |p: Progress| {
                let msg = match p {
                    Progress::Downloading { bytes, total } => pb::ImageProgress {
                        phase: "downloading".into(),
                        bytes,
                        total,
                    },
                    Progress::Verifying => pb::ImageProgress {
                        phase: "verifying".into(),
                        ..Default::default()
                    },
                    Progress::Unpacking => pb::ImageProgress {
                        phase: "unpacking".into(),
                        ..Default::default()
                    },
                    Progress::Ready => pb::ImageProgress {
                        phase: "ready".into(),
                        ..Default::default()
                    },
                };
                let _ = progress_tx.try_send(Ok(msg));
            };
            // The work goes on even if the caller hangs up: a retry then finds it done.
            if let Err(e) = node
                .images
                .ensure(&req.image_id, &req.url, &req.sha256, report)
                .await
            {
                tracing::warn!(image = %req.image_id, "EnsureImage failed: {}", crate::error_chain(&e));
                let _ = tx.send(Err(image_status(e))).await;
            }
        });
        Ok(Response::new(Box::pin(stream_from(rx))))
    }

    async fn ensure_instance(
        &self,
        req: Request<pb::EnsureInstanceRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let node = self.node()?;
        let req = req.into_inner();
        let spec = spec_from_pb(req.spec)?;
        let snapshot = node.images.snapshot(&spec.image_id);
        // The work goes on if the caller hangs up (a timeout, a headnode
        // restart): a half-made instance would wait for the retry otherwise.
        let work = {
            let node = node.clone();
            let spec = spec.clone();
            tokio::spawn(async move { node.containers.ensure(&spec, &snapshot, req.start).await })
        };
        let result = work
            .await
            .map_err(|e| Status::internal(format!("EnsureInstance panicked: {e}")))?;
        let inst = match result {
            Ok(i) => i,
            Err(e) => {
                if matches!(e, InstanceError::ImageMissing(_)) {
                    node.images.forget(&spec.image_id);
                }
                return Err(instance_status(e));
            }
        };
        Ok(Response::new(status_to_pb(&inst)))
    }

    async fn start_instance(
        &self,
        req: Request<pb::InstanceRef>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let inst = self
            .node()?
            .containers
            .start(&req.into_inner().id)
            .await
            .map_err(instance_status)?;
        Ok(Response::new(status_to_pb(&inst)))
    }

    async fn stop_instance(
        &self,
        req: Request<pb::StopInstanceRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let req = req.into_inner();
        let inst = self
            .node()?
            .containers
            .stop(&req.id, timeout_of(req.timeout_seconds))
            .await
            .map_err(instance_status)?;
        Ok(Response::new(status_to_pb(&inst)))
    }

    async fn reboot_instance(
        &self,
        req: Request<pb::StopInstanceRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let req = req.into_inner();
        let inst = self
            .node()?
            .containers
            .reboot(&req.id, timeout_of(req.timeout_seconds))
            .await
            .map_err(instance_status)?;
        Ok(Response::new(status_to_pb(&inst)))
    }

    async fn delete_instance(
        &self,
        req: Request<pb::InstanceRef>,
    ) -> Result<Response<pb::DeleteInstanceResponse>, Status> {
        self.node()?
            .containers
            .delete(&req.into_inner().id)
            .await
            .map_err(instance_status)?;
        Ok(Response::new(pb::DeleteInstanceResponse {}))
    }

    async fn get_instance(
        &self,
        req: Request<pb::InstanceRef>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let inst = self
            .node()?
            .containers
            .get(&req.into_inner().id)
            .await
            .map_err(instance_status)?;
        Ok(Response::new(status_to_pb(&inst)))
    }

    async fn list_instances(
        &self,
        _req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let list = self
            .node()?
            .containers
            .list()
            .await
            .map_err(instance_status)?;
        Ok(Response::new(pb::ListInstancesResponse {
            instances: list.iter().map(status_to_pb).collect(),
        }))
    }

    type WatchEventsStream = Streamed<pb::InstanceEvent>;

    async fn watch_events(
        &self,
        _req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let mut events = self.node()?.containers.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        let msg = pb::InstanceEvent {
                            id: e.id,
                            state: e.state.as_str().into(),
                            generation: e.generation,
                        };
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // The watcher must re-list: tell it how much it missed.
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "{n} events were dropped; list instances again"
                            ))))
                            .await;
                        return;
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(stream_from(rx))))
    }
}

/// A stream over an mpsc receiver.
fn stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
