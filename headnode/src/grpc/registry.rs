//! Registry: Register (join token + public key -> server id + certificate),
//! Heartbeat and FetchImage (identified by the certificate the node
//! presented in the TLS handshake).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use nereid_api::{ImageId, ServerId};
use nereid_proto::v1 as pb;
use nereid_proto::v1::registry_server::Registry;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::agent_client::convert;
use crate::db::NewServer;
use crate::secrets;

pub struct RegistryService {
    state: AppState,
    heartbeats: crate::heartbeats::Heartbeats,
}

impl RegistryService {
    /// Starts the heartbeats' writer on the state's datastore.
    pub fn new(state: AppState) -> Self {
        let heartbeats = crate::heartbeats::Heartbeats::start(state.db.clone());
        RegistryService { state, heartbeats }
    }

    fn interval_ms(&self) -> u32 {
        self.state.config.heartbeat_interval.as_millis() as u32
    }
}

fn db_status(e: crate::error::Error) -> Status {
    tracing::error!(error = %crate::error::chain(&e), "registry database error");
    Status::unavailable("the headnode's database failed; retry")
}

fn check_address(addr: &str) -> Result<(), Status> {
    addr.parse::<SocketAddr>().map(|_| ()).map_err(|_| {
        Status::invalid_argument(format!(
            "agent_address must be IP:port, got {:?}",
            crate::validate::truncate(addr)
        ))
    })
}

/// The sha256 of the certificate the caller presented (verified against the
/// CA in the handshake).
fn peer_cert<T>(req: &Request<T>) -> Result<String, Status> {
    req.extensions()
        .get::<nereid_tls::Peer>()
        .and_then(|p| p.cert_sha256.clone())
        .ok_or_else(|| {
            Status::unauthenticated("this call needs the node's certificate (join the node first)")
        })
}

/// The secret of a join token (an agent sends it without the CA's
/// fingerprint; a whole token works too).
fn join_secret(token: &str) -> &str {
    nereid_tls::split_join_token(token).map_or(token.trim(), |(secret, _)| secret)
}

