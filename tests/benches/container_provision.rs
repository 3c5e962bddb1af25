//! Benchmark (prints, asserts nothing): EnsureInstance -> running for the
//! busybox container through the agent, against the same steps done by hand
//! in one shell script (zfs clone, netns, config.json, runc run), medians and
//! ratio; the same script with the agent's config without its user
//! namespace and seccomp profile (what they cost); unpacking the busybox
//! image shifted into the container id range against unshifted; then the
//! agent's resident memory when idle with 20 containers.
//!
//!   deploy/dev bench

use std::process::Command;
use std::time::{Duration, Instant};

use nereid_proto::v1 as pb;
use nereid_tests::node::TestNode;
use nereid_tests::procs::rss_kib;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let runs: usize = nereid_tests::bench_setting("NEREID_BENCH_RUNS", 10);
    let node = TestNode::start()
        .await
        .expect("ZFS must be usable for this benchmark");
    let mut c = node.client().await;
    node.ensure_image(&mut c).await.unwrap();

    // Through the agent.
    let mut agent_times = Vec::new();
    let mut template = String::new();
    for i in 0..runs {
        let spec = node.spec(&format!("bench{i}"));
        let id = spec.id.clone();
        let t = Instant::now();
        let st = c
            .ensure_instance(pb::EnsureInstanceRequest {
                spec: Some(spec),
                start: true,
                metadata: None,
            })
            .await
            .unwrap()
            .into_inner();
        agent_times.push(t.elapsed());
        assert_eq!(nereid_tests::node::state_name(st.state), "running");
        if template.is_empty() {
            template = std::fs::read_to_string(
                node.agent
                    .state
                    .path()
                    .join("bundles")
                    .join(&id)
                    .join("config.json"),
            )
            .unwrap()
            .replace(&id, "@ID@");
        }
        c.delete_instance(pb::InstanceRef { id }).await.unwrap();
    }

    // By hand, the same steps in one script.
    let snap = format!("{}/images/{}@final", node.pool.name, node.image_id);
    let root = node.agent.state.path().join("bench-runc");
    let bundles = node.agent.state.path().join("bench-bundles");
    std::fs::create_dir_all(&bundles).unwrap();
    std::fs::write(bundles.join("template.json"), &template).unwrap();
    // The same config without the user namespace, without seccomp, and
    // without either (a privileged container): where the cost goes.
    let base: serde_json::Value = serde_json::from_str(&template).unwrap();
    let without = |userns: bool, seccomp: bool| {
        let mut c = base.clone();
        let linux = c["linux"].as_object_mut().unwrap();
        if !userns {
            linux.remove("uidMappings");
            linux.remove("gidMappings");
            linux["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "user");
        }
        if !seccomp {
            linux.remove("seccomp");
        }
        serde_json::to_string(&c).unwrap()
    };
    let variants = [
        ("template.json", template.clone()),
        ("userns-only.json", without(true, false)),
        ("seccomp-only.json", without(false, true)),
        ("privileged.json", without(false, false)),
    ];
    for (name, body) in &variants {
        std::fs::write(bundles.join(name), body).unwrap();
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    for i in 0..variants.len() * runs {
        let v = i % variants.len();
        let template = variants[v].0;
        let id = uuid::Uuid::new_v4().to_string();
        let ds = format!("{}/instances/{id}", node.pool.name);
        let script = format!(
            "set -e
             zfs clone -o quota=256M -o atime=off {snap} {ds}
             mkdir -p /run/netns /run/nereid/userns
             touch /run/nereid/userns/{id} /run/netns/nrd-{id}
             unshare --user --net sleep 60 & p=$!
             until [ \"$(readlink /proc/$p/ns/user)\" != \"$(readlink /proc/self/ns/user)\" ]; do :; done
             echo '0 1000000000 65536' > /proc/$p/uid_map
             echo '0 1000000000 65536' > /proc/$p/gid_map
             mount --bind /proc/$p/ns/user /run/nereid/userns/{id}
             mount --bind /proc/$p/ns/net /run/netns/nrd-{id}
             kill $p
             ip -n nrd-{id} link set lo up
             mkdir -p {b}/{id}
             sed 's/@ID@/{id}/g' {b}/{template} > {b}/{id}/config.json
             runc --root {root} run -d --bundle {b}/{id} {id} </dev/null >{b}/{id}/log 2>&1 || {{ cat {b}/{id}/log >&2; exit 1; }}",
            b = bundles.display(),
            root = root.display(),
        );
        let t = Instant::now();
        let st = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .status()
            .unwrap();
        times[v].push(t.elapsed());
        assert!(st.success());
        let cleanup = format!(
            "runc --root {root} delete -f {id}; umount -l /run/nereid/userns/{id} /run/netns/nrd-{id}; rm -f /run/nereid/userns/{id} /run/netns/nrd-{id}; zfs unmount -f {ds}; zfs destroy -f {ds} 2>/dev/null; \
             for c in /sys/fs/cgroup/*/nereid/{id}; do rmdir $c 2>/dev/null; done; true",
            root = root.display()
        );
        Command::new("bash")
            .arg("-c")
            .arg(&cleanup)
            .status()
            .unwrap();
    }
    let [m, u, sc, p]: [Duration; 4] = times
        .into_iter()
        .map(median)
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let a = median(agent_times);
    println!(
        "EnsureInstance -> running, median of {runs}: agent {:.1} ms, by hand {:.1} ms, ratio {:.2} (goal <= 1.25)",
        a.as_secs_f64() * 1e3,
        m.as_secs_f64() * 1e3,
        a.as_secs_f64() / m.as_secs_f64()
    );
    println!(
        "user namespace + seccomp, by hand, median of {runs}: with {:.1} ms, without {:.1} ms: they cost {:+.1}% (goal <= 5%)",
        m.as_secs_f64() * 1e3,
        p.as_secs_f64() * 1e3,
        (m.as_secs_f64() / p.as_secs_f64() - 1.0) * 100.0
    );
    println!(
        "  of which, by hand: user namespace alone {:.1} ms ({:+.1}%), seccomp alone {:.1} ms ({:+.1}%)",
        u.as_secs_f64() * 1e3,
        (u.as_secs_f64() / p.as_secs_f64() - 1.0) * 100.0,
        sc.as_secs_f64() * 1e3,
        (sc.as_secs_f64() / p.as_secs_f64() - 1.0) * 100.0
    );

    // Unpacking the image, shifted into the container range or not, on the pool.
    let archive = nereid_tests::node::build_sample("busybox").join("busybox.tar.gz");
    let mnt = node.pool.mountpoint();
    let (mut shifted, mut plain) = (Vec::new(), Vec::new());
    for i in 0..2 * runs {
        let shift = (i % 2 == 0).then_some(1_000_000_000u32);
        let ds = format!("{}/bench-unpack{i}", node.pool.name);
        let ok = Command::new("zfs").args(["create", &ds]).status().unwrap();
        assert!(ok.success());
        let dir = mnt.join(format!("bench-unpack{i}"));
        let t = Instant::now();
        nereid_agent::unpack::unpack_tar_gz(
            &archive,
            &dir,
            nereid_agent::unpack::Options {
                max_bytes: 1 << 30,
                shift,
            },
        )
        .unwrap();
        if shift.is_some() {
            shifted.push(t.elapsed());
        } else {
            plain.push(t.elapsed());
        }
        // zfs-fuse calls a dataset just written busy: unmount it first.
        let _ = Command::new("zfs").args(["unmount", "-f", &ds]).output();
        let _ = Command::new("zfs").args(["destroy", "-f", &ds]).output();
    }
    let (s, u) = (median(shifted), median(plain));
    println!(
        "unpacking the busybox image, median of {runs}: shifted into the container range {:.1} ms, unshifted {:.1} ms (once per image and node)",
        s.as_secs_f64() * 1e3,
        u.as_secs_f64() * 1e3
    );

    // Idle memory with 20 containers.
    let ids = node.start_instances(&mut c, "idle", 20).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = rss_kib(node.agent.proc.pid());
    println!(
        "agent RSS idle with 20 containers: {:.1} MiB (goal < 20 MiB)",
        rss as f64 / 1024.0
    );
    for id in ids {
        c.delete_instance(pb::InstanceRef { id }).await.unwrap();
    }
}
