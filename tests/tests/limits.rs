//! The REST API's limits: a flood of bad tokens from one address is refused
//! with 429 and Retry-After while other clients (and good tokens from that
//! address) go on; a token over its rate gets 429 and another token does
//! not; strings holding control characters are a 400, never a 500.

use std::time::Duration;

use nereid_tests::api::assert_error;
use nereid_tests::procs::{Headnode, HeadnodeOpts};
use serde_json::json;

/// A client whose connections come from `ip` (any 127.0.0.0/8 address).
fn from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn get(c: &reqwest::Client, h: &Headnode, token: &str) -> (u16, Option<String>) {
    let r = c
        .get(format!("{}/v1/accounts", h.rest_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (r.status().as_u16(), retry)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_bad_tokens_from_one_address_is_refused_and_others_go_on() {
    let h = Headnode::start(HeadnodeOpts {
        args: ["--auth-failures-per-address", "1"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await;
    let (attacker, other) = (from("127.0.0.2"), from("127.0.0.1"));
    let good = h.operator_token();
    // A good token used from the attacker's address before the flood.
    assert_eq!(get(&attacker, &h, &good).await.0, 200);
    let mut limited = None;
    for i in 0..60 {
        let (st, retry) = get(&attacker, &h, &format!("nrd_bogus{i}")).await;
        assert!(st == 401 || st == 429, "{st}");
        if st == 429 {
            limited = Some(retry);
            break;
        }
    }
    let retry = limited.expect("the flood was never refused");
    let secs: u64 = retry.expect("a Retry-After header").parse().unwrap();
    assert!(secs >= 1);
    // Still refused, without a lookup, while the address is over its limit.
    assert_eq!(get(&attacker, &h, "nrd_another").await.0, 429);
    // Other clients, and a token known good from that address, go on.
    assert_eq!(get(&other, &h, &good).await.0, 200);
    assert_eq!(get(&other, &h, "nrd_wrong").await.0, 401);
    assert_eq!(get(&attacker, &h, &good).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_over_its_rate_gets_429_and_another_token_does_not() {
    let h = Headnode::start(HeadnodeOpts {
        args: ["--requests-per-token", "5"].map(String::from).to_vec(),
        ..Default::default()
    })
    .await;
    let op = h.operator();
    let (st, tok) = op.post("/v1/tokens", &json!({"name": "second"})).await;
    assert_eq!(st, 201, "{tok}");
    let second = tok["secret"].as_str().unwrap().to_string();
    let c = from("127.0.0.1");
    let first = h.operator_token();
    let mut refused = 0;
    for _ in 0..40 {
        let (st, retry) = get(&c, &h, &first).await;
        if st == 429 {
            refused += 1;
            assert!(retry.is_some(), "a 429 says when to retry");
        } else {
            assert_eq!(st, 200);
        }
    }
    assert!(refused > 0, "40 quick requests at 5/s must meet the limit");
    assert_eq!(
        get(&c, &h, &second).await.0,
        200,
        "another token is not limited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn strings_with_control_characters_are_a_400_not_a_500() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = h.operator();
    for body in [
        json!({"name": "nul\u{0}name", "role": "tenant"}),
        json!({"name": "bell\u{7}", "role": "tenant"}),
    ] {
        let r = op.post("/v1/accounts", &body).await;
        assert_error(&r, 400, "InvalidArgument");
        assert!(
            r.1["error"]["message"].as_str().unwrap().contains("name"),
            "{}",
            r.1
        );
    }
    let r = op
        .post(
            "/v1/images",
            &json!({"name": "x", "version": "1", "type": "container", "os": "linux",
                    "description": "tab\tand\nnewline are fine, \u{0} is not"}),
        )
        .await;
    assert_error(&r, 400, "InvalidArgument");
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("description"),
        "{}",
        r.1
    );
}
