//! One probe run, shared by `replay` and `capture`: the frame loop's sinks (JSON lines on stdout,
//! delivery to the billing API, debug logs, metrics) and the end of the run (flush, summary, drain).
use crate::cluster::{Cluster, Verdict};
use crate::delivery::{Delivery, SightingRecord};
use crate::driver::LiveEnd;
use crate::metrics::Exposition;
use crate::probe::Probe;
use crate::{jsonl, logging, Emit, ProbeArgs};
use anyhow::{Context, Result};
use gtpcharge_capture::{Frame, LiveStats};
use gtpcharge_correlate::Event;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where events go: JSON lines on stdout, or nowhere.
struct EventOut {
    writer: Option<BufWriter<std::io::StdoutLock<'static>>>,
    error: Option<std::io::Error>,
}

impl EventOut {
    fn new(emit: Emit) -> EventOut {
        let writer = (emit == Emit::Jsonl).then(|| BufWriter::with_capacity(1 << 16, std::io::stdout().lock()));
        EventOut { writer, error: None }
    }

    fn write(&mut self, event: &Event) {
        if self.error.is_some() {
            return;
        }
        if let Some(writer) = &mut self.writer {
            if let Err(error) = writeln!(writer, "{}", jsonl::to_json(event)) {
                self.error = Some(error);
            }
        }
    }

    fn finish(mut self) -> Result<()> {
        if let Some(writer) = &mut self.writer {
            if let Err(error) = writer.flush() {
                self.error.get_or_insert(error);
            }
        }
        match self.error {
            // A closed pipe (`| head`) is the reader's choice, not a failure.
            Some(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Some(error) => Err(error).context("writing events to stdout"),
            None => Ok(()),
        }
    }
}

pub struct ProbeRun {
    pub probe: Probe,
    out: EventOut,
    delivery: Option<Delivery>,
    exposition: Option<Exposition>,
    published: Instant,
    /// Sightings of sessions without an MSISDN: they cannot be charged.
    skipped_no_msisdn: u64,
    spool_dir: PathBuf,
    drops: DropWatch,
    /// Sightings go to a billing API off the loopback in the clear (`--allow-plaintext`): said again in
    /// the summary.
    plaintext: bool,
    /// Live capture: how long each token waited between its packet's capture and its sighting.
    delays: Option<Delays>,
    /// `--cluster`: the shared session view, and the tokens held for it.
    cluster: Option<Cluster>,
}

/// Warns, at most every 10 s, when libpcap's or the interface's drop counter grew during the run.
#[derive(Default)]
struct DropWatch {
    last: (u32, u32),
    warned: Option<Instant>,
    unreported: (u32, u32),
}

impl DropWatch {
    fn observe(&mut self, stats: LiveStats) {
        let grown = (stats.dropped.wrapping_sub(self.last.0), stats.interface_dropped.wrapping_sub(self.last.1));
        self.last = (stats.dropped, stats.interface_dropped);
        self.unreported = (self.unreported.0.saturating_add(grown.0), self.unreported.1.saturating_add(grown.1));
        if self.unreported == (0, 0) || self.warned.is_some_and(|at| at.elapsed() < Duration::from_secs(10)) {
            return;
        }
        tracing::warn!(
            libpcap_dropped = self.unreported.0,
            interface_dropped = self.unreported.1,
            libpcap_dropped_total = stats.dropped,
            interface_dropped_total = stats.interface_dropped,
            "packets are being dropped before the probe reads them: raise --buffer-size first (the kernel \
             ring), then look at the probe's CPU (--single-thread off, fewer --evidence-dir writes)"
        );
        self.warned = Some(Instant::now());
        self.unreported = (0, 0);
    }
}

/// Delays from a token packet's capture time to its sighting, bounded.
struct Delays {
    us: Vec<u64>,
    beyond: u64,
}

const DELAYS_MAX: usize = 1 << 20;

impl Delays {
    fn record(&mut self, ts_us: u64) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
        let delay = u64::try_from(now).unwrap_or(u64::MAX).saturating_sub(ts_us);
        if self.us.len() < DELAYS_MAX {
            self.us.push(delay);
        } else {
            self.beyond += 1;
        }
    }

    fn summary(&mut self) -> Option<String> {
        if self.us.is_empty() {
            return None;
        }
        self.us.sort_unstable();
        let at = |q: f64| self.us.get(((self.us.len() - 1) as f64 * q).round() as usize).copied().unwrap_or(0);
        Some(format!(
            "sighting delay (capture to sighting) p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} sightings{})",
            at(0.5) as f64 / 1000.0,
            at(0.99) as f64 / 1000.0,
            at(1.0) as f64 / 1000.0,
            self.us.len(),
            if self.beyond > 0 { format!(", {} more not measured", self.beyond) } else { String::new() }
        ))
    }
}

