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
        let resp = req.send().await.expect("request failed");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
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
