//! `nereid`: the command-line client of the Nereid REST API.
//! `nereid <noun> <verb>`; tables for people, `-o json` for scripts; an error
//! is one line with the API's code, and a non-zero exit.

mod client;
mod commands;
mod output;

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "nereid", version, about = "Drive a Nereid datacenter")]
pub struct Cli {
    /// The headnode's REST URL, e.g. http://127.0.0.1:8440 (or https://...)
    #[arg(long, global = true, env = "NEREID_URL")]
    url: Option<String>,
    /// An API token.
    #[arg(long, global = true, env = "NEREID_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A CA certificate (PEM) to trust for an https URL, besides the system's.
    #[arg(long, global = true, env = "NEREID_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// A profile file (default ~/.config/nereid/profile.toml).
    #[arg(long, global = true, env = "NEREID_PROFILE")]
    profile: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    output: output::Format,
    #[command(subcommand)]
    command: commands::Command,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let result = match client::Client::new(
        cli.url.clone(),
        cli.token.clone(),
        cli.profile.clone(),
        cli.ca_file.clone(),
    ) {
        Ok(c) => commands::run(&c, cli.output, cli.command).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        match e.downcast_ref::<client::ApiError>() {
            Some(api) => eprintln!("error: {api}"),
            None => eprintln!("error: {e:#}"),
        }
        std::process::exit(1);
    }
}
