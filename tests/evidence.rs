//! Evidence for every charge (`--evidence-dir`): one pcap per sighting that Wireshark opens, holding the
//! signalling that created (and last updated) the session and the packets that carried the token; files
//! private whatever the umask; `gtpcharge explain` proves each charge again from the packets alone; the
//! directory stays under its cap.
mod common;

use common::{attachment_differences, of_kind, tshark, ATTACHMENT_FIELDS};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn sample() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.pcap")
}

/// Replays the sample under umask 000 with an evidence directory; returns the events and the summary.
fn replay_with_evidence(dir: &Path, extra: &[&str]) -> (Vec<Value>, String) {
    let mut command = format!(
        "umask 000; exec '{}' replay --emit jsonl --evidence-dir '{}' '{}'",
        env!("CARGO_BIN_EXE_gtpcharge"),
        dir.display(),
        sample().display()
    );
    for arg in extra {
        command.push_str(&format!(" '{arg}'"));
    }
    let output = Command::new("sh").args(["-c", &command]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    let events = String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (events, stderr)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn every_sighting_has_private_evidence_that_proves_it() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("evidence");
    let (events, summary) = replay_with_evidence(&dir, &[]);
    let sightings = of_kind(&events, "sighting");
    assert_eq!(sightings.len(), 34, "{summary}");
    assert!(summary.contains("evidence files 34 "), "{summary}");
    assert_eq!(mode(&dir), 0o700, "the evidence directory is owner-only under umask 000");
    for sighting in &sightings {
        let name = sighting["evidence"].as_str().unwrap_or_else(|| panic!("no evidence in {sighting}"));
        let pcap = dir.join(name);
        assert_eq!(mode(&pcap), 0o600, "{name}");
        assert_eq!(mode(&pcap.with_extension("json")), 0o600, "{name}");
        let output = common::gtpcharge(&["explain", pcap.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{name} does not prove its charge:\n{text}");
        let msisdn = sighting["msisdn"].as_str().unwrap();
        assert!(text.contains(&format!("attributed to MSISDN {msisdn}")), "{text}");
        assert!(text.contains("create-request") && text.contains("create-response"), "{text}");
    }
    for entry in std::fs::read_dir(dir.join(".work")).unwrap() {
        assert_eq!(mode(&entry.unwrap().path()), 0o600, "the signalling store is owner-only");
    }
}

/// Wireshark opens each evidence file; the Create request in it names the sighting's IMSI, and its User
/// Location Information is the one the session event reported.
#[test]
fn wireshark_reads_the_evidence_as_the_probe_did() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("evidence");
    let (events, _) = replay_with_evidence(&dir, &[]);
    let ups = of_kind(&events, "session_up");
    let mut checked = 0;
    for sighting in of_kind(&events, "sighting") {
        let pcap = dir.join(sighting["evidence"].as_str().unwrap());
        let filter = "gtpv2.message_type == 32 || gtp.message == 0x10";
        let Some(requests) = tshark(&pcap, filter, &ATTACHMENT_FIELDS) else { return };
        let imsi = sighting["imsi"].as_str().unwrap();
        let request = requests.first().unwrap_or_else(|| panic!("{}: no Create request", pcap.display()));
        assert_eq!(request["e212.imsi"], imsi, "{}", pcap.display());
        let up = ups.iter().find(|u| u["imsi"] == imsi).unwrap();
        assert!(up["uli"].is_object(), "the sample's Create requests carry a ULI: {up}");
        let differences = attachment_differences(up, request);
        assert!(differences.is_empty(), "{}: {differences:?}", pcap.display());
        let tokens = tshark(&pcap, "gtp.message == 0xff", &["frame.number"]).unwrap();
        assert!(!tokens.is_empty(), "{}: no G-PDU", pcap.display());
        checked += 1;
    }
    assert_eq!(checked, 34);
}

/// The directory's cap holds: the oldest evidence goes first, counted and warned about.
#[test]
fn the_evidence_directory_stays_under_its_cap() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("evidence");
    let cap = 64 * 1024;
    let (_, summary) = replay_with_evidence(&dir, &["--evidence-max-bytes", &cap.to_string()]);
    let removed: u64 = summary
        .split("removed for the cap ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(removed > 0, "{summary}");
    let files: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(files <= cap / 2, "{files} bytes of evidence files against a cap of {}", cap / 2);
    assert!(summary.contains("over its size cap"), "a warning names the cap:\n{summary}");
}
