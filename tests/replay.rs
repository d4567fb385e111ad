//! The probe end to end on generated captures: the real binary replays a pcap written through libpcap
//! and its events are checked against the generator's truth (what the capture means), plus the
//! committed sample against its committed expected events (a snapshot).
mod common;

use common::{gtpcharge, of_kind, replay};
use gtpcharge_pcapgen::{generate, PcapFile, Scenario};
use std::collections::BTreeSet;
use std::path::Path;

fn write_capture(dir: &Path, scenario: &Scenario) -> (std::path::PathBuf, gtpcharge_pcapgen::Truth) {
    let path = dir.join(format!("gen-{}.pcap", scenario.seed));
    let mut file = PcapFile::create(&path).unwrap();
    let truth = generate(scenario, &mut file);
    file.finish().unwrap();
    (path, truth)
}

#[test]
fn every_token_is_attributed_to_the_subscriber_that_sent_it() {
    let dir = tempfile::tempdir().unwrap();
    for seed in [1, 2, 3] {
        let scenario = Scenario {
            seed,
            subscribers: 40,
            traffic_rounds: 3,
            background_per_round: 1,
            edge_cases: true,
            tokens: Vec::new(),
        };
        let (path, truth) = write_capture(dir.path(), &scenario);
        let (events, summary, code) = replay(&[&path]);
        assert_eq!(code, 0, "{summary}");
        let sightings: BTreeSet<(String, String)> = of_kind(&events, "sighting")
            .iter()
            .map(|e| (e["token"].as_str().unwrap().to_owned(), e["msisdn"].as_str().unwrap().to_owned()))
            .collect();
        let expected: BTreeSet<(String, String)> =
            truth.sightings.iter().map(|(t, m)| (t.to_string(), m.clone())).collect();
        assert_eq!(sightings, expected, "seed {seed}: sightings differ from the generator's truth");
        assert_eq!(of_kind(&events, "sighting").len(), expected.len(), "seed {seed}: a token was reported twice");
        let unattributed: BTreeSet<String> =
            of_kind(&events, "unattributed").iter().map(|e| e["token"].as_str().unwrap().to_owned()).collect();
        let expected_unattributed: BTreeSet<String> = truth.unattributed.iter().map(|t| t.to_string()).collect();
        assert_eq!(unattributed, expected_unattributed, "seed {seed}");
        let ups: Vec<&str> = of_kind(&events, "session_up").iter().map(|e| e["msisdn"].as_str().unwrap()).collect();
        assert_eq!(ups.len(), truth.sessions_up.len(), "seed {seed}");
        let deleted: Vec<&str> = of_kind(&events, "session_down")
            .iter()
            .filter(|e| e["reason"] == "deleted")
            .map(|e| e["msisdn"].as_str().unwrap())
            .collect();
        assert_eq!(deleted.len(), truth.sessions_down.len(), "seed {seed}");
        // Malformed packets are counted by reason, not lost silently.
        assert!(summary.contains("gtpc-unknown-tv-ie=1"), "{summary}");
        assert!(summary.contains("gtpu-zero-length-extension=1"), "{summary}");
    }
}

#[test]
fn replaying_two_files_in_a_row_is_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (a, truth_a) = write_capture(dir.path(), &Scenario { seed: 11, ..Scenario::sample() });
    let (events_one, _, _) = replay(&[&a]);
    let (events_two, summary, code) = replay(&[&a, &a]);
    assert_eq!(code, 0);
    // The second pass repeats sessions and tokens: tokens are suppressed as duplicates per subscriber.
    assert_eq!(of_kind(&events_two, "sighting").len(), truth_a.sightings.len(), "{summary}");
    assert!(of_kind(&events_two, "session_up").len() > of_kind(&events_one, "session_up").len());
}

#[test]
fn committed_sample_matches_its_expected_events() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sample = root.join("pcaps/sample.pcap");
    let expected = std::fs::read_to_string(root.join("pcaps/sample.expected.jsonl")).unwrap();
    let output = gtpcharge(&["replay", "--emit", "jsonl", sample.to_str().unwrap()]);
    assert!(output.status.success());
    let actual = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        actual, expected,
        "events changed; if intended, regenerate with: gtpcharge replay --emit jsonl pcaps/sample.pcap > pcaps/sample.expected.jsonl"
    );
}

