//! Link, IP and UDP decode of one frame; the first byte picks the link type.
#![no_main]
use gtpcharge_capture::decode::linktype;
use gtpcharge_capture::{Decoder, DecoderConfig};
use libfuzzer_sys::fuzz_target;

const TYPES: [i32; 7] =
    [linktype::ETHERNET, linktype::LINUX_SLL, linktype::LINUX_SLL2, linktype::RAW, linktype::NULL, linktype::IPV6, 999];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else { return };
    let mut decoder = Decoder::new(&DecoderConfig::default());
    let _ = decoder.decode(TYPES[usize::from(selector) % TYPES.len()], 0, frame);
});
