//! nereid-sim: a simulated fleet against a real headnode. It starts its own
//! PostgreSQL (production settings: fsync and synchronous commits on) and a
//! real headnode, registers a few nodes through the real Register call,
//! seeds the rest of the fleet and its history in bulk, runs simulated
//! agents that speak the real gRPC both ways, and measures: a
//! heartbeats-only phase (headnode CPU, heartbeat p99, the reconciler's
//! pass), then open-loop steps of creates mixed with other operations
//! (placements/s, latency percentiles, commits per placement). At the end
//! it checks what must hold whatever the load: the servers' held capacity
//! equals what their instances hold, no address is held twice, no job is
//! left unfinished.

pub mod agents;
pub mod load;
pub mod seed;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::api::Api;
use crate::pg::Cluster;
use crate::procs::{Headnode, HeadnodeOpts};

#[derive(Debug, Clone)]
pub struct Plan {
    /// Nodes that register through the Register call.
    pub registered: usize,
    /// Nodes seeded into the database besides.
    pub seeded: u64,
    pub accounts: u64,
    pub live_instances: u64,
    pub deleted_instances: u64,
    pub finished_jobs: u64,
    pub networks: usize,
    /// Prefix length of each network (16: 65,534 addresses).
    pub network_prefix: u8,
    pub heartbeat_interval: Duration,
    /// How long the heartbeats-only phase lasts.
    pub quiet: Duration,
    /// (creates per second, seconds) of each step.
    pub steps: Vec<(f64, f64)>,
    pub tenants: usize,
    pub latency: agents::Latency,
    pub reconcile_interval: Duration,
    /// Simulated nodes sharing one heartbeat connection (this machine's
    /// 20,000 descriptors cannot hold one per node each way at 10,000).
    pub nodes_per_connection: usize,
}

impl Plan {
    /// The full fleet of the issue: 10,000 nodes, 1,000,000 live instances.
    pub fn full() -> Plan {
        Plan {
            registered: 200,
            seeded: 9_800,
            accounts: 1_000,
            live_instances: 1_000_000,
            deleted_instances: 300_000,
            finished_jobs: 1_500_000,
            networks: 20,
            network_prefix: 16,
            heartbeat_interval: Duration::from_secs(5),
            quiet: Duration::from_secs(30),
            steps: vec![(50.0, 20.0), (100.0, 20.0), (200.0, 20.0), (400.0, 20.0)],
            tenants: 50,
            latency: agents::Latency::default(),
            reconcile_interval: Duration::from_secs(10),
            nodes_per_connection: 8,
        }
    }

    /// A small fleet that checks correctness in a few seconds.
    pub fn short() -> Plan {
        Plan {
            registered: 5,
            seeded: 200,
            accounts: 50,
            live_instances: 5_000,
            deleted_instances: 1_000,
            finished_jobs: 8_000,
            networks: 2,
            network_prefix: 19,
            heartbeat_interval: Duration::from_secs(1),
            quiet: Duration::from_secs(3),
            steps: vec![(20.0, 5.0)],
            tenants: 5,
            latency: agents::Latency {
                ensure_instance: Duration::from_millis(20),
                action: Duration::from_millis(5),
            },
            reconcile_interval: Duration::from_secs(1),
            nodes_per_connection: 1,
        }
    }
}

