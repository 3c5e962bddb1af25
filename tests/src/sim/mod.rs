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
pub mod proxy;
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
    /// The headnode's history retention (the seed's finished jobs span a
    /// year, its deleted instances 60 days).
    pub history_retention_hours: f64,
    /// Headnodes on the database, behind one address (a proxy) when more
    /// than one.
    pub headnodes: usize,
    /// Kill one headnode (not the first) with SIGKILL halfway through the
    /// first step.
    pub kill_headnode: bool,
    /// PostgreSQL with a synchronous streaming replica; the headnodes get
    /// both hosts.
    pub replica: bool,
    /// Kill the primary with SIGKILL halfway through the first step and
    /// promote the replica (what a manager such as Patroni does).
    pub kill_primary: bool,
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
            history_retention_hours: 40.0 * 24.0,
            headnodes: 1,
            kill_headnode: false,
            replica: false,
            kill_primary: false,
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
            history_retention_hours: 40.0 * 24.0,
            headnodes: 1,
            kill_headnode: false,
            replica: false,
            kill_primary: false,
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
    /// What of the seed's history the headnode deleted (finished jobs,
    /// deleted instances), and how long after the seed it had deleted
    /// everything past the retention (None: not within 900 s).
    pub pruned: (i64, i64, Option<Duration>),
    /// At the end: rows past the retention still there, and the seed's
    /// rows within it (still there).
    pub past_retention: i64,
    pub within_retention: i64,
    pub steps: Vec<StepReport>,
    /// Servers whose held capacity differs from their instances'.
    pub capacity_mismatches: i64,
    /// Addresses held by two NICs, or by a NIC and not its address row.
    pub address_conflicts: i64,
    /// Accounts whose kept usage differs from a count of their instances.
    pub usage_mismatches: i64,
    pub unfinished_jobs: i64,
    pub failed_jobs: i64,
    /// Requests sent again because a connection broke unanswered.
    pub resent: u64,
    /// Acknowledged creates whose instance is missing, or not settled at
    /// the end; instances with more than one provision job.
    pub lost_creates: i64,
    pub provisioned_twice: i64,
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

/// (finished jobs, deleted instances) older than the retention.
async fn past_retention(c: &mut PgConnection, hours: f64) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'failed')
                   AND finished_at < now() - make_interval(secs => $1 * 3600)),
                (SELECT count(*) FROM instances WHERE state = 'deleted'
                   AND deleted_at < now() - make_interval(secs => $1 * 3600))",
    )
    .bind(hours)
    .fetch_one(c)
    .await
}

/// (finished jobs, deleted instances) of the seed still there.
async fn seed_history(c: &mut PgConnection) -> sqlx::Result<(i64, i64)> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs WHERE request_id = 'sim'),
                (SELECT count(*) FROM instances WHERE state = 'deleted' AND alias LIKE 'sim-d%')",
    )
    .fetch_one(c)
    .await
}

