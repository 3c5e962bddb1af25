//! NIC tags, networks and network addresses. Overlapping subnets on one nic
//! tag and VLAN are refused by an exclusion constraint; an address is one row,
//! so it cannot be handed out twice, and allocation takes the lowest free row
//! with `FOR UPDATE SKIP LOCKED`, so concurrent allocations never wait on
//! each other or collide.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use nereid_api::{AccountId, Network, NetworkId, NetworkIp, NicTag, Page};
use sqlx::types::Json;
use uuid::Uuid;

use super::{Datastore, into_page, is_unique_violation};
use crate::error::{Error, Result};
use crate::ipam::Addresses;

#[derive(sqlx::FromRow)]
struct NicTagRow {
    name: String,
    mtu: i32,
    description: String,
    created_at: DateTime<Utc>,
}

impl From<NicTagRow> for NicTag {
    fn from(r: NicTagRow) -> NicTag {
        NicTag {
            name: r.name,
            mtu: r.mtu as u32,
            description: r.description,
            created_at: r.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct NetworkRow {
    id: Uuid,
    name: String,
    nic_tag: String,
    vlan_id: i32,
    vni: Option<i32>,
    fabric_vlan_id: Option<i32>,
    internet_nat: bool,
    subnet: String,
    gateway: Option<String>,
    provision_start: String,
    provision_end: String,
    resolvers: Vec<String>,
    routes: Json<BTreeMap<String, String>>,
    mtu: i32,
    owners: Vec<Uuid>,
    description: String,
    created_at: DateTime<Utc>,
}

impl From<NetworkRow> for Network {
    fn from(r: NetworkRow) -> Network {
        Network {
            id: r.id.into(),
            name: r.name,
            nic_tag: r.nic_tag,
            vlan_id: r.vlan_id as u16,
            vni: r.vni.map(|v| v as u32),
            fabric_vlan_id: r.fabric_vlan_id.map(|v| v as u16),
            internet_nat: r.internet_nat,
            subnet: r.subnet,
            gateway: r.gateway,
            provision_start: r.provision_start,
            provision_end: r.provision_end,
            resolvers: r.resolvers,
            routes: r.routes.0,
            mtu: r.mtu as u32,
            owners: r.owners.into_iter().map(AccountId::from).collect(),
            description: r.description,
            created_at: r.created_at,
        }
    }
}

const NETWORK_COLUMNS: &str = "id, name, nic_tag, vlan_id, vni, fabric_vlan_id, internet_nat, subnet::text AS subnet, host(gateway) AS gateway,
    host(provision_start) AS provision_start, host(provision_end) AS provision_end,
    ARRAY(SELECT host(r) FROM unnest(resolvers) r) AS resolvers, routes, mtu, owners, description, created_at";

#[derive(sqlx::FromRow)]
struct IpRow {
    network_id: Uuid,
    ip: String,
    owner_type: String,
    owner_id: Option<Uuid>,
    updated_at: DateTime<Utc>,
}

impl From<IpRow> for NetworkIp {
    fn from(r: IpRow) -> NetworkIp {
        NetworkIp {
            network_id: r.network_id.into(),
            reserved: r.owner_type == "reservation",
            ip: r.ip,
            owner_type: r.owner_type,
            owner_id: r.owner_id,
            updated_at: r.updated_at,
        }
    }
}

/// The most addresses one account's fabric networks may hold in all (each
/// is a row): a tenant cannot make the datastore grow without bound.
pub const FABRIC_ADDRESSES_PER_ACCOUNT: u64 = 65_536;

/// Whether `owner`'s fabric networks have room for `more` addresses; holds
/// the account's fabric VLANs locked, so concurrent creates queue.
async fn fabric_room(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    owner: AccountId,
    more: u64,
) -> Result<()> {
    sqlx::query("SELECT 1 FROM fabric_vlans WHERE owner = $1 FOR UPDATE")
        .bind(owner.as_uuid())
        .execute(&mut **tx)
        .await?;
    let (used,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(sum(provision_end - provision_start + 1), 0)::bigint FROM networks
          WHERE fabric_owner = $1",
    )
    .bind(owner.as_uuid())
    .fetch_one(&mut **tx)
    .await?;
    if used as u64 + more > FABRIC_ADDRESSES_PER_ACCOUNT {
        return Err(Error::QuotaExceeded(format!(
            "fabric addresses: the account's fabric networks hold {used} addresses and this one \
             {more}; at most {FABRIC_ADDRESSES_PER_ACCOUNT} in all"
        )));
    }
    Ok(())
}

/// The bytes VXLAN adds to a frame (outer Ethernet, IPv4, UDP, VXLAN).
const VXLAN_OVERHEAD: u32 = 50;

const IP_COLUMNS: &str = "network_id, host(ip) AS ip, owner_type, owner_id, updated_at";

/// A checked network to record.
pub struct NewNetwork<'a> {
    pub name: &'a str,
    pub nic_tag: &'a str,
    pub vlan_id: u16,
    pub vni: Option<u32>,
    pub addresses: &'a Addresses,
    pub mtu: Option<u32>,
    pub owners: &'a [AccountId],
    pub description: &'a str,
    /// A fabric network: the account and its VLAN (`owners` is that account).
    pub fabric: Option<(AccountId, u16)>,
    pub internet_nat: bool,
}

impl Datastore {
    pub async fn nic_tag_create(&self, name: &str, mtu: u32, description: &str) -> Result<NicTag> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, NicTagRow>(
            "INSERT INTO nic_tags (name, mtu, description) VALUES ($1, $2, $3) RETURNING name, mtu, description, created_at",
        )
        .bind(name)
        .bind(mtu as i32)
        .bind(description)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e, "nic_tags_pkey") {
                Error::Conflict(format!("nic tag {name:?} already exists"))
            } else {
                e.into()
            }
        })?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("nictag.create", "nictag", name),
        )
        .await?;
        tx.commit().await?;
        Ok(row.into())
    }

    pub async fn nic_tag_list(&self) -> Result<Vec<NicTag>> {
        let rows = sqlx::query_as::<_, NicTagRow>(
            "SELECT name, mtu, description, created_at FROM nic_tags ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(NicTag::from).collect())
    }

    pub async fn nic_tag_delete(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM nic_tags WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.code().as_deref() == Some("23503") => {
                    Error::Conflict(format!(
                        "nic tag {name:?} is used by networks; delete them first"
                    ))
                }
                _ => e.into(),
            })?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("nic tag", name));
        }
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("nictag.delete", "nictag", name),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a network and one free row per address of its provision range.
    pub async fn network_create(&self, n: &NewNetwork<'_>) -> Result<Network> {
        let a = n.addresses;
        let mut tx = self.pool.begin().await?;
        let tag: Option<(i32,)> = sqlx::query_as("SELECT mtu FROM nic_tags WHERE name = $1")
            .bind(n.nic_tag)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((tag_mtu,)) = tag else {
            return Err(Error::not_found("nic tag", n.nic_tag));
        };
        // VXLAN takes 50 bytes of each frame on the nic tag's wire.
        let most = tag_mtu as u32 - if n.vni.is_some() { VXLAN_OVERHEAD } else { 0 };
        let mtu = n.mtu.unwrap_or(most);
        if mtu > most {
            return Err(Error::Conflict(format!(
                "mtu: {mtu} is larger than {most}, what nic tag {:?} (MTU {tag_mtu}) carries{}",
                n.nic_tag,
                if n.vni.is_some() { " under VXLAN" } else { "" }
            )));
        }
        if let Some((owner, _)) = n.fabric {
            fabric_room(&mut tx, owner, a.range_len().into()).await?;
        }
        let id = NetworkId::new();
        let resolvers: Vec<String> = a.resolvers.iter().map(|r| r.to_string()).collect();
        let inserted = sqlx::query(
            "INSERT INTO networks (id, name, nic_tag, vlan_id, vni, subnet, gateway, provision_start, provision_end,
                                   resolvers, routes, mtu, owners, description, fabric_owner, fabric_vlan_id, internet_nat)
             VALUES ($1, $2, $3, $4, $5, $6::cidr, $7::inet, $8::inet, $9::inet, $10::inet[], $11, $12, $13, $14,
                     $15, $16, $17)",
        )
        .bind(id.as_uuid())
        .bind(n.name)
        .bind(n.nic_tag)
        .bind(n.vlan_id as i32)
        .bind(n.vni.map(|v| v as i32))
        .bind(a.subnet.to_string())
        .bind(a.gateway.map(|g| g.to_string()))
        .bind(a.start.to_string())
        .bind(a.end.to_string())
        .bind(&resolvers)
        .bind(Json(&a.routes))
        .bind(mtu as i32)
        .bind(n.owners.iter().map(|o| o.as_uuid()).collect::<Vec<_>>())
        .bind(n.description)
        .bind(n.fabric.map(|(o, _)| o.as_uuid()))
        .bind(n.fabric.map(|(_, v)| v as i32))
        .bind(n.internet_nat)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            drop(tx);
            return Err(match &e {
                e if is_unique_violation(e, "networks_name_key")
                    || is_unique_violation(e, "networks_fabric_name_key") =>
                {
                    Error::Conflict(format!("a network named {:?} already exists", n.name))
                }
                sqlx::Error::Database(d)
                    if d.constraint() == Some("networks_fabric_no_overlap") =>
                {
                    let other: Option<(String, String)> = sqlx::query_as(
                        "SELECT name, subnet::text FROM networks WHERE fabric_owner = $1
                           AND subnet && $2::cidr LIMIT 1",
                    )
                    .bind(n.fabric.map(|(o, _)| o.as_uuid()))
                    .bind(a.subnet.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                    let (name, subnet) = other.unwrap_or_default();
                    Error::Conflict(format!(
                        "subnet: {} overlaps the account's fabric network {name:?} ({subnet})",
                        a.subnet
                    ))
                }
                sqlx::Error::Database(d) if d.constraint() == Some("networks_no_overlap") => {
                    let other: Option<(String, String)> = sqlx::query_as(
                        "SELECT name, subnet::text FROM networks WHERE nic_tag = $1 AND vlan_id = $2
                           AND coalesce(vni, 0) = $3 AND subnet && $4::cidr LIMIT 1",
                    )
                    .bind(n.nic_tag)
                    .bind(n.vlan_id as i32)
                    .bind(n.vni.unwrap_or(0) as i32)
                    .bind(a.subnet.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                    let (name, subnet) = other.unwrap_or_default();
                    Error::Conflict(format!(
                        "subnet: {} overlaps network {name:?} ({subnet}) on nic tag {:?} VLAN {}",
                        a.subnet, n.nic_tag, n.vlan_id
                    ))
                }
                _ => e.into(),
            });
        }
        sqlx::query(
            "INSERT INTO network_ips (network_id, ip, in_range)
             SELECT $1, $2::inet + g, true FROM generate_series(0::bigint, $3::bigint) g
             WHERE ($2::inet + g) IS DISTINCT FROM $4::inet",
        )
        .bind(id.as_uuid())
        .bind(a.start.to_string())
        .bind((a.range_len() - 1) as i64)
        .bind(a.gateway.map(|g| g.to_string()))
        .execute(&mut *tx)
        .await?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("network.create", "network", id),
        )
        .await?;
        tx.commit().await?;
        self.network_get(id, None).await
    }

    pub async fn network_get(
        &self,
        id: NetworkId,
        usable_by: Option<AccountId>,
    ) -> Result<Network> {
        sqlx::query_as::<_, NetworkRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {NETWORK_COLUMNS} FROM networks WHERE id = $1
               AND ($2::uuid IS NULL OR cardinality(owners) = 0 OR $2 = ANY(owners))"
        )))
        .bind(id.as_uuid())
        .bind(usable_by.map(|a| a.as_uuid()))
        .fetch_optional(&self.pool)
        .await?
        .map(Network::from)
        .ok_or_else(|| Error::not_found("network", id))
    }

    pub async fn network_get_by_name(
        &self,
        name: &str,
        usable_by: Option<AccountId>,
    ) -> Result<Network> {
        sqlx::query_as::<_, NetworkRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {NETWORK_COLUMNS} FROM networks WHERE name = $1
               AND ($2::uuid IS NULL OR cardinality(owners) = 0 OR $2 = ANY(owners))
             ORDER BY (fabric_owner IS NOT NULL AND $2::uuid IS NOT NULL) DESC, fabric_owner IS NULL DESC, id
             LIMIT 1"
        )))
        .bind(name)
        .bind(usable_by.map(|a| a.as_uuid()))
        .fetch_optional(&self.pool)
        .await?
        .map(Network::from)
        .ok_or_else(|| Error::not_found("network", name))
    }

    pub async fn network_list(
        &self,
        usable_by: Option<AccountId>,
        nic_tag: Option<&str>,
        fabric: Option<(AccountId, u16)>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<Network>> {
        let rows = sqlx::query_as::<_, NetworkRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {NETWORK_COLUMNS} FROM networks
             WHERE ($1::uuid IS NULL OR cardinality(owners) = 0 OR $1 = ANY(owners))
               AND ($2::text IS NULL OR nic_tag = $2) AND ($3::uuid IS NULL OR id > $3)
               AND ($5::uuid IS NULL OR (fabric_owner = $5 AND fabric_vlan_id = $6))
             ORDER BY id LIMIT $4"
        )))
        .bind(usable_by.map(|a| a.as_uuid()))
        .bind(nic_tag)
        .bind(after)
        .bind(limit + 1)
        .bind(fabric.map(|(o, _)| o.as_uuid()))
        .bind(fabric.map(|(_, v)| v as i32))
        .fetch_all(&self.pool)
        .await?;
        Ok(into_page(
            rows.into_iter().map(Network::from).collect(),
            limit,
            |n| n.id.as_uuid(),
        ))
    }

    /// Deletes a network that no instance holds an address of; with
    /// `fabric`, only a network of that account's fabric VLAN.
    pub async fn network_delete(
        &self,
        id: NetworkId,
        fabric: Option<(AccountId, u16)>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM networks WHERE id = $1
               AND ($2::uuid IS NULL OR (fabric_owner = $2 AND fabric_vlan_id = $3)) FOR UPDATE",
        )
        .bind(id.as_uuid())
        .bind(fabric.map(|(o, _)| o.as_uuid()))
        .bind(fabric.map(|(_, v)| v as i32))
        .fetch_optional(&mut *tx)
        .await?;
        if exists.is_none() {
            return Err(Error::not_found("network", id));
        }
        let pools = self.pools_holding(id).await?;
        if !pools.is_empty() {
            return Err(Error::Conflict(format!(
                "network {id} is in the network pools {pools:?}; remove it from them (delete them) first"
            )));
        }
        let (held,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM network_ips WHERE network_id = $1 AND owner_type IN ('instance', 'gateway')",
        )
        .bind(id.as_uuid())
        .fetch_one(&mut *tx)
        .await?;
        if held > 0 {
            return Err(Error::Conflict(format!(
                "network {id} has {held} addresses held by instances or fabric NAT gateways; delete them first"
            )));
        }
        sqlx::query("DELETE FROM networks WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                // A pool took it in meanwhile.
                sqlx::Error::Database(d) if d.code().as_deref() == Some("23503") => {
                    Error::Conflict(format!("network {id} is in use (a network pool?)"))
                }
                _ => e.into(),
            })?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("network.delete", "network", id),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes the lowest free address of the provision range.
    pub async fn network_ip_allocate(
        &self,
        id: NetworkId,
        owner_type: &str,
        owner_id: Option<Uuid>,
    ) -> Result<NetworkIp> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, IpRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE network_ips SET owner_type = $2, owner_id = $3, updated_at = now()
             WHERE (network_id, ip) = (
                 SELECT network_id, ip FROM network_ips
                 WHERE network_id = $1 AND owner_type IS NULL AND in_range
                 ORDER BY ip LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING {IP_COLUMNS}"
        )))
        .bind(id.as_uuid())
        .bind(owner_type)
        .bind(owner_id)
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            Some(r) => {
                let ip: NetworkIp = r.into();
                let target = format!("{id}/{}", ip.ip);
                crate::audit::record(
                    &mut tx,
                    crate::audit::Event::new("ip.allocate", "ip", target),
                )
                .await?;
                tx.commit().await?;
                Ok(ip)
            }
            None => {
                // Give the connection back before taking another.
                drop(tx);
                self.network_get(id, None).await?;
                Err(Error::Exhausted(format!(
                    "network {id} has no free address left in its provision range"
                )))
            }
        }
    }

    /// Takes one given address of the subnet (inside the range or not).
    pub async fn network_ip_reserve(
        &self,
        id: NetworkId,
        ip: Ipv4Addr,
        owner_type: &str,
        owner_id: Option<Uuid>,
    ) -> Result<NetworkIp> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, IpRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO network_ips (network_id, ip, in_range, owner_type, owner_id) VALUES ($1, $2::inet, false, $3, $4)
             ON CONFLICT (network_id, ip) DO UPDATE SET owner_type = $3, owner_id = $4, updated_at = now()
                 WHERE network_ips.owner_type IS NULL
             RETURNING {IP_COLUMNS}"
        )))
        .bind(id.as_uuid())
        .bind(ip.to_string())
        .bind(owner_type)
        .bind(owner_id)
        .fetch_optional(&mut *tx)
        .await?;
        let taken = row
            .map(NetworkIp::from)
            .ok_or_else(|| Error::Conflict(format!("{ip} of network {id} is already taken")))?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("ip.reserve", "ip", format!("{id}/{ip}")),
        )
        .await?;
        tx.commit().await?;
        Ok(taken)
    }

    /// Gives a reserved address back; an instance's address is a 409.
    pub async fn network_ip_free(&self, id: NetworkId, ip: Ipv4Addr) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(Option<String>, Option<Uuid>, bool)> =
            sqlx::query_as("SELECT owner_type, owner_id, in_range FROM network_ips WHERE network_id = $1 AND ip = $2::inet FOR UPDATE")
                .bind(id.as_uuid())
                .bind(ip.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        match row {
            None | Some((None, _, _)) => {
                return Err(Error::not_found(
                    "taken address",
                    format!("{ip} of network {id}"),
                ));
            }
            Some((Some(t), owner, _)) if t == "instance" => {
                return Err(Error::Conflict(format!(
                    "{ip} is held by instance {}; delete the instance to free it",
                    owner.map(|o| o.to_string()).unwrap_or_default()
                )));
            }
            Some((_, _, true)) => {
                sqlx::query("UPDATE network_ips SET owner_type = NULL, owner_id = NULL, updated_at = now() WHERE network_id = $1 AND ip = $2::inet")
                    .bind(id.as_uuid())
                    .bind(ip.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            Some((_, _, false)) => {
                sqlx::query("DELETE FROM network_ips WHERE network_id = $1 AND ip = $2::inet")
                    .bind(id.as_uuid())
                    .bind(ip.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("ip.free", "ip", format!("{id}/{ip}")),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The taken addresses of a network, in address order.
    pub async fn network_ip_list(
        &self,
        id: NetworkId,
        after: Option<Ipv4Addr>,
        limit: i64,
    ) -> Result<Page<NetworkIp>> {
        self.network_get(id, None).await?;
        let rows: Vec<NetworkIp> = sqlx::query_as::<_, IpRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {IP_COLUMNS} FROM network_ips WHERE network_id = $1 AND owner_type IS NOT NULL
               AND ($2::inet IS NULL OR network_ips.ip > $2::inet) ORDER BY network_ips.ip LIMIT $3"
        )))
        .bind(id.as_uuid())
        .bind(after.map(|a| a.to_string()))
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(NetworkIp::from)
        .collect();
        Ok(into_page(rows, limit, |r| r.ip.clone()))
    }
}
