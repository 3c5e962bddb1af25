//! Bad input gets the right 4xx with the JSON error body: never a 5xx, never a hang.

use nereid_tests::api::{Api, assert_error};
use nereid_tests::procs::{Headnode, HeadnodeOpts};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_4xx_with_the_error_body() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = h.operator();
    let raw = |method: Method, path: &str, body: &'static str| {
        op.request(method, path)
            .header("content-type", "application/json")
            .body(body)
    };

    let r = op
        .send(raw(Method::POST, "/v1/accounts", "{\"name\": \"x\", "))
        .await;
    assert_error(&r, 400, "InvalidArgument");
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON"),
        "{}",
        r.1
    );

    let r = op
        .post(
            "/v1/accounts",
            &json!({"name": "x", "role": "tenant", "colour": "red"}),
        )
        .await;
    assert_error(&r, 400, "InvalidArgument");
    assert!(
        r.1["error"]["message"].as_str().unwrap().contains("colour"),
        "{}",
        r.1
    );

    let r = op
        .post("/v1/accounts", &json!({"name": 5, "role": "tenant"}))
        .await;
    assert_error(&r, 400, "InvalidArgument");
    assert!(
        r.1["error"]["message"].as_str().unwrap().contains("name"),
        "{}",
        r.1
    );

    let r = op
        .post("/v1/accounts", &json!({"name": "x", "role": "emperor"}))
        .await;
    assert_error(&r, 400, "InvalidArgument");

    let r = op
        .post(
            "/v1/accounts",
            &json!({"name": "a".repeat(10_000), "role": "tenant"}),
        )
        .await;
    assert_error(&r, 400, "InvalidArgument");
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("name:"),
        "{}",
        r.1
    );

    assert_error(
        &op.get("/v1/servers/not-a-uuid").await,
        400,
        "InvalidArgument",
    );
    assert_error(&op.get("/v1/accounts/1234").await, 400, "InvalidArgument");
    assert_error(&op.get("/v1/servers?limit=0").await, 400, "InvalidArgument");
    assert_error(
        &op.get("/v1/servers?limit=abc").await,
        400,
        "InvalidArgument",
    );
    assert_error(
        &op.get("/v1/servers?status=sideways").await,
        400,
        "InvalidArgument",
    );
    assert_error(&op.get("/v1/servers?bogus=1").await, 400, "InvalidArgument");
    assert_error(
        &op.get("/v1/servers?page_token=zzz").await,
        400,
        "InvalidArgument",
    );
    assert_error(
        &op.post("/v1/servers/join-tokens", &json!({"ttl_seconds": 5}))
            .await,
        400,
        "InvalidArgument",
    );
    assert_error(
        &op.post("/v1/servers/join-tokens", &json!({"ttl_seconds": -5}))
            .await,
        400,
        "InvalidArgument",
    );
    let missing = uuid::Uuid::now_v7();
    assert_error(
        &op.post(
            &format!("/v1/servers/{missing}/setup"),
            &json!({"zpool": "p"}),
        )
        .await,
        404,
        "NotFound",
    );
    assert_error(
        &op.post(
            &format!("/v1/servers/{missing}/setup"),
            &json!({"zpool": "p", "nic_tags": {"x": "a/b"}}),
        )
        .await,
        400,
        "InvalidArgument",
    );

    let r = op
        .send(
            op.request(Method::POST, "/v1/accounts")
                .header("content-type", "text/plain")
                .body("hi"),
        )
        .await;
    assert_error(&r, 415, "UnsupportedMediaType");

    assert_error(&op.get("/v1/nothing-here").await, 404, "NotFound");
    assert_error(
        &op.send(op.request(Method::PUT, "/v1/accounts")).await,
        405,
        "MethodNotAllowed",
    );

    // Authentication.
    let anon = Api::anonymous(&h.rest_url);
    assert_error(&anon.get("/v1/servers").await, 401, "Unauthorized");
    let r = anon
        .send(
            anon.request(Method::POST, "/v1/accounts")
                .header("content-type", "application/json")
                .body("{\"broken\": "),
        )
        .await;
    assert_error(&r, 401, "Unauthorized");
    assert_error(
        &Api::new(&h.rest_url, "nrd_nope").get("/v1/servers").await,
        401,
        "Unauthorized",
    );
    let r = anon
        .send(
            anon.request(Method::GET, "/v1/servers")
                .header("authorization", "Basic Zm9vOmJhcg=="),
        )
        .await;
    assert_error(&r, 401, "Unauthorized");

    // The request id of the error body is the one in the response header.
    let resp = op
        .request(Method::GET, "/v1/servers/bad")
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-me-42");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], "trace-me-42");
    assert!(
        h.proc.log_text().contains("trace-me-42"),
        "the request id is in the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mb_body_is_refused_with_413_without_a_hang() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = h.operator();
    let big = vec![b'a'; 100 * 1024 * 1024];
    let started = std::time::Instant::now();
    let result = op
        .request(Method::POST, "/v1/accounts")
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await;
    match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_error(&(status, body), 413, "PayloadTooLarge");
        }
        // The server may close the connection while the client still sends
        // (the client then never reads the answer): what matters is that it
        // answered 413 without reading it all, and did not hang.
        Err(e) => {
            let log = h.proc.log_text();
            assert!(
                log.lines().any(|l| l.contains("path=/v1/accounts")
                    && l.contains("method=POST")
                    && l.contains("status=413")),
                "the 100 MB request failed ({e}) and the headnode logged no 413"
            );
        }
    }
    eprintln!("100 MB body refused in {:?}", started.elapsed());
    // The headnode is still fine.
    assert_eq!(op.get("/v1/accounts").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_metrics_and_the_served_openapi_document() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let anon = Api::anonymous(&h.rest_url);
    let (st, body) = anon.get("/healthz").await;
    assert_eq!((st, body["status"].as_str()), (200, Some("ok")));
    let (_, _) = anon.get("/v1/servers").await;
    let (st, metrics) = anon.get("/metrics").await;
    assert_eq!(st, 200);
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains("nereid_http_requests_total{class=\"4xx\"}"),
        "{text}"
    );
    let (st, spec) = anon.get("/openapi.json").await;
    assert_eq!(st, 200);
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../api/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(spec, committed, "the served spec is the committed one");
}
