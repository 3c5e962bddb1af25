//! Onboarding a node end to end: join with a token, setup, heartbeats,
//! refusals, reserve and delete, with real headnode and agent processes.

use std::time::Duration;

use nereid_tests::api::assert_error;
use nereid_tests::procs::{Agent, AgentOpts, Headnode, HeadnodeOpts};
use nereid_tests::wait_for;
use serde_json::{Value, json};

async fn server(h: &Headnode, id: &str) -> Value {
    let (st, body) = h.operator().get(&format!("/v1/servers/{id}")).await;
    assert_eq!(st, 200, "{body}");
    body
}

async fn wait_status(h: &Headnode, id: &str, status: &str, timeout: Duration) -> Value {
    let op = h.operator();
    wait_for(&format!("server {id} to be {status}"), timeout, || {
        let op = op.clone();
        let path = format!("/v1/servers/{id}");
        async move {
            let (st, body) = op.get(&path).await;
            (st == 200 && body["status"] == status).then_some(body)
        }
    })
    .await
}

fn real_cpu_count() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count() as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn join_then_setup_makes_the_server_running_with_real_sysinfo() {
    if !nereid_tests::zfs::available() {
        return;
    }
    let pool = nereid_tests::zfs::TestPool::create("256M");
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let agent = Agent::start(&h.grpc_url, &h.join_token().await);
    let id = agent.server_id().await;

    let s = server(&h, &id).await;
    assert_eq!(s["status"], "unsetup");
    assert_eq!(s["machine_id"], agent.machine_id);
    assert_eq!(
        s["sysinfo"]["cpu_count"].as_u64().unwrap(),
        real_cpu_count()
    );
    let mem = s["sysinfo"]["memory_bytes"].as_u64().unwrap();
    assert!(mem > 512 * 1024 * 1024, "memory {mem}");
    assert!(
        s["sysinfo"]["nics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "lo")
    );
    assert!(
        s["sysinfo"]["zpools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|z| z["name"] == pool.name.as_str())
    );
    assert_eq!(s["sysinfo"]["capabilities"]["zfs"]["available"], true);

    // A setup naming what does not exist is refused and says what is missing.
    let bad = h
        .operator()
        .post(
            &format!("/v1/servers/{id}/setup"),
            &json!({"zpool": "nosuchpool", "nic_tags": {"admin": "nosuchnic0"}}),
        )
        .await;
    assert_error(&bad, 400, "InvalidArgument");
    let msg = bad.1["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("nosuchpool") && msg.contains("nosuchnic0"),
        "{msg}"
    );
    assert_eq!(server(&h, &id).await["status"], "unsetup");

    let setup = json!({"zpool": pool.name, "nic_tags": {"admin": "lo"}, "traits": {"ssd": true}});
    let (st, body) = h
        .operator()
        .post(&format!("/v1/servers/{id}/setup"), &setup)
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["status"], "running");
    assert_eq!(body["setup"]["zpool"], pool.name.as_str());
    assert_eq!(body["setup"]["traits"]["ssd"], true);

    // The same setup again is a no-op; a different one is a conflict.
    let (st, _) = h
        .operator()
        .post(&format!("/v1/servers/{id}/setup"), &setup)
        .await;
    assert_eq!(st, 200);
    let other = json!({"zpool": pool.name, "nic_tags": {"admin": "lo", "external": "lo"}});
    assert_error(
        &h.operator()
            .post(&format!("/v1/servers/{id}/setup"), &other)
            .await,
        409,
        "Conflict",
    );

    // The agent recorded the setup on the node.
    let recorded: Value =
        serde_json::from_slice(&std::fs::read(agent.state.path().join("setup.json")).unwrap())
            .unwrap();
    assert_eq!(recorded["zpool"], pool.name.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn missed_heartbeats_turn_a_server_unknown_and_resumed_ones_bring_it_back() {
    let h = Headnode::start(HeadnodeOpts {
        heartbeat_interval_ms: 300,
        ..Default::default()
    })
    .await;
    let agent = Agent::start(&h.grpc_url, &h.join_token().await);
    let id = agent.server_id().await;
    wait_status(&h, &id, "unsetup", Duration::from_secs(10)).await;

    // Freeze the agent: heartbeats stop, the process stays.
    agent.proc.signal(nix::sys::signal::Signal::SIGSTOP);
    let unknown = wait_status(&h, &id, "unknown", Duration::from_secs(15)).await;
    let last = unknown["last_heartbeat"].as_str().unwrap().to_string();
    agent.proc.signal(nix::sys::signal::Signal::SIGCONT);
    let back = wait_status(&h, &id, "unsetup", Duration::from_secs(15)).await;
    assert_ne!(back["last_heartbeat"].as_str().unwrap(), last);

    // A killed and restarted agent keeps its identity: same server, no new one.
    let agent = agent.restart();
    assert_eq!(agent.server_id().await, id);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    wait_status(&h, &id, "unsetup", Duration::from_secs(15)).await;
    let (_, list) = h.operator().get("/v1/servers").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reused_expired_and_unknown_join_tokens_are_refused_and_record_nothing() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let token = h.join_token().await;
    let first = Agent::start(&h.grpc_url, &token);
    first.server_id().await;

    // Reused.
    let mut second = Agent::start(&h.grpc_url, &token);
    let st = second
        .proc
        .wait_exit(Duration::from_secs(60))
        .expect("a refused agent exits");
    assert!(!st.success());
    assert!(
        second.proc.log_text().contains("already used"),
        "{}",
        second.proc.log_text()
    );
    assert!(!second.state.path().join("identity.json").exists());

    // Unknown (with this headnode's CA fingerprint).
    let fingerprint = token.rsplit_once('.').unwrap().1.to_string();
    let mut third = Agent::start(&h.grpc_url, &format!("nrdjoin_0000.{fingerprint}"));
    assert!(
        !third
            .proc
            .wait_exit(Duration::from_secs(60))
            .unwrap()
            .success()
    );
    assert!(
        third.proc.log_text().contains("unknown"),
        "{}",
        third.proc.log_text()
    );

    // Expired.
    let expiring = h.join_token().await;
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&h.database_url)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE join_tokens SET expires_at = now() - interval '1 second' WHERE used_at IS NULL",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let mut fourth = Agent::start(&h.grpc_url, &expiring);
    assert!(
        !fourth
            .proc
            .wait_exit(Duration::from_secs(60))
            .unwrap()
            .success()
    );
    assert!(
        fourth.proc.log_text().contains("expired"),
        "{}",
        fourth.proc.log_text()
    );

    // Without the CA's fingerprint: refused before any connection.
    let mut bare = Agent::start(&h.grpc_url, token.rsplit_once('.').unwrap().0);
    assert!(
        !bare
            .proc
            .wait_exit(Duration::from_secs(60))
            .unwrap()
            .success()
    );
    assert!(
        bare.proc.log_text().contains("carries no CA fingerprint"),
        "{}",
        bare.proc.log_text()
    );

    // A token naming another datacenter's CA: the agent refuses this
    // headnode before it sends anything, so the (valid, single-use) secret
    // never reached it and still works with the right fingerprint.
    let valid = h.join_token().await;
    let secret = valid.rsplit_once('.').unwrap().0.to_string();
    let elsewhere = tempfile::tempdir().unwrap();
    let other_ca = nereid_tls::Ca::load_or_create(elsewhere.path()).unwrap();
    let mut misled = Agent::start(&h.grpc_url, &format!("{secret}.{}", other_ca.fingerprint()));
    assert!(
        !misled
            .proc
            .wait_exit(Duration::from_secs(60))
            .unwrap()
            .success()
    );
    let log = misled.proc.log_text();
    assert!(
        log.contains("is not the headnode that made this join token"),
        "{log}"
    );
    assert!(!misled.state.path().join("identity.json").exists());
    assert!(!misled.state.path().join("node.pem").exists());
    let (tokens_used,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM join_tokens WHERE used_at IS NOT NULL")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(tokens_used, 1, "only the first agent's token was used");
    let rightly = Agent::start(&h.grpc_url, &valid);
    rightly.server_id().await;

    // A second agent claiming an existing machine id is refused, and its
    // fresh token stays usable by another machine.
    let fresh = h.join_token().await;
    let dup_opts = AgentOpts {
        machine_id: first.machine_id.clone(),
        hostname: None,
        join_token: Some(fresh.clone()),
        ..Default::default()
    };
    let mut dup = Agent::start_with(&h.grpc_url, dup_opts, tempfile::tempdir().unwrap());
    assert!(
        !dup.proc
            .wait_exit(Duration::from_secs(60))
            .unwrap()
            .success()
    );
    assert!(
        dup.proc.log_text().contains("already registered"),
        "{}",
        dup.proc.log_text()
    );

    let (_, list) = h.operator().get("/v1/servers").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    let other = Agent::start(&h.grpc_url, &fresh);
    other.server_id().await;
    let (_, list) = h.operator().get("/v1/servers").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn reserve_unreserve_and_delete_a_server() {
    let h = Headnode::start(HeadnodeOpts {
        heartbeat_interval_ms: 300,
        ..Default::default()
    })
    .await;
    let agent = Agent::start(&h.grpc_url, &h.join_token().await);
    let id = agent.server_id().await;
    let op = h.operator();
    let (st, s) = op
        .post(&format!("/v1/servers/{id}/reserve"), &json!({}))
        .await;
    assert_eq!((st, s["reserved"].clone()), (200, json!(true)));
    let (_, list) = op.get("/v1/servers?reserved=true").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (st, s) = op
        .post(&format!("/v1/servers/{id}/unreserve"), &json!({}))
        .await;
    assert_eq!((st, s["reserved"].clone()), (200, json!(false)));

    let (st, _) = op.delete(&format!("/v1/servers/{id}")).await;
    assert_eq!(st, 204);
    assert_error(&op.get(&format!("/v1/servers/{id}")).await, 404, "NotFound");
    assert_error(
        &op.delete(&format!("/v1/servers/{id}")).await,
        404,
        "NotFound",
    );
    // The deleted server's agent is refused from now on.
    let metrics = nereid_tests::api::Api::anonymous(&h.rest_url);
    wait_for("a refused heartbeat", Duration::from_secs(10), || {
        let m = metrics.clone();
        async move {
            let (_, body) = m.get("/metrics").await;
            let text = body.as_str().unwrap_or("").to_string();
            text.lines()
                .any(|l| {
                    l.starts_with("nereid_agent_heartbeats_refused_total") && !l.ends_with(" 0")
                })
                .then_some(())
        }
    })
    .await;
}
