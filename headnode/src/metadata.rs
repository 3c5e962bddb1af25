//! What each instance reads through its node's metadata service
//! (`mdata-get`): the `sdc:` keys (uuid, alias, hostname, owner, server,
//! image, package, brand, nics, resolvers, tags and `tags.<name>`) and the
//! customer keys (the instance's metadata, with `root_authorized_keys`
//! from its owner's SSH keys unless the metadata sets it). Built from the
//! database and pushed to the node with its generation; the node keeps the
//! newest, so pushes may race and repeat.
//!
//! It never stores anything: the database is the source, the node a copy.

use nereid_api::InstanceId;
use nereid_proto::v1 as pb;
use serde_json::json;

use crate::AppState;
use crate::db::NicPlan;
use crate::error::Result;

/// The metadata of an instance as its node should serve it.
pub async fn build(state: &AppState, id: InstanceId) -> Result<pb::InstanceMetadata> {
    let src = state.db.instance_metadata_source(id).await?;
    let nics = state.db.instance_nic_plans(id).await?;
    let keys = state.db.authorized_keys(src.owner.into()).await?;
    Ok(assemble(id, &src, &nics, keys))
}

fn assemble(
    id: InstanceId,
    src: &crate::db::MetadataSource,
    nics: &[NicPlan],
    authorized_keys: String,
) -> pb::InstanceMetadata {
    let opt = |u: Option<uuid::Uuid>| u.map(|u| u.to_string()).unwrap_or_default();
    let mut sdc: std::collections::HashMap<String, String> = [
        ("uuid", id.to_string()),
        ("alias", src.alias.clone()),
        ("hostname", src.alias.clone()),
        ("owner_uuid", src.owner.to_string()),
        ("server_uuid", opt(src.server_id)),
        ("image_uuid", opt(src.image_id)),
        ("billing_id", src.package_id.to_string()),
        ("brand", src.brand.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let nic_list: Vec<_> = nics
        .iter()
        .enumerate()
        .map(|(i, n)| {
            json!({
                "interface": format!("net{i}"),
                "mac": n.mac,
                "ip": n.ip.to_string(),
                "ips": [format!("{}/{}", n.ip, n.prefix_len)],
                "netmask": netmask(n.prefix_len),
                "gateway": n.gateway,
                "gateways": n.gateway.iter().collect::<Vec<_>>(),
                "primary": i == 0,
                "nic_tag": n.nic_tag,
                "vlan_id": n.vlan_id,
                "mtu": n.mtu,
                "network_uuid": n.network_id.to_string(),
            })
        })
        .collect();
    sdc.insert("nics".into(), json!(nic_list).to_string());
    let resolvers = nics
        .first()
        .map(|n| n.resolvers.clone())
        .unwrap_or_default();
    sdc.insert("resolvers".into(), json!(resolvers).to_string());
    sdc.insert("tags".into(), json!(src.tags.0).to_string());
    for (k, v) in &src.tags.0 {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        sdc.insert(format!("tags.{k}"), v);
    }
    let mut customer: std::collections::HashMap<String, String> =
        src.metadata.0.clone().into_iter().collect();
    if !authorized_keys.is_empty() {
        customer
            .entry("root_authorized_keys".into())
            .or_insert(authorized_keys);
    }
    pb::InstanceMetadata {
        generation: src.metadata_generation as u64,
        sdc,
        customer,
    }
}

fn netmask(prefix_len: u8) -> String {
    let bits = if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    };
    std::net::Ipv4Addr::from(bits).to_string()
}

/// Sends the instance's metadata to its node, if it has one.
pub async fn push(state: &AppState, id: InstanceId) -> Result<()> {
    let Some(t) = state.db.instance_placement(id).await? else {
        return Ok(());
    };
    let md = build(state, id).await?;
    state.agents.set_metadata(&t, id, md).await
}

/// Pushes in the background; a node that misses it gets it from the
/// reconciler, which compares the generation the node reports.
pub fn spawn_push(state: &AppState, id: InstanceId) {
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = push(&state, id).await {
            tracing::warn!(instance = %id, "metadata push: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn netmasks_follow_the_prefix() {
        assert_eq!(super::netmask(24), "255.255.255.0");
        assert_eq!(super::netmask(0), "0.0.0.0");
        assert_eq!(super::netmask(32), "255.255.255.255");
    }
}
