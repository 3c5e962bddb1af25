//! The agent's gRPC service (headnode -> agent). It is served over mutual
//! TLS: only a headnode certificate of the node's CA gets through the
//! handshake (see `certs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::Stream;
use nereid_api::{Accelerator, Brand};
use nereid_proto::v1 as pb;
use nereid_proto::v1::agent_server::Agent;
use tonic::{Request, Response, Status};

use crate::identity::{self, Setup};
use crate::images::{ImageError, Images, Progress};
use crate::runtime::container::Containers;
use crate::runtime::kvm::Vms;
use crate::runtime::store::Store;
use crate::runtime::{Events, Instance, InstanceError, Instances, Runtime, State};
use crate::spec::InstanceSpec;
use crate::sysinfo;

/// What a set-up node runs instances with; absent until setup names the pool.
#[derive(Clone)]
pub struct NodeRuntime {
    pub images: Images,
    pub instances: Instances,
    pub exporter: crate::export::Exporter,
}

impl NodeRuntime {
    /// Builds the runtime for a pool, with a driver per brand, and starts
    /// watching the drivers for state changes.
    pub fn start(
        setup: &Setup,
        state_dir: &std::path::Path,
        certs: Arc<crate::certs::NodeCerts>,
        ids: crate::idmap::IdRange,
    ) -> NodeRuntime {
        let pool = setup.zpool.as_str();
        let store = Store::new(pool);
        let metadata = crate::metadata::Metadata::new(state_dir);
        let events = Events::new();
        let nic_tags = Arc::new(setup.nic_tags.clone());
        let mut drivers: BTreeMap<Brand, Arc<dyn Runtime>> = BTreeMap::new();
        drivers.insert(
            Brand::Container,
            Arc::new(Containers::new(
                store.clone(),
                state_dir,
                nic_tags.clone(),
                events.clone(),
                ids,
                metadata.clone(),
            )),
        );
        drivers.insert(
            Brand::Kvm,
            Arc::new(Vms::new(
                store.clone(),
                state_dir,
                nic_tags,
                events.clone(),
                metadata.clone(),
            )),
        );
        let instances = Instances::new(store, metadata, drivers, events);
        instances.watch();
        NodeRuntime {
            images: Images::new(pool, certs, ids.base),
            instances,
            exporter: crate::export::Exporter::new(pool),
        }
    }
}

pub struct AgentService {
    pub state_dir: PathBuf,
    pub overrides: sysinfo::Overrides,
    pub certs: Arc<crate::certs::NodeCerts>,
    pub ids: crate::idmap::IdRange,
    pub node: Arc<RwLock<Option<NodeRuntime>>>,
    pub firewall: Arc<crate::net::firewall::Firewall>,
}

impl AgentService {
    fn node(&self) -> Result<NodeRuntime, Status> {
        self.node.read().expect("node lock").clone().ok_or_else(|| {
            Status::failed_precondition(
                "this node is not set up yet (no zpool): run `nereid server setup` first",
            )
        })
    }

    fn instances(&self) -> Result<Instances, Status> {
        Ok(self.node()?.instances)
    }
}

/// A status carrying a typed detail the headnode acts on.
fn with_detail(code: tonic::Code, msg: String, reason: pb::ErrorReason, subject: &str) -> Status {
    let detail = pb::ErrorDetail {
        reason: reason.into(),
        subject: subject.to_string(),
    };
    Status::with_details(code, msg, prost::Message::encode_to_vec(&detail).into())
}

