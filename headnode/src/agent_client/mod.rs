//! The only place that talks to agents: one lazily-connected gRPC channel per
//! server over mutual TLS (the headnode presents its certificate; the node
//! must present the certificate of its server id), each call carrying the
//! request id, and (in `convert`) every conversion to and from the agents'
//! protobuf. Callers see REST/domain types and `Error`, never protobuf.
//!
//! It must never keep a channel for a deleted server.

pub mod convert;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nereid_api::{Brand, ImageId, InstanceId, ServerId, ServerSetup};
use nereid_proto::v1 as pb;
use nereid_proto::v1::SetupRequest;
use nereid_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

pub use convert::{NodeInstance, NodeState};

use crate::db::AgentTarget;
use crate::error::{Error, Result};

/// What a node needs to pull an image.
#[derive(Debug, Clone)]
pub struct ImagePull {
    pub id: ImageId,
    /// The brand of the instances that boot it.
    pub brand: Brand,
    pub sha256: String,
    pub size: u64,
    /// The most it may unpack to on the node.
    pub max_unpacked: u64,
}

#[derive(Clone)]
pub struct AgentPool {
    /// How this headnode connects: its certificate and the CA.
    tls: Arc<rustls::ClientConfig>,
    /// One connection per server (its certificate names its server id),
    /// with the address it was made for.
    channels: Arc<Mutex<HashMap<ServerId, (String, Channel)>>>,
    /// Images this process saw ready on a server: EnsureImage is not asked
    /// again. EnsureInstance answering "image missing" drops the entry.
    images_on: Arc<Mutex<std::collections::HashSet<(ServerId, ImageId)>>>,
    /// The generation of each pushed set this process last saw applied on a server.
    pushed: Arc<Mutex<HashMap<(ServerId, Pushed), u64>>>,
    /// One sync of each set at a time per server, so an older set never
    /// overtakes a newer one.
    push_locks: Arc<Mutex<HashMap<(ServerId, Pushed), PushLock>>>,
    /// Servers whose sets must be pushed again on the reconciler's next
    /// pass: a push from this process failed, or the node did not answer.
    failed_pushes: Arc<Mutex<std::collections::HashSet<ServerId>>>,
}

/// The generation of a whole-node set: a digest of its content (with the
/// generation field 0), so equal sets have equal generations.
pub fn generation_of(set: &impl prost::Message) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(set.encode_to_vec());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Held by one sync of one set of one server.
type PushLock = Arc<tokio::sync::Mutex<()>>;

/// The whole-node sets the headnode compiles and pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pushed {
    Firewall,
    Overlay,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Calls that do real work on the node (pulls, clones, container starts)
/// queue there behind each other in a burst; they get longer.
const WORK_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest an image export may stream.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

/// An image file streaming from a node: the chunks, then its trailer.
pub struct Export {
    stream: tonic::Streaming<pb::ExportChunk>,
    server: ServerId,
    address: String,
    /// What the node says it wrote (once the stream ended well).
    pub trailer: Option<pb::ExportTrailer>,
    /// Why the stream broke, if it did.
    pub failed: Option<Error>,
}

impl Export {
    /// The file's bytes; ends at the trailer or at the first failure (kept
    /// in `failed`, so the stream's consumer sees only that it ended).
    pub fn chunks(&mut self) -> impl futures::Stream<Item = Result<bytes::Bytes>> + Unpin + '_ {
        Box::pin(futures::stream::unfold(self, |e| async move {
            if e.trailer.is_some() || e.failed.is_some() {
                return None;
            }
            use pb::export_chunk::Part;
            let failure = match e.stream.message().await {
                Ok(Some(pb::ExportChunk {
                    part: Some(Part::Data(d)),
                })) => return Some((Ok(bytes::Bytes::from(d)), e)),
                Ok(Some(pb::ExportChunk {
                    part: Some(Part::Done(t)),
                })) => {
                    e.trailer = Some(t);
                    return None;
                }
                Ok(Some(pb::ExportChunk { part: None })) => Error::AgentUnavailable {
                    server: e.server,
                    message: format!(
                        "the agent of server {} sent an empty export chunk",
                        e.server
                    ),
                },
                Ok(None) => Error::AgentUnavailable {
                    server: e.server,
                    message: format!(
                        "the agent of server {} ended ExportImage without its trailer",
                        e.server
                    ),
                },
                Err(st) => agent_error(e.server, &e.address, "ExportImage", st),
            };
            let message = failure.to_string();
            e.failed = Some(failure);
            Some((Err(Error::Internal(message)), e))
        }))
    }
}

