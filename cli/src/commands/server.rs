//! `nereid server ...`

use std::collections::BTreeMap;

use nereid_api::{JoinTokenCreate, JoinTokenCreated, Server, ServerSetup};
use serde_json::Value;

use super::key_value;
use crate::client::{Client, Listed, Listing};
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum ServerCmd {
    /// List servers.
    List {
        /// Only servers in this status (unsetup, setting_up, running, unknown).
        #[arg(long)]
        status: Option<String>,
        /// Only reserved (true) or unreserved (false) servers.
        #[arg(long)]
        reserved: Option<bool>,
        #[command(flatten)]
        listing: Listing,
    },
    /// Show one server.
    Get { id: String },
    /// Set a server up: its zpool, nic tag mappings and traits.
    Setup {
        id: String,
        #[arg(long)]
        zpool: String,
        /// TAG=INTERFACE, repeatable.
        #[arg(long = "nic-tag", value_parser = key_value)]
        nic_tags: Vec<(String, String)>,
        /// KEY=VALUE, repeatable (VALUE is parsed as JSON if it can be).
        #[arg(long = "trait", value_parser = key_value)]
        traits: Vec<(String, String)>,
    },
    /// Keep new instances off a server.
    Reserve { id: String },
    /// Let new instances land on a server again.
    Unreserve { id: String },
    /// Forget a server (it must have no instances).
    Delete {
        id: String,
        /// Retire a dead server: delete its instances by force first.
        #[arg(long)]
        force: bool,
    },
    /// Instances the node has that the database does not place on it.
    Orphans { id: String },
    /// Give the node a new key and certificate (nothing on it restarts).
    #[command(name = "rotate-certificate")]
    RotateCertificate { id: String },
    /// Refuse the node's certificate from now on (the server shows
    /// `unknown` until a rotation gives it a new one).
    #[command(name = "revoke-certificate")]
    RevokeCertificate { id: String },
    /// Join tokens.
    #[command(subcommand, name = "join-token")]
    JoinToken(JoinTokenCmd),
}

#[derive(Debug, clap::Subcommand)]
pub enum JoinTokenCmd {
    /// Make a single-use token for `nereid-agent --join-token`.
    Create {
        /// Lifetime in seconds (default 3600).
        #[arg(long)]
        ttl: Option<u64>,
    },
}

