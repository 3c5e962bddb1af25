//! Per-account quotas: the limits set on an account (`account_quotas`), the
//! headnode's defaults for the rest, and the check every create makes inside
//! its own transaction. What live instances hold is `account_usage`, kept by
//! a trigger in the transaction of every instance change (so it cannot
//! drift from the rows, and a check costs one row however large the
//! account); images and snapshots are counted from their rows. The
//! account's usage row is locked first, so two creates of one account are
//! checked one after the other and cannot both slip under a limit.

use nereid_api::{AccountId, QuotaKind, QuotaValues, Quotas};
use sqlx::{Postgres, Transaction};

use super::Datastore;
use crate::error::{Error, Result};

/// What a create adds to an account's usage.
#[derive(Debug, Clone, Copy, Default)]
pub struct Need {
    pub instances: u64,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub vcpus: u64,
    pub images: u64,
    pub image_bytes: u64,
}

impl Need {
    fn get(&self, k: QuotaKind) -> u64 {
        match k {
            QuotaKind::Instances => self.instances,
            QuotaKind::MemoryMb => self.memory_mb,
            QuotaKind::DiskMb => self.disk_mb,
            QuotaKind::Vcpus => self.vcpus,
            QuotaKind::Images => self.images,
            QuotaKind::ImageBytes => self.image_bytes,
        }
    }
}

type Row = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

fn values(r: Row) -> QuotaValues {
    let u = |v: Option<i64>| v.map(|v| v.max(0) as u64);
    QuotaValues {
        instances: u(r.0),
        memory_mb: u(r.1),
        disk_mb: u(r.2),
        vcpus: u(r.3),
        images: u(r.4),
        image_bytes: u(r.5),
    }
}

async fn overrides(tx: &mut Transaction<'_, Postgres>, account: AccountId) -> Result<QuotaValues> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT instances, memory_mb, disk_mb, vcpus, images, image_bytes
         FROM account_quotas WHERE account_id = $1",
    )
    .bind(account.as_uuid())
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(values).unwrap_or_default())
}

async fn usage(tx: &mut Transaction<'_, Postgres>, account: AccountId) -> Result<QuotaValues> {
    let row: Row = sqlx::query_as(
        "SELECT COALESCE(u.instances, 0), COALESCE(u.ram_mb, 0),
                COALESCE(u.disk_mb, 0)
                  + (SELECT (COALESCE(sum(s.used_bytes), 0) / 1048576)::bigint FROM instance_snapshots s
                       JOIN instances i ON i.id = s.instance_id WHERE i.owner = $1),
                COALESCE(u.vcpus, 0),
                (SELECT count(*) FROM images WHERE owner = $1),
                (SELECT COALESCE(sum(f.size), 0)::bigint FROM images i
                   JOIN image_files f ON f.sha256 = i.file_sha256 WHERE i.owner = $1)
           FROM (SELECT 1) one LEFT JOIN account_usage u ON u.account_id = $1",
    )
    .bind(account.as_uuid())
    .fetch_one(&mut **tx)
    .await?;
    Ok(values(row))
}

/// A foreign-key failure on the account is its absence.
fn no_such_account(e: sqlx::Error, account: AccountId) -> Error {
    match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("23503") => {
            Error::not_found("account", account)
        }
        _ => e.into(),
    }
}

/// The limit in force: the account's own, else the default.
fn limits(own: &QuotaValues, defaults: &QuotaValues) -> QuotaValues {
    let mut l = QuotaValues::default();
    for k in QuotaKind::ALL {
        l.set(*k, own.get(*k).or(defaults.get(*k)));
    }
    l
}

/// The first quota `need` would take the account over, as the error to answer.
fn check(limits: &QuotaValues, usage: &QuotaValues, need: &Need) -> Result<()> {
    for k in QuotaKind::ALL {
        let n = need.get(*k);
        let (Some(limit), used) = (limits.get(*k), usage.get(*k).unwrap_or(0)) else {
            continue;
        };
        if n > 0 && used.saturating_add(n) > limit {
            return Err(Error::QuotaExceeded(format!(
                "quota {k} exceeded: the limit is {limit}, {used} in use, this needs {n} more"
            )));
        }
    }
    Ok(())
}

