//! Fenced job leases: the database stops answering for longer than a job's
//! lease while a step waits on a node; the run that lost its lease stops
//! acting, the next claim finishes the job, and nothing is done twice or
//! leaked. (Its own test process: the outage freezes the process's shared
//! PostgreSQL cluster.)

use std::time::Duration;

use nereid_tests::datacenter::{Datacenter, DcOpts};
use nereid_tests::pg::Cluster;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_lost_its_lease_in_a_database_outage_stops_and_the_job_runs_once() {
    let Some(mut dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    // The node holds the first EnsureInstance for 8 s.
    dc.nodes[0].agent.restart_in_place(vec![(
        "NEREID_AGENT_DELAY".into(),
        "ensure_instance:8000".into(),
    )]);
    nereid_tests::wait_for("the restarted agent", Duration::from_secs(30), || async {
        dc.nodes[0]
            .agent
            .proc
            .current_log()
            .contains("agent listening")
            .then_some(())
    })
    .await;
    let (st, body) = dc.create("fenced", json!({})).await;
    assert_eq!(st, 202, "{body}");
    let job_id = body["job_id"].as_str().unwrap().to_string();
    let id = body["instance"]["id"].as_str().unwrap().to_string();
    nereid_tests::wait_for(
        "EnsureInstance on the node",
        Duration::from_secs(30),
        || async {
            dc.nodes[0]
                .agent
                .proc
                .current_log()
                .contains("EnsureInstance")
                .then_some(())
        },
    )
    .await;
    // The database is away for 6 s, three times the 2 s lease, while the
    // node still works on the first call.
    Cluster::get().freeze();
    tokio::time::sleep(Duration::from_secs(6)).await;
    Cluster::get().thaw();
    let job = dc.wait_job(&job_id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        job["attempts"], 2,
        "claimed again after the outage, once: {job}"
    );
    let log = dc.nodes[0].agent.proc.current_log();
    let ensures = log.matches("EnsureInstance").count();
    assert_eq!(
        ensures, 2,
        "one EnsureInstance per claim, none from the run that lost its lease after it: {log}"
    );
    assert_eq!(
        log.matches("DeleteInstance").count(),
        0,
        "nothing was unwound"
    );
    dc.wait_state(&id, "running", Duration::from_secs(30)).await;
    assert_eq!(dc.nodes[0].instance_datasets().len(), 1);
    assert_eq!(dc.taken_ips().await.len(), 1);
    let headnode_log = dc.headnode().proc.log_text();
    assert!(
        headnode_log.contains("stopped working on job"),
        "the first run says why it stopped"
    );
    dc.act(&id, "delete").await;
    dc.assert_nothing_held().await;
}
