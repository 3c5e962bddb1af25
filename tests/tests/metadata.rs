//! A way into instances: SSH keys, the metadata service read with the
//! sample image's own `mdata-get` inside real containers (each instance sees
//! its own metadata and nobody else's), the user-script run at boot, tag and
//! metadata changes seen inside without a restart, rename and deletion
//! protection; and the bad input each gets a 4xx for.

use std::process::Command;
use std::time::Duration;

use nereid_tests::api::{assert_error, assert_error_says};
use nereid_tests::datacenter::{Datacenter, DcOpts};
use serde_json::{Value, json};

/// A fresh key pair made by ssh-keygen: (public key line, what `ssh-keygen -l`
/// prints for it).
fn keygen(kind: &str, dir: &std::path::Path) -> (String, String) {
    let path = dir.join(format!("id_{kind}"));
    let st = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            kind,
            "-N",
            "",
            "-C",
            &format!("me@{kind}"),
            "-f",
        ])
        .arg(&path)
        .status()
        .expect("ssh-keygen (openssh-client) is installed");
    assert!(st.success());
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    let listed = Command::new("ssh-keygen")
        .arg("-l")
        .arg("-f")
        .arg(path.with_extension("pub"))
        .output()
        .unwrap();
    (
        public.trim().to_string(),
        String::from_utf8(listed.stdout).unwrap().trim().to_string(),
    )
}

/// `mdata-get KEY` inside the instance: Ok(Some(value)), Ok(None) when it
/// exits 1 (no such key), Err(what it said) on any other failure.
fn mdata(dc: &Datacenter, inst: &Value, key: &str) -> Result<Option<String>, String> {
    let (ok, out) = dc.exec(
        inst,
        &[
            "sh",
            "-c",
            &format!("mdata-get '{key}' 2>&1; echo \"exit=$?\""),
        ],
    );
    assert!(ok, "{out}");
    let (value, code) = out.trim_end().rsplit_once("exit=").unwrap();
    match code {
        "0" => Ok(Some(value.strip_suffix('\n').unwrap_or(value).to_string())),
        "1" => Ok(None),
        other => Err(format!("mdata-get {key} exited {other}: {value}")),
    }
}

