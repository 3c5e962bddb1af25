//! A typed wrapper over the `zfs` command: datasets, properties, snapshots,
//! clones. Uses only what both zfs-fuse and OpenZFS support (`zfs get -Hp`,
//! no `zfs list -p`), so the same code runs here and on a real host.
//!
//! Output parsing is separate from execution and unit-tested. Errors keep the
//! dataset, the command and its stderr. This module never decides policy
//! (which dataset holds what): callers do.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cmd::{self, CmdError};

#[derive(Debug, thiserror::Error)]
pub enum ZfsError {
    #[error("dataset {0} does not exist")]
    NotFound(String),
    #[error("zfs {op} of {dataset} failed")]
    Command {
        op: &'static str,
        dataset: String,
        #[source]
        source: CmdError,
    },
}

pub type Result<T> = std::result::Result<T, ZfsError>;

const TIMEOUT: Duration = Duration::from_secs(60);

fn is_missing(e: &CmdError) -> bool {
    matches!(e, CmdError::Failed { stderr, .. } if stderr.contains("does not exist"))
}

fn is_busy(e: &CmdError) -> bool {
    matches!(e, CmdError::Failed { stderr, .. } if stderr.contains("busy"))
}

/// How many `zfs` commands run at once. A burst of provisions must queue
/// here: zfs-fuse wedges (its callers hang in the kernel for minutes) when
/// dozens of clones and mounts hit it together, and OpenZFS serialises them
/// in its transaction groups anyway.
const CONCURRENT_COMMANDS: usize = 4;
static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_COMMANDS);

async fn zfs(op: &'static str, dataset: &str, args: &[&str]) -> Result<String> {
    let _slot = SLOTS
        .acquire()
        .await
        .expect("the zfs semaphore is never closed");
    cmd::run("zfs", args, TIMEOUT).await.map_err(|source| {
        if is_missing(&source) {
            ZfsError::NotFound(dataset.to_string())
        } else {
            ZfsError::Command {
                op,
                dataset: dataset.to_string(),
                source,
            }
        }
    })
}

fn prop_args(props: &[(&str, &str)]) -> Vec<String> {
    props
        .iter()
        .flat_map(|(k, v)| ["-o".to_string(), format!("{k}={v}")])
        .collect()
}

