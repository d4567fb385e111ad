//! Bytes from the wire never panic or hang the probe: every frame of generated captures, mutated in
//! seeded random ways (bit flips, truncation, splices), goes through the same decode and correlate
//! path as `gtpcharge replay`. The test asserts that the run completes and that damage is counted.
mod common;

use common::XorShift;
use gtpcharge_capture::{Decoder, DecoderConfig};
use gtpcharge_correlate::reason::DropReason;
use gtpcharge_correlate::{Config, Correlator, Datagram};
use gtpcharge_pcapgen::{generate, Scenario};

#[test]
fn mutated_frames_never_panic_and_are_counted() {
    let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
    generate(
        &Scenario {
            seed: 99,
            subscribers: 30,
            traffic_rounds: 2,
            background_per_round: 1,
            edge_cases: true,
            tokens: Vec::new(),
        },
        &mut frames,
    );
    let mut rng = XorShift(0x5eed);
    let mut decoder = Decoder::new(&DecoderConfig::default());
    // Small tables so the limits and their counters are exercised too.
    let config = Config { sessions_max: 16, flows_max: 32, pending_max: 8, ..Config::default() };
    let mut correlator = Correlator::new(config);
    let mut events = Vec::new();
    let mut decoded = 0u64;
    for round in 0..40 {
        for (ts, frame) in &frames {
            let mut bytes = frame.clone();
            match rng.below(4) {
                0 => {
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(bytes.len());
                        bytes[at] ^= 1 << rng.below(8);
                    }
                }
                1 => bytes.truncate(rng.below(bytes.len() + 1)),
                2 => {
                    // Overwrite a run with bytes from another frame (a GTP header where an IE was ...).
                    let other = &frames[rng.below(frames.len())].1;
                    let at = rng.below(bytes.len());
                    let from = rng.below(other.len());
                    let len = rng.below(32).min(bytes.len() - at).min(other.len() - from);
                    bytes[at..at + len].copy_from_slice(&other[from..from + len]);
                }
                _ => {}
            }
            if let Ok(Some(udp)) = decoder.decode(1, ts + round, &bytes) {
                decoded += 1;
                let datagram = Datagram {
                    ts_us: ts + round,
                    frame: 0,
                    source: udp.source,
                    destination: udp.destination,
                    payload: udp.payload,
                };
                correlator.on_datagram(&datagram, &mut events);
            }
            events.clear();
        }
    }
    let stats = correlator.stats();
    assert!(decoded > 10_000, "too few frames reached the correlator: {decoded}");
    assert!(stats.drops.total() > 1_000, "damage must be counted: {:?}", stats.drops);
    assert!(stats.drops.get(DropReason::GtpcUnknownTvIe) > 0 || stats.drops.get(DropReason::GtpTruncated) > 0);
    assert!(correlator.sessions().len() <= 16, "sessions_max is a hard bound");
    assert!(correlator.flows_len() <= 32, "flows_max is a hard bound");
    assert!(correlator.pending_len() <= 8, "pending_max is a hard bound");
}

#[test]
fn random_datagrams_on_every_gtp_port_never_panic() {
    let mut rng = XorShift(42);
    let mut correlator = Correlator::new(Config::default());
    let mut events = Vec::new();
    let mut payload = vec![0u8; 2048];
    for i in 0..200_000u64 {
        let len = rng.below(payload.len());
        for byte in payload.iter_mut().take(len) {
            *byte = rng.next() as u8;
        }
        // Make some look like GTP so the parsers get past the first byte.
        if len > 0 && i % 2 == 0 {
            payload[0] = [0x30, 0x32, 0x48, 0x1E, 0x34][rng.below(5)];
        }
        let port = [2123u16, 2152, 3386][rng.below(3)];
        let datagram = Datagram {
            ts_us: i,
            frame: 0,
            source: ([10, 0, 0, 1], 2152).into(),
            destination: ([10, 0, 0, 2], port).into(),
            payload: &payload[..len],
        };
        correlator.on_datagram(&datagram, &mut events);
        events.clear();
    }
    assert_eq!(correlator.stats().datagrams, 200_000);
}
