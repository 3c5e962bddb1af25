//! Instance runtimes. One module per brand; `undo` is the small revert stack
//! every multi-step operation uses.

pub mod container;
pub mod oci;
pub mod runc;
pub mod undo;
