//! Fabric VLANs (an account's own layer-2 segments, each with a VNI drawn by
//! the database) and what the overlay of each node is made of: where every
//! other instance NIC on the VNIs the node carries lives. It never decides
//! policy (the handlers scope every call to one account).

use chrono::{DateTime, Utc};
use nereid_api::{AccountId, FabricVlan, InstanceId, NetworkId, ServerId};
use uuid::Uuid;

use super::{Datastore, NicPlan, is_unique_violation};
use crate::error::{Error, Result};

#[derive(sqlx::FromRow)]
struct VlanRow {
    owner: Uuid,
    vlan_id: i32,
    vni: i32,
    name: String,
    description: String,
    created_at: DateTime<Utc>,
}

impl From<VlanRow> for FabricVlan {
    fn from(r: VlanRow) -> FabricVlan {
        FabricVlan {
            owner: r.owner.into(),
            vlan_id: r.vlan_id as u16,
            vni: r.vni as u32,
            name: r.name,
            description: r.description,
            created_at: r.created_at,
        }
    }
}

const VLAN_COLUMNS: &str = "owner, vlan_id, vni, name, description, created_at";

/// An instance NIC on an overlay network, on another node: what a node
/// needs to reach it (its MAC and address, behind that node's underlay address).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OverlayPeer {
    pub vni: u32,
    pub mac: String,
    pub ip: String,
    /// The other node's address on the network's nic tag; None when its
    /// sysinfo shows none (it cannot be reached yet).
    pub underlay: Option<String>,
}

impl Datastore {
    pub async fn fabric_vlan_create(
        &self,
        owner: AccountId,
        vlan_id: u16,
        name: &str,
        description: &str,
    ) -> Result<FabricVlan> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, VlanRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO fabric_vlans (owner, vlan_id, name, description) VALUES ($1, $2, $3, $4)
             RETURNING {VLAN_COLUMNS}"
        )))
        .bind(owner.as_uuid())
        .bind(vlan_id as i32)
        .bind(name)
        .bind(description)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e, "fabric_vlans_pkey") {
                Error::Conflict(format!("the account has a fabric VLAN {vlan_id} already"))
            } else if is_unique_violation(&e, "fabric_vlans_owner_name_key") {
                Error::Conflict(format!(
                    "the account has a fabric VLAN named {name:?} already"
                ))
            } else if matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("2200H"))
            {
                Error::Exhausted("the datacenter has no VNI left for a new fabric VLAN".into())
            } else if matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23503"))
            {
                Error::not_found("account", owner)
            } else {
                e.into()
            }
        })?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new(
                "fabric.vlan.create",
                "fabric_vlan",
                format!("{owner}/{vlan_id}"),
            )
            .owned_by(owner),
        )
        .await?;
        tx.commit().await?;
        Ok(row.into())
    }

    /// The fabric VLANs of one account (every account's for None).
    pub async fn fabric_vlan_list(&self, owner: Option<AccountId>) -> Result<Vec<FabricVlan>> {
        let rows = sqlx::query_as::<_, VlanRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {VLAN_COLUMNS} FROM fabric_vlans WHERE ($1::uuid IS NULL OR owner = $1)
             ORDER BY owner, vlan_id LIMIT 10000"
        )))
        .bind(owner.map(|o| o.as_uuid()))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(FabricVlan::from).collect())
    }

    pub async fn fabric_vlan_get(&self, owner: AccountId, vlan_id: u16) -> Result<FabricVlan> {
        sqlx::query_as::<_, VlanRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {VLAN_COLUMNS} FROM fabric_vlans WHERE owner = $1 AND vlan_id = $2"
        )))
        .bind(owner.as_uuid())
        .bind(vlan_id as i32)
        .fetch_optional(&self.pool)
        .await?
        .map(FabricVlan::from)
        .ok_or_else(|| Error::not_found("fabric VLAN", vlan_id))
    }

    /// Deletes a fabric VLAN that has no network left.
    pub async fn fabric_vlan_delete(&self, owner: AccountId, vlan_id: u16) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM fabric_vlans WHERE owner = $1 AND vlan_id = $2")
            .bind(owner.as_uuid())
            .bind(vlan_id as i32)
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(d) if d.code().as_deref() == Some("23503") => {
                    Error::Conflict(format!(
                        "fabric VLAN {vlan_id} has networks; delete them first"
                    ))
                }
                _ => e.into(),
            })?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("fabric VLAN", vlan_id));
        }
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new(
                "fabric.vlan.delete",
                "fabric_vlan",
                format!("{owner}/{vlan_id}"),
            )
            .owned_by(owner),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every live instance NIC on another server that shares a VNI with a
    /// live instance of `server`, in a stable order.
    pub async fn overlay_peers(&self, server: ServerId) -> Result<Vec<OverlayPeer>> {
        // The server's VNIs first (a few rows by the server's index): most
        // servers have none, and then nothing else is read.
        let (vnis,): (Vec<i32>,) = sqlx::query_as(
            "SELECT coalesce(array_agg(DISTINCT w.vni), '{}') FROM instances i
               JOIN networks w ON w.id = ANY(i.networks)
              WHERE i.server_id = $1 AND i.state <> 'deleted' AND w.vni IS NOT NULL",
        )
        .bind(server.as_uuid())
        .fetch_one(&self.pool)
        .await?;
        if vnis.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(i32, String, String, Option<String>)> = sqlx::query_as(
            "SELECT w.vni, n.mac, host(n.ip),
                    (SELECT split_part(a, '/', 1)
                       FROM jsonb_array_elements(s.sysinfo -> 'nics') nic,
                            jsonb_array_elements_text(nic -> 'addresses') a
                      WHERE nic ->> 'name' = s.setup -> 'nic_tags' ->> w.nic_tag
                        AND position(':' in a) = 0
                      LIMIT 1)
               FROM instances i
               JOIN instance_nics n ON n.instance_id = i.id
               JOIN networks w ON w.id = n.network_id
               JOIN servers s ON s.id = i.server_id
              WHERE w.vni = ANY($2) AND i.server_id <> $1 AND i.state <> 'deleted'
              ORDER BY 1, 2",
        )
        .bind(server.as_uuid())
        .bind(&vnis)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(vni, mac, ip, underlay)| OverlayPeer {
                vni: vni as u32,
                mac,
                ip,
                underlay,
            })
            .collect())
    }

    /// The servers whose overlay an instance's coming or going changes: those
    /// running live instances on a VNI of the instance's networks.
    pub async fn overlay_servers_of(&self, instance: InstanceId) -> Result<Vec<ServerId>> {
        // The instance's VNIs first: an instance on no overlay network (most)
        // reads nothing else.
        let (vnis,): (Vec<i32>,) = sqlx::query_as(
            "SELECT coalesce(array_agg(DISTINCT w.vni), '{}') FROM instances i
               JOIN networks w ON w.id = ANY(i.networks)
              WHERE i.id = $1 AND w.vni IS NOT NULL",
        )
        .bind(instance.as_uuid())
        .fetch_one(&self.pool)
        .await?;
        if vnis.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT DISTINCT i2.server_id FROM networks w2
               JOIN instance_nics n2 ON n2.network_id = w2.id
               JOIN instances i2 ON i2.id = n2.instance_id
              WHERE w2.vni = ANY($1) AND i2.state <> 'deleted' AND i2.server_id IS NOT NULL",
        )
        .bind(&vnis)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(s,)| s.into()).collect())
    }
}

