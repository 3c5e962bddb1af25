//! The agents' gRPC API (agent -> headnode), over mutual TLS: registration
//! with a join token (the node has no certificate yet), then heartbeats and
//! image downloads with the node's certificate.
//!
//! It must never log a join token.

mod registry;

pub use registry::RegistryService;
