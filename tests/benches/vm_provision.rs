//! Benchmark (prints, asserts nothing) of KVM instances on one node:
//! (a) POST /v1/instances -> the tiny-vm guest's NEREID-READY on its serial
//!     console, against booting the same kernel and initramfs with a bare
//!     `qemu-system-x86_64` of the same accelerator, size and NIC model in
//!     the same run (alternating), medians and ratio (goal <= 1.15);
//! (b) with 5 VMs running: the agent's resident memory, and per VM the
//!     resident memory of QEMU and of its monitor;
//! (c) the agent killed with -9 and started again: how long until its
//!     ListInstances reports all 5 VMs running (goal <= 2 s).
//!
//!   deploy/dev bench

use std::process::Stdio;
use std::time::{Duration, Instant};

use nereid_proto::v1 as pb;
use nereid_proto::v1::agent_client::AgentClient;
use nereid_tests::datacenter::{Datacenter, DcOpts};
use nereid_tests::node::{build_sample, state_name, vm_pids};
use nereid_tests::procs::rss_kib;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// From the POST to NEREID-READY on the console (then the VM is deleted).
async fn through_the_api(dc: &Datacenter, alias: &str) -> Duration {
    let t = Instant::now();
    let (st, body) = dc
        .create(alias, json!({"image": "tiny-vm", "package": "vm"}))
        .await;
    assert_eq!(st, 202, "{body}");
    let id = body["instance"]["id"].as_str().unwrap().to_string();
    loop {
        let (st, c) = dc
            .op()
            .get(&format!("/v1/instances/{id}/console?tail=200"))
            .await;
        if st == 200 && c["text"].as_str().unwrap_or("").contains("NEREID-READY") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t.elapsed();
    dc.wait_job(body["job_id"].as_str().unwrap()).await;
    dc.act(&id, "delete").await;
    took
}

/// The same boot with a bare QEMU: spawn -> NEREID-READY on its stdout.
async fn bare_qemu(dir: &std::path::Path, accel: &str, cmdline: &str) -> Duration {
    let t = Instant::now();
    let mut qemu = tokio::process::Command::new("qemu-system-x86_64")
        .args(["-machine", "pc", "-accel", accel, "-smp", "1", "-m", "128M"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console"])
        .arg("-kernel")
        .arg(dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(dir.join("initramfs.gz"))
        .arg("-append")
        .arg(format!(
            "{} nereid.hostname=bare nereid.nic=92:00:00:00:00:99,10.250.0.2/24 nereid.gw=10.250.0.1 nereid.dns=10.250.0.1",
            cmdline.trim()
        ))
        .args([
            "-nic",
            "user,model=virtio-net-pci,restrict=on,mac=92:00:00:00:00:99",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(qemu.stdout.take().unwrap()).lines();
    while let Some(l) = lines.next_line().await.unwrap() {
        if l.contains("NEREID-READY") {
            break;
        }
    }
    let took = t.elapsed();
    let _ = qemu.kill().await;
    took
}

#[tokio::main]
async fn main() {
    let runs: usize = nereid_tests::bench_setting("NEREID_BENCH_RUNS", 5);
    let mut opts = DcOpts {
        nodes: 1,
        node_memory_mb: 16384,
        vms: true,
        ..Default::default()
    };
    opts.headnode.args.clear();
    let dc = Datacenter::start(opts)
        .await
        .expect("ZFS must be usable for this benchmark");
    // The image pulled and the accelerator known, by a first untimed VM.
    let (st, body) = dc
        .create("warm", json!({"image": "tiny-vm", "package": "vm"}))
        .await;
    assert_eq!(st, 202, "{body}");
    let job = dc.wait_job(body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let warm = dc.instance(body["instance"]["id"].as_str().unwrap()).await;
    let accel = warm["accelerator"].as_str().unwrap().to_string();
    dc.act(warm["id"].as_str().unwrap(), "delete").await;

    // (a)
    let files = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(build_sample("tiny-vm").join("tiny-vm.tar.gz"))
        .arg("-C")
        .arg(files.path())
        .status()
        .unwrap();
    assert!(st.success());
    let cmdline = std::fs::read_to_string(files.path().join("cmdline")).unwrap();
    let (mut api, mut bare) = (Vec::new(), Vec::new());
    for i in 0..runs {
        api.push(through_the_api(&dc, &format!("b{i}")).await);
        bare.push(bare_qemu(files.path(), &accel, &cmdline).await);
    }
    let (a, b) = (median(api.clone()), median(bare.clone()));
    println!(
        "(a) POST -> NEREID-READY ({accel}), median of {runs}: API {:.0} ms, bare qemu {:.0} ms, ratio {:.2} (goal <= 1.15); API runs {:?} ms, bare {:?} ms",
        ms(a),
        ms(b),
        a.as_secs_f64() / b.as_secs_f64(),
        api.iter().map(|d| ms(*d) as u64).collect::<Vec<_>>(),
        bare.iter().map(|d| ms(*d) as u64).collect::<Vec<_>>()
    );

    // (b) Five VMs.
    let mut ids = Vec::new();
    for i in 0..5 {
        let vm = dc
            .provision(
                &format!("m{i}"),
                json!({"image": "tiny-vm", "package": "vm"}),
            )
            .await;
        ids.push(vm["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        dc.wait_console(id, "NEREID-READY", Duration::from_secs(300))
            .await;
    }
    let node = &dc.nodes[0];
    let state = node.agent.state.path().to_path_buf();
    let qemus = vm_pids(&state);
    assert_eq!(qemus.len(), 5);
    let parent = |pid: i32| -> i32 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let qemu_kib: u64 = qemus.iter().map(|(_, p)| rss_kib(*p)).sum();
    let mon_kib: u64 = qemus.iter().map(|(_, p)| rss_kib(parent(*p))).sum();
    println!(
        "(b) 5 VMs of 128 MiB running: agent RSS {:.1} MiB; per VM: QEMU RSS {:.1} MiB (guest memory touched included), monitor RSS {:.2} MiB",
        rss_kib(node.agent.proc.pid()) as f64 / 1024.0,
        qemu_kib as f64 / 5.0 / 1024.0,
        mon_kib as f64 / 5.0 / 1024.0
    );

    // (c) kill -9 of the agent, then a new one: until it reports all five.
    let server_id = node.server_id.to_string();
    let mut dc = dc;
    dc.nodes[0].agent.proc.kill();
    let t = Instant::now();
    dc.nodes[0].agent.restart_in_place(Vec::new());
    let reported = loop {
        let log = dc.nodes[0].agent.proc.current_log();
        let address = log
            .lines()
            .rev()
            .find(|l| l.contains("agent listening"))
            .and_then(|l| l.split("address=").nth(1))
            .map(|a| a.split_whitespace().next().unwrap_or("").to_string());
        if let Some(address) = address {
            let mut c = AgentClient::new(dc.headnode().agent_channel(&server_id, &address));
            if let Ok(r) = c.list_instances(pb::ListInstancesRequest {}).await {
                let running = r
                    .into_inner()
                    .instances
                    .iter()
                    .filter(|i| state_name(i.state) == "running")
                    .count();
                if running == 5 {
                    break t.elapsed();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "(c) agent killed with -9 and restarted: ListInstances reports all 5 VMs running {:.0} ms after the new agent was spawned (goal <= 2000 ms)",
        ms(reported)
    );
    for id in &ids {
        dc.act(id, "delete").await;
    }
    dc.assert_nothing_held().await;
}