fn instance_status(e: InstanceError) -> Status {
    let msg = crate::error_chain(&e);
    match e {
        InstanceError::NotFound(_) => Status::not_found(msg),
        InstanceError::Invalid(_) => Status::invalid_argument(msg),
        InstanceError::ImageMissing(ref image) => with_detail(
            tonic::Code::FailedPrecondition,
            msg.clone(),
            pb::ErrorReason::ImageMissing,
            image,
        ),
        InstanceError::Conflict { .. } => Status::already_exists(msg),
        InstanceError::Unsupported(..) => Status::unimplemented(msg),
        InstanceError::Launch { .. } => Status::failed_precondition(msg),
        InstanceError::PoolUnavailable(_) => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

fn image_status(e: ImageError) -> Status {
    let msg = crate::error_chain(&e);
    match e {
        ImageError::BadId(_) | ImageError::NotBootable { .. } => Status::invalid_argument(msg),
        ImageError::Checksum { .. } | ImageError::Unpack { .. } | ImageError::TooLong { .. } => {
            Status::data_loss(msg)
        }
        ImageError::ShiftMismatch { .. } => Status::failed_precondition(msg),
        ImageError::Download { .. } => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

fn spec_from_pb(s: Option<pb::InstanceSpec>) -> Result<InstanceSpec, Status> {
    let s = s.ok_or_else(|| Status::invalid_argument("spec is required"))?;
    InstanceSpec::try_from(s).map_err(|e| Status::invalid_argument(e.0))
}

fn state_to_pb(s: State) -> pb::RunState {
    match s {
        State::Running => pb::RunState::Running,
        State::Stopped => pb::RunState::Stopped,
        State::Failed => pb::RunState::Failed,
    }
}

/// The instance as the headnode sees it; `md` says which metadata
/// generation the node serves it.
fn status_to_pb(md: &crate::metadata::Metadata, i: &Instance) -> pb::InstanceStatus {
    pb::InstanceStatus {
        metadata_generation: md.generation(&i.spec.id),
        spec: Some(pb::InstanceSpec::from(&i.spec)),
        state: state_to_pb(i.state).into(),
        pid: i.pid,
        reason: i.reason.clone().unwrap_or_default(),
        accelerator: match i.accelerator {
            Some(Accelerator::Kvm) => pb::Accelerator::Kvm,
            Some(Accelerator::Tcg) => pb::Accelerator::Tcg,
            None => pb::Accelerator::Unspecified,
        }
        .into(),
    }
}

fn snapshot_to_pb(s: crate::runtime::store::Snapshot) -> pb::SnapshotInfo {
    pb::SnapshotInfo {
        name: s.name,
        used_bytes: s.used_bytes,
        created: s.created,
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
                    self.certs.clone(),
                    self.ids,
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
        let brand =
            crate::spec::brand_from_pb(req.brand).map_err(|e| Status::invalid_argument(e.0))?;
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
            let image = crate::images::ImageRequest {
                id: req.image_id.clone(),
                sha256: req.sha256.clone(),
                brand,
                size: req.size,
                max_unpacked: req.max_unpacked_bytes,
            };
            if let Err(e) = node.images.ensure(&image, report).await {
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
        tracing::info!(instance = %spec.id, generation = spec.generation, "EnsureInstance");
        let snapshot = node.images.snapshot(&spec.image_id);
        // The work goes on if the caller hangs up (a timeout, a headnode
        // restart): a half-made instance would wait for the retry otherwise.
        let work = {
            let instances = node.instances.clone();
            let spec = spec.clone();
            tokio::spawn(async move {
                crate::fault::delay("ensure_instance").await;
                let metadata = req.metadata.map(crate::metadata::Data::from);
                instances
                    .ensure(&spec, &snapshot, req.start, metadata)
                    .await
            })
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
        Ok(Response::new(status_to_pb(
            node.instances.metadata(),
            &inst,
        )))
    }

    async fn start_instance(
        &self,
        req: Request<pb::InstanceRef>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let instances = self.instances()?;
        let inst = instances
            .start(&req.into_inner().id)
            .await
            .map_err(instance_status)?;
        Ok(Response::new(status_to_pb(instances.metadata(), &inst)))
    }

    async fn stop_instance(
        &self,
        req: Request<pb::StopInstanceRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let req = req.into_inner();
        let instances = self.instances()?;
        let inst = instances
            .stop(&req.id, timeout_of(req.timeout_seconds))
            .await
            .map_err(instance_status)?;
        Ok(Response::new(status_to_pb(instances.metadata(), &inst)))
    }

    async fn reboot_instance(
        &self,
        req: Request<pb::StopInstanceRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let req = req.into_inner();
        let instances = self.instances()?;
        let inst = instances
            .reboot(&req.id, timeout_of(req.timeout_seconds))
            .await
            .map_err(instance_status)?;
        Ok(Response::new(status_to_pb(instances.metadata(), &inst)))
    }

    async fn delete_instance(
        &self,
        req: Request<pb::InstanceRef>,
    ) -> Result<Response<pb::DeleteInstanceResponse>, Status> {
        tracing::info!(instance = %req.get_ref().id, "DeleteInstance");
        self.instances()?
            .delete(&req.into_inner().id)
            .await
            .map_err(instance_status)?;
        Ok(Response::new(pb::DeleteInstanceResponse {}))
    }

    async fn get_instance(
        &self,
        req: Request<pb::InstanceRef>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let instances = self.instances()?;
        let inst = instances
            .get(&req.into_inner().id)
            .await
            .map_err(instance_status)?;
        Ok(Response::new(status_to_pb(instances.metadata(), &inst)))
    }

    async fn list_instances(
        &self,
        _req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let instances = self.instances()?;
        let list = instances.list().await.map_err(instance_status)?;
        Ok(Response::new(pb::ListInstancesResponse {
            instances: list
                .iter()
                .map(|i| status_to_pb(instances.metadata(), i))
                .collect(),
        }))
    }

    type WatchEventsStream = Streamed<pb::InstanceEvent>;

    async fn watch_events(
        &self,
        _req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let mut events = self.instances()?.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        let msg = pb::InstanceEvent {
                            id: e.id,
                            state: state_to_pb(e.state).into(),
                            generation: e.generation,
                            reason: e.reason.unwrap_or_default(),
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

    async fn get_console(
        &self,
        req: Request<pb::GetConsoleRequest>,
    ) -> Result<Response<pb::GetConsoleResponse>, Status> {
        let req = req.into_inner();
        let tail = match req.tail_lines {
            0 => 100,
            n => n.min(10_000),
        };
        let c = self
            .instances()?
            .console(&req.id, tail as usize)
            .await
            .map_err(instance_status)?;
        Ok(Response::new(pb::GetConsoleResponse {
            text: c.text,
            truncated: c.truncated,
        }))
    }

    async fn create_snapshot(
        &self,
        req: Request<pb::SnapshotRef>,
    ) -> Result<Response<pb::SnapshotInfo>, Status> {
        let r = req.into_inner();
        let s = self
            .instances()?
            .create_snapshot(&r.instance_id, &r.name)
            .await
            .map_err(instance_status)?;
        Ok(Response::new(snapshot_to_pb(s)))
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::SnapshotRef>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let r = req.into_inner();
        self.instances()?
            .delete_snapshot(&r.instance_id, &r.name)
            .await
            .map_err(instance_status)?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn rollback_snapshot(
        &self,
        req: Request<pb::SnapshotRef>,
    ) -> Result<Response<pb::RollbackSnapshotResponse>, Status> {
        let r = req.into_inner();
        tracing::info!(instance = %r.instance_id, snapshot = %r.name, "RollbackSnapshot");
        let destroyed = self
            .instances()?
            .rollback_snapshot(&r.instance_id, &r.name)
            .await
            .map_err(|e| match e {
                InstanceError::Conflict { .. } => {
                    Status::failed_precondition(crate::error_chain(&e))
                }
                other => instance_status(other),
            })?;
        Ok(Response::new(pb::RollbackSnapshotResponse { destroyed }))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::InstanceRef>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let list = self
            .instances()?
            .snapshots(&req.into_inner().id)
            .await
            .map_err(instance_status)?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: list.into_iter().map(snapshot_to_pb).collect(),
        }))
    }

    async fn renew_key(
        &self,
        _req: Request<pb::RenewKeyRequest>,
    ) -> Result<Response<pb::RenewKeyResponse>, Status> {
        let public_key = self
            .certs
            .renew_key()
            .map_err(|e| Status::internal(format!("making a new key: {e}")))?;
        tracing::info!("made a new key for a certificate rotation");
        Ok(Response::new(pb::RenewKeyResponse { public_key }))
    }

    async fn install_certificate(
        &self,
        req: Request<pb::InstallCertificateRequest>,
    ) -> Result<Response<pb::InstallCertificateResponse>, Status> {
        use crate::certs::CertError;
        let fingerprint = self
            .certs
            .install(&req.into_inner().certificate_pem)
            .map_err(|e| match e {
                CertError::NoPendingKey => Status::failed_precondition(e.to_string()),
                CertError::Pki(nereid_tls::PkiError::Invalid { .. }) => {
                    Status::invalid_argument(e.to_string())
                }
                CertError::Pki(_) => Status::internal(e.to_string()),
            })?;
        tracing::info!(%fingerprint, "installed a new certificate");
        Ok(Response::new(pb::InstallCertificateResponse {
            fingerprint,
        }))
    }

    type ExportImageStream = Streamed<pb::ExportChunk>;

    async fn export_image(
        &self,
        req: Request<pb::ExportImageRequest>,
    ) -> Result<Response<Self::ExportImageStream>, Status> {
        use crate::export::Selection;
        use pb::export_chunk::Part;
        let node = self.node()?;
        let r = req.into_inner();
        tracing::info!(instance = %r.instance_id, image = %r.image_id, "ExportImage");
        let (brand, snapshot) = node
            .instances
            .export_snapshot(&r.instance_id, &r.image_id)
            .await
            .map_err(instance_status)?;
        let selection = match brand {
            Brand::Container => Selection::RootFs(self.ids),
            Brand::Kvm => Selection::Files(crate::runtime::kvm::qemu::IMAGE_FILES),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
            let forward_tx = tx.clone();
            // Ends (dropping `chunks`, which stops the writer) when the
            // caller hangs up.
            let forward = async move {
                while let Some(data) = chunks.recv().await {
                    let msg = pb::ExportChunk {
                        part: Some(Part::Data(data.to_vec())),
                    };
                    if forward_tx.send(Ok(msg)).await.is_err() {
                        break;
                    }
                    crate::fault::point("export_image:streaming");
                }
            };
            let export =
                node.exporter
                    .export(&r.instance_id, &snapshot, &r.image_id, selection, chunks_tx);
            let (result, ()) = tokio::join!(export, forward);
            let last = match result {
                Ok(s) => {
                    tracing::info!(instance = %r.instance_id, image = %r.image_id, bytes = s.size, skipped = s.skipped, "image exported");
                    Ok(pb::ExportChunk {
                        part: Some(Part::Done(pb::ExportTrailer {
                            sha256: s.sha256,
                            size: s.size,
                            unpacked_bytes: s.unpacked_bytes,
                            skipped: s.skipped,
                        })),
                    })
                }
                Err(e) => {
                    let msg = crate::error_chain(&e);
                    tracing::warn!(instance = %r.instance_id, "exporting image {}: {msg}", r.image_id);
                    Err(Status::internal(msg))
                }
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(stream_from(rx))))
    }

    async fn set_metadata(
        &self,
        req: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<pb::SetMetadataResponse>, Status> {
        let req = req.into_inner();
        let data = req
            .metadata
            .map(crate::metadata::Data::from)
            .ok_or_else(|| Status::invalid_argument("metadata is missing"))?;
        if !crate::spec::is_uuid(&req.instance_id) {
            return Err(Status::invalid_argument(format!(
                "instance id {:?} is not a UUID",
                req.instance_id
            )));
        }
        let generation = self
            .instances()?
            .set_metadata(&req.instance_id, data)
            .await
            .map_err(instance_status)?;
        Ok(Response::new(pb::SetMetadataResponse { generation }))
    }

    async fn apply_overlay(
        &self,
        req: Request<pb::OverlaySet>,
    ) -> Result<Response<pb::ApplyOverlayResponse>, Status> {
        match crate::net::overlay::apply(req.into_inner()).await {
            Ok(generation) => Ok(Response::new(pb::ApplyOverlayResponse { generation })),
            Err(e @ crate::net::NetError::Overlay(_)) => {
                Err(Status::invalid_argument(e.to_string()))
            }
            Err(e) => Err(Status::internal(format!(
                "applying the overlay: {}",
                crate::error_chain(&e)
            ))),
        }
    }

    async fn apply_firewall(
        &self,
        req: Request<pb::FirewallSet>,
    ) -> Result<Response<pb::ApplyFirewallResponse>, Status> {
        let set = req.into_inner();
        match self.firewall.apply(&set).await {
            Ok(generation) => Ok(Response::new(pb::ApplyFirewallResponse { generation })),
            Err(e @ crate::net::firewall::FirewallError::Invalid(_)) => {
                Err(Status::invalid_argument(e.to_string()))
            }
            Err(e) => Err(Status::internal(format!(
                "applying the firewall: {}",
                crate::error_chain(&e)
            ))),
        }
    }
}

/// A stream over an mpsc receiver.
fn stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
