//! Where the probe's frames come from: capture files one after another (`replay`), or a live interface
//! until it is told to stop (`capture`). Either is read a `pcap_dispatch` at a time
//! ([`DISPATCH_FRAMES`] frames at most), by the driver's own thread or by the pipeline's reader thread
//! (`driver.rs`, `pipeline::read`), so the frames reach the probe in the same order either way.
//!
//! A file that fails mid-way ends with what was read before the error, and the next file is read; a
//! live interface that fails ends the feed. Either error is kept for the end of the run.
use gtpcharge_capture::source::DISPATCH_FRAMES;
use gtpcharge_capture::{CaptureError, FileSource, Frame, LiveSource, LiveStats};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one read of a feed gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// This many frames went to the caller.
    Frames(usize),
    /// A live interface had nothing within its read timeout.
    Quiet,
    /// Nothing more: every file was read, or the live capture was stopped and its ring drained.
    End,
}

impl Read {
    /// Whether the source had fewer frames ready than one read takes: a live ring is empty for now.
    pub fn caught_up(self) -> bool {
        match self {
            Read::Frames(count) => count < DISPATCH_FRAMES,
            Read::Quiet | Read::End => true,
        }
    }
}

pub struct Feed {
    input: Input,
    /// Bytes of capture file consumed so far, 16 a record head and the frame's bytes (the progress bar).
    position: u64,
    errors: Vec<CaptureError>,
    ended: bool,
}

enum Input {
    Files { sources: Vec<FileSource>, current: usize },
    Live { source: LiveSource, stop: Arc<AtomicBool>, stopping: Stopping },
}

impl Feed {
    /// Capture files, read in the order given.
    pub fn files(sources: Vec<FileSource>) -> Feed {
        Feed::new(Input::Files { sources, current: 0 })
    }

    /// A live interface, read until `stop` is set and the ring is drained (see [`Stopping`]).
    pub fn live(source: LiveSource, stop: Arc<AtomicBool>) -> Feed {
        Feed::new(Input::Live { source, stop, stopping: Stopping::default() })
    }

    fn new(input: Input) -> Feed {
        Feed { input, position: 0, errors: Vec::new(), ended: false }
    }

    pub fn is_live(&self) -> bool {
        matches!(self.input, Input::Live { .. })
    }

    /// Hands `each` the next frames, in capture order.
    pub fn read(&mut self, mut each: impl FnMut(&Frame<'_>)) -> Read {
        if self.ended {
            return Read::End;
        }
        let read = match &mut self.input {
            Input::Files { sources, current } => loop {
                let Some(source) = sources.get_mut(*current) else { break Read::End };
                let position = &mut self.position;
                match source.read(|frame| {
                    *position += 16 + frame.data.len() as u64;
                    each(frame);
                }) {
                    Ok(0) => *current += 1,
                    Ok(count) => break Read::Frames(count),
                    Err(error) => {
                        self.errors.push(error);
                        *current += 1;
                    }
                }
            },
            Input::Live { source, stop, stopping } => {
                // The flag as it was before the read: a stop raised during it still gets a read after.
                let stop_now = stop.load(Ordering::SeqCst);
                if stop_now && !stopping.stopped() {
                    stopping.stop(source.stats().ok().map(|stats| passed(&stats)));
                }
                match source.dispatch(each) {
                    Ok(count) => {
                        if stopping.done(count) {
                            self.ended = true;
                        }
                        if count > 0 {
                            Read::Frames(count)
                        } else if self.ended {
                            Read::End
                        } else {
                            Read::Quiet
                        }
                    }
                    Err(error) => {
                        self.errors.push(error);
                        Read::End
                    }
                }
            }
        };
        if read == Read::End {
            self.ended = true;
        }
        read
    }

    /// Bytes of capture file consumed so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// libpcap's counters of a live capture (`None` for files, or when libpcap cannot say).
    pub fn stats(&mut self) -> Option<LiveStats> {
        match &mut self.input {
            Input::Live { source, .. } => source.stats().ok(),
            Input::Files { .. } => None,
        }
    }

    /// How many packets libpcap had passed on (received less dropped) when the feed first saw the stop:
    /// the ring is first in, first out, so a probe that read at least that many read every packet
    /// captured before the stop. (Packets that arrive during the drain after it are not owed.)
    pub fn passed_at_stop(&self) -> Option<u64> {
        match &self.input {
            Input::Live { stopping, .. } => stopping.owed,
            Input::Files { .. } => None,
        }
    }

    /// The errors that ended a file early, or the live capture.
    pub fn into_errors(self) -> Vec<CaptureError> {
        self.errors
    }
}

/// Packets libpcap passed on to the ring: received less dropped.
pub fn passed(stats: &LiveStats) -> u64 {
    u64::from(stats.received).saturating_sub(u64::from(stats.dropped))
}

/// How long a live capture keeps reading after it was told to stop, to empty the kernel ring of what
/// was captured before the stop.
pub const STOP_DRAIN_MAX: Duration = Duration::from_secs(2);
/// Once stopped, and where libpcap could not say what it had passed on, reads must find nothing for this
/// long before the ring counts as empty: a partly filled block is handed over only when libpcap's block
/// timeout (`--read-timeout-ms`) retires it.
const STOP_SETTLE: Duration = Duration::from_millis(100);

/// The end of a live capture. When the stop is seen, libpcap says how many packets it had passed on to
/// the ring; the ring is first in, first out, so once that many were read, everything captured before
/// the stop was, and the feed ends at once, however busy the link. Where libpcap cannot say, reading
/// goes on until the ring has stayed empty for [`STOP_SETTLE`]. Either way it ends after
/// [`STOP_DRAIN_MAX`]; what was owed and not read by then is reported as a loss (`sinks.rs`). (A read
/// returns within the read timeout whatever the traffic: `LiveSource`.)
#[derive(Default)]
pub struct Stopping {
    /// Packets read so far.
    read: u64,
    since: Option<Instant>,
    /// Packets libpcap had passed on when the stop was seen.
    owed: Option<u64>,
    empty_since: Option<Instant>,
}

impl Stopping {
    /// Whether the stop was seen.
    pub fn stopped(&self) -> bool {
        self.since.is_some()
    }

