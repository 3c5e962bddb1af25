//! The agent's gRPC service (headnode -> agent). Every call must carry the
//! control key the headnode issued at registration; others are refused.

use std::path::PathBuf;
use std::sync::Arc;

use nereid_proto::v1 as pb;
use nereid_proto::v1::agent_server::Agent;
use tonic::{Request, Response, Status};

use crate::identity::{self, Setup};
use crate::sysinfo;

pub struct AgentService {
    pub state_dir: PathBuf,
    pub overrides: sysinfo::Overrides,
}

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
}
