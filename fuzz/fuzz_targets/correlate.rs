//! The whole correlate step on a sequence of datagrams, each `[kind: u8][len: u16 BE][payload]`: the kind
//! picks the ports (GTP-C, GTP-U, GTPv0 or DNS), which of four address pairs carried it (a GSN answering
//! from another of its addresses, a third node), and how much time passed, so requests, responses and
//! G-PDUs can meet. Small tables, so the limits are reached.
//!
//! Besides "no panic", it checks the pairing rule on every session the correlator creates: the Create
//! response that made it carries the sequence number of its request, in the same GTP version, sent
//! within the retransmission window, and, where the request announced a control TEID (GTPv1 TEID-C IE,
//! GTPv2 Sender F-TEID) or a TID (GTPv0), the response's header names that very one.
#![no_main]
use gtpcharge_correlate::wire::{gtpv0, gtpv1, gtpv2};
use gtpcharge_correlate::{Config, Correlator, Datagram, Event};
use libfuzzer_sys::fuzz_target;

/// (version, sequence, announced proof if any, header TEID or TID) of a GTP-C message.
fn pairing_facts(payload: &[u8]) -> Option<(u8, u32, Option<u64>, Option<u64>)> {
    match payload.first()? >> 5 {
        0 => {
            let header = gtpv0::Header::parse(payload).ok()?;
            let tid = Some(header.tid_key());
            Some((0, u32::from(header.sequence), tid, tid))
        }
        1 => {
            let header = gtpv1::Header::parse(payload).ok()?;
            let fields = gtpv1::ControlFields::parse(header.body).ok()?;
            Some((1, u32::from(header.sequence?), fields.teid_control.map(u64::from), Some(u64::from(header.teid))))
        }
        2 => {
            if payload.first()? & 0x10 != 0 {
                return None; // piggybacked: the message that paired may be the second one
            }
            let header = gtpv2::Header::parse(payload).ok()?;
            let fields = gtpv2::ControlFields::parse(header.body).ok()?;
            Some((2, header.sequence, fields.sender_control.map(|f| u64::from(f.teid)), header.teid.map(u64::from)))
        }
        _ => None,
    }
}

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
            let [request, response] = up.frames;
            let at = |n: u64| sent.get(usize::try_from(n).ok()?.checked_sub(1)?).copied();
            let (Some((request_ts, request)), Some((response_ts, response))) = (at(request), at(response)) else {
                panic!("a session names frames {request} and {response} that were not sent");
            };
            assert!(response_ts - request_ts <= window_us, "paired outside the retransmission window");
            if let (Some(q), Some(r)) = (pairing_facts(request), pairing_facts(response)) {
                assert_eq!((q.0, q.1), (r.0, r.1), "paired across versions or sequence numbers");
                if let Some(announced) = q.2 {
                    assert_eq!(Some(announced), r.3, "the response does not carry the announced TEID");
                }
            }
        }
        assert!(correlator.pending_len() <= 8 && correlator.sessions().len() <= 8);
        rest = next;
    }
});
