//! The probe's per-packet work: frames → decode → correlate → events, with the counters the summary and
//! the metrics show. `frame` does it all; with the pipeline (`pipeline.rs`) the reader thread only
//! copies frames and `batch` runs `frame` on each. With `--workers N` (N > 1) this thread decodes and
//! dispatches, and N shard threads correlate (`shards.rs`); their events come back in capture order.
use crate::shards::{Shards, ROUNDS_IN_FLIGHT};
use gtpcharge_capture::{Decoder, DecoderConfig, Frame, Undecoded};
use gtpcharge_correlate::reason::Counts;
use gtpcharge_correlate::{Config, Correlator, Datagram, Event, Stats};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Instant;
use strum::EnumCount;

pub struct Probe {
    decoder: Decoder,
    /// Correlates on this thread; unused with shards.
    correlator: Correlator,
    /// With `--workers N` (N > 1): the shards that correlate instead.
    shards: Option<Box<Shards>>,
    /// The evidence store, with `--evidence-dir`.
    pub evidence: Option<crate::evidence::Evidence>,
    events: Vec<Event>,
    pub packets: u64,
    pub bytes: u64,
    pub fragments_held: u64,
    /// Frames that did not decode to a datagram, by reason (the correlator counts the rest).
    undecoded: Counts<Undecoded, { Undecoded::COUNT }>,
    pub started: Instant,
}

impl Probe {
    pub fn new(config: Config, decoder: DecoderConfig) -> Probe {
        Probe {
            decoder: Decoder::new(&decoder),
            correlator: Correlator::new(config),
            shards: None,
            evidence: None,
            events: Vec::with_capacity(64),
            packets: 0,
            bytes: 0,
            fragments_held: 0,
            undecoded: Counts::default(),
            started: Instant::now(),
        }
    }

    /// The same probe, correlating on `workers` shard threads (more than one; see `shards.rs`). The
    /// evidence store needs one correlating thread (it tags sessions as their events pass).
    pub fn sharded(config: Config, decoder: DecoderConfig, workers: usize) -> std::io::Result<Probe> {
        let shards = Shards::start(&config, workers)?;
        let mut probe = Probe::new(config, decoder);
        probe.shards = Some(Box::new(shards));
        Ok(probe)
    }

    /// How many threads correlate.
    pub fn workers(&self) -> usize {
        self.shards.as_ref().map_or(1, |shards| shards.count())
    }

