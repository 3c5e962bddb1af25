//! A small REST client for tests: every call returns the status and the JSON
//! body (or Null), with a timeout so a hang fails the test instead of stalling it.

use std::time::Duration;

use serde_json::Value;

#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Api {
        Api {
            base: base.to_string(),
            token: Some(token.to_string()),
            http: client(),
        }
    }

    pub fn anonymous(base: &str) -> Api {
        Api {
            base: base.to_string(),
            token: None,
            http: client(),
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        self.try_send(req).await.expect("request failed")
    }

    /// Like `send`, with a connection that broke before the answer (or a
    /// body cut short) as an error.
    pub async fn try_send(&self, req: reqwest::RequestBuilder) -> reqwest::Result<(u16, Value)> {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.request(reqwest::Method::PUT, path).json(body))
            .await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.request(reqwest::Method::PATCH, path).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Like `assert_error`, and the message says `says`.
pub fn assert_error_says(resp: &(u16, Value), status: u16, code: &str, says: &str) {
    assert_error(resp, status, code);
    let message = resp.1["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{says:?} not in {}", resp.1);
}

/// Asserts that a response is the JSON error body with this status and code.
pub fn assert_error(resp: &(u16, Value), status: u16, code: &str) {
    let (st, body) = resp;
    assert_eq!(*st, status, "expected {status} {code}, got {st}: {body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["error"]["request_id"]
            .as_str()
            .is_some_and(|m| !m.is_empty() && m != "-"),
        "{body}"
    );
}

/// A server-sent event: (id, event, data).
pub type Sse = (String, String, Value);

/// A `GET /v1/events` stream being read.
pub struct SseStream {
    resp: reqwest::Response,
    buf: String,
    ready: std::collections::VecDeque<Sse>,
}

impl Api {
    /// Opens the change feed (`path` is `/v1/events...`), resuming after
    /// `last_id` when given; panics unless it answers 200.
    pub async fn events(&self, path: &str, last_id: Option<&str>) -> SseStream {
        // No overall timeout: the stream lives as long as the test reads it.
        let mut req = reqwest::Client::new().get(format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.expect("opening the event stream");
        assert_eq!(resp.status().as_u16(), 200, "opening {path}");
        SseStream {
            resp,
            buf: String::new(),
            ready: Default::default(),
        }
    }
}

impl SseStream {
    /// The next event within `timeout` (keep-alive comments are skipped);
    /// None when none came or the stream ended.
    pub async fn next(&mut self, timeout: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => {
                    self.buf.push_str(&String::from_utf8_lossy(&bytes));
                    self.ready.extend(
                        nereid_api::take_frames(&mut self.buf)
                            .into_iter()
                            .map(|e| (e.id, e.event, e.data)),
                    );
                }
                _ => return None,
            }
        }
    }

    /// Reads until an event satisfies `pred` (within `timeout` in all);
    /// returns every event read, the last one the match.
    pub async fn until(&mut self, timeout: Duration, pred: impl Fn(&Sse) -> bool) -> Vec<Sse> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(e) => {
                    let hit = pred(&e);
                    seen.push(e);
                    if hit {
                        return seen;
                    }
                }
                None => panic!("no matching event within {timeout:?}; saw {seen:?}"),
            }
        }
    }
}
