//! `nereid account ...`

use nereid_api::{Account, AccountCreate, Role};

use crate::client::Client;
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum AccountCmd {
    /// List accounts (a tenant sees only itself).
    List,
    /// Show one account.
    Get { id: String },
    /// Create an account (operators only).
    Create {
        name: String,
        #[arg(long, value_enum, default_value = "tenant")]
        role: RoleArg,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Operator,
    Tenant,
}

pub async fn run(c: &Client, fmt: Format, cmd: AccountCmd) -> anyhow::Result<()> {
    let accounts: Vec<Account> = match cmd {
        AccountCmd::List => c.list_all("/v1/accounts", &[]).await?,
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
