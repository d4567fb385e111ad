//! GTPv2-C headers (with piggybacked messages), IEs, grouped Bearer Contexts, F-TEID and PAA.
#![no_main]
use gtpcharge_correlate::wire::gtpv2;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    for _ in 0..3 {
        let Ok(header) = gtpv2::Header::parse(rest) else { break };
        if let Ok(fields) = gtpv2::ControlFields::parse(header.body) {
            let _ = (fields.uplink_fteid(), fields.downlink_fteid());
        }
        if !header.piggybacked {
            break;
        }
        rest = header.next;
    }
});
