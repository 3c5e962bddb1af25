//! `nereid instance ...` and `nereid job ...`

use std::time::{Duration, Instant};

use anyhow::bail;
use nereid_api::{
    Instance, InstanceAccepted, InstanceConsole, InstanceCreate, Job, JobState, StepState,
};
use reqwest::Method;

use super::{key_value, time};
use crate::client::{Client, Listed, Listing};
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum InstanceCmd {
    /// List instances (deleted ones only with --state deleted).
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        alias: Option<String>,
        /// KEY or KEY=VALUE.
        #[arg(long)]
        tag: Option<String>,
        /// Operators: one account's instances.
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        listing: Listing,
    },
    /// Show one instance.
    Get {
        id: String,
    },
    /// Create an instance; with --wait, follow its job until it runs.
    Create {
        /// Image id or name.
        #[arg(long)]
        image: String,
        /// Package id or name.
        #[arg(long)]
        package: String,
        /// Network id or name, repeatable; the first is the primary NIC.
        #[arg(long = "network")]
        networks: Vec<String>,
        /// Also the host name.
        #[arg(long)]
        alias: Option<String>,
        /// KEY=VALUE, repeatable.
        #[arg(long = "tag", value_parser = key_value)]
        tags: Vec<(String, String)>,
        /// KEY=VALUE, repeatable; KEY=@FILE reads the value from FILE
        /// (`--metadata user-script=@setup.sh`).
        #[arg(long = "metadata", value_parser = key_value)]
        metadata: Vec<(String, String)>,
        /// e.g. instance!=web* (hard) or instance==~db* (soft), repeatable.
        #[arg(long)]
        affinity: Vec<String>,
        #[arg(long)]
        firewall: bool,
        /// Containers: a host uid/gid range of its own instead of the
        /// node's shared one.
        #[arg(long)]
        isolated_ids: bool,
        /// Operators: let the primary NIC send what anti-spoofing drops:
        /// `ip` (any source address), `mac` (any MAC), `dhcp` (DHCP server
        /// replies); repeatable.
        #[arg(long = "allow-spoofing", value_parser = ["ip", "mac", "dhcp"])]
        allow_spoofing: Vec<String>,
        /// Refuse to delete it until deletion protection is turned off.
        #[arg(long)]
        deletion_protection: bool,
        /// Operators: create it for this account.
        #[arg(long)]
        owner: Option<String>,
        /// Makes a retried create return the first instance.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Start a stopped instance.
    Start {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Stop an instance (SIGTERM, then SIGKILL after 10 s).
    Stop {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Stop and start an instance.
    Reboot {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Turn the instance's firewall on: inbound only as rules allow.
    EnableFirewall {
        id: String,
    },
    /// Turn the instance's firewall off.
    DisableFirewall {
        id: String,
    },
    /// Delete an instance and everything it holds.
    Delete {
        id: String,
        #[arg(long)]
        wait: bool,
        /// Operators: delete it now, without its node (one that does not
        /// answer); what it left there goes when the node answers again.
        #[arg(long)]
        force: bool,
    },
    /// Show the end of an instance's console (a VM's serial console, a
    /// container's output).
    Console {
        id: String,
        /// How many of the last lines.
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
    /// Its tags (firewall rules and `instance list --tag` match them).
    #[command(subcommand)]
    Tag(super::instance_meta::MapCmd),
    /// Its metadata (what `mdata-get` reads inside it).
    #[command(subcommand)]
    Metadata(super::instance_meta::MapCmd),
    /// Print its changes (and its jobs') as they happen, until interrupted.
    Watch {
        id: String,
    },
    /// Its ZFS snapshots: create, list, delete, rollback.
    #[command(subcommand)]
    Snapshot(super::snapshot::SnapshotCmd),
    /// Resize it to another package of its brand, on the same server
    /// (containers live; VMs while stopped).
    Resize {
        id: String,
        #[arg(long)]
        package: String,
        #[arg(long)]
        wait: bool,
    },
    /// Give it another alias.
    Rename {
        id: String,
        alias: String,
    },
    /// Refuse deletes until it is turned off.
    EnableDeletionProtection {
        id: String,
    },
    DisableDeletionProtection {
        id: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum JobCmd {
    /// List jobs, oldest first.
    List {
        #[arg(long)]
        instance: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        listing: Listing,
    },
    /// Show a job with its steps.
    Get {
        id: String,
        /// Follow it until it ends.
        #[arg(long)]
        wait: bool,
    },
}

/// An instance id, or an alias of the caller's (resolved through the list).
pub(super) async fn resolve(c: &Client, r: &str) -> anyhow::Result<String> {
    if uuid::Uuid::parse_str(r).is_ok() {
        return Ok(r.to_string());
    }
    let found: Vec<Instance> = c
        .list_all("/v1/instances", &[("alias", r.to_string())])
        .await?;
    match found.as_slice() {
        [one] => Ok(one.id.to_string()),
        [] => bail!("no instance with id or alias {r:?}"),
        _ => bail!("{} instances are named {r:?}; use an id", found.len()),
    }
}

pub async fn run(c: &Client, fmt: Format, cmd: InstanceCmd) -> anyhow::Result<()> {
    match cmd {
        InstanceCmd::List {
            state,
            server,
            alias,
            tag,
            owner,
            listing,
        } => {
            let mut q = Vec::new();
            for (k, v) in [
                ("state", state),
                ("server", server),
                ("alias", alias),
                ("tag", tag),
                ("owner", owner),
            ] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            let listed: Listed<Instance> = c.list("/v1/instances", &q, &listing).await?;
            let items = &listed.items;
            match fmt {
                Format::Json => output::json(&items),
                Format::Table => output::table(
                    &["ID", "ALIAS", "STATE", "IP", "MEMORY", "SERVER", "CREATED"],
                    items
                        .iter()
                        .map(|i| {
                            vec![
                                i.id.to_string(),
                                i.alias.clone(),
                                i.state.to_string(),
                                i.nics.first().map(|n| n.ip.clone()).unwrap_or("-".into()),
                                output::bytes(i.memory_mb << 20),
                                i.server_id
                                    .map(|s| s.to_string()[..8].to_string())
                                    .unwrap_or("-".into()),
                                time(&Some(i.created_at)),
                            ]
                        })
                        .collect(),
                ),
            }
            listed.footer(fmt, "instances");
            Ok(())
        }
        InstanceCmd::Get { id } => {
            let id = resolve(c, &id).await?;
            show(fmt, &c.get(&format!("/v1/instances/{id}"), &[]).await?);
            Ok(())
        }
        InstanceCmd::Create {
            image,
            package,
            networks,
            alias,
            tags,
            metadata,
            affinity,
            firewall,
            isolated_ids,
            allow_spoofing,
            deletion_protection,
            owner,
            idempotency_key,
            wait,
        } => {
            let allows = |k: &str| allow_spoofing.iter().any(|a| a == k);
            let nic_options = if allow_spoofing.is_empty() {
                vec![]
            } else {
                vec![nereid_api::NicOptions {
                    allow_ip_spoofing: allows("ip"),
                    allow_mac_spoofing: allows("mac"),
                    allow_dhcp_spoofing: allows("dhcp"),
                }]
            };
            let body = InstanceCreate {
                alias,
                image,
                package,
                networks,
                tags: tags
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::Value::String(v)))
                    .collect(),
                metadata: super::instance_meta::create_metadata(metadata)?,
                firewall_enabled: firewall,
                deletion_protection,
                isolated_ids,
                affinity,
                owner: owner.map(|o| o.parse()).transpose()?,
                nic_options,
            };
            let mut req = c.request(Method::POST, "/v1/instances").json(&body);
            if let Some(k) = idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            let accepted: InstanceAccepted = c.execute_json(req).await?;
            finish(c, fmt, accepted, wait).await
        }
        InstanceCmd::Resize { id, package, wait } => {
            let id = resolve(c, &id).await?;
            let accepted: InstanceAccepted = c
                .post(
                    &format!("/v1/instances/{id}/resize"),
                    &nereid_api::InstanceResize { package },
                )
                .await?;
            finish(c, fmt, accepted, wait).await
        }
        InstanceCmd::Watch { id } => watch(c, fmt, &id).await,
        InstanceCmd::Snapshot(cmd) => super::snapshot::run(c, fmt, cmd).await,
        InstanceCmd::Tag(m) => super::instance_meta::run_map(c, fmt, "tags", m).await,
        InstanceCmd::Metadata(m) => super::instance_meta::run_map(c, fmt, "metadata", m).await,
        InstanceCmd::Rename { id, alias } => super::instance_meta::rename(c, fmt, &id, alias).await,
        InstanceCmd::EnableDeletionProtection { id } => {
            super::instance_meta::deletion_protection(c, fmt, &id, true).await
        }
        InstanceCmd::DisableDeletionProtection { id } => {
            super::instance_meta::deletion_protection(c, fmt, &id, false).await
        }
        InstanceCmd::Start { id, wait } => act(c, fmt, &id, "start", Method::POST, wait).await,
        InstanceCmd::Stop { id, wait } => act(c, fmt, &id, "stop", Method::POST, wait).await,
        InstanceCmd::Reboot { id, wait } => act(c, fmt, &id, "reboot", Method::POST, wait).await,
        InstanceCmd::EnableFirewall { id } => switch_firewall(c, fmt, &id, "enable").await,
        InstanceCmd::DisableFirewall { id } => switch_firewall(c, fmt, &id, "disable").await,
        InstanceCmd::Delete {
            id, force: true, ..
        } => {
            let id = resolve(c, &id).await?;
            let inst: Instance = c
                .call::<(), _>(
                    Method::DELETE,
                    &format!("/v1/instances/{id}"),
                    &[("force", "true".to_string())],
                    None,
                )
                .await?;
            if fmt == Format::Json {
                output::json(&inst);
            } else {
                println!("instance {} ({}) deleted by force", inst.id, inst.alias);
            }
            Ok(())
        }
        InstanceCmd::Delete { id, wait, .. } => act(c, fmt, &id, "", Method::DELETE, wait).await,
        InstanceCmd::Console { id, tail } => {
            let id = resolve(c, &id).await?;
            let console: InstanceConsole = c
                .get(
                    &format!("/v1/instances/{id}/console"),
                    &[("tail", tail.to_string())],
                )
                .await?;
            if fmt == Format::Json {
                output::json(&console);
            } else {
                if console.truncated {
                    eprintln!("(older output not shown)");
                }
                print!("{}", console.text);
                if !console.text.is_empty() && !console.text.ends_with('\n') {
                    println!();
                }
            }
            Ok(())
        }
    }
}

async fn act(
    c: &Client,
    fmt: Format,
    id: &str,
    verb: &str,
    method: Method,
    wait: bool,
) -> anyhow::Result<()> {
    let id = resolve(c, id).await?;
    let path = if verb.is_empty() {
        format!("/v1/instances/{id}")
    } else {
        format!("/v1/instances/{id}/{verb}")
    };
    let accepted: InstanceAccepted = c.execute_json(c.request(method, &path)).await?;
    finish(c, fmt, accepted, wait).await
}

/// Prints what was accepted, or follows its job and prints the outcome.
async fn finish(
    c: &Client,
    fmt: Format,
    accepted: InstanceAccepted,
    wait: bool,
) -> anyhow::Result<()> {
    if !wait {
        if fmt == Format::Json {
            output::json(&accepted);
        } else {
            println!(
                "instance {} ({}) is {}; job {}",
                accepted.instance.id,
                accepted.instance.alias,
                accepted.instance.state,
                accepted.job_id
            );
        }
        return Ok(());
    }
    let job = follow(c, &accepted.job_id.to_string(), fmt == Format::Table).await?;
    let inst: Instance = c
        .get(&format!("/v1/instances/{}", accepted.instance.id), &[])
        .await?;
    show(fmt, &inst);
    if job.state == JobState::Failed {
        bail!(
            "job {} failed: {}",
            job.id,
            job.error.unwrap_or_else(|| "no reason given".into())
        );
    }
    Ok(())
}

/// Follows a job until it ends: it reads the job again each time the change
/// feed says its instance or the job changed (or every 5 s without one, and
/// every 150 ms when the feed cannot be opened); with `live`, prints each
/// step as it changes (to stderr).
pub(crate) async fn follow(c: &Client, id: &str, live: bool) -> anyhow::Result<Job> {
    let started = Instant::now();
    let mut seen: Vec<(StepState, u32)> = Vec::new();
    let first: Job = c.get(&format!("/v1/jobs/{id}"), &[]).await?;
    // Opened before the job is read again: no change can fall in between.
    let mut feed = c
        .events(&[("instance", first.instance_id.to_string())])
        .await
        .ok();
    loop {
        let job: Job = c.get(&format!("/v1/jobs/{id}"), &[]).await?;
        if live {
            seen.resize(job.steps.len(), (StepState::Pending, 0));
            for (i, s) in job.steps.iter().enumerate() {
                if seen[i] != (s.state, s.attempts) {
                    seen[i] = (s.state, s.attempts);
                    let mark = match s.state {
                        StepState::Pending => continue,
                        StepState::Running => "..",
                        StepState::Done => "ok",
                        StepState::Failed => "!!",
                        StepState::Undone => "<-",
                    };
                    let retry = if s.attempts > 1 {
                        format!(" (attempt {})", s.attempts)
                    } else {
                        String::new()
                    };
                    let err = s
                        .error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    eprintln!(
                        "[{:>6.2}s] {mark} {} {}{retry}{err}",
                        started.elapsed().as_secs_f64(),
                        job.kind,
                        s.name
                    );
                }
            }
        }
        if job.state.is_finished() {
            if live {
                eprintln!(
                    "[{:>6.2}s] job {} {}",
                    started.elapsed().as_secs_f64(),
                    job.kind,
                    job.state.as_str()
                );
            }
            return Ok(job);
        }
        match feed.as_mut() {
            Some(f) => {
                f.next(Duration::from_secs(5)).await;
            }
            None => tokio::time::sleep(Duration::from_millis(150)).await,
        }
    }
}

/// Prints the changes of an instance and its jobs as they happen.
async fn watch(c: &Client, fmt: Format, id: &str) -> anyhow::Result<()> {
    let id = resolve(c, id).await?;
    let mut feed = c.events(&[("instance", id)]).await?;
    while let Some(e) = feed.next(Duration::from_secs(3600)).await {
        if fmt == Format::Json {
            println!("{}", e.data);
            continue;
        }
        let d = &e.data;
        let at = d["at"].as_str().unwrap_or_default();
        let at = at.get(11..23).unwrap_or(at);
        match e.event.as_str() {
            "job" => println!(
                "{at} job {} {} {}",
                d["kind"].as_str().unwrap_or("?"),
                d["id"].as_str().unwrap_or("?"),
                d["state"].as_str().unwrap_or("?")
            ),
            _ => println!(
                "{at} instance {} {}",
                d["alias"].as_str().unwrap_or("?"),
                d["state"].as_str().unwrap_or("?")
            ),
        }
    }
    Ok(())
}

pub async fn run_job(c: &Client, fmt: Format, cmd: JobCmd) -> anyhow::Result<()> {
    match cmd {
        JobCmd::List {
            instance,
            state,
            listing,
        } => {
            let mut q = Vec::new();
            if let Some(i) = instance {
                q.push(("instance", resolve(c, &i).await?));
            }
            if let Some(s) = state {
                q.push(("state", s));
            }
            let listed: Listed<Job> = c.list("/v1/jobs", &q, &listing).await?;
            let jobs = &listed.items;
            match fmt {
                Format::Json => output::json(&jobs),
                Format::Table => output::table(
                    &[
                        "ID", "KIND", "INSTANCE", "STATE", "ATTEMPTS", "CREATED", "ERROR",
                    ],
                    jobs.iter()
                        .map(|j| {
                            vec![
                                j.id.to_string(),
                                j.kind.to_string(),
                                j.instance_id.to_string(),
                                j.state.as_str().to_string(),
                                j.attempts.to_string(),
                                time(&Some(j.created_at)),
                                j.error.clone().unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect(),
                ),
            }
            listed.footer(fmt, "jobs");
        }
        JobCmd::Get { id, wait } => {
            let job = if wait {
                follow(c, &id, fmt == Format::Table).await?
            } else {
                c.get(&format!("/v1/jobs/{id}"), &[]).await?
            };
            match fmt {
                Format::Json => output::json(&job),
                Format::Table => {
                    output::fields(vec![
                        ("id", job.id.to_string()),
                        ("kind", job.kind.to_string()),
                        ("instance", job.instance_id.to_string()),
                        ("state", job.state.as_str().to_string()),
                        ("attempts", job.attempts.to_string()),
                        ("error", job.error.clone().unwrap_or_else(|| "-".into())),
                        ("created", time(&Some(job.created_at))),
                        ("finished", time(&job.finished_at)),
                    ]);
                    println!();
                    output::table(
                        &["STEP", "STATE", "ATTEMPTS", "STARTED", "FINISHED", "ERROR"],
                        job.steps
                            .iter()
                            .map(|s| {
                                vec![
                                    s.name.clone(),
                                    format!("{:?}", s.state).to_lowercase(),
                                    s.attempts.to_string(),
                                    time(&s.started_at),
                                    time(&s.finished_at),
                                    s.error.clone().unwrap_or_else(|| "-".into()),
                                ]
                            })
                            .collect(),
                    );
                }
            }
        }
    }
    Ok(())
}

async fn switch_firewall(c: &Client, fmt: Format, id: &str, verb: &str) -> anyhow::Result<()> {
    let id = resolve(c, id).await?;
    let inst: Instance = c
        .call::<(), _>(
            Method::POST,
            &format!("/v1/instances/{id}/{verb}-firewall"),
            &[],
            None,
        )
        .await?;
    show(fmt, &inst);
    Ok(())
}

pub(super) fn show(fmt: Format, i: &Instance) {
    if fmt == Format::Json {
        return output::json(i);
    }
    let nics = i
        .nics
        .iter()
        .map(|n| {
            format!(
                "{}/{} ({}, network {})",
                n.ip, n.prefix_len, n.mac, n.network_id
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    output::fields(vec![
        ("id", i.id.to_string()),
        ("alias", i.alias.clone()),
        ("state", i.state.to_string()),
        ("brand", i.brand.to_string()),
        (
            "accelerator",
            i.accelerator.map(|a| a.to_string()).unwrap_or("-".into()),
        ),
        (
            "image",
            i.image_id.map(|s| s.to_string()).unwrap_or("-".into()),
        ),
        ("package", i.package_id.to_string()),
        (
            "server",
            i.server_id.map(|s| s.to_string()).unwrap_or("-".into()),
        ),
        ("memory", output::bytes(i.memory_mb << 20)),
        ("disk", output::bytes(i.disk_mb << 20)),
        ("nics", if nics.is_empty() { "-".into() } else { nics }),
        (
            "tags",
            i.tags
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "firewall",
            if i.firewall_enabled {
                "enabled"
            } else {
                "disabled"
            }
            .into(),
        ),
        (
            "deletion protection",
            if i.deletion_protection { "on" } else { "off" }.into(),
        ),
        ("error", i.error.clone().unwrap_or_else(|| "-".into())),
        ("created", time(&Some(i.created_at))),
    ]);
}
