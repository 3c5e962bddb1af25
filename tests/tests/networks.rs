//! Packages, nic tags, networks and IP allocation through the API.

use std::collections::HashSet;

use nereid_tests::api::{Api, assert_error, assert_error_says};
use nereid_tests::datacenter::{Datacenter, DcOpts, ip_of};
use nereid_tests::procs::{Headnode, HeadnodeOpts};
use serde_json::{Value, json};

fn net(name: &str, subnet: &str, start: &str, end: &str) -> Value {
    json!({"name": name, "nic_tag": "external", "subnet": subnet, "gateway": null,
           "provision_start": start, "provision_end": end, "resolvers": ["192.0.2.53"]})
}

async fn setup(h: &Headnode) -> Api {
    let op = h.operator();
    let (st, tag) = op
        .post("/v1/nictags", &json!({"name": "external", "mtu": 1500}))
        .await;
    assert_eq!(st, 201, "{tag}");
    op
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_concurrent_allocations_on_250_free_addresses_give_250_distinct_ips() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = setup(&h).await;
    // 10.77.0.1 .. 10.77.0.251 minus the gateway .1 = 250 free addresses.
    let mut body = net("alloc", "10.77.0.0/24", "10.77.0.1", "10.77.0.251");
    body["gateway"] = json!("10.77.0.1");
    let (st, n) = op.post("/v1/networks", &body).await;
    assert_eq!(st, 201, "{n}");
    let id = n["id"].as_str().unwrap().to_string();

    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let op = op.clone();
            let path = format!("/v1/networks/{id}/ips");
            tokio::spawn(async move { op.post(&path, &json!({})).await })
        })
        .collect();
    let mut ips = HashSet::new();
    let mut exhausted = 0;
    for t in tasks {
        let (st, body) = t.await.unwrap();
        match st {
            201 => assert!(
                ips.insert(body["ip"].as_str().unwrap().to_string()),
                "{} handed out twice",
                body["ip"]
            ),
            409 => {
                assert_eq!(body["error"]["code"], "Exhausted", "{body}");
                exhausted += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ips.len(), 250);
    assert_eq!(exhausted, 250);
    assert!(
        !ips.contains("10.77.0.1"),
        "the gateway is never handed out"
    );

    // Freed addresses are handed out again, lowest first.
    for ip in ["10.77.0.100", "10.77.0.7"] {
        assert_eq!(
            op.delete(&format!("/v1/networks/{id}/ips/{ip}")).await.0,
            204
        );
    }
    let (_, a) = op.post(&format!("/v1/networks/{id}/ips"), &json!({})).await;
    assert_eq!(a["ip"], "10.77.0.7");
    let (_, b) = op.post(&format!("/v1/networks/{id}/ips"), &json!({})).await;
    assert_eq!(b["ip"], "10.77.0.100");
    assert_error(
        &op.post(&format!("/v1/networks/{id}/ips"), &json!({})).await,
        409,
        "Exhausted",
    );

    // Listing pages through the taken addresses in order.
    let (_, page) = op.get(&format!("/v1/networks/{id}/ips?limit=100")).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 100);
    assert_eq!(page["items"][0]["ip"], "10.77.0.2", "{page}");
    let token = page["next_page_token"].as_str().unwrap();
    let (_, page2) = op
        .get(&format!(
            "/v1/networks/{id}/ips?limit=100&page_token={token}"
        ))
        .await;
    assert_eq!(page2["items"][0]["ip"], "10.77.0.102");
}

