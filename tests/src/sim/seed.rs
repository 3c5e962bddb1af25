//! Seeding a headnode's database directly, in bulk, inside PostgreSQL
//! (`generate_series`, no round trip per row): simulated servers cloned
//! from a template server that registered for real, tenant accounts with
//! skewed usage, live and deleted instances with NICs holding real
//! addresses of the networks, and finished jobs. Triggers (the change feed)
//! and foreign-key checks are off for the seeding session only
//! (`session_replication_role = replica`); what it writes is consistent by
//! construction, and the servers' held capacity is summed from the
//! instances at the end, so the checks after a run hold from the start.
//!
//! Seeded servers carry their instances (the registered ones start empty,
//! the fleet's newest nodes); their last heartbeat lies ahead until the
//! last step, so a reconcile pass during the seeding does not take them for
//! lost before their simulated agents answer.
//!
//! It must never touch rows it did not make: everything it writes is named
//! `sim-...`.

use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};

/// What to seed.
#[derive(Debug, Clone)]
pub struct Seed {
    /// Servers cloned from `template` (besides the registered ones).
    pub servers: u64,
    pub accounts: u64,
    pub live_instances: u64,
    pub deleted_instances: u64,
    pub finished_jobs: u64,
    /// Of `networks` (ids), the instances' NIC addresses are taken.
    pub networks: Vec<String>,
    pub template_server: String,
    /// The certificate every seeded node heartbeats with.
    pub cert_sha256: String,
    pub image: String,
    pub package: String,
    pub ram_mb: u64,
    pub disk_mb: u64,
}

/// How long each part took.
#[derive(Debug, Default)]
pub struct Seeded {
    pub parts: Vec<(&'static str, Duration)>,
}

impl Seeded {
    pub fn total(&self) -> Duration {
        self.parts.iter().map(|p| p.1).sum()
    }
}

pub async fn seed(database_url: &str, s: &Seed) -> anyhow::Result<Seeded> {
    let mut c = PgConnection::connect(database_url).await?;
    c.execute("SET session_replication_role = replica").await?;
    c.execute("SET work_mem = '256MB'").await?;
    let mut done = Seeded::default();
    let nets = format!(
        "ARRAY[{}]::uuid[]",
        s.networks
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let steps: Vec<(&'static str, String)> = vec![
        (
            "accounts",
            format!(
                "INSERT INTO accounts (id, name, role)
                 SELECT gen_random_uuid(), 'sim-' || lpad(g::text, 6, '0'), 'tenant'
                 FROM generate_series(1, {}) g",
                s.accounts
            ),
        ),
        (
            "servers",
            format!(
                "INSERT INTO servers (id, hostname, machine_id, setup_state, reserved, sysinfo, setup, usage,
                        agent_address, agent_version, cert_sha256, cert_not_after, last_heartbeat,
                        overprovision_ram, overprovision_disk, overprovision_cpu)
                 SELECT gen_random_uuid(), h, 'sim-machine-' || g, 'setup', false,
                        t.sysinfo || jsonb_build_object('hostname', h, 'machine_id', 'sim-machine-' || g),
                        t.setup, t.usage, t.agent_address, t.agent_version,
                        '{}', now() + interval '1 year',
                        now() + interval '1 hour',
                        t.overprovision_ram, t.overprovision_disk, t.overprovision_cpu
                 FROM servers t, generate_series(1, {}) g, LATERAL (SELECT 'sim-s' || lpad(g::text, 6, '0') AS h) n
                 WHERE t.id = '{}'",
                s.cert_sha256, s.servers, s.template_server
            ),
        ),
        ("live instances", instances(s, &nets, "sim-", "running", s.live_instances)),
        ("statistics", "ANALYZE network_ips, instances".to_string()),
        (
            "NICs",
            format!(
                "WITH i AS (SELECT id, networks[1] AS net,
                                   row_number() OVER (PARTITION BY networks[1] ORDER BY id) AS rn,
                                   row_number() OVER (ORDER BY id) AS n
                              FROM instances WHERE alias LIKE 'sim-%' AND state = 'running'),
                      f AS (SELECT network_id, ip, row_number() OVER (PARTITION BY network_id ORDER BY ip) AS rn
                              FROM network_ips WHERE in_range AND owner_type IS NULL AND network_id = ANY({nets}))
                 INSERT INTO instance_nics (instance_id, idx, network_id, ip, mac)
                 SELECT i.id, 0, i.net, f.ip,
                        '5e:' || regexp_replace(lpad(to_hex(i.n), 10, '0'), '(..)(..)(..)(..)(..)', '\\1:\\2:\\3:\\4:\\5')
                 FROM i JOIN f ON f.network_id = i.net AND f.rn = i.rn"
            ),
        ),
        (
            "addresses",
            "UPDATE network_ips a SET owner_type = 'instance', owner_id = n.instance_id, updated_at = now()
             FROM instance_nics n JOIN instances i ON i.id = n.instance_id
             WHERE i.alias LIKE 'sim-%' AND a.network_id = n.network_id AND a.ip = n.ip"
                .to_string(),
        ),
        (
            "deleted instances",
            instances(s, &nets, "sim-d", "deleted", s.deleted_instances),
        ),
        (
            "finished jobs",
            format!(
                "WITH i AS (SELECT id, owner, created_at, row_number() OVER () AS n FROM instances
                             WHERE alias LIKE 'sim-%'),
                      c AS (SELECT count(*) AS c FROM i)
                 INSERT INTO jobs (id, kind, instance_id, owner, state, steps, attempts, request_id,
                        created_at, updated_at, finished_at)
                 SELECT gen_random_uuid(), CASE WHEN g <= c.c THEN 'provision' ELSE 'reboot' END,
                        i.id, i.owner, 'succeeded', '{steps}'::jsonb, 1, 'sim',
                        i.created_at, i.created_at, i.created_at
                 FROM c, generate_series(1, {jobs}) g JOIN i ON i.n = 1 + (g - 1) % (SELECT c FROM c)",
                steps = STEPS,
                jobs = s.finished_jobs
            ),
        ),
        (
            "held capacity",
            "UPDATE servers s SET used_ram_mb = coalesce(h.ram, 0), used_disk_mb = coalesce(h.disk, 0),
                    used_vcpus = coalesce(h.vcpus, 0)
             FROM servers t LEFT JOIN
                  (SELECT server_id, sum(ram_mb) AS ram, sum(disk_mb) AS disk, sum(vcpus) AS vcpus
                     FROM instances WHERE capacity_held GROUP BY server_id) h ON h.server_id = t.id
             WHERE t.id = s.id AND s.hostname LIKE 'sim-s%'"
                .to_string(),
        ),
        (
            // The trigger that keeps it was off while seeding.
            "account usage",
            // (A headnode from before migration 0014 has none: measuring it
            // for a before/after comparison.)
            "DO $$ BEGIN IF to_regclass('account_usage') IS NOT NULL THEN
             INSERT INTO account_usage (account_id, instances, ram_mb, disk_mb, vcpus)
             SELECT owner, count(*), sum(ram_mb), sum(disk_mb), sum(vcpus) FROM instances
              WHERE state <> 'deleted' GROUP BY owner
             ON CONFLICT (account_id) DO UPDATE SET instances = EXCLUDED.instances,
                 ram_mb = EXCLUDED.ram_mb, disk_mb = EXCLUDED.disk_mb, vcpus = EXCLUDED.vcpus;
             END IF; END $$"
                .to_string(),
        ),
        ("analyze", "ANALYZE".to_string()),
        (
            // Until here it lay ahead, so no reconcile pass during the
            // seeding took the servers for lost.
            "heartbeats",
            "UPDATE servers SET last_heartbeat = now() WHERE hostname LIKE 'sim-s%'".to_string(),
        ),
    ];
    for (name, sql) in steps {
        let t = Instant::now();
        c.execute(sqlx::AssertSqlSafe(sql))
            .await
            .map_err(|e| anyhow::anyhow!("seeding {name}: {e}"))?;
        done.parts.push((name, t.elapsed()));
    }
    Ok(done)
}

