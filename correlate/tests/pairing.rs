//! Pairing by proof, scenario by scenario: what a mirror really shows (lost requests and responses,
//! sequence numbers that restart, retransmissions, peers that answer from another address, S11 and S5/S8
//! in one capture). Each scenario knows which subscriber sent which token; a token charged to anyone else
//! fails it, and so does a token that should have been attributed and was not.
use gtpcharge_correlate::{Config, Correlator, Datagram, Event, Interface};
use gtpcharge_proto::Token;
use std::net::IpAddr;

const SGSN: [u8; 4] = [192, 0, 2, 10];
const GGSN: [u8; 4] = [198, 51, 100, 1];
const GGSN_OTHER: [u8; 4] = [198, 51, 100, 2];

struct Probe {
    correlator: Correlator,
    events: Vec<Event>,
    ts: u64,
}

impl Probe {
    fn new() -> Probe {
        Probe { correlator: Correlator::new(Config::default()), events: Vec::new(), ts: 1_000_000 }
    }

    /// Sends a datagram `ms` milliseconds after the previous one.
    fn send(&mut self, ms: u64, from: [u8; 4], to: [u8; 4], port: u16, payload: &[u8]) {
        self.ts += ms * 1000;
        let datagram =
            Datagram { ts_us: self.ts, frame: 0, source: (from, port).into(), destination: (to, port).into(), payload };
        self.correlator.on_datagram(&datagram, &mut self.events);
    }

    fn note(&self, name: &str) -> u64 {
        self.correlator.stats().notes.by_name().get(name).copied().unwrap_or(0)
    }

    /// (token, MSISDN) of every sighting, and the tokens left unattributed.
    fn charges(&self) -> (Vec<(Token, String)>, Vec<Token>) {
        let mut charged = Vec::new();
        let mut unattributed = Vec::new();
        for event in &self.events {
            match event {
                Event::Sighting(s) => charged.push((s.token, s.identity.msisdn.to_string())),
                Event::Unattributed(u) => unattributed.push(u.token),
                _ => {}
            }
        }
        (charged, unattributed)
    }

    fn sessions_up(&self) -> Vec<(String, String, Option<IpAddr>, Interface)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::SessionUp(s) => {
                    Some((s.identity.imsi.to_string(), s.identity.msisdn.to_string(), s.identity.ue_ip(), s.interface))
                }
                _ => None,
            })
            .collect()
    }
}

fn tbcd(digits: &str) -> Vec<u8> {
    let d: Vec<u8> = digits.bytes().map(|b| b - b'0').collect();
    d.chunks(2).map(|pair| pair[0] | (pair.get(1).copied().unwrap_or(0xF) << 4)).collect()
}

// ------------------------------------------------------------------------------------------ GTPv1 (Gn)

use gtpcharge_correlate::wire::gtpv1::message as v1;

/// A Create PDP Context Request for subscriber `n`: IMSI 00101000000000n, MSISDN 4670100000n, the
/// SGSN's TEID-U and TEID-C `teid`.
fn create_pdp_request(n: u8, teid: u32, sequence: u16) -> Vec<u8> {
    let mut ies = vec![2];
    ies.extend(tbcd(&format!("0010100000000{n:02}")));
    ies.extend([16]);
    ies.extend(teid.to_be_bytes());
    ies.extend([17]);
    ies.extend(teid.to_be_bytes());
    ies.extend([20, 5]);
    ies.extend([128, 0, 2, 0xF1, 0x21]);
    let msisdn = tbcd(&format!("46701000{n:02}"));
    ies.extend([134, 0, (msisdn.len() + 1) as u8, 0x91]);
    ies.extend(msisdn);
    v1(16, 0, sequence, &ies)
}

/// An accepting Create PDP Context Response to the requester's TEID-C `to_teid`, giving UE address
/// `ue` and the GGSN's TEIDs `teid`.
fn create_pdp_response(to_teid: u32, sequence: u16, ue: [u8; 4], teid: u32) -> Vec<u8> {
    let mut ies = vec![1, 128, 16];
    ies.extend(teid.to_be_bytes());
    ies.extend([17]);
    ies.extend(teid.to_be_bytes());
    ies.extend([128, 0, 6, 0xF1, 0x21]);
    ies.extend(ue);
    v1(17, to_teid, sequence, &ies)
}

