//! The simulator's short run (a couple of hundred simulated nodes, a few
//! thousand seeded instances, a step of mixed load against a real headnode)
//! holds its invariants: every server's held capacity equals what its
//! instances hold, no address is held twice or by the wrong instance, every
//! account's kept usage equals a count of its instances, no job is left
//! unfinished, creates were placed, and the history past the retention is
//! deleted while the rest stays. Figures are printed, not asserted.

use nereid_tests::sim::{Plan, run};

/// One simulated fleet at a time: each starts its own PostgreSQL and
/// headnodes, and the machine has two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_simulated_fleet_under_load_keeps_capacity_addresses_usage_and_jobs_consistent() {
    let plan = Plan::short();
    let _one = ONE_AT_A_TIME.lock().await;
    let report = run(&plan, |s| eprintln!("nereid-sim: {s}")).await.unwrap();
    report.print(&plan);
    assert_eq!(report.capacity_mismatches, 0);
    assert_eq!(report.address_conflicts, 0);
    assert_eq!(report.usage_mismatches, 0);
    assert_eq!(report.unfinished_jobs, 0);
    assert_eq!(report.failed_jobs, 0);
    let step = &report.steps[0];
    assert!(step.placements_per_s > 0.0, "{step:?}");
    assert!(
        step.failed.iter().all(|((op, _), ..)| *op != "create"),
        "every create was placed: {step:?}"
    );
    assert!(report.heartbeats > 0 && report.heartbeat_errors == 0);
    // The headnode deleted the seed's history past the retention (finished
    // jobs over the year, deleted instances over 60 days; 40 days kept),
    // and only that.
    let (jobs, instances, took) = report.pruned;
    assert!(
        jobs > 0 && instances > 0 && took.is_some(),
        "{:?}",
        report.pruned
    );
    assert_eq!(report.past_retention, 0);
    assert!(report.within_retention > 0);
}

/// Three headnodes on one database behind one address (a TCP proxy, as a
/// load balancer): one is killed with SIGKILL halfway through the load.
/// Clients send again what their broken connection left unanswered (a
/// create with the same Idempotency-Key); every create that was answered
/// 202 ends as one settled instance provisioned once, the dead headnode's
/// jobs are taken over and finish, and the invariants hold.
/// A small fleet under one step of load, for the failure runs.
fn failure_plan(plan: Plan) -> Plan {
    Plan {
        steps: vec![(15.0, 6.0)],
        seeded: 50,
        live_instances: 1_000,
        deleted_instances: 100,
        finished_jobs: 1_000,
        quiet: std::time::Duration::from_secs(1),
        ..plan
    }
}

/// What a failure must not cost: an acknowledged create, a create run
/// twice, a job left or failed, the invariants.
fn assert_nothing_lost(report: &nereid_tests::sim::Report) {
    assert_eq!(report.lost_creates, 0);
    assert_eq!(report.provisioned_twice, 0);
    assert_eq!(report.unfinished_jobs, 0);
    assert_eq!(report.failed_jobs, 0);
    assert_eq!(report.capacity_mismatches, 0);
    assert_eq!(report.address_conflicts, 0);
    assert_eq!(report.usage_mismatches, 0);
    let step = &report.steps[0];
    assert!(step.placements_per_s > 0.0, "{step:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_headnodes_one_killed_under_load_lose_no_acknowledged_create_and_run_none_twice() {
    let plan = failure_plan(Plan {
        headnodes: 3,
        kill_headnode: true,
        ..Plan::short()
    });
    let _one = ONE_AT_A_TIME.lock().await;
    let report = run(&plan, |s| eprintln!("nereid-sim: {s}")).await.unwrap();
    report.print(&plan);
    assert_nothing_lost(&report);
    let step = &report.steps[0];
    assert!(
        step.failed.iter().all(|((op, _), ..)| *op != "create"),
        "every create was answered (202, or 200 when sent again after its connection broke): {step:?}"
    );
}

/// PostgreSQL as a primary with a synchronous streaming replica, both
/// started here from the system's binaries; the headnode is given both
/// hosts. Halfway through the load the primary is killed with SIGKILL and
/// the replica promoted: the headnode finds the new primary by itself,
/// every create that was answered 202 ends as one settled instance
/// provisioned once, and every job finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_primary_killed_under_load_its_replica_promoted_loses_no_acknowledged_create()
{
    let plan = failure_plan(Plan {
        replica: true,
        kill_primary: true,
        ..Plan::short()
    });
    let _one = ONE_AT_A_TIME.lock().await;
    let report = run(&plan, |s| eprintln!("nereid-sim: {s}")).await.unwrap();
    report.print(&plan);
    assert_nothing_lost(&report);
}
