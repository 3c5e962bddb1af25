//! Network pools: a named, ordered list of networks of one nic tag. It
//! resolves a pool to the first member with a free address and never
//! allocates one itself (the create's allocation does, and a race lost there
//! is an `Exhausted` like any full network's).

use chrono::{DateTime, Utc};
use nereid_api::{AccountId, NetworkId, NetworkPool, NetworkPoolId};
use uuid::Uuid;

use super::{Datastore, is_unique_violation};
use crate::error::{Error, Result};

#[derive(sqlx::FromRow)]
struct PoolRow {
    id: Uuid,
    name: String,
    nic_tag: String,
    networks: Vec<Uuid>,
    owners: Vec<Uuid>,
    description: String,
    created_at: DateTime<Utc>,
}

impl From<PoolRow> for NetworkPool {
    fn from(r: PoolRow) -> NetworkPool {
        NetworkPool {
            id: r.id.into(),
            name: r.name,
            nic_tag: r.nic_tag,
            networks: r.networks.into_iter().map(NetworkId::from).collect(),
            owners: r.owners.into_iter().map(AccountId::from).collect(),
            description: r.description,
            created_at: r.created_at,
        }
    }
}

const POOL_SELECT: &str = "SELECT p.id, p.name, p.nic_tag, p.owners, p.description, p.created_at,
        ARRAY(SELECT m.network_id FROM network_pool_members m WHERE m.pool_id = p.id ORDER BY m.idx) AS networks
   FROM network_pools p";

impl Datastore {
    /// Records a pool of these (existing, checked) networks, in this order.
    pub async fn pool_create(
        &self,
        name: &str,
        nic_tag: &str,
        networks: &[NetworkId],
        owners: &[AccountId],
        description: &str,
    ) -> Result<NetworkPool> {
        let id = NetworkPoolId::new();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO network_pools (id, name, nic_tag, owners, description) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.as_uuid())
        .bind(name)
        .bind(nic_tag)
        .bind(owners.iter().map(|o| o.as_uuid()).collect::<Vec<_>>())
        .bind(description)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e, "network_pools_name_key") {
                Error::Conflict(format!("a network pool named {name:?} already exists"))
            } else {
                e.into()
            }
        })?;
        sqlx::query(
            "INSERT INTO network_pool_members (pool_id, idx, network_id)
             SELECT $1, (ord - 1)::int, n FROM unnest($2::uuid[]) WITH ORDINALITY AS t(n, ord)",
        )
        .bind(id.as_uuid())
        .bind(networks.iter().map(|n| n.as_uuid()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("networkpool.create", "network_pool", id),
        )
        .await?;
        tx.commit().await?;
        self.pool_get(id, None).await
    }

    /// Pools `usable_by` may use (every pool for None).
    pub async fn pool_list(&self, usable_by: Option<AccountId>) -> Result<Vec<NetworkPool>> {
        let rows = sqlx::query_as::<_, PoolRow>(sqlx::AssertSqlSafe(format!(
            "{POOL_SELECT} WHERE ($1::uuid IS NULL OR cardinality(p.owners) = 0 OR $1 = ANY(p.owners))
             ORDER BY p.name LIMIT 10000"
        )))
        .bind(usable_by.map(|a| a.as_uuid()))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(NetworkPool::from).collect())
    }

    pub async fn pool_get(
        &self,
        id: NetworkPoolId,
        usable_by: Option<AccountId>,
    ) -> Result<NetworkPool> {
        self.pool_find("p.id = $1", id.as_uuid(), usable_by)
            .await?
            .ok_or_else(|| Error::not_found("network pool", id))
    }

    /// A pool by name, if `usable_by` may use it.
    pub async fn pool_get_by_name(
        &self,
        name: &str,
        usable_by: Option<AccountId>,
    ) -> Result<Option<NetworkPool>> {
        self.pool_find("p.name = $1", name, usable_by).await
    }

    async fn pool_find<'q, T>(
        &self,
        cond: &str,
        key: T,
        usable_by: Option<AccountId>,
    ) -> Result<Option<NetworkPool>>
    where
        T: 'q + Send + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        Ok(sqlx::query_as::<_, PoolRow>(sqlx::AssertSqlSafe(format!(
            "{POOL_SELECT} WHERE {cond}
               AND ($2::uuid IS NULL OR cardinality(p.owners) = 0 OR $2 = ANY(p.owners))"
        )))
        .bind(key)
        .bind(usable_by.map(|a| a.as_uuid()))
        .fetch_optional(&self.pool)
        .await?
        .map(NetworkPool::from))
    }

    pub async fn pool_delete(&self, id: NetworkPoolId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM network_pools WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("network pool", id));
        }
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("networkpool.delete", "network_pool", id),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The first network of the pool, in its order, that has a free address
    /// of its provision range (None when all are full).
    pub async fn pool_pick(&self, id: NetworkPoolId) -> Result<Option<NetworkId>> {
        let row: Option<(Uuid,)> = sqlx::query_as(
            "SELECT m.network_id FROM network_pool_members m
              WHERE m.pool_id = $1 AND EXISTS (
                    SELECT 1 FROM network_ips i
                     WHERE i.network_id = m.network_id AND i.owner_type IS NULL AND i.in_range)
              ORDER BY m.idx LIMIT 1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(n,)| n.into()))
    }

    /// The pools a network is in (by name).
    pub async fn pools_holding(&self, network: NetworkId) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT p.name FROM network_pools p JOIN network_pool_members m ON m.pool_id = p.id
              WHERE m.network_id = $1 ORDER BY p.name",
        )
        .bind(network.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }
}
