//! Fabrics: each account's own VLANs and networks, carried between nodes
//! over VXLAN with forwarding entries pushed by the headnode (no flooding).
//! Real traffic between containers on two nodes (network namespaces whose
//! management links are the underlay).

use std::process::Command;
use std::time::Duration;

use nereid_tests::api::{Api, assert_error, assert_error_says};
use nereid_tests::datacenter::{Datacenter, DcOpts, ip_of};
use nereid_tests::procs::{Headnode, HeadnodeOpts};
use serde_json::{Value, json};

/// A fabric VLAN and a network "fab" on it for the caller; returns the VLAN.
async fn fabric(
    api: &Api,
    vlan: u16,
    subnet: &str,
    (start, end): (&str, &str),
    gateway: Option<&str>,
) -> Value {
    let (st, v) = api
        .post(
            "/v1/fabrics/vlans",
            &json!({"vlan_id": vlan, "name": "blue"}),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, n) = api
        .post(
            &format!("/v1/fabrics/vlans/{vlan}/networks"),
            &json!({"name": "fab", "subnet": subnet, "provision_start": start, "provision_end": end,
                    "gateway": gateway}),
        )
        .await;
    assert_eq!(st, 201, "{n}");
    assert_eq!(n["vni"], v["vni"], "{n}");
    assert_eq!(n["fabric_vlan_id"], vlan, "{n}");
    assert_eq!(n["mtu"], 1450, "the underlay's 1500 less VXLAN's 50: {n}");
    assert_eq!(n["internet_nat"], gateway.is_some(), "{n}");
    v
}

/// Whether one ping from `from` to `to` gets an answer within a second.
fn pings(dc: &Datacenter, from: &Value, to: &str) -> bool {
    dc.exec(from, &["ping", "-c", "1", "-W", "1", to]).0
}