impl ProbeRun {
    pub fn start(args: &ProbeArgs) -> Result<ProbeRun> {
        // Every replica must pass the plaintext rule.
        let mut plaintext = false;
        for url in args.billing_urls() {
            plaintext |= crate::secrets::check_client_url(&url, args.allow_plaintext)?;
        }
        let probe = args.probe()?;
        if probe.workers() > 1 {
            tracing::info!(workers = probe.workers(), "correlating on shards (--workers)");
        }
        Ok(ProbeRun {
            plaintext,
            probe,
            out: EventOut::new(args.emit),
            delivery: args.delivery()?,
            exposition: args.metrics()?,
            published: Instant::now(),
            skipped_no_msisdn: 0,
            spool_dir: args.spool_dir.clone(),
            drops: DropWatch::default(),
            delays: None,
            cluster: args.cluster().map(Cluster::join).transpose()?,
        })
    }

    /// Live capture: measure the delay from each token packet's capture to its sighting (summary).
    pub fn measure_sighting_delay(&mut self) {
        self.delays = Some(Delays { us: Vec::new(), beyond: 0 });
    }

    /// Live capture: libpcap's counters, checked about every second; a warning when drops grow.
    pub fn watch_drops(&mut self, libpcap: Option<LiveStats>) {
        if let Some(stats) = libpcap {
            self.drops.observe(stats);
        }
    }

    /// One frame through the probe; its events to every sink.
    pub fn frame(&mut self, frame: &Frame<'_>) {
        // Spelt out rather than through `probe_and_sinks`: returned from a method, the closure cost the
        // one-thread loop instructions a frame (`benches/instructions.sh`).
        let ProbeRun { probe, out, delivery, skipped_no_msisdn, delays, cluster, .. } = self;
        probe.frame(frame, |event| {
            if let Some(event) = clustered(cluster, event) {
                sink(out, delivery, skipped_no_msisdn, delays, event.as_ref());
            }
        });
    }

    /// The probe, and where its events go: through the cluster (when joined) to every sink.
    fn probe_and_sinks(&mut self) -> (&mut Probe, impl FnMut(&Event) + '_) {
        let ProbeRun { probe, out, delivery, skipped_no_msisdn, delays, cluster, .. } = self;
        let emit = move |event: &Event| {
            if let Some(event) = clustered(cluster, event) {
                sink(out, delivery, skipped_no_msisdn, delays, event.as_ref());
            }
        };
        (probe, emit)
    }

    /// With shards: every event of the frames read so far (a quiet link, a tick); then what the cluster's
    /// stream brought.
    pub fn drain(&mut self) {
        let (probe, emit) = self.probe_and_sinks();
        probe.drain(emit);
        self.follow_cluster();
    }

    /// What the cluster's stream brought, applied now (not at the next tick): the held tokens it places.
    fn follow_cluster(&mut self) {
        let ProbeRun { out, delivery, skipped_no_msisdn, delays, cluster, .. } = self;
        let Some(cluster) = cluster.as_mut().filter(|c| c.has_news()) else { return };
        for event in cluster.poll(Instant::now()) {
            sink(out, delivery, skipped_no_msisdn, delays, &event);
        }
    }

    /// About once a second: the tokens the cluster's view now places, or whose grace is over.
    pub fn tick(&mut self) {
        self.drain();
        let ProbeRun { probe, out, delivery, skipped_no_msisdn, delays, cluster, .. } = self;
        if let Some(cluster) = cluster {
            cluster.progress(probe.now_us(), probe.sees_signalling());
            for event in cluster.poll(Instant::now()) {
                sink(out, delivery, skipped_no_msisdn, delays, &event);
            }
        }
    }

    /// A batch from the pipeline's reader thread, its events to every sink.
    pub fn batch(&mut self, batch: &mut crate::pipeline::Batch) {
        let (probe, emit) = self.probe_and_sinks();
        probe.batch(batch, emit);
        self.follow_cluster();
    }

    /// Renders the metrics at most once a second (or now, when `force`).
    pub fn publish(&mut self, libpcap: Option<LiveStats>, force: bool) {
        let Some(exposition) = &self.exposition else { return };
        if !force && self.published.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.published = Instant::now();
        let delivery_stats = self.delivery.as_ref().and_then(|d| d.shared.lock().ok().map(|s| s.clone()));
        exposition.publish(self.probe.metrics(delivery_stats.as_ref(), libpcap));
    }

