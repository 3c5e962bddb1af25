//! Packages. Size fields never change once a package exists; a package that
//! was ever used cannot be deleted, only deactivated.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use nereid_api::{AccountId, Brand, Package, PackageCreate, PackageId, PackageUpdate, Page};
use sqlx::types::Json;
use uuid::Uuid;

use super::{Datastore, into_page, is_unique_violation};
use crate::error::{Error, Result};

#[derive(sqlx::FromRow)]
struct PackageRow {
    id: Uuid,
    name: String,
    version: String,
    description: String,
    memory_mb: i64,
    swap_mb: i64,
    vcpus: i32,
    cpu_cap: i32,
    disk_mb: i64,
    brand: String,
    traits: Json<BTreeMap<String, serde_json::Value>>,
    active: bool,
    owners: Vec<Uuid>,
    used: bool,
    created_at: DateTime<Utc>,
}

impl From<PackageRow> for Package {
    fn from(r: PackageRow) -> Package {
        // The column's CHECK allows only the brands' names.
        let brand = Brand::parse(&r.brand).unwrap_or(Brand::Container);
        Package {
            id: r.id.into(),
            name: r.name,
            version: r.version,
            description: r.description,
            memory_mb: r.memory_mb as u64,
            swap_mb: r.swap_mb as u64,
            vcpus: r.vcpus as u32,
            cpu_cap: r.cpu_cap as u32,
            disk_mb: r.disk_mb as u64,
            brand,
            traits: r.traits.0,
            active: r.active,
            owners: r.owners.into_iter().map(AccountId::from).collect(),
            used: r.used,
            created_at: r.created_at,
        }
    }
}

const COLUMNS: &str = "id, name, version, description, memory_mb, swap_mb, vcpus, cpu_cap, disk_mb, brand, traits, active, owners, used, created_at";

#[derive(Debug, Default)]
pub struct PackageFilter {
    pub name: Option<String>,
    pub active: Option<bool>,
    pub brand: Option<Brand>,
    /// Only packages this account may use (active, and public or owned); None = all.
    pub usable_by: Option<AccountId>,
}

fn uuids(owners: &[AccountId]) -> Vec<Uuid> {
    owners.iter().map(|a| a.as_uuid()).collect()
}

impl Datastore {
    /// Fails with a 404 naming the first account that does not exist (a body
    /// naming an unknown account, as a path would).
    pub async fn accounts_exist(&self, ids: &[AccountId]) -> Result<()> {
        let found: Vec<(Uuid,)> = sqlx::query_as("SELECT id FROM accounts WHERE id = ANY($1)")
            .bind(uuids(ids))
            .fetch_all(&self.pool)
            .await?;
        if let Some(missing) = ids
            .iter()
            .find(|id| !found.iter().any(|f| f.0 == id.as_uuid()))
        {
            return Err(Error::not_found("account", missing));
        }
        Ok(())
    }