impl AgentPool {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> AgentPool {
        AgentPool {
            tls,
            channels: Default::default(),
            images_on: Default::default(),
            pushed: Default::default(),
            push_locks: Default::default(),
            failed_pushes: Default::default(),
        }
    }

    fn channel(&self, id: ServerId, address: &str) -> Result<Channel> {
        let mut map = self.channels.lock().expect("agent pool lock");
        if let Some((at, ch)) = map.get(&id)
            && at == address
        {
            return Ok(ch.clone());
        }
        // The bound of any call; shorter deadlines travel as grpc-timeout.
        let ch = self.connect(id, address)?;
        map.insert(id, (address.to_string(), ch.clone()));
        Ok(ch)
    }

    /// A new channel to the agent of `id`, which must present that server's
    /// certificate.
    fn connect(&self, id: ServerId, address: &str) -> Result<Channel> {
        let invalid = |e: &dyn std::fmt::Display| {
            Error::Internal(format!(
                "server {id} has an invalid agent address {address:?}: {e}"
            ))
        };
        nereid_tls::Connector::new(self.tls.clone(), &nereid_tls::node_name(&id.to_string()))
            .map_err(|e| invalid(&e))?
            .channel(address, |e| {
                e.connect_timeout(Duration::from_secs(5))
                    .timeout(WORK_TIMEOUT)
            })
            .map_err(|e| invalid(&e))
    }

    pub fn forget(&self, id: ServerId) {
        self.channels.lock().expect("agent pool lock").remove(&id);
        self.pushed
            .lock()
            .expect("pushed lock")
            .retain(|(s, _), _| *s != id);
        self.images_on
            .lock()
            .expect("images lock")
            .retain(|(s, _)| *s != id);
    }

    /// Whether this process saw the image ready on the server.
    pub fn image_known(&self, server: ServerId, image: ImageId) -> bool {
        self.images_on
            .lock()
            .expect("images lock")
            .contains(&(server, image))
    }

    /// Forgets that an image is on a server (the node said it is missing).
    pub fn forget_image(&self, server: ServerId, image: ImageId) {
        self.images_on
            .lock()
            .expect("images lock")
            .remove(&(server, image));
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        self.request_within(msg, CALL_TIMEOUT)
    }

    fn request_within<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        if let Ok(v) = crate::error::current_request_id().parse() {
            req.metadata_mut().insert("x-request-id", v);
        }
        req
    }

    /// Asks the agent to check and record a setup; returns what is missing.
    pub async fn setup(
        &self,
        id: ServerId,
        address: &str,
        setup: &ServerSetup,
    ) -> Result<Vec<String>> {
        let mut client = AgentClient::new(self.channel(id, address)?);
        let msg = SetupRequest {
            zpool: setup.zpool.clone(),
            nic_tags: setup.nic_tags.clone().into_iter().collect(),
        };
        let resp = client
            .setup(self.request(msg))
            .await
            .map_err(|st| agent_error(id, address, "Setup", st))?;
        Ok(resp.into_inner().missing)
    }
}

impl AgentPool {
    /// Has the node make the key of a certificate rotation; returns its
    /// public half.
    pub async fn renew_key(&self, id: ServerId, address: &str) -> Result<Vec<u8>> {
        let mut client = AgentClient::new(self.channel(id, address)?);
        let resp = client
            .renew_key(self.request(pb::RenewKeyRequest {}))
            .await
            .map_err(|st| agent_error(id, address, "RenewKey", st))?;
        Ok(resp.into_inner().public_key)
    }

    /// Gives the node the certificate for its new key; returns the
    /// fingerprint the node now presents.
    pub async fn install_certificate(
        &self,
        id: ServerId,
        address: &str,
        certificate_pem: &str,
    ) -> Result<String> {
        let mut client = AgentClient::new(self.channel(id, address)?);
        let msg = pb::InstallCertificateRequest {
            certificate_pem: certificate_pem.to_string(),
        };
        let resp = client
            .install_certificate(self.request(msg))
            .await
            .map_err(|st| agent_error(id, address, "InstallCertificate", st))?;
        Ok(resp.into_inner().fingerprint)
    }
}

impl AgentPool {
    fn client(&self, t: &AgentTarget) -> Result<AgentClient<Channel>> {
        Ok(AgentClient::new(self.channel(t.server, &t.address)?))
    }

