//! Firewall rules (Triton's language, CloudAPI's bodies).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AccountId, FwRuleId};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FwRule {
    pub id: FwRuleId,
    /// e.g. `FROM any TO tag role=web ALLOW tcp PORT 80`
    pub rule: String,
    pub enabled: bool,
    pub description: String,
    /// The account whose instances it applies to; none for an operator's
    /// global rule (every instance with its firewall enabled).
    pub owner: Option<AccountId>,
    pub global: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FwRuleCreate {
    /// A rule in Triton's language: `FROM <targets> TO <targets> (ALLOW |
    /// BLOCK) <protocol> [PRIORITY <0-100>]`; a 400 names the line and column
    /// where it stops making sense.
    #[schema(format = "fwrule", max_length = 4096)]
    pub rule: String,
    /// Off by default, as in Triton: a rule is applied once enabled.
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
    /// Operators only: a rule for every account's instances.
    #[serde(default)]
    pub global: bool,
    /// Operators only: the account the rule belongs to (default: the caller).
    #[serde(default)]
    pub owner: Option<AccountId>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FwRuleUpdate {
    #[schema(format = "fwrule", max_length = 4096)]
    pub rule: Option<String>,
    pub enabled: Option<bool>,
    #[schema(max_length = 1024)]
    pub description: Option<String>,
}
