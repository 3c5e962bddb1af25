//! The audit log: every change through the API leaves an entry naming who
//! made it, from where and under which request id; refused changes are
//! logged with their error code; tenants read only their own part.

use std::time::Duration;

use nereid_tests::api::{Api, assert_error};
use nereid_tests::procs::{Headnode, HeadnodeOpts};
use serde_json::{Value, json};

fn items(page: &(u16, Value)) -> Vec<Value> {
    assert_eq!(page.0, 200, "{}", page.1);
    page.1["items"].as_array().unwrap().clone()
}

async fn operator_id(op: &Api) -> String {
    let accounts = items(&op.get("/v1/accounts").await);
    accounts.iter().find(|a| a["role"] == "operator").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Failed requests are logged just after their answer: wait for the entry.
async fn wait_for(api: &Api, query: &str, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let got = items(&api.get(&format!("/v1/audit?{query}")).await);
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} audit entries for {query}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_change_leaves_an_entry_with_its_actor_request_id_and_source() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = h.operator();
    let me = operator_id(&op).await;
    let pkg = json!({"name": "audited", "version": "1.0", "memory_mb": 512, "vcpus": 1, "disk_mb": 10240, "brand": "container"});
    let (st, created) = op
        .send(
            op.request(reqwest::Method::POST, "/v1/packages")
                .header("x-request-id", "audit-create-1")
                .json(&pkg),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/packages/{id}");
    let patched = op
        .send(
            op.request(reqwest::Method::PATCH, &path)
                .json(&json!({"description": "for the audit test"})),
        )
        .await;
    assert_eq!(patched.0, 200, "{}", patched.1);
    assert_eq!(op.delete(&path).await.0, 204);
    // Reads are not changes.
    let _ = op.get("/v1/packages").await;

    let entries = items(&op.get(&format!("/v1/audit?target={id}")).await);
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["package.delete", "package.update", "package.create"],
        "newest first: {entries:?}"
    );
    for e in &entries {
        assert_eq!(e["actor"], me.as_str(), "{e}");
        assert_eq!(e["actor_role"], "operator", "{e}");
        assert_eq!(e["result"], "ok", "{e}");
        assert_eq!(e["source"], "127.0.0.1", "{e}");
        assert_eq!(e["target_kind"], "package", "{e}");
    }
    assert_eq!(entries[2]["request_id"], "audit-create-1");
    assert_ne!(entries[1]["request_id"], entries[0]["request_id"]);

    // The filters: by action prefix, by actor.
    let by_action = items(&op.get("/v1/audit?action=package.").await);
    assert_eq!(by_action.len(), 3, "{by_action:?}");
    let by_actor = items(&op.get(&format!("/v1/audit?actor={me}")).await);
    assert!(by_actor.len() >= 3);
    assert!(by_actor.iter().all(|e| e["actor"] == me.as_str()));
    // A LIKE wildcard in the prefix is taken literally.
    assert!(items(&op.get("/v1/audit?action=%25").await).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_change_is_logged_with_its_error_code_and_no_change_is_logged_as_done() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = h.operator();
    let (tenant_id, t) = h.tenant("mallory").await;

    // A tenant trying an operator's change: refused, and logged as refused.
    let pkg = json!({"name": "sneaky", "version": "1.0", "memory_mb": 512, "vcpus": 1, "disk_mb": 10240, "brand": "container"});
    assert_error(&t.post("/v1/packages", &pkg).await, 403, "Forbidden");
    let failed = wait_for(&op, &format!("failed=true&actor={tenant_id}"), 1).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["action"], "POST /v1/packages");
    assert_eq!(failed[0]["result"], "Forbidden");
    assert_eq!(failed[0]["actor_role"], "tenant");
    assert!(failed[0]["message"].as_str().unwrap().len() > 5);

    // Bad input from an operator: logged with its code, the id in the path
    // generalised in the action.
    let bogus = "00000000-0000-7000-8000-000000000000";
    assert_error(
        &op.delete(&format!("/v1/packages/{bogus}")).await,
        404,
        "NotFound",
    );
    let failed = wait_for(&op, "failed=true&action=DELETE", 1).await;
    assert_eq!(failed[0]["action"], "DELETE /v1/packages/{id}");
    assert_eq!(failed[0]["target_id"], format!("/v1/packages/{bogus}"));

    // Nothing was changed by either: no "ok" entry about packages.
    assert!(items(&op.get("/v1/audit?action=package.").await).is_empty());

    // A request that never authenticated is not logged (a flood of them
    // must not write rows).
    let anon = Api::new(&h.rest_url, "nrd_not_a_real_token");
    assert_error(&anon.post("/v1/packages", &pkg).await, 401, "Unauthorized");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failed = items(&op.get("/v1/audit?failed=true").await);
    assert_eq!(failed.len(), 2, "{failed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_reads_only_the_entries_it_made_or_about_what_it_owns() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = h.operator();
    let (alice_id, alice) = h.tenant("alice").await;
    let (bob_id, bob) = h.tenant("bob").await;
    // Each makes a token of its own; the operator sets Alice's quotas.
    for t in [&alice, &bob] {
        let (st, b) = t.post("/v1/tokens", &json!({"name": "second"})).await;
        assert_eq!(st, 201, "{b}");
    }
    let (st, b) = op
        .put(
            &format!("/v1/accounts/{alice_id}/quotas"),
            &json!({"instances": 3}),
        )
        .await;
    assert_eq!(st, 200, "{b}");

    let seen = items(&alice.get("/v1/audit").await);
    assert!(!seen.is_empty());
    for e in &seen {
        assert!(
            e["actor"] == alice_id.as_str() || e["owner"] == alice_id.as_str(),
            "alice sees an entry that is not hers: {e}"
        );
    }
    let actions: Vec<&str> = seen.iter().map(|e| e["action"].as_str().unwrap()).collect();
    // Her account, the token the operator made her, her own token, her quotas.
    for want in ["account.create", "token.create", "quota.set"] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    assert_eq!(
        seen.iter()
            .filter(|e| e["action"] == "token.create" && e["actor"] == alice_id.as_str())
            .count(),
        1
    );
    // Asking for Bob's entries by name gets nothing.
    assert!(items(&alice.get(&format!("/v1/audit?actor={bob_id}")).await).is_empty());
    assert!(items(&alice.get(&format!("/v1/audit?target={bob_id}")).await).is_empty());
    // The operator sees both.
    let all = items(&op.get("/v1/audit?action=token.create").await);
    assert_eq!(all.len(), 4, "{all:?}");
    // Bad filters are a 400.
    assert_error(
        &alice.get("/v1/audit?actor=nobody").await,
        400,
        "InvalidArgument",
    );
    assert_error(
        &alice.get("/v1/audit?limit=0").await,
        400,
        "InvalidArgument",
    );
}
