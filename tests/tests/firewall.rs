//! Firewall rules enforced with real traffic between instances on two nodes:
//! a firewalled instance takes only what a rule allows; rules follow
//! enable/disable, BLOCK beats ALLOW at equal priority and a higher priority
//! beats both; replies flow back; a restarted agent applies its set again;
//! bad rules get a 4xx naming the problem.

use std::process::Command;
use std::time::Duration;

use nereid_tests::api::{assert_error, assert_error_says};
use nereid_tests::datacenter::{Datacenter, DcOpts, ip_of};
use serde_json::{Value, json};

/// Serves "hi" over HTTP on ports 80 and 81 inside the instance.
fn serve(dc: &Datacenter, inst: &Value) {
    let (ok, out) = dc.exec(
        inst,
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/www && echo hi > /tmp/www/index.html && \
             httpd -p 80 -h /tmp/www && httpd -p 81 -h /tmp/www",
        ],
    );
    assert!(ok, "{out}");
}

/// Whether `from` gets "hi" from `to`'s port within 2 s (an HTTP GET by
/// hand through nc).
fn reaches(dc: &Datacenter, from: &Value, to: &Value, port: u16) -> bool {
    let script = format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {} {port}",
        ip_of(to)
    );
    let (ok, out) = dc.exec(from, &["sh", "-c", &script]);
    ok && out.contains("200 OK") && out.trim_end().ends_with("hi")
}

/// Waits until `from` reaching `to`'s port is `want` (pushes are async).
async fn until_reach(dc: &Datacenter, from: &Value, to: &Value, port: u16, want: bool) {
    let what = format!("port {port} to be {}", if want { "open" } else { "closed" });
    nereid_tests::wait_for(&what, Duration::from_secs(30), || async {
        (reaches(dc, from, to, port) == want).then_some(())
    })
    .await;
}