    /// Flushes the events, prints the summary, drains delivery for at most `drain`. `false` when
    /// sightings were left in the spool or lost.
    pub fn finish(mut self, libpcap: Option<LiveEnd>, drain: Duration) -> Result<bool> {
        let (probe, emit) = self.probe_and_sinks();
        probe.finish(emit);
        self.publish(libpcap.map(|end| end.stats), true);
        let ProbeRun {
            probe, mut out, delivery, mut skipped_no_msisdn, spool_dir, mut delays, plaintext, cluster, ..
        } = self;
        let cluster_summary = match cluster {
            Some(cluster) => {
                let sees_signalling = probe.sees_signalling();
                // A replay's link has ended; a live capture that stops may start again.
                let (rest, summary) = cluster.finish(sees_signalling, libpcap.is_none());
                for event in &rest {
                    sink(&mut out, &delivery, &mut skipped_no_msisdn, &mut delays, event);
                }
                Some(summary)
            }
            None => None,
        };
        out.finish()?;
        if let Some(summary) = cluster_summary {
            eprintln!("{summary}");
        }
        if plaintext {
            eprintln!("gtpcharge: WARNING: sightings went to the billing API in the clear, off the loopback (--allow-plaintext)");
        }
        eprint!("{}", probe.summary());
        if let Some(line) = delays.as_mut().and_then(Delays::summary) {
            eprintln!("{line}");
        }
        if let Some(evidence) = &probe.evidence {
            eprintln!("{}", evidence.summary());
        }
        if let Some(LiveEnd { stats, passed_at_stop }) = libpcap {
            eprintln!(
                "libpcap received {}  dropped {}  interface dropped {}",
                stats.received, stats.dropped, stats.interface_dropped
            );
            // What libpcap had passed on before the stop but the probe never read (still in the ring
            // when the stop's drain ended): a loss too, so it is said.
            let unread = passed_at_stop.saturating_sub(probe.packets);
            if unread > 0 {
                eprintln!("gtpcharge: WARNING: {unread} packets captured before the stop were not read");
            }
        }
        let Some(delivery) = delivery else { return Ok(true) };
        let stats = delivery.finish(drain);
        eprintln!("{}  skipped-no-msisdn {skipped_no_msisdn}", stats.summary());
        if stats.lost > 0 {
            eprintln!(
                "gtpcharge: ERROR: {} sightings were lost ({}): they were neither delivered nor kept in the spool",
                stats.lost,
                stats.last_error.as_deref().unwrap_or("spool disk full and billing API unreachable")
            );
            return Ok(false);
        }
        if stats.left_in_spool > 0 {
            eprintln!(
                "gtpcharge: {} sightings are kept in the spool {}; the next run with the same --spool-dir delivers them",
                stats.left_in_spool,
                spool_dir.display()
            );
            return Ok(false);
        }
        Ok(true)
    }
}

/// The event to sink for a correlator's event: itself, the cluster's sighting instead, or nothing (held).
fn clustered<'e>(cluster: &mut Option<Cluster>, event: &'e Event) -> Option<std::borrow::Cow<'e, Event>> {
    let Some(cluster) = cluster else { return Some(std::borrow::Cow::Borrowed(event)) };
    match cluster.filter(event) {
        Verdict::Pass => Some(std::borrow::Cow::Borrowed(event)),
        Verdict::Held => None,
        Verdict::Instead(event) => Some(std::borrow::Cow::Owned(*event)),
    }
}

/// Every event to every sink: stdout, delivery (sightings), the debug log.
fn sink(
    out: &mut EventOut,
    delivery: &Option<Delivery>,
    skipped: &mut u64,
    delays: &mut Option<Delays>,
    event: &Event,
) {
    if let (Some(delays), Event::Sighting(s)) = (delays.as_mut(), event) {
        delays.record(s.ts_us);
    }
    out.write(event);
    if let Some(delivery) = delivery {
        deliver(delivery, skipped, event);
    }
    logging::event(event);
}

/// Hands a sighting to delivery; sightings without an MSISDN cannot be charged and are counted.
fn deliver(delivery: &Delivery, skipped: &mut u64, event: &Event) {
    let Event::Sighting(s) = event else { return };
    if s.identity.msisdn.is_empty() {
        *skipped += 1;
        return;
    }
    delivery.submit(SightingRecord {
        token: s.token.to_string(),
        msisdn: s.identity.msisdn.to_string(),
        imsi: s.identity.imsi.to_string(),
        ue_ip: s.identity.ue_ip().map(|ip| ip.to_string()).unwrap_or_default(),
        carrier: s.carrier.as_str().into(),
        seen_at_us: i64::try_from(s.ts_us).unwrap_or(0),
    });
}
