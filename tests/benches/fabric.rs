//! Benchmark (prints, asserts nothing) of a fabric's data path on two nodes:
//! TCP throughput between two containers on different nodes over the
//! fabric (VXLAN on the nodes' management link), against two containers on
//! different nodes of the plain bridged network (their veths on the nodes'
//! bridges, joined by the host's bridge), alternating, median of the runs.
//! The traffic runs in the containers' own network namespaces (python3's
//! sockets: busybox's `nc` stops after its first kilobyte here).
//!
//!   deploy/dev bench

use std::process::{Command, Stdio};
use std::time::Duration;

use nereid_tests::datacenter::{Datacenter, DcOpts, ip_of};
use serde_json::{Value, json};

const SERVER: &str = "import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 5001)); s.listen(1)
c, _ = s.accept(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    n += len(b)
c.sendall(str(n).encode()); c.close()";

const CLIENT: &str = "import socket, sys, time
mb = int(sys.argv[2]); buf = b'\\0' * (1 << 20)
for _ in range(100):
    try:
        s = socket.create_connection((sys.argv[1], 5001)); break
    except OSError: time.sleep(0.05)
t = time.monotonic()
for _ in range(mb): s.sendall(buf)
s.shutdown(socket.SHUT_WR); got = int(s.recv(64)); dt = time.monotonic() - t
assert got == mb << 20, got
print(dt)";

fn netns(i: &Value) -> String {
    format!("nrd-{}", i["id"].as_str().unwrap())
}

/// MB/s from `from` to `to` (each in its container's network namespace).
fn throughput(from: &Value, to: &Value, mb: u64) -> f64 {
    let server = Command::new("ip")
        .args(["netns", "exec", &netns(to), "python3", "-c", SERVER])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &netns(from), "python3", "-c", CLIENT])
        .args([ip_of(to), mb.to_string()])
        .output()
        .unwrap();
    let _ = server.wait_with_output();
    assert!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    mb as f64 / secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let runs: usize = nereid_tests::bench_setting("NEREID_BENCH_RUNS", 5);
    let mb: u64 = nereid_tests::bench_setting("NEREID_BENCH_MB", 512);
    let dc = Datacenter::start(DcOpts::default())
        .await
        .expect("ZFS must be usable for this benchmark");
    let (alice_id, alice) = dc.tenant("alice").await;
    let (st, v) = alice
        .post("/v1/fabrics/vlans", &json!({"vlan_id": 2, "name": "bench"}))
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, n) = alice
        .post(
            "/v1/fabrics/vlans/2/networks",
            &json!({"name": "fab", "subnet": "192.168.90.0/24",
                    "provision_start": "192.168.90.10", "provision_end": "192.168.90.20"}),
        )
        .await;
    assert_eq!(st, 201, "{n}");
    let on = |node: usize, network: &str| {
        json!({"owner": alice_id, "networks": [network],
               "affinity": [format!("server=={}", dc.nodes[node].server_id)]})
    };
    let f0 = dc.provision("f0", on(0, "fab")).await;
    let f1 = dc.provision("f1", on(1, "fab")).await;
    let p0 = dc.provision("p0", on(0, "net")).await;
    let p1 = dc.provision("p1", on(1, "net")).await;
    for (a, b) in [(&f0, &f1), (&p0, &p1)] {
        nereid_tests::wait_for(
            "the peers to reach each other",
            Duration::from_secs(30),
            || async {
                dc.exec(a, &["ping", "-c", "1", "-W", "1", &ip_of(b)])
                    .0
                    .then_some(())
            },
        )
        .await;
    }
    let (mut fabric, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        fabric.push(throughput(&f0, &f1, mb));
        plain.push(throughput(&p0, &p1, mb));
    }
    let (f, p) = (median(fabric.clone()), median(plain.clone()));
    println!(
        "TCP throughput between two containers on two nodes, {mb} MiB per run, {runs} runs alternating:"
    );
    println!("  fabric (VXLAN, MTU 1450): median {f:.0} MiB/s, runs {fabric:.0?}");
    println!("  plain bridged network (MTU 1500): median {p:.0} MiB/s, runs {plain:.0?}");
    println!("  fabric / plain: {:.2}", f / p);
}
