//! The two-stage pipeline: a reader thread runs libpcap and copies each frame, in capture order, into
//! batches that it hands to the correlating thread over a bounded crossbeam channel; the correlating
//! thread decodes (link/IP/UDP, outer reassembly) and correlates them exactly as the single-threaded run
//! does (`Probe::frame` for both), so the events are the same byte for byte (a test compares them).
//! The reader does as little as it can beyond libpcap itself, because it is the slower of the two: the
//! correlating thread had half the reader's CPU samples when the reader also decoded (perf). Tried again
//! in session 13 (the reader decoding the common case, IPv4 UDP, into the batch entry): pipeline 0.698×
//! → 0.641× of the floor, single thread unchanged (`benches/replay-ab.sh`, 6 alternating rounds).
//!
//! Bounds and policy: 16 batches in flight of at most 512 frames or 64 KiB each (about 1 MiB in all, so
//! the frames are still in cache when the correlating thread reads them), recycled through a return
//! channel (no allocation per batch in steady state). Policy **block**: a reader ahead of the correlator
//! waits; live, the kernel ring then fills and libpcap's own drop counter shows it.
//!
//! Cache hints (`prefetch.rs`, session 16): the correlating thread hints the headers of the frame 8
//! ahead in its batch, the reader hints the batch's lines 2 KiB ahead of its copy for writing. Before
//! them the correlating thread's loop over a batch held 18% of the pipeline's samples (the frames' lines
//! coming from the reader's core) and was the slower thread; after, 4–5%, and the reader is the slower
//! one. `benches/replay-ab.sh` (10 and 6 rounds, both orders): 0.717× → 0.745× and 0.706× → 0.741×.
//!
//! Whether to run it at all: [`choose`] (one thread on one core, or where a hand-over between the two
//! cores costs more than [`ROUND_TRIP_MAX`], measured by [`cross_core_round_trip`]).
//!
//! Waiting: either thread that finds nothing to take spins for up to [`SPIN_MAX`] before it sleeps. A
//! sleeping thread costs the other a futex wake and itself a context switch, which on the test VM cost
//! more than the 64 KiB batch it waited for (replay of the 2.15M-frame bench capture: 2,400–3,300
//! context switches and 1.15–1.19 s of CPU with sleeping waits and 512 KiB batches; 56–90 switches with
//! spinning; 6,000–12,800 switches with 64 KiB batches and sleeping waits).
use crate::prefetch;
use gtpcharge_capture::{CaptureError, FileSource, Frame, LiveSource, LiveStats};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BATCHES_IN_FLIGHT: usize = 16;
const BATCH_FRAMES_MAX: usize = 512;
const BATCH_BYTES_MAX: usize = 64 << 10;
/// How long a thread with nothing to take spins before it sleeps.
const SPIN_MAX: Duration = Duration::from_millis(1);
/// A live batch is handed over after this long even when not full (latency bound).
const BATCH_AGE_MAX: Duration = Duration::from_millis(20);

/// Where one frame's bytes are in the batch, and what libpcap said about it.
struct Item {
    ts_us: u64,
    wire_len: u32,
    linktype: i32,
    start: usize,
    end: usize,
}

/// What the correlating thread receives: copies of captured frames, in capture order.
#[derive(Default)]
pub struct Batch {
    /// Bytes of capture file consumed so far (for the progress bar).
    pub position: u64,
    items: Vec<Item>,
    bytes: Vec<u8>,
}

/// How far ahead of its copy `push` hints the batch's lines for writing: about four frames of the bench
/// mix, and less than a 64 KiB batch.
const WRITE_AHEAD: usize = 2048;
/// How many frames ahead `frames` hints the start of a frame for reading.
const READ_AHEAD: usize = 8;
/// How much of a frame that is: two lines, the headers every frame's decode reads.
const READ_HINT_BYTES: usize = 128;

impl Batch {
    fn clear(&mut self) {
        self.items.clear();
        self.bytes.clear();
    }

