//! The whole correlate step on a sequence of datagrams, each `[kind: u8][len: u16 BE][payload]`: the kind
//! picks the ports (GTP-C, GTP-U, GTPv0 or DNS), which of four address pairs carried it (a GSN answering
//! from another of its addresses, a third node), and how much time passed, so requests, responses and
//! G-PDUs can meet. Small tables, so the limits are reached.
//!
//! Besides "no panic", it checks the pairing rule on every session the correlator creates
//! (`shared/pairing.rs`). The addresses are fixed, not those the messages' GSN Address IEs name, so
//! this target exercises parsing and pairing; `signalling` reaches Update, Delete, attribution and
//! expiry.
#![no_main]
use gtpcharge_correlate::{Config, Correlator, Datagram, Event};
use libfuzzer_sys::fuzz_target;

#[path = "shared/pairing.rs"]
mod pairing;

fuzz_target!(|data: &[u8]| {
    let config = Config { sessions_max: 8, pending_max: 8, flows_max: 8, sighting_dedupe_max: 8, ..Config::default() };
    let window_us = config.t3_response_ms * config.n3_requests * 1000;
    let mut correlator = Correlator::new(config);
    let mut events = Vec::new();
    let mut sent: Vec<(u64, &[u8])> = Vec::new();
    let mut rest = data;
    let mut ts = 0u64;
    let (a, b, c) = ([10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3]);
    for frame in 1..=512u64 {
        let Some((&kind, tail)) = rest.split_first() else { break };
        let Some((len, tail)) = tail.split_first_chunk::<2>() else { break };
        let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let (payload, next) = tail.split_at(len);
        let port = [2123u16, 2152, 3386, 53][usize::from(kind & 3)];
        let (from, to) = [(a, b), (b, a), (c, a), (a, c)][usize::from(kind >> 2 & 3)];
        ts += u64::from(kind >> 4) * 1_000_000 + 1;
        sent.push((ts, payload));
        let datagram = Datagram { ts_us: ts, frame, source: (from, port).into(), destination: (to, port).into(), payload };
        correlator.on_datagram(&datagram, &mut events);
        for event in events.drain(..) {
            let Event::SessionUp(up) = event else { continue };
            pairing::check_pairing(&up, &sent, window_us);
        }
        assert!(correlator.pending_len() <= 8 && correlator.sessions().len() <= 8);
        rest = next;
    }
});
