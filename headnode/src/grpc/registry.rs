//! Registry: Register (join token -> server id + node credential) and Heartbeat.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use nereid_api::ServerId;
use nereid_proto::v1 as pb;
use nereid_proto::v1::registry_server::Registry;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::agent_client::convert;
use crate::db::NewServer;
use crate::secrets;

pub struct RegistryService {
    state: AppState,
}

impl RegistryService {
    pub fn new(state: AppState) -> Self {
        RegistryService { state }
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

/// The bearer secret of a call's metadata.
fn bearer<T>(req: &Request<T>) -> Option<String> {
    let v = req
        .metadata()
        .get(nereid_proto::AUTHORIZATION)?
        .to_str()
        .ok()?;
    v.strip_prefix("Bearer ").map(|s| s.trim().to_string())
}

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
        let node_credential = secrets::generate(secrets::Kind::NodeCredential);
        let control_key = secrets::generate(secrets::Kind::ControlKey);
        let new = NewServer {
            id: ServerId::new(),
            sysinfo: convert::sysinfo(sysinfo),
            agent_address: req.agent_address,
            agent_version: req.agent_version,
            credential_hash: secrets::hash(&node_credential),
            control_key: control_key.clone(),
        };
        match self
            .state
            .db
            .server_register(&secrets::hash(req.join_token.trim()), &new)
            .await
            .map_err(db_status)?
        {
            Ok(()) => {
                metrics.registrations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(server = %new.id, hostname = %new.sysinfo.hostname, machine_id = %new.sysinfo.machine_id,
                    address = %new.agent_address, "server registered");
                Ok(Response::new(pb::RegisterResponse {
                    server_id: new.id.to_string(),
                    node_credential,
                    control_key,
                    heartbeat_interval_ms: self.interval_ms(),
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
        let credential = bearer(&req)
            .ok_or_else(|| Status::unauthenticated("the node credential is required"))?;
        let req = req.into_inner();
        let id: ServerId = req
            .server_id
            .parse()
            .map_err(|_| Status::invalid_argument("server_id must be a UUID"))?;
        check_address(&req.agent_address)?;
        let usage = convert::usage(req.usage.unwrap_or_default());
        let sysinfo = req.sysinfo.map(convert::sysinfo);
        let accepted = self
            .state
            .db
            .server_heartbeat(
                id,
                &secrets::hash(&credential),
                &usage,
                &req.agent_address,
                &req.agent_version,
                sysinfo.as_ref(),
            )
            .await
            .map_err(db_status)?;
        if !accepted {
            self.state
                .metrics
                .heartbeats_refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(Status::unauthenticated(format!(
                "server {id} is unknown or the credential is wrong; if the server was deleted, re-join this node with a new join token"
            )));
        }
        self.state
            .metrics
            .heartbeats
            .fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::HeartbeatResponse {
            heartbeat_interval_ms: self.interval_ms(),
        }))
    }
}
