//! Stateful correlation over traffic as a mirror shows it. The generator writes a capture from the
//! fuzzer's seed (GTPv1 and GTPv2 Create, Update and Delete with GSN addresses true to the IP headers;
//! tokens in HTTP URLs, headers, split requests, DNS and TLS; the sample's edge cases), and the rest of
//! the input damages it as a mirror does: frames lost, duplicated, reordered, time jumps (hours, past the
//! idle timeout, so sessions expire), bytes flipped, frames cut. Every frame then goes through the
//! capture decoder and the correlator, so Update, Delete, attribution, sightings and idle expiry are
//! reached (`run-all.sh` reports their coverage).
//!
//! Checks besides "no panic": the pairing rule on every session (`shared/pairing.rs`); the tables within
//! their bounds; and, while no byte was changed, that no token is ever charged to anyone but the
//! subscriber who sent it, whatever was lost, repeated or reordered.
#![no_main]
use gtpcharge_capture::decode::linktype;
use gtpcharge_capture::{Decoder, DecoderConfig};
use gtpcharge_correlate::{Config, Correlator, Datagram, Event};
use gtpcharge_pcapgen::{generate, Scenario};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

#[path = "shared/pairing.rs"]
mod pairing;

/// Damage operations read from the input (4 bytes each), at most.
const OPS_MAX: usize = 48;
const HOUR_US: u64 = 3_600_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((head, ops)) = data.split_first_chunk::<10>() else { return };
    let [s0, s1, s2, s3, s4, s5, s6, s7, size, shape] = *head;
    let scenario = Scenario {
        seed: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
        subscribers: 4 + u32::from(size % 9),
        traffic_rounds: 1 + u32::from(shape & 3),
        background_per_round: u32::from(shape >> 2 & 1),
        edge_cases: shape & 0x08 != 0,
        tokens: Vec::new(),
    };
    let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
    let truth = generate(&scenario, &mut frames);
    let owner: HashMap<String, &str> = truth.sightings.iter().map(|(t, m)| (t.to_string(), m.as_str())).collect();
    let mut changed_bytes = false;
    for op in ops.chunks_exact(4).take(OPS_MAX) {
        let n = frames.len();
        if n < 2 {
            break;
        }
        let i = usize::from(u16::from_le_bytes([op[1], op[2]])) % n;
        let c = op[3];
        match op[0] % 6 {
            0 => drop(frames.remove(i)),
            1 => {
                let copy = frames[i].clone();
                frames.insert(i + 1, copy);
            }
            2 => frames.swap(i, (i + 1 + usize::from(c % 8)).min(n - 1)),
            3 => frames[i..].iter_mut().for_each(|f| f.0 += u64::from(c) * HOUR_US),
            4 => {
                let frame = &mut frames[i].1;
                let at = usize::from(c) * 7 % frame.len().max(1);
                if let Some(byte) = frame.get_mut(at) {
                    *byte ^= c | 1;
                    changed_bytes = true;
                }
            }
            _ => {
                frames[i].1.truncate(usize::from(c));
                changed_bytes = true;
            }
        }
    }

    let config = Config {
        sessions_max: 16,
        pending_max: 16,
        flows_max: 16,
        sighting_dedupe_max: 16,
        session_idle_timeout_s: 2 * 3600,
        ..Config::default()
    };
    let window_us = config.t3_response_ms * config.n3_requests * 1000;
    let mut correlator = Correlator::new(config);
    let mut decoder = Decoder::new(&DecoderConfig { fragments_max: 8, fragment_timeout_ms: 1000, ..DecoderConfig::default() });
    let mut sent: Vec<(u64, Vec<u8>)> = Vec::with_capacity(frames.len());
    let mut events = Vec::new();
    // The correlator's clock: time never goes back (a frame older than one before it counts at the
    // newest time seen), so the pairing window is checked on that clock.
    let mut clock = 0u64;
    for (index, (ts, frame)) in frames.iter().enumerate() {
        let number = index as u64 + 1;
        clock = clock.max(*ts);
        let Ok(Some(udp)) = decoder.decode(linktype::ETHERNET, *ts, frame) else {
            sent.push((clock, Vec::new()));
            continue;
        };
        sent.push((clock, udp.payload.to_vec()));
        let datagram = Datagram {
            ts_us: *ts,
            frame: number,
            source: udp.source,
            destination: udp.destination,
            payload: udp.payload,
        };
        correlator.on_datagram(&datagram, &mut events);
        for event in events.drain(..) {
            match event {
                Event::SessionUp(up) => pairing::check_pairing(&up, &sent, window_us),
                Event::Sighting(s) if !changed_bytes => {
                    let token = s.token.to_string();
                    if let Some(sender) = owner.get(&token) {
                        assert_eq!(s.identity.msisdn.to_string(), *sender, "token {token} charged to another subscriber");
                    }
                }
                _ => {}
            }
        }
        assert!(correlator.pending_len() <= 16 && correlator.sessions().len() <= 16);
    }
});
