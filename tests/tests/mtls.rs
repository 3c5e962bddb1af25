//! Mutual TLS between headnode and agents, with real processes: who may call
//! an agent, certificate rotation without a restart (the old certificate is
//! refused afterwards), revocation and expiry (refused, and the server says
//! why), and what a capture of the control traffic shows.

use std::sync::Arc;
use std::time::Duration;

use nereid_proto::v1 as pb;
use nereid_tests::api::assert_error;
use nereid_tests::procs::{Agent, Headnode, HeadnodeOpts};
use nereid_tests::{wait_for, wait_for_log};
use serde_json::Value;

async fn server(h: &Headnode, id: &str) -> Value {
    let (st, body) = h.operator().get(&format!("/v1/servers/{id}")).await;
    assert_eq!(st, 200, "{body}");
    body
}

fn node_identity(agent: &Agent) -> (String, Arc<nereid_tls::Identity>) {
    let pem = std::fs::read_to_string(agent.state.path().join("node.pem")).unwrap();
    let id = nereid_tls::Identity::from_pem(&pem, &pem).unwrap();
    (id.fingerprint(), id)
}

/// A heartbeat for `server` (whose agent is at `address`) presenting `identity`.
async fn heartbeat(
    h: &Headnode,
    identity: Arc<nereid_tls::Identity>,
    server: &str,
    address: &str,
) -> Result<(), tonic::Status> {
    heartbeat_with(h, identity, server, address, None).await
}

/// As `heartbeat`, bringing `sysinfo` along (as an agent does when it changed).
async fn heartbeat_with(
    h: &Headnode,
    identity: Arc<nereid_tls::Identity>,
    server: &str,
    address: &str,
    sysinfo: Option<pb::Sysinfo>,
) -> Result<(), tonic::Status> {
    let config = nereid_tls::client_config(
        Some(identity),
        nereid_tls::Trust::Ca(h.ca().cert_der.clone()),
    );
    let ch = nereid_tls::Connector::new(config, nereid_tls::HEADNODE_NAME)
        .unwrap()
        .channel(&h.grpc_url, |e| e)
        .unwrap();
    pb::registry_client::RegistryClient::new(ch)
        .heartbeat(pb::HeartbeatRequest {
            server_id: server.into(),
            usage: Some(pb::Usage::default()),
            agent_address: address.into(),
            agent_version: "test".into(),
            sysinfo,
        })
        .await
        .map(|_| ())
}

