//! Honest reconciliation and no stuck work: a node that cannot see its pool
//! changes nothing (the server says why); an instance marked failed returns
//! to what its node reports; orphans are listed, never removed; an instance
//! of a dead node can be deleted by force (its leftovers go when the node
//! returns); a dead server can be retired.

use std::time::Duration;

use nereid_tests::api::assert_error;
use nereid_tests::datacenter::{Datacenter, DcOpts};
use serde_json::json;

fn one_node() -> DcOpts {
    DcOpts {
        nodes: 1,
        ..Default::default()
    }
}

async fn sql(dc: &Datacenter, statement: &str) {
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&dc.headnode().database_url)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(&mut db)
        .await
        .unwrap();
}

async fn sync_error(dc: &Datacenter) -> Option<String> {
    let (_, s) = dc
        .op()
        .get(&format!("/v1/servers/{}", dc.nodes[0].server_id))
        .await;
    s["sync_error"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_see_its_pool_changes_nothing_and_the_server_says_why() {
    let Some(dc) = Datacenter::start(one_node()).await else {
        return;
    };
    let inst = dc.provision("quiet", json!({})).await;
    let id = inst["id"].as_str().unwrap().to_string();
    dc.act(&id, "stop").await;
    dc.nodes[0].pool.export();
    let why = nereid_tests::wait_for(
        "the server's sync error",
        Duration::from_secs(30),
        || async { sync_error(&dc).await },
    )
    .await;
    assert!(why.contains("cannot see its instances"), "{why}");
    // Several passes later, nothing was concluded from the silence.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = dc.instance(&id).await;
    assert_eq!(now["state"], "stopped", "{now}");
    dc.nodes[0].pool.import();
    nereid_tests::wait_for(
        "the sync error to clear",
        Duration::from_secs(30),
        || async { sync_error(&dc).await.is_none().then_some(()) },
    )
    .await;
    let now = dc.instance(&id).await;
    assert_eq!(now["state"], "stopped", "{now}");
    // One headnode runs the reconciler: one lease.
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&dc.headnode().database_url)
        .await
        .unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM leases WHERE name = 'reconciler'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(n, 1);
    dc.act(&id, "delete").await;
    dc.assert_nothing_held().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_instance_returns_to_what_its_node_reports_and_orphans_are_only_listed() {
    let Some(dc) = Datacenter::start(one_node()).await else {
        return;
    };
    let a = dc.provision("back", json!({})).await;
    let a_id = a["id"].as_str().unwrap().to_string();
    sql(
        &dc,
        &format!("UPDATE instances SET state = 'failed' WHERE id = '{a_id}'"),
    )
    .await;
    dc.wait_state(&a_id, "running", Duration::from_secs(30))
        .await;

    // An instance the database forgot (deleted there, not on the node).
    let b = dc.provision("orphan", json!({})).await;
    let b_id = b["id"].as_str().unwrap().to_string();
    sql(
        &dc,
        &format!("UPDATE instances SET state = 'deleted' WHERE id = '{b_id}'"),
    )
    .await;
    let path = format!("/v1/servers/{}/orphans", dc.nodes[0].server_id);
    let (st, orphans) = dc.op().get(&path).await;
    assert_eq!(st, 200, "{orphans}");
    assert_eq!(
        orphans,
        json!([{"instance_id": b_id, "state": "running", "known_as": "deleted"}])
    );
    let (_, t) = dc.tenant("eve").await;
    assert_error(&t.get(&path).await, 403, "Forbidden");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        dc.nodes[0]
            .instance_datasets()
            .iter()
            .any(|d| d.ends_with(&b_id)),
        "an orphan is never removed automatically"
    );
    dc.act(&a_id, "delete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_of_a_dead_node_is_deleted_by_force_and_its_leftovers_go_when_it_returns() {
    let Some(mut dc) = Datacenter::start(one_node()).await else {
        return;
    };
    let inst = dc.provision("stuck", json!({})).await;
    let id = inst["id"].as_str().unwrap().to_string();
    dc.nodes[0].agent.proc.kill();
    let (st, body) = dc.op().delete(&format!("/v1/instances/{id}")).await;
    assert_eq!(st, 202, "{body}");
    let job_id = body["job_id"].as_str().unwrap().to_string();
    // The job says which node it waits for.
    let server = dc.nodes[0].server_id.clone();
    nereid_tests::wait_for(
        "the job to wait on the node",
        Duration::from_secs(30),
        || async {
            let (_, j) = dc.op().get(&format!("/v1/jobs/{job_id}")).await;
            (j["waiting_on_node"] == server.as_str()).then_some(())
        },
    )
    .await;
    // Tenants may not force; an operator may.
    let (_, t) = dc.tenant("mallory").await;
    assert_error(
        &t.delete(&format!("/v1/instances/{id}?force=true")).await,
        403,
        "Forbidden",
    );
    let (st, gone) = dc
        .op()
        .delete(&format!("/v1/instances/{id}?force=true"))
        .await;
    assert_eq!(st, 200, "{gone}");
    assert_eq!(gone["state"], "deleted");
    let job = dc.wait_job(&job_id).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(dc.taken_ips().await.is_empty(), "addresses given back");
    for (_, ram, disk, cpu) in dc.capacity_used().await {
        assert_eq!((ram, disk, cpu), (0, 0, 0), "capacity given back");
    }
    // The node comes back: what the instance left there is removed.
    dc.nodes[0].agent.restart_in_place(Vec::new());
    nereid_tests::wait_for("the leftover to go", Duration::from_secs(60), || async {
        dc.nodes[0].instance_datasets().is_empty().then_some(())
    })
    .await;
    dc.assert_nothing_held().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_is_retired_with_force() {
    let Some(dc) = Datacenter::start(one_node()).await else {
        return;
    };
    let inst = dc.provision("onit", json!({})).await;
    let id = inst["id"].as_str().unwrap().to_string();
    let path = format!("/v1/servers/{}", dc.nodes[0].server_id);
    assert_error(&dc.op().delete(&path).await, 409, "Conflict");
    let (st, body) = dc.op().delete(&format!("{path}?force=true")).await;
    assert_eq!(st, 204, "{body}");
    assert_eq!(dc.instance(&id).await["state"], "deleted");
    assert!(dc.taken_ips().await.is_empty());
    let (st, _) = dc.op().get(&path).await;
    assert_eq!(st, 404);
}