pub async fn run(c: &Client, fmt: Format, cmd: ServerCmd) -> anyhow::Result<()> {
    match cmd {
        ServerCmd::List {
            status,
            reserved,
            listing,
        } => {
            let mut q = Vec::new();
            if let Some(s) = status {
                q.push(("status", s));
            }
            if let Some(r) = reserved {
                q.push(("reserved", r.to_string()));
            }
            let listed: Listed<Server> = c.list("/v1/servers", &q, &listing).await?;
            let servers = &listed.items;
            match fmt {
                Format::Json => output::json(&servers),
                Format::Table => output::table(
                    &[
                        "ID",
                        "HOSTNAME",
                        "STATUS",
                        "RESERVED",
                        "CPUS",
                        "RAM",
                        "ZPOOL",
                        "LAST HEARTBEAT",
                    ],
                    servers
                        .iter()
                        .map(|s| {
                            vec![
                                s.id.to_string(),
                                s.hostname.clone(),
                                s.status.as_str().to_string(),
                                s.reserved.to_string(),
                                s.sysinfo.cpu_count.to_string(),
                                output::bytes(s.sysinfo.memory_bytes),
                                s.setup
                                    .as_ref()
                                    .map(|x| x.zpool.clone())
                                    .unwrap_or_else(|| "-".into()),
                                super::time(&s.last_heartbeat),
                            ]
                        })
                        .collect(),
                ),
            }
            listed.footer(fmt, "servers");
        }
        ServerCmd::Get { id } => show(fmt, &c.get(&format!("/v1/servers/{id}"), &[]).await?),
        ServerCmd::Setup {
            id,
            zpool,
            nic_tags,
            traits,
        } => {
            let setup = ServerSetup {
                zpool,
                nic_tags: nic_tags.into_iter().collect(),
                traits: traits
                    .into_iter()
                    .map(|(k, v)| {
                        let value = serde_json::from_str(&v).unwrap_or(Value::String(v));
                        (k, value)
                    })
                    .collect::<BTreeMap<_, _>>(),
            };
            show(
                fmt,
                &c.post(&format!("/v1/servers/{id}/setup"), &setup).await?,
            )
        }
        ServerCmd::Reserve { id } => show(
            fmt,
            &c.post(&format!("/v1/servers/{id}/reserve"), &()).await?,
        ),
        ServerCmd::Unreserve { id } => show(
            fmt,
            &c.post(&format!("/v1/servers/{id}/unreserve"), &()).await?,
        ),
        ServerCmd::Orphans { id } => {
            let orphans: Vec<nereid_api::Orphan> =
                c.get(&format!("/v1/servers/{id}/orphans"), &[]).await?;
            match fmt {
                Format::Json => output::json(&orphans),
                Format::Table => output::table(
                    &["INSTANCE", "STATE", "DATABASE"],
                    orphans
                        .iter()
                        .map(|o| vec![o.instance_id.clone(), o.state.clone(), o.known_as.clone()])
                        .collect(),
                ),
            }
        }
        ServerCmd::RotateCertificate { id } => {
            let cert: nereid_api::ServerCertificate = c
                .post(&format!("/v1/servers/{id}/certificate"), &())
                .await?;
            match fmt {
                Format::Json => output::json(&cert),
                Format::Table => output::fields(vec![
                    ("sha256", cert.sha256.clone()),
                    ("not after", cert.not_after.to_rfc3339()),
                ]),
            }
        }
        ServerCmd::RevokeCertificate { id } => show(
            fmt,
            &c.post(&format!("/v1/servers/{id}/certificate/revoke"), &())
                .await?,
        ),
        ServerCmd::Delete { id, force } => {
            let path = if force {
                format!("/v1/servers/{id}?force=true")
            } else {
                format!("/v1/servers/{id}")
            };
            c.delete(&path).await?;
            if fmt == Format::Table {
                println!("server {id} deleted");
            }
        }
        ServerCmd::JoinToken(JoinTokenCmd::Create { ttl }) => {
            let t: JoinTokenCreated = c
                .post(
                    "/v1/servers/join-tokens",
                    &JoinTokenCreate { ttl_seconds: ttl },
                )
                .await?;
            match fmt {
                Format::Json => output::json(&t),
                Format::Table => {
                    println!("{}", t.token);
                    eprintln!(
                        "single use, expires {}; start the node with: nereid-agent --join-token <token> ...\n(the token ends with the CA's sha256 {}: the node checks the headnode against it before it sends anything)",
                        t.expires_at, t.ca_sha256
                    );
                }
            }
        }
    }
    Ok(())
}

fn show(fmt: Format, s: &Server) {
    if fmt == Format::Json {
        return output::json(s);
    }
    let caps: Vec<String> = s
        .sysinfo
        .capabilities
        .iter()
        .map(|(k, v)| format!("{k}={}", if v.available { "yes" } else { "no" }))
        .collect();
    let nics: Vec<String> = s
        .sysinfo
        .nics
        .iter()
        .map(|n| format!("{} {} [{}]", n.name, n.mac, n.addresses.join(" ")))
        .collect();
    output::fields(vec![
        ("id", s.id.to_string()),
        ("hostname", s.hostname.clone()),
        (
            "status",
            match &s.status_reason {
                Some(why) => format!("{} ({why})", s.status.as_str()),
                None => s.status.as_str().to_string(),
            },
        ),
        ("reserved", s.reserved.to_string()),
        ("machine id", s.machine_id.clone()),
        (
            "cpu",
            format!("{} x {}", s.sysinfo.cpu_count, s.sysinfo.cpu_model),
        ),
        ("memory", output::bytes(s.sysinfo.memory_bytes)),
        ("os", format!("{} ({})", s.sysinfo.os, s.sysinfo.kernel)),
        (
            "zpools",
            s.sysinfo
                .zpools
                .iter()
                .map(|z| format!("{} {}", z.name, z.health))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("nics", nics.join("; ")),
        ("capabilities", caps.join(" ")),
        (
            "setup",
            s.setup
                .as_ref()
                .map(|x| serde_json::to_string(x).unwrap_or_default())
                .unwrap_or_else(|| "-".into()),
        ),
        ("agent", format!("{} v{}", s.agent_address, s.agent_version)),
        ("last heartbeat", super::time(&s.last_heartbeat)),
        (
            "sync error",
            s.sync_error.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "certificate",
            s.certificate
                .as_ref()
                .map(|c| match c.revoked_at {
                    Some(r) => format!("sha256 {} REVOKED at {}", c.sha256, r.to_rfc3339()),
                    None => format!("sha256 {} until {}", c.sha256, c.not_after.to_rfc3339()),
                })
                .unwrap_or_else(|| "none (re-join this node)".into()),
        ),
    ]);
}
