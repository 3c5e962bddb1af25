//! The `nereid-headnode` binary: reads its configuration, sets up logging and
//! runs the headnode.

use clap::Parser;
use nereid_headnode::config::{Config, Flags, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let config = Config::load(&flags)?;
    let filter = EnvFilter::try_from_env("NEREID_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    if let Err(e) = nereid_headnode::run(config).await {
        tracing::error!("{e:#}");
        return Err(e);
    }
    Ok(())
}
