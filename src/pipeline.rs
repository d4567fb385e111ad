//! The two-stage pipeline: a reader thread runs libpcap and copies each frame, in capture order, into
//! batches that it hands to the correlating thread over a bounded crossbeam channel; the correlating
//! thread decodes (link/IP/UDP, outer reassembly) and correlates them exactly as the single-threaded run
//! does (`Probe::frame` for both), so the events are the same byte for byte (a test compares them).
//! The reader does as little as it can beyond libpcap itself, because it is the slower of the two: the
//! correlating thread had half the reader's CPU samples when the reader also decoded (perf), and moving
//! the common case's decoding into the reader made the pipeline slower (`benches/replay-ab.sh`; figures
//! in `benches/RESULTS.md`).
//!
//! Two layouts of a batch, one per [`Handover`]: frames copied through the cache with a side list of where
//! each is (`Item`), or streamed to memory each behind a 32-byte head (`Head`), so that nothing the
//! correlating thread reads is written by ordinary stores (each such line crosses back to the reader's
//! core before the store can complete: half a line a frame for the side list, at hundreds of
//! nanoseconds a crossing where the cores are far apart).
//!
//! Bounds and policy: 16 batches in flight of at most 512 frames or 64 KiB each (about 1 MiB in all, so
//! the frames are still in cache when the correlating thread reads them), recycled through a return
//! channel (no allocation per batch in steady state). Policy **block**: a reader ahead of the correlator
//! waits; live, the kernel ring then fills and libpcap's own drop counter shows it.
//!
//! Cache hints (`prefetch.rs`): the correlating thread hints the headers of the frame 8 ahead in its
//! batch, the reader hints the batch's lines 2 KiB ahead of its copy for writing. Without them the
//! correlating thread's loop over a batch waits for the frames' lines to come from the reader's core and
//! is the slower thread; with them the reader is (perf and `benches/replay-ab.sh`; figures in
//! `benches/RESULTS.md`).
//!
//! Whether to run it at all, and how the frames cross: [`choose`] (one thread on one core; otherwise two,
//! the frames copied through the cache ([`Handover::Cached`]) where a cache line between the two cores
//! and back takes at most [`ROUND_TRIP_MAX`], measured by [`cross_core_round_trip`], and by
//! non-temporal stores ([`Handover::Streaming`]) where it takes longer: with cached copies there the
//! pipeline is slower than one thread.
//!
//! Waiting: either thread that finds nothing to take spins for up to [`SPIN_MAX`] before it sleeps. A
//! sleeping thread costs the other a futex wake and itself a context switch, which costs more than the
//! 64 KiB batch it waited for (context switches counted with sleeping and spinning waits in
//! `benches/RESULTS.md`).
use crate::feed::{self, Feed};
use crate::prefetch;
use gtpcharge_capture::{Frame, LiveStats};
use std::sync::atomic::{AtomicU32, Ordering};
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

/// What the correlating thread receives: copies of captured frames, in capture order. With the cached
/// hand-over `items` says where each frame is in `bytes`; with the streaming one, `bytes` holds each
/// frame behind a head of its own (`Head`), written by the same streaming stores, and `items` stays
/// empty (its lines would cross between the cores one store at a time).
#[derive(Default)]
pub struct Batch {
    /// Bytes of capture file consumed so far (for the progress bar).
    pub position: u64,
    handover: Option<Handover>,
    frames: usize,
    items: Vec<Item>,
    bytes: Vec<u8>,
}

/// A streamed frame's head: what an `Item` says, but the frame's length in place of where it is.
struct Head {
    ts_us: u64,
    wire_len: u32,
    linktype: i32,
    len: u64,
}

