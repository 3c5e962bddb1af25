//! A small datacenter for end-to-end tests: a headnode and N agent "nodes",
//! each in its own network namespace with its own file-backed zpool.
//!
//! Wiring (every name carries a per-test prefix `p`):
//! - management: host bridge `<p>a` (172.31.K.1, where the headnode listens),
//!   a veth per node into its namespace (`mgmt0`, 172.31.K.10+i);
//! - data: host bridge `<p>d` holding the instance network's gateway
//!   (10.213.K.1, so the host reaches instances), a veth per node whose node
//!   end `data0` is what the nic tag `admin` maps to.
//!
//! The catalog has the busybox image, the network `net` (10.213.K.0/24) and
//! the package `small` (256 MiB, 64 MiB of disk); with `vms`, also the
//! tiny-vm image and the package `vm` (kvm, 128 MiB, 1 vCPU, 64 MiB of disk).
//! Everything is removed on drop, also after a failed test.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::api::Api;
use crate::node::{clean_instances, upload_busybox, upload_tiny_vm, vm_pids};
use crate::procs::{Agent, AgentOpts, Headnode, HeadnodeOpts};
use crate::zfs::TestPool;

pub struct DcNode {
    pub agent: Agent,
    pub server_id: String,
    pub netns: String,
    pub pool: TestPool,
}

impl DcNode {
    pub fn runc_root(&self) -> std::path::PathBuf {
        self.agent.state.path().join("runc")
    }

    /// Datasets under the pool's instances/.
    pub fn instance_datasets(&self) -> Vec<String> {
        let out = Command::new("zfs")
            .args(["list", "-H", "-o", "name", "-r", "-t", "filesystem"])
            .arg(format!("{}/instances", self.pool.name))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect()
    }

    /// Links in the node's namespace whose names start with `prefix`.
    pub fn links(&self, prefix: &str) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-n", &self.netns, "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }
}

/// The links and namespaces of the wiring; removed on drop.
struct Wiring {
    links: Vec<String>,
    netns: Vec<String>,
}

