//! The whole correlate step on a sequence of datagrams, each `[kind: u8][len: u16 BE][payload]`: the kind
//! picks the ports (GTP-C, GTP-U, GTPv0) and which of two GSN pairs sent it, so requests, responses and
//! G-PDUs can meet. Small tables, so the limits are reached.
#![no_main]
use gtpcharge_correlate::{Config, Correlator, Datagram};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = Config { sessions_max: 8, pending_max: 8, flows_max: 8, sighting_dedupe_max: 8, ..Config::default() };
    let mut correlator = Correlator::new(config);
    let mut events = Vec::new();
    let mut rest = data;
    let mut ts = 0u64;
    for _ in 0..512 {
        let Some((&kind, tail)) = rest.split_first() else { break };
        let Some((len, tail)) = tail.split_first_chunk::<2>() else { break };
        let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let (payload, next) = tail.split_at(len);
        let port = [2123u16, 2152, 3386, 53][usize::from(kind & 3)];
        let (a, b) = if kind & 4 == 0 { ([10, 0, 0, 1], [10, 0, 0, 2]) } else { ([10, 0, 0, 2], [10, 0, 0, 1]) };
        ts += u64::from(kind >> 3) * 1_000_000 + 1;
        let datagram = Datagram { ts_us: ts, frame: 0, source: (a, port).into(), destination: (b, port).into(), payload };
        correlator.on_datagram(&datagram, &mut events);
        events.clear();
        rest = next;
    }
});
