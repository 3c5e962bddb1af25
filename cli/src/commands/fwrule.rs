//! `nereid fwrule ...`: firewall rules in Triton's language.

use nereid_api::{FwRule, FwRuleCreate, FwRuleUpdate};

use crate::client::{Client, Listed, Listing};
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum FwRuleCmd {
    /// List the rules you may see (yours and the global ones).
    List {
        /// Only the rules that apply to this instance.
        #[arg(long)]
        instance: Option<String>,
        #[command(flatten)]
        listing: Listing,
    },
    /// Show one rule.
    Get { id: String },
    /// Create a rule, e.g. 'FROM any TO tag role=web ALLOW tcp PORT 80'.
    Create {
        rule: String,
        /// Apply it at once (rules are created disabled otherwise, as in Triton).
        #[arg(long)]
        enabled: bool,
        #[arg(long, default_value = "")]
        description: String,
        /// Operators: a rule for every account's instances.
        #[arg(long)]
        global: bool,
        /// Operators: the account the rule belongs to.
        #[arg(long)]
        owner: Option<nereid_api::AccountId>,
    },
    /// Change a rule's text or description.
    Update {
        id: String,
        #[arg(long)]
        rule: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Apply a rule.
    Enable { id: String },
    /// Stop applying a rule (it is kept).
    Disable { id: String },
    /// Delete a rule.
    Delete { id: String },
}

pub async fn run(c: &Client, fmt: Format, cmd: FwRuleCmd) -> anyhow::Result<()> {
    let patch = |id: &str, u: FwRuleUpdate| {
        let path = format!("/v1/fwrules/{id}");
        async move { c.patch::<_, FwRule>(&path, &u).await }
    };
    match cmd {
        FwRuleCmd::List { instance, listing } => {
            let q: Vec<(&str, String)> = instance.into_iter().map(|i| ("instance", i)).collect();
            let listed: Listed<FwRule> = c.list("/v1/fwrules", &q, &listing).await?;
            let rules = &listed.items;
            match fmt {
                Format::Json => output::json(&rules),
                Format::Table => output::table(
                    &["ID", "ENABLED", "GLOBAL", "RULE"],
                    rules
                        .iter()
                        .map(|r| {
                            vec![
                                r.id.to_string(),
                                r.enabled.to_string(),
                                r.global.to_string(),
                                r.rule.clone(),
                            ]
                        })
                        .collect(),
                ),
            }
            listed.footer(fmt, "rules");
        }
        FwRuleCmd::Get { id } => show(fmt, &c.get(&format!("/v1/fwrules/{id}"), &[]).await?),
        FwRuleCmd::Create {
            rule,
            enabled,
            description,
            global,
            owner,
        } => {
            let body = FwRuleCreate {
                rule,
                enabled,
                description,
                global,
                owner,
            };
            show(fmt, &c.post("/v1/fwrules", &body).await?)
        }
        FwRuleCmd::Update {
            id,
            rule,
            description,
        } => show(
            fmt,
            &patch(
                &id,
                FwRuleUpdate {
                    rule,
                    description,
                    enabled: None,
                },
            )
            .await?,
        ),
        FwRuleCmd::Enable { id } => show(
            fmt,
            &patch(
                &id,
                FwRuleUpdate {
                    enabled: Some(true),
                    ..Default::default()
                },
            )
            .await?,
        ),
        FwRuleCmd::Disable { id } => show(
            fmt,
            &patch(
                &id,
                FwRuleUpdate {
                    enabled: Some(false),
                    ..Default::default()
                },
            )
            .await?,
        ),
        FwRuleCmd::Delete { id } => {
            c.delete(&format!("/v1/fwrules/{id}")).await?;
            if fmt == Format::Table {
                println!("firewall rule {id} deleted");
            }
        }
    }
    Ok(())
}

fn show(fmt: Format, r: &FwRule) {
    if fmt == Format::Json {
        return output::json(r);
    }
    output::fields(vec![
        ("id", r.id.to_string()),
        ("rule", r.rule.clone()),
        ("enabled", r.enabled.to_string()),
        (
            "owner",
            r.owner
                .map(|o| o.to_string())
                .unwrap_or_else(|| "global".into()),
        ),
        ("description", r.description.clone()),
        (
            "updated",
            r.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        ),
    ]);
}
