//! `nereid network ...` and `nereid nictag ...`

use std::collections::BTreeMap;

use nereid_api::{
    Network, NetworkCreate, NetworkIp, NetworkIpAllocate, NetworkPool, NetworkPoolCreate, NicTag,
    NicTagCreate,
};

use super::key_value;
use crate::client::{Client, Listed, Listing};
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum NicTagCmd {
    /// List nic tags.
    List {
        #[command(flatten)]
        listing: Listing,
    },
    /// Create a nic tag.
    Create {
        name: String,
        #[arg(long)]
        mtu: Option<u32>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a nic tag no network uses.
    Delete { name: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum NetworkCmd {
    /// List networks.
    List {
        #[command(flatten)]
        listing: Listing,
    },
    /// Show one network.
    Get { id: String },
    /// Create a network (operators only).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        nic_tag: String,
        /// CIDR, e.g. 10.88.0.0/24
        #[arg(long)]
        subnet: String,
        #[arg(long)]
        gateway: Option<String>,
        /// First address handed out.
        #[arg(long)]
        start: String,
        /// Last address handed out.
        #[arg(long)]
        end: String,
        /// 0 = untagged.
        #[arg(long, default_value_t = 0)]
        vlan: u16,
        #[arg(long)]
        vni: Option<u32>,
        /// Repeatable.
        #[arg(long = "resolver")]
        resolvers: Vec<String>,
        /// DEST_CIDR=GATEWAY, repeatable.
        #[arg(long = "route", value_parser = key_value)]
        routes: Vec<(String, String)>,
        #[arg(long)]
        mtu: Option<u32>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a network no instance uses.
    Delete { id: String },
    /// A network's addresses.
    #[command(subcommand)]
    Ip(IpCmd),
    /// Network pools: named lists of networks (instances take the first with room).
    #[command(subcommand)]
    Pool(PoolCmd),
}

#[derive(Debug, clap::Subcommand)]
pub enum PoolCmd {
    /// List the pools you may use.
    List,
    /// Show one pool.
    Get { id: String },
    /// Create a pool (operators only) of networks on one nic tag, in order.
    Create {
        #[arg(long)]
        name: String,
        /// A network id or name, repeatable: tried in this order.
        #[arg(long = "network", required = true)]
        networks: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a pool (its networks stay).
    Delete { id: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum IpCmd {
    /// The taken addresses.
    List {
        network: String,
        #[command(flatten)]
        listing: Listing,
    },
    /// Reserve an address (the given one, or the lowest free).
    Reserve {
        network: String,
        #[arg(long)]
        ip: Option<String>,
    },
    /// Free a reserved address.
    Free { network: String, ip: String },
}

pub async fn run_nictag(c: &Client, fmt: Format, cmd: NicTagCmd) -> anyhow::Result<()> {
    match cmd {
        NicTagCmd::List { listing } => {
            let listed: Listed<NicTag> = c.list("/v1/nictags", &[], &listing).await?;
            let tags = &listed.items;
            match fmt {
                Format::Json => output::json(&tags),
                Format::Table => output::table(
                    &["NAME", "MTU", "DESCRIPTION"],
                    tags.iter()
                        .map(|t| vec![t.name.clone(), t.mtu.to_string(), t.description.clone()])
                        .collect(),
                ),
            }
            listed.footer(fmt, "nic tags");
        }
        NicTagCmd::Create {
            name,
            mtu,
            description,
        } => {
            let t: NicTag = c
                .post(
                    "/v1/nictags",
                    &NicTagCreate {
                        name,
                        mtu,
                        description,
                    },
                )
                .await?;
            match fmt {
                Format::Json => output::json(&t),
                Format::Table => println!("nic tag {} created (mtu {})", t.name, t.mtu),
            }
        }
        NicTagCmd::Delete { name } => {
            c.delete(&format!("/v1/nictags/{name}")).await?;
            if fmt == Format::Table {
                println!("nic tag {name} deleted");
            }
        }
    }
    Ok(())
}

pub async fn run(c: &Client, fmt: Format, cmd: NetworkCmd) -> anyhow::Result<()> {
    match cmd {
        NetworkCmd::List { listing } => {
            let listed: Listed<Network> = c.list("/v1/networks", &[], &listing).await?;
            table(fmt, &listed.items);
            listed.footer(fmt, "networks");
        }
        NetworkCmd::Get { id } => show(fmt, &c.get(&format!("/v1/networks/{id}"), &[]).await?),
        NetworkCmd::Create {
            name,
            nic_tag,
            subnet,
            gateway,
            start,
            end,
            vlan,
            vni,
            resolvers,
            routes,
            mtu,
            description,
        } => {
            let body = NetworkCreate {
                name,
                nic_tag,
                vlan_id: vlan,
                vni,
                subnet,
                gateway,
                provision_start: start,
                provision_end: end,
                resolvers,
                routes: routes.into_iter().collect::<BTreeMap<_, _>>(),
                mtu,
                owners: vec![],
                description,
            };
            show(fmt, &c.post("/v1/networks", &body).await?)
        }
        NetworkCmd::Delete { id } => {
            c.delete(&format!("/v1/networks/{id}")).await?;
            if fmt == Format::Table {
                println!("network {id} deleted");
            }
        }
        NetworkCmd::Ip(IpCmd::List { network, listing }) => {
            let listed: Listed<NetworkIp> = c
                .list(&format!("/v1/networks/{network}/ips"), &[], &listing)
                .await?;
            let ips = &listed.items;
            match fmt {
                Format::Json => output::json(&ips),
                Format::Table => output::table(
                    &["IP", "HELD BY", "OWNER", "SINCE"],
                    ips.iter()
                        .map(|i| {
                            vec![
                                i.ip.clone(),
                                i.owner_type.clone(),
                                i.owner_id
                                    .map(|o| o.to_string())
                                    .unwrap_or_else(|| "-".into()),
                                super::time(&Some(i.updated_at)),
                            ]
                        })
                        .collect(),
                ),
            }
            listed.footer(fmt, "addresses");
        }
        NetworkCmd::Ip(IpCmd::Reserve { network, ip }) => {
            let r: NetworkIp = c
                .post(
                    &format!("/v1/networks/{network}/ips"),
                    &NetworkIpAllocate { ip },
                )
                .await?;
            match fmt {
                Format::Json => output::json(&r),
                Format::Table => println!("{}", r.ip),
            }
        }
        NetworkCmd::Pool(PoolCmd::List) => {
            let page: nereid_api::Page<NetworkPool> = c.get("/v1/network-pools", &[]).await?;
            match fmt {
                Format::Json => output::json(&page.items),
                Format::Table => output::table(
                    &["ID", "NAME", "NIC TAG", "NETWORKS"],
                    page.items
                        .iter()
                        .map(|p| {
                            vec![
                                p.id.to_string(),
                                p.name.clone(),
                                p.nic_tag.clone(),
                                p.networks
                                    .iter()
                                    .map(|n| n.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            ]
                        })
                        .collect(),
                ),
            }
        }
        NetworkCmd::Pool(PoolCmd::Get { id }) => {
            show_pool(fmt, &c.get(&format!("/v1/network-pools/{id}"), &[]).await?)
        }
        NetworkCmd::Pool(PoolCmd::Create {
            name,
            networks,
            description,
        }) => {
            let body = NetworkPoolCreate {
                name,
                networks,
                owners: vec![],
                description,
            };
            show_pool(fmt, &c.post("/v1/network-pools", &body).await?)
        }
        NetworkCmd::Pool(PoolCmd::Delete { id }) => {
            c.delete(&format!("/v1/network-pools/{id}")).await?;
            if fmt == Format::Table {
                println!("network pool {id} deleted");
            }
        }
        NetworkCmd::Ip(IpCmd::Free { network, ip }) => {
            c.delete(&format!("/v1/networks/{network}/ips/{ip}"))
                .await?;
            if fmt == Format::Table {
                println!("{ip} freed");
            }
        }
    }
    Ok(())
}

/// Networks, one line each (a fabric network's VLAN is its fabric VLAN).
pub(super) fn table(fmt: Format, nets: &[Network]) {
    match fmt {
        Format::Json => output::json(&nets),
        Format::Table => output::table(
            &[
                "ID", "NAME", "NIC TAG", "VLAN", "VNI", "SUBNET", "GATEWAY", "RANGE",
            ],
            nets.iter()
                .map(|n| {
                    vec![
                        n.id.to_string(),
                        n.name.clone(),
                        n.nic_tag.clone(),
                        match n.fabric_vlan_id {
                            Some(v) => format!("fabric {v}"),
                            None => n.vlan_id.to_string(),
                        },
                        n.vni.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                        n.subnet.clone(),
                        n.gateway.clone().unwrap_or_else(|| "-".into()),
                        format!("{}-{}", n.provision_start, n.provision_end),
                    ]
                })
                .collect(),
        ),
    }
}

pub(super) fn show(fmt: Format, n: &Network) {
    if fmt == Format::Json {
        return output::json(n);
    }
    output::fields(vec![
        ("id", n.id.to_string()),
        ("name", n.name.clone()),
        ("nic tag", n.nic_tag.clone()),
        (
            "vlan",
            match n.fabric_vlan_id {
                Some(v) => format!("fabric VLAN {v}"),
                None => n.vlan_id.to_string(),
            },
        ),
        (
            "vni",
            n.vni.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
        ),
        ("subnet", n.subnet.clone()),
        ("gateway", n.gateway.clone().unwrap_or_else(|| "-".into())),
        (
            "range",
            format!("{} - {}", n.provision_start, n.provision_end),
        ),
        ("resolvers", n.resolvers.join(", ")),
        (
            "routes",
            n.routes
                .iter()
                .map(|(d, g)| format!("{d} via {g}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("mtu", n.mtu.to_string()),
    ]);
}

fn show_pool(fmt: Format, p: &NetworkPool) {
    if fmt == Format::Json {
        return output::json(p);
    }
    output::fields(vec![
        ("id", p.id.to_string()),
        ("name", p.name.clone()),
        ("nic tag", p.nic_tag.clone()),
        (
            "networks",
            p.networks
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("description", p.description.clone()),
    ]);
}