    fn is_full(&self) -> bool {
        self.items.len() >= BATCH_FRAMES_MAX || self.bytes.len() >= BATCH_BYTES_MAX
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn push(&mut self, frame: &Frame<'_>) {
        let start = self.bytes.len();
        // The lines this frame's length will need WRITE_AHEAD bytes on, within the batch's memory.
        let spare = self.bytes.spare_capacity_mut();
        let ahead = spare.get(WRITE_AHEAD..).unwrap_or_default();
        prefetch::write_lines(ahead.as_ptr().cast(), frame.data.len().min(ahead.len()));
        self.bytes.extend_from_slice(frame.data);
        self.items.push(Item {
            ts_us: frame.ts_us,
            wire_len: frame.wire_len,
            linktype: frame.linktype,
            start,
            end: self.bytes.len(),
        });
    }

    /// The frames, in capture order, borrowed from the batch.
    pub fn frames(&self) -> impl Iterator<Item = Frame<'_>> {
        self.items.iter().enumerate().map(|(i, item)| {
            if let Some(ahead) = self.items.get(i + READ_AHEAD) {
                prefetch::read_lines(self.bytes.as_ptr().wrapping_add(ahead.start), READ_HINT_BYTES);
            }
            Frame {
                ts_us: item.ts_us,
                wire_len: item.wire_len,
                linktype: item.linktype,
                data: self.bytes.get(item.start..item.end).unwrap_or_default(),
            }
        })
    }
}

/// The reader side's handles: batches come out of `batches`; used ones go back through `recycle`.
pub struct Reader<T> {
    batches: crossbeam_channel::Receiver<Batch>,
    recycle: crossbeam_channel::Sender<Batch>,
    thread: std::thread::JoinHandle<T>,
}

impl<T> Reader<T> {
    /// The next batch; `None` once the reader has finished and every batch was taken.
    pub fn next(&self) -> Option<Batch> {
        spin(&self.batches).or_else(|| self.batches.recv().ok())
    }

    /// The next batch, waiting at most `timeout`; `Err(Disconnected)` once the reader has finished.
    pub fn next_timeout(&self, timeout: Duration) -> Result<Batch, crossbeam_channel::RecvTimeoutError> {
        match spin(&self.batches) {
            Some(batch) => Ok(batch),
            None => self.batches.recv_timeout(timeout),
        }
    }

    /// Hands a processed batch back for reuse.
    pub fn recycle(&self, batch: Batch) {
        let _ = self.recycle.try_send(batch);
    }

    /// Waits for the reader thread (after `batches` is drained) and returns what it reported.
    pub fn join(self) -> std::thread::Result<T> {
        drop(self.batches);
        self.thread.join()
    }
}

/// Takes what `channel` holds, spinning for up to [`SPIN_MAX`] while it is empty; `None` when nothing
/// came (or the other side has gone): the caller then waits the blocking way.
fn spin<T>(channel: &crossbeam_channel::Receiver<T>) -> Option<T> {
    // The clock is read only once the channel was found empty, then every 64 turns (a turn is a few
    // nanoseconds); bounded by SPIN_MAX.
    let mut started = None;
    let mut turn = 0u32;
    loop {
        match channel.try_recv() {
            Ok(item) => return Some(item),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
        if turn % 64 == 0 && started.get_or_insert_with(Instant::now).elapsed() >= SPIN_MAX {
            return None;
        }
        turn = turn.wrapping_add(1);
        std::hint::spin_loop();
    }
}

struct Lanes {
    full: crossbeam_channel::Sender<Batch>,
    empty: crossbeam_channel::Receiver<Batch>,
}

impl Lanes {
    fn next_empty(&self) -> Option<Batch> {
        spin(&self.empty).or_else(|| self.empty.recv().ok()).map(|mut b| {
            b.clear();
            b
        })
    }

    /// Sends the filled batch and puts an empty one in its place (waits for one: policy block).
    fn hand_over(&self, batch: &mut Batch) {
        let next = self.next_empty().unwrap_or_default();
        let _ = self.full.send(std::mem::replace(batch, next));
    }
}

/// Starts the reader thread with its lanes: batches out, used batches back.
fn spawn_reader<T: Send + 'static>(work: impl FnOnce(Lanes) -> T + Send + 'static) -> std::io::Result<Reader<T>> {
    let (full, batches) = crossbeam_channel::bounded(BATCHES_IN_FLIGHT);
    let (recycle, empty) = crossbeam_channel::bounded(BATCHES_IN_FLIGHT + 2);
    for _ in 0..BATCHES_IN_FLIGHT + 2 {
        let _ = recycle.try_send(Batch::default());
    }
    let lanes = Lanes { full, empty };
    let thread = std::thread::Builder::new().name("reader".into()).spawn(move || work(lanes))?;
    Ok(Reader { batches, recycle, thread })
}

