//! The correlator's unit tests: pairing, secondary contexts, dedupe, truncated IEs, the UE-address
//! fallback; the mirror's failure cases as a whole are in `tests/pairing.rs`.
#![cfg(test)]
use super::*;
use crate::wire::gtpv1::message as v1;
use crate::wire::Tbcd;

const SGSN: [u8; 4] = [192, 0, 2, 10];
const GGSN: [u8; 4] = [198, 51, 100, 1];

fn send(c: &mut Correlator, ts: u64, from: [u8; 4], to: [u8; 4], port: u16, payload: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    c.on_datagram(
        &Datagram { ts_us: ts, frame: 0, source: (from, port).into(), destination: (to, port).into(), payload },
        &mut out,
    );
    out
}

fn teids(data: u32, control: u32) -> Vec<u8> {
    let mut ies = vec![16];
    ies.extend_from_slice(&data.to_be_bytes());
    ies.push(17);
    ies.extend_from_slice(&control.to_be_bytes());
    ies
}

fn session_up(events: &[Event]) -> &SessionEvent {
    events.iter().find_map(|e| if let Event::SessionUp(s) = e { Some(s) } else { None }).expect("a session_up")
}

/// A primary context, a secondary one linked to it (no IMSI/MSISDN of its own), then a Delete with
/// Teardown Indicator that ends both.
#[test]
fn secondary_context_inherits_the_subscriber_and_teardown_ends_both() {
    let mut c = Correlator::new(Config::default());
    let imsi = [2u8, 0x00, 0x01, 0x10, 0x32, 0x54, 0x76, 0x98, 0xF0];
    let msisdn = [134u8, 0, 7, 0x91, 0x64, 0x07, 0x12, 0x32, 0x54, 0xF6];
    let primary_request = [&imsi[..], &teids(0x11, 0x12), &[20, 5], &[128, 0, 2, 0xF1, 0x21], &msisdn].concat();
    send(&mut c, 1, SGSN, GGSN, 2123, &v1(16, 0, 1, &primary_request));
    let response = [&[1u8, 128][..], &teids(0x21, 0x22), &[128, 0, 6, 0xF1, 0x21, 10, 1, 2, 3]].concat();
    let up = send(&mut c, 2, GGSN, SGSN, 2123, &v1(17, 0x12, 1, &response));
    assert_eq!(session_up(&up).identity.msisdn, Tbcd::from_digits("46702123456").unwrap());

    // Secondary: addressed to the GGSN's TEID-C, NSAPI 6 linked to NSAPI 5, no identity IEs.
    let secondary_request = [&teids(0x31, 0x12)[..], &[20, 6, 20, 5]].concat();
    send(&mut c, 3, SGSN, GGSN, 2123, &v1(16, 0x22, 2, &secondary_request));
    let secondary_response = [&[1u8, 128][..], &teids(0x41, 0x22)].concat();
    let up = send(&mut c, 4, GGSN, SGSN, 2123, &v1(17, 0x12, 2, &secondary_response));
    let secondary = session_up(&up);
    assert_eq!(secondary.identity.msisdn, Tbcd::from_digits("46702123456").unwrap());
    assert_eq!(secondary.identity.ue_ipv4, Some([10, 1, 2, 3].into()));
    assert_eq!((secondary.teid_up, secondary.teid_down), (0x41, 0x31));
    assert_eq!(c.sessions().len(), 2);

    // Delete with Teardown Ind = 1 for NSAPI 5 ends every context of the PDP address.
    send(&mut c, 5, SGSN, GGSN, 2123, &v1(20, 0x22, 3, &[19, 1, 20, 5]));
    let down = send(&mut c, 6, GGSN, SGSN, 2123, &v1(21, 0x12, 3, &[1, 128]));
    assert_eq!(down.iter().filter(|e| matches!(e, Event::SessionDown(_))).count(), 2);
    assert!(c.sessions().is_empty());
}

