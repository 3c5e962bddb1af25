//! Accounts.

use chrono::{DateTime, Utc};
use nereid_api::{Account, AccountId, Page, Role};
use uuid::Uuid;

use super::{Datastore, into_page, is_unique_violation};
use crate::error::{Error, Result};

#[derive(sqlx::FromRow)]
struct AccountRow {
    id: Uuid,
    name: String,
    role: String,
    created_at: DateTime<Utc>,
}

impl AccountRow {
    fn into_api(self) -> Result<Account> {
        let role = Role::parse(&self.role).ok_or_else(|| {
            Error::Internal(format!("account {} has role {:?}", self.id, self.role))
        })?;
        Ok(Account {
            id: self.id.into(),
            name: self.name,
            role,
            created_at: self.created_at,
        })
    }
}

impl Datastore {
    pub async fn account_create(&self, name: &str, role: Role) -> Result<Account> {
        let mut tx = self.pool.begin().await?;
        let a = account_insert(&mut *tx, name, role).await?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("account.create", "account", a.id).owned_by(a.id),
        )
        .await?;
        tx.commit().await?;
        Ok(a)
    }

    pub async fn account_get(&self, id: AccountId) -> Result<Account> {
        sqlx::query_as::<_, AccountRow>(
            "SELECT id, name, role, created_at FROM accounts WHERE id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::not_found("account", id))?
        .into_api()
    }

    /// Lists accounts; `only` restricts the list to one account (a tenant's view).
    pub async fn account_list(
        &self,
        only: Option<AccountId>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<Account>> {
        let rows = sqlx::query_as::<_, AccountRow>(
            "SELECT id, name, role, created_at FROM accounts
             WHERE ($1::uuid IS NULL OR id = $1) AND ($2::uuid IS NULL OR id > $2)
             ORDER BY id LIMIT $3",
        )
        .bind(only.map(|a| a.as_uuid()))
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let accounts = rows
            .into_iter()
            .map(AccountRow::into_api)
            .collect::<Result<Vec<_>>>()?;
        Ok(into_page(accounts, limit, |a| a.id.as_uuid()))
    }

    /// Creates the first operator and its token if the database has no account.
    /// Returns the token's secret when it did. Safe with several headnodes
    /// starting at once (an advisory lock serialises them). `persist` runs
    /// before the commit, so a secret that could not be written is not kept.
    pub async fn bootstrap_first_operator(
        &self,
        persist: impl FnOnce(&str) -> std::io::Result<()>,
    ) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(7305911)")
            .execute(&mut *tx)
            .await?;
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM accounts")
            .fetch_one(&mut *tx)
            .await?;
        if count > 0 {
            return Ok(false);
        }
        let account = account_insert(&mut *tx, "admin", Role::Operator).await?;
        let secret = crate::secrets::generate(crate::secrets::Kind::ApiToken);
        sqlx::query(
            "INSERT INTO tokens (id, account_id, name, secret_hash) VALUES ($1, $2, $3, $4)",
        )
        .bind(Uuid::now_v7())
        .bind(account.id.as_uuid())
        .bind("bootstrap")
        .bind(crate::secrets::hash(&secret))
        .execute(&mut *tx)
        .await?;
        persist(&secret)?;
        tx.commit().await?;
        Ok(true)
    }
}

async fn account_insert<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    name: &str,
    role: Role,
) -> Result<Account> {
    sqlx::query_as::<_, AccountRow>(
        "INSERT INTO accounts (id, name, role) VALUES ($1, $2, $3) RETURNING id, name, role, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(role.as_str())
    .fetch_one(exec)
    .await
    .map_err(|e| {
        if is_unique_violation(&e, "accounts_name_key") {
            Error::Conflict(format!("an account named {name:?} already exists"))
        } else {
            e.into()
        }
    })?
    .into_api()
}
