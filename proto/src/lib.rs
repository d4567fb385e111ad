//! The vocabulary shared by the probe and the billing API.
//!
//! Today this is the purchase-token syntax ([`token`]): one implementation that the billing API uses to
//! mint tokens and the probe uses to recognise them on the wire. The gRPC definitions and their generated
//! code live here too once the billing API lands. This crate deliberately knows nothing of packets or of
//! databases.
#![forbid(unsafe_code)]

pub mod token;

pub use token::{Token, TokenError};

/// The generated gRPC code of `gtpcharge.v1` (protobuf messages, tonic clients and servers).
#[cfg(feature = "grpc")]
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("gtpcharge.v1");

    /// The encoded file descriptor set, for the gRPC reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("gtpcharge_descriptor");
}
