//! Finding the database's primary among several hosts. `--database-url` may
//! list hosts as libpq does (`postgres://user@h1:5432,h2:5433/nereid`): the
//! headnode uses the one that takes writes (not in recovery) and, when that
//! one stops answering or turns into a standby, looks for the new primary
//! and points every pool at it. A URL with one host is used as given and
//! nothing is watched.
//!
//! It never promotes or fences anything: a manager (Patroni, an operator)
//! does that; a demoted primary must be stopped, since connections the
//! pools hold to it are only replaced as they fail.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};

/// How often the primary is checked, and how long a check may take.
const EVERY: Duration = Duration::from_secs(1);
const CHECK: Duration = Duration::from_secs(2);

/// The hosts of a database URL, one connect option each (libpq's
/// comma-separated host list; `target_session_attrs` is implied).
pub fn hosts(url: &str) -> anyhow::Result<Vec<PgConnectOptions>> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow::anyhow!("the database URL must start with postgres://"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostlist) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    // The one session attribute there is to ask for is implied.
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| !kv.starts_with("target_session_attrs="))
                .collect();
            if kept.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
        None => tail.to_string(),
    };
    hostlist
        .split(',')
        .map(|host| {
            let one = format!("{scheme}://{userinfo}{host}{tail}");
            let opts: PgConnectOptions = one
                .parse()
                .map_err(|e| anyhow::anyhow!("database host {host:?}: {e}"))?;
            Ok(opts.log_statements(tracing::log::LevelFilter::Trace))
        })
        .collect()
}

/// Whether this host answers and takes writes.
async fn is_primary(opts: &PgConnectOptions) -> bool {
    let check = async {
        let mut c = sqlx::PgConnection::connect_with(opts).await.ok()?;
        let (standby,): (bool,) = sqlx::query_as("SELECT pg_is_in_recovery()")
            .fetch_one(&mut c)
            .await
            .ok()?;
        let _ = c.close().await;
        Some(!standby)
    };
    matches!(tokio::time::timeout(CHECK, check).await, Ok(Some(true)))
}

/// The first of the hosts that takes writes.
pub async fn find(hosts: &[PgConnectOptions]) -> Option<usize> {
    for (i, h) in hosts.iter().enumerate() {
        if is_primary(h).await {
            return Some(i);
        }
    }
    None
}

/// The hosts, which one is the primary, and the pools that must follow it.
pub struct Primary {
    hosts: Vec<PgConnectOptions>,
    current: Mutex<usize>,
    pools: Mutex<Vec<PgPool>>,
}

impl Primary {
    pub fn new(hosts: Vec<PgConnectOptions>, current: usize) -> Arc<Primary> {
        Arc::new(Primary {
            hosts,
            current: Mutex::new(current),
            pools: Default::default(),
        })
    }

    /// Where new connections go now.
    pub fn options(&self) -> PgConnectOptions {
        self.hosts[*self.current.lock().expect("primary")].clone()
    }

    /// A pool whose new connections follow the primary.
    pub fn follow(&self, pool: &PgPool) {
        self.pools.lock().expect("primary pools").push(pool.clone());
    }

    /// Checks the primary every second (with more than one host).
    pub fn spawn_watch(self: &Arc<Self>) {
        if self.hosts.len() < 2 {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EVERY).await;
                if is_primary(&me.options()).await {
                    continue;
                }
                let Some(found) = find(&me.hosts).await else {
                    tracing::warn!("no database host takes writes; looking again");
                    continue;
                };
                let mut current = me.current.lock().expect("primary");
                if *current != found {
                    let to = &me.hosts[found];
                    tracing::warn!(
                        host = to.get_host(),
                        port = to.get_port(),
                        "the database's primary moved; new connections go there"
                    );
                    *current = found;
                    for p in me.pools.lock().expect("primary pools").iter() {
                        p.set_connect_options(to.clone());
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::hosts;

    #[test]
    fn a_host_list_is_one_url_per_host_and_a_single_host_stays_as_given() {
        let h = hosts("postgres://u:p@10.0.0.1:5432,10.0.0.2:5433/nereid?target_session_attrs=read-write&sslmode=disable").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].get_host(), h[0].get_port()), ("10.0.0.1", 5432));
        assert_eq!((h[1].get_host(), h[1].get_port()), ("10.0.0.2", 5433));
        assert_eq!(h[1].get_username(), "u");
        assert_eq!(h[1].get_database(), Some("nereid"));
        let one = hosts("postgres://postgres@127.0.0.1:5432/db").unwrap();
        assert_eq!(one.len(), 1);
        assert!(hosts("127.0.0.1:5432").is_err());
        assert!(hosts("postgres://u@,/db").is_err());
    }
}
