//! The two-stage pipeline: a reader thread runs libpcap and the link/IP/UDP decode (with outer
//! reassembly) and hands batches of decoded datagrams, in capture order, to the correlating thread over
//! a bounded crossbeam channel. Subscriber state is never split: all of GTP-C and GTP-U is correlated by
//! one thread, in the order the packets were captured, so the events are exactly those of the
//! single-threaded run (a test compares them byte for byte).
//!
//! Bounds and policy: 16 batches in flight of at most 512 datagrams or 512 KiB each, recycled through a
//! return channel (no allocation per batch in steady state). Policy **block**: a reader ahead of the
//! correlator waits; live, the kernel ring then fills and libpcap's own drop counter shows it.
use gtpcharge_capture::{CaptureError, Decoder, DecoderConfig, FileSource, Frame, LiveSource, LiveStats};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BATCHES_IN_FLIGHT: usize = 16;
const BATCH_DATAGRAMS_MAX: usize = 512;
const BATCH_BYTES_MAX: usize = 512 << 10;
/// A live batch is handed over after this long even when not full (latency bound).
const BATCH_AGE_MAX: Duration = Duration::from_millis(20);

enum Item {
    Datagram { ts_us: u64, source: SocketAddr, destination: SocketAddr, start: usize, end: usize },
    Drop(&'static str),
}

/// What the correlating thread receives: decoded datagrams and the frame counters they came from.
#[derive(Default)]
pub struct Batch {
    pub frames: u64,
    pub wire_bytes: u64,
    pub fragments_held: u64,
    /// Bytes of capture file consumed so far (for the progress bar).
    pub position: u64,
    items: Vec<Item>,
    bytes: Vec<u8>,
}

/// One decoded item of a batch, borrowed from it.
pub enum Decoded<'a> {
    Datagram { ts_us: u64, source: SocketAddr, destination: SocketAddr, payload: &'a [u8] },
    Drop(&'static str),
}

impl Batch {
    fn clear(&mut self) {
        self.frames = 0;
        self.wire_bytes = 0;
        self.fragments_held = 0;
        self.items.clear();
        self.bytes.clear();
    }

    fn is_full(&self) -> bool {
        self.items.len() >= BATCH_DATAGRAMS_MAX || self.bytes.len() >= BATCH_BYTES_MAX
    }

    fn is_empty(&self) -> bool {
        self.frames == 0 && self.items.is_empty()
    }

    fn push(&mut self, decoder: &mut Decoder, frame: &Frame<'_>) {
        self.frames += 1;
        self.wire_bytes += u64::from(frame.wire_len);
        match decoder.decode(frame.linktype, frame.ts_us, frame.data) {
            Ok(Some(udp)) => {
                let start = self.bytes.len();
                self.bytes.extend_from_slice(udp.payload);
                self.items.push(Item::Datagram {
                    ts_us: frame.ts_us,
                    source: udp.source,
                    destination: udp.destination,
                    start,
                    end: self.bytes.len(),
                });
            }
            Ok(None) => self.fragments_held += 1,
            Err(reason) => self.items.push(Item::Drop(reason)),
        }
        for _ in 0..decoder.take_fragment_timeouts() {
            self.items.push(Item::Drop("fragment-timeout"));
        }
    }

    pub fn decoded(&self) -> impl Iterator<Item = Decoded<'_>> {
        self.items.iter().map(|item| match item {
            Item::Datagram { ts_us, source, destination, start, end } => Decoded::Datagram {
                ts_us: *ts_us,
                source: *source,
                destination: *destination,
                payload: self.bytes.get(*start..*end).unwrap_or_default(),
            },
            Item::Drop(reason) => Decoded::Drop(reason),
        })
    }
}

/// The reader side's handles: batches come out of `batches`; used ones go back through `recycle`.
pub struct Reader<T> {
    pub batches: crossbeam_channel::Receiver<Batch>,
    recycle: crossbeam_channel::Sender<Batch>,
    thread: std::thread::JoinHandle<T>,
}

impl<T> Reader<T> {
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

struct Lanes {
    full: crossbeam_channel::Sender<Batch>,
    empty: crossbeam_channel::Receiver<Batch>,
}

impl Lanes {
    fn next_empty(&self) -> Option<Batch> {
        self.empty.recv().ok().map(|mut b| {
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
pub fn read_files(sources: Vec<FileSource>, decoder: DecoderConfig) -> std::io::Result<Reader<Vec<CaptureError>>> {
    spawn_reader(move |lanes| {
        let mut decoder = Decoder::new(&decoder);
        let mut errors = Vec::new();
        let Some(mut batch) = lanes.next_empty() else { return errors };
        let mut position = 0u64;
        for mut source in sources {
            let result = source.for_each(|frame| {
                position += 16 + frame.data.len() as u64;
                batch.push(&mut decoder, frame);
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
    decoder: DecoderConfig,
    stop: Arc<AtomicBool>,
    libpcap: Arc<Mutex<Option<LiveStats>>>,
) -> std::io::Result<Reader<Option<CaptureError>>> {
    spawn_reader(move |lanes| {
        let mut decoder = Decoder::new(&decoder);
        let mut batch = lanes.next_empty()?;
        let mut started = Instant::now();
        let mut failure = None;
        let refresh = |source: &mut LiveSource| {
            if let Ok(mut shared) = libpcap.lock() {
                *shared = source.stats().ok();
            }
        };
        while !stop.load(Ordering::SeqCst) {
            match source.next_frame() {
                Ok(Some(frame)) => batch.push(&mut decoder, &frame),
                Ok(None) => {}
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
            if batch.is_full() || (!batch.is_empty() && started.elapsed() >= BATCH_AGE_MAX) {
                refresh(&mut source);
                lanes.hand_over(&mut batch);
                started = Instant::now();
            }
        }
        refresh(&mut source);
        if !batch.is_empty() {
            let _ = lanes.full.send(batch);
        }
        failure
    })
}