/// GetSysinfo on the agent at `address`, presenting `identity` and
/// expecting the agent's certificate to name `server` under `ca`.
async fn call_agent(
    ca: &nereid_tls::Ca,
    identity: Option<Arc<nereid_tls::Identity>>,
    server: &str,
    address: &str,
) -> Result<pb::Sysinfo, tonic::Status> {
    let config = nereid_tls::client_config(identity, nereid_tls::Trust::Ca(ca.cert_der.clone()));
    let ch = nereid_tls::Connector::new(config, &nereid_tls::node_name(server))
        .unwrap()
        .channel(address, |e| e.timeout(Duration::from_secs(20)))
        .unwrap();
    pb::agent_client::AgentClient::new(ch)
        .get_sysinfo(pb::GetSysinfoRequest {})
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_headnode_certificate_of_the_datacenters_ca_may_call_an_agent() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let agent = Agent::start(&h.grpc_url, &h.join_token().await);
    let id = agent.server_id().await;
    let address = server(&h, &id).await["agent_address"]
        .as_str()
        .unwrap()
        .to_string();
    let ca = h.ca();
    // The headnode's kind of certificate works.
    let headnode = ca.identity(nereid_tls::HEADNODE_NAME).unwrap();
    let info = call_agent(&ca, Some(headnode.clone()), &id, &address)
        .await
        .unwrap();
    assert_eq!(info.machine_id, agent.machine_id);
    // No certificate, a node's own certificate (same CA, not a headnode),
    // and a headnode certificate of another CA: all refused.
    let (_, node) = node_identity(&agent);
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = nereid_tls::Ca::load_or_create(other_dir.path()).unwrap();
    let impostor = other_ca.identity(nereid_tls::HEADNODE_NAME).unwrap();
    for (what, identity) in [
        ("no certificate", None),
        ("a node certificate", Some(node)),
        ("another CA's headnode", Some(impostor)),
    ] {
        let err = call_agent(&ca, identity, &id, &address).await.unwrap_err();
        assert!(nereid_tests::connection_failed(&err), "{what}: {err:?}");
    }
    // (A client may try again on its own: at least one refusal each.)
    nereid_tests::wait_for_log(&agent.proc, "TLS handshake refused", 3).await;
    // And the headnode checks the agent: a certificate naming another server
    // is not accepted as this one.
    let err = call_agent(
        &ca,
        Some(headnode),
        &uuid::Uuid::new_v4().to_string(),
        &address,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(format!("{err:?}").contains("certificate"), "{err:?}");
}

/// A node joined to a headnode with fast heartbeats (and `args`), whose
/// first heartbeat with its own certificate was taken.
struct Joined {
    h: Headnode,
    agent: Agent,
    id: String,
    /// The sha256 of the certificate it joined with, and that identity.
    first: String,
    identity: Arc<nereid_tls::Identity>,
    address: String,
}

async fn joined(args: &[&str]) -> Joined {
    joined_with(HeadnodeOpts {
        heartbeat_interval_ms: 300,
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    })
    .await
}

async fn joined_with(opts: HeadnodeOpts) -> Joined {
    let h = Headnode::start(opts).await;
    let agent = Agent::start(&h.grpc_url, &h.join_token().await);
    let id = agent.server_id().await;
    let (first, identity) = node_identity(&agent);
    let s = server(&h, &id).await;
    assert_eq!(s["certificate"]["sha256"], first.as_str());
    let address = s["agent_address"].as_str().unwrap().to_string();
    heartbeat(&h, identity.clone(), &id, &address)
        .await
        .unwrap();
    Joined {
        h,
        agent,
        id,
        first,
        identity,
        address,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_takes_over_without_a_restart_and_the_old_one_is_refused() {
    let Joined {
        h,
        agent,
        id,
        first,
        identity: old,
        address,
    } = joined(&[]).await;
    let pid = agent.proc.pid();

    let (_, tenant) = h.tenant("t").await;
    assert_error(
        &tenant
            .post(
                &format!("/v1/servers/{id}/certificate"),
                &serde_json::json!({}),
            )
            .await,
        403,
        "Forbidden",
    );
    let mut seen = vec![first.clone()];
    // Twice, with a headnode restart between (its new certificate and new
    // connections to the agent).
    let mut h = h;
    for round in 0..2 {
        let (st, cert) = h
            .operator()
            .post(
                &format!("/v1/servers/{id}/certificate"),
                &serde_json::json!({}),
            )
            .await;
        assert_eq!(st, 200, "{cert}");
        let new = cert["sha256"].as_str().unwrap().to_string();
        assert!(!seen.contains(&new), "round {round}: a new certificate");
        assert_eq!(node_identity(&agent).0, new, "the node keeps the new one");
        assert_eq!(server(&h, &id).await["certificate"]["sha256"], new.as_str());
        seen.push(new);
        if round == 0 {
            h = h.restart().await;
        }
    }
    assert_eq!(agent.proc.pid(), pid, "the agent was not restarted");
    // The agent's own heartbeats carry on with the new certificate...
    let before = server(&h, &id).await["last_heartbeat"].clone();
    wait_for(
        "a heartbeat with the new certificate",
        Duration::from_secs(20),
        || {
            let h = &h;
            let id = id.clone();
            let before = before.clone();
            async move {
                let s = server(h, &id).await;
                (s["last_heartbeat"] != before && s["status"] != "unknown").then_some(())
            }
        },
    )
    .await;
    // ...and the old certificate is refused.
    let err = heartbeat(&h, old, &id, &address).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let log = h
        .operator()
        .get("/v1/audit?action=server.rotate_certificate")
        .await;
    assert_eq!(log.0, 200, "{}", log.1);
    assert_eq!(log.1["items"].as_array().unwrap().len(), 2, "{}", log.1);
}

/// The certificates the database expects of a server: (current, pending).
async fn expected_certificates(h: &Headnode, id: &str) -> (String, Option<String>) {
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&h.database_url)
        .await
        .unwrap();
    sqlx::query_as("SELECT cert_sha256, cert_next_sha256 FROM servers WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&mut db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_heartbeat_with_sysinfo_and_the_old_certificate_keeps_a_pending_rotation() {
    let fault = (
        "NEREID_HEADNODE_FAULT".to_string(),
        "rotate_certificate:pending".to_string(),
    );
    let Joined {
        h,
        agent,
        id,
        first,
        identity: old,
        address,
    } = joined_with(HeadnodeOpts {
        heartbeat_interval_ms: 300,
        env: vec![fault],
        ..Default::default()
    })
    .await;
    // The headnode dies between recording the node's new certificate and
    // handing it over: the node keeps its old one, the database expects both.
    let rotate = format!("/v1/servers/{id}/certificate");
    let r = h
        .operator()
        .request(reqwest::Method::POST, &rotate)
        .json(&serde_json::json!({}))
        .send()
        .await;
    assert!(r.is_err() || r.unwrap().status().is_server_error());
    let mut h = h;
    h.proc
        .wait_exit(Duration::from_secs(10))
        .expect("the fault killed the headnode");
    let (current, pending) = expected_certificates(&h, &id).await;
    assert_eq!(current, first);
    let pending = pending.expect("the new certificate is pending");
    let mut opts = h.opts.clone();
    opts.env.clear();
    let h = h.restart_with(opts).await;
    // A heartbeat that brings sysinfo with the old certificate, while the
    // rotation is pending, is taken and leaves the pending certificate alone.
    let sysinfo = pb::Sysinfo {
        hostname: "after-rotation-crash".into(),
        ..Default::default()
    };
    heartbeat_with(&h, old.clone(), &id, &address, Some(sysinfo))
        .await
        .unwrap();
    assert_eq!(
        expected_certificates(&h, &id).await,
        (first.clone(), Some(pending)),
        "a heartbeat with sysinfo dropped the pending certificate"
    );
    // (Taken: the call above returned Ok. The hostname it brought is not
    // checked: the node's own agent sends its sysinfo too and may win.)
    // The rotation run again completes, and the node goes on with it.
    let (st, cert) = h.operator().post(&rotate, &serde_json::json!({})).await;
    assert_eq!(st, 200, "{cert}");
    assert_eq!(node_identity(&agent).0, cert["sha256"].as_str().unwrap());
    assert_eq!(
        expected_certificates(&h, &id).await,
        (cert["sha256"].as_str().unwrap().to_string(), None)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_certificate_is_refused_at_once_and_the_server_says_why_until_a_rotation() {
    let Joined {
        h,
        agent,
        id,
        first,
        identity: old,
        address,
    } = joined(&[]).await;
    let revoke = format!("/v1/servers/{id}/certificate/revoke");

    let (_, tenant) = h.tenant("t").await;
    assert_error(
        &tenant.post(&revoke, &serde_json::json!({})).await,
        403,
        "Forbidden",
    );
    assert_error(
        &h.operator()
            .post(
                "/v1/servers/00000000-0000-0000-0000-000000000001/certificate/revoke",
                &serde_json::json!({}),
            )
            .await,
        404,
        "NotFound",
    );
    let (st, s) = h.operator().post(&revoke, &serde_json::json!({})).await;
    assert_eq!(st, 200, "{s}");
    assert_eq!(s["status"], "unknown", "{s}");
    let why = s["status_reason"].as_str().unwrap_or_default();
    assert!(why.contains("certificate was revoked"), "{s}");
    let revoked_at = s["certificate"]["revoked_at"].clone();
    assert!(revoked_at.is_string(), "{s}");
    assert_eq!(s["certificate"]["sha256"], first.as_str());
    // Refused at once, by the node's own agent too.
    let err = heartbeat(&h, old.clone(), &id, &address).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    wait_for_log(&agent.proc, "certificate was revoked at", 2).await;
    // Revoking again changes nothing.
    let (st, again) = h.operator().post(&revoke, &serde_json::json!({})).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["certificate"]["revoked_at"], revoked_at);

    // A rotation gives the node a new key; its certificate is taken, the
    // revoked one stays refused.
    let (st, cert) = h
        .operator()
        .post(
            &format!("/v1/servers/{id}/certificate"),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(st, 200, "{cert}");
    let s = wait_for(
        "the server back with its new certificate",
        Duration::from_secs(20),
        || {
            let h = &h;
            let id = id.clone();
            async move {
                let s = server(h, &id).await;
                (s["status"] != "unknown").then_some(s)
            }
        },
    )
    .await;
    assert_eq!(s["certificate"]["sha256"], cert["sha256"], "{s}");
    assert!(s["certificate"]["revoked_at"].is_null(), "{s}");
    assert!(s["status_reason"].is_null(), "{s}");
    let err = heartbeat(&h, old, &id, &address).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let log = h
        .operator()
        .get("/v1/audit?action=server.revoke_certificate")
        .await;
    assert_eq!(
        log.1["items"].as_array().map(Vec::len),
        Some(2),
        "{}",
        log.1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_is_refused_and_the_server_says_so() {
    let Joined {
        h,
        id,
        identity,
        address,
        ..
    } = joined(&["--node-cert-lifetime-secs", "5"]).await;
    let s = server(&h, &id).await;
    assert_ne!(s["status"], "unknown", "{s}");
    let not_after: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(s["certificate"]["not_after"].clone()).unwrap();
    // Past its end (second precision), the certificate fails the handshake.
    let left = (not_after - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_secs(1)).await;
    let s = server(&h, &id).await;
    assert_eq!(s["status"], "unknown", "{s}");
    let why = s["status_reason"].as_str().unwrap_or_default();
    assert!(why.contains("certificate expired at"), "{s}");
    let refused_before = h.proc.log_text().matches("TLS handshake refused").count();
    let err = heartbeat(&h, identity, &id, &address).await.unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    wait_for_log(&h.proc, "TLS handshake refused", refused_before + 1).await;
    assert!(
        h.proc.log_text().contains("certificate expired"),
        "the headnode says why it refused the handshake"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_headnode_with_another_ca_refuses_to_start_on_the_datacenters_database() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let other = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(nereid_tests::procs::bin("nereid-headnode"))
        .arg("--database-url")
        .arg(&h.database_url)
        .args([
            "--rest-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(other.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "it started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("whose CA has sha256 {}", h.ca().fingerprint())),
        "{err}"
    );
    assert!(err.contains("--pki-dir"), "{err}");
    // The datacenter's own headnode is unaffected.
    assert_eq!(h.operator().get("/v1/servers").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capture_of_the_control_traffic_shows_no_join_secret() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let port = h.grpc_url.rsplit(':').next().unwrap().to_string();
    let pcap = tempfile::Builder::new().suffix(".pcap").tempfile().unwrap();
    let dump = std::process::Command::new("tcpdump")
        .args(["-i", "lo", "-U", "-s", "0", "-w"])
        .arg(pcap.path())
        .args(["tcp", "port", &port])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tcpdump (deploy/dev installs it)");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut dump_guard = Kill(dump);
    // Give tcpdump the moment it takes to start listening.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let token = h.join_token().await;
    let secret = token.rsplit_once('.').unwrap().0.to_string();
    let agent = Agent::start(&h.grpc_url, &token);
    let id = agent.server_id().await;
    // A few heartbeats, then an image fetch attempt (refused, not granted).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, node) = node_identity(&agent);
    let address = server(&h, &id).await["agent_address"]
        .as_str()
        .unwrap()
        .to_string();
    heartbeat(&h, node, &id, &address).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dump_guard.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let _ = dump_guard.0.wait();
    drop(dump_guard);
    let bytes = std::fs::read(pcap.path()).unwrap();
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    // The capture saw the handshakes (the name asked for is in the clear)...
    assert!(
        contains(b"headnode.nereid"),
        "the capture is empty: {} bytes",
        bytes.len()
    );
    // ...and nothing secret: not the join token, nor its prefix.
    assert!(
        !contains(secret.as_bytes()),
        "the join secret crossed in the clear"
    );
    assert!(!contains(b"nrdjoin_"), "a join token crossed in the clear");
    assert!(!contains(b"PRIVATE KEY"), "a key crossed in the clear");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rest_api_serves_tls_from_configured_files_and_the_cli_trusts_a_given_ca() {
    // A certificate for `localhost` from a CA of the operator's.
    let dir = tempfile::tempdir().unwrap();
    let ca = nereid_tls::Ca::load_or_create(&dir.path().join("ca")).unwrap();
    let key = nereid_tls::NodeKey::generate().unwrap();
    let (cert, _) = ca.issue("localhost", &key.public_key()).unwrap();
    let (cert_path, key_path) = (dir.path().join("rest.crt"), dir.path().join("rest.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key.pem()).unwrap();
    let h = Headnode::start(HeadnodeOpts {
        args: vec![
            "--rest-tls-cert".into(),
            cert_path.display().to_string(),
            "--rest-tls-key".into(),
            key_path.display().to_string(),
        ],
        ..Default::default()
    })
    .await;
    assert!(h.rest_url.starts_with("https://"), "{}", h.rest_url);
    let url = h.rest_url.replace("127.0.0.1", "localhost");
    let cli = |ca_file: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(nereid_tests::procs::bin("nereid"));
        cmd.args(["server", "list"])
            .env("NEREID_URL", &url)
            .env("NEREID_TOKEN", h.operator_token())
            .env("HOME", dir.path())
            .env_remove("NEREID_CA_FILE");
        if let Some(f) = ca_file {
            cmd.env("NEREID_CA_FILE", f);
        }
        cmd.output().unwrap()
    };
    let ok = cli(Some(&dir.path().join("ca").join("ca.crt")));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Without the CA the CLI refuses the headnode, saying why.
    let refused = cli(None);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(err.contains("certificate") || err.contains("tls"), "{err}");
    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::get(h.rest_url.replace("https://", "http://") + "/healthz").await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // A renewed certificate (here from another CA) is served after SIGHUP,
    // without a restart; a broken file leaves the current one in place.
    let pid = h.proc.pid();
    let renewed_ca = nereid_tls::Ca::load_or_create(&dir.path().join("ca2")).unwrap();
    let key2 = nereid_tls::NodeKey::generate().unwrap();
    let (cert2, _) = renewed_ca.issue("localhost", &key2.public_key()).unwrap();
    std::fs::write(&cert_path, "not a certificate").unwrap();
    h.proc.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for_log(&h.proc, "was not reloaded (the current one stays)", 1).await;
    assert!(
        cli(Some(&dir.path().join("ca").join("ca.crt")))
            .status
            .success()
    );
    std::fs::write(&cert_path, cert2).unwrap();
    std::fs::write(&key_path, key2.pem()).unwrap();
    h.proc.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for_log(&h.proc, "the REST API's certificate was reloaded", 1).await;
    let renewed = cli(Some(&dir.path().join("ca2").join("ca.crt")));
    assert!(
        renewed.status.success(),
        "{}",
        String::from_utf8_lossy(&renewed.stderr)
    );
    assert!(
        !cli(Some(&dir.path().join("ca").join("ca.crt")))
            .status
            .success()
    );
    assert_eq!(h.proc.pid(), pid);
}