/// Runs the plan; `say` gets progress lines.
pub async fn run(plan: &Plan, say: impl Fn(&str)) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let cluster = Arc::new(Cluster::start(crate::pg::PRODUCTION_SETTINGS));
    let replica = plan.replica.then(|| {
        let r = cluster.start_replica(crate::pg::PRODUCTION_SETTINGS);
        cluster.require_synchronous_standby();
        Arc::new(r)
    });
    let db = cluster.fresh_database().await;
    // The headnodes get every host, libpq's way.
    let headnode_db = match &replica {
        Some(r) => db.replacen(
            &format!("127.0.0.1:{}/", cluster.port),
            &format!("127.0.0.1:{},127.0.0.1:{}/", cluster.port, r.port),
            1,
        ),
        None => db.clone(),
    };
    let mut db_now = db.clone();
    let opts = HeadnodeOpts {
        heartbeat_interval_ms: plan.heartbeat_interval.as_millis() as u64,
        args: vec![
            "--reconcile-interval-ms".into(),
            plan.reconcile_interval.as_millis().to_string(),
            "--history-retention-hours".into(),
            plan.history_retention_hours.to_string(),
            // The seed's history is deleted before the measured phases.
            "--retention-interval-ms".into(),
            "1000".into(),
        ],
        ..Default::default()
    };
    let mut opts = opts;
    if plan.headnodes > 1 || plan.kill_primary {
        // A dead headnode's jobs are taken over this soon.
        opts.args.extend(["--job-lease-ms".into(), "3000".into()]);
    }
    let h = Headnode::start_on(
        headnode_db.clone(),
        tempfile::Builder::new().prefix("nereid-sim-").tempdir()?,
        opts.clone(),
    )
    .await;
    // More headnodes share the database and the CA (the pki dir), behind
    // one address for the REST API and one for the agents' gRPC.
    let mut others = Vec::new();
    for _ in 1..plan.headnodes {
        let mut o = opts.clone();
        o.args.extend([
            "--pki-dir".to_string(),
            h.state.path().join("pki").display().to_string(),
        ]);
        others.push(
            Headnode::start_on(
                headnode_db.clone(),
                tempfile::Builder::new().prefix("nereid-sim-").tempdir()?,
                o,
            )
            .await,
        );
    }
    let all = std::iter::once(&h).chain(others.iter());
    let rest_proxy =
        proxy::start(all.clone().map(|x| proxy::socket_of(&x.rest_url)).collect()).await?;
    let grpc_proxy = proxy::start(all.map(|x| proxy::socket_of(&x.grpc_url)).collect()).await?;
    let rest_url = if plan.headnodes > 1 {
        format!("http://{}", rest_proxy.addr)
    } else {
        h.rest_url.clone()
    };
    let grpc = if plan.headnodes > 1 {
        format!("http://{}", grpc_proxy.addr)
    } else {
        h.grpc_url.clone()
    };
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

    // The history the seed put past the retention goes first.
    // (The headnode may have begun while the seed ran: what it deleted is
    // what the seed made less what is left of it.)
    let hours = plan.history_retention_hours;
    let t = Instant::now();
    let deadline = t + Duration::from_secs(900);
    let done = loop {
        let (j, i) = past_retention(&mut c, hours).await?;
        if j + i == 0 {
            break Some(t.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (jobs_left, instances_left) = seed_history(&mut c).await?;
    report.pruned = (
        plan.finished_jobs as i64 - jobs_left,
        plan.deleted_instances as i64 - instances_left,
        done,
    );
    say("history past its retention deleted");

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
            &rest_url,
            tok["secret"].as_str().unwrap_or_default(),
        ));
    }
    let load = Arc::new(load::Load::new(tenants, &package, &image, networks));
    for (i, &(rate, secs)) in plan.steps.iter().enumerate() {
        let before = db_work(&db_now).await;
        let failover = match (&replica, plan.kill_primary && i == 0) {
            (Some(r), true) => {
                let (primary, r) = (cluster.clone(), r.clone());
                Some(tokio::task::spawn_blocking(move || {
                    std::thread::sleep(Duration::from_secs_f64(secs / 2.0));
                    primary.kill();
                    // A manager's decision, at once.
                    r.promote();
                    r.port
                }))
            }
            _ => None,
        };
        let killer = (plan.kill_headnode && i == 0 && !others.is_empty()).then(|| {
            let mut victim = others.remove(0);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(secs / 2.0)).await;
                victim.proc.kill();
                victim
            })
        });
        let (mut tally, took) = load.step(rate, secs).await;
        if let Some(k) = killer {
            let _dead = k.await?;
            say("a headnode was killed with SIGKILL halfway through the step");
        }
        report.resent += tally.resent;
        if let Some(f) = failover {
            let port = f.await?;
            db_now = db.replacen(
                &format!("127.0.0.1:{}/", cluster.port),
                &format!("127.0.0.1:{port}/"),
                1,
            );
            c = PgConnection::connect(&db_now).await?;
            say("the PostgreSQL primary was killed with SIGKILL and its replica promoted");
        }
        let after = db_work(&db_now).await;
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
    // Every acknowledged create made one instance, provisioned once, that
    // is settled now.
    let acknowledged: Vec<uuid::Uuid> = load
        .acknowledged
        .lock()
        .unwrap()
        .iter()
        .filter_map(|id| id.parse().ok())
        .collect();
    (report.lost_creates, report.provisioned_twice) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM unnest($1::uuid[]) a(id)
                  WHERE NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = a.id
                                      AND i.state IN ('running', 'stopped', 'deleted'))),
                (SELECT count(*) FROM (SELECT instance_id FROM jobs
                                        WHERE kind = 'provision' AND instance_id = ANY($1)
                                        GROUP BY instance_id HAVING count(*) > 1) d)",
    )
    .bind(&acknowledged)
    .fetch_one(&mut c)
    .await?;
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
    let (j, i) = past_retention(&mut c, hours).await?;
    report.past_retention = j + i;
    let (j, i) = seed_history(&mut c).await?;
    report.within_retention = j + i;
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
    drop(others);
    drop(replica);
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
        match self.pruned {
            (j, i, Some(d)) => println!(
                "retention: {j} finished jobs and {i} deleted instances of the seed past it deleted, the last {:.1} s after the seed",
                d.as_secs_f64()
            ),
            (j, i, None) => println!(
                "retention: only {j} finished jobs and {i} deleted instances past it deleted in 900 s"
            ),
        }
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
        if plan.kill_primary {
            println!(
                "PostgreSQL primary killed with SIGKILL halfway through the first step, its synchronous replica promoted: {} acknowledged creates lost or unsettled, {} instances provisioned twice",
                self.lost_creates, self.provisioned_twice
            );
        }
        if plan.headnodes > 1 {
            println!(
                "{} headnodes behind one address{}: {} requests sent again after their connection broke; {} acknowledged creates lost or unsettled, {} instances provisioned twice",
                plan.headnodes,
                if plan.kill_headnode {
                    ", one killed with SIGKILL halfway through the first step"
                } else {
                    ""
                },
                self.resent,
                self.lost_creates,
                self.provisioned_twice
            );
        }
        println!("statements that took the database longest (after seeding):");
        for (ms, calls, q) in &self.top_statements {
            println!("  {ms:9.0} ms {calls:8} calls  {q}");
        }
        println!(
            "checks: {} servers with held capacity unlike their instances', {} address conflicts, {} accounts with usage unlike their instances', {} unfinished jobs, {} failed jobs, {} rows past the retention ({} within it)",
            self.capacity_mismatches,
            self.address_conflicts,
            self.usage_mismatches,
            self.unfinished_jobs,
            self.failed_jobs,
            self.past_retention,
            self.within_retention
        );
    }
}
