//! The vocabulary shared by the probe and the billing API.
//!
//! Today this is the purchase-token syntax ([`token`]): one implementation that the billing API uses to
//! mint tokens and the probe uses to recognise them on the wire. The gRPC definitions and their generated
//! code live here too once the billing API lands. This crate deliberately knows nothing of packets or of
//! databases.
#![forbid(unsafe_code)]

pub mod token;

pub use token::{Token, TokenError};
