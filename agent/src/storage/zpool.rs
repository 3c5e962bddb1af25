//! Zpools: which exist, their health and exact sizes. Uses only what both
//! zfs-fuse and OpenZFS support: `zpool list -H -o name,health` for names,
//! and `zfs get -Hp` on each pool's root dataset for exact byte counts
//! (zfs-fuse's `zpool` has no `-p`).

use std::time::Duration;

use crate::cmd::{self, CmdError};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pool {
    pub name: String,
    pub health: String,
    pub used_bytes: u64,
    pub available_bytes: u64,
}

const TIMEOUT: Duration = Duration::from_secs(20);

/// Every imported pool with its sizes.
pub async fn list() -> Result<Vec<Pool>, CmdError> {
    let names = cmd::run("zpool", &["list", "-H", "-o", "name,health"], TIMEOUT).await?;
    let mut pools = parse_list(&names);
    if pools.is_empty() {
        return Ok(pools);
    }
    let mut args = vec!["get", "-Hp", "-o", "name,property,value", "used,available"];
    args.extend(pools.iter().map(|p| p.name.as_str()));
    match cmd::run("zfs", &args, TIMEOUT).await {
        Ok(props) => apply_sizes(&mut pools, &props),
        // A pool destroyed or exported since `zpool list` fails the whole
        // call: ask each pool alone, and leave out only those that are gone.
        Err(e) => {
            let mut kept = Vec::new();
            for mut pool in pools {
                let args = ["get", "-Hp", "-o", "name,property,value", "used,available"];
                match cmd::run("zfs", &[&args[..], &[pool.name.as_str()]].concat(), TIMEOUT).await {
                    Ok(props) => {
                        apply_sizes(std::slice::from_mut(&mut pool), &props);
                        kept.push(pool);
                    }
                    Err(_) if !still_imported(&pool.name).await => {}
                    Err(_) => return Err(e),
                }
            }
            pools = kept;
        }
    }
    Ok(pools)
}

/// Whether `zpool list` still shows the pool.
async fn still_imported(name: &str) -> bool {
    match cmd::run("zpool", &["list", "-H", "-o", "name,health"], TIMEOUT).await {
        Ok(out) => parse_list(&out).iter().any(|p| p.name == name),
        Err(_) => true,
    }
}

/// Parses `zpool list -H -o name,health`.
pub fn parse_list(out: &str) -> Vec<Pool> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let name = f.next()?.trim();
            if name.is_empty() {
                return None;
            }
            Some(Pool {
                name: name.to_string(),
                health: f.next().unwrap_or("").trim().to_string(),
                ..Default::default()
            })
        })
        .collect()
}

/// Applies `zfs get -Hp -o name,property,value used,available` to the pools.
pub fn apply_sizes(pools: &mut [Pool], out: &str) {
    for l in out.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        let [name, prop, value] = f[..] else { continue };
        let Some(pool) = pools.iter_mut().find(|p| p.name == name) else {
            continue;
        };
        let Ok(v) = value.parse::<u64>() else {
            continue;
        };
        match prop {
            "used" => pool.used_bytes = v,
            "available" => pool.available_bytes = v,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_and_their_exact_sizes_are_parsed() {
        let mut pools = parse_list("tank\tONLINE\nnereid-dev\tDEGRADED\n");
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[1].health, "DEGRADED");
        apply_sizes(
            &mut pools,
            "tank\tused\t569344\ntank\tavailable\t1065304064\nnereid-dev\tused\t-\nother\tused\t5\n",
        );
        assert_eq!(pools[0].used_bytes, 569344);
        assert_eq!(pools[0].available_bytes, 1065304064);
        assert_eq!(pools[1].used_bytes, 0);
    }

    #[test]
    fn no_pools_is_an_empty_list() {
        assert!(parse_list("").is_empty());
    }
}
