//! Crash tests of provisioning: the headnode killed (SIGKILL) at every step of
//! the provision saga, while unwinding, and with a second headnode taking the
//! job over; the agent killed in the middle of EnsureInstance. After each,
//! the job finishes or unwinds and nothing leaks.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use nereid_tests::datacenter::{Datacenter, DcOpts};
use nereid_tests::procs::{Headnode, HeadnodeOpts};
use serde_json::{Value, json};

fn fault(point: &str) -> HeadnodeOpts {
    HeadnodeOpts {
        env: vec![("NEREID_HEADNODE_FAULT".into(), point.into())],
        ..DcOpts::default().headnode
    }
}

/// Waits for the headnode to kill itself at its fault point.
fn wait_killed(dc: &mut Datacenter, point: &str) {
    let st = dc
        .headnode_mut()
        .proc
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the headnode did not reach {point}"));
    assert_eq!(
        st.signal(),
        Some(9),
        "the headnode ended otherwise at {point}: {st:?}"
    );
}

/// Kills the headnode before and after each provision step of an instance
/// created with `extra`; each time the job is taken over and finishes, and
/// deleting the instance leaves nothing.
async fn crash_at_each_provision_step(dc: &mut Datacenter, prefix: &str, extra: Value) {
    let steps = [
        "allocate_nics",
        "ensure_image",
        "ensure_instance",
        "wait_running",
        "mark_running",
    ];
    for (n, step) in steps.iter().enumerate() {
        for when in ["before", "after"] {
            let point = format!("provision:{step}:{when}");
            dc.restart_headnode(fault(&point)).await;
            let (st, body) = dc
                .create(&format!("{prefix}{n}{when}"), extra.clone())
                .await;
            assert_eq!(st, 202, "{point}: {body}");
            wait_killed(dc, &point);
            dc.restart_headnode(DcOpts::default().headnode).await;
            let job = dc.wait_job(body["job_id"].as_str().unwrap()).await;
            assert_eq!(job["state"], "succeeded", "{point}: {job}");
            assert!(
                job["attempts"].as_u64().unwrap() >= 2,
                "{point}: not taken over: {job}"
            );
            let id = body["instance"]["id"].as_str().unwrap();
            // (unknown for a moment if the node's heartbeats lapsed while no headnode ran)
            dc.wait_state(id, "running", Duration::from_secs(30)).await;
            assert_eq!(dc.nodes[0].instance_datasets().len(), 1, "{point}");
            assert_eq!(dc.taken_ips().await.len(), 1, "{point}: addresses");
            dc.act(id, "delete").await;
            dc.assert_nothing_held().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headnode_killed_at_each_provision_step_resumes_and_leaks_nothing() {
    let Some(mut dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    crash_at_each_provision_step(&mut dc, "f", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headnode_killed_at_each_vm_provision_step_resumes_and_leaks_nothing() {
    let Some(mut dc) = Datacenter::start(DcOpts {
        nodes: 1,
        vms: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    crash_at_each_provision_step(&mut dc, "v", json!({"image": "tiny-vm", "package": "vm"})).await;
    // The agent killed right after it launched QEMU: the retried
    // EnsureInstance finds that QEMU and makes no second one.
    dc.nodes[0].agent.restart_in_place(vec![(
        "NEREID_AGENT_FAULT".into(),
        "ensure_instance:after_launch".into(),
    )]);
    let (st, body) = dc
        .create("vagent", json!({"image": "tiny-vm", "package": "vm"}))
        .await;
    assert_eq!(st, 202, "{body}");
    let id = body["instance"]["id"].as_str().unwrap().to_string();
    wait_for_exit(&mut dc).await;
    let state = dc.nodes[0].agent.state.path().to_path_buf();
    // QEMU, started just before the agent died, comes up without it.
    nereid_tests::wait_for(
        "QEMU to run on without its agent",
        Duration::from_secs(30),
        || async { (nereid_tests::node::vm_pids(&state).len() == 1).then_some(()) },
    )
    .await;
    dc.nodes[0].agent.restart_in_place(Vec::new());
    let job = dc.wait_job(body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        nereid_tests::node::vm_pids(dc.nodes[0].agent.state.path()).len(),
        1,
        "exactly one QEMU"
    );
    dc.act(&id, "delete").await;
    dc.assert_nothing_held().await;
}

/// Until the node's agent aborted at its fault point.
async fn wait_for_exit(dc: &mut Datacenter) {
    let st = dc.nodes[0]
        .agent
        .proc
        .wait_exit(Duration::from_secs(120))
        .expect("the agent reached its fault point");
    assert!(!st.success(), "{st:?}");
}

/// An image whose file is not an archive: the node refuses it for good.
async fn broken_image(dc: &Datacenter) -> String {
    let (id, _) =
        nereid_tests::node::upload_file(dc.headnode(), "broken", b"not a tar.gz".repeat(100)).await;
    let (st, body) = dc
        .op()
        .post(&format!("/v1/images/{id}/activate"), &json!({}))
        .await;
    assert_eq!(st, 200, "{body}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provision_unwinds_even_when_the_headnode_dies_while_unwinding() {
    let Some(mut dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    broken_image(&dc).await;
    // Unwinding without a crash first, then with one after the NIC was given back.
    for point in [None, Some("provision:allocate_nics:undone")] {
        if let Some(p) = point {
            dc.restart_headnode(fault(p)).await;
        }
        let (st, body) = dc.create("broken1", json!({"image": "broken"})).await;
        assert_eq!(st, 202, "{body}");
        if let Some(p) = point {
            wait_killed(&mut dc, p);
            dc.restart_headnode(DcOpts::default().headnode).await;
        }
        let job = dc.wait_job(body["job_id"].as_str().unwrap()).await;
        assert_eq!(job["state"], "failed", "{job}");
        assert!(
            job["error"].as_str().unwrap().starts_with("ensure_image"),
            "{job}"
        );
        let states: Vec<&str> = job["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            [
                "undone", "undone", "failed", "pending", "pending", "pending"
            ],
            "{job}"
        );
        let id = body["instance"]["id"].as_str().unwrap();
        let inst = dc.instance(id).await;
        assert_eq!(inst["state"], "failed", "{inst}");
        assert!(
            inst["error"].as_str().unwrap().contains("ensure_image"),
            "{inst}"
        );
        // A failed instance holds nothing but its record, and can be deleted.
        dc.assert_nothing_held().await;
        dc.act(id, "delete").await;
        dc.assert_nothing_held().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_headnodes_job_is_taken_over_by_another_headnode() {
    let Some(mut dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    // The first headnode alone claims the job and dies holding its lease.
    let point = "provision:ensure_instance:after";
    dc.restart_headnode(fault(point)).await;
    let (st, body) = dc.create("taken", json!({})).await;
    assert_eq!(st, 202, "{body}");
    wait_killed(&mut dc, point);
    // A second headnode on the same database, with its own ports and state
    // but the datacenter's CA (headnodes share the pki dir), takes the job
    // over once the lease runs out; the first stays dead.
    let mut second_opts = DcOpts::default().headnode;
    second_opts.args.extend([
        "--pki-dir".to_string(),
        dc.headnode().state.path().join("pki").display().to_string(),
    ]);
    let mgmt = dc
        .headnode()
        .rest_url
        .trim_start_matches("http://")
        .to_string();
    let ip = mgmt.rsplit_once(':').unwrap().0.to_string();
    second_opts.rest_listen = format!("{ip}:0");
    second_opts.grpc_listen = format!("{ip}:0");
    let second = Headnode::start_on(
        dc.headnode().database_url.clone(),
        tempfile::tempdir().unwrap(),
        second_opts,
    )
    .await;
    let job_id = body["job_id"].as_str().unwrap().to_string();
    let op2 = nereid_tests::api::Api::new(&second.rest_url, &dc.headnode().operator_token());
    let job: Value = nereid_tests::wait_for("the job to end", Duration::from_secs(60), || async {
        let (_, j) = op2.get(&format!("/v1/jobs/{job_id}")).await;
        (j["state"] == "succeeded" || j["state"] == "failed").then_some(j)
    })
    .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(
        job["attempts"].as_u64().unwrap() >= 2,
        "not taken over: {job}"
    );
    dc.restart_headnode(DcOpts::default().headnode).await;
    let id = body["instance"]["id"].as_str().unwrap();
    // While the node's heartbeats had no headnode to go to, the second one may
    // have seen the server go quiet and marked the instance unknown; the
    // node's next report settles it.
    nereid_tests::wait_for(
        "the instance to be running",
        Duration::from_secs(30),
        || async { (dc.instance(id).await["state"] == "running").then_some(()) },
    )
    .await;
    dc.act(id, "delete").await;
    dc.assert_nothing_held().await;
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_during_a_provision_the_job_retries_and_completes() {
    let Some(mut dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    dc.nodes[0].agent.restart_in_place(vec![(
        "NEREID_AGENT_FAULT".into(),
        "ensure_instance:after_clone".into(),
    )]);
    let (st, body) = dc.create("survivor", json!({})).await;
    assert_eq!(st, 202, "{body}");
    let died = dc.nodes[0].agent.proc.wait_exit(Duration::from_secs(60));
    assert!(died.is_some(), "the agent did not reach its fault point");
    dc.nodes[0].agent.restart_in_place(Vec::new());
    let job = dc.wait_job(body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let ensure = &job["steps"][3];
    assert_eq!(ensure["name"], "ensure_instance");
    assert!(ensure["attempts"].as_u64().unwrap() >= 2, "{job}");
    let id = body["instance"]["id"].as_str().unwrap();
    assert_eq!(dc.instance(id).await["state"], "running");
    assert_eq!(
        dc.nodes[0].instance_datasets().len(),
        1,
        "exactly one instance"
    );
    dc.act(id, "delete").await;
    dc.assert_nothing_held().await;
}
