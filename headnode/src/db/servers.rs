//! Servers (compute nodes). A server's status is derived when it is read, from
//! its setup state and the age of its last heartbeat, so every headnode
//! sharing the database agrees on it without a background writer.

use chrono::{DateTime, Utc};
use nereid_api::{ImageId, Page, Server, ServerId, ServerSetup, ServerStatus, Sysinfo, Usage};
use sqlx::AssertSqlSafe;
use sqlx::types::Json;
use uuid::Uuid;

use super::Datastore;
use crate::error::{Error, Result};

/// What a registration records.
pub struct NewServer {
    pub id: ServerId,
    pub sysinfo: Sysinfo,
    pub agent_address: String,
    pub agent_version: String,
    /// The sha256 (hex) of the certificate issued at registration.
    pub cert_sha256: String,
    pub cert_not_after: DateTime<Utc>,
}

#[derive(Debug, Default, Clone)]
pub struct ServerFilter {
    pub status: Option<ServerStatus>,
    pub reserved: Option<bool>,
}

#[derive(sqlx::FromRow)]
struct ServerRow {
    id: Uuid,
    hostname: String,
    machine_id: String,
    status: String,
    reserved: bool,
    sysinfo: Json<Sysinfo>,
    setup: Option<Json<ServerSetup>>,
    usage: Option<Json<Usage>>,
    agent_address: String,
    agent_version: String,
    last_heartbeat: Option<DateTime<Utc>>,
    sync_error: Option<String>,
    cert_sha256: Option<String>,
    cert_not_after: Option<DateTime<Utc>>,
    cert_revoked_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl ServerRow {
    fn into_api(self) -> Result<Server> {
        let status = ServerStatus::parse(&self.status).ok_or_else(|| {
            Error::Internal(format!("server {} has status {:?}", self.id, self.status))
        })?;
        let status_reason = (status == ServerStatus::Unknown).then(|| {
            let at = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
            match (self.cert_revoked_at, self.cert_not_after, self.last_heartbeat) {
                (Some(r), _, _) => format!(
                    "its certificate was revoked at {}: rotate it to give the node a new one, or delete the server",
                    at(r)
                ),
                (None, Some(n), _) if n <= Utc::now() => format!(
                    "its certificate expired at {}: delete the server and join the node again",
                    at(n)
                ),
                (None, _, Some(h)) => format!("no heartbeat since {}", at(h)),
                (None, _, None) => "no heartbeat yet".to_string(),
            }
        });
        Ok(Server {
            id: self.id.into(),
            hostname: self.hostname,
            status,
            status_reason,
            reserved: self.reserved,
            machine_id: self.machine_id,
            sysinfo: self.sysinfo.0,
            setup: self.setup.map(|s| s.0),
            usage: self.usage.map(|u| u.0),
            agent_address: self.agent_address,
            agent_version: self.agent_version,
            last_heartbeat: self.last_heartbeat,
            sync_error: self.sync_error,
            certificate: match (self.cert_sha256, self.cert_not_after) {
                (Some(sha256), Some(not_after)) => Some(nereid_api::ServerCertificate {
                    sha256,
                    not_after,
                    revoked_at: self.cert_revoked_at,
                }),
                _ => None,
            },
            created_at: self.created_at,
        })
    }
}

/// A server's status, derived from a row of `servers`; `$1` is the
/// heartbeat deadline in seconds. A server whose certificate expired or was
/// revoked is `unknown` at once (its heartbeats are refused from then on).
macro_rules! server_status_sql {
    () => {
        "CASE WHEN last_heartbeat IS NULL OR last_heartbeat < now() - make_interval(secs => $1)
             OR cert_revoked_at IS NOT NULL OR cert_not_after <= now() THEN 'unknown'
         WHEN setup_state = 'setup' THEN 'running'
         ELSE setup_state END"
    };
}
pub(super) use server_status_sql;

/// The servers with their derived status; `$1` is the heartbeat deadline in seconds.
pub(super) const SERVERS: &str = concat!(
    "(SELECT id, hostname, machine_id, reserved, sysinfo, setup, usage, agent_address,
        agent_version, last_heartbeat, sync_error, cert_sha256, cert_not_after, cert_revoked_at,
        created_at, ",
    server_status_sql!(),
    " AS status FROM servers) s"
);

/// What starting a setup found.
pub enum SetupBegin {
    /// The server is now `setting_up`; call the agent.
    Started { agent_address: String },
    /// The server already has exactly this setup.
    AlreadyDone,
}

impl Datastore {
    /// Records, per server, why comparing it with its node failed (None: it
    /// worked), in one statement.
    pub async fn servers_set_sync_error(
        &self,
        outcomes: &[(ServerId, Option<String>)],
    ) -> Result<()> {
        let ids: Vec<Uuid> = outcomes.iter().map(|(s, _)| s.as_uuid()).collect();
        let errors: Vec<Option<&str>> = outcomes.iter().map(|(_, e)| e.as_deref()).collect();
        // Only rows whose error changed are written, locked in id order
        // (as the heartbeats' batches lock theirs: no deadlock between them).
        sqlx::query(
            "WITH b AS (SELECT * FROM unnest($1::uuid[], $2::text[]) AS b(id, error)),
                  locked AS (SELECT s.id FROM servers s JOIN b ON b.id = s.id
                              WHERE s.sync_error IS DISTINCT FROM b.error
                              ORDER BY s.id FOR NO KEY UPDATE OF s)
             UPDATE servers s SET sync_error = b.error
               FROM b JOIN locked l ON l.id = b.id
              WHERE s.id = b.id AND s.sync_error IS DISTINCT FROM b.error",
        )
        .bind(&ids)
        .bind(&errors)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn deadline_secs(&self) -> f64 {
        self.heartbeat_deadline.as_secs_f64()
    }

    pub async fn server_get(&self, id: ServerId) -> Result<Server> {
        sqlx::query_as::<_, ServerRow>(AssertSqlSafe(format!(
            "SELECT * FROM {SERVERS} WHERE id = $2"
        )))
        .bind(self.deadline_secs())
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::not_found("server", id))?
        .into_api()
    }

