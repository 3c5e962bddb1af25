//! Typed identifiers. Every resource has its own ID type so that a server id
//! can never be passed where an account id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id (UUIDv7).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    };
}

typed_id!(
    /// An account (operator or tenant).
    AccountId
);
typed_id!(
    /// An API token of an account.
    TokenId
);
typed_id!(
    /// A compute node.
    ServerId
);
typed_id!(
    /// A single-use token that lets a node join.
    JoinTokenId
);
typed_id!(
    /// An image of the catalog.
    ImageId
);
typed_id!(
    /// A package (instance size).
    PackageId
);
typed_id!(
    /// A network.
    NetworkId
);
typed_id!(
    /// A network pool.
    NetworkPoolId
);
typed_id!(
    /// An instance (container or VM).
    InstanceId
);
typed_id!(
    /// A job: one run of a saga (provision, start, stop, reboot, destroy).
    JobId
);
typed_id!(
    /// A firewall rule.
    FwRuleId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_id_round_trips_through_json_as_a_plain_string() {
        let id = ServerId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        let back: ServerId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn typed_id_rejects_a_malformed_uuid() {
        assert!("not-a-uuid".parse::<AccountId>().is_err());
        assert!(serde_json::from_str::<AccountId>("\"1234\"").is_err());
    }
}