#[test]
fn committed_sample_is_what_the_generator_writes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_capture(dir.path(), &Scenario::sample());
    assert_eq!(
        std::fs::read(path).unwrap(),
        std::fs::read(root.join("pcaps/sample.pcap")).unwrap(),
        "pcaps/sample.pcap is stale: regenerate with `gtpcharge generate --out pcaps/sample.pcap`"
    );
}

#[test]
fn unreadable_files_fail_with_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a capture\n").unwrap();
    let (good, _) = write_capture(dir.path(), &Scenario::sample());
    for bad in [text.clone(), dir.path().join("missing.pcap"), dir.path().to_path_buf()] {
        // The bad file comes second: nothing of the good first file may be written either.
        let output = gtpcharge(&["replay", "--emit", "jsonl", good.to_str().unwrap(), bad.to_str().unwrap()]);
        assert!(!output.status.success());
        assert!(output.stdout.is_empty(), "half-written output for {}", bad.display());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(bad.to_str().unwrap()), "{stderr}");
    }
}

#[test]
fn a_file_cut_short_keeps_what_was_read_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (good, _) = write_capture(dir.path(), &Scenario::sample());
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).unwrap();
    let (events, stderr, code) = replay(&[&cut]);
    assert_ne!(code, 0);
    assert!(stderr.contains("cut.pcap"), "{stderr}");
    assert!(!events.is_empty(), "events before the cut are kept");
}

