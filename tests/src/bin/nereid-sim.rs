//! nereid-sim: a simulated fleet of nodes against a real headnode and a
//! PostgreSQL of its own (see `nereid_tests::sim`); prints what it measured
//! and exits non-zero when a check fails.
//!
//!   nereid-sim                  the full fleet: 10,000 nodes, 1,000,000 instances
//!   nereid-sim --short          a small fleet (what `deploy/dev test` runs)
//!   options: --nodes N --instances N --steps RATExSECS,...|none  --quiet SECS
//!            --headnodes N [--kill-headnode]   several headnodes behind a proxy
//!            --replica [--kill-primary]        PostgreSQL with a synchronous replica

use std::time::Duration;

use nereid_tests::sim::{Plan, run};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut plan = if args.iter().any(|a| a == "--short") {
        Plan::short()
    } else {
        Plan::full()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--short" => {}
            "--nodes" => {
                let n: u64 = value()?.parse()?;
                plan.seeded = n.saturating_sub(plan.registered as u64);
            }
            "--instances" => {
                let n: u64 = value()?.parse()?;
                plan.live_instances = n;
                plan.deleted_instances = n * 3 / 10;
                plan.finished_jobs = n * 3 / 2;
            }
            "--quiet" => plan.quiet = Duration::from_secs(value()?.parse()?),
            "--headnodes" => plan.headnodes = value()?.parse()?,
            "--kill-headnode" => plan.kill_headnode = true,
            "--replica" => plan.replica = true,
            "--kill-primary" => {
                plan.replica = true;
                plan.kill_primary = true;
            }
            "--steps" => {
                let v = value()?;
                // `none`: the heartbeats-only phase and the reconciler alone.
                plan.steps = v
                    .split(',')
                    .filter(|s| *s != "none")
                    .map(|s| {
                        let (r, d) = s
                            .split_once('x')
                            .ok_or_else(|| anyhow::anyhow!("a step is RATExSECONDS, not {s}"))?;
                        Ok((r.parse()?, d.parse()?))
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    raise_open_files();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(run(&plan, |s| eprintln!("nereid-sim: {s}")))?;
    report.print(&plan);
    anyhow::ensure!(
        report.capacity_mismatches == 0
            && report.address_conflicts == 0
            && report.usage_mismatches == 0
            && report.unfinished_jobs == 0
            && report.past_retention == 0
            && report.lost_creates == 0
            && report.provisioned_twice == 0,
        "a check failed"
    );
    Ok(())
}

/// One connection per simulated node, each way, needs more descriptors than
/// a shell's default, in this process and in the headnode it starts (which
/// inherits the limit): as root, up to the kernel's `nr_open`.
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let want = nr_open.min(1 << 20).max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
