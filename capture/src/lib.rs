//! Packet input for the probe: libpcap sources (capture files, pcap and pcapng, and live interfaces) and
//! the decode from a frame down to a UDP datagram: link layer (Ethernet with any number of 802.1Q/802.1ad
//! tags, MPLS, Linux cooked SLL and SLL2, raw IP, BSD loopback), IPv4/IPv6 (etherparse), bounded
//! reassembly of fragmented outer IP, and UDP.
//!
//! Deliberately absent: anything GTP. This crate hands [`Udp`] datagrams to whoever wires it (the root
//! binary), so the correlator is tested, fuzzed and benched without libpcap.
// Unsafe code only in `buffered_file` and `wait` (the two calls into C the pcap crate does not offer), allowed there.
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

mod buffered_file;
pub mod decode;
pub mod encap;
pub mod reassembly;
pub mod source;
mod undecoded;
mod wait;
pub mod writer;

pub use decode::{Decoder, DecoderConfig, Udp};
pub use source::{CaptureError, FileReading, FileSource, Frame, Injector, LiveConfig, LiveSource, LiveStats};
pub use undecoded::Undecoded;
pub use writer::PcapWriter;
