//! Tenant isolation, proved by doing the attack: a container's root is not the
//! host's (user namespace), its syscalls are filtered (seccomp), a setuid
//! binary gives nothing, /proc/sys is read-only; an isolated container has a
//! range of its own; a gzip bomb and an image lying about its size are refused
//! and leave nothing; quotas stop a tenant at its limit and nobody else; an
//! agent refuses a uid range it must not use; an instance that claims a
//! neighbour's address in ARP poisons nobody.

use std::process::Command;
use std::time::Duration;

use nereid_tests::api::assert_error;
use nereid_tests::datacenter::{Datacenter, DcOpts};
use nereid_tests::node::{build_sample, upload_file};
use serde_json::{Value, json};

fn one_node() -> DcOpts {
    DcOpts {
        nodes: 1,
        ..Default::default()
    }
}

/// The busybox image plus setuid-root copies of busybox as `/opt/suid/id`
/// and `/opt/suid/sh` (busybox runs the applet its name says).
fn attack_image() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let sh = |cmd: &str| {
        let st = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
        assert!(st.success(), "{cmd}");
    };
    sh(&format!(
        "tar -xzf {} -C {r} && mkdir -p {r}/opt/suid && for a in id sh; do cp {r}/bin/busybox {r}/opt/suid/$a; \
         chown 0:0 {r}/opt/suid/$a; chmod 4755 {r}/opt/suid/$a; done \
         && tar --numeric-owner -C {r} -czf {d}/attack.tar.gz .",
        build_sample("busybox").join("busybox.tar.gz").display(),
        r = root.display(),
        d = dir.path().display()
    ));
    std::fs::read(dir.path().join("attack.tar.gz")).unwrap()
}

async fn activate(dc: &Datacenter, id: &str) {
    let (st, body) = dc
        .op()
        .post(&format!("/v1/images/{id}/activate"), &json!({}))
        .await;
    assert_eq!(st, 200, "{body}");
}

