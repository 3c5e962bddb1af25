//! Storage drivers. One module per host tool.

pub mod zpool;