/// Locks the account and refuses `need` if it would go over a quota. Runs
/// inside the caller's transaction, before what it creates.
pub(super) async fn reserve(
    tx: &mut Transaction<'_, Postgres>,
    account: AccountId,
    defaults: &QuotaValues,
    need: &Need,
) -> Result<()> {
    // The usage row is the account's lock (made on first use; a missing
    // account fails its foreign key).
    sqlx::query("INSERT INTO account_usage (account_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(account.as_uuid())
        .execute(&mut **tx)
        .await
        .map_err(|e| no_such_account(e, account))?;
    sqlx::query("SELECT 1 FROM account_usage WHERE account_id = $1 FOR UPDATE")
        .bind(account.as_uuid())
        .execute(&mut **tx)
        .await?;
    let own = overrides(tx, account).await?;
    let used = usage(tx, account).await?;
    check(&limits(&own, defaults), &used, need)
}

impl Datastore {
    pub async fn quotas_get(&self, account: AccountId) -> Result<Quotas> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<(uuid::Uuid,)> = sqlx::query_as("SELECT id FROM accounts WHERE id = $1")
            .bind(account.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(Error::not_found("account", account));
        }
        let own = overrides(&mut tx, account).await?;
        let used = usage(&mut tx, account).await?;
        tx.commit().await?;
        Ok(Quotas {
            account_id: account,
            limits: limits(&own, &self.default_quotas),
            overrides: own,
            usage: used,
        })
    }

    /// Replaces the limits set on an account (null: the default). A limit
    /// below the current usage is allowed: nothing new fits until under it.
    pub async fn quotas_set(&self, account: AccountId, v: &QuotaValues) -> Result<Quotas> {
        let i = |x: Option<u64>| x.map(|x| x as i64);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO account_quotas (account_id, instances, memory_mb, disk_mb, vcpus, images, image_bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (account_id) DO UPDATE SET instances = $2, memory_mb = $3, disk_mb = $4,
                 vcpus = $5, images = $6, image_bytes = $7",
        )
        .bind(account.as_uuid())
        .bind(i(v.instances))
        .bind(i(v.memory_mb))
        .bind(i(v.disk_mb))
        .bind(i(v.vcpus))
        .bind(i(v.images))
        .bind(i(v.image_bytes))
        .execute(&mut *tx)
        .await
        .map_err(|e| no_such_account(e, account))?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("quota.set", "account", account).owned_by(account),
        )
        .await?;
        tx.commit().await?;
        self.quotas_get(account).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_quota_a_need_exceeds_is_named_with_limit_and_usage() {
        let defaults = QuotaValues {
            instances: Some(10),
            memory_mb: Some(1024),
            ..Default::default()
        };
        let own = QuotaValues {
            memory_mb: Some(512),
            ..Default::default()
        };
        let l = limits(&own, &defaults);
        assert_eq!(
            (l.instances, l.memory_mb, l.disk_mb),
            (Some(10), Some(512), None)
        );
        let used = QuotaValues {
            instances: Some(3),
            memory_mb: Some(256),
            ..Default::default()
        };
        let need = Need {
            instances: 1,
            memory_mb: 256,
            disk_mb: 1 << 30,
            ..Default::default()
        };
        assert!(
            check(&l, &used, &need).is_ok(),
            "no disk limit; memory just fits"
        );
        let need = Need {
            instances: 1,
            memory_mb: 257,
            ..Default::default()
        };
        let e = check(&l, &used, &need).unwrap_err().to_string();
        assert_eq!(
            e,
            "quota memory_mb exceeded: the limit is 512, 256 in use, this needs 257 more"
        );
        // Usage above a lowered limit: nothing new, but nothing asked is fine.
        let over = QuotaValues {
            instances: Some(20),
            ..Default::default()
        };
        assert!(check(&l, &over, &Need::default()).is_ok());
        assert!(
            check(
                &l,
                &over,
                &Need {
                    instances: 1,
                    ..Default::default()
                }
            )
            .is_err()
        );
    }
}
