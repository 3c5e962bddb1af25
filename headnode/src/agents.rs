//! The headnode's clients to agents: one lazily-connected gRPC channel per
//! server, each call carrying that server's control key and the request id.
//!
//! It must never keep a channel for a deleted server or log a control key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nereid_api::{ServerId, ServerSetup};
use nereid_proto::v1::SetupRequest;
use nereid_proto::v1::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

#[derive(Clone, Default)]
pub struct AgentPool {
    channels: Arc<Mutex<HashMap<ServerId, (String, Channel)>>>,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl AgentPool {
    fn channel(&self, id: ServerId, address: &str) -> Result<Channel> {
        let mut map = self.channels.lock().expect("agent pool lock");
        if let Some((addr, ch)) = map.get(&id)
            && addr == address
        {
            return Ok(ch.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| {
                Error::Internal(format!(
                    "server {id} has an invalid agent address {address:?}: {e}"
                ))
            })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        map.insert(id, (address.to_string(), ch.clone()));
        Ok(ch)
    }

    pub fn forget(&self, id: ServerId) {
        self.channels.lock().expect("agent pool lock").remove(&id);
    }

    fn request<T>(&self, msg: T, control_key: &str) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Ok(v) = format!("Bearer {control_key}").parse() {
            req.metadata_mut().insert(nereid_proto::AUTHORIZATION, v);
        }
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
        control_key: &str,
        setup: &ServerSetup,
    ) -> Result<Vec<String>> {
        let mut client = AgentClient::new(self.channel(id, address)?);
        let msg = SetupRequest {
            zpool: setup.zpool.clone(),
            nic_tags: setup.nic_tags.clone().into_iter().collect(),
        };
        let resp = client
            .setup(self.request(msg, control_key))
            .await
            .map_err(|st| agent_error(id, address, "Setup", st))?;
        Ok(resp.into_inner().missing)
    }
}

fn agent_error(id: ServerId, address: &str, call: &str, st: tonic::Status) -> Error {
    Error::AgentUnavailable(format!(
        "the agent of server {id} at {address} failed {call}: {} ({:?})",
        st.message(),
        st.code()
    ))
}
