//! `--workers N`: the shards' events and counters are one thread's, for every N from 1 to 8, on
//! generated captures (one damaged as a mirror damages a link, one long enough for idle sessions to time out while others carry traffic, with
//! tunnels ended under live traffic) and on the public captures in `GTPCHARGE_SHARED_PCAPS`.
mod common;

use common::{gtpcharge, XorShift};
use gtpcharge_pcapgen::{generate, FrameSink, PcapFile, Scenario};
use std::path::{Path, PathBuf};

fn scenario(seed: u64, subscribers: u32, rounds: u32) -> Scenario {
    Scenario {
        seed,
        subscribers,
        traffic_rounds: rounds,
        background_per_round: 3,
        edge_cases: true,
        tokens: Vec::new(),
    }
}

/// Three generated captures laid over each other, the second and third starting 100 s and 170 s after
/// the first, frames in time order: about four minutes of packet time in which sessions overlap, so the
/// minute's idle sweeps fall while some sessions carry traffic and others have gone quiet.
fn overlaid(dir: &Path) -> PathBuf {
    let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
    for (seed, subscribers, rounds, shift_s) in [(21, 400, 6, 0u64), (22, 300, 4, 100), (23, 200, 3, 170)] {
        let mut part: Vec<(u64, Vec<u8>)> = Vec::new();
        generate(&scenario(seed, subscribers, rounds), &mut part);
        frames.extend(part.into_iter().map(|(ts, data)| (ts + shift_s * 1_000_000, data)));
    }
    frames.sort_by_key(|(ts, _)| *ts);
    let path = dir.join("overlaid.pcap");
    let mut file = PcapFile::create(&path).unwrap();
    for (ts, data) in &frames {
        file.frame(*ts, data);
    }
    file.finish().unwrap();
    path
}

fn generate_frames(seed: u64, subscribers: u32, rounds: u32) -> Vec<(u64, Vec<u8>)> {
    let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
    generate(&scenario(seed, subscribers, rounds), &mut frames);
    frames
}

/// Damage as a mirror does it, fixed by a seed: of every 100 frames about 4 are lost, 4 swapped with the
/// next (their times kept, so time goes backwards), 3 sent again 50 frames later and 2 cut to a
/// random length.
fn damage(frames: Vec<(u64, Vec<u8>)>) -> Vec<(u64, Vec<u8>)> {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let mut out: Vec<(u64, Vec<u8>)> = Vec::with_capacity(frames.len());
    let mut again: Vec<(usize, (u64, Vec<u8>))> = Vec::new();
    for (index, mut frame) in frames.into_iter().enumerate() {
        while again.first().is_some_and(|(at, _)| *at <= index) {
            out.push(again.remove(0).1);
        }
        match rng.below(100) {
            0..=3 => continue,
            4..=7 if !out.is_empty() => {
                let last = out.len() - 1;
                out.insert(last, frame);
                continue;
            }
            8..=10 => again.push((index + 50, frame.clone())),
            11..=12 => {
                let keep = rng.below(frame.1.len());
                frame.1.truncate(keep.max(1));
            }
            _ => {}
        }
        out.push(frame);
    }
    out.extend(again.into_iter().map(|(_, frame)| frame));
    out
}

/// The summary without the line of timings.
fn summary(output: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| !l.starts_with("packets ") && !l.contains(" INFO "))
        .map(str::to_owned)
        .collect()
}

/// Replays `file` with `flags` on one thread, then on N shards for each N: the same events in the same
/// order, the same counters. Returns one thread's events.
fn same_for_every_n(file: &Path, flags: &[&str], counts: impl IntoIterator<Item = u16>) -> String {
    let file = file.to_str().unwrap();
    let run = |threads: &[&str]| {
        let mut args = vec!["replay", "--emit", "jsonl"];
        args.extend(threads);
        args.extend(flags);
        args.push(file);
        let output = gtpcharge(&args);
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        output
    };
    let one = run(&["--single-thread"]);
    for n in counts {
        let n = n.to_string();
        let sharded = run(&["--workers", &n]);
        assert!(sharded.stdout == one.stdout, "{file} {flags:?} --workers {n}: the events differ from one thread's");
        assert_eq!(summary(&sharded), summary(&one), "{file} {flags:?} --workers {n}: the counters differ");
    }
    String::from_utf8(one.stdout).unwrap()
}

