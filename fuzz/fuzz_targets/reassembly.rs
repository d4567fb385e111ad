//! Outer IP reassembly: the input is a sequence of raw IP packets, each `[len: u16 BE][bytes]`, fed in
//! order with advancing timestamps (so the timeout path runs too), into one decoder with a small table.
#![no_main]
use gtpcharge_capture::decode::linktype;
use gtpcharge_capture::{Decoder, DecoderConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(&DecoderConfig { fragments_max: 4, fragment_timeout_ms: 5, ..DecoderConfig::default() });
    let mut rest = data;
    let mut ts = 0u64;
    for _ in 0..256 {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else { break };
        let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let (packet, next) = tail.split_at(len);
        ts += 1_000;
        let _ = decoder.decode(linktype::RAW, ts, packet);
        let _ = decoder.take_fragment_timeouts();
        rest = next;
    }
});