    /// The stop is seen, before the next read; `owed` is what libpcap had passed on by then.
    pub fn stop(&mut self, owed: Option<u64>) {
        self.since = Some(Instant::now());
        self.owed = owed;
    }

    /// Whether to stop reading, given what the last read returned.
    pub fn done(&mut self, read: usize) -> bool {
        self.read += read as u64;
        let Some(since) = self.since else { return false };
        match self.owed {
            Some(owed) if self.read >= owed => {
                tracing::info!(owed, read = self.read, "stopped: every packet captured before the stop was read");
                return true;
            }
            Some(_) => {}
            None if read > 0 => self.empty_since = None,
            None => {
                if self.empty_since.get_or_insert_with(Instant::now).elapsed() >= STOP_SETTLE {
                    tracing::info!(read = self.read, "stopped: the ring stayed empty after the stop");
                    return true;
                }
            }
        }
        let over = since.elapsed() >= STOP_DRAIN_MAX;
        if over {
            tracing::warn!(owed = self.owed, read = self.read, "stopped at the drain limit (2 s)");
        }
        over
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_goes_on_until_the_stop() {
        let mut stopping = Stopping::default();
        assert!(!stopping.done(0));
        assert!(!stopping.done(500));
        assert!(!stopping.stopped());
    }

    #[test]
    fn once_stopped_the_feed_ends_when_what_was_owed_is_read() {
        let mut stopping = Stopping::default();
        assert!(!stopping.done(300));
        stopping.stop(Some(1_000));
        assert!(!stopping.done(600), "900 of 1,000 read");
        assert!(!stopping.done(0), "an empty read does not end a drain that is owed packets");
        assert!(stopping.done(250), "1,150 read: the rest came after the stop");
    }

    #[test]
    fn a_stop_with_nothing_owed_ends_at_the_next_read() {
        let mut stopping = Stopping::default();
        assert!(!stopping.done(40));
        stopping.stop(Some(40));
        assert!(stopping.done(0));
    }

    #[test]
    fn without_libpcap_s_count_the_ring_must_stay_empty_for_the_settle_time() {
        let mut stopping = Stopping::default();
        stopping.stop(None);
        assert!(!stopping.done(0));
        assert!(!stopping.done(10), "a read with packets starts the settle time again");
        assert!(!stopping.done(0));
        std::thread::sleep(STOP_SETTLE + Duration::from_millis(20));
        assert!(stopping.done(0));
    }
}
