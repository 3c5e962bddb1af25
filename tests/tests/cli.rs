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
}
