//! A whole test "node": a file-backed zpool, a headnode, an agent that joined
//! and was set up on that pool, the busybox image in the catalog, and a gRPC
//! client to the agent presenting a headnode certificate of the CA.

use std::time::Duration;

use nereid_proto::v1 as pb;
use nereid_proto::v1::agent_client::AgentClient;
use serde_json::json;
use tonic::transport::Channel;

use crate::procs::{Agent, Headnode, HeadnodeOpts};
use crate::zfs::TestPool;

pub type Client = AgentClient<Channel>;

pub struct TestNode {
    pub agent: Agent,
    pub headnode: Headnode,
    pub server_id: String,
    pub pool: TestPool,
    pub image_id: String,
    pub image_sha256: String,
}

impl TestNode {
    /// Everything up; None (test skipped) where ZFS is unusable outside CI.
    pub async fn start() -> Option<TestNode> {
        if !crate::zfs::available() {
            return None;
        }
        let pool = TestPool::create("1G");
        let headnode = Headnode::start(HeadnodeOpts::default()).await;
        let agent = Agent::start(&headnode.grpc_url, &headnode.join_token().await);
        let server_id = agent.server_id().await;
        let op = headnode.operator();
        let (st, body) = op
            .post(
                &format!("/v1/servers/{server_id}/setup"),
                &json!({"zpool": pool.name, "nic_tags": {"admin": "lo"}}),
            )
            .await;
        assert_eq!(st, 200, "{body}");
        let (image_id, image_sha256) = upload_busybox(&headnode).await;
        Some(TestNode {
            agent,
            headnode,
            server_id,
            pool,
            image_id,
            image_sha256,
        })
    }

    pub async fn client(&self) -> Client {
        let address = self.agent_address().await;
        AgentClient::new(self.headnode.agent_channel(&self.server_id, &address))
    }

    /// The agent's address changes when it restarts on port 0: connect to
    /// the port its log announces (once it listens).
    pub async fn client_after_restart(&self) -> Client {
        let port = self.agent_port_from_log().await;
        AgentClient::new(
            self.headnode
                .agent_channel(&self.server_id, &format!("127.0.0.1:{port}")),
        )
    }

    /// Lets the node fetch an image (the headnode records this before it
    /// asks a node to ensure one).
    pub async fn grant(&self, image_id: &str) {
        let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&self.headnode.database_url)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO image_grants (server_id, image_id) VALUES ($1::uuid, $2::uuid) ON CONFLICT DO NOTHING",
        )
        .bind(&self.server_id)
        .bind(image_id)
        .execute(&mut db)
        .await
        .unwrap();
    }

    /// The agent's gRPC address as the headnode has it.
    pub async fn agent_address(&self) -> String {
        let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&self.headnode.database_url)
            .await
            .unwrap();
        let (address,): (String,) =
            sqlx::query_as("SELECT agent_address FROM servers WHERE id = $1::uuid")
                .bind(&self.server_id)
                .fetch_one(&mut db)
                .await
                .unwrap();
        address
    }

    async fn agent_port_from_log(&self) -> String {
        crate::wait_for("the agent to listen", Duration::from_secs(30), || async {
            let log = self.agent.proc.current_log();
            let line = log
                .lines()
                .rev()
                .find(|l| l.contains("agent listening"))?
                .to_string();
            line.rsplit(':').next().map(|p| {
                p.trim()
                    .trim_end_matches(|c: char| !c.is_ascii_digit())
                    .to_string()
            })
        })
        .await
    }

    /// EnsureImage of the busybox image until `ready`; returns the phases seen.
    pub async fn ensure_image(&self, c: &mut Client) -> Result<Vec<String>, tonic::Status> {
        self.grant(&self.image_id).await;
        ensure_image(c, &self.image_id, &self.image_sha256).await
    }

    pub fn spec(&self, hostname: &str) -> pb::InstanceSpec {
        pb::InstanceSpec {
            id: uuid::Uuid::new_v4().to_string(),
            hostname: hostname.into(),
            image_id: self.image_id.clone(),
            brand: pb::Brand::Container.into(),
            vcpus: 0,
            memory_mb: 64,
            swap_mb: 0,
            cpu_cap: 100,
            disk_mb: 256,
            pids_limit: 256,
            generation: 1,
            nics: vec![],
            isolated_ids: false,
        }
    }

    /// Starts `n` instances named `<prefix><i>`; returns their ids.
    pub async fn start_instances(&self, c: &mut Client, prefix: &str, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..n {
            let spec = self.spec(&format!("{prefix}{i}"));
            ids.push(spec.id.clone());
            c.ensure_instance(pb::EnsureInstanceRequest {
                spec: Some(spec),
                start: true,
                metadata: None,
            })
            .await
            .unwrap();
        }
        ids
    }

    /// The runc root of the agent (for `runc exec` in tests).
    pub fn runc_root(&self) -> std::path::PathBuf {
        self.agent.state.path().join("runc")
    }

    /// Datasets under the pool's instances/.
    pub fn instance_datasets(&self) -> Vec<String> {
        let out = std::process::Command::new("zfs")
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
}

/// An agent's run state by its name ("running", "stopped", "failed").
pub fn state_name(s: i32) -> &'static str {
    match pb::RunState::try_from(s) {
        Ok(pb::RunState::Running) => "running",
        Ok(pb::RunState::Stopped) => "stopped",
        Ok(pb::RunState::Failed) => "failed",
        _ => "unspecified",
    }
}