/// Instances named `<prefix><n>` in `state`, owned by the seeded accounts
/// (skewed: the first accounts hold most), spread over the seeded servers and
/// the networks; live ones hold their size on their server.
fn instances(s: &Seed, nets: &str, prefix: &str, state: &str, n: u64) -> String {
    let live = state != "deleted";
    format!(
        "WITH a AS (SELECT array_agg(id ORDER BY name) AS ids FROM accounts WHERE name LIKE 'sim-%'),
              v AS (SELECT array_agg(id ORDER BY hostname) AS ids FROM servers WHERE hostname LIKE 'sim-s%'),
              n AS (SELECT {nets} AS ids)
         INSERT INTO instances (id, owner, alias, brand, image_id, package_id, server_id, state,
                ram_mb, disk_mb, vcpus, capacity_held, networks, created_at, updated_at, deleted_at)
         SELECT gen_random_uuid(), a.ids[1 + floor(cardinality(a.ids) * power(random(), 3))::int],
                '{prefix}' || g, 'container', '{img}', '{pkg}', v.ids[1 + g % cardinality(v.ids)],
                '{state}', {ram}, {disk}, 0, {live}, ARRAY[n.ids[1 + g % cardinality(n.ids)]],
                now() - random() * interval '365 days', now(),
                CASE WHEN {live} THEN NULL ELSE now() - random() * interval '60 days' END
         FROM a, v, n, generate_series(1, {n}) g",
        img = s.image,
        pkg = s.package,
        ram = s.ram_mb,
        disk = s.disk_mb,
    )
}

/// The step log of a finished provision.
const STEPS: &str = r#"[{"name":"allocate_nics","state":"done","attempts":1,"error":null,"started_at":"2026-01-01T00:00:00Z","finished_at":"2026-01-01T00:00:00Z"},{"name":"ensure_image","state":"done","attempts":1,"error":null,"started_at":"2026-01-01T00:00:00Z","finished_at":"2026-01-01T00:00:01Z"},{"name":"ensure_instance","state":"done","attempts":1,"error":null,"started_at":"2026-01-01T00:00:01Z","finished_at":"2026-01-01T00:00:01Z"},{"name":"mark_running","state":"done","attempts":1,"error":null,"started_at":"2026-01-01T00:00:01Z","finished_at":"2026-01-01T00:00:01Z"}]"#;
