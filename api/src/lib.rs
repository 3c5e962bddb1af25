//! nereid-api: the REST resource types shared by the headnode, the CLI and the
//! tests: typed IDs, request and response bodies, the error body.
//!
//! This crate holds data shapes only. It must never talk to a database, a
//! socket or the host.

pub mod accounts;
pub mod audit;
pub mod error;
pub mod events;
pub mod fabrics;
pub mod fwrules;
pub mod ids;
pub mod images;
pub mod instances;
pub mod jobs;
pub mod keys;
pub mod named;
pub mod networks;
pub mod packages;
pub mod page;
pub mod quotas;
pub mod servers;
pub mod snapshots;

pub use accounts::*;
pub use audit::*;
pub use error::*;
pub use events::*;
pub use fabrics::*;
pub use fwrules::*;
pub use ids::*;
pub use images::*;
pub use instances::*;
pub use jobs::*;
pub use keys::*;
pub use networks::*;
pub use packages::*;
pub use page::*;
pub use quotas::*;
pub use servers::*;
pub use snapshots::*;