fn msisdn(n: u8) -> String {
    format!("46701000{n:02}")
}

/// A G-PDU to `teid` carrying a DNS query for `<token>.pay.example` from `ue`.
fn dns_g_pdu(teid: u32, ue: [u8; 4], token: &Token) -> Vec<u8> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in [token.to_string().as_str(), "pay", "example"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ipv4(ue, [8, 8, 8, 8], 64).udp(40000, 53).write(&mut inner, &query).unwrap();
    let mut gtp = vec![0x30, 0xFF];
    gtp.extend_from_slice(&(inner.len() as u16).to_be_bytes());
    gtp.extend_from_slice(&teid.to_be_bytes());
    gtp.extend_from_slice(&inner);
    gtp
}

fn token(n: u8) -> Token {
    Token::from_random([n; 16])
}

/// The mirror lost the second Create PDP Context Request; its response shares the sequence number of an
/// older request, from the same SGSN, that was never answered. It must not pair with it: the token then
/// sent from the second subscriber's address is unattributed, never charged to the first subscriber.
#[test]
fn a_lost_request_does_not_lend_its_response_to_an_older_one() {
    let mut p = Probe::new();
    p.send(0, SGSN, GGSN, 2123, &create_pdp_request(1, 0x100, 7)); // never answered
                                                                   // Subscriber 2's request (TEID-C 0x200, sequence 7) is lost by the mirror; its response is not.
    p.send(500, GGSN, SGSN, 2123, &create_pdp_response(0x200, 7, [10, 0, 0, 2], 0x2000));
    p.send(10, SGSN, GGSN, 2152, &dns_g_pdu(0x2000, [10, 0, 0, 2], &token(2)));
    assert!(p.sessions_up().is_empty(), "{:?}", p.sessions_up());
    let (charged, unattributed) = p.charges();
    assert!(charged.is_empty(), "charged {charged:?}");
    assert_eq!(unattributed, vec![token(2)]);
    assert_eq!(p.note("gtpc-response-teid-mismatch"), 1);
}

/// A lost response: the request waits, then leaves at the end of the retransmission window; the next
/// exchange with the same sequence number pairs normally.
#[test]
fn a_lost_response_leaves_no_session_and_the_next_exchange_pairs() {
    let mut p = Probe::new();
    p.send(0, SGSN, GGSN, 2123, &create_pdp_request(1, 0x100, 9)); // its response is lost
    p.send(16_000, SGSN, GGSN, 2152, &dns_g_pdu(0x1000, [10, 0, 0, 1], &token(1))); // past the window
    assert_eq!(p.correlator.pending_len(), 0);
    assert_eq!(p.note("gtpc-request-unanswered"), 1);
    p.send(1, SGSN, GGSN, 2123, &create_pdp_request(3, 0x300, 9));
    p.send(20, GGSN, SGSN, 2123, &create_pdp_response(0x300, 9, [10, 0, 0, 3], 0x3000));
    p.send(10, SGSN, GGSN, 2152, &dns_g_pdu(0x3000, [10, 0, 0, 3], &token(3)));
    let (charged, unattributed) = p.charges();
    assert_eq!(charged, vec![(token(3), msisdn(3))]);
    assert_eq!(unattributed, vec![token(1)]);
}