    /// Pulls an image onto the node; returns once it is ready there.
    pub async fn ensure_image(&self, t: &AgentTarget, pull: &ImagePull) -> Result<()> {
        let image = pull.id;
        if self.image_known(t.server, image) {
            return Ok(());
        }
        let msg = pb::EnsureImageRequest {
            image_id: image.to_string(),
            sha256: pull.sha256.clone(),
            brand: convert::brand(pull.brand).into(),
            size: pull.size,
            max_unpacked_bytes: pull.max_unpacked,
        };
        let mut stream = self
            .client(t)?
            .ensure_image(self.request_within(msg, WORK_TIMEOUT))
            .await
            .map_err(|st| agent_error(t.server, &t.address, "EnsureImage", st))?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(p)) if p.phase == "ready" => {
                    self.images_on
                        .lock()
                        .expect("images lock")
                        .insert((t.server, image));
                    return Ok(());
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(Error::AgentUnavailable {
                        server: t.server,
                        message: format!(
                            "the agent of server {} ended EnsureImage of {image} before it was ready",
                            t.server
                        ),
                    });
                }
                Err(st) => return Err(agent_error(t.server, &t.address, "EnsureImage", st)),
            }
        }
    }

    /// Makes the instance exist on the node (and run, with `start`).
    pub async fn ensure_instance(
        &self,
        t: &AgentTarget,
        spec: &convert::Spec,
        start: bool,
    ) -> Result<NodeInstance> {
        let msg = pb::EnsureInstanceRequest {
            spec: Some(convert::spec(spec)),
            start,
            metadata: spec.metadata.clone(),
        };
        let st = self
            .client(t)?
            .ensure_instance(self.request_within(msg, WORK_TIMEOUT))
            .await
            .map_err(|st| agent_error(t.server, &t.address, "EnsureInstance", st))?
            .into_inner();
        convert::node_instance(st)
    }

    pub async fn start_instance(&self, t: &AgentTarget, id: InstanceId) -> Result<NodeInstance> {
        let msg = pb::InstanceRef { id: id.to_string() };
        let st = self
            .client(t)?
            .start_instance(self.request_within(msg, WORK_TIMEOUT))
            .await
            .map_err(|st| agent_error(t.server, &t.address, "StartInstance", st))?
            .into_inner();
        convert::node_instance(st)
    }

    pub async fn stop_instance(
        &self,
        t: &AgentTarget,
        id: InstanceId,
        reboot: bool,
    ) -> Result<NodeInstance> {
        let msg = pb::StopInstanceRequest {
            id: id.to_string(),
            timeout_seconds: 10,
        };
        let mut c = self.client(t)?;
        let req = self.request_within(msg, WORK_TIMEOUT);
        let (call, r) = if reboot {
            ("RebootInstance", c.reboot_instance(req).await)
        } else {
            ("StopInstance", c.stop_instance(req).await)
        };
        convert::node_instance(
            r.map_err(|st| agent_error(t.server, &t.address, call, st))?
                .into_inner(),
        )
    }

    /// Removes the instance from the node; a missing one is fine.
    pub async fn delete_instance(&self, t: &AgentTarget, id: InstanceId) -> Result<()> {
        let msg = pb::InstanceRef { id: id.to_string() };
        self.client(t)?
            .delete_instance(self.request_within(msg, WORK_TIMEOUT))
            .await
            .map_err(|st| agent_error(t.server, &t.address, "DeleteInstance", st))?;
        Ok(())
    }

    /// The instance as the node has it; None when the node does not have it.
    pub async fn get_instance(
        &self,
        t: &AgentTarget,
        id: InstanceId,
    ) -> Result<Option<NodeInstance>> {
        let msg = pb::InstanceRef { id: id.to_string() };
        match self.client(t)?.get_instance(self.request(msg)).await {
            Ok(r) => Ok(Some(convert::node_instance(r.into_inner())?)),
            Err(st) if st.code() == tonic::Code::NotFound => Ok(None),
            Err(st) => Err(agent_error(t.server, &t.address, "GetInstance", st)),
        }
    }

    /// The lock a server's sync of one set holds from compiling to pushing.
    pub fn push_lock(&self, server: ServerId, what: Pushed) -> PushLock {
        self.push_locks
            .lock()
            .expect("push locks")
            .entry((server, what))
            .or_default()
            .clone()
    }

    /// Whether this process saw this generation of the set applied on the server.
    fn seen(&self, server: ServerId, what: Pushed, generation: u64) -> bool {
        self.pushed
            .lock()
            .expect("pushed lock")
            .get(&(server, what))
            == Some(&generation)
    }

    /// The servers marked by `push_failed` since the last call.
    pub fn take_failed_pushes(&self) -> std::collections::HashSet<ServerId> {
        std::mem::take(&mut *self.failed_pushes.lock().expect("failed pushes"))
    }

    /// Marks a server whose sets must be pushed again.
    pub fn push_failed(&self, server: ServerId) {
        self.failed_pushes
            .lock()
            .expect("failed pushes")
            .insert(server);
    }

    fn saw(&self, server: ServerId, what: Pushed, generation: u64) {
        self.pushed
            .lock()
            .expect("pushed lock")
            .insert((server, what), generation);
    }

    /// Replaces the node's firewall unless this process saw this generation
    /// applied there already; returns whether it was sent.
    pub async fn apply_firewall(&self, t: &AgentTarget, set: pb::FirewallSet) -> Result<bool> {
        let generation = set.generation;
        if self.seen(t.server, Pushed::Firewall, generation) {
            return Ok(false);
        }
        self.client(t)?
            .apply_firewall(self.request(set))
            .await
            .map_err(|st| {
                self.push_failed(t.server);
                agent_error(t.server, &t.address, "ApplyFirewall", st)
            })?;
        self.saw(t.server, Pushed::Firewall, generation);
        Ok(true)
    }

    /// Replaces the node's overlay entries unless this process saw this
    /// generation applied there already; returns whether it was sent.
    pub async fn apply_overlay(&self, t: &AgentTarget, set: pb::OverlaySet) -> Result<bool> {
        let generation = set.generation;
        if self.seen(t.server, Pushed::Overlay, generation) {
            return Ok(false);
        }
        self.client(t)?
            .apply_overlay(self.request(set))
            .await
            .map_err(|st| {
                self.push_failed(t.server);
                agent_error(t.server, &t.address, "ApplyOverlay", st)
            })?;
        self.saw(t.server, Pushed::Overlay, generation);
        Ok(true)
    }

    /// Replaces what the instance reads through its metadata service (when
    /// the node has an older generation). A node without the instance is
    /// fine: it gets the metadata with the instance.
    pub async fn set_metadata(
        &self,
        t: &AgentTarget,
        id: InstanceId,
        metadata: pb::InstanceMetadata,
    ) -> Result<()> {
        let msg = pb::SetMetadataRequest {
            instance_id: id.to_string(),
            metadata: Some(metadata),
        };
        match self.client(t)?.set_metadata(self.request(msg)).await {
            Ok(_) => Ok(()),
            Err(st) if st.code() == tonic::Code::NotFound => Ok(()),
            Err(st) => Err(agent_error(t.server, &t.address, "SetMetadata", st)),
        }
    }

    /// Starts writing the instance as the file of `image` (see ExportImage).
    pub async fn export_image(
        &self,
        t: &AgentTarget,
        id: InstanceId,
        image: nereid_api::ImageId,
    ) -> Result<Export> {
        let msg = pb::ExportImageRequest {
            instance_id: id.to_string(),
            image_id: image.to_string(),
        };
        let stream = self
            .client(t)?
            .export_image(self.request_within(msg, EXPORT_TIMEOUT))
            .await
            .map_err(|st| agent_error(t.server, &t.address, "ExportImage", st))?
            .into_inner();
        Ok(Export {
            stream,
            server: t.server,
            address: t.address.clone(),
            trailer: None,
            failed: None,
        })
    }

    /// Snapshots the instance's dataset; an existing snapshot is fine.
    pub async fn create_snapshot(
        &self,
        t: &AgentTarget,
        id: InstanceId,
        name: &str,
    ) -> Result<pb::SnapshotInfo> {
        let msg = pb::SnapshotRef {
            instance_id: id.to_string(),
            name: name.into(),
        };
        Ok(self
            .client(t)?
            .create_snapshot(self.request_within(msg, WORK_TIMEOUT))
            .await
            .map_err(|st| agent_error(t.server, &t.address, "CreateSnapshot", st))?
            .into_inner())
    }

    /// Destroys a snapshot; a missing one (or instance) is fine.
    pub async fn delete_snapshot(&self, t: &AgentTarget, id: InstanceId, name: &str) -> Result<()> {
        let msg = pb::SnapshotRef {
            instance_id: id.to_string(),
            name: name.into(),
        };
        match self
            .client(t)?
            .delete_snapshot(self.request_within(msg, WORK_TIMEOUT))
            .await
        {
            Ok(_) => Ok(()),
            Err(st) if st.code() == tonic::Code::NotFound => Ok(()),
            Err(st) => Err(agent_error(t.server, &t.address, "DeleteSnapshot", st)),
        }
    }

    /// The instance's snapshots as its node has them (sizes now).
    pub async fn list_snapshots(
        &self,
        t: &AgentTarget,
        id: InstanceId,
    ) -> Result<Vec<pb::SnapshotInfo>> {
        let msg = pb::InstanceRef { id: id.to_string() };
        Ok(self
            .client(t)?
            .list_snapshots(self.request(msg))
            .await
            .map_err(|st| agent_error(t.server, &t.address, "ListSnapshots", st))?
            .into_inner()
            .snapshots)
    }

    /// Rolls a stopped instance back; the newer snapshots it destroyed.
    pub async fn rollback_snapshot(
        &self,
        t: &AgentTarget,
        id: InstanceId,
        name: &str,
    ) -> Result<Vec<String>> {
        let msg = pb::SnapshotRef {
            instance_id: id.to_string(),
            name: name.into(),
        };
        Ok(self
            .client(t)?
            .rollback_snapshot(self.request_within(msg, WORK_TIMEOUT))
            .await
            .map_err(|st| agent_error(t.server, &t.address, "RollbackSnapshot", st))?
            .into_inner()
            .destroyed)
    }

    pub async fn list_instances(&self, t: &AgentTarget) -> Result<Vec<NodeInstance>> {
        self.client(t)?
            .list_instances(self.request(pb::ListInstancesRequest {}))
            .await
            .map_err(|st| agent_error(t.server, &t.address, "ListInstances", st))?
            .into_inner()
            .instances
            .into_iter()
            .map(convert::node_instance)
            .collect()
    }

    /// The end of an instance's console log: (text, truncated).
    pub async fn console(
        &self,
        t: &AgentTarget,
        id: InstanceId,
        tail_lines: u32,
    ) -> Result<(String, bool)> {
        let msg = pb::GetConsoleRequest {
            id: id.to_string(),
            tail_lines,
        };
        let r = match self.client(t)?.get_console(self.request(msg)).await {
            Ok(r) => r.into_inner(),
            Err(st) if st.code() == tonic::Code::NotFound => {
                return Err(Error::Conflict(format!(
                    "server {} does not have instance {id} (yet or any more)",
                    t.server
                )));
            }
            Err(st) => return Err(agent_error(t.server, &t.address, "GetConsole", st)),
        };
        Ok((r.text, r.truncated))
    }

    /// The node's stream of state changes, one `NodeInstance` (without a
    /// spec: id, state, generation, reason) per change.
    pub async fn watch_events(
        &self,
        t: &AgentTarget,
    ) -> Result<impl futures::Stream<Item = NodeInstance> + use<>> {
        // The node's one connection (the channel's timeout bounds the
        // answer's start, not the stream after it): a connection per node,
        // not two, at 10,000 nodes.
        let stream = self
            .client(t)?
            .watch_events(self.request(pb::WatchEventsRequest {}))
            .await
            .map_err(|st| agent_error(t.server, &t.address, "WatchEvents", st))?
            .into_inner();
        // The stream ends at the first error (the watcher then lists again);
        // events in a state this headnode does not know are skipped.
        let events = futures::stream::unfold(stream, |mut s| async move {
            let ev = s.message().await.ok()??;
            Some((convert::event(ev), s))
        });
        Ok(futures::StreamExt::filter_map(events, |e| async move { e }))
    }
}

fn agent_error(id: ServerId, address: &str, call: &str, st: tonic::Status) -> Error {
    use tonic::Code;
    let message = format!(
        "the agent of server {id} at {address} failed {call}: {} ({:?})",
        st.message(),
        st.code()
    );
    if let Some(pb::ErrorReason::ImageMissing) = convert::error_reason(&st) {
        return Error::ImageMissingOnNode(message);
    }
    let refused = matches!(
        st.code(),
        Code::InvalidArgument
            | Code::DataLoss
            | Code::AlreadyExists
            | Code::Unimplemented
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::Unauthenticated
    );
    if refused {
        Error::AgentRefused(message)
    } else {
        Error::AgentUnavailable {
            server: id,
            message,
        }
    }
}
