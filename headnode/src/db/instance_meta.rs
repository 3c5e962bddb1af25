//! An instance's tags and metadata after create, its alias and its switches
//! (firewall, deletion protection): each change bumps `metadata_generation` (what the node's
//! metadata service serves) in the same statement, and is audited.

use nereid_api::{AccountId, InstanceId};
use serde_json::{Map, Value};
use sqlx::AssertSqlSafe;
use sqlx::types::Json;
use uuid::Uuid;

use super::Datastore;
use super::states::INSTANCE_DELETED;
use crate::error::{Error, Result};

/// Which of the instance's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapField {
    Tags,
    Metadata,
}

impl MapField {
    fn column(self) -> &'static str {
        match self {
            MapField::Tags => "tags",
            MapField::Metadata => "metadata",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            MapField::Tags => "tag",
            MapField::Metadata => "metadata key",
        }
    }
}

/// An on/off switch of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceFlag {
    /// Its firewall (`enable-firewall`).
    Firewall,
    /// DELETE is refused while it is on.
    DeletionProtection,
}

/// A change of a map.
#[derive(Debug, Clone)]
pub enum MapChange {
    Replace(Map<String, Value>),
    Merge(Map<String, Value>),
    Remove(String),
    Clear,
}

/// What a change left: the map, the owner and the server (for the pushes).
pub struct MapChanged {
    pub map: Map<String, Value>,
    pub owner: AccountId,
    pub server: Option<nereid_api::ServerId>,
}

impl Datastore {
    /// An instance's tags or metadata.
    pub async fn instance_map(
        &self,
        id: InstanceId,
        scope: Option<AccountId>,
        field: MapField,
    ) -> Result<Map<String, Value>> {
        let row: Option<(Json<Map<String, Value>>,)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {} FROM instances WHERE id = $1 AND ($2::uuid IS NULL OR owner = $2)
               AND state <> {INSTANCE_DELETED}",
            field.column()
        )))
        .bind(id.as_uuid())
        .bind(scope.map(|o| o.as_uuid()))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.0.0)
            .ok_or_else(|| Error::not_found("instance", id))
    }

    /// Applies `change` to the map and checks the result with `check`
    /// before it is written (limits hold on the whole map, not the request).
    pub async fn instance_map_change(
        &self,
        id: InstanceId,
        scope: Option<AccountId>,
        field: MapField,
        change: MapChange,
        check: impl Fn(&Map<String, Value>) -> Result<()>,
    ) -> Result<MapChanged> {
        let col = field.column();
        let mut tx = self.pool.begin().await?;
        type Row = (Json<Map<String, Value>>, Uuid, Option<Uuid>);
        let row: Option<Row> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {col}, owner, server_id FROM instances
                  WHERE id = $1 AND ($2::uuid IS NULL OR owner = $2) AND state <> {INSTANCE_DELETED}
                  FOR UPDATE"
        )))
        .bind(id.as_uuid())
        .bind(scope.map(|o| o.as_uuid()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((Json(mut map), owner, server)) = row else {
            return Err(Error::not_found("instance", id));
        };
        let action = match change {
            MapChange::Replace(m) => {
                map = m;
                "replace"
            }
            MapChange::Merge(m) => {
                map.extend(m);
                "merge"
            }
            MapChange::Remove(k) => {
                if map.remove(&k).is_none() {
                    return Err(Error::not_found(
                        field.noun(),
                        crate::validate::truncate(&k),
                    ));
                }
                "delete"
            }
            MapChange::Clear => {
                map.clear();
                "clear"
            }
        };
        check(&map)?;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE instances SET {col} = $2, metadata_generation = metadata_generation + 1,
                    updated_at = now()
              WHERE id = $1"
        )))
        .bind(id.as_uuid())
        .bind(Json(&map))
        .execute(&mut *tx)
        .await?;
        let audit_action = format!("instance.{col}.{action}");
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new(&audit_action, "instance", id).owned_by(owner.into()),
        )
        .await?;
        tx.commit().await?;
        Ok(MapChanged {
            map,
            owner: owner.into(),
            server: server.map(Into::into),
        })
    }

    /// Renames an instance (aliases are unique among the owner's live instances).
    pub async fn instance_rename(
        &self,
        id: InstanceId,
        scope: Option<AccountId>,
        alias: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let owner: Option<(Uuid,)> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE instances SET alias = $3, metadata_generation = metadata_generation + 1,
                    updated_at = now()
              WHERE id = $1 AND ($2::uuid IS NULL OR owner = $2) AND state <> {INSTANCE_DELETED}
              RETURNING owner"
        )))
        .bind(id.as_uuid())
        .bind(scope.map(|o| o.as_uuid()))
        .bind(alias)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| {
            if super::is_unique_violation(&e, "instances_alias_idx") {
                Error::Conflict(format!("another instance of the owner is named {alias:?}"))
            } else {
                e.into()
            }
        })?;
        let Some((owner,)) = owner else {
            return Err(Error::not_found("instance", id));
        };
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("instance.rename", "instance", id).owned_by(owner.into()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Turns a switch of the instance on or off.
    pub async fn instance_set_flag(
        &self,
        id: InstanceId,
        scope: Option<AccountId>,
        flag: InstanceFlag,
        on: bool,
    ) -> Result<()> {
        let (column, action) = match (flag, on) {
            (InstanceFlag::Firewall, true) => ("firewall_enabled", "instance.enable_firewall"),
            (InstanceFlag::Firewall, false) => ("firewall_enabled", "instance.disable_firewall"),
            (InstanceFlag::DeletionProtection, true) => {
                ("deletion_protection", "instance.enable_deletion_protection")
            }
            (InstanceFlag::DeletionProtection, false) => (
                "deletion_protection",
                "instance.disable_deletion_protection",
            ),
        };
        let mut tx = self.pool.begin().await?;
        let owner: Option<(Uuid,)> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE instances SET {column} = $3, updated_at = now()
              WHERE id = $1 AND ($2::uuid IS NULL OR owner = $2) AND state <> {INSTANCE_DELETED}
              RETURNING owner"
        )))
        .bind(id.as_uuid())
        .bind(scope.map(|o| o.as_uuid()))
        .bind(on)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((owner,)) = owner else {
            return Err(Error::not_found("instance", id));
        };
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new(action, "instance", id).owned_by(owner.into()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Metadata values as strings; a value of another JSON type is a 400.
pub fn metadata_strings(map: &Map<String, Value>) -> Result<Vec<(&String, &str)>> {
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k, s)),
            None => Err(Error::invalid(
                "metadata",
                format!("{:?}: values are strings", crate::validate::truncate(k)),
            )),
        })
        .collect()
}