/// An SGSN restarts and begins its sequence numbers and TEIDs again: a response to the restarted node's
/// request (lost by the mirror) names the same sequence and TEID as a request from before the restart.
/// That request is older than the retransmission window, so the response pairs with nothing.
#[test]
fn sequence_numbers_restarting_do_not_pair_across_the_window() {
    let mut p = Probe::new();
    p.send(0, SGSN, GGSN, 2123, &create_pdp_request(1, 0x1, 1)); // never answered; then the SGSN restarts
    p.send(60_000, SGSN, GGSN, 2123, &[]); // a minute later: nothing (an empty datagram)
    p.send(1, GGSN, SGSN, 2123, &create_pdp_response(0x1, 1, [10, 0, 0, 4], 0x4000));
    p.send(10, SGSN, GGSN, 2152, &dns_g_pdu(0x4000, [10, 0, 0, 4], &token(4)));
    assert!(p.sessions_up().is_empty());
    assert!(p.charges().0.is_empty());
    // Within the window the same proof pairs (a slow GGSN, under T3 x N3).
    let mut p = Probe::new();
    p.send(0, SGSN, GGSN, 2123, &create_pdp_request(5, 0x1, 1));
    p.send(14_000, GGSN, SGSN, 2123, &create_pdp_response(0x1, 1, [10, 0, 0, 5], 0x5000));
    p.send(10, SGSN, GGSN, 2152, &dns_g_pdu(0x5000, [10, 0, 0, 5], &token(5)));
    assert_eq!(p.charges().0, vec![(token(5), msisdn(5))]);
}

/// A pooled GGSN answers from another of its addresses: the TEID and sequence prove the pairing.
#[test]
fn a_response_from_another_address_of_the_peer_pairs() {
    let mut p = Probe::new();
    p.send(0, SGSN, GGSN, 2123, &create_pdp_request(6, 0x600, 11));
    p.send(5, GGSN_OTHER, SGSN, 2123, &create_pdp_response(0x600, 11, [10, 0, 0, 6], 0x6000));
    p.send(5, SGSN, GGSN_OTHER, 2152, &dns_g_pdu(0x6000, [10, 0, 0, 6], &token(6)));
    assert_eq!(p.charges().0, vec![(token(6), msisdn(6))]);
    assert_eq!(p.note("gtpc-response-from-other-address"), 1);
}

/// Requests sent three times (the first two unanswered in time) make one pending entry; the response
/// pairs once; a duplicated response pairs with nothing.
#[test]
fn retransmitted_requests_make_one_entry_and_one_session() {
    let mut p = Probe::new();
    for _ in 0..3 {
        p.send(3_000, SGSN, GGSN, 2123, &create_pdp_request(7, 0x700, 13));
    }
    assert_eq!(p.correlator.pending_len(), 1);
    assert_eq!(p.note("gtpc-request-retransmitted"), 2);
    let response = create_pdp_response(0x700, 13, [10, 0, 0, 7], 0x7000);
    p.send(100, GGSN, SGSN, 2123, &response);
    p.send(1, GGSN, SGSN, 2123, &response);
    assert_eq!(p.sessions_up().len(), 1);
    assert_eq!(p.note("gtpc-response-without-request"), 1);
}

/// A response whose TEID matches no pending request, whatever its sequence: never paired, counted.
#[test]
fn a_teid_that_matches_nothing_pairs_nothing() {
    let mut p = Probe::new();
    p.send(0, SGSN, GGSN, 2123, &create_pdp_request(8, 0x800, 15));
    p.send(0, SGSN, GGSN, 2123, &create_pdp_request(9, 0x900, 16));
    p.send(5, GGSN, SGSN, 2123, &create_pdp_response(0xDEAD, 15, [10, 0, 0, 8], 0x8000));
    p.send(5, GGSN, SGSN, 2123, &create_pdp_response(0x800, 16, [10, 0, 0, 9], 0x9000));
    assert!(p.sessions_up().is_empty());
    assert_eq!(p.note("gtpc-response-teid-mismatch"), 2);
    assert_eq!(p.correlator.pending_len(), 2);
}

/// The reported failure, in the EPC shape: two Create Session Requests with one sequence number between
/// the same addresses; the second one is lost; the response to it must not give the second
/// subscriber's UE address to the first.
#[test]
fn gtpv2_two_requests_one_sequence_the_second_lost() {
    let mut p = Probe::new();
    p.send(0, MME, SGW_S11, 2123, &create_session_request(1, 0x11, 6));
    p.send(10, SGW_S11, MME, 2123, &create_session_response(0x22, 6, [10, 45, 0, 2], 0x2200));
    assert!(p.sessions_up().is_empty());
    assert_eq!(p.note("gtpc-response-teid-mismatch"), 1);
}

// ------------------------------------------------------------------------------------- GTPv2 (EPC)

