//! KVM instances (brand `kvm`) through the REST API on real QEMU (TCG on a
//! host whose KVM cannot run guests): the tiny-vm image boots, reaches a
//! container and the host, stops gracefully, starts and reboots; QEMU
//! outlives a killed agent and is re-adopted; a QEMU that dies is reported
//! failed with how it died; a raw disk image boots from its clone; bad
//! images and requests are refused with the reason. Nothing is left after.

use std::process::Command;
use std::time::Duration;

use nereid_tests::datacenter::{Datacenter, DcOpts, ip_of};
use nereid_tests::node::{tar_gz, upload_image, vm_pids};
use nereid_tests::wait_for;
use serde_json::{Value, json};

const BOOT: Duration = Duration::from_secs(180);

fn vm_dc(nodes: usize) -> DcOpts {
    DcOpts {
        nodes,
        vms: true,
        ..Default::default()
    }
}

/// The accelerator the node's probe makes VMs run under.
async fn expected_accelerator(dc: &Datacenter, server: &str) -> &'static str {
    let (_, s) = dc.op().get(&format!("/v1/servers/{server}")).await;
    if s["sysinfo"]["capabilities"]["kvm"]["available"] == true {
        "kvm"
    } else {
        "tcg"
    }
}

async fn host_pings(ip: &str) {
    wait_for(
        &format!("{ip} to answer ping"),
        Duration::from_secs(60),
        || async {
            let ok = Command::new("ping")
                .args(["-c1", "-W1", ip])
                .output()
                .is_ok_and(|o| o.status.success());
            ok.then_some(())
        },
    )
    .await;
}