    /// The correlators' counters (with shards: added up, see `Shards::stats`).
    pub fn stats(&self) -> Cow<'_, Stats> {
        match &self.shards {
            None => Cow::Borrowed(self.correlator.stats()),
            Some(shards) => Cow::Owned(shards.stats()),
        }
    }

    /// The latest packet time correlated (dispatched, with shards).
    pub fn now_us(&self) -> u64 {
        self.shards.as_ref().map_or(self.correlator.now_us(), |shards| shards.now_us())
    }

    pub fn sessions_live(&self) -> usize {
        self.shards.as_ref().map_or(self.correlator.sessions().len(), |shards| shards.sessions_live())
    }

    /// Whether any GTP-C was seen (a signalling probe, for the cluster).
    pub fn sees_signalling(&self) -> bool {
        !self.stats().gtpc_messages.is_empty()
    }

    /// With shards: every event of what was dispatched so far, to `emit` (a tick, a quiet link).
    pub fn drain(&mut self, mut emit: impl FnMut(&Event)) {
        if let Some(shards) = &mut self.shards {
            shards.flush(0, &mut emit);
        }
    }

    /// With shards: the last events, then the shards stopped (their counters final).
    pub fn finish(&mut self, mut emit: impl FnMut(&Event)) {
        if let Some(shards) = &mut self.shards {
            shards.finish(&mut emit);
        }
    }

    /// Processes one frame; hands each resulting event to `emit`.
    pub fn frame(&mut self, frame: &Frame<'_>, mut emit: impl FnMut(&Event)) {
        if self.shards.is_some() {
            // Its events come out of `batch` or `drain` (the driver drains after each read).
            return self.dispatch(frame);
        }
        let ts_us = frame.ts_us;
        let number = self.count(frame);
        let decoded = self.decoder.decode_as(frame.linktype, ts_us, frame.data, |udp| Datagram {
            ts_us,
            frame: number,
            source: udp.source,
            destination: udp.destination,
            payload: udp.payload,
        });
        let mut tunnel = None;
        match &decoded {
            Ok(Some(datagram)) => {
                if let Some(evidence) = &mut self.evidence {
                    if self.correlator.carries_signalling(datagram) {
                        evidence.keep_signalling(number, frame);
                    } else {
                        tunnel = tunnel_of(datagram);
                        evidence.keep_user_plane(number, tunnel, frame);
                    }
                }
                self.correlator.on_datagram(datagram, &mut self.events)
            }
            Ok(None) if self.evidence.is_some() => {
                self.fragments_held += 1;
                if let Some(evidence) = &mut self.evidence {
                    evidence.keep_user_plane(number, None, frame);
                }
            }
            Ok(None) => self.fragments_held += 1,
            Err(reason) => self.undecoded.add(*reason),
        }
        self.count_fragment_timeouts();
        let Probe { events, evidence, correlator, .. } = self;
        for mut event in events.drain(..) {
            if let Some(evidence) = evidence {
                match &mut event {
                    Event::SessionUp(e) | Event::SessionUpdate(e) => {
                        if let Some(tag) = evidence.chain(e, e.reason == "created") {
                            correlator.set_evidence_tag(e.identity.session_id, tag);
                        }
                    }
                    Event::Sighting(s) => s.evidence = evidence.write(s, number, tunnel, frame),
                    _ => {}
                }
            }
            emit(&event);
        }
    }

    /// Processes a batch of frames copied by the reader thread, as `frame` would one by one (with
    /// shards, as one round).
    pub fn batch(&mut self, batch: &mut crate::pipeline::Batch, mut emit: impl FnMut(&Event)) {
        let Some(shards) = &mut self.shards else {
            for frame in batch.frames() {
                self.frame(&frame, &mut emit);
            }
            return;
        };
        // The shards read the payloads in the batch's bytes: they stay with the round, and the batch goes
        // back to the reader with other bytes.
        let spare = shards.spare_bytes();
        let bytes = shards.hold(batch.take_bytes(spare));
        for frame in batch.frames_in(&bytes) {
            self.dispatch(&frame);
        }
        // The round holds them now; once it is merged they are spare again (held here, they would not be).
        drop(bytes);
        if let Some(shards) = &mut self.shards {
            shards.flush(ROUNDS_IN_FLIGHT, &mut emit);
        }
    }

    /// With shards: decodes a frame here and dispatches its datagram (`frame`'s other half).
    fn dispatch(&mut self, frame: &Frame<'_>) {
        let (ts_us, number) = (frame.ts_us, self.count(frame));
        let Some(shards) = &mut self.shards else { return };
        let decoded = self.decoder.decode_as(frame.linktype, ts_us, frame.data, |udp| {
            shards.dispatch(&Datagram {
                ts_us,
                frame: number,
                source: udp.source,
                destination: udp.destination,
                payload: udp.payload,
            })
        });
        match decoded {
            Ok(Some(())) => {}
            Ok(None) => self.fragments_held += 1,
            Err(reason) => self.undecoded.add(reason),
        }
        self.count_fragment_timeouts();
    }

    /// Counts a frame read; its number (the frame's place in the capture, from 1).
    #[inline(always)]
    fn count(&mut self, frame: &Frame<'_>) -> u64 {
        self.packets += 1;
        self.bytes += u64::from(frame.wire_len);
        self.packets
    }

    /// The fragments the decoder gave up on (their datagram never completed), counted.
    #[inline(always)]
    fn count_fragment_timeouts(&mut self) {
        for _ in 0..self.decoder.take_fragment_timeouts() {
            self.undecoded.add(Undecoded::FragmentTimeout);
        }
    }

    /// Every drop by reason: the frames that did not decode and the datagrams the correlator dropped.
    pub fn drops(&self) -> BTreeMap<&'static str, u64> {
        let mut drops = self.stats().drops.by_name();
        for (reason, count) in self.undecoded.by_name() {
            *drops.entry(reason).or_default() += count;
        }
        drops
    }

    /// The Prometheus exposition of every counter (see `metrics.rs`).
    pub fn metrics(
        &self,
        delivery: Option<&crate::delivery::DeliveryStats>,
        libpcap: Option<gtpcharge_capture::source::LiveStats>,
    ) -> String {
        let stats = self.stats();
        let mut text = crate::metrics::Text::default();
        text.counter("gtpcharge_packets_total", "Frames read from libpcap.", self.packets);
        text.counter("gtpcharge_bytes_total", "Bytes on the wire of the frames read.", self.bytes);
        text.labelled(
            "gtpcharge_drops_total",
            "Frames not fully processed, by reason.",
            "reason",
            self.drops().into_iter().map(|(k, v)| (k.to_string(), v)),
        );
        text.labelled(
            "gtpcharge_notes_total",
            "Events worth counting that are not drops.",
            "what",
            stats.notes.nonzero().map(|(k, v)| (k.name().to_string(), v)),
        );
        text.labelled(
            "gtpcharge_gtpc_messages_total",
            "GTP-C messages by version and type.",
            "message",
            stats.gtpc_messages.iter().map(|((version, kind), v)| (format!("v{version}-{kind}"), *v)),
        );
        text.counter("gtpcharge_g_pdus_total", "G-PDUs seen.", stats.g_pdus);
        let (sessions, other) = self.decoder.mirror_sessions();
        text.labelled(
            "gtpcharge_mirror_frames_total",
            "Frames decoded out of a remote-mirror encapsulation, by its kind and session id.",
            "session",
            sessions
                .iter()
                .map(|((kind, id), count)| (format!("{}:{id}", kind.as_str()), *count))
                .chain((other > 0).then(|| ("others".to_string(), other))),
        );
        text.gauge("gtpcharge_sessions_live", "Live sessions in the table.", self.sessions_live() as u64);
        text.counter("gtpcharge_sessions_up_total", "Sessions set up.", stats.sessions_up);
        text.counter("gtpcharge_sessions_down_total", "Sessions ended.", stats.sessions_down);
        text.counter("gtpcharge_sightings_total", "Tokens attributed to a subscriber.", stats.sightings);
        text.counter("gtpcharge_unattributed_total", "Tokens no live session explains.", stats.unattributed);
        if let Some(evidence) = &self.evidence {
            let e = &evidence.stats;
            text.labelled(
                "gtpcharge_evidence_total",
                "Evidence store counters (--evidence-dir), by what.",
                "what",
                [
                    ("files-written", e.files_written),
                    ("files-removed-for-cap", e.files_removed),
                    ("signalling-frames", e.signalling_frames),
                    ("segments-rotated", e.signalling_segments_rotated),
                    ("signalling-expired", e.signalling_expired),
                    ("chain-expired", e.chain_expired),
                    ("linktype-mixed", e.linktype_mixed),
                    ("errors", e.errors),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
            );
        }
        if let Some(d) = delivery {
            text.counter("gtpcharge_deliveries_total", "Sightings answered by the billing API.", d.delivered);
            text.counter(
                "gtpcharge_delivery_failures_total",
                "Failed ReportSightings calls (retried).",
                d.send_failures,
            );
            text.gauge("gtpcharge_spool_batches", "Batches waiting in the spool.", d.spool_batches);
            text.gauge("gtpcharge_spool_bytes", "Bytes in the spool.", d.spool_bytes);
            text.counter("gtpcharge_spool_full_total", "Times the spool was full.", d.spool_full);
            text.labelled(
                "gtpcharge_charges_total",
                "Billing outcomes of delivered sightings.",
                "outcome",
                d.outcomes.iter().map(|(k, v)| (k.to_string(), *v)),
            );
        }
        if let Some(l) = libpcap {
            text.counter("gtpcharge_libpcap_received_total", "Packets libpcap received.", u64::from(l.received));
            text.counter(
                "gtpcharge_libpcap_dropped_total",
                "Packets libpcap dropped (buffer full).",
                u64::from(l.dropped),
            );
            text.counter(
                "gtpcharge_libpcap_interface_dropped_total",
                "Packets the interface dropped.",
                u64::from(l.interface_dropped),
            );
        }
        text.finish()
    }

    /// The human summary printed on stderr at the end.
    pub fn summary(&self) -> String {
        let stats = self.stats();
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "packets {}  bytes {}  elapsed {:.3}s  {:.0} packets/s  {:.3} Gbit/s",
            self.packets,
            self.bytes,
            elapsed,
            self.packets as f64 / elapsed,
            self.bytes as f64 * 8.0 / elapsed / 1e9
        ));
        let names: BTreeMap<String, u64> = stats
            .gtpc_messages
            .iter()
            .map(|((version, kind), count)| (format!("v{version} {}", message_name(*version, *kind)), *count))
            .collect();
        line(format!("gtp-c messages {}", join(&names)));
        line(format!("g-pdus {}  other gtp-u {}", stats.g_pdus, stats.gtpu_messages.values().sum::<u64>()));
        line(format!(
            "sessions up {}  updated {}  down {}  live at end {}",
            stats.sessions_up,
            stats.sessions_updated,
            stats.sessions_down,
            self.sessions_live()
        ));
        line(format!("sightings {}  unattributed {}", stats.sightings, stats.unattributed));
        let (sessions, other) = self.decoder.mirror_sessions();
        if !sessions.is_empty() {
            let mut by_session: BTreeMap<String, u64> =
                sessions.iter().map(|((kind, id), count)| (format!("{}:{id}", kind.as_str()), *count)).collect();
            if other > 0 {
                by_session.insert("others".into(), other);
            }
            line(format!("mirror sessions {}", join(&by_session)));
        }
        let drops = self.drops();
        line(format!("drops {} {}", drops.values().sum::<u64>(), join(&drops)));
        line(format!("notes {}", join(&stats.notes.by_name())));
        out
    }
}

