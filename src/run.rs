//! One probe run, shared by `replay` and `capture`: the frame loop's sinks (JSON lines on stdout,
//! delivery to the billing API, debug logs, metrics) and the end of the run (flush, summary, drain).
use crate::delivery::{Delivery, SightingRecord};
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
}

impl ProbeRun {
    pub fn start(args: &ProbeArgs) -> Result<ProbeRun> {
        Ok(ProbeRun {
            probe: args.probe()?,
            out: EventOut::new(args.emit),
            delivery: args.delivery()?,
            exposition: args.metrics()?,
            published: Instant::now(),
            skipped_no_msisdn: 0,
            spool_dir: args.spool_dir.clone(),
        })
    }

    /// One frame through the probe; its events to every sink.
    pub fn frame(&mut self, frame: &Frame<'_>) {
        let ProbeRun { probe, out, delivery, skipped_no_msisdn, .. } = self;
        probe.frame(frame, |event| sink(out, delivery, skipped_no_msisdn, event));
    }

    /// A batch from the pipeline's reader thread, its events to every sink.
    pub fn batch(&mut self, batch: &crate::pipeline::Batch) {
        let ProbeRun { probe, out, delivery, skipped_no_msisdn, .. } = self;
        probe.batch(batch, |event| sink(out, delivery, skipped_no_msisdn, event));
    }

    /// Whether metrics are served and a second has passed since the last snapshot.
    pub fn wants_publish(&self) -> bool {
        self.exposition.is_some() && self.published.elapsed() >= Duration::from_secs(1)
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
    pub fn finish(mut self, libpcap: Option<LiveStats>, drain: Duration) -> Result<bool> {
        self.publish(libpcap, true);
        let ProbeRun { probe, out, delivery, skipped_no_msisdn, spool_dir, .. } = self;
        out.finish()?;
        eprint!("{}", probe.summary());
        if let Some(evidence) = &probe.evidence {
            eprintln!("{}", evidence.summary());
        }
        if let Some(stats) = libpcap {
            eprintln!(
                "libpcap received {}  dropped {}  interface dropped {}",
                stats.received, stats.dropped, stats.interface_dropped
            );
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

/// Every event to every sink: stdout, delivery (sightings), the debug log.
fn sink(out: &mut EventOut, delivery: &Option<Delivery>, skipped: &mut u64, event: &Event) {
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
