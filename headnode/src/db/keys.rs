//! ssh_keys: the SSH public keys of accounts.

use chrono::{DateTime, Utc};
use nereid_api::{AccountId, Page, SshKey};

use super::{Datastore, into_page, is_unique_violation};
use crate::error::{Error, Result};
use crate::sshkey::PublicKey;

#[derive(sqlx::FromRow)]
struct KeyRow {
    owner: uuid::Uuid,
    name: String,
    fingerprint: String,
    key_type: String,
    bits: i32,
    key: String,
    created_at: DateTime<Utc>,
}

impl From<KeyRow> for SshKey {
    fn from(r: KeyRow) -> SshKey {
        SshKey {
            name: r.name,
            owner: r.owner.into(),
            fingerprint: r.fingerprint,
            key_type: r.key_type,
            bits: r.bits as u32,
            key: r.key,
            created_at: r.created_at,
        }
    }
}

const COLUMNS: &str = "owner, name, fingerprint, key_type, bits, key, created_at";

impl Datastore {
    pub async fn key_create(
        &self,
        owner: AccountId,
        name: &str,
        key: &PublicKey,
    ) -> Result<SshKey> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO ssh_keys (owner, name, fingerprint, key_type, bits, key)
             SELECT id, $2, $3, $4, $5, $6 FROM accounts WHERE id = $1
             RETURNING {COLUMNS}"
        )))
        .bind(owner.as_uuid())
        .bind(name)
        .bind(&key.fingerprint)
        .bind(key.key_type)
        .bind(key.bits as i32)
        .bind(&key.line)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e, "ssh_keys_pkey") {
                Error::Conflict(format!("the account already has a key named {name:?}"))
            } else if is_unique_violation(&e, "ssh_keys_fingerprint_key") {
                Error::Conflict(format!(
                    "the account already has this key ({})",
                    key.fingerprint
                ))
            } else {
                e.into()
            }
        })?
        .ok_or_else(|| Error::not_found("account", owner))?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("key.create", "key", &row.fingerprint).owned_by(owner),
        )
        .await?;
        tx.commit().await?;
        Ok(row.into())
    }

    /// Keys by name; `owner` None (operators, no filter) lists every account's.
    pub async fn key_list(
        &self,
        owner: Option<AccountId>,
        after: Option<(uuid::Uuid, String)>,
        limit: i64,
    ) -> Result<Page<SshKey>> {
        let (after_owner, after_name) = after.unzip();
        let rows = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM ssh_keys
             WHERE ($1::uuid IS NULL OR owner = $1)
               AND ($2::uuid IS NULL OR (owner, name) > ($2, $3::text))
             ORDER BY owner, name LIMIT $4"
        )))
        .bind(owner.map(|o| o.as_uuid()))
        .bind(after_owner)
        .bind(after_name)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(into_page(
            rows.into_iter().map(SshKey::from).collect(),
            limit,
            |k| format!("{}/{}", k.owner, k.name),
        ))
    }

    /// One key by name or fingerprint.
    pub async fn key_get(&self, owner: AccountId, name_or_fp: &str) -> Result<SshKey> {
        sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM ssh_keys WHERE owner = $1 AND (name = $2 OR fingerprint = $2)"
        )))
        .bind(owner.as_uuid())
        .bind(name_or_fp)
        .fetch_optional(&self.pool)
        .await?
        .map(SshKey::from)
        .ok_or_else(|| Error::not_found("key", crate::validate::truncate(name_or_fp)))
    }

    pub async fn key_delete(&self, owner: AccountId, name_or_fp: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let gone: Option<(String,)> = sqlx::query_as(
            "DELETE FROM ssh_keys WHERE owner = $1 AND (name = $2 OR fingerprint = $2)
             RETURNING fingerprint",
        )
        .bind(owner.as_uuid())
        .bind(name_or_fp)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((fp,)) = gone else {
            return Err(Error::not_found(
                "key",
                crate::validate::truncate(name_or_fp),
            ));
        };
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("key.delete", "key", &fp).owned_by(owner),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The account's keys as `root_authorized_keys` holds them: one per line
    /// (no newline after the last), oldest first.
    pub async fn authorized_keys(&self, owner: AccountId) -> Result<String> {
        let keys: Vec<(String,)> =
            sqlx::query_as("SELECT key FROM ssh_keys WHERE owner = $1 ORDER BY created_at, name")
                .bind(owner.as_uuid())
                .fetch_all(&self.pool)
                .await?;
        Ok(keys
            .into_iter()
            .map(|(k,)| k)
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

/// What an instance's metadata is built from (besides its NICs and its
/// owner's keys).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MetadataSource {
    pub owner: uuid::Uuid,
    pub alias: String,
    pub brand: String,
    pub server_id: Option<uuid::Uuid>,
    pub image_id: Option<uuid::Uuid>,
    pub package_id: uuid::Uuid,
    pub tags: sqlx::types::Json<serde_json::Map<String, serde_json::Value>>,
    pub metadata: sqlx::types::Json<std::collections::BTreeMap<String, String>>,
    pub metadata_generation: i64,
}

impl Datastore {
    pub async fn instance_metadata_source(
        &self,
        id: nereid_api::InstanceId,
    ) -> Result<MetadataSource> {
        sqlx::query_as::<_, MetadataSource>(
            "SELECT owner, alias, brand, server_id, image_id, package_id, tags, metadata,
                    metadata_generation
             FROM instances WHERE id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::not_found("instance", id))
    }
}