/// The tunnel (destination address, TEID) of a GTPv1-U datagram, for gathering evidence.
fn tunnel_of(datagram: &Datagram<'_>) -> crate::evidence::TunnelOf {
    let header = gtpcharge_correlate::wire::gtpv1::Header::parse(datagram.payload).ok()?;
    Some((datagram.destination.ip(), header.teid))
}

fn join<K: std::fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    if map.is_empty() {
        return "(none)".into();
    }
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("[{}]", parts.join(" "))
}

fn message_name(version: u8, kind: u8) -> String {
    let name = match (version, kind) {
        (0 | 1, 1) | (2, 1) => "echo-request",
        (0 | 1, 2) | (2, 2) => "echo-response",
        (0 | 1, 16) => "create-pdp-request",
        (0 | 1, 17) => "create-pdp-response",
        (0 | 1, 18) => "update-pdp-request",
        (0 | 1, 19) => "update-pdp-response",
        (0 | 1, 20) => "delete-pdp-request",
        (0 | 1, 21) => "delete-pdp-response",
        (0 | 1, 26) => "error-indication",
        (0, 255) => "g-pdu",
        (2, 32) => "create-session-request",
        (2, 33) => "create-session-response",
        (2, 34) => "modify-bearer-request",
        (2, 35) => "modify-bearer-response",
        (2, 36) => "delete-session-request",
        (2, 37) => "delete-session-response",
        _ => return format!("type-{kind}"),
    };
    name.into()
}
