//! Server setup: the operator's choice of zpool, nic tags and traits, checked
//! on the node by its agent before the server becomes `running`.
//!
//! The server is `setting_up` only while the agent is being asked; any failure
//! puts it back to `unsetup`, and a repeated setup with the same values is a
//! no-op, so a retried request is harmless.

use nereid_api::{Server, ServerId, ServerSetup, ServerStatus};

use crate::AppState;
use crate::db::SetupBegin;
use crate::error::{Error, Result};

pub async fn setup_server(s: &AppState, id: ServerId, setup: &ServerSetup) -> Result<Server> {
    let server = s.db.server_get(id).await?;
    if server.status == ServerStatus::Unknown {
        return Err(Error::Conflict(format!(
            "server {id} is not heartbeating (status unknown); start its agent and try again"
        )));
    }
    let address = match s.db.server_setup_begin(id, setup).await? {
        SetupBegin::AlreadyDone => return s.db.server_get(id).await,
        SetupBegin::Started { agent_address } => agent_address,
    };
    let outcome = s.agents.setup(id, &address, setup).await;
    match outcome {
        Ok(missing) if missing.is_empty() => {
            s.db.server_setup_finish(id, setup).await?;
            tracing::info!(server = %id, zpool = %setup.zpool, "server set up");
            s.db.server_get(id).await
        }
        Ok(missing) => {
            s.db.server_setup_abort(id).await?;
            Err(Error::InvalidArgument(format!(
                "server {id} cannot be set up, it stays unsetup: {}",
                missing.join("; ")
            )))
        }
        Err(e) => {
            s.db.server_setup_abort(id).await?;
            Err(e)
        }
    }
}