/// What one step measured.
#[derive(Debug)]
pub struct StepReport {
    pub rate: f64,
    pub placements_per_s: f64,
    pub create: [Duration; 3],
    pub others: Vec<(&'static str, usize, Duration)>,
    pub failed: Vec<((&'static str, u16), u64, String)>,
    pub commits_per_placement: f64,
    pub statements_per_placement: f64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub seed: Duration,
    pub seed_parts: Vec<(&'static str, Duration)>,
    pub heartbeat_p99: Duration,
    pub heartbeats: usize,
    pub heartbeat_errors: u64,
    pub headnode_cpu_cores: f64,
    pub reconcile_pass: Option<Duration>,
    pub steps: Vec<StepReport>,
    /// Servers whose held capacity differs from their instances'.
    pub capacity_mismatches: i64,
    /// Addresses held by two NICs, or by a NIC and not its address row.
    pub address_conflicts: i64,
    /// Accounts whose kept usage differs from a count of their instances.
    pub usage_mismatches: i64,
    pub unfinished_jobs: i64,
    pub failed_jobs: i64,
    /// The statements that took the database longest: (ms in all, calls, text).
    pub top_statements: Vec<(f64, i64, String)>,
}

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (11 and 12 after the name).
    (ticks(11) + ticks(12)) / 100.0
}

/// (commits, statements) of the database so far.
async fn db_work(db: &str) -> (i64, i64) {
    let Ok(mut c) = PgConnection::connect(db).await else {
        return (0, 0);
    };
    sqlx::query_as(
        "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
                (SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
                  WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()))",
    )
    .fetch_one(&mut c)
    .await
    .unwrap_or((0, 0))
}

/// The reconciler's last pass, from the headnode's metrics, waiting up to
/// `within` for a pass to end.
async fn reconcile_pass(h: &Headnode, within: Duration) -> Option<Duration> {
    let deadline = Instant::now() + within;
    loop {
        let (_, m) = h.operator().get("/metrics").await;
        let last = m.as_str().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("nereid_reconcile_last_pass_seconds "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| *s > 0.0)
                .map(Duration::from_secs_f64)
        });
        if last.is_some() || Instant::now() > deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn ok(api: &Api, path: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let (st, b) = api.post(path, &body).await;
    anyhow::ensure!((200..300).contains(&st), "POST {path}: {st} {b}");
    Ok(b)
}

/// Runs the plan; `say` gets progress lines.
pub async fn run(plan: &Plan, say: impl Fn(&str)) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let cluster = Cluster::start(crate::pg::PRODUCTION_SETTINGS);
    let db = cluster.fresh_database().await;
    let h = Headnode::start_on(
        db.clone(),
        tempfile::Builder::new().prefix("nereid-sim-").tempdir()?,
        HeadnodeOpts {
            heartbeat_interval_ms: plan.heartbeat_interval.as_millis() as u64,
            args: vec![
                "--reconcile-interval-ms".into(),
                plan.reconcile_interval.as_millis().to_string(),
            ],
            ..Default::default()
        },
    )
    .await;
    let op = h.operator();
    let sim = agents::Sim::new(plan.latency);
    let ca = h.ca();
    let fleet = agents::fleet_identity(&ca)?;
    let address = agents::serve(sim.clone(), &ca, fleet.clone()).await?;

    // The catalog, through the API.
    ok(&op, "/v1/nictags", json!({"name": "sim"})).await?;
    let mut networks = Vec::new();
    let step = 1u32 << (32 - plan.network_prefix);
    for k in 0..plan.networks as u32 {
        let base = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)) + step * (k + 1);
        let ip = |o: u32| std::net::Ipv4Addr::from(base + o).to_string();
        let net = ok(
            &op,
            "/v1/networks",
            json!({"name": format!("sim-{k}"), "nic_tag": "sim",
                   "subnet": format!("{}/{}", ip(0), plan.network_prefix),
                   "gateway": ip(1), "provision_start": ip(10), "provision_end": ip(step - 2)}),
        )
        .await?;
        networks.push(net["id"].as_str().unwrap_or_default().to_string());
    }
    let archive = {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut hd = tar::Header::new_gnu();
        hd.set_size(3);
        hd.set_mode(0o644);
        hd.set_cksum();
        b.append_data(&mut hd, "sim", &b"sim"[..])?;
        b.into_inner()?.finish()?
    };
    let (image, _) = crate::node::upload_file(&h, "sim-image", archive).await;
    ok(&op, &format!("/v1/images/{image}/activate"), json!({})).await?;
    let package = ok(
        &op,
        "/v1/packages",
        json!({"name": "sim", "version": "1", "memory_mb": 256, "vcpus": 1, "disk_mb": 1024,
               "brand": "container"}),
    )
    .await?;
    let package = package["id"].as_str().unwrap_or_default().to_string();

    // A few nodes the real way: join token, Register, setup.
    let grpc = h.grpc_url.clone();
    let mut beating = Vec::new();
    let mut template = String::new();
    for i in 0..plan.registered {
        let token = h.join_token().await;
        let host = format!("sim-r{i:05}");
        let (sid, identity) = agents::register(&grpc, &token, &host, &address).await?;
        sim.add_node(&sid);
        ok(
            &op,
            &format!("/v1/servers/{sid}/setup"),
            json!({"zpool": "zones", "nic_tags": {"sim": "eth0"}}),
        )
        .await?;
        if template.is_empty() {
            template = sid.clone();
        }
        beating.push((sid, identity));
    }
    // Each registered node has a certificate of its own: a connection each.
    let mut hb = agents::heartbeats(
        sim.clone(),
        &grpc,
        &ca,
        &address,
        beating,
        plan.heartbeat_interval,
        1,
    );
    say(&format!("{} nodes registered", plan.registered));

    // The rest of the fleet and its history, in bulk.
    let seeded = seed::seed(
        &db,
        &seed::Seed {
            servers: plan.seeded,
            accounts: plan.accounts,
            live_instances: plan.live_instances,
            deleted_instances: plan.deleted_instances,
            finished_jobs: plan.finished_jobs,
            networks: networks.clone(),
            template_server: template,
            cert_sha256: fleet.fingerprint(),
            image: image.clone(),
            package: package.clone(),
            ram_mb: 256,
            disk_mb: 1024,
        },
    )
    .await?;
    report.seed = seeded.total();
    report.seed_parts = seeded.parts;
    for (part, d) in &report.seed_parts {
        say(&format!("seeded {part} in {:.1} s", d.as_secs_f64()));
    }

    let mut c = PgConnection::connect(&db).await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut c)
        .await?;
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&mut c)
        .await?;
    let servers: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, hostname FROM servers WHERE hostname LIKE 'sim-s%'")
            .fetch_all(&mut c)
            .await?;
    let mut nodes = Vec::new();
    for (id, _host) in servers {
        sim.add_node(&id.to_string());
        nodes.push((id.to_string(), fleet.clone()));
    }
    let rows: Vec<(uuid::Uuid, uuid::Uuid, i64, i64, String)> = sqlx::query_as(
        "SELECT id, server_id, generation, metadata_generation, state FROM instances
          WHERE state <> 'deleted' AND server_id IS NOT NULL",
    )
    .fetch_all(&mut c)
    .await?;
    sim.load(
        rows.into_iter()
            .map(|(id, s, g, m, st)| {
                (
                    id.to_string(),
                    s.to_string(),
                    g as u64,
                    m as u64,
                    st == "running",
                )
            })
            .collect(),
    );
    hb.extend(agents::heartbeats(
        sim.clone(),
        &grpc,
        &ca,
        &address,
        nodes,
        plan.heartbeat_interval,
        plan.nodes_per_connection,
    ));

    // Heartbeats only.
    tokio::time::sleep(plan.heartbeat_interval).await;
    sim.take_heartbeats();
    let cpu0 = cpu_seconds(h.proc.pid());
    let t0 = Instant::now();
    tokio::time::sleep(plan.quiet).await;
    report.headnode_cpu_cores = (cpu_seconds(h.proc.pid()) - cpu0) / t0.elapsed().as_secs_f64();
    let mut beats: Vec<Duration> = sim
        .take_heartbeats()
        .into_iter()
        .map(|us| Duration::from_micros(us.into()))
        .collect();
    report.heartbeats = beats.len();
    report.heartbeat_p99 = load::percentile(&mut beats, 0.99);
    report.heartbeat_errors = sim
        .heartbeat_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    report.reconcile_pass = reconcile_pass(&h, Duration::from_secs(120)).await;
    say("heartbeat phase done");

    // Tenants: the heaviest accounts (the seed skews usage to the first).
    let accounts: Vec<(uuid::Uuid,)> =
        sqlx::query_as("SELECT id FROM accounts WHERE name LIKE 'sim-%' ORDER BY name LIMIT $1")
            .bind(plan.tenants as i64)
            .fetch_all(&mut c)
            .await?;
    let mut tenants = Vec::new();
    for (id,) in accounts {
        let (st, b) = op
            .put(
                &format!("/v1/accounts/{id}/quotas"),
                &json!({"instances": 1_000_000, "memory_mb": 1u64 << 40, "disk_mb": 1u64 << 40,
                        "vcpus": 1_000_000}),
            )
            .await;
        anyhow::ensure!(st == 200, "quotas: {st} {b}");
        let tok = ok(&op, "/v1/tokens", json!({"account_id": id, "name": "sim"})).await?;
        tenants.push(Api::new(
            &h.rest_url,
            tok["secret"].as_str().unwrap_or_default(),
        ));
    }
    let load = Arc::new(load::Load::new(tenants, &package, &image, networks));
    for &(rate, secs) in &plan.steps {
        let before = db_work(&db).await;
        let (mut tally, took) = load.step(rate, secs).await;
        let after = db_work(&db).await;
        let mut creates = tally.ok.remove("create").unwrap_or_default();
        let placed = creates.len();
        let mut others = Vec::new();
        for (op, mut v) in std::mem::take(&mut tally.ok) {
            let n = v.len();
            others.push((op, n, load::percentile(&mut v, 0.99)));
        }
        let r = StepReport {
            rate,
            placements_per_s: placed as f64 / took.as_secs_f64(),
            create: [
                load::percentile(&mut creates, 0.5),
                load::percentile(&mut creates, 0.99),
                load::percentile(&mut creates, 0.999),
            ],
            others,
            failed: tally
                .failed
                .into_iter()
                .map(|(k, n)| (k, n, tally.sample.remove(&k).unwrap_or_default()))
                .collect(),
            commits_per_placement: (after.0 - before.0) as f64 / placed.max(1) as f64,
            statements_per_placement: (after.1 - before.1) as f64 / placed.max(1) as f64,
        };
        say(&format!(
            "step {rate}/s: {:.1} placements/s",
            r.placements_per_s
        ));
        report.steps.push(r);
    }

    // Let the jobs end, then check.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running', 'unwinding')",
        )
        .fetch_one(&mut c)
        .await?;
        report.unfinished_jobs = n;
        if n == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (report.failed_jobs,) =
        sqlx::query_as("SELECT count(*) FROM jobs WHERE state = 'failed' AND request_id <> 'sim'")
            .fetch_one(&mut c)
            .await?;
    (report.capacity_mismatches,) = sqlx::query_as(
        "SELECT count(*) FROM servers s LEFT JOIN
           (SELECT server_id, sum(ram_mb) AS ram, sum(disk_mb) AS disk FROM instances
             WHERE capacity_held GROUP BY server_id) h ON h.server_id = s.id
         WHERE s.used_ram_mb <> coalesce(h.ram, 0) OR s.used_disk_mb <> coalesce(h.disk, 0)",
    )
    .fetch_one(&mut c)
    .await?;
    (report.address_conflicts,) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM instance_nics GROUP BY network_id, ip
                                        HAVING count(*) > 1) d)
              + (SELECT count(*) FROM instance_nics n JOIN network_ips a
                   ON a.network_id = n.network_id AND a.ip = n.ip
                 WHERE a.owner_type IS DISTINCT FROM 'instance' OR a.owner_id IS DISTINCT FROM n.instance_id)",
    )
    .fetch_one(&mut c)
    .await?;
    let kept: (bool,) = sqlx::query_as("SELECT to_regclass('account_usage') IS NOT NULL")
        .fetch_one(&mut c)
        .await?;
    (report.usage_mismatches,) = if !kept.0 {
        (0,)
    } else {
        sqlx::query_as(
        "SELECT count(*) FROM accounts a
           LEFT JOIN account_usage u ON u.account_id = a.id
           LEFT JOIN (SELECT owner, count(*) AS n, sum(ram_mb) AS ram, sum(disk_mb) AS disk
                        FROM instances WHERE state <> 'deleted' GROUP BY owner) c ON c.owner = a.id
          WHERE coalesce(u.instances, 0) <> coalesce(c.n, 0) OR coalesce(u.ram_mb, 0) <> coalesce(c.ram, 0)
             OR coalesce(u.disk_mb, 0) <> coalesce(c.disk, 0)",
        )
        .fetch_one(&mut c)
        .await?
    };
    report.top_statements = sqlx::query_as(
        "SELECT total_exec_time, calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 160)
           FROM pg_stat_statements
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          ORDER BY total_exec_time DESC LIMIT 10",
    )
    .fetch_all(&mut c)
    .await?;
    for t in hb {
        t.abort();
    }
    drop(h);
    drop(cluster);
    Ok(report)
}

