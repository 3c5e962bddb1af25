//! Benchmark (prints, asserts nothing): snapshot and rollback of a stopped
//! busybox instance through the API (`POST .../snapshots`, `POST
//! .../snapshots/{name}/rollback`, `DELETE .../snapshots/{name}`), against
//! the same `zfs snapshot`, `zfs rollback -r` and `zfs destroy` by hand on
//! the same dataset, alternating; medians and ratios.
//!
//!   deploy/dev bench     (NEREID_BENCH_SNAPSHOT_ROUNDS, default 15)

use std::process::Command;
use std::time::{Duration, Instant};

use nereid_tests::datacenter::{Datacenter, DcOpts};
use serde_json::json;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn zfs(args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = Command::new("zfs").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "zfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = nereid_tests::bench_setting("NEREID_BENCH_SNAPSHOT_ROUNDS", 15);
    let Some(dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        eprintln!("skipped: ZFS is not usable here");
        return;
    };
    let inst = dc.provision("bench-snap", json!({})).await;
    let id = inst["id"].as_str().unwrap().to_string();
    dc.act(&id, "stop").await;
    let ds = format!("{}/instances/{id}", dc.nodes[0].pool.name);
    let op = dc.op();
    let snaps = format!("/v1/instances/{id}/snapshots");

    let (mut api_snap, mut api_back, mut api_del) = (vec![], vec![], vec![]);
    let (mut hand_snap, mut hand_back, mut hand_del) = (vec![], vec![], vec![]);
    for i in 0..rounds {
        let name = format!("b{i}");
        let t = Instant::now();
        let (st, body) = op.post(&snaps, &json!({"name": name})).await;
        assert_eq!(st, 201, "{body}");
        api_snap.push(t.elapsed());
        let t = Instant::now();
        let (st, body) = op
            .post(&format!("{snaps}/{name}/rollback"), &json!({}))
            .await;
        assert_eq!(st, 200, "{body}");
        api_back.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(op.delete(&format!("{snaps}/{name}")).await.0, 204);
        api_del.push(t.elapsed());

        let snap = format!("{ds}@h{i}");
        hand_snap.push(zfs(&["snapshot", &snap]));
        hand_back.push(zfs(&["rollback", "-r", &snap]));
        hand_del.push(zfs(&["destroy", &snap]));
    }
    println!("snapshots of a stopped busybox instance, {rounds} rounds, medians:");
    for (what, api, hand) in [
        ("snapshot", api_snap, hand_snap),
        ("rollback", api_back, hand_back),
        ("delete", api_del, hand_del),
    ] {
        let (a, h) = (median(api), median(hand));
        println!(
            "  {what:<9} through Nereid {:7.1} ms   zfs by hand {:7.1} ms   ratio {:.2}",
            ms(a),
            ms(h),
            a.as_secs_f64() / h.as_secs_f64()
        );
    }
}
