//! `nereid account ...`

use nereid_api::{Account, AccountCreate, QuotaKind, QuotaValues, Quotas, Role};
use reqwest::Method;

use crate::client::{Client, Listing};
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum AccountCmd {
    /// List accounts (a tenant sees only itself).
    List {
        #[command(flatten)]
        listing: Listing,
    },
    /// Show one account.
    Get { id: String },
    /// Create an account (operators only).
    Create {
        name: String,
        #[arg(long, value_enum, default_value = "tenant")]
        role: RoleArg,
    },
    /// An account's quotas: limits, usage, and (operators) setting them.
    Quota {
        #[command(subcommand)]
        cmd: QuotaCmd,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum QuotaCmd {
    /// Show the limits in force, those set on the account, and its usage.
    Get { account: String },
    /// Set limits (operators only); `default` gives a quota back to the
    /// headnode's default. Limits not named keep their value.
    Set {
        account: String,
        #[arg(long, value_parser = limit)]
        instances: Option<Limit>,
        #[arg(long, value_parser = limit)]
        memory_mb: Option<Limit>,
        #[arg(long, value_parser = limit)]
        disk_mb: Option<Limit>,
        #[arg(long, value_parser = limit)]
        vcpus: Option<Limit>,
        #[arg(long, value_parser = limit)]
        images: Option<Limit>,
        #[arg(long, value_parser = limit)]
        image_bytes: Option<Limit>,
        /// Every quota back to the default first.
        #[arg(long)]
        reset: bool,
    },
}

#[derive(Debug, Clone, Copy)]
pub enum Limit {
    Default,
    Value(u64),
}

fn limit(s: &str) -> Result<Limit, String> {
    if s == "default" {
        return Ok(Limit::Default);
    }
    s.parse()
        .map(Limit::Value)
        .map_err(|_| format!("{s:?} is not a number or `default`"))
}

/// An account by id or name.
async fn account_id(c: &Client, r: &str) -> anyhow::Result<String> {
    if uuid::Uuid::parse_str(r).is_ok() {
        return Ok(r.to_string());
    }
    let all: Vec<Account> = c.list_all("/v1/accounts", &[]).await?;
    all.into_iter()
        .find(|a| a.name == r)
        .map(|a| a.id.to_string())
        .ok_or_else(|| anyhow::anyhow!("no account with id or name {r:?}"))
}

async fn quota(c: &Client, fmt: Format, cmd: QuotaCmd) -> anyhow::Result<()> {
    let q: Quotas = match cmd {
        QuotaCmd::Get { account } => {
            let id = account_id(c, &account).await?;
            c.get(&format!("/v1/accounts/{id}/quotas"), &[]).await?
        }
        QuotaCmd::Set {
            account,
            instances,
            memory_mb,
            disk_mb,
            vcpus,
            images,
            image_bytes,
            reset,
        } => {
            let id = account_id(c, &account).await?;
            let path = format!("/v1/accounts/{id}/quotas");
            let mut v = if reset {
                QuotaValues::default()
            } else {
                c.get::<Quotas>(&path, &[]).await?.overrides
            };
            for (k, l) in [
                (QuotaKind::Instances, instances),
                (QuotaKind::MemoryMb, memory_mb),
                (QuotaKind::DiskMb, disk_mb),
                (QuotaKind::Vcpus, vcpus),
                (QuotaKind::Images, images),
                (QuotaKind::ImageBytes, image_bytes),
            ] {
                match l {
                    Some(Limit::Default) => v.set(k, None),
                    Some(Limit::Value(n)) => v.set(k, Some(n)),
                    None => {}
                }
            }
            c.call(Method::PUT, &path, &[], Some(&v)).await?
        }
    };
    match fmt {
        Format::Json => output::json(&q),
        Format::Table => {
            let show = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
            output::table(
                &["QUOTA", "LIMIT", "SET ON ACCOUNT", "IN USE"],
                QuotaKind::ALL
                    .iter()
                    .map(|k| {
                        vec![
                            k.to_string(),
                            show(q.limits.get(*k)),
                            q.overrides
                                .get(*k)
                                .map(|n| n.to_string())
                                .unwrap_or_else(|| "default".into()),
                            show(q.usage.get(*k)),
                        ]
                    })
                    .collect(),
            )
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Operator,
    Tenant,
}

pub async fn run(c: &Client, fmt: Format, cmd: AccountCmd) -> anyhow::Result<()> {
    let accounts: Vec<Account> = match cmd {
        AccountCmd::Quota { cmd } => return quota(c, fmt, cmd).await,
        AccountCmd::List { listing } => {
            let listed = c.list("/v1/accounts", &[], &listing).await?;
            listed.footer(fmt, "accounts");
            listed.items
        }
        AccountCmd::Get { id } => vec![c.get(&format!("/v1/accounts/{id}"), &[]).await?],
        AccountCmd::Create { name, role } => {
            let role = match role {
                RoleArg::Operator => Role::Operator,
                RoleArg::Tenant => Role::Tenant,
            };
            let a: Account = c
                .post("/v1/accounts", &AccountCreate { name, role })
                .await?;
            if fmt == Format::Json {
                output::json(&a);
                return Ok(());
            }
            vec![a]
        }
    };
    match fmt {
        Format::Json => output::json(&accounts),
        Format::Table => output::table(
            &["ID", "NAME", "ROLE", "CREATED"],
            accounts
                .iter()
                .map(|a| {
                    vec![
                        a.id.to_string(),
                        a.name.clone(),
                        a.role.as_str().into(),
                        super::time(&Some(a.created_at)),
                    ]
                })
                .collect(),
        ),
    }
    Ok(())
}
