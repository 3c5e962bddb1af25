//! `nereid fabric vlan ...` and `nereid fabric network ...`: the caller's
//! own VLANs and networks, carried between nodes over VXLAN.

use std::collections::BTreeMap;

use nereid_api::{FabricNetworkCreate, FabricVlan, FabricVlanCreate, Network, Page};
use reqwest::Method;

use super::key_value;
use crate::client::{Client, Listed, Listing};
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum FabricCmd {
    /// Your fabric VLANs.
    #[command(subcommand)]
    Vlan(VlanCmd),
    /// Networks on your fabric VLANs.
    #[command(subcommand)]
    Network(FabricNetworkCmd),
}

#[derive(Debug, clap::Args)]
pub struct Owner {
    /// Operators: the account whose fabric it is (default: yours).
    #[arg(long)]
    owner: Option<String>,
}

impl Owner {
    fn query(&self) -> Vec<(&'static str, String)> {
        self.owner.iter().map(|o| ("owner", o.clone())).collect()
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum VlanCmd {
    /// List fabric VLANs.
    List {
        #[command(flatten)]
        owner: Owner,
    },
    /// Show one fabric VLAN.
    Get {
        vlan_id: u16,
        #[command(flatten)]
        owner: Owner,
    },
    /// Create a fabric VLAN (its VNI is drawn by the datacenter).
    Create {
        /// 0-4095, unique among your VLANs.
        vlan_id: u16,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        owner: Owner,
    },
    /// Delete a fabric VLAN with no network left.
    Delete {
        vlan_id: u16,
        #[command(flatten)]
        owner: Owner,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum FabricNetworkCmd {
    /// List the networks of a fabric VLAN.
    List {
        vlan_id: u16,
        #[command(flatten)]
        owner: Owner,
        #[command(flatten)]
        listing: Listing,
    },
    /// Create a network on a fabric VLAN; its subnet may overlap other accounts'.
    Create {
        vlan_id: u16,
        #[arg(long)]
        name: String,
        /// CIDR, e.g. 192.168.128.0/24
        #[arg(long)]
        subnet: String,
        /// Each node running its instances provides it, NATed out to the
        /// datacenter's NAT network (unless --no-nat).
        #[arg(long)]
        gateway: Option<String>,
        /// A gateway without NAT (something else routes it).
        #[arg(long)]
        no_nat: bool,
        /// First address handed out.
        #[arg(long)]
        start: String,
        /// Last address handed out.
        #[arg(long)]
        end: String,
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
        #[command(flatten)]
        owner: Owner,
    },
    /// Delete a fabric network no instance uses.
    Delete {
        vlan_id: u16,
        id: String,
        #[command(flatten)]
        owner: Owner,
    },
}

pub async fn run(c: &Client, fmt: Format, cmd: FabricCmd) -> anyhow::Result<()> {
    match cmd {
        FabricCmd::Vlan(VlanCmd::List { owner }) => {
            let page: Page<FabricVlan> = c.get("/v1/fabrics/vlans", &owner.query()).await?;
            match fmt {
                Format::Json => output::json(&page.items),
                Format::Table => output::table(
                    &["VLAN", "NAME", "VNI", "OWNER", "DESCRIPTION"],
                    page.items
                        .iter()
                        .map(|v| {
                            vec![
                                v.vlan_id.to_string(),
                                v.name.clone(),
                                v.vni.to_string(),
                                v.owner.to_string(),
                                v.description.clone(),
                            ]
                        })
                        .collect(),
                ),
            }
        }
        FabricCmd::Vlan(VlanCmd::Get { vlan_id, owner }) => show_vlan(
            fmt,
            &c.get(&format!("/v1/fabrics/vlans/{vlan_id}"), &owner.query())
                .await?,
        ),
        FabricCmd::Vlan(VlanCmd::Create {
            vlan_id,
            name,
            description,
            owner,
        }) => {
            let body = FabricVlanCreate {
                vlan_id,
                name,
                description,
                owner: owner.owner.map(|o| o.parse()).transpose()?,
            };
            show_vlan(fmt, &c.post("/v1/fabrics/vlans", &body).await?)
        }
        FabricCmd::Vlan(VlanCmd::Delete { vlan_id, owner }) => {
            c.delete_with(&format!("/v1/fabrics/vlans/{vlan_id}"), &owner.query())
                .await?;
            if fmt == Format::Table {
                println!("fabric VLAN {vlan_id} deleted");
            }
        }
        FabricCmd::Network(FabricNetworkCmd::List {
            vlan_id,
            owner,
            listing,
        }) => {
            let listed: Listed<Network> = c
                .list(
                    &format!("/v1/fabrics/vlans/{vlan_id}/networks"),
                    &owner.query(),
                    &listing,
                )
                .await?;
            super::network::table(fmt, &listed.items);
            listed.footer(fmt, "networks");
        }
        FabricCmd::Network(FabricNetworkCmd::Create {
            vlan_id,
            name,
            subnet,
            gateway,
            start,
            end,
            resolvers,
            routes,
            mtu,
            description,
            owner,
            no_nat,
        }) => {
            let body = FabricNetworkCreate {
                internet_nat: no_nat.then_some(false),
                name,
                subnet,
                gateway,
                provision_start: start,
                provision_end: end,
                resolvers,
                routes: routes.into_iter().collect::<BTreeMap<_, _>>(),
                mtu,
                description,
            };
            let n: Network = c
                .call(
                    Method::POST,
                    &format!("/v1/fabrics/vlans/{vlan_id}/networks"),
                    &owner.query(),
                    Some(&body),
                )
                .await?;
            super::network::show(fmt, &n)
        }
        FabricCmd::Network(FabricNetworkCmd::Delete { vlan_id, id, owner }) => {
            c.delete_with(
                &format!("/v1/fabrics/vlans/{vlan_id}/networks/{id}"),
                &owner.query(),
            )
            .await?;
            if fmt == Format::Table {
                println!("fabric network {id} deleted");
            }
        }
    }
    Ok(())
}

fn show_vlan(fmt: Format, v: &FabricVlan) {
    if fmt == Format::Json {
        return output::json(v);
    }
    output::fields(vec![
        ("vlan", v.vlan_id.to_string()),
        ("name", v.name.clone()),
        ("vni", v.vni.to_string()),
        ("owner", v.owner.to_string()),
        ("description", v.description.clone()),
    ]);
}