    pub async fn server_list(
        &self,
        filter: &ServerFilter,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<Server>> {
        let rows = sqlx::query_as::<_, ServerRow>(AssertSqlSafe(format!(
            "SELECT * FROM {SERVERS}
             WHERE ($2::text IS NULL OR status = $2) AND ($3::bool IS NULL OR reserved = $3)
               AND ($4::uuid IS NULL OR id > $4)
             ORDER BY id LIMIT $5"
        )))
        .bind(self.deadline_secs())
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.reserved)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let servers = rows
            .into_iter()
            .map(ServerRow::into_api)
            .collect::<Result<Vec<_>>>()?;
        Ok(super::into_page(servers, limit, |s| s.id.as_uuid()))
    }

    /// Counts servers by derived status (for metrics).
    pub async fn server_count_by_status(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "SELECT status, count(*) FROM {SERVERS} GROUP BY status ORDER BY status"
        )))
        .bind(self.deadline_secs())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records a heartbeat that brings a new sysinfo (heartbeats without one
    /// go through `server_heartbeats`, in batches): the heartbeat's row
    /// rules, then the sysinfo, in one transaction. Returns false if no
    /// server has this id and certificate.
    pub async fn server_heartbeat(&self, beat: &Beat, sysinfo: &Sysinfo) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let taken = heartbeat_rows(&mut *tx, std::slice::from_ref(beat)).await?;
        if taken.is_empty() {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE servers SET sysinfo = $2, hostname = COALESCE($2->>'hostname', hostname)
              WHERE id = $1",
        )
        .bind(beat.id.as_uuid())
        .bind(Json(sysinfo))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Records many heartbeats without sysinfo in one statement (a group
    /// commit); returns the servers whose row took theirs. The ids must be
    /// distinct.
    pub async fn server_heartbeats(&self, beats: &[Beat]) -> Result<Vec<ServerId>> {
        heartbeat_rows(&self.pool, beats).await
    }

    /// Moves an unset server to `setting_up`, or tells that this setup is done.
    pub async fn server_setup_begin(
        &self,
        id: ServerId,
        setup: &ServerSetup,
    ) -> Result<SetupBegin> {
        let started: Option<(String,)> = sqlx::query_as(
            "UPDATE servers SET setup_state = 'setting_up'
             WHERE id = $1 AND setup_state IN ('unsetup', 'setting_up') RETURNING agent_address",
        )
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        if let Some((agent_address,)) = started {
            return Ok(SetupBegin::Started { agent_address });
        }
        let current = self.server_get(id).await?;
        match current.setup {
            Some(existing)
                if serde_json::to_value(&existing).ok() == serde_json::to_value(setup).ok() =>
            {
                Ok(SetupBegin::AlreadyDone)
            }
            _ => Err(Error::Conflict(format!(
                "server {id} is already set up with another configuration; delete it and re-join the node to change it"
            ))),
        }
    }

    pub async fn server_setup_finish(&self, id: ServerId, setup: &ServerSetup) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE servers SET setup_state = 'setup', setup = $2 WHERE id = $1 AND setup_state = 'setting_up'")
            .bind(id.as_uuid())
            .bind(Json(setup))
            .execute(&mut *tx)
            .await?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("server.setup", "server", id),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn server_setup_abort(&self, id: ServerId) -> Result<()> {
        sqlx::query("UPDATE servers SET setup_state = 'unsetup' WHERE id = $1 AND setup_state = 'setting_up'")
            .bind(id.as_uuid())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn server_set_reserved(&self, id: ServerId, reserved: bool) -> Result<Server> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE servers SET reserved = $2 WHERE id = $1")
            .bind(id.as_uuid())
            .bind(reserved)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("server", id));
        }
        let action = if reserved {
            "server.reserve"
        } else {
            "server.unreserve"
        };
        crate::audit::record(&mut tx, crate::audit::Event::new(action, "server", id)).await?;
        tx.commit().await?;
        self.server_get(id).await
    }

    /// Records that a node may fetch an image (it is asked to ensure it).
    pub async fn image_grant(&self, server: ServerId, image: ImageId) -> Result<()> {
        sqlx::query(
            "INSERT INTO image_grants (server_id, image_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(server.as_uuid())
        .bind(image.as_uuid())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether the node presenting this certificate may fetch this image.
    pub async fn image_granted(&self, cert_sha256: &str, image: ImageId) -> Result<bool> {
        let row: Option<(i32,)> = sqlx::query_as(
            "SELECT 1 FROM servers s JOIN image_grants g ON g.server_id = s.id
             WHERE g.image_id = $2
               AND ((s.cert_sha256 = $1 AND s.cert_revoked_at IS NULL) OR s.cert_next_sha256 = $1)",
        )
        .bind(cert_sha256)
        .bind(image.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Starts a rotation: the certificate the node is about to install is
    /// accepted beside its current one.
    pub async fn server_cert_rotating(
        &self,
        id: ServerId,
        next_sha256: &str,
        not_after: DateTime<Utc>,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE servers SET cert_next_sha256 = $2, cert_not_after = $3 WHERE id = $1",
        )
        .bind(id.as_uuid())
        .bind(next_sha256)
        .bind(not_after)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("server", id));
        }
        Ok(())
    }

    /// The fingerprint of the datacenter's CA: the one recorded by the first
    /// headnode that started on this database (`ours`, if this is the first).
    pub async fn datacenter_ca(&self, ours: &str) -> Result<String> {
        sqlx::query("INSERT INTO datacenter_ca (ca_sha256) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(ours)
            .execute(&self.pool)
            .await?;
        let (recorded,): (String,) = sqlx::query_as("SELECT ca_sha256 FROM datacenter_ca")
            .fetch_one(&self.pool)
            .await?;
        Ok(recorded)
    }

    /// When `cert_sha256`, the server's certificate, was revoked (None: it
    /// was not, or it is not the server's certificate).
    pub async fn server_cert_revoked_at(
        &self,
        id: ServerId,
        cert_sha256: &str,
    ) -> Result<Option<DateTime<Utc>>> {
        let at: Option<(Option<DateTime<Utc>>,)> = sqlx::query_as(
            "SELECT cert_revoked_at FROM servers WHERE id = $1 AND cert_sha256 = $2",
        )
        .bind(id.as_uuid())
        .bind(cert_sha256)
        .fetch_optional(&self.pool)
        .await?;
        Ok(at.and_then(|a| a.0))
    }

    /// Revokes the server's certificate and any pending one; returns when
    /// (the first revocation's time, if it already was).
    pub async fn server_cert_revoke(&self, id: ServerId) -> Result<DateTime<Utc>> {
        let mut tx = self.pool.begin().await?;
        let at: Option<(DateTime<Utc>,)> = sqlx::query_as(
            "UPDATE servers SET cert_revoked_at = COALESCE(cert_revoked_at, now()), cert_next_sha256 = NULL
             WHERE id = $1 RETURNING cert_revoked_at",
        )
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?;
        let at = at.ok_or_else(|| Error::not_found("server", id))?.0;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("server.revoke_certificate", "server", id),
        )
        .await?;
        tx.commit().await?;
        Ok(at)
    }

    /// Ends a rotation: the node installed its new certificate, the old one
    /// is refused from now on.
    pub async fn server_cert_rotated(&self, id: ServerId, sha256: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE servers SET cert_sha256 = $2, cert_next_sha256 = NULL,
                    cert_revoked_at = CASE WHEN cert_next_sha256 = $2 THEN NULL ELSE cert_revoked_at END
             WHERE id = $1 AND (($2 = cert_sha256 AND cert_revoked_at IS NULL) OR $2 = cert_next_sha256)",
        )
        .bind(id.as_uuid())
        .bind(sha256)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            // Another rotation replaced this one meanwhile: the node holds a
            // certificate the database no longer expects.
            return Err(Error::Conflict(format!(
                "server {id}'s certificate changed during the rotation; rotate it again"
            )));
        }
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("server.rotate_certificate", "server", id),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a server no live instance is on (a placement waits for this
    /// transaction's row lock, then finds the server gone).
    pub async fn server_delete(&self, id: ServerId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let found: Option<(Uuid,)> =
            sqlx::query_as("SELECT id FROM servers WHERE id = $1 FOR UPDATE")
                .bind(id.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
        if found.is_none() {
            return Err(Error::not_found("server", id));
        }
        let (live,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM instances WHERE server_id = $1 AND state <> {}",
            super::states::INSTANCE_DELETED
        )))
        .bind(id.as_uuid())
        .fetch_one(&mut *tx)
        .await?;
        if live > 0 {
            return Err(Error::Conflict(format!(
                "server {id} has {live} instances; delete them (or move them) first"
            )));
        }
        sqlx::query("DELETE FROM servers WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("server.delete", "server", id),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Writes heartbeats (liveness, usage, address, version) to the rows that
/// take them, and returns those. The certificate rules live here alone: the
/// presented certificate becomes the server's; a rotation's new one retires
/// the old (and clears a revocation), while the old one leaves a pending
/// rotation alone; a revoked certificate is refused. Rows are locked in id
/// order, so two headnodes' batches cannot deadlock.
async fn heartbeat_rows<'e>(
    db: impl sqlx::PgExecutor<'e>,
    beats: &[Beat],
) -> Result<Vec<ServerId>> {
    let mut ids = Vec::with_capacity(beats.len());
    let (mut certs, mut usages, mut addrs, mut versions) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for b in beats {
        ids.push(b.id.as_uuid());
        certs.push(b.cert_sha256.as_str());
        usages.push(Json(&b.usage));
        addrs.push(b.agent_address.as_str());
        versions.push(b.agent_version.as_str());
    }
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        "WITH b AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[])
                      AS b(id, cert, usage, addr, version)),
              locked AS (SELECT s.id FROM servers s JOIN b ON b.id = s.id
                          WHERE (b.cert = s.cert_sha256 AND s.cert_revoked_at IS NULL)
                             OR b.cert = s.cert_next_sha256
                          ORDER BY s.id FOR NO KEY UPDATE OF s)
         UPDATE servers s SET last_heartbeat = now(), usage = b.usage, agent_address = b.addr,
                agent_version = b.version, cert_sha256 = b.cert,
                cert_next_sha256 = CASE WHEN s.cert_next_sha256 = b.cert THEN NULL ELSE s.cert_next_sha256 END,
                cert_revoked_at = CASE WHEN s.cert_next_sha256 = b.cert THEN NULL ELSE s.cert_revoked_at END
           FROM b JOIN locked l ON l.id = b.id
          WHERE s.id = b.id
            AND ((b.cert = s.cert_sha256 AND s.cert_revoked_at IS NULL) OR b.cert = s.cert_next_sha256)
         RETURNING s.id",
    )
    .bind(&ids)
    .bind(&certs)
    .bind(&usages)
    .bind(&addrs)
    .bind(&versions)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id.into()).collect())
}

/// One heartbeat without sysinfo, as `server_heartbeats` writes it.
#[derive(Debug, Clone)]
pub struct Beat {
    pub id: ServerId,
    pub cert_sha256: String,
    pub usage: Usage,
    pub agent_address: String,
    pub agent_version: String,
}
