//! The simulator's short run (a couple of hundred simulated nodes, a few
//! thousand seeded instances, a step of mixed load against a real headnode)
//! holds its invariants: every server's held capacity equals what its
//! instances hold, no address is held twice or by the wrong instance, every
//! account's kept usage equals a count of its instances, no job is left
//! unfinished, and creates were placed. Figures are printed, not asserted.

use nereid_tests::sim::{Plan, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_simulated_fleet_under_load_keeps_capacity_addresses_usage_and_jobs_consistent() {
    let plan = Plan::short();
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
}