impl Report {
    pub fn print(&self, plan: &Plan) {
        println!(
            "fleet: {} nodes ({} registered), {} accounts, {} live and {} deleted instances, {} finished jobs",
            plan.registered as u64 + plan.seeded,
            plan.registered,
            plan.accounts,
            plan.live_instances,
            plan.deleted_instances,
            plan.finished_jobs
        );
        println!("seeded in {:.1} s:", self.seed.as_secs_f64());
        for (p, d) in &self.seed_parts {
            println!("  {p:<18} {:8.1} s", d.as_secs_f64());
        }
        println!(
            "heartbeats only ({} every {:?}): headnode CPU {:.2} cores, heartbeat p99 {:.1} ms over {} heartbeats, {} refused or failed",
            plan.registered as u64 + plan.seeded,
            plan.heartbeat_interval,
            self.headnode_cpu_cores,
            self.heartbeat_p99.as_secs_f64() * 1e3,
            self.heartbeats,
            self.heartbeat_errors
        );
        match self.reconcile_pass {
            Some(d) => println!("reconcile pass: {:.2} s", d.as_secs_f64()),
            None => println!("reconcile pass: none finished during the heartbeat phase"),
        }
        for s in &self.steps {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "step {:>5.0} creates/s offered: {:7.1} placements/s, create p50 {:.1} ms p99 {:.1} ms p99.9 {:.1} ms; per placement (all database work of the step) {:.1} commits, {:.1} statements",
                s.rate,
                s.placements_per_s,
                ms(s.create[0]),
                ms(s.create[1]),
                ms(s.create[2]),
                s.commits_per_placement,
                s.statements_per_placement
            );
            for (op, n, p99) in &s.others {
                println!("    {op:<7} {n:6} ok, p99 {:.1} ms", ms(*p99));
            }
            for ((op, st), n, sample) in &s.failed {
                println!("    {op:<7} {n:6} answered {st}, e.g. {sample:.300}");
            }
        }
        println!("statements that took the database longest (after seeding):");
        for (ms, calls, q) in &self.top_statements {
            println!("  {ms:9.0} ms {calls:8} calls  {q}");
        }
        println!(
            "checks: {} servers with held capacity unlike their instances', {} address conflicts, {} accounts with usage unlike their instances', {} unfinished jobs, {} failed jobs",
            self.capacity_mismatches,
            self.address_conflicts,
            self.usage_mismatches,
            self.unfinished_jobs,
            self.failed_jobs
        );
    }
}