/// Creates a filesystem with properties (parents must exist).
pub async fn create(dataset: &str, props: &[(&str, &str)]) -> Result<()> {
    let mut args: Vec<String> = vec!["create".into()];
    args.extend(prop_args(props));
    args.push(dataset.into());
    zfs(
        "create",
        dataset,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await
    .map(|_| ())
}

/// Creates a filesystem unless it exists.
pub async fn ensure(dataset: &str, props: &[(&str, &str)]) -> Result<()> {
    if exists(dataset).await? {
        return Ok(());
    }
    match create(dataset, props).await {
        Err(ZfsError::Command {
            source: CmdError::Failed { stderr, .. },
            ..
        }) if stderr.contains("already exists") => Ok(()),
        other => other,
    }
}

pub async fn exists(dataset: &str) -> Result<bool> {
    match zfs(
        "get",
        dataset,
        &["get", "-H", "-o", "value", "name", dataset],
    )
    .await
    {
        Ok(_) => Ok(true),
        Err(ZfsError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Properties of one dataset or snapshot, exact values (`-p`).
pub async fn get(dataset: &str, props: &[&str]) -> Result<BTreeMap<String, String>> {
    let list = props.join(",");
    let out = zfs(
        "get",
        dataset,
        &["get", "-Hp", "-o", "name,property,value", &list, dataset],
    )
    .await?;
    Ok(parse_get(&out).remove(dataset).unwrap_or_default())
}

/// `zfs get -Hp -r` of a dataset: its descendants and snapshots too.
pub async fn get_tree(
    dataset: &str,
    props: &[&str],
) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let list = props.join(",");
    let out = zfs(
        "get",
        dataset,
        &[
            "get",
            "-Hp",
            "-r",
            "-o",
            "name,property,value",
            &list,
            dataset,
        ],
    )
    .await?;
    Ok(parse_get(&out))
}

/// Properties of a dataset and all its descendant filesystems (zfs-fuse's
/// `zfs get` has no `-t`, so snapshots are dropped here).
pub async fn get_recursive(
    dataset: &str,
    props: &[&str],
) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut map = get_tree(dataset, props).await?;
    map.retain(|name, _| !name.contains('@'));
    Ok(map)
}

pub async fn set(dataset: &str, prop: &str, value: &str) -> Result<()> {
    zfs(
        "set",
        dataset,
        &["set", &format!("{prop}={value}"), dataset],
    )
    .await
    .map(|_| ())
}

pub async fn snapshot(snap: &str) -> Result<()> {
    zfs("snapshot", snap, &["snapshot", snap]).await.map(|_| ())
}

pub async fn clone(snap: &str, dataset: &str, props: &[(&str, &str)]) -> Result<()> {
    let mut args: Vec<String> = vec!["clone".into()];
    args.extend(prop_args(props));
    args.push(snap.into());
    args.push(dataset.into());
    zfs(
        "clone",
        dataset,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await
    .map(|_| ())
}

pub async fn rollback(snap: &str) -> Result<()> {
    zfs("rollback", snap, &["rollback", "-r", snap])
        .await
        .map(|_| ())
}

/// The snapshots of a dataset (not of its descendants), oldest first:
/// (snapshot name without the dataset, used bytes, creation unix seconds).
pub async fn snapshots(dataset: &str) -> Result<Vec<(String, u64, i64)>> {
    let tree = get_tree(dataset, &["used", "creation", "createtxg"]).await?;
    let prefix = format!("{dataset}@");
    // Ordered by the transaction group that made them: creation times are
    // whole seconds.
    let mut snaps: Vec<(u64, String, u64, i64)> = tree
        .into_iter()
        .filter_map(|(name, props)| {
            let short = name.strip_prefix(&prefix)?.to_string();
            let used = props.get("used")?.parse().ok()?;
            let created = props.get("creation")?.parse().ok()?;
            let txg = props.get("createtxg")?.parse().ok()?;
            Some((txg, short, used, created))
        })
        .collect();
    snaps.sort();
    Ok(snaps.into_iter().map(|(_, n, u, c)| (n, u, c)).collect())
}

/// Destroys a dataset (and its snapshots with `recursive`); a missing one is
/// fine. Unmounts first: zfs-fuse refuses to destroy a mounted dataset.
pub async fn destroy(dataset: &str, recursive: bool) -> Result<()> {
    if !exists(dataset).await? {
        return Ok(());
    }
    let mut last = None;
    for _ in 0..20 {
        if !dataset.contains('@') {
            let _ = zfs("unmount", dataset, &["unmount", "-f", dataset]).await;
        }
        let args: &[&str] = if recursive {
            &["destroy", "-r", dataset]
        } else {
            &["destroy", dataset]
        };
        match zfs("destroy", dataset, args).await {
            Ok(_) | Err(ZfsError::NotFound(_)) => return Ok(()),
            Err(ZfsError::Command {
                source,
                op,
                dataset: d,
            }) if is_busy(&source) => {
                last = Some(ZfsError::Command {
                    source,
                    op,
                    dataset: d,
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("a busy error was recorded"))
}

/// The mountpoint of a mounted dataset.
pub async fn mountpoint(dataset: &str) -> Result<std::path::PathBuf> {
    let p = get(dataset, &["mountpoint"]).await?;
    Ok(p.get("mountpoint").cloned().unwrap_or_default().into())
}

/// Parses `zfs get -Hp -o name,property,value`: dataset -> property -> value.
/// A value of `-` (unset user property) is left out.
pub fn parse_get(out: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut map: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for line in out.lines() {
        let mut f = line.splitn(3, '\t');
        let (Some(name), Some(prop), Some(value)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let entry = map.entry(name.to_string()).or_default();
        if value != "-" {
            entry.insert(prop.to_string(), value.to_string());
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zfs_get_output_is_parsed_per_dataset_and_unset_values_dropped() {
        let out = "tank/instances/a\tquota\t104857600\ntank/instances/a\tnereid:spec\t{\"x\":\"a\\tb\"}\n\
                   tank/instances/b\tnereid:spec\t-\ntank/instances/b\tused\t0\n";
        let m = parse_get(out);
        assert_eq!(m["tank/instances/a"]["quota"], "104857600");
        assert_eq!(m["tank/instances/a"]["nereid:spec"], "{\"x\":\"a\\tb\"}");
        assert!(!m["tank/instances/b"].contains_key("nereid:spec"));
        assert_eq!(m["tank/instances/b"]["used"], "0");
    }

    #[test]
    fn properties_become_repeated_dash_o_arguments() {
        assert_eq!(
            prop_args(&[("quota", "1G"), ("atime", "off")]),
            vec!["-o", "quota=1G", "-o", "atime=off"]
        );
    }
}
