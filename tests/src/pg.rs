//! A throwaway PostgreSQL cluster, started once per test process from the
//! system's binaries on a free port, in a temporary directory.
//!
//! The postmaster runs under a small shell that holds a pipe from this
//! process: when the test process exits (normally, by panic or by a signal)
//! the pipe closes, the shell stops PostgreSQL and removes the directory.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    /// Held for the life of the process: its closing stops PostgreSQL.
    _guard: Mutex<std::process::ChildStdin>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries are not installed (/usr/lib/postgresql); run deploy/dev test")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("no PostgreSQL version under /usr/lib/postgresql")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The tests' settings: no fsync (tests do not survive power loss).
const TEST_SETTINGS: &str = "-c fsync=off -c max_connections=300 -c shared_buffers=32MB";

/// Production settings for measurements (the simulator): fsync and
/// synchronous commits on, memory for a large database.
pub const PRODUCTION_SETTINGS: &str = "-c fsync=on -c synchronous_commit=on -c max_connections=400 \
     -c shared_buffers=2GB -c work_mem=16MB -c maintenance_work_mem=512MB -c max_wal_size=8GB \
     -c checkpoint_timeout=15min -c shared_preload_libraries=pg_stat_statements \
     -c pg_stat_statements.track=all";

fn start() -> Cluster {
    Cluster::start(TEST_SETTINGS)
}

impl Cluster {
    /// A cluster of its own with these `postgres -c` settings, stopped and
    /// removed when this process exits.
    pub fn start(settings: &str) -> Cluster {
        let bin = pg_bin();
        let dir = std::env::temp_dir().join(format!(
            "nereid-pg-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(dir.join("sock")).unwrap();
        let pg = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("no postgres user");
        for p in [dir.clone(), dir.join("data"), dir.join("sock")] {
            nix::unistd::chown(&p, Some(pg.uid), Some(pg.gid)).unwrap();
        }
        std::fs::set_permissions(dir.join("data"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-D"])
            .arg(dir.join("data"))
            .args(["-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster::launch(&bin, dir, settings)
    }

    /// Runs the postmaster on the data directory under `dir` with a free
    /// port, stopped and the directory removed when this process exits.
    fn launch(bin: &std::path::Path, dir: PathBuf, settings: &str) -> Cluster {
        let port = free_port();
        let script = format!(
            "{postgres} -D {dir}/data -p {port} -c listen_addresses=127.0.0.1 -k {dir}/sock {settings} \
         >{dir}/postgres.log 2>&1 & pid=$!; \
         read _; kill -INT $pid; wait $pid; rm -rf {dir}",
            postgres = bin.join("postgres").display(),
            dir = dir.display(),
        );
        let mut child = Command::new("runuser")
            .args(["-u", "postgres", "--", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .expect("starting postgres");
        let stdin = child.stdin.take().unwrap();
        // The shell is reaped by nobody once we exit; that is fine, init adopts it.
        std::mem::forget(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Accepting TCP is not yet accepting queries; psql tells.
                let ok = Command::new("runuser")
                    .args(["-u", "postgres", "--", "psql", "-h"])
                    .arg(dir.join("sock"))
                    .args(["-p", &port.to_string(), "-tAc", "SELECT 1"])
                    .stderr(Stdio::null())
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                if ok {
                    return Cluster {
                        port,
                        dir,
                        _guard: Mutex::new(stdin),
                    };
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "PostgreSQL did not start; see {}/postgres.log",
            dir.display()
        );
    }

    /// A streaming replica of this cluster (a base backup, then the WAL as
    /// it is written), with the same settings, on a port of its own.
    pub fn start_replica(&self, settings: &str) -> Cluster {
        let bin = pg_bin();
        let dir = std::env::temp_dir().join(format!(
            "nereid-pg-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("sock")).unwrap();
        let pg = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("no postgres user");
        for p in [dir.clone(), dir.join("sock")] {
            nix::unistd::chown(&p, Some(pg.uid), Some(pg.gid)).unwrap();
        }
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-R", "-X", "stream", "--no-sync"])
            .output()
            .expect("running pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster::launch(&bin, dir, settings)
    }

    /// Runs SQL on this cluster as the superuser, through psql.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--", "psql", "-h"])
            .arg(self.dir.join("sock"))
            .args(["-p", &self.port.to_string(), "-tAc", sql])
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Makes every commit wait for a standby to have it on disk (so a
    /// commit acknowledged here survives this cluster's death), once one
    /// is streaming synchronously.
    pub fn require_synchronous_standby(&self) {
        self.psql("ALTER SYSTEM SET synchronous_standby_names = '*'");
        self.psql("SELECT pg_reload_conf()");
        for _ in 0..200 {
            if self.psql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
                == "1"
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the standby did not become synchronous");
    }

    /// Kills the postmaster and its backends with SIGKILL (a crash).
    pub fn kill(&self) {
        for p in self.processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Promotes this standby to primary and waits until it takes writes.
    pub fn promote(&self) {
        assert_eq!(self.psql("SELECT pg_promote(true, 60)"), "t");
    }

    pub fn get() -> &'static Cluster {
        CLUSTER.get_or_init(start)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The postmaster and its backends.
    fn processes(&self) -> Vec<i32> {
        let pid: i32 = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok())
            .expect("the postmaster's pid file");
        let mut pids = vec![pid];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .nth(1)?
                        .parse()
                        .ok()
                });
            if ppid == Some(pid) {
                pids.push(child);
            }
        }
        pids
    }

    /// Freezes the whole cluster (SIGSTOP): every query waits, as in an
    /// outage where the database stops answering. For a test process of its
    /// own: every test of the process shares the cluster.
    pub fn freeze(&self) {
        for p in self.processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGSTOP,
            );
        }
    }

    pub fn thaw(&self) {
        for p in self.processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }
}

/// A fresh, empty database on the shared cluster; returns its URL.
pub async fn fresh_database() -> String {
    Cluster::get().fresh_database().await
}

impl Cluster {
    /// A fresh, empty database on this cluster; returns its URL.
    pub async fn fresh_database(&self) -> String {
        let cluster = self;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&cluster.url("postgres"))
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        cluster.url(&name)
    }
}