fn mdata_get(dc: &Datacenter, inst: &Value, key: &str) -> Option<String> {
    mdata(dc, inst, key).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until `mdata-get KEY` answers `want` (pushes are asynchronous, and
/// a restarting agent answers nothing for a moment).
async fn until_mdata(dc: &Datacenter, inst: &Value, key: &str, want: Option<&str>) {
    nereid_tests::wait_for(
        &format!("mdata-get {key} to be {want:?}"),
        Duration::from_secs(30),
        || async { (mdata(dc, inst, key) == Ok(want.map(String::from))).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_read_their_own_metadata_and_run_their_user_script() {
    let Some(mut dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (public, _) = keygen("ed25519", keys.path());
    let (st, body) = dc
        .op()
        .post("/v1/keys", &json!({"name": "laptop", "key": public}))
        .await;
    assert_eq!(st, 201, "{body}");

    let script = "#!/bin/sh\necho ran > /tmp/marker\nmdata-get sdc:alias > /tmp/alias\n";
    let a = dc
        .provision(
            "md-a",
            json!({"metadata": {"user-script": script, "color": "blue"}, "tags": {"role": "web", "n": 3}}),
        )
        .await;
    let b = dc
        .provision("md-b", json!({"metadata": {"color": "red"}}))
        .await;
    let a_id = a["id"].as_str().unwrap();

    // Each reads its own, through the socket only it can reach.
    assert_eq!(mdata_get(&dc, &a, "sdc:uuid").as_deref(), Some(a_id));
    assert_eq!(mdata_get(&dc, &b, "sdc:uuid").as_deref(), b["id"].as_str());
    assert_eq!(mdata_get(&dc, &a, "color").as_deref(), Some("blue"));
    assert_eq!(mdata_get(&dc, &b, "color").as_deref(), Some("red"));
    assert_eq!(mdata_get(&dc, &b, "user-script"), None);
    assert_eq!(mdata_get(&dc, &a, "sdc:tags.role").as_deref(), Some("web"));
    assert_eq!(mdata_get(&dc, &a, "sdc:tags.n").as_deref(), Some("3"));
    assert_eq!(
        mdata_get(&dc, &a, "root_authorized_keys").as_deref(),
        Some(public.as_str())
    );
    let nics: Value = serde_json::from_str(&mdata_get(&dc, &a, "sdc:nics").unwrap()).unwrap();
    assert_eq!(nics[0]["ip"], a["nics"][0]["ip"]);
    let (ok, listing) = dc.exec(&a, &["ls", "-A", "/native/.zonecontrol"]);
    assert!(ok && listing.trim() == "metadata.sock", "{listing}");
    let (ok, keys_listed) = dc.exec(&a, &["mdata-list"]);
    assert!(ok, "{keys_listed}");
    let mut listed: Vec<&str> = keys_listed.lines().collect();
    listed.sort();
    assert_eq!(listed, ["color", "root_authorized_keys", "user-script"]);

    // The user-script ran at boot.
    nereid_tests::wait_for(
        "the user-script's marker",
        Duration::from_secs(30),
        || async {
            let (ok, out) = dc.exec(&a, &["cat", "/tmp/marker", "/tmp/alias"]);
            (ok && out == "ran\nmd-a\n").then_some(())
        },
    )
    .await;

    // Changes through the API are seen inside without a restart.
    let op = dc.op();
    let (st, tags) = op
        .post(
            &format!("/v1/instances/{a_id}/tags"),
            &json!({"role": "db"}),
        )
        .await;
    assert_eq!((st, &tags), (200, &json!({"role": "db", "n": 3})));
    until_mdata(&dc, &a, "sdc:tags.role", Some("db")).await;
    let (_, listed) = op.get("/v1/instances?tag=role=db").await;
    assert_eq!(listed["items"][0]["id"], a["id"]);
    let (st, md) = op
        .put(
            &format!("/v1/instances/{a_id}/metadata"),
            &json!({"color": "green"}),
        )
        .await;
    assert_eq!((st, &md), (200, &json!({"color": "green"})));
    until_mdata(&dc, &a, "color", Some("green")).await;
    assert_eq!(mdata_get(&dc, &a, "user-script"), None);
    let (st, _) = op
        .post(
            &format!("/v1/instances/{a_id}/rename"),
            &json!({"alias": "md-a2"}),
        )
        .await;
    assert_eq!(st, 200);
    until_mdata(&dc, &a, "sdc:alias", Some("md-a2")).await;

    // The instance writes its own keys, never the sdc: ones.
    let (ok, out) = dc.exec(&a, &["mdata-put", "note", "hello there"]);
    assert!(ok, "{out}");
    assert_eq!(mdata_get(&dc, &a, "note").as_deref(), Some("hello there"));
    let (ok, _) = dc.exec(&a, &["mdata-put", "sdc:uuid", "someone-else"]);
    assert!(!ok, "the sdc: namespace is read-only");
    assert_eq!(mdata_get(&dc, &a, "sdc:uuid").as_deref(), Some(a_id));
    let (ok, out) = dc.exec(&a, &["mdata-delete", "note"]);
    assert!(ok, "{out}");
    assert_eq!(mdata_get(&dc, &a, "note"), None);

    // A restarted agent serves the same metadata again.
    dc.nodes[0].agent.restart_in_place(vec![]);
    until_mdata(&dc, &a, "color", Some("green")).await;
    assert_eq!(mdata_get(&dc, &b, "color").as_deref(), Some("red"));

    // A change made while the agent is down reaches it when it is back.
    dc.nodes[0].agent.proc.kill();
    let (st, _) = op
        .post(
            &format!("/v1/instances/{a_id}/metadata"),
            &json!({"late": "yes"}),
        )
        .await;
    assert_eq!(st, 200);
    dc.nodes[0].agent.restart_in_place(vec![]);
    until_mdata(&dc, &a, "late", Some("yes")).await;

    // Deleting an instance removes its metadata service.
    let state = dc.nodes[0].agent.state.path().join("metadata");
    assert!(state.join(b["id"].as_str().unwrap()).exists());
    dc.act(b["id"].as_str().unwrap(), "delete").await;
    assert!(!state.join(b["id"].as_str().unwrap()).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_metadata_rename_and_deletion_protection_refuse_bad_input() {
    let Some(dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let a = dc
        .provision("guarded", json!({"deletion_protection": true}))
        .await;
    dc.provision("other", json!({})).await;
    let id = a["id"].as_str().unwrap();
    let op = dc.op();
    let path = |p: &str| format!("/v1/instances/{id}/{p}");

    // Deletion protection: no delete, forced or not, until it is off.
    assert_eq!(a["deletion_protection"], true);
    assert_error_says(
        &op.delete(&format!("/v1/instances/{id}")).await,
        409,
        "Conflict",
        "deletion protection",
    );
    assert_error(
        &op.delete(&format!("/v1/instances/{id}?force=true")).await,
        409,
        "Conflict",
    );
    assert_eq!(dc.instance(id).await["state"], "running");

    // Tags and metadata: limits hold on the result, types are checked.
    assert_error_says(
        &op.post(&path("tags"), &json!({"bad": {"nested": 1}})).await,
        400,
        "InvalidArgument",
        "string, number or boolean",
    );
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("t{i}"), json!("x"))).collect();
    assert_error_says(
        &op.put(&path("tags"), &Value::Object(many)).await,
        400,
        "InvalidArgument",
        "at most 64 tags",
    );
    assert_error(
        &op.post(&path("metadata"), &json!({"n": 5})).await,
        400,
        "InvalidArgument",
    );
    assert_error_says(
        &op.post(&path("metadata"), &json!({"sdc:uuid": "x"})).await,
        400,
        "InvalidArgument",
        "read-only",
    );
    assert_error_says(
        &op.post(&path("metadata"), &json!({"big": "x".repeat(70 * 1024)}))
            .await,
        400,
        "InvalidArgument",
        "bytes",
    );
    assert_error(&op.get(&path("tags/nope")).await, 404, "NotFound");
    assert_error(&op.delete(&path("metadata/nope")).await, 404, "NotFound");
    let (st, _) = op.post(&path("tags"), &json!({"a": "1", "b": true})).await;
    assert_eq!(st, 200);
    assert_eq!(op.get(&path("tags/b")).await, (200, json!(true)));
    assert_eq!(op.delete(&path("tags/a")).await.0, 204);
    assert_eq!(op.delete(&path("tags")).await.0, 204);
    assert_eq!(op.get(&path("tags")).await, (200, json!({})));

    // Rename: aliases stay unique and valid.
    assert_error(
        &op.post(&path("rename"), &json!({"alias": "other"})).await,
        409,
        "Conflict",
    );
    assert_error(
        &op.post(&path("rename"), &json!({"alias": "no spaces"}))
            .await,
        400,
        "InvalidArgument",
    );

    // Another tenant sees none of it.
    let (_, tenant) = dc.tenant("md-stranger").await;
    assert_error(&tenant.get(&path("tags")).await, 404, "NotFound");
    assert_error(
        &tenant.post(&path("metadata"), &json!({"x": "y"})).await,
        404,
        "NotFound",
    );
    assert_error(
        &tenant
            .post(&path("disable-deletion-protection"), &json!({}))
            .await,
        404,
        "NotFound",
    );

    // Off: the delete goes through.
    let (st, body) = op
        .post(&path("disable-deletion-protection"), &json!({}))
        .await;
    assert_eq!((st, &body["deletion_protection"]), (200, &json!(false)));
    dc.act(id, "delete").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_keys_show_the_fingerprints_ssh_keygen_shows_and_bad_keys_are_refused() {
    let h = nereid_tests::procs::Headnode::start(Default::default()).await;
    let op = h.operator();
    let dir = tempfile::tempdir().unwrap();
    for kind in ["ed25519", "rsa", "ecdsa"] {
        let (public, listed) = keygen(kind, dir.path());
        let (st, key) = op.post("/v1/keys", &json!({"key": public})).await;
        assert_eq!(st, 201, "{key}");
        // `ssh-keygen -l`: "<bits> <fingerprint> <comment> (<type>)".
        let shown = format!(
            "{} {} {} ({})",
            key["bits"],
            key["fingerprint"].as_str().unwrap(),
            key["name"].as_str().unwrap(),
            key["type"].as_str().unwrap()
        );
        assert_eq!(shown, listed);
        assert_eq!(key["name"], format!("me@{kind}"));
    }
    let other = tempfile::tempdir().unwrap();
    let (public, _) = keygen("ed25519", other.path());
    let (_, listed) = op.get("/v1/keys").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);

    // The same key twice, or a name twice: 409.
    let (st, first) = op
        .post("/v1/keys", &json!({"name": "one", "key": public}))
        .await;
    assert_eq!(st, 201, "{first}");
    assert_error(
        &op.post("/v1/keys", &json!({"name": "two", "key": public}))
            .await,
        409,
        "Conflict",
    );
    let rsa = std::fs::read_to_string(dir.path().join("id_rsa.pub")).unwrap();
    assert_error(
        &op.post("/v1/keys", &json!({"name": "one", "key": rsa}))
            .await,
        409,
        "Conflict",
    );

    // Malformed keys, private keys, weak keys: 400 with the reason.
    let private = std::fs::read_to_string(other.path().join("id_ed25519")).unwrap();
    assert_error_says(
        &op.post("/v1/keys", &json!({"key": private})).await,
        400,
        "InvalidArgument",
        "private key",
    );
    let cut = &public[..public.len() - 20];
    assert_error(
        &op.post("/v1/keys", &json!({"key": cut})).await,
        400,
        "InvalidArgument",
    );
    assert_error(
        &op.post("/v1/keys", &json!({"key": "hello world"})).await,
        400,
        "InvalidArgument",
    );
    let small = dir.path().join("small");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "1024", "-N", "", "-f"])
        .arg(&small)
        .status()
        .unwrap();
    if st.success() {
        let weak = std::fs::read_to_string(small.with_extension("pub")).unwrap();
        assert_error_says(
            &op.post("/v1/keys", &json!({"key": weak})).await,
            400,
            "InvalidArgument",
            "at least 2048",
        );
    }

    // Tenants see and remove only their own; by name or by fingerprint.
    let (_, tenant) = h.tenant("keyholder").await;
    assert_eq!(tenant.get("/v1/keys").await.1["items"], json!([]));
    assert_error(&tenant.get("/v1/keys/one").await, 404, "NotFound");
    assert_error(&tenant.delete("/v1/keys/one").await, 404, "NotFound");
    let fp = first["fingerprint"].as_str().unwrap();
    let encoded: String = fp
        .bytes()
        .map(|b| match b {
            b'/' => "%2F".to_string(),
            b'+' => "%2B".to_string(),
            b':' => "%3A".to_string(),
            b => (b as char).to_string(),
        })
        .collect();
    assert_eq!(
        op.get(&format!("/v1/keys/{encoded}")).await.1["name"],
        "one"
    );
    assert_eq!(op.delete(&format!("/v1/keys/{encoded}")).await.0, 204);
    assert_error(&op.get("/v1/keys/one").await, 404, "NotFound");
}
