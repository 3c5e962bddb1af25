//! Provisioning through the REST API on a datacenter of two agent nodes, each
//! in its own network namespace with its own zpool: placement, networking,
//! lifecycle, cleanup, concurrency, state sync.

use std::time::Duration;

use nereid_tests::api::assert_error_says;
use nereid_tests::datacenter::{Datacenter, DcOpts, ip_of};
use nereid_tests::wait_for;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_two_nodes_reach_each_other_and_delete_leaves_nothing() {
    let Some(dc) = Datacenter::start(DcOpts::default()).await else {
        return;
    };
    let a = dc.provision("web1", json!({})).await;
    // Hard anti-affinity puts the second one on the other node.
    let b = dc
        .provision("web2", json!({"affinity": ["instance!=web1"]}))
        .await;
    assert_eq!(a["state"], "running");
    assert_ne!(a["server_id"], b["server_id"], "anti-affinity ignored");
    assert_ne!(ip_of(&a), ip_of(&b));
    assert_eq!(a["nics"][0]["gateway"], format!("{}.1", dc.data_net));

    // Across nodes, both ways, and from the host (the test gave the bridge the gateway).
    let (ok, out) = dc.exec(&a, &["ping", "-c", "1", "-W", "3", &ip_of(&b)]);
    assert!(ok, "web1 -> web2: {out}");
    let (ok, out) = dc.exec(&b, &["ping", "-c", "1", "-W", "3", &ip_of(&a)]);
    assert!(ok, "web2 -> web1: {out}");
    let st = std::process::Command::new("ping")
        .args(["-c", "1", "-W", "3", &ip_of(&a)])
        .output()
        .unwrap();
    assert!(st.status.success(), "host -> web1");
    let (ok, out) = dc.exec(&a, &["cat", "/etc/resolv.conf"]);
    assert!(
        ok && out.contains(&format!("nameserver {}.1", dc.data_net)),
        "{out}"
    );
    let (ok, out) = dc.exec(&a, &["hostname"]);
    assert!(ok && out.trim() == "web1", "{out}");

    // A second network on the same nic tag shares its wire: its instances
    // reach each other across the nodes, and the first network's still do.
    let (st, body) = dc
        .op()
        .post(
            "/v1/networks",
            &json!({"name": "second", "nic_tag": "admin", "subnet": "10.215.0.0/24",
                    "provision_start": "10.215.0.10", "provision_end": "10.215.0.20"}),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let c = dc
        .provision(
            "other1",
            json!({"networks": ["second"], "affinity": ["instance==web1"]}),
        )
        .await;
    let d = dc
        .provision(
            "other2",
            json!({"networks": ["second"], "affinity": ["instance==web2"]}),
        )
        .await;
    assert_ne!(c["server_id"], d["server_id"]);
    let (ok, out) = dc.exec(&c, &["ping", "-c", "1", "-W", "3", &ip_of(&d)]);
    assert!(ok, "other1 -> other2: {out}");
    let (ok, out) = dc.exec(&a, &["ping", "-c", "1", "-W", "3", &ip_of(&b)]);
    assert!(ok, "web1 -> web2 with a second network on the wire: {out}");
    for i in [&c, &d] {
        dc.act(i["id"].as_str().unwrap(), "delete").await;
    }

    // Stop and start.
    let id = a["id"].as_str().unwrap();
    dc.act(id, "stop").await;
    assert_eq!(dc.instance(id).await["state"], "stopped");
    let (ok, _) = dc.exec(&a, &["true"]);
    assert!(!ok, "a stopped instance still runs processes");
    dc.act(id, "start").await;
    assert_eq!(dc.instance(id).await["state"], "running");
    let (ok, out) = dc.exec(&a, &["ping", "-c", "1", "-W", "3", &ip_of(&b)]);
    assert!(ok, "after restart, web1 -> web2: {out}");
    dc.act(id, "reboot").await;
    assert_eq!(dc.instance(id).await["state"], "running");

    // The list filters.
    let (_, list) = dc.op().get("/v1/instances?alias=web2").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, list) = dc.op().get("/v1/instances?state=stopped").await;
    assert_eq!(list["items"], json!([]));

    // A used image cannot go.
    let (st, body) = dc.op().delete(&format!("/v1/images/{}", dc.image_id)).await;
    assert_eq!(st, 409, "deleting an image in use: {body}");

    for i in [&a, &b] {
        dc.act(i["id"].as_str().unwrap(), "delete").await;
    }
    assert_eq!(dc.instance(id).await["state"], "deleted");
    let (_, list) = dc.op().get("/v1/instances").await;
    assert_eq!(list["items"], json!([]), "deleted instances are listed");
    dc.assert_nothing_held().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_provisions_never_overcommit_a_server_and_the_rest_get_reasons() {
    // Two nodes of 1 GiB: four 256 MiB instances each.
    let Some(dc) = Datacenter::start(DcOpts {
        node_memory_mb: 1024,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let posts = (0..50).map(|i| {
        let dc = &dc;
        async move { dc.create(&format!("c{i}"), json!({})).await }
    });
    let results = futures::future::join_all(posts).await;
    let mut jobs = Vec::new();
    let mut refused = 0;
    for (st, body) in &results {
        match st {
            202 => jobs.push(body["job_id"].as_str().unwrap().to_string()),
            409 => {
                assert_eq!(body["error"]["code"], "InsufficientCapacity", "{body}");
                let msg = body["error"]["message"].as_str().unwrap();
                assert!(
                    msg.contains("2 servers") && msg.contains("lacked memory"),
                    "{msg}"
                );
                refused += 1;
            }
            _ => panic!("unexpected answer {st}: {body}"),
        }
    }
    assert_eq!(jobs.len(), 8, "exactly the capacity is placed");
    assert_eq!(refused, 42);
    for j in &jobs {
        assert_eq!(dc.wait_job(j).await["state"], "succeeded");
    }
    for (id, ram, _, _) in dc.capacity_used().await {
        assert!(ram <= 1024, "server {id} over-committed: {ram} MiB");
    }
    let (_, list) = dc.op().get("/v1/instances?state=running").await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 8);
    for n in &dc.nodes {
        let on = items
            .iter()
            .filter(|i| i["server_id"] == n.server_id.as_str())
            .count();
        assert_eq!(on, 4, "node {} holds {on}", n.netns);
        assert_eq!(n.instance_datasets().len(), 4);
    }
    for i in items {
        dc.act(i["id"].as_str().unwrap(), "delete").await;
    }
    dc.assert_nothing_held().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_create_with_the_same_idempotency_key_returns_the_first_instance() {
    let Some(dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let op = dc.op();
    let body =
        json!({"alias": "once", "image": "busybox", "package": "small", "networks": ["net"]});
    let send = || {
        op.send(
            op.request(reqwest::Method::POST, "/v1/instances")
                .header("Idempotency-Key", "k-123")
                .json(&body),
        )
    };
    let (st1, first) = send().await;
    let (st2, second) = send().await;
    assert_eq!(st1, 202, "{first}");
    assert_eq!(st2, 200, "{second}");
    assert_eq!(first["instance"]["id"], second["instance"]["id"]);
    assert_eq!(first["job_id"], second["job_id"]);
    let (_, list) = op.get("/v1/instances").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    // Without the key, the same alias is a conflict, and nothing is kept.
    let (st, err) = dc.create("once", json!({})).await;
    assert_eq!(st, 409, "{err}");
    assert_eq!(err["error"]["code"], "Conflict");
    // A second action while the provision runs (or after) is decided by the database.
    let job = dc.wait_job(first["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded");
    let id = first["instance"]["id"].as_str().unwrap();
    dc.act(id, "delete").await;
    dc.assert_nothing_held().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_create_requests_get_a_4xx_naming_the_field_and_leave_nothing() {
    let Some(dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    // A VLAN network on the nodes' nic tag: this kernel has no 802.1Q, the
    // node says so, and the scheduler names it.
    let (st, body) = dc
        .op()
        .post(
            "/v1/networks",
            &json!({"name": "vlan100", "nic_tag": "admin", "vlan_id": 100,
                    "subnet": "10.214.0.0/24", "provision_start": "10.214.0.10",
                    "provision_end": "10.214.0.20"}),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let (_, server) = dc
        .op()
        .get(&format!("/v1/servers/{}", dc.nodes[0].server_id))
        .await;
    if server["sysinfo"]["capabilities"]["vlan"]["available"] == true {
        // A kernel with 802.1Q: the instance runs on its VLAN.
        let i = dc
            .provision("tagged", json!({"networks": ["vlan100"]}))
            .await;
        dc.act(i["id"].as_str().unwrap(), "delete").await;
    } else {
        assert_error_says(
            &dc.create("tagged", json!({"networks": ["vlan100"]})).await,
            409,
            "InsufficientCapacity",
            "1 server: 1 lack vlan",
        );
    }
    let cases = [
        (json!({"alias": "-bad"}), 400, "alias"),
        (json!({"alias": "x".repeat(10_000)}), 400, "alias"),
        (json!({"image": "nope"}), 404, "image"),
        (json!({"package": "nope"}), 404, "package"),
        (json!({"networks": ["nope"]}), 404, "network \"nope\""),
        (json!({"networks": ["net", "net"]}), 400, "networks"),
        (json!({"affinity": ["instance<>x"]}), 400, "affinity"),
        (json!({"tags": {"a": {"nested": 1}}}), 400, "tags"),
        (json!({"unknown_field": 1}), 400, "unknown_field"),
        (
            json!({"affinity": ["server==00000000-0000-0000-0000-000000000001"]}),
            409,
            "1 server",
        ),
    ];
    for (extra, want, field) in cases {
        let (st, body) = dc.create("ok", extra.clone()).await;
        assert_eq!(st, want, "{extra}: {body}");
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(field),
            "{extra}: message {msg:?} does not name {field}"
        );
    }
    let (st, body) = dc
        .op()
        .get("/v1/instances/00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(st, 404, "{body}");
    let (st, _) = dc.op().get("/v1/instances/not-a-uuid").await;
    assert_eq!(st, 400);
    let (st, _) = dc.op().get("/v1/instances?state=sleeping").await;
    assert_eq!(st, 400);
    let (_, list) = dc.op().get("/v1/instances?state=deleted").await;
    assert_eq!(
        list["items"],
        json!([]),
        "a refused create left an instance"
    );
    dc.assert_nothing_held().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reports_settle_instance_state_without_deleting_anything() {
    let Some(mut dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let a = dc.provision("sync1", json!({})).await;
    let b = dc.provision("sync2", json!({})).await;
    let (ida, idb) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());

    // The container dies by itself: the node's event makes it stopped.
    let node = dc.node_of(&a);
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(node.runc_root())
        .args(["kill", ida, "KILL"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("sync1 to be stopped", Duration::from_secs(20), || async {
        (dc.instance(ida).await["state"] == "stopped").then_some(())
    })
    .await;

    // Its node loses it behind the headnode's back: failed, not deleted.
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(node.runc_root())
        .args(["delete", "-f", idb])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ds = format!("{}/instances/{idb}", node.pool.name);
    wait_for("the dataset to go", Duration::from_secs(30), || async {
        let _ = std::process::Command::new("zfs")
            .args(["unmount", "-f", &ds])
            .output();
        let out = std::process::Command::new("zfs")
            .args(["destroy", "-r", &ds])
            .output()
            .unwrap();
        out.status.success().then_some(())
    })
    .await;
    wait_for("sync2 to be failed", Duration::from_secs(20), || async {
        (dc.instance(idb).await["state"] == "failed").then_some(())
    })
    .await;
    let gone = dc.instance(idb).await;
    assert!(
        gone["error"].as_str().unwrap().contains("no longer has"),
        "{gone}"
    );

    // The server goes quiet: its instances are unknown; it comes back: they settle.
    dc.nodes[0].agent.proc.kill();
    wait_for("sync1 to be unknown", Duration::from_secs(20), || async {
        (dc.instance(ida).await["state"] == "unknown").then_some(())
    })
    .await;
    dc.nodes[0].agent.restart_in_place(Vec::new());
    wait_for(
        "sync1 to be stopped again",
        Duration::from_secs(30),
        || async { (dc.instance(ida).await["state"] == "stopped").then_some(()) },
    )
    .await;

    // A failed instance can still be deleted, and everything it held goes.
    dc.act(idb, "delete").await;
    dc.act(ida, "delete").await;
    dc.assert_nothing_held().await;
    let _ = &mut dc;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_and_act_on_only_their_own_instances() {
    let Some(dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let op = dc.op();
    let mut tenants = Vec::new();
    for name in ["alice", "bob"] {
        tenants.push(dc.tenant(name).await);
    }
    let (alice_id, alice) = &tenants[0];
    let (_, bob) = &tenants[1];
    let body =
        json!({"alias": "mine", "image": "busybox", "package": "small", "networks": ["net"]});
    let (st, created) = alice.post("/v1/instances", &body).await;
    assert_eq!(st, 202, "{created}");
    assert_eq!(created["instance"]["owner"], alice_id.as_str());
    let id = created["instance"]["id"].as_str().unwrap();
    let job = created["job_id"].as_str().unwrap();
    // The same alias is free for another tenant.
    let (st, other) = bob.post("/v1/instances", &body).await;
    assert_eq!(st, 202, "{other}");
    let bobs = other["instance"]["id"].as_str().unwrap();

    // Bob gets the 404 of a missing instance for everything of Alice's.
    for path in [format!("/v1/instances/{id}"), format!("/v1/jobs/{job}")] {
        let (st, body) = bob.get(&path).await;
        assert_eq!(st, 404, "{path}: {body}");
    }
    let (st, _) = bob
        .post(&format!("/v1/instances/{id}/stop"), &json!({}))
        .await;
    assert_eq!(st, 404);
    let (st, _) = bob.delete(&format!("/v1/instances/{id}")).await;
    assert_eq!(st, 404);
    let (_, list) = bob.get("/v1/instances").await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [bobs]);
    // A tenant cannot create for someone else; an operator can, and sees all.
    let mut for_alice = body.clone();
    for_alice["alias"] = json!("gift");
    for_alice["owner"] = json!(alice_id);
    let (st, _) = bob.post("/v1/instances", &for_alice).await;
    assert_eq!(st, 403);
    let (_, all) = op.get("/v1/instances").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    let (_, only) = op.get(&format!("/v1/instances?owner={alice_id}")).await;
    assert_eq!(only["items"].as_array().unwrap().len(), 1);

    // A server with instances cannot be deleted.
    for j in [job, other["job_id"].as_str().unwrap()] {
        assert_eq!(dc.wait_job(j).await["state"], "succeeded");
    }
    let (st, body) = op
        .delete(&format!("/v1/servers/{}", dc.nodes[0].server_id))
        .await;
    assert_eq!(st, 409, "{body}");

    for (who, inst) in [(alice, id), (bob, bobs)] {
        let (st, b) = who.delete(&format!("/v1/instances/{inst}")).await;
        assert_eq!(st, 202, "{b}");
        assert_eq!(
            dc.wait_job(b["job_id"].as_str().unwrap()).await["state"],
            "succeeded"
        );
    }
    dc.assert_nothing_held().await;
}