/// `bridge fdb show dev nx<vni>` in a node's namespace: the VXLAN device's
/// own entries (with a remote) and what its bridge learned on it.
fn fdb(dc: &Datacenter, node: usize, vni: u64) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &dc.nodes[node].netns,
            "bridge",
            "fdb",
            "show",
        ])
        .args(["dev", &format!("nx{vni}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_accounts_fabric_spans_nodes_and_another_account_on_the_same_subnet_reaches_none_of_it()
{
    let Some(dc) = Datacenter::start(DcOpts::default()).await else {
        return;
    };
    let op = dc.op();
    let (alice_id, alice) = dc.tenant("alice").await;
    let (bob_id, bob) = dc.tenant("bob").await;
    // The same VLAN number and the same subnet for both: only the VNI differs.
    // Alice's has a gateway, which each node provides and NATs out to `net`.
    let va = fabric(
        &alice,
        2,
        "192.168.60.0/24",
        ("192.168.60.10", "192.168.60.19"),
        Some("192.168.60.1"),
    )
    .await;
    let vb = fabric(
        &bob,
        2,
        "192.168.60.0/24",
        ("192.168.60.20", "192.168.60.29"),
        None,
    )
    .await;
    let (vni_a, vni_b) = (va["vni"].as_u64().unwrap(), vb["vni"].as_u64().unwrap());
    assert_ne!(vni_a, vni_b);
    assert!(vni_a >= 1 << 23 && vni_b >= 1 << 23, "{va} {vb}");

    // One instance of each account on each node.
    let place = |owner: &str, node: usize| {
        json!({"owner": owner, "networks": ["fab"],
               "affinity": [format!("server=={}", dc.nodes[node].server_id)]})
    };
    let a0 = dc.provision("a0", place(&alice_id, 0)).await;
    let a1 = dc.provision("a1", place(&alice_id, 1)).await;
    let b0 = dc.provision("b0", place(&bob_id, 0)).await;
    let b1 = dc.provision("b1", place(&bob_id, 1)).await;
    assert_eq!(dc.node_of(&a0).server_id, dc.nodes[0].server_id);
    assert_eq!(dc.node_of(&a1).server_id, dc.nodes[1].server_id);
    for i in [&a0, &a1] {
        assert!(ip_of(i).starts_with("192.168.60.1"), "{i}");
    }
    for i in [&b0, &b1] {
        assert!(ip_of(i).starts_with("192.168.60.2"), "{i}");
    }

    // Each account's instances reach each other across the nodes.
    for (from, to) in [(&a0, &a1), (&a1, &a0), (&b0, &b1), (&b1, &b0)] {
        nereid_tests::wait_for(
            &format!("{} to ping {}", from["alias"], to["alias"]),
            Duration::from_secs(30),
            || async { pings(&dc, from, &ip_of(to)).then_some(()) },
        )
        .await;
    }
    // Nothing crosses between the accounts, on one node or across two.
    for (from, to) in [(&b0, &a0), (&b0, &a1), (&b1, &a0), (&a0, &b1), (&a1, &b0)] {
        assert!(
            !pings(&dc, from, &ip_of(to)),
            "{} reached {}",
            from["alias"],
            to["alias"]
        );
    }
    // Alice's instances reach the datacenter network through their node's
    // NAT (the host's address there); bob's, without a gateway, do not.
    let host = format!("{}.1", dc.data_net);
    for from in [&a0, &a1] {
        nereid_tests::wait_for(
            &format!("{} to reach {host} through NAT", from["alias"]),
            Duration::from_secs(30),
            || async { pings(&dc, from, &host).then_some(()) },
        )
        .await;
    }
    assert!(!pings(&dc, &b0, &host), "b0 reached {host}");
    // The NATs each node recorded, each a namespace that exists.
    let nats = |node: usize| -> Vec<String> {
        let names: Vec<String> = std::fs::read_dir(dc.nodes[node].agent.state.path().join("nat"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for n in &names {
            assert!(
                std::path::Path::new("/run/netns").join(n).exists(),
                "{n} is recorded but has no namespace"
            );
        }
        names
    };
    let (nat0, nat1) = (nats(0), nats(1));
    assert_eq!((nat0.len(), nat1.len()), (1, 1));
    assert_ne!(nat0, nat1, "each node has a NAT of its own");
    // Node 0 sends alice's a1 to node 1's underlay address, and floods nothing.
    let node1_underlay = format!("dst {}.11 ", dc_mgmt_net(&dc));
    let entries = fdb(&dc, 0, vni_a);
    let a1_mac = a1["nics"][0]["mac"].as_str().unwrap();
    assert!(
        entries
            .lines()
            .any(|l| l.starts_with(a1_mac) && l.contains(&node1_underlay)),
        "{entries}"
    );
    assert!(!entries.contains("00:00:00:00:00:00"), "{entries}");
    assert!(
        !entries.contains(b1["nics"][0]["mac"].as_str().unwrap()),
        "{entries}"
    );

    // The instance goes: its entry leaves the other node.
    dc.act(a1["id"].as_str().unwrap(), "delete").await;
    for _ in 0..60 {
        if !fdb(&dc, 0, vni_a).contains(a1_mac) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let left = fdb(&dc, 0, vni_a);
    assert!(
        !left.contains(a1_mac),
        "a1's entry is still on node 0: {left}"
    );
    assert!(!pings(&dc, &a0, &ip_of(&a1)));
    // Node 1 runs none of alice's instances any more: its NAT is gone, node 0's stays.
    assert_eq!((nats(0), nats(1)), (nat0, vec![]));
    assert!(
        !std::path::Path::new("/run/netns").join(&nat1[0]).exists(),
        "node 1's NAT namespace is left"
    );
    assert!(pings(&dc, &a0, &host));
    // Bob's fabric is untouched.
    assert!(pings(&dc, &b0, &ip_of(&b1)));
    let (st, _) = op.get("/v1/fabrics/vlans").await;
    assert_eq!(st, 200);
}

/// "172.31.K" of the datacenter's management (underlay) wiring.
fn dc_mgmt_net(dc: &Datacenter) -> String {
    let k = dc.data_net.rsplit('.').next().unwrap();
    format!("172.31.{k}")
}

#[tokio::test(flavor = "multi_thread")]
async fn fabric_requests_that_make_no_sense_are_refused_with_the_reason() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let op = h.operator();
    let (alice_id, alice) = h.tenant("alice").await;
    let (_, bob) = h.tenant("bob").await;
    let net = |name: &str, subnet: &str, start: &str, end: &str| json!({"name": name, "subnet": subnet, "provision_start": start, "provision_end": end});

    // VLAN ids and names.
    for bad in [
        json!({"vlan_id": 4096, "name": "x"}),
        json!({"vlan_id": 2, "name": "no spaces"}),
    ] {
        assert_error(
            &alice.post("/v1/fabrics/vlans", &bad).await,
            400,
            "InvalidArgument",
        );
    }
    let (st, v) = alice
        .post("/v1/fabrics/vlans", &json!({"vlan_id": 2, "name": "blue"}))
        .await;
    assert_eq!(st, 201, "{v}");
    assert_error_says(
        &alice
            .post("/v1/fabrics/vlans", &json!({"vlan_id": 2, "name": "green"}))
            .await,
        409,
        "Conflict",
        "VLAN 2",
    );
    // A tenant naming another account is told it does not exist.
    assert_error(
        &bob.post(
            "/v1/fabrics/vlans",
            &json!({"vlan_id": 3, "name": "x", "owner": alice_id}),
        )
        .await,
        404,
        "NotFound",
    );

    // No underlay in this datacenter yet: fabrics are not set up.
    let first = net("fab", "192.168.60.0/24", "192.168.60.10", "192.168.60.19");
    assert_error_says(
        &alice.post("/v1/fabrics/vlans/2/networks", &first).await,
        409,
        "Conflict",
        "\"underlay\"",
    );
    let (st, tag) = op.post("/v1/nictags", &json!({"name": "underlay"})).await;
    assert_eq!(st, 201, "{tag}");
    // A gateway NATs out by default, and this datacenter has no NAT network.
    let mut gw = first.clone();
    gw["gateway"] = json!("192.168.60.1");
    assert_error_says(
        &alice.post("/v1/fabrics/vlans/2/networks", &gw).await,
        409,
        "Conflict",
        "NAT network",
    );
    let (st, n) = alice.post("/v1/fabrics/vlans/2/networks", &first).await;
    assert_eq!(st, 201, "{n}");
    // Overlapping one of the same account's fabric subnets, on any of its VLANs.
    let (st, _) = alice
        .post("/v1/fabrics/vlans", &json!({"vlan_id": 3, "name": "green"}))
        .await;
    assert_eq!(st, 201);
    for vlan in [2, 3] {
        assert_error_says(
            &alice
                .post(
                    &format!("/v1/fabrics/vlans/{vlan}/networks"),
                    &net(
                        "other",
                        "192.168.60.128/25",
                        "192.168.60.130",
                        "192.168.60.140",
                    ),
                )
                .await,
            409,
            "Conflict",
            "overlaps",
        );
    }
    // An account's fabric networks hold 65,536 addresses at most in all.
    assert_error_says(
        &alice
            .post(
                "/v1/fabrics/vlans/3/networks",
                &net("huge", "10.64.0.0/10", "10.64.0.5", "10.64.255.255"),
            )
            .await,
        409,
        "QuotaExceeded",
        "65536",
    );
    // Another account may use the same subnet and the same name.
    let (st, _) = bob
        .post("/v1/fabrics/vlans", &json!({"vlan_id": 2, "name": "blue"}))
        .await;
    assert_eq!(st, 201);
    let (st, b) = bob.post("/v1/fabrics/vlans/2/networks", &first).await;
    assert_eq!(st, 201, "{b}");
    // An MTU VXLAN cannot carry over the underlay's 1500.
    assert_error_says(
        &alice
            .post(
                "/v1/fabrics/vlans/3/networks",
                &json!({"name": "big", "subnet": "10.5.0.0/24", "provision_start": "10.5.0.10",
                        "provision_end": "10.5.0.20", "mtu": 1500}),
            )
            .await,
        409,
        "Conflict",
        "1450",
    );
    // A VLAN that does not exist, a malformed subnet.
    assert_error(
        &alice
            .post(
                "/v1/fabrics/vlans/9/networks",
                &net("x", "10.6.0.0/24", "10.6.0.10", "10.6.0.20"),
            )
            .await,
        404,
        "NotFound",
    );
    assert_error(
        &alice
            .post(
                "/v1/fabrics/vlans/3/networks",
                &net("x", "10.6.0.1/24", "10.6.0.10", "10.6.0.20"),
            )
            .await,
        400,
        "InvalidArgument",
    );
    // An operator's network may not take a VNI of the fabrics' range.
    let (st, _) = op.post("/v1/nictags", &json!({"name": "admin"})).await;
    assert_eq!(st, 201);
    assert_error_says(
        &op.post(
            "/v1/networks",
            &json!({"name": "shared", "nic_tag": "admin", "vni": 8_388_608, "subnet": "10.7.0.0/24",
                    "provision_start": "10.7.0.10", "provision_end": "10.7.0.20"}),
        )
        .await,
        400,
        "InvalidArgument",
        "vni",
    );

    // Each sees its own; the VLAN goes only once its network has.
    let (_, mine) = alice.get("/v1/networks").await;
    let ids: Vec<&str> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&n["id"].as_str().unwrap()), "{mine}");
    assert!(!ids.contains(&b["id"].as_str().unwrap()), "{mine}");
    let (_, vlans) = bob.get("/v1/fabrics/vlans").await;
    assert_eq!(vlans["items"].as_array().unwrap().len(), 1, "{vlans}");
    assert_error_says(
        &alice.delete("/v1/fabrics/vlans/2").await,
        409,
        "Conflict",
        "has networks",
    );
    let nid = n["id"].as_str().unwrap();
    assert_error(
        &bob.delete(&format!("/v1/fabrics/vlans/2/networks/{nid}"))
            .await,
        404,
        "NotFound",
    );
    let (st, _) = alice
        .delete(&format!("/v1/fabrics/vlans/2/networks/{nid}"))
        .await;
    assert_eq!(st, 204);
    let (st, _) = alice.delete("/v1/fabrics/vlans/2").await;
    assert_eq!(st, 204);
    assert_error(&alice.get("/v1/fabrics/vlans/2").await, 404, "NotFound");
}
