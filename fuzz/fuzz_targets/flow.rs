//! The TCP flow path of one subscriber: a session is signalled, then the input is a sequence of uplink
//! segments, each `[flags: u8][sequence step: u16 BE][len: u8][payload]`, carried in G-PDUs on the
//! session's tunnel. The flags pick SYN, FIN or RST and whether the step goes back (a retransmission or
//! a segment from the past) or forward (a gap); so the cross-segment join, the retransmission skip, the
//! carrier choice (HTTP, TLS, other) and the scan budget all run, as in the probe.
//!
//! Checks besides "no panic": every token reported is in the bytes the subscriber sent, in the order
//! sent (within one segment, or across the join of consecutive ones): the flow path never makes one up.
#![no_main]
use gtpcharge_correlate::{Config, Correlator, Datagram, Event};
use libfuzzer_sys::fuzz_target;

const SGSN: [u8; 4] = [192, 0, 2, 10];
const GGSN: [u8; 4] = [198, 51, 100, 1];
const UE: [u8; 4] = [10, 1, 2, 3];

use gtpcharge_correlate::wire::gtpv1::message as v1;

/// An uplink G-PDU on tunnel 0x21 holding an IPv4/TCP segment (checksums zero: the probe reads none).
fn segment(sequence: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let total = 40 + payload.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&UE);
    ip.extend_from_slice(&[203, 0, 113, 80]);
    ip.extend_from_slice(&40000u16.to_be_bytes());
    ip.extend_from_slice(&80u16.to_be_bytes());
    ip.extend_from_slice(&sequence.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xFF, 0xFF, 0, 0, 0, 0]);
    ip.extend_from_slice(payload);
    let mut gtp = vec![0x30, 0xFF];
    gtp.extend_from_slice(&(ip.len() as u16).to_be_bytes());
    gtp.extend_from_slice(&0x21u32.to_be_bytes());
    gtp.extend_from_slice(&ip);
    gtp
}

fuzz_target!(|data: &[u8]| {
    let mut correlator = Correlator::new(Config { flows_max: 4, scan_bytes_max: 512, ..Config::default() });
    let mut events = Vec::new();
    let mut send = |correlator: &mut Correlator, ts: u64, from: [u8; 4], to: [u8; 4], port: u16, payload: &[u8]| {
        let datagram =
            Datagram { ts_us: ts, frame: 0, source: (from, port).into(), destination: (to, port).into(), payload };
        correlator.on_datagram(&datagram, &mut events);
        std::mem::take(&mut events)
    };
    let imsi = [2u8, 0x00, 0x01, 0x10, 0x32, 0x54, 0x76, 0x98, 0xF0];
    let teids = |data: u32, control: u32| [[16].as_slice(), &data.to_be_bytes(), &[17], &control.to_be_bytes()].concat();
    let request = [&imsi[..], &teids(0x11, 0x12), &[20, 5], &[128, 0, 2, 0xF1, 0x21]].concat();
    send(&mut correlator, 1, SGSN, GGSN, 2123, &v1(16, 0, 1, &request));
    let response = [&[1u8, 128][..], &teids(0x21, 0x22), &[128, 0, 6, 0xF1, 0x21], &UE[..]].concat();
    let up = send(&mut correlator, 2, GGSN, SGSN, 2123, &v1(17, 0x12, 1, &response));
    assert!(matches!(up.as_slice(), [Event::SessionUp(_)]), "the fixed signalling brings the session up");

    let mut sequence = 1000u32;
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut rest = data;
    for ts in 3..259u64 {
        let Some((&[flags, step_high, step_low, len], tail)) = rest.split_first_chunk::<4>() else { break };
        let len = usize::from(len).min(tail.len());
        let (payload, next) = tail.split_at(len);
        let step = u32::from(u16::from_be_bytes([step_high, step_low]));
        sequence = if flags & 0x80 != 0 { sequence.wrapping_sub(step) } else { sequence.wrapping_add(step) };
        // SYN 0x02, FIN 0x01, RST 0x04 from the input; ACK always.
        let tcp_flags = 0x10 | (flags & 0x07);
        sent.push(payload.to_ascii_lowercase());
        for event in send(&mut correlator, ts * 1000, SGSN, GGSN, 2152, &segment(sequence, tcp_flags, payload)) {
            if let Event::Sighting(sighting) = event {
                let token = sighting.token.to_string().into_bytes();
                // The join only ever spans segments in the order they came, so the token is in their
                // concatenation.
                let all = sent.concat();
                let sent_it = all.windows(token.len()).any(|w| w == token);
                assert!(sent_it, "a token the subscriber never sent: {}", sighting.token);
            }
        }
        rest = next;
    }
});
