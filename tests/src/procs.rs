//! Real headnode and agent processes for tests. Each runs from the workspace's
//! built binaries with its own temporary state dir and log file; dropping the
//! handle kills the process (and prints the log tail if the test failed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// The directory holding the workspace's binaries (target/debug), found from
/// the test executable's path (target/debug/deps/<test>), or NEREID_BIN_DIR.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NEREID_BIN_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap()
    } else {
        dir
    };
    dir.to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace` (deploy/dev test does)",
        p.display()
    );
    p
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Resident memory of a process in KiB (0 if it is gone).
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        cmd.env("NEREID_LOG", "info,sqlx=warn");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            child: Some(child),
            log,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("process is running").id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 10 s).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..200 {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log since the last restart marker.
    pub fn current_log(&self) -> String {
        let text = self.log_text();
        match text.rfind(RESTART_MARKER) {
            Some(i) => text[i..].to_string(),
            None => text,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of {} ({}) ---\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log)
            );
        }
    }
}

#[derive(Debug, Clone)]
pub struct HeadnodeOpts {
    pub heartbeat_interval_ms: u64,
    /// Where REST and gRPC listen (port 0 picks free ports; a restart keeps them).
    pub rest_listen: String,
    pub grpc_listen: String,
    /// Extra flags, e.g. `--job-lease-ms 1500`.
    pub args: Vec<String>,
    /// Extra environment (e.g. NEREID_HEADNODE_FAULT for crash tests).
    pub env: Vec<(String, String)>,
}

impl Default for HeadnodeOpts {
    fn default() -> Self {
        HeadnodeOpts {
            heartbeat_interval_ms: 5000,
            rest_listen: "127.0.0.1:0".into(),
            grpc_listen: "127.0.0.1:0".into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

pub struct Headnode {
    pub proc: Proc,
    pub state: TempDir,
    pub database_url: String,
    pub rest_url: String,
    pub grpc_url: String,
    pub opts: HeadnodeOpts,
}

impl Headnode {
    /// Starts a headnode on a fresh database.
    pub async fn start(opts: HeadnodeOpts) -> Headnode {
        let db = crate::pg::fresh_database().await;
        Headnode::start_on(
            db,
            tempfile::Builder::new()
                .prefix("nereid-headnode-")
                .tempdir()
                .unwrap(),
            opts,
        )
        .await
    }

    /// Starts a headnode on this database and state dir.
    pub async fn start_on(database_url: String, state: TempDir, opts: HeadnodeOpts) -> Headnode {
        let run_file = state.path().join("headnode.json");
        let _ = std::fs::remove_file(&run_file);
        let mut cmd = Command::new(bin("nereid-headnode"));
        cmd.arg("--database-url")
            .arg(&database_url)
            .args([
                "--rest-listen",
                &opts.rest_listen,
                "--grpc-listen",
                &opts.grpc_listen,
            ])
            .arg("--state-dir")
            .arg(state.path())
            .arg("--heartbeat-interval-ms")
            .arg(opts.heartbeat_interval_ms.to_string())
            .args(&opts.args)
            .envs(opts.env.iter().cloned());
        let proc = Proc::spawn("headnode", cmd, state.path().join("headnode.log"));
        let mut h = Headnode {
            proc,
            state,
            database_url,
            rest_url: String::new(),
            grpc_url: String::new(),
            opts,
        };
        let run: serde_json::Value =
            crate::wait_for("the headnode's run file", Duration::from_secs(30), || {
                let p = run_file.clone();
                async move {
                    std::fs::read(&p)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                }
            })
            .await;
        let scheme = if run["rest_tls"] == true {
            "https"
        } else {
            "http"
        };
        h.rest_url = format!("{scheme}://{}", run["rest"].as_str().unwrap());
        h.grpc_url = format!("http://{}", run["grpc"].as_str().unwrap());
        h
    }

    /// Kills the process with SIGKILL and starts it again on the same database and state dir.
    pub async fn restart(self) -> Headnode {
        let opts = self.opts.clone();
        self.restart_with(opts).await
    }

    /// Kills the process with SIGKILL (if it still runs) and starts it again
    /// on the same database, state dir and ports, with `opts`.
    pub async fn restart_with(self, mut opts: HeadnodeOpts) -> Headnode {
        let Headnode {
            mut proc,
            state,
            database_url,
            rest_url,
            grpc_url,
            ..
        } = self;
        proc.kill();
        opts.rest_listen = rest_url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_string();
        opts.grpc_listen = grpc_url.trim_start_matches("http://").to_string();
        Headnode::start_on(database_url, state, opts).await
    }

    pub fn operator_token(&self) -> String {
        std::fs::read_to_string(self.state.path().join("operator-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn operator(&self) -> crate::api::Api {
        crate::api::Api::new(&self.rest_url, &self.operator_token())
    }

    /// A new tenant account and a client with its token: (account id, api).
    pub async fn tenant(&self, name: &str) -> (String, crate::api::Api) {
        let op = self.operator();
        let (st, acct) = op
            .post(
                "/v1/accounts",
                &serde_json::json!({"name": name, "role": "tenant"}),
            )
            .await;
        assert_eq!(st, 201, "{acct}");
        let id = acct["id"].as_str().unwrap().to_string();
        let (st, tok) = op
            .post(
                "/v1/tokens",
                &serde_json::json!({"account_id": id, "name": "main"}),
            )
            .await;
        assert_eq!(st, 201, "{tok}");
        let api = crate::api::Api::new(&self.rest_url, tok["secret"].as_str().unwrap());
        (id, api)
    }

    /// The headnode's CA (from its state dir).
    pub fn ca(&self) -> nereid_tls::Ca {
        nereid_tls::Ca::load_or_create(&self.state.path().join("pki")).unwrap()
    }

    /// A channel to the agent of `server_id` at `address`, presenting a
    /// headnode certificate of this headnode's CA (as the headnode does).
    pub fn agent_channel(&self, server_id: &str, address: &str) -> tonic::transport::Channel {
        let ca = self.ca();
        let identity = ca.identity(nereid_tls::HEADNODE_NAME).unwrap();
        let config =
            nereid_tls::client_config(Some(identity), nereid_tls::Trust::Ca(ca.cert_der.clone()));
        nereid_tls::Connector::new(config, &nereid_tls::node_name(server_id))
            .unwrap()
            .channel(address, |e| e)
            .unwrap()
    }

    /// A new single-use join token.
    pub async fn join_token(&self) -> String {
        let (st, body) = self
            .operator()
            .post("/v1/servers/join-tokens", &serde_json::json!({}))
            .await;
        assert_eq!(st, 201, "{body}");
        body["token"].as_str().unwrap().to_string()
    }
}

#[derive(Debug, Clone, Default)]
pub struct AgentOpts {
    pub machine_id: String,
    pub hostname: Option<String>,
    pub join_token: Option<String>,
    /// Extra environment (e.g. NEREID_AGENT_FAULT for crash tests).
    pub env: Vec<(String, String)>,
    /// Run inside this network namespace (`nsenter --net`).
    pub netns: Option<String>,
    /// Where the agent listens; default 127.0.0.1:0.
    pub listen: Option<String>,
    /// `--memory-mb`: the memory the node offers.
    pub memory_mb: Option<u64>,
    /// `--nft-table`: unique per agent (set by `Agent::start_opts`).
    pub nft_table: String,
}

fn spawn_agent(headnode_grpc: &str, opts: &AgentOpts, state: &Path) -> Proc {
    // Later readers of the (appended) log look only past the last marker.
    let log = state.join("agent.log");
    if log.exists() {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(f, "{RESTART_MARKER}").unwrap();
    }
    let mut cmd = match &opts.netns {
        // Only the network namespace changes (not the mount namespace, as with
        // `ip netns exec`): the namespaces and mounts the agent makes are the host's.
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg(bin("nereid-agent"));
            c
        }
        None => Command::new(bin("nereid-agent")),
    };
    let listen = opts.listen.as_deref().unwrap_or("127.0.0.1:0");
    cmd.arg("--headnode")
        .arg(headnode_grpc)
        .arg("--state-dir")
        .arg(state)
        .args(["--listen", listen, "--machine-id", &opts.machine_id])
        .args(["--metrics-listen", "127.0.0.1:0"]);
    if !opts.nft_table.is_empty() {
        cmd.args(["--nft-table", &opts.nft_table]);
    }
    if let Some(mb) = opts.memory_mb {
        cmd.args(["--memory-mb", &mb.to_string()]);
    }
    if let Some(h) = &opts.hostname {
        cmd.args(["--hostname", h]);
    }
    if let Some(t) = &opts.join_token {
        cmd.args(["--join-token", t]);
    }
    cmd.envs(opts.env.iter().cloned());
    Proc::spawn("agent", cmd, log)
}

/// Written into an agent's log before each restart.
pub const RESTART_MARKER: &str = "--- nereid-tests: agent restarted ---";

pub struct Agent {
    pub proc: Proc,
    pub state: TempDir,
    pub headnode_grpc: String,
    pub machine_id: String,
    /// What it was started with (restarts keep it, minus the join token).
    pub opts: AgentOpts,
    /// Its nftables table, deleted when the agent goes (after its process:
    /// fields drop in order).
    _nft: NftTable,
}

/// An agent's nftables tables (bridge and inet families), deleted on drop.
struct NftTable {
    name: String,
    netns: Option<String>,
}

impl Drop for NftTable {
    fn drop(&mut self) {
        for family in ["bridge", "inet"] {
            let mut cmd = match &self.netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns.as_str(), "nft"]);
                    c
                }
                None => Command::new("nft"),
            };
            let _ = cmd.args(["delete", "table", family, &self.name]).output();
        }
    }
}

impl Agent {
    /// Starts an agent that joins with `join_token` under a unique machine id.
    pub fn start(headnode_grpc: &str, join_token: &str) -> Agent {
        Agent::start_opts(headnode_grpc, join_token, AgentOpts::default())
    }

    /// Like `start`, with these options (machine id and join token are set here).
    pub fn start_opts(headnode_grpc: &str, join_token: &str, mut opts: AgentOpts) -> Agent {
        opts.machine_id = format!("test-{}", uuid::Uuid::new_v4().simple());
        opts.join_token = Some(join_token.into());
        Agent::start_with(
            headnode_grpc,
            opts,
            tempfile::Builder::new()
                .prefix("nereid-agent-")
                .tempdir()
                .unwrap(),
        )
    }

    pub fn start_with(headnode_grpc: &str, mut opts: AgentOpts, state: TempDir) -> Agent {
        if opts.nft_table.is_empty() {
            opts.nft_table = crate::unique_name("nrdt");
        }
        let nft = NftTable {
            name: opts.nft_table.clone(),
            netns: opts.netns.clone(),
        };
        Agent::spawn(headnode_grpc, opts, state, nft)
    }

    fn spawn(headnode_grpc: &str, opts: AgentOpts, state: TempDir, nft: NftTable) -> Agent {
        let proc = spawn_agent(headnode_grpc, &opts, state.path());
        Agent {
            proc,
            state,
            headnode_grpc: headnode_grpc.into(),
            machine_id: opts.machine_id.clone(),
            opts: AgentOpts {
                join_token: None,
                ..opts
            },
            _nft: nft,
        }
    }

    /// Kills the agent (SIGKILL) and starts it again in place, with the same
    /// state dir and options, and this extra environment.
    pub fn restart_in_place(&mut self, env: Vec<(String, String)>) {
        self.proc.kill();
        let opts = AgentOpts {
            env,
            ..self.opts.clone()
        };
        self.proc = spawn_agent(&self.headnode_grpc, &opts, self.state.path());
    }

    /// Kills the agent (SIGKILL) and starts it again with the same state dir.
    pub fn restart(self) -> Agent {
        let Agent {
            mut proc,
            state,
            headnode_grpc,
            opts,
            _nft,
            ..
        } = self;
        proc.kill();
        Agent::spawn(
            &headnode_grpc,
            AgentOpts {
                env: Vec::new(),
                ..opts
            },
            state,
            _nft,
        )
    }

    /// The `GET /metrics` URL of the running agent (from the run file it
    /// writes once listening; only reachable when it runs in the host's
    /// network namespace).
    pub async fn metrics_url(&self) -> String {
        let path = self.state.path().join("agent.json");
        let pid = self.proc.pid();
        crate::wait_for("the agent's run file", Duration::from_secs(60), || {
            let p = path.clone();
            async move {
                let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
                if v["pid"].as_i64()? != i64::from(pid) {
                    return None;
                }
                v["metrics"].as_str().map(|a| format!("http://{a}/metrics"))
            }
        })
        .await
    }

    /// The server id, once the agent has joined.
    pub async fn server_id(&self) -> String {
        let path = self.state.path().join("identity.json");
        crate::wait_for("the agent to join", Duration::from_secs(60), || {
            let p = path.clone();
            async move {
                let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
                v["server_id"].as_str().map(str::to_string)
            }
        })
        .await
    }
}
