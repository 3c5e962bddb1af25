//! The `nereid-agent` binary.

use clap::Parser;
use nereid_agent::config::Flags;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let filter = EnvFilter::try_from_env("NEREID_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,tower=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if flags.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    if let Err(e) = nereid_agent::run(flags).await {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
    Ok(())
}
