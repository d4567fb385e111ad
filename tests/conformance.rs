//! Conformance against captures nobody on this project wrote, and against Wireshark's reading of them.
//!
//! The captures live outside the repository (they belong to other projects); `.ci/test` points
//! `GTPCHARGE_SHARED_PCAPS` at them, with Wireshark's TSVs in `../ground-truth/out` beside. For each
//! capture, the sessions our probe reports (IMSI, MSISDN, IMEI, APN, UE IP, uplink and downlink TEID)
//! must equal the sessions derived from tshark's fields of the Create exchanges it accepted, and every
//! capture, malformed ones included, must replay without a crash and with its drops counted.
mod common;

use common::{attachment_differences, of_kind, replay, tshark, tshark_number, ATTACHMENT_FIELDS};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn shared_pcaps() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("GTPCHARGE_SHARED_PCAPS") else {
        common::not_run("CONFORMANCE", "GTPCHARGE_SHARED_PCAPS is not set (.ci/test sets it to ../shared/pcaps)");
        return None;
    };
    let dir = PathBuf::from(dir);
    // Set but absent is a mistake in the set-up, never a pass.
    assert!(dir.is_dir(), "GTPCHARGE_SHARED_PCAPS={} is not a directory", dir.display());
    Some(dir)
}

type Row = BTreeMap<String, String>;

fn read_tsv(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    lines
        .map(|line| header.iter().zip(line.split('\t')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
        .collect()
}

fn field<'a>(row: &'a Row, name: &str) -> &'a str {
    row.get(name).map(String::as_str).unwrap_or("")
}

fn first(value: &str) -> &str {
    value.split(';').next().unwrap_or("")
}

fn hex(value: &str) -> u64 {
    u64::from_str_radix(first(value).trim_start_matches("0x"), 16).unwrap_or(0)
}

/// (imsi, msisdn, imei, apn, ue_ip, teid_up, teid_down), empty strings for absent values.
type SessionKey = (String, String, String, String, String, u64, u64);

fn expected_v1(rows: &[Row]) -> Vec<SessionKey> {
    let mut requests: BTreeMap<(String, String, String), &Row> = BTreeMap::new();
    let mut sessions = Vec::new();
    for row in rows {
        let (src, dst, seq) = (field(row, "ip.src"), field(row, "ip.dst"), field(row, "gtp.seq_number"));
        match field(row, "gtp.message") {
            "0x10" => {
                requests.insert((src.into(), dst.into(), seq.into()), row);
            }
            "0x11" if first(field(row, "gtp.cause")) == "128" => {
                let Some(request) = requests.remove(&(dst.into(), src.into(), seq.into())) else { continue };
                let mut imsi = field(request, "e212.imsi").to_string();
                if imsi.is_empty() && field(request, "gtp.tid").len() >= 15 {
                    imsi = field(request, "gtp.tid")[..15].to_string(); // GTPv0: IMSI in the TID
                }
                let ue = if field(row, "gtp.user_ipv4").is_empty() {
                    field(row, "gtp.user_ipv6")
                } else {
                    field(row, "gtp.user_ipv4")
                };
                sessions.push((
                    imsi,
                    first(field(request, "e164.msisdn")).to_string(),
                    field(request, "gtp.ext_imeisv").to_string(),
                    field(request, "gtp.apn").to_string(),
                    first(ue).to_string(),
                    hex(field(row, "gtp.teid_data")),
                    hex(field(request, "gtp.teid_data")),
                ));
            }
            _ => {}
        }
    }
    sessions
}

/// F-TEIDs of a GTPv2 row as (interface type, key).
fn fteids(row: &Row) -> Vec<(u8, u64)> {
    let types = field(row, "gtpv2.f_teid_interface_type").split(';');
    let keys = field(row, "gtpv2.f_teid_gre_key").split(';');
    types.zip(keys).filter_map(|(t, k)| Some((t.parse().ok()?, hex(k)))).collect()
}

fn pick(fteids: &[(u8, u64)], preference: &[u8]) -> u64 {
    preference.iter().find_map(|p| fteids.iter().find(|(t, _)| t == p).map(|(_, k)| *k)).unwrap_or(0)
}

fn expected_v2(rows: &[Row]) -> Vec<SessionKey> {
    let mut requests: BTreeMap<(String, String, String), &Row> = BTreeMap::new();
    let mut sessions = Vec::new();
    for row in rows {
        let (src, dst, seq) = (field(row, "ip.src"), field(row, "ip.dst"), field(row, "gtpv2.seq"));
        match field(row, "gtpv2.message_type") {
            "32" => {
                requests.insert((src.into(), dst.into(), seq.into()), row);
            }
            "33" if first(field(row, "gtpv2.cause")) == "16" => {
                let Some(request) = requests.remove(&(dst.into(), src.into(), seq.into())) else { continue };
                let ue = first(field(row, "gtpv2.pdn_addr_and_prefix.ipv4"));
                sessions.push((
                    field(request, "e212.imsi").to_string(),
                    field(request, "e164.msisdn").to_string(),
                    field(request, "gtpv2.mei").to_string(),
                    field(request, "gtpv2.apn").to_string(),
                    ue.to_string(),
                    // Uplink receivers: S1-U SGW, S4 SGW, S12 SGW, S5/S8 PGW (TS 29.274 table 8.22-1).
                    pick(&fteids(row), &[1, 16, 3, 5]),
                    // Downlink receivers: S1-U eNodeB, S4 SGSN, S12 RNC, S5/S8 SGW.
                    pick(&fteids(request), &[0, 15, 2, 4]),
                ));
            }
            _ => {}
        }
    }
    sessions
}