    pub async fn package_create(&self, p: &PackageCreate) -> Result<Package> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, PackageRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO packages (id, name, version, description, memory_mb, swap_mb, vcpus, cpu_cap, disk_mb, brand, traits, owners)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING {COLUMNS}"
        )))
        .bind(PackageId::new().as_uuid())
        .bind(&p.name)
        .bind(&p.version)
        .bind(&p.description)
        .bind(p.memory_mb as i64)
        .bind(p.swap_mb as i64)
        .bind(p.vcpus as i32)
        .bind(p.cpu_cap as i32)
        .bind(p.disk_mb as i64)
        .bind(p.brand.as_str())
        .bind(Json(&p.traits))
        .bind(uuids(&p.owners))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e, "packages_name_version_key") {
                Error::Conflict(format!("package {} version {} already exists", p.name, p.version))
            } else {
                e.into()
            }
        })?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("package.create", "package", row.id),
        )
        .await?;
        tx.commit().await?;
        Ok(row.into())
    }

    pub async fn package_get(
        &self,
        id: PackageId,
        usable_by: Option<AccountId>,
    ) -> Result<Package> {
        sqlx::query_as::<_, PackageRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM packages WHERE id = $1
               AND ($2::uuid IS NULL OR (active AND (cardinality(owners) = 0 OR $2 = ANY(owners))))"
        )))
        .bind(id.as_uuid())
        .bind(usable_by.map(|a| a.as_uuid()))
        .fetch_optional(&self.pool)
        .await?
        .map(Package::from)
        .ok_or_else(|| Error::not_found("package", id))
    }

    pub async fn package_list(
        &self,
        f: &PackageFilter,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<Package>> {
        let rows = sqlx::query_as::<_, PackageRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM packages
             WHERE ($1::uuid IS NULL OR (active AND (cardinality(owners) = 0 OR $1 = ANY(owners))))
               AND ($2::text IS NULL OR name = $2) AND ($3::bool IS NULL OR active = $3)
               AND ($4::text IS NULL OR brand = $4) AND ($5::uuid IS NULL OR id > $5)
             ORDER BY id LIMIT $6"
        )))
        .bind(f.usable_by.map(|a| a.as_uuid()))
        .bind(&f.name)
        .bind(f.active)
        .bind(f.brand.map(|b| b.as_str()))
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(into_page(
            rows.into_iter().map(Package::from).collect(),
            limit,
            |p| p.id.as_uuid(),
        ))
    }

    /// Applies a change; any size field that differs from the stored one is a 409.
    pub async fn package_update(&self, id: PackageId, u: &PackageUpdate) -> Result<Package> {
        let mut tx = self.pool.begin().await?;
        let current: Package = sqlx::query_as::<_, PackageRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM packages WHERE id = $1 FOR UPDATE"
        )))
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await?
        .map(Package::from)
        .ok_or_else(|| Error::not_found("package", id))?;
        let immutable = [
            (
                "memory_mb",
                u.memory_mb.map(|v| v.to_string()),
                current.memory_mb.to_string(),
            ),
            (
                "swap_mb",
                u.swap_mb.map(|v| v.to_string()),
                current.swap_mb.to_string(),
            ),
            (
                "vcpus",
                u.vcpus.map(|v| v.to_string()),
                current.vcpus.to_string(),
            ),
            (
                "cpu_cap",
                u.cpu_cap.map(|v| v.to_string()),
                current.cpu_cap.to_string(),
            ),
            (
                "disk_mb",
                u.disk_mb.map(|v| v.to_string()),
                current.disk_mb.to_string(),
            ),
            (
                "brand",
                u.brand.map(|b| b.to_string()),
                current.brand.to_string(),
            ),
        ];
        for (field, asked, now) in immutable {
            if let Some(asked) = asked
                && asked != now
            {
                return Err(Error::Conflict(format!(
                    "{field} of package {} {} is {now} and cannot change; create a new version instead",
                    current.name, current.version
                )));
            }
        }
        let row = sqlx::query_as::<_, PackageRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE packages SET description = coalesce($2, description), active = coalesce($3, active),
                    owners = coalesce($4, owners), traits = coalesce($5, traits)
             WHERE id = $1 RETURNING {COLUMNS}"
        )))
        .bind(id.as_uuid())
        .bind(&u.description)
        .bind(u.active)
        .bind(u.owners.as_deref().map(uuids))
        .bind(u.traits.as_ref().map(Json))
        .fetch_one(&mut *tx)
        .await?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("package.update", "package", id),
        )
        .await?;
        tx.commit().await?;
        Ok(row.into())
    }

    pub async fn package_delete(&self, id: PackageId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(bool,)> =
            sqlx::query_as("DELETE FROM packages WHERE id = $1 AND NOT used RETURNING true")
                .bind(id.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
        if row.is_some() {
            crate::audit::record(
                &mut tx,
                crate::audit::Event::new("package.delete", "package", id),
            )
            .await?;
            tx.commit().await?;
            return Ok(());
        }
        drop(tx);
        let p = self.package_get(id, None).await?;
        Err(Error::Conflict(format!(
            "package {} {} was used by instances and cannot be deleted; deactivate it instead",
            p.name, p.version
        )))
    }
}
