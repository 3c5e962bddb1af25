//! `nereid package ...`

use nereid_api::{Package, PackageCreate, PackageUpdate};

use super::key_value;
use crate::client::{Client, Listed, Listing};
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum PackageCmd {
    /// List packages.
    List {
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        listing: Listing,
    },
    /// Show one package.
    Get { id: String },
    /// Create a package (operators only).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "1.0.0")]
        version: String,
        /// Memory in MiB.
        #[arg(long)]
        memory: u64,
        /// Swap in MiB.
        #[arg(long, default_value_t = 0)]
        swap: u64,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// CPU cap in percent of one CPU (0 = none).
        #[arg(long, default_value_t = 0)]
        cpu_cap: u32,
        /// Disk quota in MiB.
        #[arg(long)]
        disk: u64,
        /// container or kvm
        #[arg(long, default_value = "container")]
        brand: nereid_api::Brand,
        #[arg(long, default_value = "")]
        description: String,
        /// KEY=VALUE, repeatable.
        #[arg(long = "trait", value_parser = key_value)]
        traits: Vec<(String, String)>,
    },
    /// Keep a package from new instances.
    Deactivate { id: String },
    /// Make a package usable again.
    Activate { id: String },
    /// Delete a package that was never used.
    Delete { id: String },
}

pub async fn run(c: &Client, fmt: Format, cmd: PackageCmd) -> anyhow::Result<()> {
    match cmd {
        PackageCmd::List { name, listing } => {
            let q: Vec<(&str, String)> = name.into_iter().map(|n| ("name", n)).collect();
            let listed: Listed<Package> = c.list("/v1/packages", &q, &listing).await?;
            let pkgs = &listed.items;
            match fmt {
                Format::Json => output::json(&pkgs),
                Format::Table => output::table(
                    &[
                        "ID", "NAME", "VERSION", "BRAND", "MEMORY", "VCPUS", "DISK", "ACTIVE",
                    ],
                    pkgs.iter()
                        .map(|p| {
                            vec![
                                p.id.to_string(),
                                p.name.clone(),
                                p.version.clone(),
                                p.brand.to_string(),
                                output::bytes(p.memory_mb << 20),
                                p.vcpus.to_string(),
                                output::bytes(p.disk_mb << 20),
                                p.active.to_string(),
                            ]
                        })
                        .collect(),
                ),
            }
            listed.footer(fmt, "packages");
        }
        PackageCmd::Get { id } => show(fmt, &c.get(&format!("/v1/packages/{id}"), &[]).await?),
        PackageCmd::Create {
            name,
            version,
            memory,
            swap,
            vcpus,
            cpu_cap,
            disk,
            brand,
            description,
            traits,
        } => {
            let body = PackageCreate {
                name,
                version,
                description,
                memory_mb: memory,
                swap_mb: swap,
                vcpus,
                cpu_cap,
                disk_mb: disk,
                brand,
                traits: traits
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k,
                            serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v)),
                        )
                    })
                    .collect(),
                owners: vec![],
            };
            show(fmt, &c.post("/v1/packages", &body).await?)
        }
        PackageCmd::Deactivate { id } => show(
            fmt,
            &c.patch(
                &format!("/v1/packages/{id}"),
                &PackageUpdate {
                    active: Some(false),
                    ..Default::default()
                },
            )
            .await?,
        ),
        PackageCmd::Activate { id } => show(
            fmt,
            &c.patch(
                &format!("/v1/packages/{id}"),
                &PackageUpdate {
                    active: Some(true),
                    ..Default::default()
                },
            )
            .await?,
        ),
        PackageCmd::Delete { id } => {
            c.delete(&format!("/v1/packages/{id}")).await?;
            if fmt == Format::Table {
                println!("package {id} deleted");
            }
        }
    }
    Ok(())
}

fn show(fmt: Format, p: &Package) {
    if fmt == Format::Json {
        return output::json(p);
    }
    output::fields(vec![
        ("id", p.id.to_string()),
        ("name", format!("{} {}", p.name, p.version)),
        ("brand", p.brand.to_string()),
        ("memory", output::bytes(p.memory_mb << 20)),
        ("swap", output::bytes(p.swap_mb << 20)),
        ("vcpus", p.vcpus.to_string()),
        (
            "cpu cap",
            if p.cpu_cap == 0 {
                "none".into()
            } else {
                format!("{}%", p.cpu_cap)
            },
        ),
        ("disk", output::bytes(p.disk_mb << 20)),
        ("active", p.active.to_string()),
        ("used", p.used.to_string()),
    ]);
}
