//! GET /v1/events: the change feed as server-sent events. Tenants get their
//! own instances' and jobs' changes, operators everything (servers too).
//! Resumable: a client sends back the last `id` it saw as `Last-Event-ID`.

use crate::authz::Action;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use nereid_api::{AccountId, ErrorBody, InstanceId};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use super::{ApiQuery, OpContext};
use crate::AppState;
use crate::error::{Error, Result};
use crate::events::{self, Cursor, Event};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Only the changes of this instance and of its jobs.
    pub instance: Option<InstanceId>,
    /// Resume after this event id (as `Last-Event-ID` does; the header wins).
    #[param(pattern = "^[0-9]{1,18}-[0-9]{1,18}$")]
    pub after: Option<String>,
}

/// What one client's stream works with.
struct Follow {
    state: AppState,
    scope: Option<AccountId>,
    instance: Option<String>,
    cursor: Cursor,
    rx: tokio::sync::broadcast::Receiver<Arc<Event>>,
    pending: VecDeque<Event>,
    catching_up: bool,
}

impl Follow {
    fn wanted(&self, e: &Event) -> bool {
        e.visible_to(self.scope)
            && self.instance.as_deref().is_none_or(|id| {
                e.body["id"].as_str() == Some(id) || e.body["instance_id"].as_str() == Some(id)
            })
    }

    /// The next event for this client; None ends the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                if self.wanted(&e) {
                    return Some(e);
                }
                continue;
            }
            if self.catching_up {
                let batch = events::read(self.state.db.pool(), self.cursor, self.scope, 500)
                    .await
                    .ok()?;
                self.catching_up = batch.len() == 500;
                if let Some(last) = batch.last() {
                    self.cursor = last.cursor;
                }
                self.pending.extend(batch);
                continue;
            }
            match self.rx.recv().await {
                Ok(e) if e.cursor > self.cursor => {
                    self.cursor = e.cursor;
                    if self.wanted(&e) {
                        return Some((*e).clone());
                    }
                }
                Ok(_) => {}
                // It fell behind the fan-out: read from the table instead.
                Err(RecvError::Lagged(_)) => self.catching_up = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

fn sse(e: &Event) -> SseEvent {
    let mut body = e.body.clone();
    body["at"] = serde_json::json!(e.at);
    SseEvent::default()
        .id(e.id())
        .event(e.kind.clone())
        .data(body.to_string())
}

/// Server-sent events of state changes: `event` is `instance`, `job` or
/// `server`, `data` the JSON of the change (`type`, `id`, `state`, ...,
/// `at`), `id` what to send back as `Last-Event-ID` to resume after it.
/// Events are kept for 24 hours.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventParams,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = "^[0-9]{1,18}-[0-9]{1,18}$",
            description = "Resume after this event")),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub async fn events(
    State(s): State<AppState>,
    p: OpContext,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventParams>,
) -> Result<Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>>>> {
    let scope = p.authorize(Action::EventsRead)?;
    if let Some(id) = q.instance {
        s.db.instance_get(id, scope).await?;
    }
    // (An empty header is no header.)
    let asked = match headers.get("last-event-id").filter(|v| !v.is_empty()) {
        Some(v) => Some(v.to_str().unwrap_or_default().to_string()),
        None => q.after.clone(),
    };
    let resume = asked
        .map(|a| {
            events::parse_id(&a).ok_or_else(|| {
                Error::invalid("Last-Event-ID", "an event id from this feed, as `123-45`")
            })
        })
        .transpose()?;
    let (rx, head) = s.events.subscribe();
    if let Some(from) = resume
        && !events::resumable(s.db.pool(), from).await?
    {
        return Err(Error::Gone(format!(
            "events after {}-{} are no longer all kept (24 hours); start again without Last-Event-ID",
            from.0, from.1
        )));
    }
    let follow = Follow {
        state: s.clone(),
        scope,
        instance: q.instance.map(|i| i.to_string()),
        cursor: resume.unwrap_or(head),
        rx,
        pending: VecDeque::new(),
        catching_up: resume.is_some(),
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        let e = f.next().await?;
        Some((Ok(sse(&e)), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
