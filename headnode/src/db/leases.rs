//! Named leases in the database, for work that one headnode at a time does
//! (the reconciler): taken when free or expired, renewed by its holder.

use uuid::Uuid;

use super::Datastore;
use crate::error::Result;

impl Datastore {
    /// Takes or renews the lease `name` for `holder` until `ttl` from now;
    /// false when another holder has it.
    pub async fn lease_take(
        &self,
        name: &str,
        holder: Uuid,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        let row: Option<(Uuid,)> = sqlx::query_as(
            "INSERT INTO leases (name, holder, until) VALUES ($1, $2, now() + make_interval(secs => $3))
             ON CONFLICT (name) DO UPDATE SET holder = $2, until = now() + make_interval(secs => $3)
               WHERE leases.holder = $2 OR leases.until < now()
             RETURNING holder",
        )
        .bind(name)
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }
}
