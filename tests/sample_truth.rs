//! The committed sample against Wireshark, not against a snapshot the probe produced: which subscriber
//! each token belongs to is derived here from tshark alone. Wireshark's GTP session tracking (`-2 -o
//! gtp.track_gtp_session:TRUE`) ties every G-PDU to the GTP-C exchange whose tunnels carry it; a session
//! counts from its accepted Create response to its Delete response; the MSISDN is the one its Create
//! request names. Tokens are read from Wireshark's HTTP, DNS and TLS fields (so HTTP split across TCP
//! segments is Wireshark's reassembly, not ours) and kept where the token syntax's check part holds.
//! The probe's sightings and unattributed tokens must be exactly that; its sessions the accepted ones.
mod common;

use common::{of_kind, replay, tshark_with};
use gtpcharge_proto::token::Token;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const TRACKING: [&str; 5] = ["-2", "-o", "gtp.track_gtp_session:TRUE", "-E", "occurrence=a"];

/// Every valid token in a field's text (case ignored, as resolvers may change the case of DNS names).
fn tokens_in(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    lower
        .match_indices("gc1")
        .filter_map(|(at, _)| lower.get(at..at + 35))
        .filter_map(|candidate| candidate.parse::<Token>().ok())
        .map(|token| token.to_string())
        .collect()
}

/// A session as Wireshark tracks it: its subscriber and the frames where it starts and ends.
#[derive(Debug, Default)]
struct Tracked {
    imsi: String,
    msisdn: String,
    up_at: Option<u64>,
    down_at: Option<u64>,
}

#[test]
fn sample_sightings_are_wiresharks_sessions_and_tokens() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.pcap");
    let control = "gtp.message == 16 || gtp.message == 17 || gtp.message == 20 || gtp.message == 21 || \
                   gtpv2.message_type == 32 || gtpv2.message_type == 33 || gtpv2.message_type == 36 || \
                   gtpv2.message_type == 37";
    let fields = [
        "frame.number",
        "gtp.session",
        "gtpv2.session",
        "gtp.message",
        "gtpv2.message_type",
        "e212.imsi",
        "e164.msisdn",
        "gtp.cause",
        "gtpv2.cause",
    ];
    let Some(rows) = tshark_with(&sample, &TRACKING, control, &fields) else { return };
    let first = |row: &BTreeMap<String, String>, name: &str| -> String {
        row.get(name).and_then(|v| v.split(',').next()).unwrap_or_default().to_owned()
    };
    let mut sessions: BTreeMap<String, Tracked> = BTreeMap::new();
    for row in &rows {
        let session = [first(row, "gtp.session"), first(row, "gtpv2.session")].concat();
        if session.is_empty() {
            continue; // Wireshark tied this message to no session
        }
        let frame: u64 = first(row, "frame.number").parse().unwrap();
        let message = common::tshark_number(&first(row, "gtp.message"))
            .map(|m| (1, m))
            .or_else(|| common::tshark_number(&first(row, "gtpv2.message_type")).map(|m| (2, m)))
            .unwrap();
        let cause =
            common::tshark_number(&first(row, "gtp.cause")).or(common::tshark_number(&first(row, "gtpv2.cause")));
        let tracked = sessions.entry(session).or_default();
        match message {
            (1, 16) | (2, 32) => {
                tracked.imsi = first(row, "e212.imsi");
                tracked.msisdn = first(row, "e164.msisdn");
            }
            // Accepted: GTPv1 cause 128 "Request accepted", GTPv2 cause 16 "Request accepted".
            (1, 17) if cause == Some(128) => tracked.up_at = tracked.up_at.or(Some(frame)),
            (2, 33) if cause == Some(16) => tracked.up_at = tracked.up_at.or(Some(frame)),
            (1, 21) | (2, 37) if tracked.up_at.is_some() => tracked.down_at = tracked.down_at.or(Some(frame)),
            _ => {}
        }
    }
    let up: Vec<&Tracked> = sessions.values().filter(|s| s.up_at.is_some()).collect();
    assert!(up.len() >= 20, "Wireshark tracked {} accepted sessions: {sessions:?}", up.len());

    // Every token in a subscriber's request, and the session Wireshark puts its G-PDU in.
    let carriers = ["http.request.uri", "http.request.line", "dns.qry.name", "tls.handshake.extensions_server_name"];
    let traffic =
        "gtp.message == 0xff && (http.request || (dns && dns.flags.response == 0) || tls.handshake.type == 1)";
    let fields = [&["frame.number", "gtp.session"][..], &carriers].concat();
    // (A G-PDU is GTPv1 whatever signalled its tunnels; Wireshark numbers sessions across both versions.)
    let rows = tshark_with(&sample, &TRACKING, traffic, &fields).unwrap();
    let mut expected: BTreeMap<String, Option<String>> = BTreeMap::new();
    for row in &rows {
        let frame: u64 = first(row, "frame.number").parse().unwrap();
        let owner = sessions
            .get(&first(row, "gtp.session"))
            .filter(|s| s.up_at.is_some_and(|up| frame > up) && s.down_at.is_none_or(|down| frame < down));
        for carrier in carriers {
            for token in tokens_in(row.get(carrier).map(String::as_str).unwrap_or_default()) {
                // The first sighting of a token decides (later ones are the same purchase).
                expected.entry(token).or_insert_with(|| owner.map(|s| s.msisdn.clone()));
            }
        }
    }
    assert!(expected.len() >= 30, "{} tokens from Wireshark: {expected:?}", expected.len());

    let (events, stderr, code) = replay(&[&sample]);
    assert_eq!(code, 0, "{stderr}");
    let mut ours: BTreeMap<String, Option<String>> = BTreeMap::new();
    for sighting in of_kind(&events, "sighting") {
        let token = sighting["token"].as_str().unwrap().to_owned();
        ours.entry(token).or_insert_with(|| Some(sighting["msisdn"].as_str().unwrap().to_owned()));
    }
    for unattributed in of_kind(&events, "unattributed") {
        ours.entry(unattributed["token"].as_str().unwrap().to_owned()).or_insert(None);
    }
    let differences: Vec<String> = expected
        .keys()
        .chain(ours.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|token| expected.get(*token) != ours.get(*token))
        .map(|token| format!("{token}: Wireshark {:?}, probe {:?}", expected.get(token), ours.get(token)))
        .collect();
    assert!(
        differences.is_empty(),
        "{} of {} tokens differ:\n{}",
        differences.len(),
        expected.len(),
        differences.join("\n")
    );

    // The sessions that came up: the accepted ones, with Wireshark's IMSI and MSISDN.
    let theirs: BTreeSet<(String, String)> = up.iter().map(|s| (s.imsi.clone(), s.msisdn.clone())).collect();
    let ours: BTreeSet<(String, String)> = of_kind(&events, "session_up")
        .iter()
        .map(|e| (e["imsi"].as_str().unwrap().to_owned(), e["msisdn"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(ours, theirs);
}
