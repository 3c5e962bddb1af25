//! API tokens: creation, listing, revocation and the lookup behind bearer auth.

use chrono::{DateTime, Utc};
use nereid_api::{AccountId, Page, Role, Token, TokenId};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use super::{Datastore, into_page};
use crate::error::{Error, Result};

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    account_id: Uuid,
    name: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

impl From<TokenRow> for Token {
    fn from(r: TokenRow) -> Token {
        Token {
            id: r.id.into(),
            account_id: r.account_id.into(),
            name: r.name,
            created_at: r.created_at,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
        }
    }
}

/// Who a valid bearer token belongs to.
#[derive(Debug, Clone, Copy)]
pub struct TokenOwner {
    pub token_id: TokenId,
    pub account_id: AccountId,
    pub role: Role,
}

const COLUMNS: &str = "id, account_id, name, created_at, expires_at, last_used_at";

impl Datastore {
    pub async fn token_create(
        &self,
        account: AccountId,
        name: &str,
        expires_at: Option<DateTime<Utc>>,
        secret_hash: &[u8],
    ) -> Result<Token> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, TokenRow>(AssertSqlSafe(format!(
            "INSERT INTO tokens (id, account_id, name, secret_hash, expires_at)
             SELECT $1, id, $3, $4, $5 FROM accounts WHERE id = $2
             RETURNING {COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(account.as_uuid())
        .bind(name)
        .bind(secret_hash)
        .bind(expires_at)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::not_found("account", account))?;
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("token.create", "token", row.id).owned_by(account),
        )
        .await?;
        tx.commit().await?;
        Ok(row.into())
    }

    pub async fn token_list(
        &self,
        account: Option<AccountId>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Page<Token>> {
        let rows = sqlx::query_as::<_, TokenRow>(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM tokens
             WHERE ($1::uuid IS NULL OR account_id = $1) AND ($2::uuid IS NULL OR id > $2)
             ORDER BY id LIMIT $3"
        )))
        .bind(account.map(|a| a.as_uuid()))
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(into_page(
            rows.into_iter().map(Token::from).collect(),
            limit,
            |t| t.id.as_uuid(),
        ))
    }

    /// Deletes a token; `owner` restricts it to that account's tokens.
    pub async fn token_delete(&self, id: TokenId, owner: Option<AccountId>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let done: Option<(Uuid,)> = sqlx::query_as(
            "DELETE FROM tokens WHERE id = $1 AND ($2::uuid IS NULL OR account_id = $2)
             RETURNING account_id",
        )
        .bind(id.as_uuid())
        .bind(owner.map(|a| a.as_uuid()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((account,)) = done else {
            return Err(Error::not_found("token", id));
        };
        crate::audit::record(
            &mut tx,
            crate::audit::Event::new("token.delete", "token", id).owned_by(account.into()),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Resolves a bearer secret's hash to its owner; None if unknown or expired.
    pub async fn token_authenticate(&self, secret_hash: &[u8]) -> Result<Option<TokenOwner>> {
        let row: Option<(Uuid, Uuid, String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT t.id, t.account_id, a.role, t.last_used_at FROM tokens t JOIN accounts a ON a.id = t.account_id
             WHERE t.secret_hash = $1 AND (t.expires_at IS NULL OR t.expires_at > now())",
        )
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some((token_id, account_id, role, last_used)) = row else {
            return Ok(None);
        };
        // Record use at most once a minute, so reads do not each cost a write.
        if last_used.is_none_or(|t| Utc::now() - t > chrono::Duration::seconds(60)) {
            sqlx::query("UPDATE tokens SET last_used_at = now() WHERE id = $1")
                .bind(token_id)
                .execute(&self.pool)
                .await?;
        }
        let role = Role::parse(&role)
            .ok_or_else(|| Error::Internal(format!("account {account_id} has role {role:?}")))?;
        Ok(Some(TokenOwner {
            token_id: token_id.into(),
            account_id: account_id.into(),
            role,
        }))
    }
}