/// `runc exec` as this container user; (success, output).
fn exec_as(dc: &Datacenter, inst: &Value, user: &str, args: &[&str]) -> (bool, String) {
    let node = dc.node_of(inst);
    let out = Command::new("runc")
        .arg("--root")
        .arg(node.runc_root())
        .args(["exec", "--user", user, inst["id"].as_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_is_unprivileged_under_seccomp_and_its_escapes_fail() {
    let Some(dc) = Datacenter::start(one_node()).await else {
        return;
    };
    let (image, _) = upload_file(dc.headnode(), "attack", attack_image()).await;
    activate(&dc, &image).await;
    let inst = dc.provision("victim", json!({"image": "attack"})).await;

    // Host root never appears inside: root is the node's shared range.
    let (ok, map) = dc.exec(&inst, &["cat", "/proc/self/uid_map"]);
    assert!(ok, "{map}");
    let fields: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(fields, ["0", "1000000000", "65536"], "{map}");
    let (_, gmap) = dc.exec(&inst, &["cat", "/proc/self/gid_map"]);
    assert_eq!(gmap.split_whitespace().collect::<Vec<_>>(), fields);
    // Its files are owned by that range on the host, without a chown per instance.
    let rootfs = dc.nodes[0]
        .pool
        .mountpoint()
        .join("instances")
        .join(inst["id"].as_str().unwrap());
    let md = std::fs::metadata(rootfs.join("bin/busybox")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&md), 1_000_000_000);

    // seccomp in filter mode; the namespace and mount escapes are refused.
    let (_, status) = dc.exec(&inst, &["grep", "^Seccomp:", "/proc/self/status"]);
    assert_eq!(
        status.split_whitespace().collect::<Vec<_>>(),
        ["Seccomp:", "2"]
    );
    let (ok, out) = dc.exec(&inst, &["unshare", "-U", "true"]);
    assert!(!ok, "unshare -U must fail: {out}");
    let (ok, out) = dc.exec(&inst, &["unshare", "-U", "-r", "id"]);
    assert!(!ok, "unshare -U -r must fail: {out}");
    let (ok, out) = dc.exec(&inst, &["mount", "-t", "tmpfs", "none", "/mnt"]);
    assert!(!ok, "mount must fail: {out}");
    let (ok, out) = dc.exec(&inst, &["sh", "-c", "echo 1 > /proc/sys/kernel/sysrq"]);
    assert!(!ok, "/proc/sys must be read-only: {out}");
    let (ok, out) = dc.exec(&inst, &["cat", "/proc/kcore"]);
    assert!(!ok || out.is_empty(), "/proc/kcore must be masked: {out}");

    // A setuid-root binary run by an unprivileged user gives nothing: no new
    // privileges, and even the container's root is host uid 1000000000.
    let (ok, out) = exec_as(&dc, &inst, "1000:1000", &["/opt/suid/id", "-u"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "1000", "the setuid bit must not elevate: {out}");
    let (ok, out) = exec_as(
        &dc,
        &inst,
        "1000:1000",
        &["/opt/suid/sh", "-c", "echo x > /etc/owned"],
    );
    assert!(
        !ok,
        "a user may not write root's files through a setuid binary: {out}"
    );

    // An isolated container gets a range of its own.
    let iso = dc
        .provision("loner", json!({"image": "attack", "isolated_ids": true}))
        .await;
    assert_eq!(iso["isolated_ids"], true);
    let (ok, map) = dc.exec(&iso, &["cat", "/proc/self/uid_map"]);
    assert!(ok, "{map}");
    let base: u64 = map.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(base >= 1_000_065_536, "{map}");
    let (ok, out) = dc.exec(&iso, &["ls", "-ln", "/bin/busybox"]);
    assert!(
        ok && out.contains(" 0 "),
        "its files are its root's inside: {out}"
    );
    let iso_root = dc.nodes[0]
        .pool
        .mountpoint()
        .join("instances")
        .join(iso["id"].as_str().unwrap());
    let md = std::fs::metadata(iso_root.join("bin/busybox")).unwrap();
    assert_eq!(u64::from(std::os::unix::fs::MetadataExt::uid(&md)), base);
    // A second isolated container gets another range.
    let iso2 = dc
        .provision("loner2", json!({"image": "attack", "isolated_ids": true}))
        .await;
    let (_, map2) = dc.exec(&iso2, &["cat", "/proc/self/uid_map"]);
    let base2: u64 = map2.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(base2 >= 1_000_065_536 && base2 != base, "{map2}");

    for id in [&inst["id"], &iso["id"], &iso2["id"]] {
        dc.act(id.as_str().unwrap(), "delete").await;
    }
    dc.assert_nothing_held().await;
}

/// A tar.gz holding one file of `size` zero bytes (a few KiB compressed).
fn bomb(size: u64) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::best(),
    ));
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "zeros", std::io::repeat(0).take(size))
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