/// The MAC of a NAT gateway's NIC on the NAT network: locally administered
/// (0x96, apart from instances' 0x92), from its fabric network and node.
fn nat_mac(network: NetworkId, server: ServerId) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::new()
        .chain_update(network.as_uuid().as_bytes())
        .chain_update(server.as_uuid().as_bytes())
        .finalize();
    format!(
        "96:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        d[0], d[1], d[2], d[3], d[4]
    )
}

impl Datastore {
    /// The NAT gateway of a fabric network on a server: its NIC on the NAT
    /// network `external` (by name), taking the lowest free address of that
    /// network the first time. Idempotent; the address is held until the
    /// fabric network or the server is deleted.
    pub async fn fabric_nat_ensure(
        &self,
        network: NetworkId,
        server: ServerId,
        external: &str,
    ) -> Result<NicPlan> {
        let ext = self
            .network_get_by_name(external, None)
            .await
            .map_err(|_| {
                Error::Conflict(format!(
                    "the NAT network {external:?} (--fabric-nat-network) does not exist"
                ))
            })?;
        let held = || async {
            sqlx::query_as::<_, (String, String)>(
                "SELECT host(ip), mac FROM fabric_nats WHERE network_id = $1 AND server_id = $2",
            )
            .bind(network.as_uuid())
            .bind(server.as_uuid())
            .fetch_optional(&self.pool)
            .await
        };
        let (ip, mac) = match held().await? {
            Some(h) => h,
            None => {
                let mac = nat_mac(network, server);
                let taken: Option<(String,)> = sqlx::query_as(
                    "WITH taken AS (
                         UPDATE network_ips SET owner_type = 'gateway', owner_id = $1, updated_at = now()
                          WHERE (network_id, ip) = (
                              SELECT network_id, ip FROM network_ips
                               WHERE network_id = $3 AND owner_type IS NULL AND in_range
                               ORDER BY ip LIMIT 1 FOR UPDATE SKIP LOCKED)
                            AND NOT EXISTS (SELECT 1 FROM fabric_nats WHERE network_id = $1 AND server_id = $2)
                         RETURNING network_id, ip)
                     INSERT INTO fabric_nats (network_id, server_id, external_id, ip, mac)
                     SELECT $1, $2, network_id, ip, $4 FROM taken
                     ON CONFLICT (network_id, server_id) DO NOTHING
                     RETURNING host(ip)",
                )
                .bind(network.as_uuid())
                .bind(server.as_uuid())
                .bind(ext.id.as_uuid())
                .bind(&mac)
                .fetch_optional(&self.pool)
                .await?;
                match taken {
                    Some((ip,)) => (ip, mac),
                    // Another run made it meanwhile, or the network is full.
                    None => held().await?.ok_or_else(|| {
                        Error::Exhausted(format!(
                            "the NAT network {external:?} has no free address for a fabric gateway"
                        ))
                    })?,
                }
            }
        };
        let subnet = crate::ipam::Cidr::parse("subnet", &ext.subnet)?;
        Ok(NicPlan {
            network_id: ext.id,
            nic_tag: ext.nic_tag,
            vlan_id: ext.vlan_id,
            vni: ext.vni,
            internet_nat: false,
            nat: None,
            options: Default::default(),
            ip: ip
                .parse()
                .map_err(|_| Error::Internal(format!("NAT address {ip:?}")))?,
            prefix_len: subnet.prefix,
            gateway: ext.gateway,
            resolvers: ext.resolvers,
            mtu: ext.mtu,
            mac,
        })
    }
}
