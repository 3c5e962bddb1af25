//! Day-2 changes of instances on real nodes. Snapshots on the node's ZFS:
//! snapshot -> write -> rollback and the write is gone (newer snapshots with
//! it); rollback of a running instance, a name that exists, a bad name and
//! one snapshot too many get a 4xx; another tenant sees nothing; deleting
//! the instance leaves no snapshot on the node. Resize: a running
//! container's memory limit changes in place; no room, another brand or a
//! package it has get a 4xx and change nothing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use nereid_tests::api::{assert_error, assert_error_says};
use nereid_tests::datacenter::{Datacenter, DcOpts};
use serde_json::{Value, json};

fn write(dc: &Datacenter, inst: &Value, script: &str) {
    let (ok, out) = dc.exec(inst, &["sh", "-c", script]);
    assert!(ok, "{out}");
}

fn read(dc: &Datacenter, inst: &Value) -> String {
    let (_, out) = dc.exec(inst, &["sh", "-c", "cat /root/data; ls /root"]);
    out
}

/// The snapshots ZFS has of the instance's dataset on its node.
fn zfs_snapshots(dc: &Datacenter, inst: &Value) -> Vec<String> {
    let node = dc.node_of(inst);
    let ds = format!(
        "{}/instances/{}",
        node.pool.name,
        inst["id"].as_str().unwrap()
    );
    let out = Command::new("zfs")
        .args(["get", "-H", "-r", "-o", "name", "type", &ds])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('@').map(|(_, s)| s.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_undoes_what_was_written_after_the_snapshot() {
    let Some(dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let inst = dc.provision("snappy", json!({})).await;
    let id = inst["id"].as_str().unwrap();
    let op = dc.op();
    let snaps = format!("/v1/instances/{id}/snapshots");

    write(&dc, &inst, "echo v1 > /root/data && sync");
    let (st, s) = op.post(&snaps, &json!({"name": "before"})).await;
    assert_eq!((st, s["state"].as_str()), (201, Some("created")), "{s}");
    write(
        &dc,
        &inst,
        "echo v2 > /root/data && touch /root/new && sync",
    );
    let (st, _) = op.post(&snaps, &json!({"name": "after"})).await;
    assert_eq!(st, 201);
    let (_, list) = op.get(&snaps).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["before", "after"]);
    assert_eq!(zfs_snapshots(&dc, &inst), ["before", "after"]);

    // Bad requests.
    assert_error(
        &op.post(&snaps, &json!({"name": "before"})).await,
        409,
        "Conflict",
    );
    assert_error(
        &op.post(&snaps, &json!({"name": "-x"})).await,
        400,
        "InvalidArgument",
    );
    assert_error(
        &op.post(&snaps, &json!({"name": "a/b"})).await,
        400,
        "InvalidArgument",
    );
    assert_error_says(
        &op.post(&format!("{snaps}/before/rollback"), &json!({}))
            .await,
        409,
        "Conflict",
        "stop it",
    );
    assert_error(
        &op.post(&format!("{snaps}/nope/rollback"), &json!({})).await,
        404,
        "NotFound",
    );
    let (_, stranger) = dc.tenant("snap-stranger").await;
    assert_error(&stranger.get(&snaps).await, 404, "NotFound");
    assert_error(
        &stranger.post(&snaps, &json!({"name": "mine"})).await,
        404,
        "NotFound",
    );

    // Stopped: roll back to `before`; `after` goes with it; start again.
    dc.act(id, "stop").await;
    let (st, r) = op
        .post(&format!("{snaps}/before/rollback"), &json!({"start": true}))
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["destroyed"], json!(["after"]));
    let job = dc.wait_job(r["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(read(&dc, &inst), "v1\ndata\n");
    assert_eq!(zfs_snapshots(&dc, &inst), ["before"]);
    let (_, list) = op.get(&snaps).await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Snapshots hold disk: what one alone holds grows as the instance
    // drops what it saw, and counts against the account's disk quota.
    write(
        &dc,
        &inst,
        "head -c 3000000 /dev/urandom > /root/big && sync",
    );
    assert_eq!(op.post(&snaps, &json!({"name": "big"})).await.0, 201);
    write(&dc, &inst, "rm /root/big && sync");
    let big = nereid_tests::wait_for(
        "the snapshot to hold the file",
        std::time::Duration::from_secs(30),
        || async {
            let (_, list) = op.get(&snaps).await;
            let big = list
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == "big")
                .cloned()
                .unwrap();
            (big["used_bytes"].as_u64().unwrap() > 2_000_000).then_some(big)
        },
    )
    .await;
    assert_eq!(big["state"], "created");
    let (_, accounts) = op.get("/v1/accounts").await;
    let me = accounts["items"][0]["id"].as_str().unwrap().to_string();
    // 64 MiB of instance disk fit under 66; with the snapshot's ~3 MiB they do not.
    let quota_path = format!("/v1/accounts/{me}/quotas");
    assert_eq!(op.put(&quota_path, &json!({"disk_mb": 66})).await.0, 200);
    assert_error_says(
        &op.post(&snaps, &json!({"name": "over"})).await,
        409,
        "QuotaExceeded",
        "disk",
    );
    assert_eq!(
        op.put(&quota_path, &json!({"disk_mb": 1 << 30})).await.0,
        200
    );
    assert_eq!(op.delete(&format!("{snaps}/big")).await.0, 204);

    // The per-instance limit.
    for i in 1..16 {
        let (st, body) = op.post(&snaps, &json!({"name": format!("s{i}")})).await;
        assert_eq!(st, 201, "{body}");
    }
    assert_error_says(
        &op.post(&snaps, &json!({"name": "one-too-many"})).await,
        409,
        "Conflict",
        "the most it may have",
    );
    assert_eq!(op.delete(&format!("{snaps}/s1")).await.0, 204);
    assert_error(&op.delete(&format!("{snaps}/s1")).await, 404, "NotFound");
    assert!(!zfs_snapshots(&dc, &inst).contains(&"s1".to_string()));

    // The instance's deletion takes its snapshots with it.
    dc.act(id, "delete").await;
    assert_eq!(zfs_snapshots(&dc, &inst), Vec::<String>::new());
    dc.assert_nothing_held().await;
}

/// The memory limit of a running container's cgroup, in bytes (cgroup v1 or v2).
fn memory_limit(id: &str) -> u64 {
    let v1 = format!("/sys/fs/cgroup/memory/nereid/{id}/memory.limit_in_bytes");
    let v2 = format!("/sys/fs/cgroup/nereid/{id}/memory.max");
    let text = std::fs::read_to_string(&v1)
        .or_else(|_| std::fs::read_to_string(&v2))
        .unwrap();
    text.trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_container_is_resized_in_place_and_bad_resizes_change_nothing() {
    let Some(dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let op = dc.op();
    for (name, memory, brand) in [
        ("medium", 512, "container"),
        ("huge", 1 << 20, "container"),
        ("vmish", 256, "kvm"),
    ] {
        let (st, body) = op
            .post(
                "/v1/packages",
                &json!({"name": name, "version": "1", "memory_mb": memory, "vcpus": 1,
                        "disk_mb": 128, "brand": brand}),
            )
            .await;
        assert_eq!(st, 201, "{body}");
    }
    let inst = dc.provision("grow", json!({})).await;
    let id = inst["id"].as_str().unwrap();
    // The container's init, by its start time: a restart would change it.
    let init_started = || dc.exec(&inst, &["sh", "-c", "cut -d' ' -f22 /proc/1/stat"]);
    let (ok, init_before) = init_started();
    assert!(ok && !init_before.trim().is_empty(), "{init_before}");
    assert_eq!(memory_limit(id), 256 << 20);
    let used_before = dc.capacity_used().await;

    let resize = format!("/v1/instances/{id}/resize");
    assert_error_says(
        &op.post(&resize, &json!({"package": "huge"})).await,
        409,
        "InsufficientCapacity",
        "lacks memory",
    );
    assert_error_says(
        &op.post(&resize, &json!({"package": "vmish"})).await,
        400,
        "InvalidArgument",
        "kvm package",
    );
    assert_error(
        &op.post(&resize, &json!({"package": "small"})).await,
        400,
        "InvalidArgument",
    );
    // A package that does not exist is not found, as it would be by id.
    assert_error(
        &op.post(&resize, &json!({"package": "nope"})).await,
        404,
        "NotFound",
    );
    assert_eq!(
        dc.capacity_used().await,
        used_before,
        "a refused resize holds nothing"
    );
    let (_, stranger) = dc.tenant("resize-stranger").await;
    assert_error(
        &stranger.post(&resize, &json!({"package": "medium"})).await,
        404,
        "NotFound",
    );

    let (st, body) = op.post(&resize, &json!({"package": "medium"})).await;
    assert_eq!(st, 202, "{body}");
    let job = dc.wait_job(body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(memory_limit(id), 512 << 20);
    let after = dc.instance(id).await;
    assert_eq!(
        (after["state"].as_str(), after["memory_mb"].as_u64()),
        (Some("running"), Some(512))
    );
    // The same container, never restarted.
    assert_eq!(init_started().1, init_before);
    let held: i64 = dc.capacity_used().await.iter().map(|c| c.1).sum();
    assert_eq!(held, 512);

    // Smaller again, stopped this time: it takes the size at its start.
    dc.act(id, "stop").await;
    let (st, body) = op.post(&resize, &json!({"package": "small"})).await;
    assert_eq!(st, 202, "{body}");
    assert_eq!(
        dc.wait_job(body["job_id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    dc.act(id, "start").await;
    assert_eq!(memory_limit(id), 256 << 20);
    dc.act(id, "delete").await;
    dc.assert_nothing_held().await;
}

/// (type, state) of an event.
fn what(e: &nereid_tests::api::Sse) -> (String, String) {
    (
        e.2["type"].as_str().unwrap_or_default().to_string(),
        e.2["state"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_shows_a_provision_in_order_and_resumes_after_a_reconnect() {
    let Some(dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let op = dc.op();
    let (_, tenant) = dc.tenant("ev-stranger").await;
    let mut feed = op.events("/v1/events", None).await;
    let mut theirs = tenant.events("/v1/events", None).await;

    let (st, body) = dc.create("ev1", json!({})).await;
    assert_eq!(st, 202, "{body}");
    let id = body["instance"]["id"].as_str().unwrap().to_string();
    let job_id = body["job_id"].as_str().unwrap().to_string();
    let seen = feed
        .until(std::time::Duration::from_secs(60), |e| {
            e.2["id"] == job_id.as_str() && e.2["state"] == "succeeded"
        })
        .await;
    let mine: Vec<(String, String)> = seen
        .iter()
        .filter(|e| e.2["id"] == id.as_str() || e.2["instance_id"] == id.as_str())
        .map(what)
        .collect();
    let pos = |w: (&str, &str)| {
        mine.iter()
            .position(|m| (m.0.as_str(), m.1.as_str()) == w)
            .unwrap_or_else(|| panic!("no {w:?} in {mine:?}"))
    };
    assert!(pos(("instance", "provisioning")) < pos(("job", "queued")));
    assert!(pos(("job", "queued")) < pos(("job", "running")));
    assert!(pos(("job", "running")) < pos(("instance", "running")));
    assert!(pos(("instance", "running")) < pos(("job", "succeeded")));
    // Ids only grow.
    let cursors: Vec<(i64, i64)> = seen
        .iter()
        .map(|e| {
            let (a, b) = e.0.split_once('-').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    let last = seen.last().unwrap().0.clone();
    drop(feed);

    // Disconnected while the instance stops; resuming misses nothing and
    // repeats nothing.
    dc.act(&id, "stop").await;
    let mut feed = op.events("/v1/events", Some(&last)).await;
    let resumed = feed
        .until(std::time::Duration::from_secs(30), |e| {
            e.2["type"] == "instance" && e.2["state"] == "stopped"
        })
        .await;
    // The first event after the cursor is the stop's (its job queued and
    // the instance stopping, written in one transaction).
    let first_two: Vec<(String, String)> = resumed.iter().take(2).map(what).collect();
    assert!(
        first_two.contains(&("job".into(), "queued".into()))
            && first_two.contains(&("instance".into(), "stopping".into())),
        "{resumed:?}"
    );
    assert!(resumed.iter().all(|e| e.0 != last));

    // Filtered to one instance; another tenant sees none of it.
    let mut one = op.events(&format!("/v1/events?instance={id}"), None).await;
    dc.act(&id, "start").await;
    let got = one
        .until(std::time::Duration::from_secs(30), |e| {
            e.2["type"] == "instance" && e.2["state"] == "running"
        })
        .await;
    assert!(
        got.iter()
            .all(|e| e.2["id"] == id.as_str() || e.2["instance_id"] == id.as_str())
    );
    assert!(
        theirs
            .next(std::time::Duration::from_secs(2))
            .await
            .is_none(),
        "a tenant saw another account's changes"
    );
    assert_error(
        &tenant.get(&format!("/v1/events?instance={id}")).await,
        404,
        "NotFound",
    );
    let bad = op
        .send(
            op.request(reqwest::Method::GET, "/v1/events")
                .header("Last-Event-ID", "yesterday"),
        )
        .await;
    assert_error(&bad, 400, "InvalidArgument");
    // A cursor from before everything kept cannot resume without a gap.
    let gone = op
        .send(
            op.request(reqwest::Method::GET, "/v1/events")
                .header("Last-Event-ID", "1-0"),
        )
        .await;
    assert_error(&gone, 410, "Gone");
}

/// Where the instance's root filesystem is mounted on its node.
fn rootfs(dc: &Datacenter, inst: &Value) -> std::path::PathBuf {
    let ds = format!(
        "{}/instances/{}",
        dc.node_of(inst).pool.name,
        inst["id"].as_str().unwrap()
    );
    let out = Command::new("zfs")
        .args(["get", "-H", "-o", "value", "mountpoint", &ds])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().into()
}

/// What image exports left on the node: `_export-*` snapshots of the
/// instance and clones under `<pool>/exports`.
fn export_leftovers(dc: &Datacenter, inst: &Value) -> Vec<String> {
    let node = dc.node_of(inst);
    let mut left: Vec<String> = zfs_snapshots(dc, inst)
        .into_iter()
        .filter(|s| s.starts_with("_export-"))
        .collect();
    let exports = format!("{}/exports", node.pool.name);
    let out = Command::new("zfs")
        .args(["get", "-H", "-r", "-o", "name", "type", &exports])
        .output()
        .unwrap();
    left.extend(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| *l != exports)
            .map(String::from),
    );
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_made_from_an_instance_provisions_on_another_node_with_its_files() {
    let Some(mut dc) = Datacenter::start(DcOpts {
        nodes: 2,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let (_, alice) = dc.tenant("img-alice").await;
    let (_, bob) = dc.tenant("img-bob").await;
    let (st, body) = alice
        .post(
            "/v1/instances",
            &json!({"alias": "orig", "image": "busybox", "package": "small", "networks": ["net"]}),
        )
        .await;
    assert_eq!(st, 202, "{body}");
    let job = dc.wait_job(body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let orig = dc.instance(body["instance"]["id"].as_str().unwrap()).await;
    let id = orig["id"].as_str().unwrap().to_string();
    write(&dc, &orig, "echo made-by-alice > /root/keep && sync");
    // Owners and a FIFO set from the host (zfs-fuse refuses a chown from
    // inside a user namespace): container ids 1234:4321 are the host ids
    // that far above the owner of the container's root.
    let root = rootfs(&dc, &orig);
    let base = std::fs::metadata(root.join("root")).unwrap().uid();
    let keep = root.join("root/keep");
    std::os::unix::fs::chown(&keep, Some(base + 1234), Some(base + 4321)).unwrap();
    std::fs::set_permissions(&keep, std::fs::Permissions::from_mode(0o640)).unwrap();
    nix::unistd::mkfifo(
        &root.join("root/pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let path = format!("/v1/instances/{id}/images");

    // Bad requests change nothing.
    let manifest = json!({"name": "alice-app", "version": "1.0"});
    assert_error(&bob.post(&path, &manifest).await, 404, "NotFound");
    assert_error(
        &alice
            .post(&path, &json!({"name": "", "version": "1.0"}))
            .await,
        400,
        "InvalidArgument",
    );
    assert_error(
        &alice
            .post(&path, &json!({"name": "x", "version": "1", "type": "vm"}))
            .await,
        400,
        "InvalidArgument",
    );
    assert_error(
        &alice
            .post(
                &format!("/v1/instances/{}/images", uuid::Uuid::new_v4()),
                &manifest,
            )
            .await,
        404,
        "NotFound",
    );

    // The agent dies in the middle of the stream: the job waits for it and
    // finishes when it is back; nothing of the broken export stays.
    let node = dc
        .nodes
        .iter()
        .position(|n| n.server_id == orig["server_id"].as_str().unwrap())
        .unwrap();
    dc.nodes[node].agent.restart_in_place(vec![(
        "NEREID_AGENT_FAULT".into(),
        "export_image:streaming".into(),
    )]);
    dc.wait_state(&id, "running", std::time::Duration::from_secs(60))
        .await;
    let (st, made) = alice.post(&path, &manifest).await;
    assert_eq!(st, 202, "{made}");
    assert_eq!(made["image"]["state"], "unactivated");
    assert_eq!(made["image"]["file"], Value::Null);
    assert_eq!(made["image"]["origin"], orig["image_id"]);
    assert_eq!(made["image"]["type"], "container");
    let image = made["image"]["id"].as_str().unwrap().to_string();
    let st = dc.nodes[node]
        .agent
        .proc
        .wait_exit(std::time::Duration::from_secs(60))
        .expect("the agent reached its fault point");
    assert!(!st.success(), "{st:?}");
    dc.nodes[node].agent.restart_in_place(Vec::new());
    let job = dc.wait_job(made["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(
        job["steps"][1]["attempts"].as_u64().unwrap() >= 2,
        "the export ran again after the agent came back: {job}"
    );
    assert_eq!(export_leftovers(&dc, &orig), Vec::<String>::new());
    let tmp = dc.headnode().state.path().join("images/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "no partial upload left"
    );
    // The instance ran on throughout, and its own snapshots do not show the export's.
    assert_eq!(dc.instance(&id).await["state"], "running");
    let (_, snaps) = alice.get(&format!("/v1/instances/{id}/snapshots")).await;
    assert_eq!(snaps, json!([]));

    let (_, img) = alice.get(&format!("/v1/images/{image}")).await;
    assert_eq!(img["state"], "unactivated", "{img}");
    assert!(img["file"]["size"].as_u64().unwrap() > 100_000, "{img}");
    assert!(img["unpacked_size"].as_u64().unwrap() > 500_000, "{img}");
    assert_error(
        &bob.get(&format!("/v1/images/{image}")).await,
        404,
        "NotFound",
    );
    // The same name and version again.
    assert_error(&alice.post(&path, &manifest).await, 409, "Conflict");
    let (st, body) = alice
        .post(&format!("/v1/images/{image}/activate"), &json!({}))
        .await;
    assert_eq!(st, 200, "{body}");

    // Provisioned on the other node, it holds the original's file, owners
    // and mode; the FIFO was left out.
    let (st, body) = alice
        .post(
            "/v1/instances",
            &json!({"alias": "copy", "image": image, "package": "small", "networks": ["net"],
                    "affinity": ["instance!=orig"]}),
        )
        .await;
    assert_eq!(st, 202, "{body}");
    let job = dc.wait_job(body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let copy = dc.instance(body["instance"]["id"].as_str().unwrap()).await;
    assert_ne!(copy["server_id"], orig["server_id"]);
    let (ok, out) = dc.exec(
        &copy,
        &[
            "sh",
            "-c",
            "cat /root/keep; stat -c '%u:%g %a' /root/keep; test -e /root/pipe || echo no-pipe",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(out, "made-by-alice\n1234:4321 640\nno-pipe\n");

    // While its instance lives, the image stays; then both go.
    assert_error(
        &alice.delete(&format!("/v1/images/{image}")).await,
        409,
        "Conflict",
    );
    for i in [&copy, &orig] {
        dc.act(i["id"].as_str().unwrap(), "delete").await;
    }
    assert_eq!(alice.delete(&format!("/v1/images/{image}")).await.0, 204);
    dc.assert_nothing_held().await;
}
