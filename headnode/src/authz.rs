//! Authorization, in one place. Every request runs as an `OpContext` (who
//! calls, with which role; its request id comes with the request's task); every operation the API
//! offers is an `Action`, and `authorize` alone says whether the caller may
//! do it and over whose resources. The whole policy is the table in
//! `Action::rule`.
//!
//! Ownership of one resource is enforced by the datastore's queries, limited
//! to the scope `authorize` returns: another tenant's resource is "missing"
//! (404), never "forbidden", so ids cannot be probed. This module must never
//! touch the database.

use nereid_api::{AccountId, Role};

use crate::error::{Error, Result};

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct OpContext {
    pub account_id: AccountId,
    pub role: Role,
}

/// Whose resources an authorized action reaches: `None` for every
/// account's (operators), `Some(account)` for one account's own.
pub type Scope = Option<AccountId>;

/// Declares the actions and the list of all of them at once.
macro_rules! actions {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Everything a caller can ask of the API.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Action {
            $($(#[$doc])* $name,)*
        }

        impl Action {
            /// Every action (for tests of the policy).
            pub const ALL: &'static [Action] = &[$(Action::$name,)*];
        }
    };
}

actions! {
    AccountList,
    AccountCreate,
    /// An account's record or its quotas.
    AccountRead,
    QuotaSet,
    AuditRead,
    EventsRead,
    /// An account's fabric VLANs and networks.
    FabricRead,
    FabricWrite,
    FwRuleRead,
    FwRuleWrite,
    /// A rule for every account, or for an account other than the caller's.
    FwRuleForOthers,
    ImageRead,
    /// Create, upload, activate, disable, delete one's own images.
    ImageWrite,
    ImagePublish,
    InstanceRead,
    InstanceWrite,
    /// Creates an instance owned by another account.
    InstanceForOthers,
    /// Ends an instance of a lost node at once.
    InstanceForceDelete,
    /// Lets a NIC send what anti-spoofing drops (`nic_options`).
    NicSpoofing,
    JobRead,
    KeyRead,
    KeyWrite,
    NicTagRead,
    NicTagWrite,
    NetworkRead,
    NetworkWrite,
    NetworkIpRead,
    NetworkIpWrite,
    PackageRead,
    PackageWrite,
    ServerRead,
    ServerWrite,
    JoinTokenCreate,
    MetricsRead,
    SnapshotRead,
    SnapshotWrite,
    TokenRead,
    TokenWrite,
}

/// Who may do an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Operators only; a tenant gets a 403.
    Operators,
    /// Anyone, over their own account's resources (operators over all).
    OwnResources,
}

impl Action {
    /// The policy.
    pub const fn rule(self) -> Rule {
        use Action::*;
        match self {
            // The fleet, the shared catalog and the accounts themselves.
            AccountCreate | QuotaSet | FwRuleForOthers | ImagePublish | InstanceForOthers
            | InstanceForceDelete | NicSpoofing | NicTagRead | NicTagWrite | NetworkWrite
            | NetworkIpRead | NetworkIpWrite | PackageWrite | ServerRead | ServerWrite
            | JoinTokenCreate | MetricsRead => Rule::Operators,
            AccountList | AccountRead | AuditRead | EventsRead | FabricRead | FabricWrite
            | FwRuleRead | FwRuleWrite | ImageRead | ImageWrite | InstanceRead | InstanceWrite
            | JobRead | KeyRead | KeyWrite | NetworkRead | PackageRead | SnapshotRead
            | SnapshotWrite | TokenRead | TokenWrite => Rule::OwnResources,
        }
    }
}

impl OpContext {
    /// The request's id (as in its log lines and audit entries).
    pub fn request_id(&self) -> String {
        crate::error::current_request_id()
    }

    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }

    /// Whether the caller may do `action`, and over whose resources.
    pub fn authorize(&self, action: Action) -> Result<Scope> {
        match (action.rule(), self.is_operator()) {
            (_, true) => Ok(None),
            (Rule::OwnResources, false) => Ok(Some(self.account_id)),
            (Rule::Operators, false) => Err(Error::Forbidden(format!(
                "this needs an operator account ({action:?})"
            ))),
        }
    }

    /// The account an action on behalf of `asked` (default: the caller's
    /// own) runs for. A tenant naming another account gets a 404, as for
    /// anything of another account's.
    pub fn on_behalf_of(&self, action: Action, asked: Option<AccountId>) -> Result<AccountId> {
        match (self.authorize(action)?, asked) {
            (Some(own), Some(a)) if own != a => Err(Error::not_found("account", a)),
            (_, Some(a)) => Ok(a),
            (_, None) => Ok(self.account_id),
        }
    }

    /// A resource of `owner` that the caller could see (a public image of
    /// another account, say) but may change only if it is theirs.
    pub fn may_change(&self, action: Action, owner: AccountId, what: &str) -> Result<()> {
        match self.authorize(action)? {
            Some(own) if own != owner => Err(Error::Forbidden(format!(
                "{what} belongs to another account"
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(role: Role) -> OpContext {
        OpContext {
            account_id: AccountId::new(),
            role,
        }
    }

    #[test]
    fn tenants_get_their_own_scope_or_a_403_and_operators_everything() {
        let (tenant, op) = (ctx(Role::Tenant), ctx(Role::Operator));
        for &a in Action::ALL {
            assert_eq!(op.authorize(a).unwrap(), None, "{a:?}");
            match a.rule() {
                Rule::Operators => assert!(
                    matches!(tenant.authorize(a), Err(Error::Forbidden(_))),
                    "{a:?}"
                ),
                Rule::OwnResources => {
                    assert_eq!(tenant.authorize(a).unwrap(), Some(tenant.account_id))
                }
            }
        }
        // The operator-only list, spelled out: a change to the policy shows here.
        let ops: Vec<Action> = Action::ALL
            .iter()
            .copied()
            .filter(|a| a.rule() == Rule::Operators)
            .collect();
        assert_eq!(ops.len(), 17, "{ops:?}");
    }

    #[test]
    fn acting_for_another_account_is_a_404_for_tenants_and_fine_for_operators() {
        let (tenant, op) = (ctx(Role::Tenant), ctx(Role::Operator));
        let other = AccountId::new();
        assert!(matches!(
            tenant.on_behalf_of(Action::TokenWrite, Some(other)),
            Err(Error::NotFound { .. })
        ));
        assert_eq!(
            tenant.on_behalf_of(Action::TokenWrite, None).unwrap(),
            tenant.account_id
        );
        assert_eq!(
            op.on_behalf_of(Action::TokenWrite, Some(other)).unwrap(),
            other
        );
        assert!(matches!(
            tenant.may_change(Action::ImageWrite, other, "image x"),
            Err(Error::Forbidden(_))
        ));
        tenant
            .may_change(Action::ImageWrite, tenant.account_id, "image x")
            .unwrap();
        op.may_change(Action::ImageWrite, other, "image x").unwrap();
    }
}
