//! Open-loop load against the REST API: creates arrive at a fixed rate
//! whether or not earlier ones answered (a slow headnode shows as latency,
//! not as a lower offered rate), mixed with gets, lists, stops, starts and
//! deletes of what the run created. Latencies are kept per operation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::api::Api;

/// Latencies (and failures) of each kind of operation.
#[derive(Default)]
pub struct Tally {
    pub ok: BTreeMap<&'static str, Vec<Duration>>,
    /// (operation, status) -> count
    pub failed: BTreeMap<(&'static str, u16), u64>,
    /// The first answer of each kind of failure.
    pub sample: BTreeMap<(&'static str, u16), String>,
    /// Requests sent again because their connection broke unanswered (a
    /// headnode behind the proxy died).
    pub resent: u64,
}

impl Tally {
    fn record(&mut self, op: &'static str, status: u16, expect: &[u16], took: Duration) {
        self.record_body(op, status, expect, took, &serde_json::Value::Null)
    }

    fn record_body(
        &mut self,
        op: &'static str,
        status: u16,
        expect: &[u16],
        took: Duration,
        body: &serde_json::Value,
    ) {
        if expect.contains(&status) {
            self.ok.entry(op).or_default().push(took);
        } else {
            *self.failed.entry((op, status)).or_default() += 1;
            self.sample
                .entry((op, status))
                .or_insert_with(|| body.to_string());
        }
    }
}

/// Sends a request, and sends it again (the same one: a create keeps its
/// Idempotency-Key) while its connection breaks before an answer; status 0
/// when it never got one.
async fn send(
    api: &Api,
    tally: &Mutex<Tally>,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> (u16, serde_json::Value) {
    for _ in 0..40 {
        match api.try_send(build()).await {
            Ok(answer) => return answer,
            Err(_) => {
                tally.lock().unwrap().resent += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    (0, serde_json::Value::Null)
}

/// A percentile of `v` (sorted in place), `q` in 0..=1.
pub fn percentile(v: &mut [Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// What the run made and may act on.
#[derive(Default)]
struct Made {
    running: Vec<String>,
    stopped: Vec<String>,
}

pub struct Load {
    pub tenants: Vec<Api>,
    pub package: String,
    pub image: String,
    pub networks: Vec<String>,
    made: Arc<Mutex<Made>>,
    seq: std::sync::atomic::AtomicU64,
    /// Every instance a create was answered for: 202, or 200 for a create
    /// sent again whose first try had made it.
    pub acknowledged: Mutex<Vec<String>>,
}

impl Load {
    pub fn new(tenants: Vec<Api>, package: &str, image: &str, networks: Vec<String>) -> Load {
        Load {
            tenants,
            package: package.to_string(),
            image: image.to_string(),
            networks,
            made: Default::default(),
            seq: Default::default(),
            acknowledged: Default::default(),
        }
    }

    /// Offers `rate` creates per second for `secs`, with per create one
    /// get, and per five creates one list, one stop, one start and one
    /// delete; waits for every request to answer. Returns the tally and
    /// the wall time until the last answer.
    pub async fn step(self: &Arc<Self>, rate: f64, secs: f64) -> (Tally, Duration) {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let n = (rate * secs).round().max(1.0) as u64;
        let gap = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(n as usize * 2);
        for k in 0..n {
            tokio::time::sleep_until((start + gap.mul_f64(k as f64)).into()).await;
            let me = self.clone();
            let t = tally.clone();
            tasks.push(tokio::spawn(async move { me.create(&t).await }));
            let me = self.clone();
            let t = tally.clone();
            tasks.push(tokio::spawn(async move { me.mixed(k, &t).await }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let took = start.elapsed();
        let tally = Arc::try_unwrap(tally)
            .ok()
            .expect("every task ended")
            .into_inner()
            .unwrap();
        (tally, took)
    }

    fn tenant(&self, k: u64) -> &Api {
        &self.tenants[k as usize % self.tenants.len()]
    }

    async fn create(&self, tally: &Mutex<Tally>) {
        let k = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let api = self.tenant(k);
        let body = json!({
            "alias": format!("load-{}-{k}", std::process::id()),
            "image": self.image,
            "package": self.package,
            "networks": [self.networks[k as usize % self.networks.len()]],
        });
        let key = uuid::Uuid::new_v4().to_string();
        let t = Instant::now();
        let (st, resp) = send(api, tally, || {
            api.request(reqwest::Method::POST, "/v1/instances")
                .header("Idempotency-Key", &key)
                .json(&body)
        })
        .await;
        // 200: a create sent again (its connection broke) whose first try
        // had made the instance; the same Idempotency-Key answers it.
        tally
            .lock()
            .unwrap()
            .record_body("create", st, &[200, 202], t.elapsed(), &resp);
        if (st == 200 || st == 202)
            && let Some(id) = resp["instance"]["id"].as_str()
        {
            self.acknowledged.lock().unwrap().push(id.to_string());
            self.made
                .lock()
                .unwrap()
                .running
                .push(format!("{}:{id}", k as usize % self.tenants.len()));
        }
    }

    /// Stops a running instance the run made, or starts a stopped one
    /// (`verb`); it moves between the lists when the action was accepted
    /// (409: a job of its still runs).
    async fn switch(&self, tally: &Mutex<Tally>, verb: &'static str) {
        let stopping = verb == "stop";
        let picked = {
            let mut m = self.made.lock().unwrap();
            take_one(if stopping {
                &mut m.running
            } else {
                &mut m.stopped
            })
        };
        let Some((t, id)) = picked else { return };
        let start = Instant::now();
        let api = &self.tenants[t];
        let path = format!("/v1/instances/{id}/{verb}");
        let (st, _) = send(api, tally, || {
            api.request(reqwest::Method::POST, &path).json(&json!({}))
        })
        .await;
        tally
            .lock()
            .unwrap()
            .record(verb, st, &[202, 409], start.elapsed());
        let mut m = self.made.lock().unwrap();
        let to_stopped = stopping == (st == 202);
        let list = if to_stopped {
            &mut m.stopped
        } else {
            &mut m.running
        };
        list.push(format!("{t}:{id}"));
    }

    /// One get, and every fifth time a list, a stop, a start and a delete.
    async fn mixed(&self, k: u64, tally: &Mutex<Tally>) {
        let target = {
            let m = self.made.lock().unwrap();
            if m.running.is_empty() {
                None
            } else {
                parse(&m.running[rand::random_range(0..m.running.len())])
            }
        };
        if let Some((t, id)) = &target {
            let start = Instant::now();
            let api = &self.tenants[*t];
            let path = format!("/v1/instances/{id}");
            let (st, _) = send(api, tally, || api.request(reqwest::Method::GET, &path)).await;
            tally
                .lock()
                .unwrap()
                .record("get", st, &[200], start.elapsed());
        }
        if !k.is_multiple_of(5) {
            return;
        }
        let api = self.tenant(k);
        let start = Instant::now();
        let (st, _) = send(api, tally, || {
            api.request(reqwest::Method::GET, "/v1/instances?limit=100")
        })
        .await;
        tally
            .lock()
            .unwrap()
            .record("list", st, &[200], start.elapsed());

        self.switch(tally, "stop").await;
        self.switch(tally, "start").await;
        let gone = take_one(&mut self.made.lock().unwrap().running);
        if let Some((t, id)) = gone {
            let start = Instant::now();
            let api = &self.tenants[t];
            let path = format!("/v1/instances/{id}");
            let (st, _) = send(api, tally, || api.request(reqwest::Method::DELETE, &path)).await;
            tally
                .lock()
                .unwrap()
                .record("delete", st, &[202, 409], start.elapsed());
            if st != 202 {
                self.made.lock().unwrap().running.push(format!("{t}:{id}"));
            }
        }
    }
}

/// Removes a random entry ("tenant:id") of `v`.
fn take_one(v: &mut Vec<String>) -> Option<(usize, String)> {
    if v.is_empty() {
        return None;
    }
    parse(&v.swap_remove(rand::random_range(0..v.len())))
}

/// "tenant:id" as (tenant index, id).
fn parse(s: &str) -> Option<(usize, String)> {
    let (t, id) = s.split_once(':')?;
    Some((t.parse().ok()?, id.to_string()))
}