const MME: [u8; 4] = [172, 16, 0, 10];
const SGW_S11: [u8; 4] = [172, 16, 0, 20];
const SGW_S5: [u8; 4] = [172, 17, 0, 20];
const SGW_S5_OTHER: [u8; 4] = [172, 17, 0, 21];
const PGW: [u8; 4] = [172, 18, 0, 30];
const SGW_S1U: [u8; 4] = [172, 19, 0, 20];
const ENB: [u8; 4] = [172, 20, 0, 1];

fn ie(ie_type: u8, instance: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![ie_type];
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.push(instance);
    out.extend_from_slice(value);
    out
}

fn fteid(interface: u8, teid: u32, address: [u8; 4]) -> Vec<u8> {
    let mut value = vec![0x80 | interface];
    value.extend(teid.to_be_bytes());
    value.extend(address);
    value
}

fn v2(message_type: u8, teid: u32, sequence: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0x48, message_type];
    m.extend_from_slice(&((body.len() + 8) as u16).to_be_bytes());
    m.extend_from_slice(&teid.to_be_bytes());
    m.extend_from_slice(&sequence.to_be_bytes()[1..]);
    m.push(0);
    m.extend_from_slice(body);
    m
}

/// TAI + ECGI in MCC 001 / MNC 01.
const ULI_TAI_ECGI: [u8; 13] = [0x18, 0x00, 0xF1, 0x10, 0x00, 0x07, 0x00, 0xF1, 0x10, 0x00, 0x00, 0x12, 0x34];

/// A Create Session Request on S11 (MME → SGW) for subscriber `n`, sender control TEID `teid`.
fn create_session_request(n: u8, teid: u32, sequence: u32) -> Vec<u8> {
    let body = [
        ie(1, 0, &tbcd(&format!("0010100000000{n:02}"))),
        ie(76, 0, &tbcd(&format!("46701000{n:02}"))),
        ie(82, 0, &[6]),
        ie(86, 0, &ULI_TAI_ECGI),
        ie(87, 0, &fteid(10, teid, MME)),
        ie(71, 0, b"\x08internet"),
        ie(79, 0, &[1, 0, 0, 0, 0]),
        ie(93, 0, &ie(73, 0, &[5])),
    ]
    .concat();
    v2(32, 0, sequence, &body)
}

/// The SGW's accepting Create Session Response on S11: UE address, the SGW's S11 control F-TEID and
/// S1-U F-TEID (`teid`).
fn create_session_response(to_teid: u32, sequence: u32, ue: [u8; 4], teid: u32) -> Vec<u8> {
    let bearer =
        [ie(73, 0, &[5]), ie(2, 0, &[16, 0]), ie(87, 0, &fteid(1, teid, SGW_S1U)), ie(94, 0, &[0, 0, 0, 9])].concat();
    let mut paa = vec![1];
    paa.extend(ue);
    let body =
        [ie(2, 0, &[16, 0]), ie(87, 0, &fteid(11, teid + 1, SGW_S11)), ie(79, 0, &paa), ie(93, 0, &bearer)].concat();
    v2(33, to_teid, sequence, &body)
}

/// The SGW's Create Session Request on S5 (SGW → PGW) for the same subscriber, without the MSISDN.
fn s5_create_session_request(n: u8, teid: u32, sequence: u32) -> Vec<u8> {
    let bearer = [ie(73, 0, &[5]), ie(87, 2, &fteid(4, teid + 1, SGW_S5))].concat();
    let body = [
        ie(1, 0, &tbcd(&format!("0010100000000{n:02}"))),
        ie(87, 0, &fteid(6, teid, SGW_S5)),
        ie(71, 0, b"\x08internet"),
        ie(79, 0, &[1, 0, 0, 0, 0]),
        ie(93, 0, &bearer),
    ]
    .concat();
    v2(32, 0, sequence, &body)
}

/// The PGW's accepting Create Session Response on S5.
fn s5_create_session_response(to_teid: u32, sequence: u32, ue: [u8; 4], teid: u32) -> Vec<u8> {
    let bearer = [ie(73, 0, &[5]), ie(2, 0, &[16, 0]), ie(87, 2, &fteid(5, teid, PGW))].concat();
    let mut paa = vec![1];
    paa.extend(ue);
    let body = [ie(2, 0, &[16, 0]), ie(87, 1, &fteid(7, teid + 1, PGW)), ie(79, 0, &paa), ie(93, 0, &bearer)].concat();
    v2(33, to_teid, sequence, &body)
}

