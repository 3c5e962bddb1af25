//! Firewall rules: their rows, who may see and change them, and the data
//! the per-node compilation needs (enabled rules, instances with their tags
//! and addresses).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use nereid_api::{AccountId, FwRule, FwRuleId, FwRuleUpdate, InstanceId, ServerId};
use sqlx::types::Json;
use uuid::Uuid;

use super::Datastore;
use crate::error::{Error, Result};
use crate::fwrule::{self, Rule};

#[derive(sqlx::FromRow)]
struct FwRuleRow {
    id: Uuid,
    owner: Option<Uuid>,
    rule: String,
    parsed: Json<Rule>,
    enabled: bool,
    description: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl FwRuleRow {
    fn api(&self) -> FwRule {
        FwRule {
            id: self.id.into(),
            rule: self.rule.clone(),
            enabled: self.enabled,
            description: self.description.clone(),
            owner: self.owner.map(AccountId::from),
            global: self.owner.is_none(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

const COLUMNS: &str = "id, owner, rule, parsed, enabled, description, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct FwInstanceRow {
    id: Uuid,
    owner: Uuid,
    server_id: Option<Uuid>,
    firewall_enabled: bool,
    tags: Json<BTreeMap<String, serde_json::Value>>,
    ips: Vec<String>,
}

/// An enabled rule, parsed, with its owner (None: global).
#[derive(Debug, Clone)]
pub struct ActiveRule {
    pub id: FwRuleId,
    pub owner: Option<AccountId>,
    pub rule: Rule,
}

/// What the compilation needs of an instance.
#[derive(Debug, Clone)]
pub struct FwInstance {
    pub id: InstanceId,
    pub owner: AccountId,
    pub server: Option<ServerId>,
    pub firewall_enabled: bool,
    pub tags: BTreeMap<String, serde_json::Value>,
    pub ips: Vec<std::net::Ipv4Addr>,
}

fn vm_targets(rule: &Rule) -> Vec<Uuid> {
    let mut out = Vec::new();
    for t in [&rule.from, &rule.to] {
        if let fwrule::Targets::List(list) = t {
            for target in list {
                if let fwrule::Target::Vm(id) = target {
                    out.push(*id);
                }
            }
        }
    }
    out
}

impl Datastore {
    /// Every `vm <uuid>` of the rule must be an instance `owner` has (any
    /// instance for a global rule); another tenant's is "not found".
    async fn check_vm_targets(&self, rule: &Rule, owner: Option<AccountId>) -> Result<()> {
        for id in vm_targets(rule) {
            let found: Option<(Uuid,)> = sqlx::query_as(
                "SELECT id FROM instances WHERE id = $1 AND state <> 'deleted'
                   AND ($2::uuid IS NULL OR owner = $2)",
            )
            .bind(id)
            .bind(owner.map(|o| o.as_uuid()))
            .fetch_optional(&self.pool)
            .await?;
            if found.is_none() {
                return Err(Error::not_found("instance", id));
            }
        }
        Ok(())
    }

    pub async fn fw_rule_create(
        &self,
        owner: Option<AccountId>,
        text: &str,
        rule: &Rule,
        enabled: bool,
        description: &str,
    ) -> Result<FwRule> {
        self.check_vm_targets(rule, owner).await?;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, FwRuleRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO fw_rules (id, owner, rule, parsed, enabled, description)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
        )))
        .bind(FwRuleId::new().as_uuid())
        .bind(owner.map(|o| o.as_uuid()))
        .bind(text)
        .bind(Json(rule))
        .bind(enabled)
        .bind(description)
        .fetch_one(&mut *tx)
        .await?;
        let mut e = crate::audit::Event::new("fwrule.create", "fwrule", row.id);
        if let Some(o) = owner {
            e = e.owned_by(o);
        }
        crate::audit::record(&mut tx, e).await?;
        tx.commit().await?;
        Ok(row.api())
    }

    /// A rule `scope` may read: its own and the global ones (all for None).
    pub async fn fw_rule_get(&self, id: FwRuleId, scope: Option<AccountId>) -> Result<FwRule> {
        Ok(self.fw_rule_row(id, scope).await?.api())
    }

    async fn fw_rule_row(&self, id: FwRuleId, scope: Option<AccountId>) -> Result<FwRuleRow> {
        sqlx::query_as::<_, FwRuleRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM fw_rules WHERE id = $1
               AND ($2::uuid IS NULL OR owner IS NULL OR owner = $2)"
        )))
        .bind(id.as_uuid())
        .bind(scope.map(|o| o.as_uuid()))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::not_found("firewall rule", id))
    }

    /// Rules `scope` may read, oldest first, from `after`; with `touching`,
    /// only those that apply to that instance.
    pub async fn fw_rule_list(
        &self,
        scope: Option<AccountId>,
        touching: Option<&FwInstance>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<nereid_api::Page<FwRule>> {
        let rows = sqlx::query_as::<_, FwRuleRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM fw_rules
             WHERE ($1::uuid IS NULL OR owner IS NULL OR owner = $1)
               AND ($2::uuid IS NULL OR id > $2)
               AND ($3::uuid IS NULL OR owner IS NULL OR owner = $3)
             ORDER BY id LIMIT $4"
        )))
        .bind(scope.map(|o| o.as_uuid()))
        .bind(after)
        .bind(touching.map(|i| i.owner.as_uuid()))
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        // The page is cut before the filter, so its token stays a row id.
        let page = super::into_page(rows, limit, |r| r.id);
        Ok(nereid_api::Page {
            items: page
                .items
                .iter()
                .filter(|r| touching.is_none_or(|i| crate::fwrule::touches(&r.parsed.0, i)))
                .map(FwRuleRow::api)
                .collect(),
            next_page_token: page.next_page_token,
        })
    }

    /// Changes a rule. Tenants cannot change global rules (403).
    pub async fn fw_rule_update(
        &self,
        id: FwRuleId,
        scope: Option<AccountId>,
        change: &FwRuleUpdate,
        parsed: Option<&Rule>,
    ) -> Result<FwRule> {
        let current = self.fw_rule_row(id, scope).await?;
        if scope.is_some() && current.owner.is_none() {
            return Err(Error::Forbidden(
                "global firewall rules are changed by operators".into(),
            ));
        }
        let owner = current.owner.map(AccountId::from);
        if let Some(rule) = parsed {
            self.check_vm_targets(rule, owner).await?;
        }
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query_as::<_, FwRuleRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE fw_rules SET rule = COALESCE($2, rule), parsed = COALESCE($3, parsed),
                    enabled = COALESCE($4, enabled), description = COALESCE($5, description),
                    updated_at = now()
              WHERE id = $1 RETURNING {COLUMNS}"
        )))
        .bind(id.as_uuid())
        .bind(change.rule.as_deref())
        .bind(parsed.map(Json))
        .bind(change.enabled)
        .bind(change.description.as_deref())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::not_found("firewall rule", id))?;
        let mut e = crate::audit::Event::new("fwrule.update", "fwrule", row.id);
        if let Some(o) = owner {
            e = e.owned_by(o);
        }
        crate::audit::record(&mut tx, e).await?;
        tx.commit().await?;
        Ok(row.api())
    }

    /// Deletes a rule; returns it as it was. Tenants cannot delete global rules (403).
    pub async fn fw_rule_delete(&self, id: FwRuleId, scope: Option<AccountId>) -> Result<FwRule> {
        let current = self.fw_rule_row(id, scope).await?;
        if scope.is_some() && current.owner.is_none() {
            return Err(Error::Forbidden(
                "global firewall rules are deleted by operators".into(),
            ));
        }
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM fw_rules WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found("firewall rule", id));
        }
        let mut e = crate::audit::Event::new("fwrule.delete", "fwrule", id);
        if let Some(o) = current.owner {
            e = e.owned_by(o.into());
        }
        crate::audit::record(&mut tx, e).await?;
        tx.commit().await?;
        Ok(current.api())
    }

    /// The enabled rules of these owners and the global ones.
    pub async fn fw_rules_active(&self, owners: &[AccountId]) -> Result<Vec<ActiveRule>> {
        let owners: Vec<Uuid> = owners.iter().map(|o| o.as_uuid()).collect();
        let rows = sqlx::query_as::<_, FwRuleRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM fw_rules
              WHERE enabled AND (owner IS NULL OR owner = ANY($1)) ORDER BY id"
        )))
        .bind(owners)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ActiveRule {
                id: r.id.into(),
                owner: r.owner.map(AccountId::from),
                rule: r.parsed.0,
            })
            .collect())
    }

    /// The servers whose compiled firewall may name an instance of `owner`:
    /// those running firewalled instances of `owner` when it has enabled
    /// rules, and those running any firewalled instance when an enabled
    /// global rule exists (tenants' rules only ever name their own instances).
    pub async fn fw_servers_naming(&self, owner: AccountId) -> Result<Vec<ServerId>> {
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT DISTINCT server_id FROM instances
              WHERE state <> 'deleted' AND firewall_enabled AND server_id IS NOT NULL
                AND (EXISTS (SELECT 1 FROM fw_rules WHERE enabled AND owner IS NULL)
                     OR (owner = $1 AND EXISTS (SELECT 1 FROM fw_rules WHERE enabled AND owner = $1)))",
        )
        .bind(owner.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(s,)| s.into()).collect())
    }

    /// The owners of firewalled live instances on a server.
    pub async fn fw_owners_on(&self, server: ServerId) -> Result<Vec<AccountId>> {
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT DISTINCT owner FROM instances
              WHERE server_id = $1 AND state <> 'deleted' AND firewall_enabled",
        )
        .bind(server.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(o,)| o.into()).collect())
    }

    /// The live instances of these owners (all owners for None), with their
    /// tags and addresses.
    pub async fn fw_instances(&self, owners: Option<&[AccountId]>) -> Result<Vec<FwInstance>> {
        self.fw_instances_where(owners, None).await
    }

    async fn fw_instances_where(
        &self,
        owners: Option<&[AccountId]>,
        only: Option<InstanceId>,
    ) -> Result<Vec<FwInstance>> {
        let owners: Option<Vec<Uuid>> = owners.map(|o| o.iter().map(|a| a.as_uuid()).collect());
        let rows: Vec<FwInstanceRow> = sqlx::query_as(
            "SELECT i.id, i.owner, i.server_id, i.firewall_enabled, i.tags,
                    COALESCE(array_agg(host(n.ip)) FILTER (WHERE n.ip IS NOT NULL), '{}') AS ips
               FROM instances i LEFT JOIN instance_nics n ON n.instance_id = i.id
              WHERE i.state <> 'deleted' AND ($1::uuid[] IS NULL OR i.owner = ANY($1))
                AND ($2::uuid IS NULL OR i.id = $2)
              GROUP BY i.id",
        )
        .bind(owners)
        .bind(only.map(|i| i.as_uuid()))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| FwInstance {
                id: r.id.into(),
                owner: r.owner.into(),
                server: r.server_id.map(ServerId::from),
                firewall_enabled: r.firewall_enabled,
                tags: r.tags.0,
                ips: r.ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
            })
            .collect())
    }

    /// One live instance as the compilation sees it (scoped like instance_get).
    pub async fn fw_instance(
        &self,
        id: InstanceId,
        scope: Option<AccountId>,
    ) -> Result<FwInstance> {
        let scope = scope.map(|o| [o]);
        self.fw_instances_where(scope.as_ref().map(|s| s.as_slice()), Some(id))
            .await?
            .pop()
            .ok_or_else(|| Error::not_found("instance", id))
    }
}
