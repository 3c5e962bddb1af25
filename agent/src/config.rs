//! The agent's command line (each flag also read from a `NEREID_AGENT_*`
//! environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "nereid-agent",
    version,
    about = "Nereid agent: makes a compute node match what the headnode wants"
)]
pub struct Flags {
    /// The headnode's gRPC address, e.g. https://10.0.0.1:8441 (always mutual TLS)
    #[arg(long, env = "NEREID_AGENT_HEADNODE")]
    pub headnode: String,
    /// A join token from `nereid server join-token create` (first start only).
    #[arg(long, env = "NEREID_AGENT_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// A file holding the join token (first start only).
    #[arg(long, env = "NEREID_AGENT_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Where the agent keeps its identity and setup.
    #[arg(
        long,
        env = "NEREID_AGENT_STATE_DIR",
        default_value = "/var/lib/nereid/agent"
    )]
    pub state_dir: PathBuf,
    /// Where the agent's gRPC service listens (port 0 picks a free port).
    #[arg(long, env = "NEREID_AGENT_LISTEN", default_value = "0.0.0.0:8442")]
    pub listen: SocketAddr,
    /// Where the Prometheus metrics are served (`GET /metrics`, plain HTTP:
    /// bind it to an address only the monitoring can reach). Off by default.
    #[arg(long, env = "NEREID_AGENT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// The nftables table (bridge family) this agent owns for its ports'
    /// anti-spoofing rules; it never touches another.
    #[arg(long, env = "NEREID_AGENT_NFT_TABLE", default_value = "nereid")]
    pub nft_table: String,
    /// The address the headnode uses to reach this agent; defaults to the
    /// listen address (required when listening on 0.0.0.0).
    #[arg(long, env = "NEREID_AGENT_ADVERTISE")]
    pub advertise: Option<std::net::IpAddr>,
    /// Report this machine id instead of /etc/machine-id (for several test
    /// nodes on one machine).
    #[arg(long, env = "NEREID_AGENT_MACHINE_ID")]
    pub machine_id: Option<String>,
    /// Report this hostname instead of the host's.
    #[arg(long, env = "NEREID_AGENT_HOSTNAME")]
    pub hostname: Option<String>,
    /// Offer instances this much memory (MiB) instead of all the host has:
    /// keeps some for the host, or makes small test nodes on a big machine.
    #[arg(long, env = "NEREID_AGENT_MEMORY_MB")]
    pub memory_mb: Option<u64>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "NEREID_AGENT_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// The host uid/gid range containers run in, BASE:COUNT (as /etc/subuid
    /// gives people): the first 65536 ids are shared by all containers, each
    /// further 65536 can be one isolated container's. It may hold no id of
    /// the host's users or groups.
    #[arg(
        long,
        env = "NEREID_AGENT_UID_RANGE",
        default_value = "1000000000:67174400"
    )]
    pub uid_range: crate::idmap::IdRange,
}
