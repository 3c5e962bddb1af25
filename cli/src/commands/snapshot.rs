//! `nereid instance snapshot ...`: ZFS snapshots of an instance.

use nereid_api::{Snapshot, SnapshotCreate, SnapshotRollback, SnapshotRolledBack};

use super::instance::resolve;
use crate::client::Client;
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot an instance (running or not).
    Create {
        id: String,
        /// Default: the time, as 20261128T213715Z.
        #[arg(long)]
        name: Option<String>,
    },
    List {
        id: String,
    },
    Delete {
        id: String,
        name: String,
    },
    /// Roll a stopped instance back (newer snapshots are destroyed).
    Rollback {
        id: String,
        name: String,
        /// Start it afterwards.
        #[arg(long)]
        start: bool,
    },
}

fn table(list: &[Snapshot]) {
    output::table(
        &["NAME", "STATE", "USED", "CREATED"],
        list.iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.state.clone(),
                    output::bytes(s.used_bytes),
                    super::time(&Some(s.created_at)),
                ]
            })
            .collect(),
    )
}

pub async fn run(c: &Client, fmt: Format, cmd: SnapshotCmd) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::Create { id, name } => {
            let id = resolve(c, &id).await?;
            let s: Snapshot = c
                .post(
                    &format!("/v1/instances/{id}/snapshots"),
                    &SnapshotCreate { name },
                )
                .await?;
            match fmt {
                Format::Json => output::json(&s),
                Format::Table => table(&[s]),
            }
        }
        SnapshotCmd::List { id } => {
            let id = resolve(c, &id).await?;
            let list: Vec<Snapshot> = c.get(&format!("/v1/instances/{id}/snapshots"), &[]).await?;
            match fmt {
                Format::Json => output::json(&list),
                Format::Table => table(&list),
            }
        }
        SnapshotCmd::Delete { id, name } => {
            let id = resolve(c, &id).await?;
            c.delete(&format!("/v1/instances/{id}/snapshots/{name}"))
                .await?;
            if fmt == Format::Table {
                println!("snapshot {name} deleted");
            }
        }
        SnapshotCmd::Rollback { id, name, start } => {
            let id = resolve(c, &id).await?;
            let r: SnapshotRolledBack = c
                .post(
                    &format!("/v1/instances/{id}/snapshots/{name}/rollback"),
                    &SnapshotRollback { start },
                )
                .await?;
            match fmt {
                Format::Json => output::json(&r),
                Format::Table => {
                    println!("rolled back to {name}");
                    if !r.destroyed.is_empty() {
                        println!("destroyed the newer snapshots: {}", r.destroyed.join(", "));
                    }
                    if let Some(j) = r.job_id {
                        println!("starting: job {j}");
                    }
                }
            }
        }
    }
    Ok(())
}
