//! The tenant-isolation matrix, generated from the served OpenAPI document:
//! every operation, called by one tenant (bob) with the ids of another's
//! (alice's) resources, answers 404 as if they were missing; every
//! operator-only operation answers bob 403; every list bob reads holds none
//! of alice's ids; and afterwards all of alice's things are as she left
//! them. An operation the document has and this matrix does not classify
//! fails the test, so a new endpoint must say who may call it.

use std::collections::BTreeMap;
use std::time::Duration;

use nereid_tests::datacenter::{Datacenter, DcOpts};
use reqwest::Method;
use serde_json::{Value, json};

/// What bob must get from an operation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// It names alice's resource: 404.
    Missing,
    /// Operators only: 403.
    Forbidden,
    /// A list bob may read: 200 without any of alice's ids.
    OwnList,
    /// Bob acting on his own or on shared things (a create, a shared
    /// network or package): not part of the matrix.
    Skip,
}

fn classify(method: &Method, path: &str) -> Option<Expect> {
    use Expect::*;
    let m = method.as_str();
    Some(match (m, path) {
        ("GET", "/v1/events") => Skip, // a stream; its filtering has its own test
        ("POST", "/v1/accounts") => Forbidden,
        ("PUT", "/v1/accounts/{id}/quotas") => Forbidden,
        ("GET", "/v1/accounts/{id}") | ("GET", "/v1/accounts/{id}/quotas") => Missing,
        (
            "POST",
            "/v1/instances" | "/v1/images" | "/v1/fwrules" | "/v1/keys" | "/v1/tokens"
            | "/v1/fabrics/vlans",
        ) => Skip,
        ("GET", "/v1/networks/{id}" | "/v1/packages/{id}" | "/v1/network-pools/{id}") => Skip, // shared
        ("POST", "/v1/network-pools") | ("DELETE", "/v1/network-pools/{id}") => Forbidden,
        (_, p) if p.starts_with("/v1/servers") => Forbidden,
        (_, p) if p.starts_with("/v1/nictags") => Forbidden,
        (_, p) if p.starts_with("/v1/networks/{id}/ips") => Forbidden,
        ("POST", "/v1/networks" | "/v1/packages") => Forbidden,
        ("DELETE" | "PATCH", "/v1/networks/{id}" | "/v1/packages/{id}") => Forbidden,
        (
            "GET",
            "/v1/accounts" | "/v1/audit" | "/v1/fwrules" | "/v1/images" | "/v1/instances"
            | "/v1/jobs" | "/v1/keys" | "/v1/tokens" | "/v1/networks" | "/v1/packages"
            | "/v1/fabrics/vlans" | "/v1/network-pools",
        ) => OwnList,
        // Bob has no VLAN of alice's number: hers are not his to see.
        (_, p) if p.starts_with("/v1/fabrics/vlans/{vlan_id}") => Missing,
        (_, p)
            if p.starts_with("/v1/instances/{id}")
                || p.starts_with("/v1/images/{id}")
                || p.starts_with("/v1/fwrules/{id}")
                || p.starts_with("/v1/jobs/{id}")
                || p.starts_with("/v1/keys/{name}")
                || p.starts_with("/v1/tokens/{id}") =>
        {
            Missing
        }
        _ => return None,
    })
}