#[test]
fn shards_give_one_threads_events_on_generated_captures() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.pcap");
    same_for_every_n(&sample, &[], 1..=8);
    let plain = dir.path().join("plain.pcap");
    let mut file = PcapFile::create(&plain).unwrap();
    generate(&scenario(77, 300, 3), &mut file);
    file.finish().unwrap();
    let events = same_for_every_n(&plain, &[], 1..=8);
    assert!(events.contains("\"event\":\"sighting\""), "the capture carries sightings");

    // Every frame twice, as a mirror that copies a link twice delivers it: tokens in DNS queries come again
    // and only the dedupe after the shards' merge keeps them from being reported twice.
    let frames = generate_frames(78, 200, 3);
    let doubled = dir.path().join("doubled.pcap");
    let mut file = PcapFile::create(&doubled).unwrap();
    for (ts, data) in &frames {
        file.frame(*ts, data);
        file.frame(*ts, data);
    }
    file.finish().unwrap();
    same_for_every_n(&doubled, &[], [2, 3, 8]);
    let one = gtpcharge(&["replay", "--single-thread", doubled.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&one.stderr).contains("sighting-duplicate="), "repeats were suppressed");

    // A damaged link: frames lost, swapped with their neighbour (time going backwards), repeated
    // later (a retransmission), cut short. The dispatcher's clock and the shards' sweeps must still
    // give each shard the moment one thread would have had.
    let damaged = dir.path().join("damaged.pcap");
    let mut file = PcapFile::create(&damaged).unwrap();
    let frames = damage(generate_frames(79, 250, 3));
    frames.iter().for_each(|(ts, data)| file.frame(*ts, data));
    file.finish().unwrap();
    let events = same_for_every_n(&damaged, &["--session-idle-timeout-s", "30"], [2, 3, 8]);
    assert!(events.contains("\"event\":\"sighting\""), "the damaged capture still carries sightings");
    let one = gtpcharge(&["replay", "--single-thread", damaged.to_str().unwrap()]);
    let one = String::from_utf8_lossy(&one.stderr);
    for mark in ["gtpc-response-without-request=", "ip-malformed=", "sighting-duplicate="] {
        assert!(one.contains(mark), "the damage shows ({mark}):\n{one}");
    }

    let long = overlaid(dir.path());
    // Idle sessions time out every minute of packet time; the shards must agree on which.
    let events = same_for_every_n(&long, &["--session-idle-timeout-s", "30"], 1..=8);
    let idle = events.matches("\"reason\":\"idle-timeout\"").count();
    assert!(idle > 50, "sessions timed out while others carried traffic ({idle})");
    assert!(events.contains("\"event\":\"sighting\""));
    // The UE-address fallback reads the tombstones of ended tunnels, which every shard keeps alike.
    let events = same_for_every_n(&long, &["--session-idle-timeout-s", "61", "--attribute-by-ue-ip"], [2, 3, 5, 8]);
    assert!(events.contains("\"reason\":\"ended-tunnel\""), "tokens on ended tunnels");
}

#[test]
fn shards_give_one_threads_events_on_public_captures() {
    let Some(dir) = std::env::var_os("GTPCHARGE_SHARED_PCAPS") else {
        common::not_run("SHARDS ON PUBLIC CAPTURES", "GTPCHARGE_SHARED_PCAPS is not set (.ci/test sets it)");
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the public captures are in {}", Path::new(&dir).display());
    let mut events = 0;
    for file in &files {
        events += same_for_every_n(file, &[], 1..=8).lines().count();
    }
    assert!(events > 0, "the public captures give events");
}

#[test]
fn more_than_one_worker_with_the_evidence_store_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.pcap");
    let evidence = dir.path().join("evidence");
    let output = gtpcharge(&[
        "replay",
        "--workers",
        "2",
        "--evidence-dir",
        evidence.to_str().unwrap(),
        sample.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--evidence-dir needs one correlating thread"), "{stderr}");
    let output = gtpcharge(&["replay", "--workers", "0", sample.to_str().unwrap()]);
    assert!(!output.status.success(), "no workers at all is refused");
}