use std::io::Read;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_and_an_image_lying_about_its_size_are_refused_and_leave_nothing() {
    let mut opts = one_node();
    opts.headnode
        .args
        .extend(["--max-unpacked-image-bytes", "67108864"].map(String::from));
    let Some(dc) = Datacenter::start(opts).await else {
        return;
    };
    let op = dc.op();
    // 2 GiB of zeros in a few MiB, declared as 10 MiB; and the same with no
    // declaration, under a headnode whose default bound is 64 MiB.
    let data = bomb(2 << 30);
    assert!(data.len() < 8 << 20, "{} bytes", data.len());
    for (name, declared) in [("liar", Some(10u64 << 20)), ("bomb", None)] {
        let mut manifest = json!({"name": name, "version": "1", "type": "container", "os": "linux",
                                  "public": true});
        if let Some(d) = declared {
            manifest["unpacked_size"] = json!(d);
        }
        let (st, img) = op.post("/v1/images", &manifest).await;
        assert_eq!(st, 201, "{img}");
        let id = img["id"].as_str().unwrap().to_string();
        let (st, up) = op
            .send(
                op.request(reqwest::Method::PUT, &format!("/v1/images/{id}/file"))
                    .header("content-type", "application/octet-stream")
                    .body(data.clone()),
            )
            .await;
        assert_eq!(st, 200, "{up}");
        activate(&dc, &id).await;
        let (st, body) = dc.create(&format!("{name}1"), json!({"image": name})).await;
        assert_eq!(st, 202, "{body}");
        let job = dc.wait_job(body["job_id"].as_str().unwrap()).await;
        assert_eq!(job["state"], "failed", "{job}");
        let error = job["error"].as_str().unwrap();
        assert!(error.contains("unpacks to more than"), "{error}");
        dc.act(body["instance"]["id"].as_str().unwrap(), "delete")
            .await;
        // Nothing of it on the node's pool: no dataset, no staged download.
        let out = Command::new("zfs")
            .args(["list", "-H", "-o", "name", "-r"])
            .arg(&dc.nodes[0].pool.name)
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(!listed.contains(&id), "{listed}");
        let downloads = dc.nodes[0].pool.mountpoint().join("downloads");
        let staged: Vec<_> = std::fs::read_dir(&downloads)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(staged.is_empty(), "{staged:?}");
    }
    // The pool stayed small: nothing near 2 GiB was ever written.
    let out = Command::new("zfs")
        .args(["get", "-Hp", "-o", "value", "used"])
        .arg(&dc.nodes[0].pool.name)
        .output()
        .unwrap();
    let used: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(used < 200 << 20, "the pool holds {used} bytes");
    dc.assert_nothing_held().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_stop_a_tenant_at_its_limit_and_leave_other_tenants_alone() {
    let Some(dc) = Datacenter::start(one_node()).await else {
        return;
    };
    let op = dc.op();
    let (alice_id, alice) = dc.tenant("alice").await;
    let (bob_id, bob) = dc.tenant("bob").await;
    let path = format!("/v1/accounts/{alice_id}/quotas");
    // Bad values are a 400; tenants cannot set quotas; they see only their own.
    for bad in [
        json!({"instances": -1}),
        json!({"memory_mb": "lots"}),
        json!({"instances": 1_000_000_000_000u64}),
        json!({"bogus": 1}),
    ] {
        assert_error(&op.put(&path, &bad).await, 400, "InvalidArgument");
    }
    assert_error(
        &alice.put(&path, &json!({"instances": 99})).await,
        403,
        "Forbidden",
    );
    assert_error(
        &bob.get(&format!("/v1/accounts/{alice_id}/quotas")).await,
        404,
        "NotFound",
    );
    let (st, q) = op
        .put(&path, &json!({"instances": 1, "memory_mb": 512}))
        .await;
    assert_eq!(st, 200, "{q}");
    assert_eq!(q["limits"]["instances"], 1);
    assert_eq!(q["overrides"]["disk_mb"], Value::Null);
    assert!(
        q["limits"]["disk_mb"].as_u64().unwrap() > 0,
        "the default applies: {q}"
    );

    let body = |alias: &str| json!({"alias": alias, "image": "busybox", "package": "small", "networks": ["net"]});
    let (st, first) = alice.post("/v1/instances", &body("a1")).await;
    assert_eq!(st, 202, "{first}");
    let r = alice.post("/v1/instances", &body("a2")).await;
    assert_error(&r, 409, "QuotaExceeded");
    let msg = r.1["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("quota instances") && msg.contains("limit is 1") && msg.contains("1 in use"),
        "{msg}"
    );
    // Nothing was created by the refusal.
    let (_, mine) = alice.get("/v1/instances").await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    // Bob is not affected.
    let (st, other) = bob.post("/v1/instances", &body("b1")).await;
    assert_eq!(st, 202, "{other}");
    // Memory: room for one more instance but not for its memory.
    op.put(&path, &json!({"instances": 5, "memory_mb": 300}))
        .await;
    let r = alice.post("/v1/instances", &body("a3")).await;
    assert_error(&r, 409, "QuotaExceeded");
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("quota memory_mb"),
        "{}",
        r.1
    );
    // A quota below the usage is accepted; nothing new fits under it.
    let (st, q) = op.put(&path, &json!({"instances": 0})).await;
    assert_eq!(st, 200, "{q}");
    assert_eq!(q["usage"]["instances"], 1);
    assert_error(
        &alice.post("/v1/instances", &body("a4")).await,
        409,
        "QuotaExceeded",
    );

    // Images: a count and bytes.
    op.put(&path, &json!({"images": 1, "image_bytes": 1000}))
        .await;
    let manifest =
        |name: &str| json!({"name": name, "version": "1", "type": "container", "os": "linux"});
    let (st, img) = alice.post("/v1/images", &manifest("mine")).await;
    assert_eq!(st, 201, "{img}");
    assert_error(
        &alice.post("/v1/images", &manifest("more")).await,
        409,
        "QuotaExceeded",
    );
    let id = img["id"].as_str().unwrap();
    let r = alice
        .send(
            alice
                .request(reqwest::Method::PUT, &format!("/v1/images/{id}/file"))
                .header("content-type", "application/octet-stream")
                .body(vec![7u8; 2000]),
        )
        .await;
    assert_error(&r, 409, "QuotaExceeded");
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image_bytes"),
        "{}",
        r.1
    );
    let (_, q) = alice.get(&path).await;
    assert_eq!(q["usage"]["images"], 1);
    assert_eq!(
        q["usage"]["image_bytes"], 0,
        "the refused file is not kept: {q}"
    );
    let (st, _) = bob.post("/v1/images", &manifest("bobs")).await;
    assert_eq!(st, 201);

    for (api, created) in [(&alice, &first), (&bob, &other)] {
        let id = created["instance"]["id"].as_str().unwrap();
        dc.wait_job(created["job_id"].as_str().unwrap()).await;
        let (st, del) = api.delete(&format!("/v1/instances/{id}")).await;
        assert_eq!(st, 202, "{del}");
        dc.wait_job(del["job_id"].as_str().unwrap()).await;
    }
    let _ = bob_id;
    dc.assert_nothing_held().await;
}

