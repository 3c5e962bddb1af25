//! The audit log: who did what to which resource, from where, under which
//! request id, and how it ended. A mutation that succeeds writes its entry
//! in its own transaction (`record`), so there is never a change without
//! its entry; a mutating request that fails gets an entry with its error
//! code after the fact (`FailureLog`, fed by the request middleware and
//! written by one background task through a bounded queue).
//!
//! It must never let logging a failure slow the requests down or grow
//! without bound: a full queue drops entries and counts them.
//!
//! The actor comes from the request's context (`CONTEXT`), set by the
//! request middleware and filled by authentication; work with no request
//! behind it (jobs, the reconciler) is recorded as the system's.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use nereid_api::{AccountId, Role};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::error::Result;
use crate::metrics::Metrics;

/// Who is acting in the request being served.
#[derive(Debug, Clone, Copy)]
pub struct Actor {
    pub account: AccountId,
    pub role: Role,
}

/// The request's context, as the audit log needs it.
#[derive(Debug, Default)]
pub struct RequestContext {
    pub request_id: String,
    pub source: Option<IpAddr>,
    /// Set once the request authenticated.
    pub actor: Mutex<Option<Actor>>,
    /// Set by the first mutation recorded: a failure after it is not
    /// recorded again.
    pub recorded: Mutex<bool>,
}

tokio::task_local! {
    pub static CONTEXT: Arc<RequestContext>;
}

/// Notes the authenticated caller of the current request.
pub fn set_actor(actor: Actor) {
    let _ = CONTEXT.try_with(|c| *c.actor.lock().expect("actor") = Some(actor));
}

/// What a mutation did.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// `<resource>.<verb>`, e.g. `instance.create`.
    pub action: &'a str,
    pub target_kind: &'a str,
    pub target_id: String,
    /// The account the target belongs to (who may read the entry besides
    /// operators and the actor).
    pub owner: Option<AccountId>,
}

impl<'a> Event<'a> {
    pub fn new(action: &'a str, target_kind: &'a str, target_id: impl ToString) -> Event<'a> {
        Event {
            action,
            target_kind,
            target_id: target_id.to_string(),
            owner: None,
        }
    }

    pub fn owned_by(mut self, owner: AccountId) -> Event<'a> {
        self.owner = Some(owner);
        self
    }
}

fn who() -> (Option<Uuid>, String, String, Option<IpAddr>) {
    CONTEXT
        .try_with(|c| {
            let actor = *c.actor.lock().expect("actor");
            (
                actor.map(|a| a.account.as_uuid()),
                actor
                    .map(|a| a.role.as_str().to_string())
                    .unwrap_or_else(|| "anonymous".into()),
                c.request_id.clone(),
                c.source,
            )
        })
        .unwrap_or_else(|_| {
            (
                None,
                "system".to_string(),
                crate::error::current_request_id(),
                None,
            )
        })
}

const INSERT: &str =
    "INSERT INTO audit_log (id, actor, actor_role, action, target_kind, target_id, owner,
        request_id, source, result, message)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::inet, $10, $11)";

/// Writes a successful mutation's entry inside its transaction.
pub async fn record(tx: &mut Transaction<'_, Postgres>, e: Event<'_>) -> Result<()> {
    let (actor, role, request_id, source) = who();
    sqlx::query(INSERT)
        .bind(Uuid::now_v7())
        .bind(actor)
        .bind(role)
        .bind(e.action)
        .bind(e.target_kind)
        .bind(&e.target_id)
        .bind(e.owner.map(|o| o.as_uuid()))
        .bind(request_id)
        .bind(source.map(|s| s.to_string()))
        .bind("ok")
        .bind(None::<String>)
        .execute(&mut **tx)
        .await?;
    let _ = CONTEXT.try_with(|c| *c.recorded.lock().expect("recorded") = true);
    Ok(())
}

/// What an error response carries for the audit log (put in the
/// response's extensions by `Error::into_response`).
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
}

/// Whether requests with this method change something (and are audited).
pub fn is_mutation(m: &axum::http::Method) -> bool {
    !matches!(
        *m,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    )
}

/// The action of a failed request: its method and path, ids replaced by
/// `{id}` (e.g. `DELETE /v1/instances/{id}`), so failures group by route.
pub fn failed_action(method: &axum::http::Method, path: &str) -> String {
    let route: Vec<&str> = path
        .split('/')
        .map(|seg| {
            if seg.parse::<Uuid>().is_ok() || seg.parse::<IpAddr>().is_ok() {
                "{id}"
            } else {
                seg
            }
        })
        .collect();
    format!("{method} {}", route.join("/"))
}

/// A failed request waiting to be written.
struct FailedRequest {
    actor: Actor,
    request_id: String,
    source: Option<IpAddr>,
    action: String,
    target: String,
    failure: Failure,
}

/// How many failed requests may wait to be written; past it they are
/// dropped and counted (`nereid_audit_failures_dropped_total`).
const FAILURE_QUEUE: usize = 4096;

/// The writer of failed requests' entries: one task, one connection at a
/// time, in batches, so a burst of failures never competes with the
/// requests themselves for the database.
#[derive(Clone)]
pub struct FailureLog {
    tx: tokio::sync::mpsc::Sender<FailedRequest>,
    metrics: Arc<Metrics>,
}

impl FailureLog {
    /// Starts the writer on `pool`.
    pub fn start(pool: PgPool, metrics: Arc<Metrics>) -> FailureLog {
        let (tx, rx) = tokio::sync::mpsc::channel(FAILURE_QUEUE);
        tokio::spawn(write_failures(pool, rx));
        FailureLog { tx, metrics }
    }

    /// Queues the entry of a mutating request that failed (the failure
    /// rolled back whatever it had begun). Requests that never
    /// authenticated, refusals by the rate limits, and failures after a
    /// change was recorded are not logged: the first two are counted in the
    /// metrics (one row each would let a flood write rows).
    pub fn submit(&self, ctx: &RequestContext, action: String, target: String, failure: Failure) {
        if *ctx.recorded.lock().expect("recorded") || failure.code == "TooManyRequests" {
            return;
        }
        let Some(actor) = *ctx.actor.lock().expect("actor") else {
            return;
        };
        let entry = FailedRequest {
            actor,
            request_id: ctx.request_id.clone(),
            source: ctx.source,
            action,
            target,
            failure,
        };
        if self.tx.try_send(entry).is_err() {
            self.metrics
                .audit_failures_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

async fn write_failures(pool: PgPool, mut rx: tokio::sync::mpsc::Receiver<FailedRequest>) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        if let Err(e) = write_batch(&pool, &batch).await {
            tracing::warn!(
                entries = batch.len(),
                "writing the audit entries of failed requests failed: {e}"
            );
        }
        batch.clear();
    }
}

async fn write_batch(pool: &PgPool, batch: &[FailedRequest]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    for f in batch {
        sqlx::query(INSERT)
            .bind(Uuid::now_v7())
            .bind(f.actor.account.as_uuid())
            .bind(f.actor.role.as_str())
            .bind(&f.action)
            .bind("request")
            .bind(&f.target)
            .bind(f.actor.account.as_uuid())
            .bind(&f.request_id)
            .bind(f.source.map(|s| s.to_string()))
            .bind(f.failure.code)
            .bind(f.failure.message.chars().take(500).collect::<String>())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
