//! Benchmark (prints, asserts nothing) of the firewall on two nodes:
//! (a) with 1,000 enabled rules: from `POST /v1/fwrules` of one more rule to
//!     that rule being in the nftables table of every node that runs an
//!     affected (firewalled) instance, median of the runs;
//! (b) the set a node then holds (1,000+ rules): the agent rendering it and
//!     applying it with `nft -f`, against `nft -f` of the same text by hand,
//!     in a scratch network namespace, alternating, medians and ratio
//!     (goal <= 1.2x and < 100 ms).
//!
//!   deploy/dev bench

use std::process::Command;
use std::time::{Duration, Instant};

use nereid_agent::net::firewall::script;
use nereid_proto::v1 as pb;
use nereid_tests::datacenter::{Datacenter, DcOpts};
use serde_json::json;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn nft_in(netns: &str, args: &[&str], input: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace removed on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::main]
async fn main() {
    let runs: usize = nereid_tests::bench_setting("NEREID_BENCH_RUNS", 5);
    let rules: usize = nereid_tests::bench_setting("NEREID_BENCH_RULES", 1000);
    let mut opts = DcOpts::default();
    opts.headnode.args.clear();
    let dc = Datacenter::start(opts)
        .await
        .expect("ZFS must be usable for this benchmark");
    let mut insts = Vec::new();
    for i in 0..4 {
        insts.push(
            dc.provision(
                &format!("fw{i}"),
                json!({"firewall_enabled": true, "tags": {"role": "web"}}),
            )
            .await,
        );
    }
    let affected: Vec<usize> = dc
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            insts
                .iter()
                .any(|i| i["server_id"].as_str() == Some(n.server_id.as_str()))
        })
        .map(|(k, _)| k)
        .collect();

    let t = Instant::now();
    for k in 0..rules {
        let rule = format!(
            "FROM ip 10.{}.{}.{} TO tag role=web ALLOW tcp PORT {}",
            100 + k / 65536,
            (k / 256) % 256,
            k % 256,
            1000 + k % 50000
        );
        let (st, body) = dc
            .op()
            .post("/v1/fwrules", &json!({"rule": rule, "enabled": true}))
            .await;
        assert_eq!(st, 201, "{body}");
    }
    println!(
        "created {rules} enabled rules in {:.1} s (each pushed to the nodes as it came)",
        t.elapsed().as_secs_f64()
    );

    // (a) POST -> in every affected node's table.
    let mut took = Vec::new();
    for r in 0..runs {
        let port = 60000 + r;
        let marker = format!("tcp dport {port} accept");
        let t = Instant::now();
        let (st, body) = dc
            .op()
            .post(
                "/v1/fwrules",
                &json!({"rule": format!("FROM any TO tag role=web ALLOW tcp PORT {port}"),
                        "enabled": true}),
            )
            .await;
        assert_eq!(st, 201, "{body}");
        for &k in &affected {
            let n = &dc.nodes[k];
            while !nft_in(
                &n.netns,
                &["list", "table", "inet", &n.agent.opts.nft_table],
                None,
            )
            .contains(&marker)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        took.push(t.elapsed());
    }
    println!(
        "(a) POST /v1/fwrules -> enforced on {} node(s) with {} rules: median {:.0} ms of {runs} ({:?} ms)",
        affected.len(),
        rules + runs,
        ms(median(took.clone())),
        took.iter().map(|d| ms(*d).round()).collect::<Vec<_>>()
    );

    // (b) The set one node holds: agent render + nft -f, against nft -f by hand.
    let node = &dc.nodes[affected[0]];
    let bytes = std::fs::read(node.agent.state.path().join("firewall.pb")).unwrap();
    let set: pb::FirewallSet = prost::Message::decode(bytes.as_slice()).unwrap();
    let lines: usize = set
        .instances
        .iter()
        .map(|i| i.inbound.len() + i.outbound.len())
        .sum();
    let scratch = Netns(nereid_tests::unique_name("nqfw"));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &scratch.0])
            .status()
            .unwrap()
            .success()
    );
    let text = script("bench", &set).unwrap();
    let (mut agent, mut by_hand) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(5) * 2 {
        let t = Instant::now();
        let rendered = script("bench", &set).unwrap();
        nft_in(&scratch.0, &["-f", "-"], Some(&rendered));
        agent.push(t.elapsed());
        let t = Instant::now();
        nft_in(&scratch.0, &["-f", "-"], Some(&text));
        by_hand.push(t.elapsed());
    }
    let (a, h) = (median(agent), median(by_hand));
    println!(
        "(b) a set of {} instances and {lines} compiled rules ({} lines of nft): agent render + nft -f {:.1} ms, nft -f by hand {:.1} ms, ratio {:.2} (goal <= 1.2, < 100 ms)",
        set.instances.len(),
        text.lines().count(),
        ms(a),
        ms(h),
        a.as_secs_f64() / h.as_secs_f64()
    );
    for i in &insts {
        dc.act(i["id"].as_str().unwrap(), "delete").await;
    }
}