impl Drop for Wiring {
    fn drop(&mut self) {
        for ns in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Datacenter {
    /// None only while it restarts.
    headnode: Option<Headnode>,
    pub nodes: Vec<DcNode>,
    pub network_id: String,
    pub image_id: String,
    /// "10.213.K"
    pub data_net: String,
    wiring: Wiring,
}

#[derive(Debug, Clone)]
pub struct DcOpts {
    pub nodes: usize,
    /// The memory each node offers (MiB).
    pub node_memory_mb: u64,
    pub headnode: HeadnodeOpts,
    /// Also the tiny-vm image and the `vm` package.
    pub vms: bool,
}

impl Default for DcOpts {
    fn default() -> Self {
        DcOpts {
            nodes: 2,
            node_memory_mb: 4096,
            headnode: HeadnodeOpts {
                heartbeat_interval_ms: 1000,
                args: [
                    "--job-lease-ms",
                    "2000",
                    "--reconcile-interval-ms",
                    "500",
                    "--fabric-nat-network",
                    "net",
                ]
                .map(String::from)
                .to_vec(),
                ..Default::default()
            },
            vms: false,
        }
    }
}

impl Datacenter {
    /// Everything up and every node schedulable; None (skipped) where ZFS is
    /// unusable outside CI.
    pub async fn start(opts: DcOpts) -> Option<Datacenter> {
        if !crate::zfs::available() {
            return None;
        }
        let p = crate::unique_name("nq");
        let k = {
            use std::sync::atomic::{AtomicU32, Ordering};
            static K: AtomicU32 = AtomicU32::new(0);
            (std::process::id() + 37 * K.fetch_add(1, Ordering::Relaxed)) % 250 + 2
        };
        let mgmt_net = format!("172.31.{k}");
        let data_net = format!("10.213.{k}");
        let mut wiring = Wiring {
            links: Vec::new(),
            netns: Vec::new(),
        };
        let (mgmt_br, data_br) = (format!("{p}a"), format!("{p}d"));
        for (br, addr) in [(&mgmt_br, &mgmt_net), (&data_br, &data_net)] {
            sh(&["link", "add", br, "type", "bridge"]);
            wiring.links.push(br.clone());
            sh(&["addr", "add", &format!("{addr}.1/24"), "dev", br]);
            sh(&["link", "set", br, "up"]);
        }
        for i in 0..opts.nodes {
            let ns = format!("{p}n{i}");
            sh(&["netns", "add", &ns]);
            wiring.netns.push(ns.clone());
            sh(&["-n", &ns, "link", "set", "lo", "up"]);
            for (host, guest, br) in [
                (format!("{p}a{i}"), "mgmt0", &mgmt_br),
                (format!("{p}d{i}"), "data0", &data_br),
            ] {
                sh(&[
                    "link", "add", &host, "type", "veth", "peer", "name", guest, "netns", &ns,
                ]);
                wiring.links.push(host.clone());
                sh(&["link", "set", &host, "master", br, "up"]);
                sh(&["-n", &ns, "link", "set", guest, "up"]);
            }
            sh(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{mgmt_net}.{}/24", 10 + i),
                "dev",
                "mgmt0",
            ]);
        }

        let mut hopts = opts.headnode.clone();
        hopts.rest_listen = format!("{mgmt_net}.1:0");
        hopts.grpc_listen = format!("{mgmt_net}.1:0");
        let headnode = Headnode::start(hopts).await;
        let op = headnode.operator();
        let mut nodes = Vec::new();
        for i in 0..opts.nodes {
            let ns = format!("{p}n{i}");
            let pool = TestPool::create("1G");
            let agent = Agent::start_opts(
                &headnode.grpc_url,
                &headnode.join_token().await,
                AgentOpts {
                    netns: Some(ns.clone()),
                    listen: Some(format!("{mgmt_net}.{}:0", 10 + i)),
                    memory_mb: Some(opts.node_memory_mb),
                    hostname: Some(format!("node{i}")),
                    ..Default::default()
                },
            );
            let server_id = agent.server_id().await;
            let (st, body) = op
                .post(
                    &format!("/v1/servers/{server_id}/setup"),
                    &json!({"zpool": pool.name, "nic_tags": {"admin": "data0", "underlay": "mgmt0"}}),
                )
                .await;
            assert_eq!(st, 200, "setup of node {i}: {body}");
            nodes.push(DcNode {
                agent,
                server_id,
                netns: ns,
                pool,
            });
        }
        let (image_id, _) = upload_busybox(&headnode).await;
        let (st, body) = op
            .post(&format!("/v1/images/{image_id}/activate"), &json!({}))
            .await;
        assert_eq!(st, 200, "{body}");
        let (st, body) = op.post("/v1/nictags", &json!({"name": "admin"})).await;
        assert_eq!(st, 201, "{body}");
        // Fabrics run over the management wiring.
        let (st, body) = op.post("/v1/nictags", &json!({"name": "underlay"})).await;
        assert_eq!(st, 201, "{body}");
        let (st, net) = op
            .post(
                "/v1/networks",
                &json!({"name": "net", "nic_tag": "admin", "subnet": format!("{data_net}.0/24"),
                        "gateway": format!("{data_net}.1"), "provision_start": format!("{data_net}.10"),
                        "provision_end": format!("{data_net}.250"), "resolvers": [format!("{data_net}.1")]}),
            )
            .await;
        assert_eq!(st, 201, "{net}");
        let (st, body) = op
            .post(
                "/v1/packages",
                &json!({"name": "small", "version": "1", "memory_mb": 256, "vcpus": 1, "disk_mb": 64,
                        "brand": "container"}),
            )
            .await;
        assert_eq!(st, 201, "{body}");
        if opts.vms {
            let (vm_image, _) = upload_tiny_vm(&headnode).await;
            let (st, body) = op
                .post(&format!("/v1/images/{vm_image}/activate"), &json!({}))
                .await;
            assert_eq!(st, 200, "{body}");
            let (st, body) = op
                .post(
                    "/v1/packages",
                    &json!({"name": "vm", "version": "1", "memory_mb": 128, "vcpus": 1, "disk_mb": 64,
                            "brand": "kvm"}),
                )
                .await;
            assert_eq!(st, 201, "{body}");
        }
        // Schedulable once each node's probes have reported runc (and QEMU).
        for n in &nodes {
            crate::wait_for(
                "the node's capabilities",
                Duration::from_secs(60),
                || async {
                    let (_, s) = op.get(&format!("/v1/servers/{}", n.server_id)).await;
                    let caps = &s["sysinfo"]["capabilities"];
                    (caps["runc"]["available"] == true
                        && (!opts.vms || caps["qemu"]["available"] == true)
                        && s["status"] == "running")
                        .then_some(())
                },
            )
            .await;
        }
        Some(Datacenter {
            headnode: Some(headnode),
            nodes,
            network_id: net["id"].as_str().unwrap().to_string(),
            image_id,
            data_net,
            wiring,
        })
    }

    pub fn headnode(&self) -> &Headnode {
        self.headnode.as_ref().expect("headnode running")
    }

    pub fn headnode_mut(&mut self) -> &mut Headnode {
        self.headnode.as_mut().expect("headnode running")
    }

    pub fn op(&self) -> Api {
        self.headnode().operator()
    }

    /// Kills the headnode (if it still runs) and starts it on the same
    /// database, state and ports, with `opts`.
    pub async fn restart_headnode(&mut self, opts: HeadnodeOpts) {
        let h = self.headnode.take().expect("headnode running");
        self.headnode = Some(h.restart_with(opts).await);
    }

    /// POST /v1/instances with busybox, `small` and `net`; returns (status, body).
    pub async fn create(&self, alias: &str, extra: Value) -> (u16, Value) {
        let mut body =
            json!({"alias": alias, "image": "busybox", "package": "small", "networks": ["net"]});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        self.op().post("/v1/instances", &body).await
    }

    /// A new tenant account and a client with its token: (account id, api).
    pub async fn tenant(&self, name: &str) -> (String, Api) {
        self.headnode().tenant(name).await
    }

    /// POST /v1/instances with tiny-vm, `vm` and `net` (a datacenter with `vms`).
    pub async fn create_vm(&self, alias: &str, extra: Value) -> (u16, Value) {
        let mut body = json!({"image": "tiny-vm", "package": "vm"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        self.create(alias, body).await
    }

    /// Creates an instance (`create`'s body, with `extra`), waits for its
    /// provision job to succeed; returns the instance.
    pub async fn provision(&self, alias: &str, extra: Value) -> Value {
        let (st, body) = self.create(alias, extra).await;
        assert_eq!(st, 202, "{body}");
        let job = self.wait_job(body["job_id"].as_str().unwrap()).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        self.instance(body["instance"]["id"].as_str().unwrap())
            .await
    }

    /// `start`, `stop`, `reboot` or `delete` of an instance, waited for;
    /// returns the (succeeded) job.
    pub async fn act(&self, id: &str, verb: &str) -> Value {
        let (st, body) = if verb == "delete" {
            self.op().delete(&format!("/v1/instances/{id}")).await
        } else {
            self.op()
                .post(&format!("/v1/instances/{id}/{verb}"), &json!({}))
                .await
        };
        assert_eq!(st, 202, "{verb}: {body}");
        let job = self.wait_job(body["job_id"].as_str().unwrap()).await;
        assert_eq!(job["state"], "succeeded", "{verb}: {job}");
        job
    }

    /// Waits until the instance is in `state` (node reports settle it);
    /// returns it.
    pub async fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        crate::wait_for(&format!("instance {id} to be {state}"), timeout, || async {
            let i = self.instance(id).await;
            (i["state"] == state).then_some(i)
        })
        .await
    }

    /// The instance's console, waited for until it holds `marker`.
    pub async fn wait_console(&self, id: &str, marker: &str, timeout: Duration) -> String {
        crate::wait_for(
            &format!("{marker:?} on the console of {id}"),
            timeout,
            || async {
                let (st, c) = self
                    .op()
                    .get(&format!("/v1/instances/{id}/console?tail=1000"))
                    .await;
                let text = c["text"].as_str().unwrap_or("").to_string();
                (st == 200 && text.contains(marker)).then_some(text)
            },
        )
        .await
    }

    /// Waits until the job ends; returns it.
    pub async fn wait_job(&self, job_id: &str) -> Value {
        let op = self.op();
        crate::wait_for("the job to end", Duration::from_secs(120), || async {
            let (st, j) = op.get(&format!("/v1/jobs/{job_id}")).await;
            (st == 200 && (j["state"] == "succeeded" || j["state"] == "failed")).then_some(j)
        })
        .await
    }

    pub async fn instance(&self, id: &str) -> Value {
        let (st, i) = self.op().get(&format!("/v1/instances/{id}")).await;
        assert_eq!(st, 200, "{i}");
        i
    }

    pub fn node_of(&self, instance: &Value) -> &DcNode {
        let server = instance["server_id"].as_str().expect("placed");
        self.nodes
            .iter()
            .find(|n| n.server_id == server)
            .expect("a node of this datacenter")
    }

    /// `runc exec` in an instance; returns (success, output).
    pub fn exec(&self, instance: &Value, args: &[&str]) -> (bool, String) {
        let node = self.node_of(instance);
        let out = Command::new("runc")
            .arg("--root")
            .arg(node.runc_root())
            .args(["exec", instance["id"].as_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// (used_ram_mb, used_disk_mb, used_vcpus) of every server, by server id.
    pub async fn capacity_used(&self) -> Vec<(String, i64, i64, i32)> {
        let mut db =
            <sqlx::PgConnection as sqlx::Connection>::connect(&self.headnode().database_url)
                .await
                .unwrap();
        sqlx::query_as(
            "SELECT id::text, used_ram_mb, used_disk_mb, used_vcpus FROM servers ORDER BY id",
        )
        .fetch_all(&mut db)
        .await
        .unwrap()
    }

    /// Addresses of the network held by anything.
    pub async fn taken_ips(&self) -> Vec<Value> {
        let (st, page) = self
            .op()
            .get(&format!("/v1/networks/{}/ips", self.network_id))
            .await;
        assert_eq!(st, 200, "{page}");
        page["items"].as_array().cloned().unwrap_or_default()
    }

    /// Asserts that no instance holds anything anywhere: datasets, host veths,
    /// addresses, capacity, unfinished jobs.
    pub async fn assert_nothing_held(&self) {
        for n in &self.nodes {
            assert_eq!(
                n.instance_datasets(),
                Vec::<String>::new(),
                "datasets left on {}",
                n.netns
            );
            assert_eq!(
                n.links("nv"),
                Vec::<String>::new(),
                "veths left on {}",
                n.netns
            );
            assert_eq!(
                n.links("nt"),
                Vec::<String>::new(),
                "taps left on {}",
                n.netns
            );
            assert_eq!(
                vm_pids(n.agent.state.path()),
                Vec::new(),
                "QEMU processes left on {}",
                n.netns
            );
            let runs = std::fs::read_dir(n.agent.state.path().join("vms"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(runs, 0, "VM run dirs left on {}", n.netns);
        }
        assert_eq!(
            self.taken_ips().await,
            Vec::<Value>::new(),
            "addresses left"
        );
        for (id, ram, disk, cpu) in self.capacity_used().await {
            assert_eq!((ram, disk, cpu), (0, 0, 0), "capacity left on server {id}");
        }
        let (_, jobs) = self.op().get("/v1/jobs?state=running").await;
        assert_eq!(jobs["items"], json!([]), "jobs still running");
    }
}

impl Drop for Datacenter {
    fn drop(&mut self) {
        // Agents first (Proc's drop kills them), then what their instances hold.
        for n in &mut self.nodes {
            n.agent.proc.kill();
            clean_instances(n.agent.state.path(), &n.pool.name);
        }
        self.nodes.clear();
        self.headnode = None;
        let _ = &self.wiring;
    }
}

/// The primary address of an instance.
pub fn ip_of(i: &Value) -> String {
    i["nics"][0]["ip"].as_str().unwrap().to_string()
}
