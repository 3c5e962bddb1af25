//! The agent's container runtime on the real host: a file-backed zpool per
//! test, real runc, real network namespaces, driven through the agent's gRPC.

use std::process::Command;
use std::time::{Duration, Instant};

use nereid_proto::v1 as pb;
use nereid_tests::node::{TestNode, ensure_image, state_name, upload_file};

fn runc_exec(node: &TestNode, id: &str, args: &[&str]) -> std::process::Output {
    Command::new("runc")
        .arg("--root")
        .arg(node.runc_root())
        .args(["exec", id])
        .args(args)
        .output()
        .unwrap()
}

fn leftovers(node: &TestNode, id: &str) -> Vec<String> {
    let mut left = Vec::new();
    if node.instance_datasets().iter().any(|d| d.ends_with(id)) {
        left.push("dataset".into());
    }
    if std::path::Path::new(&format!("/run/netns/nrd-{id}")).exists() {
        left.push("netns".into());
    }
    if node.agent.state.path().join("bundles").join(id).exists() {
        left.push("bundle".into());
    }
    for c in ["memory", "pids", "cpu"] {
        if std::path::Path::new(&format!("/sys/fs/cgroup/{c}/nereid/{id}")).exists() {
            left.push(format!("{c} cgroup"));
        }
    }
    let out = Command::new("runc")
        .arg("--root")
        .arg(node.runc_root())
        .args(["list", "-q"])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&out.stdout).contains(id) {
        left.push("runc container".into());
    }
    left
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_runs_stops_reboots_and_is_deleted_without_leftovers() {
    let Some(node) = TestNode::start().await else {
        return;
    };
    let mut c = node.client().await;
    let phases = node.ensure_image(&mut c).await.unwrap();
    assert_eq!(
        phases.last().map(String::as_str),
        Some("ready"),
        "{phases:?}"
    );
    assert!(
        phases.contains(&"downloading".to_string()) && phases.contains(&"unpacking".to_string()),
        "{phases:?}"
    );
    // Idempotent: a second call finds it ready at once.
    assert_eq!(node.ensure_image(&mut c).await.unwrap(), vec!["ready"]);

    // Plaintext calls (no TLS, so no headnode certificate) are refused.
    let ch =
        tonic::transport::Endpoint::from_shared(format!("http://{}", node.agent_address().await))
            .unwrap()
            .connect_lazy();
    let mut anonymous = pb::agent_client::AgentClient::new(ch);
    let refused = anonymous
        .list_instances(pb::ListInstancesRequest {})
        .await
        .unwrap_err();
    assert!(nereid_tests::connection_failed(&refused), "{refused:?}");
    nereid_tests::wait_for_log(&node.agent.proc, "TLS handshake refused", 1).await;

    let mut events = c
        .watch_events(pb::WatchEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let spec = node.spec("web1");
    let id = spec.id.clone();
    let st = c
        .ensure_instance(pb::EnsureInstanceRequest {
            spec: Some(spec.clone()),
            start: true,
            metadata: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state_name(st.state), "running");
    // Ensure again: same instance, still running.
    let again = c
        .ensure_instance(pb::EnsureInstanceRequest {
            spec: Some(spec.clone()),
            start: true,
            metadata: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((state_name(again.state), again.pid), ("running", st.pid));
    assert_eq!(node.instance_datasets().len(), 1);

    let out = runc_exec(&node, &id, &["hostname"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "web1");
    // Its own network namespace: only lo.
    let out = runc_exec(&node, &id, &["ls", "/sys/class/net"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        vec!["lo"]
    );
    // The quota is the package's disk.
    let quota = Command::new("zfs")
        .args(["get", "-Hp", "-o", "value", "quota"])
        .arg(format!("{}/instances/{id}", node.pool.name))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&quota.stdout).trim(),
        (256u64 << 20).to_string()
    );

    let stopped = c
        .stop_instance(pb::StopInstanceRequest {
            id: id.clone(),
            timeout_seconds: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state_name(stopped.state), "stopped");
    // WatchEvents saw it run, then stop, with the spec's generation.
    let mut seen = Vec::new();
    while !seen.contains(&"stopped".to_string()) {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        assert_eq!((e.id.as_str(), e.generation), (id.as_str(), 1));
        seen.push(state_name(e.state).to_string());
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("running"),
        "{seen:?}"
    );
    let started = c
        .start_instance(pb::InstanceRef { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state_name(started.state), "running");
    let rebooted = c
        .reboot_instance(pb::StopInstanceRequest {
            id: id.clone(),
            timeout_seconds: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state_name(rebooted.state), "running");
    assert_ne!(rebooted.pid, started.pid);

    // Its init killed behind the agent's back: the agent hears the exit
    // (nothing asks it; no headnode reconciles here) and tells WatchEvents.
    // What the calls above made the stream say is read first.
    while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_secs(2), events.message()).await
    {
    }
    let out = Command::new("runc")
        .arg("--root")
        .arg(node.runc_root())
        .args(["kill", &id, "KILL"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let heard = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("an event after the kill")
        .unwrap()
        .unwrap();
    assert_eq!(
        (heard.id.as_str(), state_name(heard.state)),
        (id.as_str(), "stopped")
    );
    let got = c
        .get_instance(pb::InstanceRef { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.spec.unwrap().hostname, "web1");

    c.delete_instance(pb::InstanceRef { id: id.clone() })
        .await
        .unwrap();
    assert_eq!(leftovers(&node, &id), Vec::<String>::new());
    let missing = c
        .get_instance(pb::InstanceRef { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // Deleting twice is fine.
    c.delete_instance(pb::InstanceRef { id }).await.unwrap();

    // The agent's metrics counted what happened above.
    let text = reqwest::get(node.agent.metrics_url().await)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(
        value(r#"nereid_agent_rpc_total{method="EnsureInstance",code="OK"}"#),
        2.0
    );
    assert_eq!(
        value(r#"nereid_agent_rpc_total{method="GetInstance",code="NotFound"}"#),
        1.0
    );
    // The plaintext call above never became an RPC.
    assert!(!text.contains(r#"method="ListInstances",code="Unauthenticated""#));
    assert_eq!(value(r#"nereid_agent_instances{state="running"}"#), 0.0);
    assert_eq!(value("nereid_agent_instances_listed"), 1.0);
    assert!(value(r#"nereid_agent_command_duration_seconds_count{command="zfs clone"}"#) >= 1.0);
    assert!(value(r#"nereid_agent_command_duration_seconds_count{command="runc run"}"#) >= 2.0);
    assert!(
        value(r#"nereid_agent_rpc_duration_seconds_bucket{method="EnsureInstance",le="+Inf"}"#)
            == 2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_limit_kills_a_process_that_exceeds_it() {
    let Some(node) = TestNode::start().await else {
        return;
    };
    let mut c = node.client().await;
    node.ensure_image(&mut c).await.unwrap();
    let mut spec = node.spec("small");
    spec.memory_mb = 32;
    let id = spec.id.clone();
    c.ensure_instance(pb::EnsureInstanceRequest {
        spec: Some(spec),
        start: true,
        metadata: None,
    })
    .await
    .unwrap();
    // 8 MB fits.
    let ok = runc_exec(
        &node,
        &id,
        &[
            "sh",
            "-c",
            "x=$(head -c 8000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "8000000",
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // 96 MB does not: the kernel's OOM killer ends it inside the cgroup.
    let hog = runc_exec(
        &node,
        &id,
        &[
            "sh",
            "-c",
            "x=$(head -c 96000000 /dev/zero | tr '\\0' a); echo ${#x}",
        ],
    );
    assert!(
        !hog.status.success() || String::from_utf8_lossy(&hog.stdout).trim() != "96000000",
        "the hog survived: {hog:?}"
    );
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/nereid/{id}/memory.limit_in_bytes"
    ))
    .unwrap();
    assert_eq!(limit.trim(), (32u64 << 20).to_string());
    // SIGKILL (137) from the cgroup's OOM killer, which counts it.
    assert_eq!(hog.status.code(), Some(137), "{hog:?}");
    let oom = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/nereid/{id}/memory.oom_control"
    ))
    .unwrap();
    let kills: u64 = oom
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(kills > 0, "no OOM kill was counted: {oom}");
    c.delete_instance(pb::InstanceRef { id }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_at_each_step_of_ensure_instance_then_retried_makes_exactly_one_instance() {
    let Some(mut node) = TestNode::start().await else {
        return;
    };
    let mut c = node.client().await;
    node.ensure_image(&mut c).await.unwrap();
    for point in [
        "ensure_instance:after_clone",
        "ensure_instance:after_netns",
        "ensure_instance:after_bundle",
        "ensure_instance:after_run",
    ] {
        node.agent
            .restart_in_place(vec![("NEREID_AGENT_FAULT".into(), point.into())]);
        let mut c = node.client_after_restart().await;
        let spec = node.spec("crashy");
        let id = spec.id.clone();
        let err = c
            .ensure_instance(pb::EnsureInstanceRequest {
                spec: Some(spec.clone()),
                start: true,
                metadata: None,
            })
            .await;
        assert!(err.is_err(), "{point}: the agent should have died");
        let died = node.agent.proc.current_log();
        assert!(
            died.contains(&format!("aborting at {point}")),
            "{point}: {died}"
        );

        node.agent.restart_in_place(vec![]);
        let mut c = node.client_after_restart().await;
        let st = c
            .ensure_instance(pb::EnsureInstanceRequest {
                spec: Some(spec),
                start: true,
                metadata: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(state_name(st.state), "running", "{point}");
        let list = c
            .list_instances(pb::ListInstancesRequest {})
            .await
            .unwrap()
            .into_inner()
            .instances;
        assert_eq!(list.len(), 1, "{point}: {list:?}");
        assert_eq!(node.instance_datasets().len(), 1, "{point}");
        c.delete_instance(pb::InstanceRef { id: id.clone() })
            .await
            .unwrap();
        assert_eq!(leftovers(&node, &id), Vec::<String>::new(), "{point}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_survive_kill_9_of_the_agent_and_a_restart_lists_them_from_zfs_and_runc() {
    let Some(mut node) = TestNode::start().await else {
        return;
    };
    let mut c = node.client().await;
    node.ensure_image(&mut c).await.unwrap();
    let ids = node.start_instances(&mut c, "keep", 3).await;
    c.stop_instance(pb::StopInstanceRequest {
        id: ids[2].clone(),
        timeout_seconds: 5,
    })
    .await
    .unwrap();
    node.agent.proc.kill();
    // The containers keep running without their agent.
    let out = Command::new("runc")
        .arg("--root")
        .arg(node.runc_root())
        .args(["list", "-f", "json"])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let running = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "running")
        .count();
    assert_eq!(running, 2);

    let restarted_at = Instant::now();
    node.agent.restart_in_place(vec![]);
    let mut c = node.client_after_restart().await;
    let list = c
        .list_instances(pb::ListInstancesRequest {})
        .await
        .unwrap()
        .into_inner()
        .instances;
    let elapsed = restarted_at.elapsed();
    eprintln!(
        "restarted agent listed {} instances {:?} after its start",
        list.len(),
        elapsed
    );
    let state = |id: &str| {
        list.iter()
            .find(|i| i.spec.as_ref().unwrap().id == id)
            .map(|i| state_name(i.state))
    };
    assert_eq!(state(&ids[0]), Some("running"));
    assert_eq!(state(&ids[1]), Some("running"));
    assert_eq!(state(&ids[2]), Some("stopped"));
    // The agent logged its recovery, before any call from outside.
    assert!(
        node.agent
            .proc
            .log_text()
            .contains("recovered the node's instances")
    );
    for id in ids {
        c.delete_instance(pb::InstanceRef { id: id.clone() })
            .await
            .unwrap();
        assert_eq!(leftovers(&node, &id), Vec::<String>::new());
    }
}

/// A gzip tar with one raw entry (the name is written into the header as is).
fn evil_archive(kind: u8, name: &str, link: &str) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(b"00000000000\0");
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = kind;
    header[157..157 + link.len()].copy_from_slice(link.as_bytes());
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    gz.stdin.take().unwrap().write_all(&tar).unwrap();
    gz.wait_with_output().unwrap().stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn path_traversal_archives_and_wrong_checksums_are_refused_and_leave_nothing() {
    let Some(node) = TestNode::start().await else {
        return;
    };
    let mut c = node.client().await;
    let images = format!("{}/images", node.pool.name);
    for (name, archive, bad) in [
        ("abs", evil_archive(b'0', "/etc/evil", ""), "/etc/evil"),
        (
            "dotdot",
            evil_archive(b'0', "a/../../evil", ""),
            "a/../../evil",
        ),
        ("symlink", evil_archive(b'2', "up", "../../../etc"), "up"),
        ("device", evil_archive(b'3', "dev/null", ""), "dev/null"),
    ] {
        let (id, sha) = upload_file(&node.headnode, name, archive).await;
        node.grant(&id).await;
        let err = ensure_image(&mut c, &id, &sha).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DataLoss, "{name}: {err:?}");
        assert!(err.message().contains(bad), "{name}: {}", err.message());
        let out = Command::new("zfs")
            .args(["list", "-H", "-o", "name"])
            .arg(format!("{images}/{id}"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}: the dataset stayed");
    }
    assert!(!std::path::Path::new("/etc/evil").exists());
    // A wrong checksum: nothing kept, not even the download.
    node.grant(&node.image_id).await;
    let err = ensure_image(&mut c, &node.image_id, &"0".repeat(64))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss);
    assert!(err.message().contains("sha256"), "{}", err.message());
    assert_eq!(
        std::fs::read_dir(node.pool.mountpoint().join("downloads"))
            .unwrap()
            .count(),
        0
    );
    // An instance of an image the node does not have is refused clearly.
    let st = c
        .ensure_instance(pb::EnsureInstanceRequest {
            spec: Some(node.spec("x")),
            start: true,
            metadata: None,
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::FailedPrecondition, "{st:?}");
    assert!(node.instance_datasets().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_ensure_image_calls_download_the_image_once() {
    let Some(node) = TestNode::start().await else {
        return;
    };
    let c = node.client().await;
    let (mut a, mut b) = (c.clone(), c.clone());
    let (ra, rb) = tokio::join!(node.ensure_image(&mut a), node.ensure_image(&mut b));
    assert_eq!(ra.unwrap().last().map(String::as_str), Some("ready"));
    assert_eq!(rb.unwrap().last().map(String::as_str), Some("ready"));
    let gets = node
        .headnode
        .proc
        .log_text()
        .lines()
        .filter(|l| l.contains("image file served") && l.contains(&node.image_id))
        .count();
    assert_eq!(gets, 1, "the file was downloaded {gets} times");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_image_download_resumes_from_its_offset_and_a_hopeless_one_leaves_nothing() {
    let Some(mut node) = TestNode::start().await else {
        return;
    };
    // The agent dies (as if kill -9ed) after the first piece of the file
    // reached the disk.
    node.grant(&node.image_id).await;
    node.agent.restart_in_place(vec![(
        "NEREID_AGENT_FAULT".into(),
        "fetch_image:after_first_chunk".into(),
    )]);
    let mut c = node.client_after_restart().await;
    assert!(
        ensure_image(&mut c, &node.image_id, &node.image_sha256)
            .await
            .is_err(),
        "the agent should have died"
    );
    let partial = node
        .pool
        .mountpoint()
        .join("downloads")
        .join(format!("{}.partial", node.image_id));
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0, "the first piece was kept");

    node.agent.restart_in_place(vec![]);
    let mut c = node.client_after_restart().await;
    let phases = ensure_image(&mut c, &node.image_id, &node.image_sha256)
        .await
        .unwrap();
    assert_eq!(phases.last().map(String::as_str), Some("ready"));
    let served: Vec<String> = node
        .headnode
        .proc
        .log_text()
        .lines()
        .filter(|l| l.contains("image file served") && l.contains(&node.image_id))
        .map(str::to_string)
        .collect();
    assert_eq!(served.len(), 2, "{served:?}");
    assert!(
        served[1].contains(&format!("offset={kept}")),
        "the second fetch resumed after the {kept} bytes kept: {served:?}"
    );

    // The headnode gone for good: the call fails after its attempts and
    // leaves no file and no dataset.
    let (other, sha) = upload_file(
        &node.headnode,
        "other",
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/nereid-images/busybox/busybox.tar.gz"),
        )
        .unwrap(),
    )
    .await;
    node.grant(&other).await;
    node.headnode.proc.kill();
    let err = ensure_image(&mut c, &other, &sha).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("after 5 attempts"), "{err:?}");
    assert_eq!(
        std::fs::read_dir(node.pool.mountpoint().join("downloads"))
            .unwrap()
            .count(),
        0
    );
    let out = Command::new("zfs")
        .args(["list", "-H", "-o", "name"])
        .arg(format!("{}/images/{other}", node.pool.name))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a dataset stayed");
}
