//! GTPv1-C and GTPv0 headers and information elements.
#![no_main]
use gtpcharge_correlate::wire::{gtpv0, gtpv1};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = gtpv1::Header::parse(data) {
        let _ = gtpv1::ControlFields::parse(header.body);
    }
    if let Ok(header) = gtpv0::Header::parse(data) {
        let _ = header.imsi().to_string();
        let _ = gtpv0::control_fields(header.body);
    }
});
