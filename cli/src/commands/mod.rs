//! The nouns and verbs of the CLI, one module per noun.

mod account;
mod audit;
mod fabric;
mod fwrule;
mod image;
mod instance;
mod instance_meta;
mod key;
mod network;
mod package;
mod server;
mod snapshot;
mod token;

use crate::client::Client;
use crate::output::Format;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Compute nodes: list, inspect, set up, reserve, delete, join tokens.
    #[command(subcommand)]
    Server(server::ServerCmd),
    /// Accounts (operators and tenants).
    #[command(subcommand)]
    Account(account::AccountCmd),
    /// API tokens.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// The image catalog.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Packages (instance sizes).
    #[command(subcommand)]
    Package(package::PackageCmd),
    /// NIC tags (physical networks).
    #[command(subcommand)]
    Nictag(network::NicTagCmd),
    /// Networks and their addresses.
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// Your fabrics: private VLANs and networks carried between nodes over VXLAN.
    #[command(subcommand)]
    Fabric(fabric::FabricCmd),
    /// Instances (containers): create, list, start, stop, reboot, delete.
    #[command(subcommand)]
    Instance(instance::InstanceCmd),
    /// Jobs: the steps of provisioning and other instance work.
    #[command(subcommand)]
    Job(instance::JobCmd),
    /// The audit log: who changed what, from where.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Firewall rules (Triton's language) for instances with their firewall enabled.
    #[command(subcommand)]
    Fwrule(fwrule::FwRuleCmd),
    /// Your SSH public keys (your instances' root_authorized_keys).
    #[command(subcommand)]
    Key(key::KeyCmd),
}

pub async fn run(c: &Client, fmt: Format, cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Server(s) => server::run(c, fmt, s).await,
        Command::Account(a) => account::run(c, fmt, a).await,
        Command::Token(t) => token::run(c, fmt, t).await,
        Command::Image(i) => image::run(c, fmt, i).await,
        Command::Package(p) => package::run(c, fmt, p).await,
        Command::Nictag(t) => network::run_nictag(c, fmt, t).await,
        Command::Network(n) => network::run(c, fmt, n).await,
        Command::Fabric(f) => fabric::run(c, fmt, f).await,
        Command::Instance(i) => instance::run(c, fmt, i).await,
        Command::Job(j) => instance::run_job(c, fmt, j).await,
        Command::Audit(a) => audit::run(c, fmt, a).await,
        Command::Fwrule(f) => fwrule::run(c, fmt, f).await,
        Command::Key(k) => key::run(c, fmt, k).await,
    }
}

/// `s` as one path segment: fingerprints, tag and metadata keys may hold
/// `/`, `+` or spaces, which must not reach the path as they are.
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Parses `KEY=VALUE`.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

pub fn time(t: &Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}
