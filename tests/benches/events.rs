//! Benchmark (prints, asserts nothing) of the change feed:
//! (a) 100 clients on `GET /v1/events`: from sending `POST .../stop` (whose
//!     transaction writes the instance's `stopping`) to each client holding
//!     that event; per round the median and the slowest client, over rounds;
//!     against the same POST's own response time as the floor;
//! (b) the headnode's resident memory with 1,000 connected clients that
//!     read nothing, against before they connected.
//!
//!   deploy/dev bench     (NEREID_BENCH_EVENT_CLIENTS 100, NEREID_BENCH_IDLE_CLIENTS 1000,
//!                         NEREID_BENCH_EVENT_ROUNDS 5)

use std::time::{Duration, Instant};

use nereid_tests::datacenter::{Datacenter, DcOpts};
use nereid_tests::procs::rss_kib;
use serde_json::json;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let clients: usize = nereid_tests::bench_setting("NEREID_BENCH_EVENT_CLIENTS", 100);
    let idle: usize = nereid_tests::bench_setting("NEREID_BENCH_IDLE_CLIENTS", 1000);
    let rounds: usize = nereid_tests::bench_setting("NEREID_BENCH_EVENT_ROUNDS", 5);
    // Every client is a connection on both sides.
    let want = (idle as u64 + clients as u64) * 2 + 1024;
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let _ = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        want.min(hard),
        hard,
    );
    let mut opts = DcOpts {
        nodes: 1,
        ..Default::default()
    };
    opts.headnode
        .args
        .extend(["--requests-per-token".into(), "100000".into()]);
    let Some(dc) = Datacenter::start(opts).await else {
        eprintln!("skipped: ZFS is not usable here");
        return;
    };
    let inst = dc.provision("bench-ev", json!({})).await;
    let id = inst["id"].as_str().unwrap().to_string();
    let op = dc.op();

    // (a) Fan-out latency.
    let mut streams = Vec::new();
    for _ in 0..clients {
        streams.push(op.events(&format!("/v1/events?instance={id}"), None).await);
    }
    let mut medians = Vec::new();
    let mut slowest = Vec::new();
    let mut posts = Vec::new();
    for _ in 0..rounds {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for mut s in streams.drain(..) {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                s.until(Duration::from_secs(60), |e| e.2["state"] == "stopping")
                    .await;
                let _ = tx.send(Instant::now());
                s
            }));
        }
        drop(tx);
        let t0 = Instant::now();
        let (st, body) = op
            .post(&format!("/v1/instances/{id}/stop"), &json!({}))
            .await;
        posts.push(t0.elapsed());
        assert_eq!(st, 202, "{body}");
        let mut lat = Vec::new();
        while let Some(t) = rx.recv().await {
            lat.push(t - t0);
        }
        for t in tasks {
            streams.push(t.await.unwrap());
        }
        lat.sort();
        medians.push(lat[lat.len() / 2]);
        slowest.push(*lat.last().unwrap());
        dc.wait_job(body["job_id"].as_str().unwrap()).await;
        dc.act(&id, "start").await;
    }
    medians.sort();
    slowest.sort();
    posts.sort();
    println!(
        "change feed, {clients} clients, {rounds} rounds: state change -> delivered: median client {:.1} ms (median of rounds), slowest client {:.1} ms (median of rounds, worst {:.1} ms); the POST itself answered in {:.1} ms (median)",
        ms(medians[medians.len() / 2]),
        ms(slowest[slowest.len() / 2]),
        ms(*slowest.last().unwrap()),
        ms(posts[posts.len() / 2]),
    );
    drop(streams);

    // (b) Memory with idle clients.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = dc.headnode().proc.pid();
    let before = rss_kib(pid);
    let mut idle_streams = Vec::new();
    for _ in 0..idle {
        idle_streams.push(op.events("/v1/events", None).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    println!(
        "headnode resident memory: {:.1} MiB before, {:.1} MiB with {idle} idle clients connected ({:.1} KiB per client)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / idle as f64
    );
    drop(idle_streams);
}
