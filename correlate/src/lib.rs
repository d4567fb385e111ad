//! GTP correlation: from UDP datagrams of a Gn/S5/S8 mirror to subscriber sessions and token sightings.
//!
//! - [`wire`]: zero-copy GTPv0/GTPv1-C/GTPv2-C/GTP-U parsers (no allocation, no panic on any input).
//! - [`session`]: live contexts, tunnel and UE-address indices, the bounded table of open requests.
//! - [`scan`]: token carriers (HTTP request line and headers, DNS query names, TLS SNI).
//! - [`flow`]: per-flow TCP state for split tokens and retransmissions.
//! - [`sharded`]: the sharded map under the tables that grow to a million entries.
//! - [`engine`]: [`Correlator`], which ties them together and produces [`Event`]s.
//!
//! Deliberately absent: libpcap, link-layer and outer IP decoding (the `capture` crate does those and
//! hands over [`Datagram`]s), wall-clock time (timestamps come with each datagram), and any I/O.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod clock;
pub mod dedupe;
pub mod engine;
pub mod event;
pub mod flow;
pub mod pending;
pub mod reason;
pub mod scan;
pub mod session;
pub mod sharded;
pub mod wire;

pub use engine::{Config, Correlator, Datagram, ShardRouter, Stats};

/// Every table keyed by wire data uses foldhash: several times faster than SipHash on these small keys,
/// and seeded per process, so an attacker who picks TEIDs and addresses cannot aim at one bucket.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// An address as one 128-bit word for hashing (IPv4 as its IPv4-mapped IPv6 form). Not injective across
/// families (`1.2.3.4` and `::ffff:1.2.3.4` share a word), which only costs a rare extra comparison: the
/// keys that use it compare the addresses themselves for equality.
#[inline]
pub(crate) fn ip_word(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        std::net::IpAddr::V6(v6) => u128::from(v6),
    }
}

pub use event::{Attachment, Attribution, Event, Identity, Interface, SessionEvent, Sighting, Unattributed};
