//! The `nereid` CLI against a real headnode: tables, JSON, profiles, and
//! errors as one line with the API's code and a non-zero exit.

use std::process::Command;

use nereid_tests::procs::{Agent, Headnode, HeadnodeOpts, bin};

fn nereid(h: &Headnode, args: &[&str]) -> std::process::Output {
    Command::new(bin("nereid"))
        .args(args)
        .env("NEREID_URL", &h.rest_url)
        .env("NEREID_TOKEN", h.operator_token())
        .env("HOME", "/nonexistent")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_lists_servers_creates_accounts_and_reports_errors_in_one_line() {
    let h = Headnode::start(HeadnodeOpts::default()).await;

    let out = nereid(&h, &["server", "join-token", "create"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("nrdjoin_"));
    let agent = Agent::start(&h.grpc_url, &token);
    let id = agent.server_id().await;

    let out = nereid(&h, &["server", "list", "-o", "json"]);
    assert!(out.status.success());
    let servers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(servers[0]["id"], id.as_str());
    let out = nereid(&h, &["server", "list"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("HOSTNAME") && table.contains(&id), "{table}");

    let out = nereid(
        &h,
        &[
            "account", "create", "carol", "--role", "tenant", "-o", "json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let carol: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // Lists show one page (--limit, default 100) and say when there is
    // more; --all follows the pages and counts (the operator and carol).
    let out = nereid(&h, &["account", "list", "--limit", "1"]);
    let (table, note) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert_eq!(
        table.lines().count(),
        2,
        "a header and one account: {table}"
    );
    assert!(note.contains("1 accounts shown; there are more"), "{note}");
    let out = nereid(&h, &["account", "list", "--all"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "2 accounts");
    let out = nereid(&h, &["account", "list", "--limit", "1", "-o", "json"]);
    let one: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert!(out.stderr.is_empty());
    let out = nereid(
        &h,
        &[
            "token",
            "create",
            "--name",
            "laptop",
            "--account",
            carol["id"].as_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();

    // A profile file works like the environment.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &secret).unwrap();
    let profile = dir.path().join("profile.toml");
    std::fs::write(
        &profile,
        format!(
            "url = \"{}\"\ntoken_file = \"{}\"\n",
            h.rest_url,
            token_file.display()
        ),
    )
    .unwrap();
    let out = Command::new(bin("nereid"))
        .args(["account", "list", "-o", "json", "--profile"])
        .arg(&profile)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accounts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(accounts.as_array().unwrap().len(), 1);
    assert_eq!(accounts[0]["name"], "carol");

    // Errors: one line, the API's code, non-zero exit.
    let out = Command::new(bin("nereid"))
        .args(["server", "list", "--profile"])
        .arg(&profile)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: Forbidden: "), "{err}");
    let out = nereid(&h, &["server", "get", "not-a-uuid"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: InvalidArgument: "));
    let out = Command::new(bin("nereid"))
        .args(["server", "list"])
        .env("NEREID_URL", "http://127.0.0.1:1")
        .env("NEREID_TOKEN", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the headnode"));

    // The audit log shows what was done above, newest first.
    let out = nereid(&h, &["audit", "list", "--action", "token.", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
    assert_eq!(entries[0]["owner"], carol["id"]);
    let out = nereid(&h, &["audit", "list", "--limit", "3"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table.lines().nth(1).unwrap().contains("token.create"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_imports_the_busybox_sample_image_and_creates_a_package_and_a_network() {
    let h = Headnode::start(HeadnodeOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../images/busybox/build.sh");
    let out = Command::new(script).arg(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.path().join("busybox.tar.gz");
    let manifest = dir.path().join("manifest.json");

    let out = nereid(
        &h,
        &[
            "image",
            "import",
            "--file",
            file.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(image["state"], "active");
    assert_eq!(image["name"], "busybox");
    assert_eq!(
        image["file"]["size"],
        std::fs::metadata(&file).unwrap().len()
    );
    // A second import of the same name and version is refused and leaves no half-made image.
    let out = nereid(
        &h,
        &[
            "image",
            "import",
            "--file",
            file.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: Conflict: "));
    let out = nereid(&h, &["image", "list", "-o", "json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let ok = |args: &[&str]| {
        let out = nereid(&h, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    ok(&[
        "package", "create", "--name", "small", "--memory", "256", "--disk", "2048",
    ]);
    ok(&["nictag", "create", "admin"]);
    let net: serde_json::Value = serde_json::from_str(&ok(&[
        "network",
        "create",
        "--name",
        "dev",
        "--nic-tag",
        "admin",
        "--subnet",
        "10.66.0.0/24",
        "--gateway",
        "10.66.0.1",
        "--start",
        "10.66.0.10",
        "--end",
        "10.66.0.20",
        "-o",
        "json",
    ]))
    .unwrap();
    let id = net["id"].as_str().unwrap();
    assert_eq!(ok(&["network", "ip", "reserve", id]).trim(), "10.66.0.10");
    assert_eq!(
        ok(&["network", "ip", "reserve", id, "--ip", "10.66.0.15"]).trim(),
        "10.66.0.15"
    );
    assert!(ok(&["network", "ip", "list", id]).contains("10.66.0.15"));
    ok(&["network", "ip", "free", id, "10.66.0.15"]);
    let out = nereid(
        &h,
        &[
            "network",
            "create",
            "--name",
            "bad",
            "--nic-tag",
            "admin",
            "--subnet",
            "10.66.0.0/33",
            "--start",
            "a",
            "--end",
            "b",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: InvalidArgument: subnet:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_an_instance_with_wait_shows_its_job_and_deletes_it() {
    use nereid_tests::datacenter::{Datacenter, DcOpts};
    let Some(dc) = Datacenter::start(DcOpts {
        nodes: 1,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let h = dc.headnode();
    let out = nereid(
        h,
        &[
            "instance",
            "create",
            "--image",
            "busybox",
            "--package",
            "small",
            "--network",
            "net",
            "--alias",
            "cli1",
            "--wait",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    // The live view names every step as it ends; the result is the running instance.
    for step in [
        "allocate_nics",
        "ensure_image",
        "ensure_instance",
        "mark_running",
    ] {
        assert!(stderr.contains(&format!("ok provision {step}")), "{stderr}");
    }
    assert!(stderr.contains("job provision succeeded"), "{stderr}");
    assert!(
        stdout.contains("running") && stdout.contains(&dc.data_net),
        "{stdout}"
    );

    let out = nereid(h, &["instance", "list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["alias"], "cli1");
    let out = nereid(h, &["job", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("provision") && table.contains("succeeded"),
        "{table}"
    );

    // Aliases work where ids do; a second start of a running instance is fine,
    // a wrong one is one line with the API's code.
    let out = nereid(h, &["instance", "stop", "cli1", "--wait", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inst: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inst["state"], "stopped");
    // An image made from it, waited for (the job's steps live) and activated.
    let out = nereid(
        h,
        &[
            "image",
            "create",
            "cli1",
            "cli1-img",
            "1.0",
            "--activate",
            "-o",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(image["state"], "active", "{image}");
    assert_eq!(image["origin"], inst["image_id"], "{image}");
    assert!(image["file"]["size"].as_u64().unwrap() > 0, "{image}");
    let out = nereid(h, &["image", "delete", image["id"].as_str().unwrap()]);
    assert!(out.status.success());

    let out = nereid(h, &["instance", "reboot", "cli1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Conflict") && err.lines().count() == 1,
        "{err}"
    );

    let out = nereid(h, &["instance", "delete", "cli1", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dc.assert_nothing_held().await;
}