/// A well-formed body for the operations that need one (so that what bob
/// gets is about authorization, not a malformed request).
fn body(method: &Method, path: &str) -> Option<Value> {
    let b = match (method.as_str(), path) {
        ("POST", "/v1/accounts") => json!({"name": "mallory", "role": "tenant"}),
        ("PUT", "/v1/accounts/{id}/quotas") => json!({"instances": 100}),
        ("PATCH", "/v1/fwrules/{id}") => json!({"enabled": false}),
        ("POST", "/v1/instances/{id}/images") => json!({"name": "stolen", "version": "1"}),
        ("PUT" | "POST", p) if p.ends_with("/metadata") || p.ends_with("/tags") => {
            json!({"k2": "v2"})
        }
        ("POST", p) if p.ends_with("/rename") => json!({"alias": "taken"}),
        ("POST", p) if p.ends_with("/resize") => json!({"package": "small"}),
        ("POST", "/v1/instances/{id}/snapshots") => json!({"name": "bobs"}),
        ("POST", p) if p.ends_with("/rollback") => json!({}),
        ("POST", "/v1/networks") => json!({"name": "n2", "nic_tag": "admin",
            "subnet": "10.99.0.0/24", "provision_start": "10.99.0.10", "provision_end": "10.99.0.20"}),
        ("POST", "/v1/networks/{id}/ips") => json!({}),
        ("POST", "/v1/fabrics/vlans/{vlan_id}/networks") => json!({"name": "n3",
            "subnet": "192.168.77.0/24", "provision_start": "192.168.77.10", "provision_end": "192.168.77.20"}),
        ("POST", "/v1/nictags") => json!({"name": "t2"}),
        ("POST", "/v1/network-pools") => json!({"name": "p2", "networks": ["net"]}),
        ("POST", "/v1/packages") => {
            json!({"name": "p2", "version": "1", "memory_mb": 64, "disk_mb": 64, "vcpus": 1, "brand": "container"})
        }
        ("PATCH", "/v1/packages/{id}") => json!({"active": false}),
        ("POST", "/v1/servers/join-tokens") => json!({}),
        ("POST", "/v1/servers/{id}/setup") => json!({"zpool": "zones"}),
        _ => return None,
    };
    Some(b)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_in_the_api_document_keeps_tenants_apart() {
    let Some(dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let op = dc.op();
    let (alice_id, alice) = dc.tenant("alice").await;
    let (bob_id, bob) = dc.tenant("bob").await;

    // Alice's things.
    let (st, created) = alice
        .post(
            "/v1/instances",
            &json!({"alias": "mine", "image": "busybox", "package": "small", "networks": ["net"]}),
        )
        .await;
    assert_eq!(st, 202, "{created}");
    let instance = created["instance"]["id"].as_str().unwrap().to_string();
    let job = created["job_id"].as_str().unwrap().to_string();
    dc.wait_state(&instance, "running", Duration::from_secs(120))
        .await;
    for (path, b) in [
        (format!("/v1/instances/{instance}/tags"), json!({"k": "v"})),
        (
            format!("/v1/instances/{instance}/metadata"),
            json!({"k": "v"}),
        ),
    ] {
        let (st, r) = alice.put(&path, &b).await;
        assert_eq!(st, 200, "{path}: {r}");
    }
    let (st, snap) = alice
        .post(
            &format!("/v1/instances/{instance}/snapshots"),
            &json!({"name": "s1"}),
        )
        .await;
    assert!(st == 201 || st == 202, "{snap}");
    let (st, image) = alice
        .post(
            "/v1/images",
            &json!({"name": "private", "version": "1.0.0", "type": "container", "os": "linux"}),
        )
        .await;
    assert_eq!(st, 201, "{image}");
    let image = image["id"].as_str().unwrap().to_string();
    let (st, rule) = alice
        .post(
            "/v1/fwrules",
            &json!({"rule": format!("FROM any TO vm {instance} ALLOW tcp PORT 80"), "enabled": true}),
        )
        .await;
    assert_eq!(st, 201, "{rule}");
    let rule = rule["id"].as_str().unwrap().to_string();
    let (st, v) = alice
        .post("/v1/fabrics/vlans", &json!({"vlan_id": 42, "name": "hers"}))
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, fabric_net) = alice
        .post(
            "/v1/fabrics/vlans/42/networks",
            &json!({"name": "hers", "subnet": "192.168.77.0/24",
                    "provision_start": "192.168.77.10", "provision_end": "192.168.77.20"}),
        )
        .await;
    assert_eq!(st, 201, "{fabric_net}");
    let fabric_net = fabric_net["id"].as_str().unwrap().to_string();
    let key = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-t", "ed25519", "-N", "", "-q", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::read_to_string(path.with_extension("pub")).unwrap()
    };
    let (st, k) = alice
        .post("/v1/keys", &json!({"name": "k", "key": key.trim()}))
        .await;
    assert_eq!(st, 201, "{k}");
    let (st, token) = alice.post("/v1/tokens", &json!({"name": "second"})).await;
    assert_eq!(st, 201, "{token}");
    let token = token["token"]["id"].as_str().unwrap().to_string();
    // Shared things, for the operator-only operations.
    let (_, servers) = op.get("/v1/servers").await;
    let server = servers["items"][0]["id"].as_str().unwrap().to_string();
    let (_, nets) = op.get("/v1/networks").await;
    let network = nets["items"][0]["id"].as_str().unwrap().to_string();
    let (_, pkgs) = op.get("/v1/packages").await;
    let package = pkgs["items"][0]["id"].as_str().unwrap().to_string();
    let (st, pool) = op
        .post(
            "/v1/network-pools",
            &json!({"name": "shared", "networks": ["net"]}),
        )
        .await;
    assert_eq!(st, 201, "{pool}");
    let pool = pool["id"].as_str().unwrap().to_string();
    let alices_ids = [
        &alice_id,
        &instance,
        &job,
        &image,
        &rule,
        &token,
        &fabric_net,
    ];

    let fill: BTreeMap<&str, String> = [
        ("/v1/accounts/{id}", alice_id.clone()),
        ("/v1/instances/{id}", instance.clone()),
        ("/v1/images/{id}", image.clone()),
        ("/v1/fwrules/{id}", rule.clone()),
        ("/v1/jobs/{id}", job.clone()),
        ("/v1/tokens/{id}", token.clone()),
        ("/v1/servers/{id}", server.clone()),
        ("/v1/networks/{id}", network.clone()),
        ("/v1/packages/{id}", package.clone()),
        ("/v1/fabrics/", fabric_net.clone()),
        ("/v1/network-pools/{id}", pool.clone()),
    ]
    .into_iter()
    .collect();
    let concrete = |path: &str| -> String {
        let mut out = path.to_string();
        for (prefix, id) in &fill {
            if path.starts_with(prefix) {
                out = out.replacen("{id}", id, 1);
            }
        }
        out.replace(
            "{name}",
            if path.contains("snapshots") {
                "s1"
            } else {
                "k"
            },
        )
        .replace("{key}", "k")
        .replace("{ip}", "10.0.0.1")
        .replace("{vlan_id}", "42")
        .replace("/v1/nictags/{name}", "/v1/nictags/admin")
    };

    let (st, doc) = nereid_tests::api::Api::anonymous(&dc.headnode().rest_url)
        .get("/openapi.json")
        .await;
    assert_eq!(st, 200);
    let mut checked = 0;
    let mut unclassified = Vec::new();
    let mut wrong = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let Some(expect) = classify(&method, path) else {
                unclassified.push(format!("{method} {path}"));
                continue;
            };
            if expect == Expect::Skip {
                continue;
            }
            let url = concrete(path);
            let mut req = bob.request(method.clone(), &url);
            if path.ends_with("/file") && method == Method::PUT {
                req = req
                    .header("content-type", "application/octet-stream")
                    .body("x");
            } else if let Some(b) = body(&method, path) {
                req = req.json(&b);
            } else if method != Method::GET && method != Method::DELETE {
                req = req.json(&json!({}));
            }
            let (st, answer) = bob.send(req).await;
            checked += 1;
            let ok = match expect {
                Expect::Missing => st == 404,
                Expect::Forbidden => st == 403,
                // Bob's audit log holds his own refused requests, whose
                // paths name alice's ids: every entry must be about him.
                Expect::OwnList if path == "/v1/audit" => {
                    st == 200
                        && answer["items"]
                            .as_array()
                            .is_some_and(|a| a.iter().all(|e| e["owner"] == bob_id.as_str()))
                }
                Expect::OwnList => {
                    let text = answer.to_string();
                    st == 200 && !alices_ids.iter().any(|id| text.contains(id.as_str()))
                }
                Expect::Skip => true,
            };
            if !ok {
                wrong.push(format!("{method} {url} ({expect:?}): {st} {answer}"));
            }
        }
    }
    // The force delete is operator-only whatever the instance.
    let (st, answer) = bob
        .delete(&format!("/v1/instances/{instance}?force=true"))
        .await;
    if st != 403 {
        wrong.push(format!("DELETE ?force=true: {st} {answer}"));
    }
    // Shared networks are readable; another account's fabric network is missing.
    let (st, answer) = bob.get(&format!("/v1/networks/{fabric_net}")).await;
    if st != 404 {
        wrong.push(format!("GET alice's fabric network: {st} {answer}"));
    }
    assert!(
        unclassified.is_empty(),
        "operations the matrix does not classify: {unclassified:?}"
    );
    assert!(
        wrong.is_empty(),
        "{} of {checked}:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(checked > 60, "only {checked} operations checked");

    // Nothing of alice's changed.
    let inst = dc.instance(&instance).await;
    assert_eq!(inst["state"], "running");
    assert_eq!(inst["alias"], "mine");
    for path in [
        format!("/v1/instances/{instance}/tags"),
        format!("/v1/instances/{instance}/metadata"),
    ] {
        let (st, m) = alice.get(&path).await;
        assert_eq!((st, m), (200, json!({"k": "v"})), "{path}");
    }
    for path in [
        "/v1/fabrics/vlans/42".to_string(),
        format!("/v1/images/{image}"),
        format!("/v1/fwrules/{rule}"),
        format!("/v1/instances/{instance}/snapshots/s1"),
        "/v1/keys/k".to_string(),
    ] {
        let (st, r) = alice.get(&path).await;
        assert_eq!(st, 200, "{path}: {r}");
    }
    let (_, rule) = alice.get(&format!("/v1/fwrules/{rule}")).await;
    assert_eq!(rule["enabled"], true);
    let (_, tokens) = alice.get("/v1/tokens").await;
    assert!(tokens.to_string().contains(&token));
}
