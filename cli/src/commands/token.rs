//! `nereid token ...`

use nereid_api::{Token, TokenCreate, TokenCreated};

use crate::client::{Client, Listed, Listing};
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Create a token; its secret is printed once.
    Create {
        /// A label for the token.
        #[arg(long)]
        name: String,
        /// For this account (operators only; default: yourself).
        #[arg(long)]
        account: Option<String>,
        /// Lifetime in seconds (default: no expiry).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        listing: Listing,
    },
    /// Revoke a token.
    Delete { id: String },
}

pub async fn run(c: &Client, fmt: Format, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create { name, account, ttl } => {
            let account_id = account
                .map(|a| a.parse())
                .transpose()
                .map_err(|_| anyhow::anyhow!("--account must be an account id (a UUID)"))?;
            let t: TokenCreated = c
                .post(
                    "/v1/tokens",
                    &TokenCreate {
                        account_id,
                        name,
                        ttl_seconds: ttl,
                    },
                )
                .await?;
            match fmt {
                Format::Json => output::json(&t),
                Format::Table => {
                    println!("{}", t.secret);
                    eprintln!(
                        "token {} for account {}: the secret above is shown only once",
                        t.token.id, t.token.account_id
                    );
                }
            }
        }
        TokenCmd::List { account, listing } => {
            let q: Vec<(&str, String)> = account.into_iter().map(|a| ("account_id", a)).collect();
            let listed: Listed<Token> = c.list("/v1/tokens", &q, &listing).await?;
            let tokens = &listed.items;
            match fmt {
                Format::Json => output::json(&tokens),
                Format::Table => output::table(
                    &["ID", "ACCOUNT", "NAME", "CREATED", "EXPIRES", "LAST USED"],
                    tokens
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.to_string(),
                                t.account_id.to_string(),
                                t.name.clone(),
                                super::time(&Some(t.created_at)),
                                super::time(&t.expires_at),
                                super::time(&t.last_used_at),
                            ]
                        })
                        .collect(),
                ),
            }
            listed.footer(fmt, "tokens");
        }
        TokenCmd::Delete { id } => {
            c.delete(&format!("/v1/tokens/{id}")).await?;
            if fmt == Format::Table {
                println!("token {id} revoked");
            }
        }
    }
    Ok(())
}