impl Head {
    fn to_bytes(&self) -> [u8; prefetch::STREAM_HEAD] {
        let mut out = [0u8; prefetch::STREAM_HEAD];
        let (ts, rest) = out.split_at_mut(8);
        let (wire, rest) = rest.split_at_mut(4);
        let (link, rest) = rest.split_at_mut(4);
        ts.copy_from_slice(&self.ts_us.to_ne_bytes());
        wire.copy_from_slice(&self.wire_len.to_ne_bytes());
        link.copy_from_slice(&self.linktype.to_ne_bytes());
        rest.get_mut(..8).unwrap_or_default().copy_from_slice(&self.len.to_ne_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Head> {
        let field = |at: usize| bytes.get(at..at + 8).and_then(|b| <[u8; 8]>::try_from(b).ok());
        let half = |at: usize| bytes.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok());
        Some(Head {
            ts_us: u64::from_ne_bytes(field(0)?),
            wire_len: u32::from_ne_bytes(half(8)?),
            linktype: i32::from_ne_bytes(half(12)?),
            len: u64::from_ne_bytes(field(16)?),
        })
    }
}

/// How far ahead of its copy `push` hints the batch's lines for writing: about four frames of the bench
/// mix, and less than a 64 KiB batch.
const WRITE_AHEAD: usize = 2048;
/// How many frames ahead `frames` hints the start of a frame for reading.
const READ_AHEAD: usize = 8;
/// How much of a frame that is: two lines, the headers every frame's decode reads.
const READ_HINT_BYTES: usize = 128;
/// With the streaming hand-over, where frames are found by walking the batch: how far ahead of the frame
/// being read its lines are hinted (about eight frames of the bench mix).
const STREAM_READ_AHEAD: usize = 4096;

impl Batch {
    fn clear(&mut self) {
        self.frames = 0;
        self.items.clear();
        self.bytes.clear();
    }

    fn is_full(&self) -> bool {
        self.frames >= BATCH_FRAMES_MAX || self.bytes.len() >= BATCH_BYTES_MAX
    }

    fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Appends a frame. A batch holds frames of one hand-over's layout: an empty batch takes `handover`'s,
    /// a batch with frames keeps its own.
    fn push(&mut self, frame: &Frame<'_>, handover: Handover) {
        if self.is_empty() {
            self.handover = Some(handover);
        }
        let handover = self.handover.unwrap_or(handover);
        self.frames += 1;
        match handover {
            Handover::Cached => {
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
            Handover::Streaming => {
                let head = Head {
                    ts_us: frame.ts_us,
                    wire_len: frame.wire_len,
                    linktype: frame.linktype,
                    len: frame.data.len() as u64,
                };
                prefetch::stream_append(&mut self.bytes, &head.to_bytes(), frame.data);
            }
        }
    }

    /// The frames, in capture order, borrowed from the batch.
    pub fn frames(&self) -> impl Iterator<Item = Frame<'_>> {
        self.frames_in(&self.bytes)
    }

    /// The batch's bytes, for keeping beyond the batch (the shards read their payloads there); `spare`
    /// takes their place, emptied. Their frames are then read with [`Batch::frames_in`].
    pub fn take_bytes(&mut self, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        std::mem::replace(&mut self.bytes, spare)
    }