#[test]
fn token_new_prints_valid_tokens() {
    let output = gtpcharge(&["token", "new", "-n", "5"]);
    assert!(output.status.success());
    let tokens: Vec<String> = String::from_utf8(output.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(tokens.len(), 5);
    assert_eq!(tokens.iter().collect::<BTreeSet<_>>().len(), 5);
    let mut args = vec!["token", "check"];
    args.extend(tokens.iter().map(String::as_str));
    assert!(gtpcharge(&args).status.success());
    let mut forged = tokens[0].clone().into_bytes();
    forged[10] = if forged[10] == b'a' { b'b' } else { b'a' };
    assert!(!gtpcharge(&["token", "check", std::str::from_utf8(&forged).unwrap()]).status.success());
}

#[test]
fn a_config_file_sets_flags_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (capture, truth) = write_capture(dir.path(), &Scenario::sample());
    let config = dir.path().join("gtpcharge.toml");
    std::fs::write(&config, "[probe]\nemit = \"jsonl\"\ngtpu_ports = [2152, 2153]\n").unwrap();
    let output = gtpcharge(&["--config", config.to_str().unwrap(), "replay", capture.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines = String::from_utf8(output.stdout).unwrap();
    assert_eq!(lines.lines().filter(|l| l.contains("\"sighting\"")).count(), truth.sightings.len());
    let output =
        gtpcharge(&["--config", config.to_str().unwrap(), "replay", "--emit", "none", capture.to_str().unwrap()]);
    assert!(output.stdout.is_empty(), "the command line overrides the file");
    std::fs::write(&config, "emit = [1.5]").unwrap();
    let output = gtpcharge(&["--config", config.to_str().unwrap(), "replay", capture.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("gtpcharge.toml"));
}

#[test]
fn logs_mask_subscriber_ids_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (capture, truth) = write_capture(dir.path(), &Scenario::sample());
    let msisdn = &truth.sightings[0].1;
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
            .env("RUST_LOG", "debug")
            .args(args)
            .output()
            .unwrap()
    };
    let masked = run(&["--log-format", "json", "replay", capture.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&masked.stderr);
    assert!(stderr.contains("\"sighting\""), "{stderr}");
    assert!(!stderr.contains(msisdn.as_str()), "an MSISDN in the logs: {stderr}");
    let shown = run(&["--log-subscriber-ids", "replay", capture.to_str().unwrap()]);
    let shown = String::from_utf8_lossy(&shown.stderr);
    assert!(shown.contains(msisdn.as_str()));
    // Text logs into a pipe (not a terminal) carry no colour codes.
    assert!(shown.contains("sighting"), "{shown}");
    assert!(!shown.contains('\x1b'), "escape codes in piped logs: {shown}");
}

#[test]
fn the_pipeline_and_the_single_thread_give_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let (capture, _) = write_capture(
        dir.path(),
        &Scenario {
            seed: 77,
            subscribers: 300,
            traffic_rounds: 3,
            background_per_round: 4,
            edge_cases: true,
            tokens: Vec::new(),
        },
    );
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.pcap");
    let summary = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| !l.starts_with("packets "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    for file in [capture.as_path(), sample.as_path()] {
        let single = gtpcharge(&["replay", "--emit", "jsonl", "--single-thread", file.to_str().unwrap()]);
        assert!(single.status.success());
        assert!(!single.stdout.is_empty());
        for handover in ["cached", "streaming"] {
            let piped =
                gtpcharge(&["replay", "--emit", "jsonl", "--pipeline", "--handover", handover, file.to_str().unwrap()]);
            assert!(piped.status.success(), "{handover}");
            assert_eq!(
                piped.stdout,
                single.stdout,
                "{}, {handover}: the events differ from one thread's",
                file.display()
            );
            assert_eq!(summary(&piped), summary(&single), "{handover}: the counters differ from one thread's");
        }
    }
}

#[test]
fn both_floors_count_every_frame_the_replay_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = write_capture(dir.path(), &Scenario { seed: 13, ..Scenario::sample() });
    let a = a.to_str().unwrap();
    // "packets N  bytes M" from a floor's or the replay's summary line.
    let counts = |stderr: &[u8], first: &str| -> (u64, u64) {
        let text = String::from_utf8_lossy(stderr).into_owned();
        let line = text.lines().find(|l| l.starts_with(first)).unwrap_or_else(|| panic!("no {first:?} line in {text}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |label: &str| words[words.iter().position(|w| *w == label).unwrap() + 1].parse().unwrap();
        (after("packets"), after("bytes"))
    };
    let replayed = gtpcharge(&["replay", a, a]);
    assert!(replayed.status.success());
    let (packets, bytes) = counts(&replayed.stderr, "packets ");
    assert!(packets > 100 && bytes > packets * 40, "{packets} packets, {bytes} bytes");
    let direct = gtpcharge(&["floor", a, a]);
    let piped = gtpcharge(&["floor", "--pipeline", a, a]);
    assert!(direct.status.success() && piped.status.success());
    assert_eq!(counts(&direct.stderr, "floor "), (packets, bytes));
    assert_eq!(counts(&piped.stderr, "floor-pipeline "), (packets, bytes));
}

/// A billing CA that cannot be read (or a URL that is not http/https) stops the probe before it reads
/// a packet, naming the problem: no sighting is taken that could then be neither delivered nor spooled.
#[test]
fn an_unreadable_billing_ca_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.pcap");
    let missing = dir.path().join("no-such-ca.pem");
    let spool = dir.path().join("spool");
    let output = gtpcharge(&[
        "replay",
        "--emit",
        "jsonl",
        "--billing-url",
        "https://127.0.0.1:1",
        "--probe-key",
        "key",
        "--billing-ca",
        missing.to_str().unwrap(),
        "--spool-dir",
        spool.to_str().unwrap(),
        sample.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("no-such-ca.pem"), "the error names the file: {stderr}");
    assert!(output.stdout.is_empty(), "packets were read before the start failed");
    // A URL the gRPC client cannot speak to is refused the same way.
    let output = gtpcharge(&[
        "replay",
        "--emit",
        "jsonl",
        "--billing-url",
        "ftp://127.0.0.1:1",
        "--probe-key",
        "key",
        "--spool-dir",
        spool.to_str().unwrap(),
        sample.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("http:// or https://"), "{stderr}");
    assert!(output.stdout.is_empty(), "packets were read before the start failed");
}

/// The billing API started with a TLS file it cannot read exits with an error naming the file.
#[test]
fn the_billing_api_names_a_tls_file_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("ledger.sqlite").display());
    let missing = dir.path().join("no-such-cert.pem");
    let key = dir.path().join("no-such-key.pem");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &database])
        .args(["--tls-cert", missing.to_str().unwrap(), "--tls-key", key.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must stop by itself; a server that kept running would be killed here and fail the test.
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("the billing API kept running without its TLS files");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("no-such-cert.pem"), "the error names the file: {stderr}");
}