/// Reads capture files in order on a reader thread. The thread returns, per file, the error that ended
/// it early (if any).
pub fn read_files(sources: Vec<FileSource>) -> std::io::Result<Reader<Vec<CaptureError>>> {
    spawn_reader(move |lanes| {
        let mut errors = Vec::new();
        let Some(mut batch) = lanes.next_empty() else { return errors };
        let mut position = 0u64;
        for mut source in sources {
            let result = source.for_each(|frame| {
                position += 16 + frame.data.len() as u64;
                batch.push(frame);
                if batch.is_full() {
                    batch.position = position;
                    lanes.hand_over(&mut batch);
                }
            });
            if let Err(error) = result {
                errors.push(error);
            }
        }
        if !batch.is_empty() {
            batch.position = position;
            let _ = lanes.full.send(batch);
        }
        errors
    })
}

/// Reads a live interface on a reader thread until `stop`; libpcap's counters are refreshed into
/// `libpcap` with every batch. The thread returns the read error that stopped it, if any.
pub fn read_live(
    mut source: LiveSource,
    stop: Arc<AtomicBool>,
    libpcap: Arc<Mutex<Option<LiveStats>>>,
) -> std::io::Result<Reader<Option<CaptureError>>> {
    spawn_reader(move |lanes| {
        let mut batch = lanes.next_empty()?;
        let mut started = Instant::now();
        let mut failure = None;
        let refresh = |source: &mut LiveSource| {
            if let Ok(mut shared) = libpcap.lock() {
                *shared = source.stats().ok();
            }
        };
        while !stop.load(Ordering::SeqCst) {
            let mut handed_over = false;
            let read = source.dispatch(|frame| {
                batch.push(frame);
                if batch.is_full() {
                    lanes.hand_over(&mut batch);
                    started = Instant::now();
                    handed_over = true;
                }
            });
            if let Err(error) = read {
                failure = Some(error);
                break;
            }
            if !batch.is_empty() && started.elapsed() >= BATCH_AGE_MAX {
                lanes.hand_over(&mut batch);
                started = Instant::now();
                handed_over = true;
            }
            if handed_over {
                refresh(&mut source);
            }
        }
        refresh(&mut source);
        if !batch.is_empty() {
            let _ = lanes.full.send(batch);
        }
        failure
    })
}

/// How long a cache line takes to go from this thread's core to another thread's and back: a flag
/// passed between the two, `TURNS` times, after a warm-up. The pipeline hands every frame across that
/// way, so this is what its hand-over costs on the machine. `None` when the two threads did not run at
/// the same time (one core, or a busy machine) within a fifth of a second.
///
/// Measured on the 2-vCPU test VM, which moves between two states as the host places its vCPUs: 45-63
/// ns, when the pipeline is about 1.5x faster than one thread, and about 380 ns, when it is about 1.5x
/// slower (benches/RESULTS.md).
pub fn cross_core_round_trip() -> Option<Duration> {
    const WARM_UP: u32 = 1_000;
    const TURNS: u32 = 20_000;
    let flag = Arc::new(AtomicU32::new(0));
    let deadline = Instant::now() + Duration::from_millis(200);
    // Spins until `flag` holds `value`; false once past the deadline.
    let wait_for = move |flag: &AtomicU32, value: u32| {
        let mut turn = 0u32;
        while flag.load(Ordering::Acquire) != value {
            turn = turn.wrapping_add(1);
            if turn % 1024 == 0 && Instant::now() >= deadline {
                return false;
            }
            std::hint::spin_loop();
        }
        true
    };
    let other = {
        let flag = flag.clone();
        std::thread::Builder::new()
            .name("round-trip".into())
            .spawn(move || {
                for turn in 0..WARM_UP + TURNS {
                    if !wait_for(&flag, 2 * turn + 1) {
                        return;
                    }
                    flag.store(2 * turn + 2, Ordering::Release);
                }
            })
            .ok()?
    };
    let mut started = Instant::now();
    let mut answered = true;
    for turn in 0..WARM_UP + TURNS {
        if turn == WARM_UP {
            started = Instant::now();
        }
        flag.store(2 * turn + 1, Ordering::Release);
        if !wait_for(&flag, 2 * turn + 2) {
            answered = false;
            break;
        }
    }
    let elapsed = started.elapsed();
    other.join().ok()?;
    answered.then(|| elapsed / TURNS)
}

