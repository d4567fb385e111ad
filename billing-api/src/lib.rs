//! The billing API: purchase tokens for SPs, exactly-once charging of sightings reported by probes, and
//! subscriber accounts for operators, over gRPC (tonic), on a double-entry ledger in PostgreSQL or an
//! embedded SQLite file (sqlx).
//!
//! - [`db`]: connection, migrations, backend differences.
//! - [`ledger`]: the domain operations, each one database transaction.
//! - [`group_commit`]: group commit: sightings from concurrent calls charged in shared transactions.
//! - [`auth`]: credentials (hashed at rest); [`guard`]: failed authentication slowed per peer and counted.
//! - [`audit`]: the trail of operator actions.
//! - [`service`]: the tonic services and the protobuf ↔ domain conversion; [`consent_service`]: the
//!   pay agent's services (consent and device enrollment).
//! - [`webhooks`]: signed webhooks sent from the ledger's outbox (the change stream).
//! - [`signing`]: what a device key signs (consent and enrollment statements), Ed25519.
//! - [`server`]: serving (health, reflection, TLS, limits, graceful shutdown) and the expiry sweeper.
//!
//! Only this crate and the root binary know protobuf.
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod consent_service;
pub mod db;
pub mod group_commit;
pub mod guard;
pub mod ledger;
pub mod server;
pub mod service;
pub mod signing;
pub mod telemetry;
pub mod webhooks;

pub use db::Db;
pub use ledger::Ledger;
