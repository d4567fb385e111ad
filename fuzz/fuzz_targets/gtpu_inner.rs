//! GTP-U header, extension header chain and the inner IPv4/IPv6/TCP/UDP packet.
#![no_main]
use gtpcharge_correlate::wire::{gtpu, gtpv1};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = gtpv1::Header::parse(data) {
        let _ = gtpu::inner_packet(header.body);
    }
    let _ = gtpu::inner_packet(data);
});
