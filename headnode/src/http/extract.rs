//! Extractors whose rejections are JSON error bodies with stable codes, and
//! the bearer-token principal.

use crate::authz::OpContext;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;

use crate::AppState;
use crate::error::Error;

/// A JSON body; malformed JSON, wrong types and unknown fields are 400, a body
/// over the limit 413, a missing content type 415, and a string (or key)
/// holding a control character other than tab, newline and carriage return
/// (NUL among them, which PostgreSQL refuses) 400.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Error> {
        let axum::Json(mut value) =
            axum::Json::<serde_json::Value>::from_request(req, state).await?;
        integral_numbers(&mut value);
        if let Some(path) = control_character(&value, "") {
            return Err(Error::invalid(
                if path.is_empty() { "body" } else { &path },
                "holds a control character (NUL or below U+0020 other than tab, newline, carriage return)",
            ));
        }
        from_value(value).map(ApiJson)
    }
}

/// The body as `T`; an error names the field it is about.
fn from_value<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            Error::InvalidArgument(e.into_inner().to_string())
        } else {
            Error::InvalidArgument(format!("{path}: {}", e.into_inner()))
        }
    })
}

/// `3.0` is the integer 3 (JSON does not tell them apart; serde would
/// refuse it where an integer is expected).
fn integral_numbers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                *v = if f < 0.0 {
                    Value::from(f as i64)
                } else {
                    Value::from(f as u64)
                };
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_numbers),
        Value::Object(m) => m.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

fn bad_char(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// Where in `v` a string or key holds a forbidden control character.
fn control_character(v: &serde_json::Value, at: &str) -> Option<String> {
    match v {
        serde_json::Value::String(s) => s.chars().any(bad_char).then(|| at.to_string()),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| control_character(x, &format!("{at}[{i}]"))),
        serde_json::Value::Object(m) => m.iter().find_map(|(k, x)| {
            let here = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if k.chars().any(bad_char) {
                return Some(here);
            }
            control_character(x, &here)
        }),
        _ => None,
    }
}

/// Path parameters; a malformed id, or a control character in any of
/// them, is 400.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<Vec<(String, String)>>::from_request_parts(parts, state).await?;
        refuse_control_characters("path", &raw)?;
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(v))
    }
}

/// Query parameters; unknown or malformed ones, or a control character in
/// any of them, are 400.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let axum::extract::Query(raw) =
            axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state).await?;
        refuse_control_characters("query", &raw)?;
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

/// A 400 naming the first parameter that holds a control character.
fn refuse_control_characters(kind: &str, params: &[(String, String)]) -> Result<(), Error> {
    match params
        .iter()
        .find(|(k, v)| k.chars().chain(v.chars()).any(bad_char))
    {
        Some((k, _)) => Err(Error::invalid(
            &format!("{kind}: {}", k.escape_debug()),
            "holds a control character (NUL or below U+0020 other than tab, newline, carriage return)",
        )),
        None => Ok(()),
    }
}

impl From<JsonRejection> for Error {
    fn from(r: JsonRejection) -> Error {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                Error::PayloadTooLarge("the request body is larger than this route accepts".into())
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Error::UnsupportedMediaType(
                "the request body must be JSON with `Content-Type: application/json`".into(),
            ),
            _ => match r {
                JsonRejection::JsonSyntaxError(e) => Error::InvalidArgument(format!(
                    "malformed JSON: {}",
                    inner_text(&e.body_text())
                )),
                JsonRejection::JsonDataError(e) => {
                    Error::InvalidArgument(inner_text(&e.body_text()))
                }
                other => Error::InvalidArgument(format!(
                    "unreadable request body: {}",
                    other.body_text()
                )),
            },
        }
    }
}

impl From<PathRejection> for Error {
    fn from(r: PathRejection) -> Error {
        Error::InvalidArgument(format!("path: {}", inner_text(&r.body_text())))
    }
}