/// A G-PDU on the uplink tunnel 0x21 at the GGSN carrying a DNS query for `<token>.sp.example`.
fn dns_g_pdu(token: &Token) -> Vec<u8> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in [token.to_string().as_str(), "sp", "example"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 1, 2, 3], [8, 8, 8, 8], 64).udp(40000, 53).write(&mut inner, &query).unwrap();
    let mut gtp = vec![0x30, 0xFF];
    gtp.extend_from_slice(&(inner.len() as u16).to_be_bytes());
    gtp.extend_from_slice(&0x21u32.to_be_bytes());
    gtp.extend_from_slice(&inner);
    gtp
}

/// A token seen again within the dedupe window is not reported again; after the window it is, even
/// when the table has not been swept since the first sighting went out of the window.
#[test]
fn repeated_sightings_are_suppressed_only_within_the_window() {
    let mut c = Correlator::new(Config { sighting_dedupe_window_s: 100, ..Config::default() });
    let imsi = [2u8, 0x00, 0x01, 0x10, 0x32, 0x54, 0x76, 0x98, 0xF0];
    let request = [&imsi[..], &teids(0x11, 0x12), &[20, 5], &[128, 0, 2, 0xF1, 0x21]].concat();
    send(&mut c, 1, SGSN, GGSN, 2123, &v1(16, 0, 1, &request));
    let response = [&[1u8, 128][..], &teids(0x21, 0x22), &[128, 0, 6, 0xF1, 0x21, 10, 1, 2, 3]].concat();
    send(&mut c, 2, GGSN, SGSN, 2123, &v1(17, 0x12, 1, &response));
    let token = Token::from_random([5; 16]);
    let g_pdu = dns_g_pdu(&token);
    let sightings = |events: Vec<Event>| events.iter().filter(|e| matches!(e, Event::Sighting(_))).count();
    let s = 1_000_000;
    assert_eq!(sightings(send(&mut c, 3, SGSN, GGSN, 2152, &g_pdu)), 1);
    assert_eq!(sightings(send(&mut c, 50 * s, SGSN, GGSN, 2152, &g_pdu)), 0, "within the window");
    send(&mut c, 100 * s, SGSN, GGSN, 2152, &[0x30, 1, 0, 0, 0, 0, 0, 0]); // a sweep that keeps it
    assert_eq!(sightings(send(&mut c, 101 * s, SGSN, GGSN, 2152, &g_pdu)), 1, "past the window");
    assert_eq!(c.stats().notes.get(Note::SightingDuplicate), 1);
}

/// A response whose header TEID is not the requester's announced TEID-C is not paired, wherever it
/// comes from; a rejected response creates nothing; a request never answered leaves the pending table
/// at the end of the retransmission window.
#[test]
fn pairing_needs_the_proof_and_an_accepting_cause() {
    let mut c = Correlator::new(Config { t3_response_ms: 500, n3_requests: 2, ..Config::default() });
    let request = [&[2u8, 0x00, 0x01, 0x10, 0x32, 0x54, 0x76, 0x98, 0xF0][..], &teids(0x11, 0x12), &[20, 5]].concat();
    send(&mut c, 1, SGSN, GGSN, 2123, &v1(16, 0, 7, &request));
    let response = [&[1u8, 128][..], &teids(0x21, 0x22), &[128, 0, 6, 0xF1, 0x21, 10, 1, 2, 3]].concat();
    let stranger = [203, 0, 113, 9];
    assert!(send(&mut c, 2, stranger, SGSN, 2123, &v1(17, 0x13, 7, &response)).is_empty());
    assert!(send(&mut c, 2, GGSN, SGSN, 2123, &v1(17, 0x13, 7, &response)).is_empty());
    assert_eq!(c.stats().notes.get(Note::GtpcResponseTeidMismatch), 1);
    assert_eq!(c.stats().notes.get(Note::GtpcResponseWithoutRequest), 1);
    let rejected = [&[1u8, 199][..], &teids(0x21, 0x22)].concat();
    assert!(send(&mut c, 3, GGSN, SGSN, 2123, &v1(17, 0x12, 7, &rejected)).is_empty());
    assert!(c.sessions().is_empty());
    send(&mut c, 10, SGSN, GGSN, 2123, &v1(16, 0, 8, &request));
    assert_eq!(c.pending_len(), 1);
    send(&mut c, 5_000_000, SGSN, GGSN, 2152, &[0x30, 1, 0, 0, 0, 0, 0, 0]); // time passes
    assert_eq!(c.pending_len(), 0);
    assert_eq!(c.stats().notes.get(Note::GtpcRequestUnanswered), 1);
}