    /// The frames, in capture order, from `bytes`: the batch's own, or what [`Batch::take_bytes`] took.
    pub fn frames_in<'a>(&'a self, bytes: &'a [u8]) -> impl Iterator<Item = Frame<'a>> {
        let (mut item, mut at) = (0usize, 0usize);
        std::iter::from_fn(move || match self.handover? {
            Handover::Cached => {
                let this = self.items.get(item)?;
                if let Some(ahead) = self.items.get(item + READ_AHEAD) {
                    prefetch::read_lines(bytes.as_ptr().wrapping_add(ahead.start), READ_HINT_BYTES);
                }
                item += 1;
                Some(Frame {
                    ts_us: this.ts_us,
                    wire_len: this.wire_len,
                    linktype: this.linktype,
                    data: bytes.get(this.start..this.end).unwrap_or_default(),
                })
            }
            Handover::Streaming => {
                // Each frame's head and padded bytes take a multiple of 16 (`stream_append`): the next head
                // follows directly.
                let head = Head::from_bytes(bytes.get(at..)?)?;
                let data_start = at + prefetch::STREAM_HEAD;
                let len = usize::try_from(head.len).ok()?;
                let data = bytes.get(data_start..data_start.checked_add(len)?)?;
                at = data_start + len.div_ceil(16) * 16;
                prefetch::read_lines(bytes.as_ptr().wrapping_add(at + STREAM_READ_AHEAD), READ_HINT_BYTES);
                Some(Frame { ts_us: head.ts_us, wire_len: head.wire_len, linktype: head.linktype, data })
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
        waiting(|| spin(&self.batches).or_else(|| self.batches.recv().ok()))
    }

    /// The next batch, waiting at most `timeout`; `Err(Disconnected)` once the reader has finished.
    pub fn next_timeout(&self, timeout: Duration) -> Result<Batch, crossbeam_channel::RecvTimeoutError> {
        waiting(|| match spin(&self.batches) {
            Some(batch) => Ok(batch),
            None => self.batches.recv_timeout(timeout),
        })
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

/// Runs a wait of one of the probe's threads (spinning or blocked on a channel or a barrier). Never
/// inlined: every wait is this one symbol, which `benches/workers.sh` leaves out of its instruction
/// counts (callgrind's `--toggle-collect`), so that a thread spinning under valgrind's one-at-a-time
/// scheduling does not count as work.
#[inline(never)]
pub fn waiting<T>(wait: impl FnOnce() -> T) -> T {
    wait()
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
    handover: Handover,
}

impl Lanes {
    fn next_empty(&self) -> Option<Batch> {
        waiting(|| spin(&self.empty).or_else(|| self.empty.recv().ok())).map(|mut b| {
            b.clear();
            b
        })
    }

    /// Sends the filled batch and puts an empty one in its place (waits for one: policy block).
    fn hand_over(&self, batch: &mut Batch) {
        let next = self.next_empty().unwrap_or_default();
        self.send(std::mem::replace(batch, next));
    }

    fn push(&self, batch: &mut Batch, frame: &Frame<'_>) {
        batch.push(frame, self.handover);
    }

    /// Hands a batch over, its streaming stores ordered before the send.
    fn send(&self, batch: Batch) {
        if self.handover == Handover::Streaming {
            prefetch::publish();
        }
        let _ = waiting(|| self.full.send(batch));
    }
}

/// Starts the reader thread with its lanes: batches out, used batches back.
fn spawn_reader<T: Send + 'static>(
    handover: Handover,
    work: impl FnOnce(Lanes) -> T + Send + 'static,
) -> std::io::Result<Reader<T>> {
    let (full, batches) = crossbeam_channel::bounded(BATCHES_IN_FLIGHT);
    let (recycle, empty) = crossbeam_channel::bounded(BATCHES_IN_FLIGHT + 2);
    for _ in 0..BATCHES_IN_FLIGHT + 2 {
        let _ = recycle.try_send(Batch::default());
    }
    let lanes = Lanes { full, empty, handover };
    let thread = std::thread::Builder::new().name("reader".into()).spawn(move || work(lanes))?;
    Ok(Reader { batches, recycle, thread })
}

/// Reads `feed` on a reader thread into batches, until it ends. A batch goes over when it is full; from
/// a live interface also when the ring had less than a read's worth ready, or when its first frame has
/// waited [`BATCH_AGE_MAX`], so a quiet link adds no batching delay to a sighting. libpcap's counters of a
/// live capture are refreshed into `libpcap` with every batch. The thread gives the feed back at its end
/// (its errors, its last counters).
pub fn read(
    mut feed: Feed,
    handover: Handover,
    libpcap: Arc<Mutex<Option<LiveStats>>>,
) -> std::io::Result<Reader<Feed>> {
    spawn_reader(handover, move |lanes| {
        let Some(mut batch) = lanes.next_empty() else { return feed };
        let live = feed.is_live();
        let mut started = Instant::now();
        // The feed's own position cannot be read while it hands frames over: counted here as it counts.
        let mut position = 0u64;
        let refresh = |feed: &mut Feed| {
            if let Ok(mut shared) = libpcap.lock() {
                *shared = feed.stats();
            }
        };
        loop {
            let mut handed_over = false;
            let read = feed.read(|frame| {
                position += 16 + frame.data.len() as u64;
                lanes.push(&mut batch, frame);
                if batch.is_full() {
                    batch.position = position;
                    lanes.hand_over(&mut batch);
                    started = Instant::now();
                    handed_over = true;
                }
            });
            if read == feed::Read::End {
                break;
            }
            if live && !batch.is_empty() && (read.caught_up() || started.elapsed() >= BATCH_AGE_MAX) {
                lanes.hand_over(&mut batch);
                started = Instant::now();
                handed_over = true;
            }
            if live && handed_over {
                refresh(&mut feed);
            }
        }
        if live {
            refresh(&mut feed);
        }
        if !batch.is_empty() {
            batch.position = position;
            lanes.send(batch);
        }
        feed
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

/// A hand-over between the two threads dearer than this, and the frames cross by streaming stores
/// rather than through the cache. Cores that share a cache answer in tens of nanoseconds, cores far
/// apart in hundreds (benches/RESULTS.md); this sits between.
pub const ROUND_TRIP_MAX: Duration = Duration::from_nanos(200);

/// How the reader thread's copies of the frames reach the correlating thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// Ordinary stores, with the batch's lines fetched for writing ahead of the copy: the correlating
    /// thread reads the frames from the reader's cache. Best where the two cores share a cache cheaply.
    Cached,
    /// Non-temporal stores (`prefetch::stream_append`), each frame behind a head of its own: the copies
    /// go to memory without taking the lines back from the correlating thread's core, which read them
    /// last. Best where a cache line between the two cores is slow; about even with `Cached` where it
    /// is fast (figures in `benches/RESULTS.md`).
    Streaming,
}

impl Handover {
    /// The better one for a measured round trip (see [`cross_core_round_trip`]); `None` (the two threads
    /// never ran at once, so they share a core) is `Cached`.
    pub fn for_round_trip(round_trip: Option<Duration>) -> Handover {
        match round_trip {
            Some(trip) if trip > ROUND_TRIP_MAX => Handover::Streaming,
            _ => Handover::Cached,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Handover::Cached => "cached",
            Handover::Streaming => "streaming",
        }
    }
}

/// How many threads read and correlate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// libpcap, decode and correlation on the calling thread.
    One,
    /// A reader thread (libpcap and the copy into batches) and the calling thread (the rest).
    Two(Handover),
}

/// The choice of [`Threads`]: what a flag forces, or else what this machine favours, and why (for the
/// log). `handover` is a forced hand-over, if any; `cores` is how many the process may run on;
/// `round_trip` measures a hand-over ([`cross_core_round_trip`]) and is called only when the answer
/// depends on it. One thread wins on a
/// single core (two threads take turns and spin); a hand-over that could not be measured means the two
/// threads did not run at once, which is the same case. Otherwise two threads, whose hand-over the round
/// trip picks ([`Handover::for_round_trip`]).
pub fn choose(
    single_thread: bool,
    pipeline: bool,
    handover: Option<Handover>,
    cores: usize,
    round_trip: impl FnOnce() -> Option<Duration>,
) -> (Threads, String) {
    if single_thread {
        return (Threads::One, "--single-thread".into());
    }
    if !pipeline && cores < 2 {
        return (Threads::One, format!("{cores} core available"));
    }
    if let (true, Some(handover)) = (pipeline, handover) {
        return (Threads::Two(handover), format!("--pipeline --handover {}", handover.name()));
    }
    let trip = round_trip();
    let handover = handover.unwrap_or(Handover::for_round_trip(trip));
    match (pipeline, trip) {
        (false, None) => (Threads::One, describe(trip, None)),
        (true, _) => (Threads::Two(handover), format!("--pipeline; {}", describe(trip, Some(handover)))),
        (false, Some(_)) => (Threads::Two(handover), describe(trip, Some(handover))),
    }
}

/// A measured round trip and the hand-over it led to, as the log and `floor --pipeline` say them.
pub fn describe(trip: Option<Duration>, handover: Option<Handover>) -> String {
    let measured = match trip {
        Some(trip) => format!("cross-core round trip {} ns", trip.as_nanos()),
        None => "cross-core round trip not measured: the two threads did not run at once".into(),
    };
    match handover {
        Some(handover) => format!("{measured}; {} hand-over", handover.name()),
        None => measured,
    }
}

#[cfg(test)]
mod tests;
