//! Benchmark (prints, asserts nothing): an image made from a busybox
//! container holding NEREID_BENCH_EXPORT_MB (default 64) MiB of data, half
//! random and half text, through the API (`POST /v1/instances/{id}/images`
//! until its job succeeds: snapshot, read-only clone, tar + gzip -1 + sha256
//! on the node, streamed into the headnode's store), against the floors by
//! hand on the same dataset: `zfs send | sha256sum` (the baseline)
//! and `tar -c | gzip -1 | sha256sum` of the same files (the same work as
//! Nereid's, without the network); each after its own `zfs snapshot`,
//! alternating, medians over NEREID_BENCH_EXPORT_ROUNDS (default 3).
//!
//!   deploy/dev bench

use std::process::Command;
use std::time::{Duration, Instant};

use nereid_tests::datacenter::{Datacenter, DcOpts};
use serde_json::json;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn sh(script: &str) -> Duration {
    let t = Instant::now();
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn zfs_value(ds: &str, prop: &str) -> String {
    let out = Command::new("zfs")
        .args(["get", "-Hp", "-o", "value", prop, ds])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mb: u64 = nereid_tests::bench_setting("NEREID_BENCH_EXPORT_MB", 64);
    let rounds: usize = nereid_tests::bench_setting("NEREID_BENCH_EXPORT_ROUNDS", 3);
    let Some(dc) = Datacenter::start(DcOpts {
        nodes: 1,
        node_memory_mb: 8192,
        ..Default::default()
    })
    .await
    else {
        eprintln!("skipped: ZFS is not usable here");
        return;
    };
    let (st, body) = dc
        .op()
        .post(
            "/v1/packages",
            &json!({"name": "roomy", "version": "1", "memory_mb": 256, "vcpus": 1,
                    "disk_mb": mb * 2 + 64, "brand": "container"}),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let inst = dc
        .provision("bench-export", json!({"package": "roomy"}))
        .await;
    let id = inst["id"].as_str().unwrap().to_string();
    let ds = format!("{}/instances/{id}", dc.nodes[0].pool.name);
    let root = zfs_value(&ds, "mountpoint");
    sh(&format!(
        "head -c {half}M /dev/urandom > {root}/root/random.bin && \
         yes 'GET /index.html 200 1234 the same log line again' | head -c {half}M > {root}/root/log.txt && sync",
        half = mb / 2
    ));
    let referenced: u64 = zfs_value(&ds, "referenced").parse().unwrap();
    let op = dc.op();

    let (mut api, mut send, mut tar) = (vec![], vec![], vec![]);
    let mut file_size = 0;
    for i in 0..rounds {
        let t = Instant::now();
        let (st, made) = op
            .post(
                &format!("/v1/instances/{id}/images"),
                &json!({"name": "bench", "version": format!("{i}")}),
            )
            .await;
        assert_eq!(st, 202, "{made}");
        let job = dc.wait_job(made["job_id"].as_str().unwrap()).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        api.push(t.elapsed());
        let image = made["image"]["id"].as_str().unwrap();
        let (_, img) = op.get(&format!("/v1/images/{image}")).await;
        file_size = img["file"]["size"].as_u64().unwrap();
        assert_eq!(op.delete(&format!("/v1/images/{image}")).await.0, 204);

        let snap = format!("{ds}@hand{i}");
        send.push(sh(&format!(
            "zfs snapshot {snap} && zfs send {snap} | sha256sum >/dev/null"
        )));
        sh(&format!("zfs destroy {snap}"));
        tar.push(sh(&format!(
            "zfs snapshot {snap} && tar -C {root} -cf - . | gzip -1 | sha256sum >/dev/null"
        )));
        sh(&format!("zfs destroy {snap}"));
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "an image from a container holding {:.1} MiB ({mb} MiB written, half random), {rounds} rounds, medians; image file {:.1} MiB:",
        mib(referenced),
        mib(file_size)
    );
    let nereid = median(api);
    for (what, d) in [
        ("through Nereid (POST to job done)", nereid),
        ("zfs send | sha256sum by hand", median(send)),
        ("tar | gzip -1 | sha256sum by hand", median(tar)),
    ] {
        println!(
            "  {what:<36} {:8.0} ms  {:7.1} MiB/s  Nereid/this {:.2}",
            d.as_secs_f64() * 1e3,
            mib(referenced) / d.as_secs_f64(),
            nereid.as_secs_f64() / d.as_secs_f64()
        );
    }
    dc.act(&id, "delete").await;
}