async fn rule(dc: &Datacenter, text: &str) -> String {
    let (st, body) = dc
        .op()
        .post("/v1/fwrules", &json!({"rule": text, "enabled": true}))
        .await;
    assert_eq!(st, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn set_enabled(dc: &Datacenter, id: &str, enabled: bool) {
    let (st, body) = dc
        .op()
        .patch(&format!("/v1/fwrules/{id}"), &json!({"enabled": enabled}))
        .await;
    assert_eq!(st, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_open_a_firewalled_instance_to_exactly_what_they_allow() {
    let Some(mut dc) = Datacenter::start(DcOpts::default()).await else {
        return;
    };
    let web = dc
        .provision(
            "web",
            json!({"firewall_enabled": true, "tags": {"role": "web"}}),
        )
        .await;
    let client = dc.provision("client", json!({})).await;
    serve(&dc, &web);
    serve(&dc, &client);

    // Firewall on, no rule: nothing gets in; replies to its own calls do.
    assert!(!reaches(&dc, &client, &web, 80));
    assert!(!reaches(&dc, &client, &web, 81));
    assert!(reaches(&dc, &web, &client, 80));

    let allow80 = rule(&dc, "FROM any TO tag role=web ALLOW tcp PORT 80").await;
    until_reach(&dc, &client, &web, 80, true).await;
    assert!(!reaches(&dc, &client, &web, 81));

    // Which rules touch an instance.
    let (_, listed) = dc
        .op()
        .get(&format!(
            "/v1/fwrules?instance={}",
            web["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    let (_, listed) = dc
        .op()
        .get(&format!(
            "/v1/fwrules?instance={}",
            client["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(listed["items"], json!([]), "{listed}");

    set_enabled(&dc, &allow80, false).await;
    until_reach(&dc, &client, &web, 80, false).await;
    set_enabled(&dc, &allow80, true).await;
    until_reach(&dc, &client, &web, 80, true).await;

    // Retagged, the instance loses the permission; tagged back, it has it again.
    let tags = format!("/v1/instances/{}/tags", web["id"].as_str().unwrap());
    let (st, body) = dc.op().put(&tags, &json!({"role": "db"})).await;
    assert_eq!(st, 200, "{body}");
    until_reach(&dc, &client, &web, 80, false).await;
    let (st, body) = dc.op().put(&tags, &json!({"role": "web"})).await;
    assert_eq!(st, 200, "{body}");
    until_reach(&dc, &client, &web, 80, true).await;

    // BLOCK beats ALLOW at equal priority; a higher priority beats both.
    let client_id = client["id"].as_str().unwrap();
    let block = rule(
        &dc,
        &format!("FROM vm {client_id} TO tag role=web BLOCK tcp PORT 80"),
    )
    .await;
    until_reach(&dc, &client, &web, 80, false).await;
    let high = rule(
        &dc,
        &format!("FROM (vm {client_id} OR subnet 10.0.0.0/8) TO all vms ALLOW tcp PORTS 80-81 PRIORITY 10"),
    )
    .await;
    until_reach(&dc, &client, &web, 80, true).await;
    until_reach(&dc, &client, &web, 81, true).await;
    for id in [&block, &high] {
        let (st, _) = dc.op().delete(&format!("/v1/fwrules/{id}")).await;
        assert_eq!(st, 204);
    }
    until_reach(&dc, &client, &web, 81, false).await;
    assert!(reaches(&dc, &client, &web, 80));

    // The web node's agent, its table removed by hand and restarted, applies
    // its last set again.
    let web_node = dc
        .nodes
        .iter()
        .position(|n| Some(n.server_id.as_str()) == web["server_id"].as_str())
        .unwrap();
    let (ns, table) = (
        dc.nodes[web_node].netns.clone(),
        dc.nodes[web_node].agent.opts.nft_table.clone(),
    );
    let nft = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns, "nft"])
            .args(args)
            .output()
            .unwrap()
    };
    assert!(nft(&["delete", "table", "inet", &table]).status.success());
    assert!(reaches(&dc, &client, &web, 81), "no table: no firewall");
    dc.nodes[web_node].agent.restart_in_place(vec![]);
    until_reach(&dc, &client, &web, 81, false).await;
    assert!(reaches(&dc, &client, &web, 80));

    // The instance's firewall off: everything gets in; on again: as before.
    let web_id = web["id"].as_str().unwrap();
    let (st, body) = dc
        .op()
        .post(
            &format!("/v1/instances/{web_id}/disable-firewall"),
            &json!({}),
        )
        .await;
    assert_eq!(
        (st, &body["firewall_enabled"]),
        (200, &json!(false)),
        "{body}"
    );
    until_reach(&dc, &client, &web, 81, true).await;
    let (st, _) = dc
        .op()
        .post(
            &format!("/v1/instances/{web_id}/enable-firewall"),
            &json!({}),
        )
        .await;
    assert_eq!(st, 200);
    until_reach(&dc, &client, &web, 81, false).await;
    assert!(reaches(&dc, &client, &web, 80));

    // Gone with the instances: the node's table keeps no chain of theirs.
    for i in [&web, &client] {
        dc.act(i["id"].as_str().unwrap(), "delete").await;
    }
    nereid_tests::wait_for(
        "the firewall to forget them",
        Duration::from_secs(30),
        || async {
            let text = String::from_utf8_lossy(&nft(&["list", "table", "inet", &table]).stdout)
                .into_owned();
            (!text.contains("chain in0")).then_some(())
        },
    )
    .await;
    dc.assert_nothing_held().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_get_a_4xx_naming_the_problem_and_tenants_keep_to_their_own() {
    let Some(dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let (_, alice) = dc.tenant("alice").await;
    let (_, bob) = dc.tenant("bob").await;
    let (st, body) = alice
        .post(
            "/v1/instances",
            &json!({"alias": "a1", "image": "busybox", "package": "small", "networks": ["net"]}),
        )
        .await;
    assert_eq!(st, 202, "{body}");
    let alices = body["instance"]["id"].as_str().unwrap().to_string();
    dc.wait_job(body["job_id"].as_str().unwrap()).await;

    let r = bob
        .post(
            "/v1/fwrules",
            &json!({"rule": "FROM any TO all vms ALOW tcp PORT 80"}),
        )
        .await;
    assert_error_says(
        &r,
        400,
        "InvalidArgument",
        "line 1, column 21: expected ALLOW or BLOCK",
    );
    for bad in [
        "FROM any TO any ALLOW tcp PORT 0",
        "FROM subnet 10.0.0.1/24 TO any ALLOW tcp PORT 1",
        "FROM any TO any ALLOW tcp PORT 1 PRIORITY 101",
        "FROM any TO any ALLOW icmp TYPE 256",
    ] {
        assert_error(
            &bob.post("/v1/fwrules", &json!({"rule": bad})).await,
            400,
            "InvalidArgument",
        );
    }
    let long = format!("FROM any TO any ALLOW tcp PORT 1 {}", " ".repeat(5000));
    assert_error(
        &bob.post("/v1/fwrules", &json!({"rule": long})).await,
        400,
        "InvalidArgument",
    );
    // Another tenant's instance is as missing as one that never was.
    let r = bob
        .post(
            "/v1/fwrules",
            &json!({"rule": format!("FROM any TO vm {alices} ALLOW tcp PORT 22")}),
        )
        .await;
    assert_error(&r, 404, "NotFound");
    assert_error(
        &bob.post(
            "/v1/fwrules",
            &json!({"rule": "FROM any TO all vms ALLOW tcp PORT 22", "global": true}),
        )
        .await,
        403,
        "Forbidden",
    );
    // Alice names her own instance; bob neither sees nor changes her rule.
    let (st, mine) = alice
        .post(
            "/v1/fwrules",
            &json!({"rule": format!("FROM any TO vm {alices} ALLOW tcp PORT 22"), "description": "ssh"}),
        )
        .await;
    assert_eq!(st, 201, "{mine}");
    assert_eq!(mine["enabled"], false);
    let id = mine["id"].as_str().unwrap();
    assert_error(
        &bob.get(&format!("/v1/fwrules/{id}")).await,
        404,
        "NotFound",
    );
    assert_error(
        &bob.patch(&format!("/v1/fwrules/{id}"), &json!({"enabled": true}))
            .await,
        404,
        "NotFound",
    );
    assert_error(
        &bob.delete(&format!("/v1/fwrules/{id}")).await,
        404,
        "NotFound",
    );
    let (_, bobs) = bob.get("/v1/fwrules").await;
    assert_eq!(bobs["items"], json!([]));
    // An operator's global rule: every tenant reads it, none changes it.
    let (st, global) = dc
        .op()
        .post(
            "/v1/fwrules",
            &json!({"rule": "FROM any TO all vms ALLOW icmp TYPE 8", "global": true}),
        )
        .await;
    assert_eq!(st, 201, "{global}");
    assert_eq!(global["global"], true);
    let gid = global["id"].as_str().unwrap();
    let (_, bobs) = bob.get("/v1/fwrules").await;
    assert_eq!(bobs["items"].as_array().unwrap().len(), 1);
    assert_error(
        &bob.delete(&format!("/v1/fwrules/{gid}")).await,
        403,
        "Forbidden",
    );
    // A bad change leaves the rule as it was.
    assert_error(
        &alice
            .patch(
                &format!("/v1/fwrules/{id}"),
                &json!({"rule": "FROM nowhere"}),
            )
            .await,
        400,
        "InvalidArgument",
    );
    let (_, still) = alice.get(&format!("/v1/fwrules/{id}")).await;
    assert_eq!(still["rule"], mine["rule"]);
}
