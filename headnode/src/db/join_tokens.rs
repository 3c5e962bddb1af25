//! Join tokens: single-use, expiring secrets that let one node register.
//! Consuming a token and recording the server happen in one transaction, so a
//! refused registration leaves the token as it was and records nothing.

use chrono::{DateTime, Utc};
use nereid_api::{AccountId, JoinTokenId, ServerId};
use uuid::Uuid;

use super::{Datastore, NewServer, is_unique_violation};
use crate::error::Result;

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenRefusal {
    #[error("the join token is unknown (was it copied whole?)")]
    Unknown,
    #[error(
        "the join token was already used at {0}; create a new one with `nereid server join-token create`"
    )]
    AlreadyUsed(DateTime<Utc>),
    #[error(
        "the join token expired at {0}; create a new one with `nereid server join-token create`"
    )]
    Expired(DateTime<Utc>),
    #[error(
        "machine id {machine_id} is already registered as server {server}; delete that server first to re-join this machine"
    )]
    MachineAlreadyRegistered {
        machine_id: String,
        server: ServerId,
    },
}

impl Datastore {
    pub async fn join_token_create(
        &self,
        created_by: AccountId,
        secret_hash: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<JoinTokenId> {
        let id = JoinTokenId::new();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO join_tokens (id, secret_hash, created_by, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(id.as_uuid())
            .bind(secret_hash)
            .bind(created_by.as_uuid())
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("join_token.create", "join_token", id),
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Consumes the join token and records the new server, atomically.
    pub async fn server_register(
        &self,
        join_hash: &[u8],
        new: &NewServer,
    ) -> Result<std::result::Result<(), JoinTokenRefusal>> {
        let mut tx = self.pool.begin().await?;
        let used: Option<(Uuid,)> = sqlx::query_as(
            "UPDATE join_tokens SET used_at = now(), used_by_server = $2
             WHERE secret_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING id",
        )
        .bind(join_hash)
        .bind(new.id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        if used.is_none() {
            let row: Option<(Option<DateTime<Utc>>, DateTime<Utc>)> = sqlx::query_as(
                "SELECT used_at, expires_at FROM join_tokens WHERE secret_hash = $1",
            )
            .bind(join_hash)
            .fetch_optional(&mut *tx)
            .await?;
            return Ok(Err(match row {
                None => JoinTokenRefusal::Unknown,
                Some((Some(used_at), _)) => JoinTokenRefusal::AlreadyUsed(used_at),
                Some((None, expires_at)) => JoinTokenRefusal::Expired(expires_at),
            }));
        }
        let inserted = sqlx::query(
            "INSERT INTO servers (id, hostname, machine_id, sysinfo, agent_address, agent_version,
                                  cert_sha256, cert_not_after, last_heartbeat)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())",
        )
        .bind(new.id.as_uuid())
        .bind(&new.sysinfo.hostname)
        .bind(&new.sysinfo.machine_id)
        .bind(sqlx::types::Json(&new.sysinfo))
        .bind(&new.agent_address)
        .bind(&new.agent_version)
        .bind(&new.cert_sha256)
        .bind(new.cert_not_after)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e, "servers_machine_id_key") => {
                drop(tx);
                let (server,): (Uuid,) =
                    sqlx::query_as("SELECT id FROM servers WHERE machine_id = $1")
                        .bind(&new.sysinfo.machine_id)
                        .fetch_one(&self.pool)
                        .await?;
                return Ok(Err(JoinTokenRefusal::MachineAlreadyRegistered {
                    machine_id: new.sysinfo.machine_id.clone(),
                    server: server.into(),
                }));
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        Ok(Ok(()))
    }
}