impl From<QueryRejection> for Error {
    fn from(r: QueryRejection) -> Error {
        Error::InvalidArgument(format!("query: {}", inner_text(&r.body_text())))
    }
}

/// Drops axum's generic preamble ("Failed to deserialize ...: ") and keeps
/// serde's message, which names the field.
fn inner_text(s: &str) -> String {
    for prefix in [
        "Failed to deserialize the JSON body into the target type: ",
        "Failed to parse the request body as JSON: ",
        "Failed to deserialize query string: ",
        "Invalid URL: ",
    ] {
        if let Some(rest) = s.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    s.to_string()
}

/// The bearer secret of a request, or a 401.
fn bearer(parts: &Parts) -> Result<&str, Error> {
    let missing =
        || Error::Unauthorized("missing bearer token: send `Authorization: Bearer <token>`".into());
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(missing)?;
    let value = header.to_str().map_err(|_| missing())?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or_else(missing)
}

/// The client's address, when the server knows it.
fn client(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

fn too_many(what: &str, wait: std::time::Duration) -> Error {
    let secs = crate::ratelimit::retry_after_secs(wait);
    Error::TooManyRequests(format!("{what}; try again in {secs} s"), secs)
}

/// Looks the token up, within the rate limits: an address past its limit
/// of failed authentications gets a 429 without a lookup for any token that
/// has not authenticated lately; a token past its rate gets a 429.
async fn principal(
    token: &str,
    state: &AppState,
    from: Option<std::net::IpAddr>,
) -> Result<OpContext, Error> {
    let hash = crate::secrets::hash(token);
    let key: [u8; 32] = hash.as_slice().try_into().unwrap_or([0; 32]);
    let limits = &state.limits;
    if let Some(ip) = from
        && let Some(wait) = limits.bad_auth.exhausted(&ip)
        && !limits.known_good.lock().expect("known good").contains(&key)
    {
        return Err(too_many(
            "too many failed authentications from this address",
            wait,
        ));
    }
    let Some(owner) = state.db.token_authenticate(&hash).await? else {
        if let Some(ip) = from
            && let Err(wait) = limits.bad_auth.check(&ip)
        {
            return Err(too_many(
                "too many failed authentications from this address",
                wait,
            ));
        }
        return Err(Error::Unauthorized(
            "the bearer token is unknown or expired".into(),
        ));
    };
    {
        let mut good = limits.known_good.lock().expect("known good");
        if good.len() >= 100_000 {
            good.clear();
        }
        good.insert(key);
    }
    if let Err(wait) = limits.per_token.check(&key) {
        return Err(too_many("this token made too many requests", wait));
    }
    tracing::Span::current().record("account", tracing::field::display(owner.account_id));
    crate::audit::set_actor(crate::audit::Actor {
        account: owner.account_id,
        role: owner.role,
    });
    Ok(OpContext {
        account_id: owner.account_id,
        role: owner.role,
    })
}

impl FromRequestParts<AppState> for OpContext {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        principal(bearer(parts)?, state, client(parts)).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn integral_floats_become_integers_and_others_stay() {
        let mut v = json!({"a": 3.0, "b": [1.5, -2.0], "c": "4.0", "d": 7});
        super::integral_numbers(&mut v);
        assert_eq!(v, json!({"a": 3, "b": [1.5, -2], "c": "4.0", "d": 7}));
        assert!(v["a"].is_u64() && v["b"][1].is_i64());
    }

    #[test]
    fn control_characters_are_found_with_their_path_and_whitespace_is_fine() {
        let v = json!({"name": "ok", "tags": {"a\u{1}": 1}, "list": ["x", "y\u{0}"]});
        let found = super::control_character(&v, "").unwrap();
        assert!(found == "list[1]" || found == "tags.a\u{1}", "{found}");
        assert_eq!(
            super::control_character(&json!({"d": "line\nnext\ttab\r"}), ""),
            None
        );
        assert_eq!(
            super::control_character(&json!("\u{0}"), ""),
            Some(String::new())
        );
    }
}
