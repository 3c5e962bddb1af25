//! Benchmark (prints, asserts nothing): the REST API's latency under 200
//! concurrent clients, each a tenant with its own token, paced at a few
//! requests a second (`GET /v1/instances` and `POST /v1/keys` in turn), first
//! alone and then while one abusive client hammers the API as fast as 64
//! connections go with one token. The headnode limits that token
//! (`--requests-per-token`), so the others should barely notice. The figure
//! before the abuse is the baseline of the same run.
//!
//!   deploy/dev bench   (NEREID_BENCH_API_CLIENTS 200, NEREID_BENCH_API_SECONDS 15,
//!                       NEREID_BENCH_API_RATE 2 requests/s per client)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use nereid_tests::procs::{Headnode, HeadnodeOpts};
use serde_json::json;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// An ed25519 public key line with random bits (the API checks the form).
fn random_key() -> String {
    let mut blob = Vec::new();
    for part in [b"ssh-ed25519".to_vec(), rand::random::<[u8; 32]>().to_vec()] {
        blob.extend((part.len() as u32).to_be_bytes());
        blob.extend(part);
    }
    format!(
        "ssh-ed25519 {}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

#[derive(Default)]
struct Lat {
    gets: Vec<Duration>,
    posts: Vec<Duration>,
    errors: u64,
}

/// Runs the paced clients for `secs`; returns their latencies.
async fn paced(tokens: &[String], base: &str, rate: f64, secs: u64, phase: &str) -> Lat {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let (http, base, token, phase) = (
            http.clone(),
            base.to_string(),
            token.clone(),
            phase.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Lat::default();
            let period = Duration::from_secs_f64(1.0 / rate);
            // Spread the clients over the period.
            tokio::time::sleep(period.mul_f64(i as f64 / 200.0)).await;
            let mut tick = tokio::time::interval(period);
            let mut n = 0u64;
            while Instant::now() < until {
                tick.tick().await;
                n += 1;
                let t = Instant::now();
                let ok = if n.is_multiple_of(2) {
                    let r = http
                        .get(format!("{base}/v1/instances?limit=20"))
                        .bearer_auth(&token)
                        .send()
                        .await;
                    let ok = r.is_ok_and(|r| r.status().is_success());
                    lat.gets.push(t.elapsed());
                    ok
                } else {
                    let r = http
                        .post(format!("{base}/v1/keys"))
                        .bearer_auth(&token)
                        .json(&json!({"name": format!("{phase}{i}-{n}"), "key": random_key()}))
                        .send()
                        .await;
                    let ok = r.is_ok_and(|r| r.status().is_success());
                    lat.posts.push(t.elapsed());
                    ok
                };
                if !ok {
                    lat.errors += 1;
                }
            }
            lat
        }));
    }
    let mut all = Lat::default();
    for t in tasks {
        let l = t.await.unwrap();
        all.gets.extend(l.gets);
        all.posts.extend(l.posts);
        all.errors += l.errors;
    }
    all
}

fn print(label: &str, lat: &mut Lat) {
    println!(
        "  {label:<22} GET p50 {:>7.2} ms p99 {:>7.2} ms ({} calls)   POST p50 {:>7.2} ms p99 {:>7.2} ms ({} calls)   errors {}",
        ms(pct(&mut lat.gets, 0.5)),
        ms(pct(&mut lat.gets, 0.99)),
        lat.gets.len(),
        ms(pct(&mut lat.posts, 0.5)),
        ms(pct(&mut lat.posts, 0.99)),
        lat.posts.len(),
        lat.errors
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let clients: usize = nereid_tests::bench_setting("NEREID_BENCH_API_CLIENTS", 200);
    let secs: u64 = nereid_tests::bench_setting("NEREID_BENCH_API_SECONDS", 15);
    let rate: f64 = nereid_tests::bench_setting("NEREID_BENCH_API_RATE", 2.0);
    let per_token = 50.0;
    let h = Headnode::start(HeadnodeOpts {
        args: vec!["--requests-per-token".into(), per_token.to_string()],
        ..Default::default()
    })
    .await;
    let op = h.operator();
    // The operator's token is limited too: setup waits out its 429s.
    let post = |path: &'static str, body: serde_json::Value| {
        let op = op.clone();
        async move {
            loop {
                let (st, v) = op.post(path, &body).await;
                if st != 429 {
                    return (st, v);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut tokens = Vec::new();
    for i in 0..=clients {
        let (st, acct) = post(
            "/v1/accounts",
            json!({"name": format!("load{i}"), "role": "tenant"}),
        )
        .await;
        assert_eq!(st, 201, "{acct}");
        let (st, tok) = post("/v1/tokens", json!({"account_id": acct["id"], "name": "t"})).await;
        assert_eq!(st, 201, "{tok}");
        tokens.push(tok["secret"].as_str().unwrap().to_string());
    }
    let abuser = tokens.pop().unwrap();
    println!(
        "REST API under {clients} clients ({rate} requests/s each, {} s per phase), tokens limited to {per_token}/s",
        secs
    );
    let mut alone = paced(&tokens, &h.rest_url, rate, secs, "a").await;
    print("alone", &mut alone);

    // The abuser: 64 connections, one token, no pause.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, limited) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let http = reqwest::Client::new();
    let mut abuse = Vec::new();
    for _ in 0..64 {
        let (http, base, token) = (http.clone(), h.rest_url.clone(), abuser.clone());
        let (stop, sent, limited) = (stop.clone(), sent.clone(), limited.clone());
        abuse.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .get(format!("{base}/v1/instances"))
                    .bearer_auth(&token)
                    .send()
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                if r.is_ok_and(|r| r.status() == 429) {
                    limited.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let t = Instant::now();
    let mut with = paced(&tokens, &h.rest_url, rate, secs, "b").await;
    stop.store(true, Ordering::Relaxed);
    for a in abuse {
        let _ = a.await;
    }
    let elapsed = t.elapsed().as_secs_f64();
    print("with an abusive client", &mut with);
    let (sent, limited) = (
        sent.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
    );
    println!(
        "  the abusive client: {:.0} requests/s, {:.1}% answered 429 (it got {:.0}/s through)",
        sent as f64 / elapsed,
        100.0 * limited as f64 / sent.max(1) as f64,
        (sent - limited) as f64 / elapsed
    );
    println!(
        "  p99 with the abuse / alone: GET {:.2}x, POST {:.2}x",
        ms(pct(&mut with.gets, 0.99)) / ms(pct(&mut alone.gets, 0.99)).max(1e-9),
        ms(pct(&mut with.posts, 0.99)) / ms(pct(&mut alone.posts, 0.99)).max(1e-9)
    );
}