/// EnsureImage until it ends (the node must be granted the image).
pub async fn ensure_image(
    c: &mut Client,
    id: &str,
    sha256: &str,
) -> Result<Vec<String>, tonic::Status> {
    let mut stream = c
        .ensure_image(pb::EnsureImageRequest {
            image_id: id.into(),
            sha256: sha256.into(),
            brand: pb::Brand::Container.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut phases = Vec::new();
    while let Some(p) = stream.message().await? {
        if phases.last() != Some(&p.phase) {
            phases.push(p.phase.clone());
        }
    }
    Ok(phases)
}

/// Builds a sample image of images/ (cached under target/nereid-images, one
/// build per test process); returns its directory (archive and manifest).
pub fn build_sample(name: &str) -> std::path::PathBuf {
    use sha2::Digest;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("target/nereid-images").join(name);
    let recipe = root.join("images").join(name);
    // The cache is for this recipe only: a changed one builds again.
    let mut h = sha2::Sha256::new();
    for f in ["build.sh", "manifest.json.in"] {
        h.update(std::fs::read(recipe.join(f)).unwrap());
    }
    // The metadata clients both samples carry.
    for f in ["build.sh", "mdata.c"] {
        h.update(std::fs::read(root.join("images/mdata").join(f)).unwrap());
    }
    let stamp = hex::encode(h.finalize());
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let built = std::fs::read_to_string(out.join(".recipe")).unwrap_or_default();
    if !out.join(format!("{name}.tar.gz")).exists() || built.trim() != stamp {
        let st = std::process::Command::new(recipe.join("build.sh"))
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "building the {name} sample image");
        std::fs::write(out.join(".recipe"), &stamp).unwrap();
    }
    out
}

/// Builds the busybox sample image (cached under target/) and uploads it.
pub async fn upload_busybox(h: &Headnode) -> (String, String) {
    let data = std::fs::read(build_sample("busybox").join("busybox.tar.gz")).unwrap();
    upload_file(h, "busybox", data).await
}

/// Builds the tiny-vm sample image and uploads it as the VM image `tiny-vm`.
pub async fn upload_tiny_vm(h: &Headnode) -> (String, String) {
    let data = std::fs::read(build_sample("tiny-vm").join("tiny-vm.tar.gz")).unwrap();
    upload_image(h, "tiny-vm", "vm", data).await
}

/// Creates a public container image with this content; returns (id, sha256).
pub async fn upload_file(h: &Headnode, name: &str, data: Vec<u8>) -> (String, String) {
    upload_image(h, name, "container", data).await
}

/// Creates a public image of this type (`container` or `vm`) with this
/// content; returns (id, sha256).
pub async fn upload_image(
    h: &Headnode,
    name: &str,
    image_type: &str,
    data: Vec<u8>,
) -> (String, String) {
    let op = h.operator();
    let (st, img) = op
        .post(
            "/v1/images",
            &json!({"name": name, "version": "1", "type": image_type, "os": "linux", "public": true}),
        )
        .await;
    assert_eq!(st, 201, "{img}");
    let id = img["id"].as_str().unwrap().to_string();
    let (st, img) = op
        .send(
            op.request(reqwest::Method::PUT, &format!("/v1/images/{id}/file"))
                .header("content-type", "application/octet-stream")
                .body(data),
        )
        .await;
    assert_eq!(st, 200, "{img}");
    (id, img["file"]["sha256"].as_str().unwrap().to_string())
}

/// A gzipped tar archive of these files (name, bytes), as image files are.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, name, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// The QEMU processes of an agent's VMs (pid per instance id), from its run dirs.
pub fn vm_pids(agent_state: &std::path::Path) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(agent_state.join("vms")) else {
        return out;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = std::fs::read_to_string(e.path().join("qemu.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let alive = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == id.as_bytes()));
        if alive {
            out.push((id, pid));
        }
    }
    out
}

impl Drop for TestNode {
    /// Removes what the agent's instances hold on the host even when a test
    /// failed half-way. The pool goes after, with its field.
    fn drop(&mut self) {
        self.agent.proc.kill();
        clean_instances(self.agent.state.path(), &self.pool.name);
    }
}

/// Removes what a node's instances hold on the host: containers and VMs
/// (they outlive a killed agent by design), network namespaces and cgroups.
pub fn clean_instances(agent_state: &std::path::Path, pool: &str) {
    use std::process::Command;
    for (_, pid) in vm_pids(agent_state) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let runc_root = agent_state.join("runc");
    let root = &runc_root;
    let mut ids: Vec<String> = Command::new("zfs")
        .args(["list", "-H", "-o", "name", "-r", "-t", "filesystem"])
        .arg(format!("{pool}/instances"))
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .skip(1)
                .filter_map(|d| d.rsplit('/').next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(out) = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .output()
    {
        ids.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    ids.sort();
    ids.dedup();
    for id in &ids {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["delete", "-f", id])
            .output();
        // A container whose runc state is gone: kill what is left in its cgroup.
        if let Ok(procs) =
            std::fs::read_to_string(format!("/sys/fs/cgroup/pids/nereid/{id}/cgroup.procs"))
        {
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("nrd-{id}")])
            .output();
        let userns = format!("/run/nereid/userns/{id}");
        let _ = nix::mount::umount2(userns.as_str(), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&userns);
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                let _ = std::fs::remove_dir(c.path().join("nereid").join(id));
            }
        }
    }
    // The node's fabric NATs (their namespaces are host-global names).
    if let Ok(nats) = std::fs::read_dir(agent_state.join("nat")) {
        for n in nats.flatten() {
            let ns = n.file_name().to_string_lossy().into_owned();
            if ns.starts_with("nrg-") {
                let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            }
        }
    }
    // The shared parent goes once empty (fails harmlessly while others use it).
    if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
        for c in controllers.flatten() {
            let _ = std::fs::remove_dir(c.path().join("nereid"));
        }
    }
}
