//! `nereid instance tag|metadata|rename|...-deletion-protection`: an
//! instance's tags and metadata after create (what `mdata-get` reads inside
//! it), its alias and its deletion protection.

use std::collections::BTreeMap;

use nereid_api::{Instance, InstanceRename};
use reqwest::Method;
use serde_json::{Map, Value};

use super::instance::{resolve, show};
use super::key_value;
use crate::client::Client;
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum MapCmd {
    /// List them.
    List { id: String },
    /// Show one value.
    Get { id: String, key: String },
    /// Add KEY=VALUE pairs (values of existing keys are replaced).
    Set {
        id: String,
        #[arg(value_parser = key_value, required = true)]
        pairs: Vec<(String, String)>,
        /// Replace them all with these instead of adding.
        #[arg(long)]
        replace: bool,
    },
    /// Remove one key, or all of them with --all.
    Delete {
        id: String,
        key: Option<String>,
        #[arg(long, conflicts_with = "key")]
        all: bool,
    },
}

/// Reads `KEY=@PATH` values from files (a user-script, say); others as given.
fn values(pairs: Vec<(String, String)>) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .into_iter()
        .map(|(k, v)| match v.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map(|text| (k, text))
                .map_err(|e| anyhow::anyhow!("cannot read {path}: {e}")),
            None => Ok((k, v)),
        })
        .collect()
}

/// `what` is `tags` or `metadata`.
pub async fn run_map(c: &Client, fmt: Format, what: &str, cmd: MapCmd) -> anyhow::Result<()> {
    match cmd {
        MapCmd::List { id } => {
            let id = resolve(c, &id).await?;
            let map: Map<String, Value> = c.get(&format!("/v1/instances/{id}/{what}"), &[]).await?;
            print_map(fmt, &map);
        }
        MapCmd::Get { id, key } => {
            let id = resolve(c, &id).await?;
            let v: Value = c
                .get(
                    &format!("/v1/instances/{id}/{what}/{}", super::path_segment(&key)),
                    &[],
                )
                .await?;
            match (fmt, v) {
                (Format::Table, Value::String(s)) => {
                    print!("{s}{}", if s.ends_with('\n') { "" } else { "\n" })
                }
                (Format::Table, other) => println!("{other}"),
                (Format::Json, v) => output::json(&v),
            }
        }
        MapCmd::Set { id, pairs, replace } => {
            let id = resolve(c, &id).await?;
            let pairs = values(pairs)?;
            let body: Map<String, Value> = if what == "tags" {
                pairs.into_iter().map(|(k, v)| (k, tag_value(&v))).collect()
            } else {
                pairs
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect()
            };
            let method = if replace { Method::PUT } else { Method::POST };
            let map: Map<String, Value> = c
                .call(
                    method,
                    &format!("/v1/instances/{id}/{what}"),
                    &[],
                    Some(&body),
                )
                .await?;
            print_map(fmt, &map);
        }
        MapCmd::Delete { id, key, all } => {
            let id = resolve(c, &id).await?;
            match (key, all) {
                (Some(k), _) => {
                    c.delete(&format!(
                        "/v1/instances/{id}/{what}/{}",
                        super::path_segment(&k)
                    ))
                    .await?
                }
                (None, true) => c.delete(&format!("/v1/instances/{id}/{what}")).await?,
                (None, false) => anyhow::bail!("name a key, or --all"),
            }
        }
    }
    Ok(())
}

/// `true`, `false` and numbers become JSON ones, as tags hold them.
fn tag_value(v: &str) -> Value {
    match serde_json::from_str::<Value>(v) {
        Ok(j @ (Value::Bool(_) | Value::Number(_))) => j,
        _ => Value::String(v.to_string()),
    }
}

fn print_map(fmt: Format, map: &Map<String, Value>) {
    match fmt {
        Format::Json => output::json(map),
        Format::Table => output::table(
            &["KEY", "VALUE"],
            map.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    vec![k.clone(), v.lines().next().unwrap_or_default().to_string()]
                })
                .collect(),
        ),
    }
}

pub async fn rename(c: &Client, fmt: Format, id: &str, alias: String) -> anyhow::Result<()> {
    let id = resolve(c, id).await?;
    let inst: Instance = c
        .post(
            &format!("/v1/instances/{id}/rename"),
            &InstanceRename { alias },
        )
        .await?;
    show(fmt, &inst);
    Ok(())
}

pub async fn deletion_protection(
    c: &Client,
    fmt: Format,
    id: &str,
    on: bool,
) -> anyhow::Result<()> {
    let id = resolve(c, id).await?;
    let verb = if on { "enable" } else { "disable" };
    let inst: Instance = c
        .call::<(), _>(
            Method::POST,
            &format!("/v1/instances/{id}/{verb}-deletion-protection"),
            &[],
            None,
        )
        .await?;
    show(fmt, &inst);
    Ok(())
}

/// Create's `--metadata KEY=VALUE` pairs, with `@PATH` values read from files.
pub fn create_metadata(pairs: Vec<(String, String)>) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(values(pairs)?.into_iter().collect())
}
