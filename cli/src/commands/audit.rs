//! `nereid audit ...`

use nereid_api::{AuditEntry, Page};

use crate::client::Client;
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// The latest entries, newest first (tenants see their own).
    List {
        /// Only what this account did.
        #[arg(long)]
        actor: Option<String>,
        /// Only entries about this target (an id or a name).
        #[arg(long)]
        target: Option<String>,
        /// Only actions starting with this, e.g. `instance.`.
        #[arg(long)]
        action: Option<String>,
        /// Only requests that failed.
        #[arg(long)]
        failed: bool,
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

pub async fn run(c: &Client, fmt: Format, cmd: AuditCmd) -> anyhow::Result<()> {
    let AuditCmd::List {
        actor,
        target,
        action,
        failed,
        limit,
    } = cmd;
    let mut q: Vec<(&str, String)> =
        vec![("limit", limit.min(nereid_api::MAX_PAGE_LIMIT).to_string())];
    q.extend(actor.map(|a| ("actor", a)));
    q.extend(target.map(|t| ("target", t)));
    q.extend(action.map(|a| ("action", a)));
    if failed {
        q.push(("failed", "true".into()));
    }
    let page: Page<AuditEntry> = c.get("/v1/audit", &q).await?;
    match fmt {
        Format::Json => output::json(&page.items),
        Format::Table => output::table(
            &[
                "TIME", "ACTOR", "ACTION", "TARGET", "RESULT", "SOURCE", "REQUEST",
            ],
            page.items
                .iter()
                .map(|e| {
                    vec![
                        super::time(&Some(e.at)),
                        match e.actor {
                            Some(a) => format!("{a} ({})", e.actor_role),
                            None => e.actor_role.clone(),
                        },
                        e.action.clone(),
                        format!("{} {}", e.target_kind, e.target_id),
                        e.result.clone(),
                        e.source.clone().unwrap_or_else(|| "-".into()),
                        e.request_id.clone(),
                    ]
                })
                .collect(),
        ),
    }
    Ok(())
}
