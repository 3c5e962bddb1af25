//! The REST client: where the headnode is and which token to send (flags,
//! `NEREID_URL`/`NEREID_TOKEN`, or a profile file), and requests that turn
//! the API's error body into one clear line.

use std::path::PathBuf;

use anyhow::{Context, bail};
use nereid_api::{ErrorBody, Page};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub url: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for the headnode's TLS, besides the
    /// system's.
    pub ca_file: Option<PathBuf>,
}

pub fn default_profile_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/nereid/profile.toml"))
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// An error the API answered with.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message} (request {request_id})")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub request_id: String,
}

impl Client {
    pub fn new(
        url: Option<String>,
        token: Option<String>,
        profile_path: Option<PathBuf>,
        ca_file: Option<PathBuf>,
    ) -> anyhow::Result<Client> {
        let profile = match profile_path.or_else(default_profile_path) {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading profile {}", p.display()))?;
                toml::from_str::<Profile>(&text)
                    .with_context(|| format!("invalid profile {}", p.display()))?
            }
            _ => Profile::default(),
        };
        let base = url
            .or(profile.url)
            .context("no headnode URL: set NEREID_URL, pass --url, or write url = \"...\" in ~/.config/nereid/profile.toml")?;
        let token = match token.or(profile.token) {
            Some(t) => t,
            None => match profile.token_file {
                Some(f) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading the token file {}", f.display()))?,
                None => bail!(
                    "no token: set NEREID_TOKEN, pass --token, or set token_file in ~/.config/nereid/profile.toml"
                ),
            },
        };
        let mut http = reqwest::Client::builder();
        if let Some(f) = ca_file.or(profile.ca_file) {
            let pem = std::fs::read(&f)
                .with_context(|| format!("reading the CA file {}", f.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} holds no PEM certificate", f.display()))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(Client {
            http: http.build()?,
            base: base.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
        })
    }

    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let resp = self.send(method, path, query, body).await?;
        let text = resp.text().await.context("reading the answer")?;
        let text = if text.is_empty() {
            "null".to_string()
        } else {
            text
        };
        serde_json::from_str(&text)
            .with_context(|| format!("unexpected answer from the headnode: {}", truncate(&text)))
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut req = self.request(method, path).query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.execute(req).await
    }

    /// A request to the headnode with the bearer token set.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
    }

    /// Sends a request; a non-2xx answer becomes an [`ApiError`].
    pub async fn execute(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the headnode at {}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => Err(ApiError {
                status,
                code: b.error.code.to_string(),
                message: b.error.message,
                request_id: b.error.request_id,
            }
            .into()),
            Err(_) => bail!("the headnode answered {status}: {}", truncate(&text)),
        }
    }

    /// Sends a request and decodes its JSON answer.
    pub async fn execute_json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let text = self
            .execute(req)
            .await?
            .text()
            .await
            .context("reading the answer")?;
        serde_json::from_str(&text)
            .with_context(|| format!("unexpected answer from the headnode: {}", truncate(&text)))
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.call::<(), T>(Method::GET, path, query, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.call(Method::POST, path, &[], Some(body)).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.call(Method::PATCH, path, &[], Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.delete_with(path, &[]).await
    }

    pub async fn delete_with(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<()> {
        self.send::<()>(Method::DELETE, path, query, None).await?;
        Ok(())
    }

    /// What a list command shows: one page (`--limit`, default 100), or
    /// with `--all` every item, following page tokens.
    pub async fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        l: &Listing,
    ) -> anyhow::Result<Listed<T>> {
        if l.all {
            let items = self.list_all(path, query).await?;
            return Ok(Listed {
                items,
                more: false,
                all: true,
            });
        }
        let mut q = query.to_vec();
        q.push((
            "limit",
            l.limit.clamp(1, nereid_api::MAX_PAGE_LIMIT).to_string(),
        ));
        let page: Page<T> = self.get(path, &q).await?;
        Ok(Listed {
            items: page.items,
            more: page.next_page_token.is_some(),
            all: false,
        })
    }

    /// Every item of a collection, following page tokens.
    pub async fn list_all<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<Vec<T>> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = query.to_vec();
            if let Some(t) = &token {
                q.push(("page_token", t.clone()));
            }
            let page: Page<T> = self.get(path, &q).await?;
            items.extend(page.items);
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => return Ok(items),
            }
        }
    }
}

fn truncate(s: &str) -> String {
    if s.len() > 200 {
        format!("{}...", &s[..s.floor_char_boundary(200)])
    } else {
        s.to_string()
    }
}

/// The change feed (`GET /v1/events`) being read.
pub struct Feed {
    resp: reqwest::Response,
    buf: String,
    ready: std::collections::VecDeque<nereid_api::FeedEvent>,
}

impl Client {
    /// Opens the change feed with these filters.
    pub async fn events(&self, query: &[(&str, String)]) -> anyhow::Result<Feed> {
        let req = self
            .http
            .get(format!("{}/v1/events", self.base))
            .bearer_auth(&self.token)
            .query(query);
        let resp = self.execute(req).await?;
        Ok(Feed {
            resp,
            buf: String::new(),
            ready: Default::default(),
        })
    }
}

impl Feed {
    /// The next event, or None when `wait` passed without one or the
    /// stream ended.
    pub async fn next(&mut self, wait: std::time::Duration) -> Option<nereid_api::FeedEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => {
                    self.buf.push_str(&String::from_utf8_lossy(&bytes));
                    self.ready.extend(nereid_api::take_frames(&mut self.buf));
                }
                _ => return None,
            }
        }
    }
}

/// How much of a collection a list command shows.
#[derive(Debug, Clone, clap::Args)]
pub struct Listing {
    /// Every item, page after page (the count is printed at the end).
    #[arg(long)]
    pub all: bool,
    /// At most this many items (up to 1000).
    #[arg(long, default_value_t = nereid_api::DEFAULT_PAGE_LIMIT)]
    pub limit: u32,
}

/// What a list command got.
pub struct Listed<T> {
    pub items: Vec<T>,
    /// There are more than shown.
    pub more: bool,
    all: bool,
}

impl<T> Listed<T> {
    /// After a table: says on stderr that there is more, or how many in all
    /// (stdout stays the table alone).
    pub fn footer(&self, fmt: crate::output::Format, noun: &str) {
        if fmt != crate::output::Format::Table {
            return;
        }
        let n = self.items.len();
        if self.more {
            eprintln!("{n} {noun} shown; there are more (--all for every one, --limit up to 1000)");
        } else if self.all {
            eprintln!("{n} {noun}");
        }
    }
}
