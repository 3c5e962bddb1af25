//! The change feed (`GET /v1/events`, server-sent events): state changes of
//! instances, jobs and servers, written by database triggers (migration
//! 0012) in the transaction that makes them. One pump per headnode reads
//! the new ones (woken by NOTIFY, or every second) and fans them out to its
//! clients through a bounded broadcast; a client that falls behind (or
//! resumes with `Last-Event-ID`) catches up from the table by its cursor.
//!
//! Only events of transactions older than every running one are read, in
//! (transaction id, event id) order, so the feed a client sees never changes
//! behind its cursor. It never writes events itself, and never buffers
//! without bound for a client that does not read: a stream is only produced
//! as fast as its client takes it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nereid_api::AccountId;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::broadcast;

/// Where a client is in the feed: (transaction id, event id).
pub type Cursor = (i64, i64);

/// One change.
#[derive(Debug, Clone)]
pub struct Event {
    pub cursor: Cursor,
    pub kind: String,
    /// Who may see it; None: operators only.
    pub owner: Option<AccountId>,
    pub at: DateTime<Utc>,
    pub body: Value,
}

impl Event {
    /// The SSE id a client sends back as `Last-Event-ID`.
    pub fn id(&self) -> String {
        format!("{}-{}", self.cursor.0, self.cursor.1)
    }

    pub fn visible_to(&self, scope: Option<AccountId>) -> bool {
        match scope {
            None => true,
            Some(a) => self.owner == Some(a),
        }
    }
}

/// Parses a `Last-Event-ID`: `<1-18 digits>-<1-18 digits>` (the OpenAPI
/// document's pattern), nothing around it.
pub fn parse_id(s: &str) -> Option<Cursor> {
    let (x, i) = s.split_once('-')?;
    let digits = |p: &str| (1..=18).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    if !(digits(x) && digits(i)) {
        return None;
    }
    Some((x.parse().ok()?, i.parse().ok()?))
}

/// How many events one read takes.
const BATCH: i64 = 500;
/// How long events are kept (a client resuming from further back gets a 410).
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);

type Row = (i64, i64, String, Option<uuid::Uuid>, DateTime<Utc>, Value);

fn event(r: Row) -> Event {
    Event {
        cursor: (r.0, r.1),
        kind: r.2,
        owner: r.3.map(Into::into),
        at: r.4,
        body: r.5,
    }
}

/// Events after `after` that are final (their transactions and every older
/// one ended), in order; `scope` keeps one account's.
pub async fn read(
    pool: &PgPool,
    after: Cursor,
    scope: Option<AccountId>,
    limit: i64,
) -> sqlx::Result<Vec<Event>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT xid, id, kind, owner, at, body FROM events
          WHERE (xid, id) > ($1, $2)
            AND xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
            AND ($3::uuid IS NULL OR owner = $3)
          ORDER BY xid, id LIMIT $4",
    )
    .bind(after.0)
    .bind(after.1)
    .bind(scope.map(|a| a.as_uuid()))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(event).collect())
}

/// The cursor of the newest final event (where a new client starts).
async fn head(pool: &PgPool) -> sqlx::Result<Cursor> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT xid, id FROM events
          WHERE xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
          ORDER BY xid DESC, id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.unwrap_or((0, 0)))
}

/// Whether a client can resume after `cursor` without a gap: its event is
/// still kept, or it is not older than the oldest kept (retention deletes
/// from the oldest).
pub async fn resumable(pool: &PgPool, cursor: Cursor) -> sqlx::Result<bool> {
    let (kept,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM events WHERE xid = $1::bigint AND id = $2::bigint)
             OR NOT EXISTS (SELECT 1 FROM events WHERE (xid, id) > ($1::bigint, $2::bigint))
             OR ($1::bigint, $2::bigint) >= (SELECT xid, id FROM events ORDER BY xid, id LIMIT 1)",
    )
    .bind(cursor.0)
    .bind(cursor.1)
    .fetch_one(pool)
    .await?;
    Ok(kept)
}

/// A headnode's fan-out of the feed.
#[derive(Clone)]
pub struct Feed {
    tx: broadcast::Sender<Arc<Event>>,
    head: Arc<std::sync::Mutex<Cursor>>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new()
    }
}

impl Feed {
    pub fn new() -> Feed {
        Feed {
            tx: broadcast::channel(4096).0,
            head: Arc::new(std::sync::Mutex::new((0, 0))),
        }
    }

    /// Subscribes, and says up to where the pump has published: events
    /// after that cursor come through the receiver.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Event>>, Cursor) {
        let rx = self.tx.subscribe();
        (rx, *self.head.lock().expect("feed head"))
    }

    pub fn clients(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Reads new events and publishes them, forever; also drops events past
    /// their retention.
    pub async fn pump(self, pool: PgPool) {
        let mut cursor = loop {
            match head(&pool).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!("reading the event feed's head: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        *self.head.lock().expect("feed head") = cursor;
        let mut listener = None;
        let mut last_trim = std::time::Instant::now() - Duration::from_secs(3600);
        loop {
            if listener.is_none() {
                listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                    Ok(mut l) => match l.listen("nereid_events").await {
                        Ok(()) => Some(l),
                        Err(_) => None,
                    },
                    Err(_) => None,
                };
            }
            match read(&pool, cursor, None, BATCH).await {
                Ok(events) => {
                    let full = events.len() as i64 == BATCH;
                    for e in events {
                        cursor = e.cursor;
                        *self.head.lock().expect("feed head") = cursor;
                        let _ = self.tx.send(Arc::new(e));
                    }
                    if full {
                        continue;
                    }
                }
                Err(e) => tracing::warn!("reading the event feed: {e}"),
            }
            if last_trim.elapsed() > Duration::from_secs(600) {
                last_trim = std::time::Instant::now();
                let _ =
                    sqlx::query("DELETE FROM events WHERE at < now() - make_interval(secs => $1)")
                        .bind(RETENTION.as_secs_f64())
                        .execute(&pool)
                        .await;
            }
            // A NOTIFY wakes it at once; a transaction that was still
            // running holds events back, so look again soon regardless.
            let wait = Duration::from_millis(250);
            match listener.as_mut() {
                Some(l) => {
                    if let Ok(Err(_)) = tokio::time::timeout(wait, l.recv()).await {
                        listener = None;
                    }
                }
                None => tokio::time::sleep(wait).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_ids_round_trip() {
        assert_eq!(super::parse_id("123-45"), Some((123, 45)));
        assert_eq!(super::parse_id(" 7-8 "), None);
        assert_eq!(super::parse_id("+7-8"), None);
        assert_eq!(super::parse_id("1234567890123456789-1"), None);
        assert_eq!(super::parse_id("x-1"), None);
        assert_eq!(super::parse_id("12"), None);
    }
}