fn count(text: &str, marker: &str) -> usize {
    text.matches(marker).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_vm_and_a_container_reach_each_other_and_the_host_and_delete_leaves_nothing() {
    let Some(dc) = Datacenter::start(vm_dc(2)).await else {
        return;
    };
    // Its user-script reads the metadata service through the virtio-serial
    // port and prints what it got on the console.
    let key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPKFFcOjrmDRB9XeLy0iPxj3RQYdXqGUwqhcsHvciCAx vm@test";
    let (st, body) = dc
        .op()
        .post("/v1/keys", &json!({"name": "vm-test", "key": key}))
        .await;
    assert_eq!(st, 201, "{body}");
    let script = "echo \"NEREID-MDATA uuid=$(mdata-get sdc:uuid) color=$(mdata-get color) \
                  keys=$(mdata-list | tr '\\n' ,) nope=$(mdata-get nope; echo $?) \
                  auth=$(mdata-get root_authorized_keys)\"";
    let (st, body) = dc
        .create_vm(
            "vm1",
            json!({"metadata": {"user-script": script, "color": "blue"}}),
        )
        .await;
    assert_eq!(st, 202, "{body}");
    let job = dc.wait_job(body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let id = body["instance"]["id"].as_str().unwrap().to_string();
    let vm = dc.instance(&id).await;
    assert_eq!(vm["state"], "running", "{vm}");
    assert_eq!(vm["brand"], "kvm");
    assert_eq!(vm["vcpus"], 1, "a VM holds its vCPUs");
    let server = vm["server_id"].as_str().unwrap();
    assert_eq!(vm["accelerator"], expected_accelerator(&dc, server).await);
    let vm_ip = ip_of(&vm);
    let console = dc.wait_console(&id, "NEREID-READY vm1", BOOT).await;
    let md = dc
        .wait_console(&id, "NEREID-USER-SCRIPT exited", BOOT)
        .await;
    assert!(
        md.contains(&format!(
            "NEREID-MDATA uuid={id} color=blue keys=color,root_authorized_keys,user-script, nope=1 auth={key}"
        )),
        "{md}"
    );
    let mac = vm["nics"][0]["mac"].as_str().unwrap();
    assert!(
        console.contains(&format!("NEREID-NET eth0 {vm_ip}/24 {mac}")),
        "{console}"
    );
    // The tap is a port of the network's bridge on the VM's node.
    let node = dc.node_of(&vm);
    assert_eq!(node.links("nt").len(), 1);
    // The CLI shows the accelerator and the console.
    let cli = |args: &[&str]| {
        let out = Command::new(nereid_tests::procs::bin("nereid"))
            .args(args)
            .env("NEREID_URL", &dc.headnode().rest_url)
            .env("NEREID_TOKEN", dc.headnode().operator_token())
            .env("HOME", "/nonexistent")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let shown = cli(&["instance", "get", "vm1"]);
    assert!(shown.contains("accelerator"), "{shown}");
    assert!(cli(&["instance", "console", "vm1", "--tail", "5"]).contains("NEREID-READY vm1"));

    // A container on the other node; the host and the container reach the VM.
    let ct = dc
        .provision("ct1", json!({"affinity": ["instance!=vm1"]}))
        .await;
    assert_ne!(ct["server_id"], vm["server_id"], "placed apart");
    host_pings(&vm_ip).await;
    let ct_ip = ip_of(&ct);
    wait_for(
        "the container to reach the VM",
        Duration::from_secs(30),
        || async {
            let (ok, _) = dc.exec(&ct, &["ping", "-c1", "-W1", &vm_ip]);
            ok.then_some(())
        },
    )
    .await;
    host_pings(&ct_ip).await;

    // Graceful stop: the guest sees the ACPI power button.
    dc.act(&id, "stop").await;
    assert_eq!(dc.instance(&id).await["state"], "stopped");
    assert_eq!(vm_pids(node.agent.state.path()), Vec::new());
    // (the kernel's last words after the guest's ACPI handler powered it off)
    let text = dc.wait_console(&id, "Power down", BOOT).await;
    assert_eq!(count(&text, "NEREID-READY"), 1, "{text}");
    // An image made from the VM holds its boot files, not the node's
    // console log or seed, and is a vm image like its origin.
    let (st, made) = dc
        .op()
        .post(
            &format!("/v1/instances/{id}/images"),
            &json!({"name": "vm-copy", "version": "1"}),
        )
        .await;
    assert_eq!(st, 202, "{made}");
    assert_eq!(made["image"]["type"], "vm");
    let job = dc.wait_job(made["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let image = made["image"]["id"].as_str().unwrap();
    let file = dc
        .op()
        .request(reqwest::Method::GET, &format!("/v1/images/{image}/file"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut names: Vec<String> = tar::Archive::new(flate2::read::GzDecoder::new(&file[..]))
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["cmdline", "initramfs.gz", "vmlinuz"]);
    assert_eq!(dc.op().delete(&format!("/v1/images/{image}")).await.0, 204);
    // Start boots it again (the console log keeps the first boot).
    dc.act(&id, "start").await;
    dc.wait_state(&id, "running", Duration::from_secs(10)).await;
    wait_for("the second boot", BOOT, || async {
        let (_, c) = dc
            .op()
            .get(&format!("/v1/instances/{id}/console?tail=2000"))
            .await;
        (count(c["text"].as_str().unwrap_or(""), "NEREID-READY") >= 2).then_some(())
    })
    .await;
    // Reboot resets it: a third boot.
    let pid_before = vm_pids(node.agent.state.path());
    dc.act(&id, "reboot").await;
    wait_for("the boot after the reset", BOOT, || async {
        let (_, c) = dc
            .op()
            .get(&format!("/v1/instances/{id}/console?tail=2000"))
            .await;
        (count(c["text"].as_str().unwrap_or(""), "NEREID-READY") >= 3).then_some(())
    })
    .await;
    assert_eq!(
        vm_pids(node.agent.state.path()),
        pid_before,
        "a reset keeps the QEMU process"
    );
    host_pings(&vm_ip).await;
    let (st, tail) = dc
        .op()
        .get(&format!("/v1/instances/{id}/console?tail=2"))
        .await;
    assert_eq!(st, 200, "{tail}");
    assert!(
        tail["text"].as_str().unwrap().lines().count() <= 2,
        "{tail}"
    );

    dc.act(&id, "delete").await;
    dc.act(ct["id"].as_str().unwrap(), "delete").await;
    dc.assert_nothing_held().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_outlives_a_killed_agent_is_readopted_and_a_dead_qemu_is_reported_failed() {
    let Some(mut dc) = Datacenter::start(vm_dc(1)).await else {
        return;
    };
    let vm = dc
        .provision("keep", json!({"image": "tiny-vm", "package": "vm"}))
        .await;
    let id = vm["id"].as_str().unwrap().to_string();
    dc.wait_console(&id, "NEREID-READY keep", BOOT).await;
    let state = dc.nodes[0].agent.state.path().to_path_buf();
    let pids = vm_pids(&state);
    assert_eq!(pids.len(), 1);
    let pid = pids[0].1;

    // kill -9 of the agent leaves the VM running and reachable.
    dc.nodes[0].agent.proc.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(vm_pids(&state), pids, "QEMU survived the agent");
    host_pings(&ip_of(&vm)).await;
    // A new agent re-adopts it (pid file and QMP) and reports it running.
    dc.nodes[0].agent.restart_in_place(Vec::new());
    wait_for(
        "the agent to re-adopt the VM",
        Duration::from_secs(30),
        || async {
            dc.nodes[0]
                .agent
                .proc
                .current_log()
                .contains("re-adopted a running VM")
                .then_some(())
        },
    )
    .await;
    // The headnode learns the new agent's address from its next heartbeat.
    wait_for(
        "the new agent to serve the console",
        Duration::from_secs(30),
        || async {
            let (st, _) = dc
                .op()
                .get(&format!("/v1/instances/{id}/console?tail=5"))
                .await;
            (st == 200).then_some(())
        },
    )
    .await;
    assert_eq!(dc.instance(&id).await["state"], "running");

    // QEMU killed behind the agent's back: failed, with how it died.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let failed = dc.wait_state(&id, "failed", Duration::from_secs(30)).await;
    let error = failed["error"].as_str().unwrap_or("");
    assert!(error.contains("signal 9"), "{failed}");
    // It can be started again.
    dc.act(&id, "start").await;
    dc.wait_state(&id, "running", Duration::from_secs(10)).await;
    assert_eq!(vm_pids(&state).len(), 1);
    dc.act(&id, "delete").await;
    dc.assert_nothing_held().await;
}

/// A raw disk whose boot sector writes a marker to COM1 and halts.
fn bootable_raw_disk() -> Vec<u8> {
    let mut disk = vec![
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0xFC, // cld
        0xBE, 0x17, 0x7C, // mov si, 0x7c17 (msg)
        0xAC, // next: lodsb
        0x08, 0xC0, // or al, al
        0x74, 0x06, // jz done
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xEE, // out dx, al
        0xEB, 0xF5, // jmp next
        0xFA, // done: cli
        0xF4, // hlt
        0xEB, 0xFC, // jmp done
    ];
    disk.extend_from_slice(b"NEREID-READY disk\r\n\0");
    disk.resize(510, 0);
    disk.extend_from_slice(&[0x55, 0xAA]);
    disk.resize(1 << 20, 0);
    disk
}

async fn vm_image(dc: &Datacenter, name: &str, files: &[(&str, &[u8])]) {
    let (id, _) = upload_image(dc.headnode(), name, "vm", tar_gz(files)).await;
    let (st, body) = dc
        .op()
        .post(&format!("/v1/images/{id}/activate"), &json!({}))
        .await;
    assert_eq!(st, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_disk_image_boots_from_its_clone_grown_to_the_package_with_a_nocloud_seed() {
    let Some(dc) = Datacenter::start(vm_dc(1)).await else {
        return;
    };
    let disk = bootable_raw_disk();
    vm_image(&dc, "bootsector", &[("disk.raw", &disk)]).await;
    let vm = dc
        .provision("disk1", json!({"image": "bootsector", "package": "vm"}))
        .await;
    let id = vm["id"].as_str().unwrap().to_string();
    dc.wait_console(&id, "NEREID-READY disk", Duration::from_secs(60))
        .await;
    // The instance's disk is its own copy-on-write clone, grown to the
    // package's disk (64 MiB less the room kept for logs); the image's is not.
    let mnt = dc.nodes[0].pool.mountpoint();
    let size = |p: std::path::PathBuf| std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
    assert_eq!(
        size(mnt.join("instances").join(&id).join("disk.raw")),
        60 << 20
    );
    let image_id = vm["image_id"].as_str().unwrap();
    assert_eq!(
        size(mnt.join("images").join(image_id).join("disk.raw")),
        1 << 20
    );
    let meta =
        std::fs::read_to_string(mnt.join("instances").join(&id).join("seed/meta-data")).unwrap();
    assert!(meta.contains(&format!("instance-id: {id}")), "{meta}");
    assert!(meta.contains("local-hostname: disk1"), "{meta}");
    let net = std::fs::read_to_string(mnt.join("instances").join(&id).join("seed/network-config"))
        .unwrap();
    assert!(
        net.contains(&format!("address: {}/24", ip_of(&vm))),
        "{net}"
    );

    // Resized while stopped, the disk grows to the new package's; a
    // smaller disk is refused (a VM's disk does not shrink).
    for (name, disk) in [("vm-big", 128), ("vm-tiny", 32)] {
        let (st, body) = dc
            .op()
            .post(
                "/v1/packages",
                &json!({"name": name, "version": "1", "memory_mb": 128, "vcpus": 1,
                        "disk_mb": disk, "brand": "kvm"}),
            )
            .await;
        assert_eq!(st, 201, "{body}");
    }
    let resize = format!("/v1/instances/{id}/resize");
    dc.act(&id, "stop").await;
    nereid_tests::api::assert_error_says(
        &dc.op().post(&resize, &json!({"package": "vm-tiny"})).await,
        400,
        "InvalidArgument",
        "does not shrink",
    );
    let (st, body) = dc.op().post(&resize, &json!({"package": "vm-big"})).await;
    assert_eq!(st, 202, "{body}");
    let job = dc.wait_job(body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        size(mnt.join("instances").join(&id).join("disk.raw")),
        124 << 20
    );
    dc.act(&id, "start").await;
    dc.wait_state(&id, "running", Duration::from_secs(30)).await;
    dc.act(&id, "delete").await;
    dc.assert_nothing_held().await;
}

async fn failed_provision(dc: &Datacenter, alias: &str, image: &str) -> String {
    let (st, body) = dc
        .create(alias, json!({"image": image, "package": "vm"}))
        .await;
    assert_eq!(st, 202, "{body}");
    let job = dc.wait_job(body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "failed", "{alias}: {job}");
    let id = body["instance"]["id"].as_str().unwrap();
    let inst = dc.instance(id).await;
    assert_eq!(inst["state"], "failed", "{inst}");
    dc.act(id, "delete").await;
    job["error"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_vm_requests_get_a_clear_4xx_or_a_failed_job_and_leave_nothing() {
    let Some(dc) = Datacenter::start(vm_dc(1)).await else {
        return;
    };
    let op = dc.op();
    // A VM image with a container package, and the reverse.
    let r = dc
        .create("mix1", json!({"image": "tiny-vm", "package": "small"}))
        .await;
    nereid_tests::api::assert_error(&r, 400, "InvalidArgument");
    assert!(
        r.1["error"]["message"].as_str().unwrap().contains("kvm"),
        "{}",
        r.1
    );
    let r = dc.create("mix2", json!({"package": "vm"})).await;
    nereid_tests::api::assert_error(&r, 400, "InvalidArgument");
    // More vCPUs than any server offers.
    let (st, body) = op
        .post(
            "/v1/packages",
            &json!({"name": "vm-huge", "version": "1", "memory_mb": 128, "vcpus": 500,
                    "disk_mb": 64, "brand": "kvm"}),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let r = dc
        .create("huge", json!({"image": "tiny-vm", "package": "vm-huge"}))
        .await;
    nereid_tests::api::assert_error(&r, 409, "InsufficientCapacity");
    assert!(
        r.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lacked CPU"),
        "{}",
        r.1
    );

    // Images that cannot boot: each fails its job with the reason.
    vm_image(&dc, "nokernel", &[("vmlinuz", &[0u8; 4096])]).await;
    let e = failed_provision(&dc, "bad1", "nokernel").await;
    assert!(e.contains("not a Linux kernel image"), "{e}");
    vm_image(
        &dc,
        "badqcow",
        &[("disk.qcow2", &b"QFI\xfbnot really".repeat(100))],
    )
    .await;
    let e = failed_provision(&dc, "bad2", "badqcow").await;
    assert!(e.contains("not a valid qcow2 image"), "{e}");
    vm_image(&dc, "noboot", &[("disk.raw", &[0u8; 65536])]).await;
    let e = failed_provision(&dc, "bad3", "noboot").await;
    assert!(e.contains("not a bootable disk"), "{e}");
    let mut fake = vec![0u8; 8192];
    fake[0x202..0x206].copy_from_slice(b"HdrS");
    vm_image(&dc, "oldkernel", &[("vmlinuz", &fake)]).await;
    let e = failed_provision(&dc, "bad4", "oldkernel").await;
    assert!(e.contains("boot protocol 2.06"), "{e}");
    // A header QEMU itself refuses (its setup claims more than the file holds).
    fake[0x1f1] = 0xff;
    fake[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    fake[0x211] = 1;
    vm_image(&dc, "badkernel", &[("vmlinuz", &fake)]).await;
    let e = failed_provision(&dc, "bad6", "badkernel").await;
    assert!(
        e.contains("QEMU did not start") && e.contains("kernel"),
        "{e}"
    );
    vm_image(&dc, "empty", &[("README", b"nothing to boot")]).await;
    let e = failed_provision(&dc, "bad5", "empty").await;
    assert!(e.contains("needs disk.raw or disk.qcow2"), "{e}");

    let (_, list) = op.get("/v1/instances").await;
    assert_eq!(list["items"], json!([]), "{list}");
    dc.assert_nothing_held().await;
    // Nothing of the refused images stays on the node either.
    let images = Command::new("zfs")
        .args(["list", "-H", "-o", "name", "-r"])
        .arg(format!("{}/images", dc.nodes[0].pool.name))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&images.stdout).to_string();
    assert!(
        listed.lines().count() <= 2,
        "only tiny-vm may remain: {listed}"
    );
    let _: Value = list;
}