/// A message whose length field is true but whose IEs run past it, in each GTP-C version, is dropped
/// as `gtpc-ie-truncated` and creates nothing; an endless extension chain as `gtpu-too-many-extensions`.
#[test]
fn truncated_ies_and_extension_chains_are_counted_by_reason() {
    use crate::wire::gtpv1::{create_pdp_request, cut_inside, g_pdu_with_extensions};
    let mut c = Correlator::new(Config::default());
    let v1_request = create_pdp_request();
    assert!(send(&mut c, 1, SGSN, GGSN, 2123, &cut_inside(&v1_request, v1_request.len() - 5, 8)).is_empty());
    let v2_request = crate::wire::gtpv2::create_session_request();
    assert!(send(&mut c, 2, SGSN, GGSN, 2123, &cut_inside(&v2_request, v2_request.len() - 1, 4)).is_empty());
    assert_eq!(c.stats().drops.get(DropReason::GtpcIeTruncated), 2);
    assert_eq!(c.pending_len(), 0, "a truncated request is not kept");
    assert!(send(&mut c, 3, SGSN, GGSN, 2152, &g_pdu_with_extensions(9)).is_empty());
    assert_eq!(c.stats().drops.get(DropReason::GtpuTooManyExtensions), 1);
}

/// A token on a tunnel no signalling explains, from the address of a live session at the same GGSN:
/// by default unattributed (the probe missed signalling; the address may have moved on), counted as
/// what the fallback would have attributed; with `attribute_by_ue_ip`, that session's sighting.
#[test]
fn the_ue_address_fallback_is_opt_in() {
    for opt_in in [false, true] {
        let mut c = Correlator::new(Config { attribute_by_ue_ip: opt_in, ..Config::default() });
        let imsi = [2u8, 0x00, 0x01, 0x10, 0x32, 0x54, 0x76, 0x98, 0xF0];
        let request = [&imsi[..], &teids(0x11, 0x12), &[20, 5], &[128, 0, 2, 0xF1, 0x21]].concat();
        send(&mut c, 1, SGSN, GGSN, 2123, &v1(16, 0, 1, &request));
        let response = [&[1u8, 128][..], &teids(0x21, 0x22), &[128, 0, 6, 0xF1, 0x21, 10, 1, 2, 3]].concat();
        send(&mut c, 2, GGSN, SGSN, 2123, &v1(17, 0x12, 1, &response));
        let token: Token = "gc1qsklscc4bqw3t7si54kqgo6py5ipot2t".parse().unwrap();
        let mut unsignalled = dns_g_pdu(&token);
        unsignalled[4..8].copy_from_slice(&0x99u32.to_be_bytes());
        let events = send(&mut c, 3, SGSN, GGSN, 2152, &unsignalled);
        match (opt_in, events.as_slice()) {
            (false, [Event::Unattributed(u)]) => {
                assert_eq!(u.reason, "unknown-tunnel");
                assert_eq!(c.stats().notes.get(Note::UnknownTunnelUeIpHeld), 1);
            }
            (true, [Event::Sighting(s)]) => {
                assert_eq!(s.attribution, Attribution::UeIp);
                assert_eq!(c.stats().notes.get(Note::AttributedByUeIp), 1);
            }
            other => panic!("opt-in {opt_in}: {other:?}"),
        }
    }
}
