//! The probe's driver, one for `replay` and `capture`: frames from a [`Feed`] (files or a live
//! interface) through the probe, read on this thread or handed over in batches by the pipeline's reader
//! thread (`pipeline.rs`, chosen by `ProbeArgs::threads`); about once a second the metrics, libpcap's
//! drop watch and the progress bar; then the end of the run (`ProbeRun::finish`).
use crate::feed::{Feed, Read};
use crate::pipeline::{self, Reader, Threads};
use crate::sinks::ProbeRun;
use crate::ProbeArgs;
use anyhow::{Context, Result};
use gtpcharge_capture::{CaptureError, FileSource, LiveConfig, LiveSource, LiveStats};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the metrics, the drop watch and the progress bar are brought up to date.
const TICK: Duration = Duration::from_secs(1);
/// The longest the driver waits for a batch, so the tick comes while the link is quiet.
const WAKE: Duration = Duration::from_millis(200);

/// `replay`: the files in order, then the end of the run. `false` when a file could not be read to its
/// end or sightings were left undelivered.
pub fn replay(files: &[PathBuf], args: &ProbeArgs) -> Result<bool> {
    // Open every file before writing anything: a bad name fails the run with nothing half-written.
    let mut sources = Vec::with_capacity(files.len());
    let mut total_bytes = 0u64;
    for path in files {
        sources.push(FileSource::open(path, args.filter.as_deref())?);
        total_bytes += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    // Standard input has no length: its progress is bytes and rate, without a bar.
    let piped = files.iter().any(|path| path == Path::new(gtpcharge_capture::source::STDIN_NAME));
    let progress = std::io::stderr().is_terminal().then(|| {
        let (bar, template) = if piped {
            (indicatif::ProgressBar::new_spinner(), "{spinner} {bytes} {bytes_per_sec}")
        } else {
            (indicatif::ProgressBar::new(total_bytes), "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut run = ProbeRun::start(args)?;
    // After the run's clock has started: the check (a few milliseconds) counts in its elapsed time.
    let end = drive(Feed::files(sources), &mut run, args.threads(), progress.as_ref())?;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    // A file cut short mid-record (a capture killed while writing): what was read counts, the run goes
    // on with the next file and ends as failed.
    for error in &end.errors {
        eprintln!("gtpcharge: {error}");
    }
    let delivered = run.finish(None, Duration::from_secs(args.drain_timeout_s))?;
    Ok(end.errors.is_empty() && delivered)
}

/// `capture`: the interface until SIGINT or SIGTERM (and its ring drained), then the end of the run.
pub fn capture(live: LiveConfig, args: &ProbeArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let source = LiveSource::open(&live)?;
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst))
        .context("installing the SIGINT/SIGTERM handler")?;
    let mut run = ProbeRun::start(args)?;
    run.measure_sighting_delay();
    tracing::info!(
        interface = %live.interface,
        buffer_bytes = live.buffer_size_bytes,
        read_timeout_ms = live.read_timeout_ms,
        immediate = live.immediate,
        "capturing (stop with SIGINT or SIGTERM)"
    );
    let end = drive(Feed::live(source, stop), &mut run, args.threads(), None)?;
    // The run ends properly (summary, delivery drained) before a read error is reported. Whatever could
    // not be delivered within the drain time stays in the spool for the next start.
    run.finish(end.libpcap, Duration::from_secs(args.drain_timeout_s.min(10)))?;
    match end.errors.into_iter().next() {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}

/// What a drive ended with.
pub struct End {
    /// Per file, the error that ended it early; for a live capture, the error that stopped it.
    pub errors: Vec<CaptureError>,
    /// libpcap's last counters of a live capture, and what it had passed on at the stop.
    pub libpcap: Option<LiveEnd>,
}

/// libpcap's counters at the end of a live capture.
#[derive(Clone, Copy)]
pub struct LiveEnd {
    pub stats: LiveStats,
    /// Packets libpcap had passed on when the stop was seen ([`Feed::passed_at_stop`]); the counters at
    /// the end when the stop never came (a read error ended the capture).
    pub passed_at_stop: u64,
}

/// Where the driver takes frames from.
enum Frames {
    /// Read here, a dispatch at a time.
    Inline(Feed),
    /// Batches from the reader thread, with libpcap's counters as the reader last saw them.
    Reader(Reader<Feed>, Arc<Mutex<Option<LiveStats>>>),
}

/// Every frame of `feed` through `run`, on `threads`.
pub fn drive(
    feed: Feed,
    run: &mut ProbeRun,
    threads: Threads,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<End> {
    let mut frames = match threads {
        Threads::One => Frames::Inline(feed),
        Threads::Two(handover) => {
            let shared = Arc::new(Mutex::new(None));
            let reader = pipeline::read(feed, handover, shared.clone()).context("starting the reader thread")?;
            Frames::Reader(reader, shared)
        }
    };
    let mut position = 0u64;
    let mut checked = Instant::now();
    loop {
        let more = match &mut frames {
            Frames::Inline(feed) => {
                let read = feed.read(|frame| run.frame(frame));
                run.drain();
                read != Read::End
            }
            Frames::Reader(reader, _) => match reader.next_timeout(WAKE) {
                Ok(mut batch) => {
                    run.batch(&mut batch);
                    position = batch.position;
                    reader.recycle(batch);
                    true
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    // A quiet link: what the shards still hold goes out now, not at the next batch.
                    run.drain();
                    true
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => false,
            },
        };
        if !more {
            break;
        }
        if checked.elapsed() >= TICK {
            checked = Instant::now();
            let libpcap = match &mut frames {
                Frames::Inline(feed) => {
                    position = feed.position();
                    feed.stats()
                }
                Frames::Reader(_, shared) => shared.lock().ok().and_then(|stats| *stats),
            };
            run.watch_drops(libpcap);
            run.tick();
            run.publish(libpcap, false);
            if let Some(bar) = progress {
                bar.set_position(position);
            }
        }
    }
    let mut feed = match frames {
        Frames::Inline(feed) => feed,
        Frames::Reader(reader, _) => reader.join().map_err(|_| anyhow::anyhow!("the reader thread failed"))?,
    };
    let libpcap = feed.stats().map(|stats| LiveEnd {
        stats,
        passed_at_stop: feed.passed_at_stop().unwrap_or_else(|| crate::feed::passed(&stats)),
    });
    Ok(End { errors: feed.into_errors(), libpcap })
}