/// Image files stream in pieces of this size.
const CHUNK: usize = 256 << 10;

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = req.into_inner();
        let metrics = &self.state.metrics;
        if req.join_token.trim().is_empty() {
            return Err(Status::unauthenticated("a join token is required"));
        }
        let sysinfo = req
            .sysinfo
            .ok_or_else(|| Status::invalid_argument("sysinfo is required"))?;
        if sysinfo.machine_id.trim().is_empty() || sysinfo.machine_id.len() > 128 {
            return Err(Status::invalid_argument(
                "sysinfo.machine_id must be 1..=128 characters",
            ));
        }
        if sysinfo.hostname.is_empty() || sysinfo.hostname.len() > 255 {
            return Err(Status::invalid_argument(
                "sysinfo.hostname must be 1..=255 characters",
            ));
        }
        check_address(&req.agent_address)?;
        let id = ServerId::new();
        let issued = self
            .state
            .pki
            .issue_node(id, &req.public_key)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let new = NewServer {
            id,
            sysinfo: convert::sysinfo(sysinfo),
            agent_address: req.agent_address,
            agent_version: req.agent_version,
            cert_sha256: issued.sha256,
            cert_not_after: issued.not_after,
        };
        match self
            .state
            .db
            .server_register(&secrets::hash(join_secret(&req.join_token)), &new)
            .await
            .map_err(db_status)?
        {
            Ok(()) => {
                metrics.registrations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(server = %new.id, hostname = %new.sysinfo.hostname, machine_id = %new.sysinfo.machine_id,
                    address = %new.agent_address, "server registered");
                Ok(Response::new(pb::RegisterResponse {
                    server_id: new.id.to_string(),
                    heartbeat_interval_ms: self.interval_ms(),
                    certificate_pem: issued.pem,
                    ca_pem: self.state.pki.ca_pem().to_string(),
                }))
            }
            Err(refusal) => {
                metrics
                    .registrations_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(machine_id = %new.sysinfo.machine_id, "registration refused: {refusal}");
                Err(match refusal {
                    crate::db::JoinTokenRefusal::MachineAlreadyRegistered { .. } => {
                        Status::already_exists(refusal.to_string())
                    }
                    _ => Status::permission_denied(refusal.to_string()),
                })
            }
        }
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let cert = peer_cert(&req)?;
        let req = req.into_inner();
        let id: ServerId = req
            .server_id
            .parse()
            .map_err(|_| Status::invalid_argument("server_id must be a UUID"))?;
        check_address(&req.agent_address)?;
        let usage = convert::usage(req.usage.unwrap_or_default());
        let beat = crate::db::Beat {
            id,
            cert_sha256: cert.clone(),
            usage,
            agent_address: req.agent_address,
            agent_version: req.agent_version,
        };
        let accepted = match req.sysinfo.map(convert::sysinfo) {
            // The usual heartbeat: written with others in one statement.
            None => self.heartbeats.record(beat).await,
            Some(sysinfo) => self.state.db.server_heartbeat(&beat, &sysinfo).await,
        }
        .map_err(db_status)?;
        if !accepted {
            self.state
                .metrics
                .heartbeats_refused
                .fetch_add(1, Ordering::Relaxed);
            let revoked = self
                .state
                .db
                .server_cert_revoked_at(id, &cert)
                .await
                .map_err(db_status)?;
            return Err(Status::unauthenticated(match revoked {
                Some(at) => format!(
                    "server {id}'s certificate was revoked at {at}; an operator can rotate it (nereid server rotate-certificate) or delete the server"
                ),
                None => format!(
                    "server {id} is unknown or this is not its certificate; if the server was deleted, re-join this node with a new join token"
                ),
            }));
        }
        self.state
            .metrics
            .heartbeats
            .fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::HeartbeatResponse {
            heartbeat_interval_ms: self.interval_ms(),
        }))
    }

    type FetchImageStream = futures::stream::BoxStream<'static, Result<pb::ImageData, Status>>;

    async fn fetch_image(
        &self,
        req: Request<pb::FetchImageRequest>,
    ) -> Result<Response<Self::FetchImageStream>, Status> {
        let cert = peer_cert(&req)?;
        let req = req.into_inner();
        let id: ImageId = req
            .image_id
            .parse()
            .map_err(|_| Status::invalid_argument("image_id must be a UUID"))?;
        let db = &self.state.db;
        // A node may fetch what it was asked to ensure, nothing else; an
        // image it may not see is answered as missing.
        let missing = || Status::not_found(format!("image {id} is not known to this node"));
        if !db.image_granted(&cert, id).await.map_err(db_status)? {
            return Err(missing());
        }
        let file = match db.image_get(id, None).await {
            Ok(image) => image.file.ok_or_else(missing)?,
            Err(crate::error::Error::NotFound { .. }) => return Err(missing()),
            Err(e) => return Err(db_status(e)),
        };
        if req.offset > file.size {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of image {id}'s file ({} bytes)",
                req.offset, file.size
            )));
        }
        let path = self.state.images.path_of(&file.sha256);
        let mut f = tokio::fs::File::open(&path).await.map_err(|e| {
            tracing::error!(image = %id, "opening {}: {e}", path.display());
            Status::internal(format!("the headnode cannot read image {id}'s file"))
        })?;
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        f.seek(std::io::SeekFrom::Start(req.offset))
            .await
            .map_err(|e| Status::internal(format!("seeking image {id}'s file: {e}")))?;
        let total = file.size;
        tracing::info!(image = %id, offset = req.offset, size = total, "image file served");
        let reader = f.take(total - req.offset);
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, CHUNK);
        use futures::StreamExt;
        Ok(Response::new(
            stream
                .map(move |chunk| match chunk {
                    Ok(data) => Ok(pb::ImageData {
                        data: data.to_vec(),
                        total,
                    }),
                    Err(e) => Err(Status::internal(format!("reading image {id}'s file: {e}"))),
                })
                .boxed(),
        ))
    }
}
