//! nereid-proto: the gRPC API between headnode and agents, generated from the
//! checked-in .proto files under proto/. Holds no logic of its own.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("nereid.v1");
}