/// S11 and S5/S8 of one UE in one capture, with sequence numbers that coincide across the two
/// interfaces and responses that come from other addresses than the requests went to: one identity per
/// UE address (the S5 view, which has no MSISDN, takes it from the S11 view), each session says its
/// interface, and the token charges the right subscriber once although the probe sees it twice.
#[test]
fn s11_and_s5_in_one_capture_give_one_identity() {
    let mut p = Probe::new();
    let ue = [10, 45, 0, 1];
    // UE 1 and UE 2 attach at once; every exchange uses sequence 0x10 on both interfaces.
    p.send(0, MME, SGW_S11, 2123, &create_session_request(1, 0x1100, 0x10));
    p.send(1, SGW_S5, PGW, 2123, &s5_create_session_request(1, 0x5100, 0x10));
    p.send(0, MME, SGW_S11, 2123, &create_session_request(2, 0x1200, 0x10));
    p.send(1, SGW_S5_OTHER, PGW, 2123, &s5_create_session_request(2, 0x5200, 0x10));
    // Responses from other addresses than the requests went to, in the other order.
    p.send(5, PGW, SGW_S5_OTHER, 2123, &s5_create_session_response(0x5200, 0x10, [10, 45, 0, 2], 0xA200));
    p.send(0, [172, 18, 0, 31], SGW_S5, 2123, &s5_create_session_response(0x5100, 0x10, ue, 0xA100));
    p.send(1, SGW_S5, MME, 2123, &create_session_response(0x1200, 0x10, [10, 45, 0, 2], 0xB200));
    p.send(1, SGW_S5, MME, 2123, &create_session_response(0x1100, 0x10, ue, 0xB100));
    let up = p.sessions_up();
    let expected = |n: u8, msisdn: String, ip: [u8; 4], interface| {
        (format!("0010100000000{n:02}"), msisdn, Some(IpAddr::from(ip)), interface)
    };
    assert_eq!(
        up,
        vec![
            expected(2, String::new(), [10, 45, 0, 2], Interface::S5S8),
            expected(1, String::new(), ue, Interface::S5S8),
            expected(2, msisdn(2), [10, 45, 0, 2], Interface::S11),
            expected(1, msisdn(1), ue, Interface::S11),
        ],
        "the S5 views came first, without an MSISDN"
    );
    // Each S11 view gave its MSISDN to the S5 view of the same IMSI and UE address.
    let merged: Vec<String> = p
        .events
        .iter()
        .filter_map(|e| match e {
            Event::SessionUpdate(s) if s.reason == "merged" => Some(s.identity.msisdn.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(merged, vec![msisdn(2), msisdn(1)]);
    // The same uplink packet mirrored on S1-U (to the SGW) and on S5-U (to the PGW).
    p.send(5, ENB, SGW_S1U, 2152, &dns_g_pdu(0xB100, ue, &token(1)));
    p.send(1, SGW_S5, PGW, 2152, &dns_g_pdu(0xA100, ue, &token(1)));
    // The other UE only on S5-U.
    p.send(1, SGW_S5_OTHER, PGW, 2152, &dns_g_pdu(0xA200, [10, 45, 0, 2], &token(2)));
    let (charged, unattributed) = p.charges();
    assert_eq!(charged, vec![(token(1), msisdn(1)), (token(2), msisdn(2))]);
    assert!(unattributed.is_empty());
    assert_eq!(p.note("sighting-duplicate"), 1);
    let attached = p
        .events
        .iter()
        .find_map(|e| match e {
            Event::SessionUp(s) if s.interface == Interface::S11 => Some(s.attachment),
            _ => None,
        })
        .unwrap();
    assert_eq!(attached.rat_type, Some(6));
    let uli = attached.uli.unwrap();
    assert_eq!((uli.plmn.mcc, uli.plmn.mnc, uli.tai, uli.ecgi), (1, 1, Some(7), Some(0x1234)));
    assert_eq!(attached.charging_id, Some(9));
    assert_eq!(attached.serving_node, Some(IpAddr::from(MME)));
}

/// When the S11 view comes first, the S5 view (no MSISDN IE on S5 here) takes the subscriber's
/// MSISDN from it: one identity per UE address.
#[test]
fn the_s5_view_takes_the_msisdn_of_the_s11_view() {
    let mut p = Probe::new();
    let ue = [10, 45, 0, 3];
    p.send(0, MME, SGW_S11, 2123, &create_session_request(3, 0x1300, 0x20));
    p.send(1, SGW_S11, MME, 2123, &create_session_response(0x1300, 0x20, ue, 0xB300));
    p.send(1, SGW_S5, PGW, 2123, &s5_create_session_request(3, 0x5300, 0x20));
    p.send(1, PGW, SGW_S5, 2123, &s5_create_session_response(0x5300, 0x20, ue, 0xA300));
    let up = p.sessions_up();
    assert_eq!(up.len(), 2);
    assert!(up.iter().all(|s| s.1 == msisdn(3)), "{up:?}");
    p.send(1, SGW_S5, PGW, 2152, &dns_g_pdu(0xA300, ue, &token(3)));
    assert_eq!(p.charges().0, vec![(token(3), msisdn(3))]);
}

/// An Update PDP Context Request from the SGSN to the GGSN's TEID-C `to_teid`, naming the SGSN's TEIDs
/// `teid` and NSAPI 5.
fn update_pdp_request(to_teid: u32, teid: u32, sequence: u16) -> Vec<u8> {
    let mut ies = vec![16];
    ies.extend(teid.to_be_bytes());
    ies.extend([17]);
    ies.extend(teid.to_be_bytes());
    ies.extend([20, 5]);
    v1(18, to_teid, sequence, &ies)
}

/// An accepting Update PDP Context Response to the SGSN's TEID-C `to_teid`, giving the GGSN's TEIDs `teid`.
fn update_pdp_response(to_teid: u32, sequence: u16, teid: u32) -> Vec<u8> {
    let mut ies = vec![1, 128, 16];
    ies.extend(teid.to_be_bytes());
    ies.extend([17]);
    ies.extend(teid.to_be_bytes());
    v1(19, to_teid, sequence, &ies)
}

/// An update whose response gives the GGSN a new TEID for user data moves the session's uplink tunnel:
/// its event names the tunnel it left (a cluster says so under that tunnel's subject), an update that
/// keeps the tunnel names none, and the token on the new tunnel is the subscriber's.
#[test]
fn an_update_that_moves_the_uplink_tunnel_names_the_tunnel_it_left() {
    let mut p = Probe::new();
    p.send(0, SGSN, GGSN, 2123, &create_pdp_request(1, 0x100, 1));
    p.send(1, GGSN, SGSN, 2123, &create_pdp_response(0x100, 1, [10, 0, 0, 1], 0x900));
    p.send(1, SGSN, GGSN, 2123, &update_pdp_request(0x900, 0x100, 2));
    p.send(1, GGSN, SGSN, 2123, &update_pdp_response(0x100, 2, 0x901));
    p.send(1, SGSN, GGSN, 2123, &update_pdp_request(0x901, 0x100, 3));
    p.send(1, GGSN, SGSN, 2123, &update_pdp_response(0x100, 3, 0x901));
    let updates: Vec<_> = p
        .events
        .iter()
        .filter_map(|e| match e {
            Event::SessionUpdate(s) => {
                Some((s.tunnel_up.map(|t| t.teid), s.tunnel_up_before.map(|t| (t.address, t.teid))))
            }
            _ => None,
        })
        .collect();
    assert_eq!(updates, [(Some(0x901), Some((IpAddr::from(GGSN), 0x900))), (Some(0x901), None)]);
    p.send(1, SGSN, GGSN, 2152, &dns_g_pdu(0x901, [10, 0, 0, 1], &token(1)));
    p.send(1, SGSN, GGSN, 2152, &dns_g_pdu(0x900, [10, 0, 0, 1], &token(2)));
    assert_eq!(p.charges(), (vec![(token(1), msisdn(1))], vec![token(2)]), "the old tunnel attributes nothing");
}
