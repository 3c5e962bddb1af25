//! Accounts and tokens: the first operator, bearer auth, and tenants who see
//! only what they own.

use std::os::unix::fs::PermissionsExt;

use nereid_tests::api::{Api, assert_error};
use nereid_tests::procs::{Headnode, HeadnodeOpts};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn the_first_start_writes_the_operator_token_once_to_a_root_only_file() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let path = h.state.path().join("operator-token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = h.operator_token();
    assert!(
        !h.proc.log_text().contains(&token),
        "the token leaked into the log"
    );
    let (st, accounts) = h.operator().get("/v1/accounts").await;
    assert_eq!(st, 200);
    assert_eq!(accounts["items"][0]["role"], "operator");

    // A restart neither makes a second operator nor changes the token.
    let h = h.restart().await;
    assert_eq!(h.operator_token(), token);
    let (_, accounts) = h.operator().get("/v1/accounts").await;
    assert_eq!(accounts["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_headnodes_starting_on_one_empty_database_make_exactly_one_operator() {
    let db = nereid_tests::pg::fresh_database().await;
    // Headnodes of one datacenter share its CA.
    let pki = tempfile::tempdir().unwrap();
    nereid_tls::Ca::load_or_create(pki.path()).unwrap();
    let opts = HeadnodeOpts {
        args: vec!["--pki-dir".into(), pki.path().display().to_string()],
        ..Default::default()
    };
    let (a, b) = tokio::join!(
        Headnode::start_on(db.clone(), tempfile::tempdir().unwrap(), opts.clone()),
        Headnode::start_on(db.clone(), tempfile::tempdir().unwrap(), opts.clone()),
    );
    let written: Vec<_> = [&a, &b]
        .iter()
        .filter(|h| h.state.path().join("operator-token").exists())
        .map(|h| h.operator())
        .collect();
    assert_eq!(
        written.len(),
        1,
        "exactly one headnode writes the first operator's token"
    );
    let (_, accounts) = written[0].get("/v1/accounts").await;
    assert_eq!(accounts["items"].as_array().unwrap().len(), 1);
    // Both serve the same database: the token works against the other one too.
    let other = if a.state.path().join("operator-token").exists() {
        &b
    } else {
        &a
    };
    let (st, _) = Api::new(&other.rest_url, written[0].token.as_ref().unwrap())
        .get("/v1/accounts")
        .await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_sees_only_its_own_account_and_tokens() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let (a_id, a) = h.tenant("alice").await;
    let (b_id, b) = h.tenant("bob").await;

    let (_, list) = a.get("/v1/accounts").await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], a_id.as_str());

    // Another tenant's account answers exactly like a missing one.
    let theirs = a.get(&format!("/v1/accounts/{b_id}")).await;
    let missing = a
        .get(&format!("/v1/accounts/{}", uuid::Uuid::now_v7()))
        .await;
    assert_error(&theirs, 404, "NotFound");
    assert_error(&missing, 404, "NotFound");
    assert_eq!(
        theirs.1["error"]["message"]
            .as_str()
            .unwrap()
            .replace(&b_id, "X"),
        missing.1["error"]["message"]
            .as_str()
            .unwrap()
            .split(' ')
            .map(|w| if uuid::Uuid::parse_str(w).is_ok() {
                "X"
            } else {
                w
            })
            .collect::<Vec<_>>()
            .join(" ")
    );

    // Tokens: own only; another's cannot be listed, made or revoked.
    let (st, mine) = a.post("/v1/tokens", &json!({"name": "ci"})).await;
    assert_eq!(st, 201);
    assert_eq!(mine["token"]["account_id"], a_id.as_str());
    let (_, list) = a.get("/v1/tokens").await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["account_id"] == a_id.as_str())
    );
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert!(
        list.to_string().find("nrd_").is_none(),
        "a listing never shows secrets"
    );
    assert_error(
        &a.get(&format!("/v1/tokens?account_id={b_id}")).await,
        404,
        "NotFound",
    );
    assert_error(
        &a.post("/v1/tokens", &json!({"name": "x", "account_id": b_id}))
            .await,
        404,
        "NotFound",
    );
    let (_, bobs) = b.get("/v1/tokens").await;
    let bob_token = bobs["items"][0]["id"].as_str().unwrap().to_string();
    assert_error(
        &a.delete(&format!("/v1/tokens/{bob_token}")).await,
        404,
        "NotFound",
    );
    let (st, _) = b.get("/v1/accounts").await;
    assert_eq!(st, 200, "bob's token still works");

    // Tenants never see the fleet and cannot make accounts or join tokens.
    assert_error(&a.get("/v1/servers").await, 403, "Forbidden");
    assert_error(
        &a.post("/v1/accounts", &json!({"name": "eve", "role": "operator"}))
            .await,
        403,
        "Forbidden",
    );
    assert_error(
        &a.post("/v1/servers/join-tokens", &json!({})).await,
        403,
        "Forbidden",
    );

    // A revoked token stops working at once; an expired one too.
    let my_id = mine["token"]["id"].as_str().unwrap();
    let ci = Api::new(&h.rest_url, mine["secret"].as_str().unwrap());
    assert_eq!(ci.get("/v1/accounts").await.0, 200);
    assert_eq!(a.delete(&format!("/v1/tokens/{my_id}")).await.0, 204);
    assert_error(&ci.get("/v1/accounts").await, 401, "Unauthorized");
    let (_, short) = a
        .post("/v1/tokens", &json!({"name": "short", "ttl_seconds": 1}))
        .await;
    let short = Api::new(&h.rest_url, short["secret"].as_str().unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_error(&short.get("/v1/accounts").await, 401, "Unauthorized");

    // Duplicate account names conflict.
    assert_error(
        &h.operator()
            .post("/v1/accounts", &json!({"name": "alice", "role": "tenant"}))
            .await,
        409,
        "Conflict",
    );
}
