//! `nereid key ...`: your SSH public keys (they become your instances'
//! `root_authorized_keys`).

use nereid_api::{SshKey, SshKeyCreate};

use crate::client::{Client, Listed, Listing};
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum KeyCmd {
    /// Add a public key from a file (`~/.ssh/id_ed25519.pub`; `-` reads stdin).
    Add {
        file: std::path::PathBuf,
        /// Default: the key's comment, or its fingerprint.
        #[arg(long)]
        name: Option<String>,
        /// For this account (operators only; default: yourself).
        #[arg(long)]
        owner: Option<String>,
    },
    /// List keys as `ssh-keygen -l` shows them.
    List {
        /// Operators: only this account's.
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        listing: Listing,
    },
    /// Show a key (by name or fingerprint).
    Get {
        name: String,
        #[arg(long)]
        owner: Option<String>,
    },
    /// Remove a key (by name or fingerprint).
    Delete {
        name: String,
        #[arg(long)]
        owner: Option<String>,
    },
}

fn key_path(name: &str) -> String {
    format!("/v1/keys/{}", super::path_segment(name))
}

fn owner_query(owner: Option<String>) -> Vec<(&'static str, String)> {
    owner.into_iter().map(|o| ("owner", o)).collect()
}

fn show(k: &SshKey) -> String {
    format!("{} {} {} ({})", k.bits, k.fingerprint, k.name, k.key_type)
}

pub async fn run(c: &Client, fmt: Format, cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Add { file, name, owner } => {
            let key = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
            };
            let owner = owner
                .map(|a| a.parse())
                .transpose()
                .map_err(|_| anyhow::anyhow!("--owner must be an account id (a UUID)"))?;
            let k: SshKey = c
                .post("/v1/keys", &SshKeyCreate { name, key, owner })
                .await?;
            match fmt {
                Format::Json => output::json(&k),
                Format::Table => println!("{}", show(&k)),
            }
        }
        KeyCmd::List { owner, listing } => {
            let listed: Listed<SshKey> = c.list("/v1/keys", &owner_query(owner), &listing).await?;
            let keys = &listed.items;
            match fmt {
                Format::Json => output::json(&keys),
                Format::Table => {
                    for k in keys {
                        println!("{}", show(k));
                    }
                }
            }
            listed.footer(fmt, "keys");
        }
        KeyCmd::Get { name, owner } => {
            let k: SshKey = c.get(&key_path(&name), &owner_query(owner)).await?;
            match fmt {
                Format::Json => output::json(&k),
                Format::Table => println!("{}\n{}", show(&k), k.key),
            }
        }
        KeyCmd::Delete { name, owner } => {
            c.delete_with(&key_path(&name), &owner_query(owner)).await?;
            if fmt == Format::Table {
                println!("key {name} removed");
            }
        }
    }
    Ok(())
}