fn text(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or("").to_string()
}

#[test]
fn sessions_equal_wiresharks_and_nothing_crashes() {
    let Some(dir) = shared_pcaps() else { return };
    let truth_dir = dir.join("../ground-truth/out");
    let mut captures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("pcap" | "pcapng")))
        .collect();
    captures.sort();
    assert!(captures.len() >= 10, "expected the shared captures in {}", dir.display());
    let mut compared_sessions = 0;
    for capture in &captures {
        let name = capture.file_name().unwrap().to_str().unwrap();
        let (events, summary, code) = replay(&[capture]);
        assert_eq!(code, 0, "{name}: replay failed:\n{summary}");
        assert!(summary.contains("packets "), "{name}: no summary:\n{summary}");
        let mut expected = expected_v1(&read_tsv(&truth_dir.join(format!("{name}.gtpc_v1.tsv"))));
        expected.extend(expected_v2(&read_tsv(&truth_dir.join(format!("{name}.gtpc_v2.tsv")))));
        let actual: Vec<SessionKey> = of_kind(&events, "session_up")
            .iter()
            .map(|e| {
                (
                    text(&e["imsi"]),
                    text(&e["msisdn"]),
                    text(&e["imei"]),
                    text(&e["apn"]),
                    text(&e["ue_ip"]),
                    e["teid_up"].as_u64().unwrap(),
                    e["teid_down"].as_u64().unwrap(),
                )
            })
            .collect();
        let as_set = |v: &[SessionKey]| v.iter().cloned().collect::<BTreeSet<_>>();
        assert_eq!(as_set(&actual), as_set(&expected), "{name}: sessions differ from Wireshark's");
        assert_eq!(actual.len(), expected.len(), "{name}");
        compared_sessions += expected.len();
    }
    assert!(compared_sessions >= 6, "only {compared_sessions} sessions compared");
}

#[test]
fn malformed_and_false_captures_count_their_drops() {
    let Some(dir) = shared_pcaps() else { return };
    let (_, summary, code) = replay(&[&dir.join("zeek+zeek__gtp3_false_gtp.pcap")]);
    assert_eq!(code, 0);
    assert!(summary.contains("drops 1 "), "the one non-GTP datagram on 2152 is a counted drop:\n{summary}");
    let (_, summary, code) = replay(&[&dir.join("zeek+zeek__gtp9_unknown_or_too_short_payload.pcap")]);
    assert_eq!(code, 0);
    assert!(summary.contains("inner-ip-malformed="), "{summary}");
}

#[test]
fn fragmented_gn_user_plane_is_reassembled() {
    let Some(dir) = shared_pcaps() else { return };
    let (_, summary, code) = replay(&[&dir.join("zeek+zeek__gtp1_gn_normal_incl_fragmentation.pcap")]);
    assert_eq!(code, 0);
    // Wireshark counts 68 G-PDUs in this capture, 36 of them in fragmented outer packets.
    assert!(summary.contains("g-pdus 68 "), "{summary}");
}

/// Where and how each subscriber is attached (RAT type, User Location Information, Charging ID), as
/// Wireshark reads the Create exchange each session came from.
#[test]
fn attachment_fields_equal_wiresharks() {
    let Some(dir) = shared_pcaps() else { return };
    let mut compared = 0;
    for name in [
        "ntop+nDPI__gtp_c.pcap",
        "open5gs+open5gs__srsenb.pcapng",
        "zeek+zeek__gtp_create_pdp_ctx.pcap",
        "zeek+zeek__gtp_control_prime.pcap",
    ] {
        let capture = dir.join(name);
        let filter =
            "gtpv2.message_type == 32 || gtpv2.message_type == 33 || gtp.message == 0x10 || gtp.message == 0x11";
        let Some(rows) = tshark(&capture, filter, &ATTACHMENT_FIELDS) else { return };
        let (events, summary, code) = replay(&[&capture]);
        assert_eq!(code, 0, "{summary}");
        let charging_ids: Vec<u64> = rows
            .iter()
            .filter_map(|r| tshark_number(&r["gtpv2.charging_id"]).or(tshark_number(&r["gtp.chrg_id"])))
            .collect();
        for event in of_kind(&events, "session_up") {
            let imsi = event["imsi"].as_str().unwrap_or_default();
            let request = rows
                .iter()
                .find(|r| {
                    (r["gtpv2.message_type"] == "32" || r["gtp.message"] == "0x10")
                        && (r["e212.imsi"] == imsi || r["gtp.tid"].starts_with(imsi))
                })
                .unwrap_or_else(|| panic!("{name}: no Create request for IMSI {imsi} in Wireshark's view"));
            let differences = attachment_differences(event, request);
            assert!(differences.is_empty(), "{name}, IMSI {imsi}: {differences:?}");
            match event["charging_id"].as_u64() {
                Some(id) => assert!(charging_ids.contains(&id), "{name}: charging id {id} not in {charging_ids:?}"),
                None => assert!(charging_ids.is_empty(), "{name}: Wireshark has charging ids {charging_ids:?}"),
            }
            compared += 1;
        }
    }
    assert!(compared >= 5, "only {compared} sessions compared");
}