#[test]
fn the_agent_refuses_a_uid_range_it_must_not_use() {
    for (range, says) in [
        ("0:65536", "65536 or above"),
        ("100000:1000", "multiple of 65536"),
    ] {
        let out = Command::new(nereid_tests::procs::bin("nereid-agent"))
            .args(["--headnode", "http://127.0.0.1:1", "--uid-range", range])
            .arg("--state-dir")
            .arg(tempfile::tempdir().unwrap().path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{range}: {err}");
    }
    let _ = Duration::ZERO;
}

/// `ip` in a network namespace; returns stdout, panicking with stderr.
fn ip_in(netns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", netns])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -n {netns} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The MAC `netns` has for `ip` in its neighbour table ("" if none).
fn neighbour_mac(netns: &str, ip: &str) -> String {
    let out = ip_in(netns, &["neigh", "show", ip]);
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "lladdr" {
            return words.next().unwrap_or_default().to_string();
        }
    }
    String::new()
}

/// The attacker's netns takes the victim's address and announces it with
/// gratuitous ARP (what a VM's root, or a container that could, would do).
fn claim_in_arp(attacker_ns: &str, victim_ip: &str) {
    // Past the neighbour table's lock time since the entry was last confirmed.
    std::thread::sleep(Duration::from_millis(1500));
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{attacker_ns}"))
        .args([
            "busybox", "arping", "-U", "-c", "3", "-w", "3", "-I", "eth0", victim_ip,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "arping: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
}

/// `nft ARGS <the agent's table> EXTRA` in the (only) node's network namespace.
fn node_nft_with(dc: &Datacenter, args: &[&str], extra: &[&str]) -> std::process::Output {
    let node = &dc.nodes[0];
    Command::new("ip")
        .args(["netns", "exec", &node.netns, "nft"])
        .args(args)
        .arg(&node.agent.opts.nft_table)
        .args(extra)
        .output()
        .unwrap()
}

fn node_nft(dc: &Datacenter, args: &[&str]) -> std::process::Output {
    node_nft_with(dc, args, &[])
}

/// Kills the node's agent, starts it again and waits until its table holds
/// the chain of port `chain` again.
async fn restart_agent_until_chain(dc: &mut Datacenter, chain: &str) {
    dc.nodes[0].agent.restart_in_place(vec![]);
    let dc = &*dc;
    nereid_tests::wait_for(
        "the restarted agent's rules",
        Duration::from_secs(60),
        || async {
            node_nft_with(dc, &["list", "chain", "bridge"], &[chain])
                .status
                .success()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_claiming_a_neighbours_address_in_arp_poisons_nobody() {
    let Some(mut dc) = Datacenter::start(one_node()).await else {
        return;
    };
    let mut insts = Vec::new();
    for alias in ["spoofer", "victim", "witness"] {
        insts.push(dc.provision(alias, json!({})).await);
    }
    let ns = |i: &Value| format!("nrd-{}", i["id"].as_str().unwrap());
    let mac = |i: &Value| i["nics"][0]["mac"].as_str().unwrap().to_lowercase();
    let (spoofer, victim, witness) = (&insts[0], &insts[1], &insts[2]);
    let victim_ip = nereid_tests::datacenter::ip_of(victim);
    // The witness knows the victim by its real MAC.
    let (ok, out) = dc.exec(witness, &["ping", "-c", "1", "-W", "3", &victim_ip]);
    assert!(ok, "{out}");
    assert_eq!(neighbour_mac(&ns(witness), &victim_ip), mac(victim));

    // The spoofer takes the victim's address and claims it: dropped on its port.
    ip_in(
        &ns(spoofer),
        &["addr", "add", &format!("{victim_ip}/32"), "dev", "eth0"],
    );
    claim_in_arp(&ns(spoofer), &victim_ip);
    assert_eq!(neighbour_mac(&ns(witness), &victim_ip), mac(victim));
    let (ok, out) = dc.exec(witness, &["ping", "-c", "1", "-W", "3", &victim_ip]);
    assert!(ok, "{out}");

    // An agent restarted (after its table was removed by hand) puts the
    // rules of its instances back.
    let port = format!("port_nv{}0", {
        let hex: String = spoofer["id"].as_str().unwrap().replace('-', "");
        hex[hex.len() - 12..].to_string()
    });
    assert!(
        node_nft(&dc, &["delete", "table", "bridge"])
            .status
            .success()
    );
    restart_agent_until_chain(&mut dc, &port).await;
    claim_in_arp(&ns(spoofer), &victim_ip);
    assert_eq!(neighbour_mac(&ns(witness), &victim_ip), mac(victim));

    // The same claim without the agent's table poisons the witness: the
    // attack above was real.
    assert!(
        node_nft(&dc, &["delete", "table", "bridge"])
            .status
            .success()
    );
    claim_in_arp(&ns(spoofer), &victim_ip);
    assert_eq!(neighbour_mac(&ns(witness), &victim_ip), mac(spoofer));

    // Deleting the instances takes their ports' rules away (the agent's table
    // comes back with its next restart; its instances' ports with it).
    restart_agent_until_chain(&mut dc, &port).await;
    for i in &insts {
        dc.act(i["id"].as_str().unwrap(), "delete").await;
    }
    let listed =
        String::from_utf8_lossy(&node_nft(&dc, &["list", "table", "bridge"]).stdout).into_owned();
    assert!(!listed.contains("port_"), "{listed}");
    dc.assert_nothing_held().await;
}

/// `ip netns exec` of the instance's namespace (the host acting inside it).
fn in_netns(i: &Value, args: &[&str]) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("nrd-{}", i["id"].as_str().unwrap()),
        ])
        .args(args)
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_nic_an_operator_allows_sends_from_an_address_that_is_not_its_own() {
    let Some(dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let host = format!("{}.1", dc.data_net);
    let allowed = dc
        .provision(
            "allowed",
            json!({"nic_options": [{"allow_ip_spoofing": true}]}),
        )
        .await;
    let plain = dc.provision("plain", json!({})).await;
    assert_eq!(
        allowed["nics"][0]["options"]["allow_ip_spoofing"], true,
        "{allowed}"
    );
    assert_eq!(
        plain["nics"][0]["options"]["allow_ip_spoofing"], false,
        "{plain}"
    );
    // Only operators may ask for it, and one entry per NIC at most.
    let (_, alice) = dc.tenant("alice").await;
    let ask = json!({"image": "busybox", "package": "small", "networks": ["net"],
                     "nic_options": [{"allow_ip_spoofing": true}]});
    assert_error(&alice.post("/v1/instances", &ask).await, 403, "Forbidden");
    let mut two = ask.clone();
    two["nic_options"] = json!([{}, {"allow_mac_spoofing": true}]);
    assert_error(
        &dc.op().post("/v1/instances", &two).await,
        400,
        "InvalidArgument",
    );
    // Each takes an address that is not its own and pings the host from it.
    for (inst, extra, reaches) in [(&allowed, 200, true), (&plain, 201, false)] {
        let extra = format!("{}.{extra}", dc.data_net);
        assert!(dc.exec(inst, &["ping", "-c", "1", "-W", "2", &host]).0);
        assert!(in_netns(
            inst,
            &["ip", "addr", "add", &format!("{extra}/24"), "dev", "eth0"]
        ));
        let from_extra = in_netns(inst, &["ping", "-c", "2", "-W", "1", "-I", &extra, &host]);
        assert_eq!(
            from_extra, reaches,
            "{} pinging from {extra}",
            inst["alias"]
        );
    }
}
