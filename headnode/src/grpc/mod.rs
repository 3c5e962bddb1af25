//! The agents' gRPC API (agent -> headnode): registration with a join token and
//! heartbeats with the node credential.
//!
//! It must never log a join token, a credential or a control key.

mod registry;

pub use registry::RegistryService;
