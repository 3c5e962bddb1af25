//! Reading the audit log (entries are written by `crate::audit`, inside the
//! transactions of the mutations they record).

use chrono::{DateTime, Utc};
use nereid_api::{AccountId, AuditEntry, Page};
use uuid::Uuid;

use super::{Datastore, into_page};
use crate::error::Result;

/// Which entries to list.
#[derive(Debug, Default)]
pub struct AuditFilter {
    /// Only entries this account made or whose target it owns (a tenant's
    /// view of the log).
    pub visible_to: Option<AccountId>,
    pub actor: Option<AccountId>,
    pub target: Option<String>,
    /// Actions starting with this (`instance.` for all instance changes).
    pub action_prefix: Option<String>,
    /// Only failed requests.
    pub failed_only: bool,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: Uuid,
    at: DateTime<Utc>,
    actor: Option<Uuid>,
    actor_role: String,
    action: String,
    target_kind: String,
    target_id: String,
    owner: Option<Uuid>,
    request_id: String,
    source: Option<String>,
    result: String,
    message: Option<String>,
}

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> AuditEntry {
        AuditEntry {
            id: r.id,
            at: r.at,
            actor: r.actor.map(Into::into),
            actor_role: r.actor_role,
            action: r.action,
            target_kind: r.target_kind,
            target_id: r.target_id,
            owner: r.owner.map(Into::into),
            request_id: r.request_id,
            source: r.source,
            result: r.result,
            message: r.message,
        }
    }
}

impl Datastore {
    /// Entries newest first (ids are time-ordered); `before` is the page
    /// token, the last id of the previous page.
    pub async fn audit_list(
        &self,
        f: &AuditFilter,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<AuditEntry>> {
        let prefix = f.action_prefix.as_deref().map(|p| {
            format!(
                "{}%",
                p.replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            )
        });
        let rows = sqlx::query_as::<_, AuditRow>(
            "SELECT id, at, actor, actor_role, action, target_kind, target_id, owner, request_id,
                    host(source) AS source, result, message
             FROM audit_log
             WHERE ($1::uuid IS NULL OR actor = $1 OR owner = $1)
               AND ($2::uuid IS NULL OR actor = $2)
               AND ($3::text IS NULL OR target_id = $3)
               AND ($4::text IS NULL OR action LIKE $4)
               AND (NOT $5 OR result <> 'ok')
               AND ($6::uuid IS NULL OR id < $6)
             ORDER BY id DESC LIMIT $7",
        )
        .bind(f.visible_to.map(|a| a.as_uuid()))
        .bind(f.actor.map(|a| a.as_uuid()))
        .bind(f.target.as_deref())
        .bind(prefix)
        .bind(f.failed_only)
        .bind(before)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(into_page(
            rows.into_iter().map(AuditEntry::from).collect(),
            limit,
            |e| e.id,
        ))
    }
}