#[tokio::test(flavor = "multi_thread")]
async fn specific_addresses_are_reserved_once_and_freed() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = setup(&h).await;
    let mut body = net("res", "10.78.0.0/24", "10.78.0.10", "10.78.0.20");
    body["gateway"] = json!("10.78.0.1");
    let (_, n) = op.post("/v1/networks", &body).await;
    let ips = format!("/v1/networks/{}/ips", n["id"].as_str().unwrap());

    let (st, r) = op.post(&ips, &json!({"ip": "10.78.0.15"})).await;
    assert_eq!((st, r["reserved"].clone()), (201, json!(true)));
    assert_error(
        &op.post(&ips, &json!({"ip": "10.78.0.15"})).await,
        409,
        "Conflict",
    );
    // Outside the provision range but inside the subnet is fine.
    assert_eq!(op.post(&ips, &json!({"ip": "10.78.0.200"})).await.0, 201);
    assert_error(
        &op.post(&ips, &json!({"ip": "10.78.0.1"})).await,
        409,
        "Conflict",
    );
    // An address the network does not hold conflicts with its subnet.
    assert_error(
        &op.post(&ips, &json!({"ip": "10.78.1.5"})).await,
        409,
        "Conflict",
    );
    assert_error(
        &op.post(&ips, &json!({"ip": "10.78.0.255"})).await,
        409,
        "Conflict",
    );
    assert_error(
        &op.post(&ips, &json!({"ip": "banana"})).await,
        400,
        "InvalidArgument",
    );
    assert_eq!(op.delete(&format!("{ips}/10.78.0.200")).await.0, 204);
    assert_error(
        &op.delete(&format!("{ips}/10.78.0.200")).await,
        404,
        "NotFound",
    );
    assert_error(
        &op.delete(&format!("{ips}/10.78.0.11")).await,
        404,
        "NotFound",
    );
    let (_, list) = op.get(&ips).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_networks_get_4xx_naming_the_field() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = setup(&h).await;
    let good = net("good", "10.79.0.0/24", "10.79.0.10", "10.79.0.200");
    let (st, created) = op.post("/v1/networks", &good).await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(created["mtu"], 1500);
    assert_eq!(created["resolvers"], json!(["192.0.2.53"]));

    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = net("other", "10.80.0.0/24", "10.80.0.10", "10.80.0.20");
        f(&mut b);
        b
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            with(&|b| b["subnet"] = json!("10.80.0.0/33")),
            400,
            "subnet",
        ),
        (with(&|b| b["subnet"] = json!("not-a-cidr")), 400, "subnet"),
        (
            with(&|b| b["subnet"] = json!("10.80.0.7/24")),
            400,
            "did you mean 10.80.0.0/24",
        ),
        (
            with(&|b| b["provision_end"] = json!("10.81.0.20")),
            400,
            "provision_end",
        ),
        (
            with(&|b| b["provision_start"] = json!("10.80.0.30")),
            400,
            "provision_end",
        ),
        (with(&|b| b["gateway"] = json!("10.99.0.1")), 400, "gateway"),
        (with(&|b| b["vlan_id"] = json!(1)), 400, "VLAN 1"),
        (with(&|b| b["vlan_id"] = json!(5000)), 400, "vlan_id"),
        (with(&|b| b["nic_tag"] = json!("nosuchtag")), 404, "nic tag"),
        (with(&|b| b["mtu"] = json!(9000)), 409, "mtu"),
        (
            with(&|b| b["name"] = json!("n".repeat(10_000))),
            400,
            "name",
        ),
        (with(&|b| b["colour"] = json!("red")), 400, "colour"),
        (
            with(&|b| b["resolvers"] = json!(["dns.example"])),
            400,
            "resolvers",
        ),
        (
            with(&|b| {
                b["subnet"] = json!("10.79.0.128/25");
                b["provision_start"] = json!("10.79.0.130");
                b["provision_end"] = json!("10.79.0.140");
            }),
            409,
            "overlaps network \"good\"",
        ),
        (with(&|b| b["name"] = json!("good")), 409, "already exists"),
    ];
    for (body, status, needle) in cases {
        let (st, resp) = op.post("/v1/networks", &body).await;
        assert_eq!(st, status, "{needle}: {resp}");
        assert!(
            resp["error"]["message"].as_str().unwrap().contains(needle),
            "{needle}: {resp}"
        );
    }
    // The same subnet on another VLAN is another network.
    let mut vlan = net("vlan7", "10.79.0.0/24", "10.79.0.10", "10.79.0.200");
    vlan["vlan_id"] = json!(7);
    assert_eq!(op.post("/v1/networks", &vlan).await.0, 201);

    // A nic tag in use cannot go; a network can.
    assert_error(&op.delete("/v1/nictags/external").await, 409, "Conflict");
    let id = created["id"].as_str().unwrap();
    assert_eq!(op.delete(&format!("/v1/networks/{id}")).await.0, 204);
    assert_error(
        &op.get(&format!("/v1/networks/{id}")).await,
        404,
        "NotFound",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn package_sizes_are_immutable_and_used_packages_only_deactivate() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = h.operator();
    let pkg = json!({"name": "small", "version": "1.0", "memory_mb": 512, "vcpus": 1, "disk_mb": 10240, "brand": "container"});
    let (st, p) = op.post("/v1/packages", &pkg).await;
    assert_eq!(st, 201, "{p}");
    let path = format!("/v1/packages/{}", p["id"].as_str().unwrap());
    assert_error(&op.post("/v1/packages", &pkg).await, 409, "Conflict");

    let r = op
        .send(
            op.request(reqwest::Method::PATCH, &path)
                .json(&json!({"memory_mb": 1024})),
        )
        .await;
    assert_error(&r, 409, "Conflict");
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("memory_mb")
    );
    let (st, same) = op
        .send(
            op.request(reqwest::Method::PATCH, &path)
                .json(&json!({"memory_mb": 512, "description": "S"})),
        )
        .await;
    assert_eq!((st, same["description"].as_str()), (200, Some("S")));

    // Tenants see active packages only.
    let (_, t) = op
        .post("/v1/accounts", &json!({"name": "ten", "role": "tenant"}))
        .await;
    let (_, tok) = op
        .post("/v1/tokens", &json!({"account_id": t["id"], "name": "x"}))
        .await;
    let tenant = Api::new(&h.rest_url, tok["secret"].as_str().unwrap());
    assert_eq!(tenant.get(&path).await.0, 200);
    assert_error(&tenant.post("/v1/packages", &pkg).await, 403, "Forbidden");
    let (_, off) = op
        .send(
            op.request(reqwest::Method::PATCH, &path)
                .json(&json!({"active": false})),
        )
        .await;
    assert_eq!(off["active"], false);
    assert_error(&tenant.get(&path).await, 404, "NotFound");
    let (_, list) = tenant.get("/v1/packages").await;
    assert!(list["items"].as_array().unwrap().is_empty());

    // A used package cannot be deleted; an unused one can.
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&h.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE packages SET used = true")
        .execute(&mut db)
        .await
        .unwrap();
    assert_error(&op.delete(&path).await, 409, "Conflict");
    let (_, other) = op.post("/v1/packages", &json!({"name": "tmp", "version": "1", "memory_mb": 64, "vcpus": 1, "disk_mb": 100, "brand": "kvm"})).await;
    assert_eq!(
        op.delete(&format!("/v1/packages/{}", other["id"].as_str().unwrap()))
            .await
            .0,
        204
    );

    for (body, field) in [
        (
            json!({"name": "b", "version": "1", "memory_mb": 0, "vcpus": 1, "disk_mb": 1, "brand": "kvm"}),
            "memory_mb",
        ),
        (
            json!({"name": "b", "version": "1", "memory_mb": 64, "vcpus": 0, "disk_mb": 1, "brand": "kvm"}),
            "vcpus",
        ),
        (
            json!({"name": "b", "version": "1", "memory_mb": 64, "vcpus": 1, "disk_mb": 1, "brand": "zone"}),
            "brand",
        ),
        (
            json!({"name": "b", "version": "1", "memory_mb": -5, "vcpus": 1, "disk_mb": 1, "brand": "kvm"}),
            "memory_mb",
        ),
    ] {
        let r = op.post("/v1/packages", &body).await;
        assert_error(&r, 400, "InvalidArgument");
        assert!(
            r.1["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {}",
            r.1
        );
    }
    // An owner that does not exist is not found, as it would be in a path.
    let nobody = uuid::Uuid::now_v7();
    let r = op
        .post(
            "/v1/packages",
            &json!({"name": "b", "version": "1", "memory_mb": 64, "vcpus": 1, "disk_mb": 1, "brand": "kvm", "owners": [nobody]}),
        )
        .await;
    assert_error_says(&r, 404, "NotFound", &format!("account {nobody}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn network_pools_hold_shared_networks_of_one_nic_tag_and_keep_them_from_deletion() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = setup(&h).await;
    let (st, _) = op.post("/v1/nictags", &json!({"name": "other"})).await;
    assert_eq!(st, 201);
    let mut ids = Vec::new();
    for (name, tag, subnet) in [
        ("pa", "external", "10.81.0.0/24"),
        ("pb", "external", "10.82.0.0/24"),
        ("pc", "other", "10.83.0.0/24"),
    ] {
        let mut body = net(name, subnet, "10.8.0.10", "10.8.0.20");
        let base = subnet.trim_end_matches(".0/24");
        body["nic_tag"] = json!(tag);
        body["provision_start"] = json!(format!("{base}.10"));
        body["provision_end"] = json!(format!("{base}.20"));
        let (st, n) = op.post("/v1/networks", &body).await;
        assert_eq!(st, 201, "{n}");
        ids.push(n["id"].as_str().unwrap().to_string());
    }
    let pool = |name: &str, networks: Value| json!({"name": name, "networks": networks});
    assert_error_says(
        &op.post("/v1/network-pools", &pool("p", json!(["pa", "pc"])))
            .await,
        400,
        "InvalidArgument",
        "one nic tag",
    );
    assert_error_says(
        &op.post("/v1/network-pools", &pool("p", json!(["pa", "pa"])))
            .await,
        400,
        "InvalidArgument",
        "twice",
    );
    assert_error(
        &op.post("/v1/network-pools", &pool("p", json!([]))).await,
        400,
        "InvalidArgument",
    );
    assert_error(
        &op.post("/v1/network-pools", &pool("p", json!(["pa", "nope"])))
            .await,
        404,
        "NotFound",
    );
    let (_, alice) = h.tenant("alice").await;
    assert_error(
        &alice
            .post("/v1/network-pools", &pool("p", json!(["pa"])))
            .await,
        403,
        "Forbidden",
    );
    // In the order given, by name or id.
    let (st, p) = op
        .post("/v1/network-pools", &pool("p", json!([ids[1], "pa"])))
        .await;
    assert_eq!(st, 201, "{p}");
    assert_eq!(p["networks"], json!([ids[1], ids[0]]));
    assert_eq!(p["nic_tag"], "external");
    assert_error(
        &op.post("/v1/network-pools", &pool("p", json!(["pa"])))
            .await,
        409,
        "Conflict",
    );
    // Readable by tenants; its networks cannot go while it holds them.
    let (st, list) = alice.get("/v1/network-pools").await;
    assert_eq!(st, 200);
    assert_eq!(list["items"][0]["id"], p["id"], "{list}");
    assert_error_says(
        &op.delete(&format!("/v1/networks/{}", ids[0])).await,
        409,
        "Conflict",
        "pool",
    );
    let pid = p["id"].as_str().unwrap();
    assert_error(
        &alice.delete(&format!("/v1/network-pools/{pid}")).await,
        403,
        "Forbidden",
    );
    let (st, _) = op.delete(&format!("/v1/network-pools/{pid}")).await;
    assert_eq!(st, 204);
    let (st, _) = op.delete(&format!("/v1/networks/{}", ids[0])).await;
    assert_eq!(st, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_on_a_pool_gets_the_first_of_its_networks_with_a_free_address() {
    let Some(dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let op = dc.op();
    // A network of one address, first in the pool; then the datacenter's `net`.
    let k = dc.data_net.rsplit('.').next().unwrap();
    let (st, tiny) = op
        .post(
            "/v1/networks",
            &json!({"name": "tiny", "nic_tag": "admin", "subnet": format!("10.214.{k}.0/24"),
                    "provision_start": format!("10.214.{k}.10"), "provision_end": format!("10.214.{k}.10")}),
        )
        .await;
    assert_eq!(st, 201, "{tiny}");
    let (st, p) = op
        .post(
            "/v1/network-pools",
            &json!({"name": "public", "networks": ["tiny", "net"]}),
        )
        .await;
    assert_eq!(st, 201, "{p}");
    let first = dc.provision("first", json!({"networks": ["public"]})).await;
    assert_eq!(first["nics"][0]["network_id"], tiny["id"], "{first}");
    assert_eq!(ip_of(&first), format!("10.214.{k}.10"));
    let second = dc
        .provision("second", json!({"networks": ["public"]}))
        .await;
    assert_eq!(
        second["nics"][0]["network_id"],
        dc.network_id.as_str(),
        "{second}"
    );
    // Freed, the first network is first again.
    dc.act(first["id"].as_str().unwrap(), "delete").await;
    let third = dc.provision("third", json!({"networks": ["public"]})).await;
    assert_eq!(ip_of(&third), format!("10.214.{k}.10"));
}
