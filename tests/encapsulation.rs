//! Remote mirrors: the same Gn/S5 traffic wrapped in ERSPAN (types I, II, III), VXLAN, Geneve and GRE
//! gives exactly the sightings and sessions of the plain frames; nesting is bounded; a malformed layer
//! is a counted drop; the mirror session is counted and can be filtered.
mod common;

use common::{gtpcharge, of_kind, replay};
use gtpcharge_pcapgen::encap::{wrap, Encapsulating, Encapsulation};
use gtpcharge_pcapgen::{generate, FrameSink, PcapFile, Scenario};
use serde_json::Value;
use std::path::{Path, PathBuf};

const KINDS: [(Encapsulation, &str); 6] = [
    (Encapsulation::Vxlan, "vxlan"),
    (Encapsulation::Geneve, "geneve"),
    (Encapsulation::Gre, "gre"),
    (Encapsulation::ErspanI, "erspan1"),
    (Encapsulation::ErspanII, "erspan2"),
    (Encapsulation::ErspanIII, "erspan3"),
];

fn write<S: FrameSink>(sink: &mut S) {
    generate(&Scenario::sample(), sink);
}

fn plain(dir: &Path) -> PathBuf {
    let path = dir.join("plain.pcap");
    let mut file = PcapFile::create(&path).unwrap();
    write(&mut file);
    file.finish().unwrap();
    path
}

fn wrapped(dir: &Path, kind: Encapsulation, name: &str, id: u32) -> PathBuf {
    let path = dir.join(format!("{name}-{id}.pcap"));
    let mut sink = Encapsulating::new(PcapFile::create(&path).unwrap(), kind, id);
    write(&mut sink);
    sink.inner.finish().unwrap();
    path
}

/// What charges and sessions a replay gives, without the fields that differ by run.
fn outcome(events: &[Value]) -> (Vec<(String, String)>, Vec<String>, usize) {
    let sightings = of_kind(events, "sighting")
        .iter()
        .map(|s| (s["token"].as_str().unwrap().to_string(), s["msisdn"].as_str().unwrap().to_string()))
        .collect();
    let sessions = of_kind(events, "session_up").iter().map(|s| s["imsi"].to_string()).collect();
    (sightings, sessions, of_kind(events, "unattributed").len())
}

#[test]
fn every_encapsulation_gives_the_plain_sightings() {
    let dir = tempfile::tempdir().unwrap();
    let (plain_events, _, code) = replay(&[&plain(dir.path())]);
    assert_eq!(code, 0);
    let expected = outcome(&plain_events);
    assert_eq!(expected.0.len(), 34);
    for (kind, name) in KINDS {
        let id = if kind == Encapsulation::ErspanI { 0 } else { 300 };
        let (events, summary, code) = replay(&[&wrapped(dir.path(), kind, name, id)]);
        assert_eq!(code, 0, "{name}: {summary}");
        assert_eq!(outcome(&events), expected, "{name}: {summary}");
        assert!(summary.contains(&format!("mirror sessions [{name}:{id}=")), "{name}: {summary}");
    }
}

#[test]
fn mirror_sessions_can_be_told_apart_and_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let a = wrapped(dir.path(), Encapsulation::ErspanII, "erspan2", 11);
    let b = wrapped(dir.path(), Encapsulation::Vxlan, "vxlan", 22);
    let (_, summary, _) = replay(&[&a, &b]);
    assert!(summary.contains("erspan2:11=") && summary.contains("vxlan:22="), "{summary}");
    let output =
        gtpcharge(&["replay", "--emit", "jsonl", "--mirror-id", "22", a.to_str().unwrap(), b.to_str().unwrap()]);
    let summary = String::from_utf8_lossy(&output.stderr);
    assert!(summary.contains("mirror-id-filtered="), "{summary}");
    assert!(!summary.contains("erspan2:11="), "{summary}");
    let sightings = String::from_utf8_lossy(&output.stdout).lines().filter(|l| l.contains("\"sighting\"")).count();
    assert_eq!(sightings, 34, "one copy of the traffic, from session 22 only");
}

/// Nested encapsulations unwrap up to the bound; malformed layers are counted drops, never guesses.
#[test]
fn nesting_is_bounded_and_malformed_layers_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
    write(&mut frames);
    // The first 20 frames twice wrapped (VXLAN in ERSPAN II): the same sessions as plain.
    let head = 20;
    let save = |name: &str, frames: &[(u64, Vec<u8>)]| {
        let path = dir.path().join(name);
        let mut file = PcapFile::create(&path).unwrap();
        for (ts, frame) in frames {
            file.frame(*ts, frame);
        }
        file.finish().unwrap();
        path
    };
    let (plain_events, _, _) = replay(&[&save("head.pcap", &frames[..head])]);
    let plain_sessions = of_kind(&plain_events, "session_up").len();
    assert!(plain_sessions > 0);
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    for (ts, frame) in frames.iter().take(head) {
        let inner = wrap(Encapsulation::Vxlan, 5, 1, frame);
        out.push((*ts, wrap(Encapsulation::ErspanII, 6, 1, &inner)));
    }
    let later = frames[head].0;
    // Five layers deep: refused.
    let mut deep = frames[head].1.clone();
    for _ in 0..5 {
        deep = wrap(Encapsulation::Vxlan, 1, 1, &deep);
    }
    out.push((later, deep));
    // VXLAN without the I flag; GRE version 1; ERSPAN II with a wrong version; Geneve version 1.
    let mut no_flag = wrap(Encapsulation::Vxlan, 1, 1, &frames[head].1);
    no_flag[42] = 0; // 14 Ethernet + 20 IPv4 + 8 UDP: the VXLAN flags
    out.push((later, no_flag));
    let mut gre_v1 = wrap(Encapsulation::Gre, 1, 1, &frames[head].1);
    gre_v1[35] = 1; // the GRE version
    out.push((later, gre_v1));
    let mut erspan_version = wrap(Encapsulation::ErspanII, 1, 1, &frames[head].1);
    erspan_version[42] = 0x30; // 14 + 20 + 8 GRE: the ERSPAN version nibble
    out.push((later, erspan_version));
    let mut geneve_version = wrap(Encapsulation::Geneve, 1, 1, &frames[head].1);
    geneve_version[42] = 0x40;
    out.push((later, geneve_version));
    let (events, summary, code) = replay(&[&save("odd.pcap", &out)]);
    assert_eq!(code, 0, "{summary}");
    assert_eq!(of_kind(&events, "session_up").len(), plain_sessions, "{summary}");
    assert!(summary.contains(&format!("erspan2:6={head}")), "the outermost session counts: {summary}");
    for reason in
        ["encap-too-deep=1", "vxlan-malformed=1", "gre-unsupported=1", "erspan-malformed=1", "geneve-malformed=1"]
    {
        assert!(summary.contains(reason), "{reason}: {summary}");
    }
}
