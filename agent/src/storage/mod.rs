//! Storage drivers. One module per host tool.

pub mod zfs;
pub mod zpool;
