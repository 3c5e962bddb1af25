//! The REST API keeps the contract its OpenAPI document states: schemathesis
//! (installed from PyPI by `deploy/dev` into `target/schemathesis-venv`) runs
//! every check against a live headnode with the operator's token, and any
//! finding (a 5xx, a status the document does not list, a schema-valid
//! request refused, a schema-violating one accepted, an answer that does not
//! match its schema) fails this test.
//!
//! Bounded: a fixed seed and a small number of examples per operation, so the
//! run takes a few minutes and is the same run every time.

use std::path::PathBuf;
use std::process::Command;

use nereid_tests::procs::{Headnode, HeadnodeOpts};
use serde_json::json;

/// The schemathesis executable: `NEREID_SCHEMATHESIS`, else the venv `deploy/dev` makes.
fn schemathesis() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NEREID_SCHEMATHESIS") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/schemathesis-venv/bin/schemathesis");
    venv.exists().then_some(venv)
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_in_the_served_openapi_document() {
    let Some(st) = schemathesis() else {
        assert!(
            !nereid_tests::must_not_skip(),
            "schemathesis is not installed (deploy/dev test installs it into target/schemathesis-venv)"
        );
        eprintln!("skipped: schemathesis is not installed");
        return;
    };
    let h = Headnode::start(HeadnodeOpts {
        // Schemathesis sends thousands of requests with one token.
        args: ["--requests-per-token", "1000000"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await;
    // Something to find: a tenant with a key, a network, a package.
    let op = h.operator();
    let (_, alice) = h.tenant("alice").await;
    let (s, _) = alice
        .post(
            "/v1/keys",
            &json!({"name": "k1", "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a@b"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, body) = op.get("/v1/networks").await;
    assert_eq!(s, 200, "{body}");

    let report = h.state.path().join("schemathesis");
    let out = Command::new(&st)
        .arg("run")
        .arg(format!("{}/openapi.json", h.rest_url))
        .args([
            "-H",
            &format!("Authorization: Bearer {}", h.operator_token()),
        ])
        .args(["--checks", "all", "--max-examples", "4", "--seed", "1"])
        .args(["--workers", "1", "--generation-database", "none"])
        .arg("--report-dir")
        .arg(&report)
        .current_dir(h.state.path())
        .env(
            "SCHEMATHESIS_HOOKS",
            concat!(env!("CARGO_MANIFEST_DIR"), "/schemathesis/hooks.py"),
        )
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "schemathesis found something (exit {:?}); its output is above",
        out.status.code()
    );
    // A run that tested nothing would pass too: make sure it covered the
    // API (its summary says `Tested: <n>`; 87 operations today).
    let tested: usize = text
        .split("Tested: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("schemathesis's summary names how many operations it tested");
    assert!(tested >= 80, "schemathesis tested only {tested} operations");
    // The headnode survived every request.
    assert_eq!(h.operator().get("/v1/accounts").await.0, 200);
}