/// A hand-over between the two threads dearer than this, and the pipeline is slower than one thread.
/// On the test VM the round trip measured 45-63 ns when the pipeline was about 1.5x faster than one
/// thread and 369-384 ns when it was about 1.5x slower (benches/RESULTS.md); this sits between.
pub const ROUND_TRIP_MAX: Duration = Duration::from_nanos(200);

/// How many threads read and correlate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// libpcap, decode and correlation on the calling thread.
    One,
    /// A reader thread (libpcap and the copy into batches) and the calling thread (the rest).
    Two,
}

/// The choice of [`Threads`]: what a flag forces, or else what this machine favours, and why (for the
/// log). `cores` is how many the process may run on; `round_trip` measures a hand-over
/// ([`cross_core_round_trip`]) and is called only when the answer depends on it. One thread wins on a
/// single core (two threads take turns and spin) and where a hand-over costs more than
/// [`ROUND_TRIP_MAX`]; a hand-over that could not be measured means the two threads did not run at once,
/// which is the first case.
pub fn choose(
    single_thread: bool,
    pipeline: bool,
    cores: usize,
    round_trip: impl FnOnce() -> Option<Duration>,
) -> (Threads, String) {
    if single_thread {
        return (Threads::One, "--single-thread".into());
    }
    if pipeline {
        return (Threads::Two, "--pipeline".into());
    }
    if cores < 2 {
        return (Threads::One, format!("{cores} core available"));
    }
    match round_trip() {
        None => (Threads::One, "the two threads did not run at once (cross-core round trip not measured)".into()),
        Some(trip) if trip > ROUND_TRIP_MAX => (
            Threads::One,
            format!(
                "cross-core round trip {} ns, over {} ns: here handing frames to a second thread costs more \
                 than it gains",
                trip.as_nanos(),
                ROUND_TRIP_MAX.as_nanos()
            ),
        ),
        Some(trip) => (Threads::Two, format!("cross-core round trip {} ns", trip.as_nanos())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_decide_without_a_measurement() {
        let unmeasured = || -> Option<Duration> { panic!("measured although a flag decides") };
        assert_eq!(choose(true, false, 8, unmeasured).0, Threads::One);
        assert_eq!(choose(false, true, 8, unmeasured).0, Threads::Two);
        assert_eq!(choose(false, true, 1, unmeasured).0, Threads::Two, "--pipeline is obeyed on one core too");
        assert_eq!(choose(false, false, 1, unmeasured).0, Threads::One);
    }

    #[test]
    fn the_round_trip_decides_otherwise() {
        let ns = |n| move || Some(Duration::from_nanos(n));
        let (threads, why) = choose(false, false, 2, ns(52));
        assert_eq!(threads, Threads::Two);
        assert!(why.contains("52 ns"), "{why}");
        assert_eq!(choose(false, false, 2, ns(200)).0, Threads::Two);
        let (threads, why) = choose(false, false, 2, ns(371));
        assert_eq!(threads, Threads::One);
        assert!(why.contains("371 ns"), "{why}");
        assert_eq!(choose(false, false, 2, || None).0, Threads::One);
    }
}
