//! libpcap sources. Files are read through `pcap_open_offline` (pcap and pcapng, any link type libpcap
//! knows); live capture opens an interface with the operator's snap length, buffer size, promiscuous and
//! immediate modes. Both can apply a BPF filter.
use std::path::{Path, PathBuf};

/// A frame as libpcap delivered it; `data` is valid until the next read.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Capture timestamp in microseconds since the Unix epoch.
    pub ts_us: u64,
    /// Bytes on the wire (may exceed `data.len()` when the snap length cut the frame).
    pub wire_len: u32,
    pub linktype: i32,
    pub data: &'a [u8],
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("{path}: bad BPF filter {filter:?}: {message}")]
    Filter { path: PathBuf, filter: String, message: String },
    #[error("{path}: read error: {message}")]
    Read { path: PathBuf, message: String },
    #[error("interface {interface}: {message}")]
    Live { interface: String, message: String },
}

fn timestamp_us(header: &pcap::PacketHeader) -> u64 {
    let seconds = u64::try_from(header.ts.tv_sec).unwrap_or(0);
    let micros = u64::try_from(header.ts.tv_usec).unwrap_or(0);
    seconds.saturating_mul(1_000_000).saturating_add(micros)
}

/// One capture file, read in order.
///
/// libpcap reads it. One case libpcap (1.10) refuses and Wireshark reads: a pcapng file whose interfaces
/// differ in snap length or link type ("an interface has a snapshot length ... different from the first
/// interface"). For that case only, reading continues with the pure-Rust pcapng parser of the
/// `pcap-file` crate from where libpcap stopped, with the BPF filter still compiled and run by libpcap.
pub struct FileSource {
    path: PathBuf,
    filter: Option<String>,
    backend: Backend,
    /// Packets delivered so far (to resume after a switch of backend).
    delivered: u64,
}

enum Backend {
    Libpcap { capture: LibpcapFile, linktype: i32 },
    PcapNg(Box<PcapNgFallback>),
}

struct PcapNgFallback {
    reader: pcap_file::pcapng::PcapNgReader<std::io::BufReader<std::fs::File>>,
    /// Per interface: link type, timestamp ticks per second, the filter compiled for that link type.
    interfaces: Vec<(i32, u64, Option<pcap::BpfProgram>)>,
    data: Vec<u8>,
    filter: Option<String>,
}

impl PcapNgFallback {
    /// The next packet that passes the filter; `None` at the end.
    fn next(&mut self, path: &Path) -> Result<Option<Frame<'_>>, CaptureError> {
        use pcap_file::pcapng::Block;
        let read_error = |message: String| CaptureError::Read { path: path.into(), message };
        // Bounded by the file: every turn consumes one block.
        loop {
            let Some(block) = self.reader.next_block() else { return Ok(None) };
            let block = block.map_err(|e| read_error(format!("pcapng: {e}")))?;
            let (interface, ticks, wire_len) = match block {
                Block::SectionHeader(_) => {
                    self.interfaces.clear();
                    continue;
                }
                Block::InterfaceDescription(idb) => {
                    let linktype = i32::try_from(u32::from(idb.linktype)).unwrap_or(-1);
                    let resolution = idb.options.iter().find_map(|o| match o {
                        pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption::IfTsResol(r) => {
                            Some(*r)
                        }
                        _ => None,
                    });
                    let per_second = match resolution {
                        Some(r) if r & 0x80 != 0 => 1u64.checked_shl(u32::from(r & 0x7F)).unwrap_or(0),
                        Some(r) => 10u64.checked_pow(u32::from(r)).unwrap_or(0),
                        None => 1_000_000,
                    };
                    let program = match &self.filter {
                        Some(filter) => Some(
                            pcap::Capture::dead(pcap::Linktype(linktype))
                                .and_then(|dead| dead.compile(filter, true))
                                .map_err(|e| read_error(format!("BPF filter: {e}")))?,
                        ),
                        None => None,
                    };
                    self.interfaces.push((linktype, per_second, program));
                    continue;
                }
                Block::EnhancedPacket(epb) => {
                    self.data.clear();
                    self.data.extend_from_slice(&epb.data);
                    (epb.interface_id as usize, epb.timestamp.as_nanos() as u64, epb.original_len)
                }
                Block::SimplePacket(spb) => {
                    self.data.clear();
                    self.data.extend_from_slice(&spb.data);
                    (0, 0, spb.original_len)
                }
                _ => continue,
            };
            let Some((linktype, per_second, program)) = self.interfaces.get(interface) else {
                return Err(read_error(format!("pcapng: packet on undeclared interface {interface}")));
            };
            if program.as_ref().is_some_and(|p| !p.filter(&self.data)) {
                continue;
            }
            // `ticks` is the raw 64-bit timestamp in the interface's resolution.
            let ts_us =
                if *per_second == 0 { 0 } else { (u128::from(ticks) * 1_000_000 / u128::from(*per_second)) as u64 };
            return Ok(Some(Frame { ts_us, wire_len, linktype: *linktype, data: &self.data }));
        }
    }
}

/// How libpcap reads the file: through our larger stdio buffer, or as `pcap_open_offline` opens it (the
/// floor's plain mode).
enum LibpcapFile {
    Plain(pcap::Capture<pcap::Offline>),
    Buffered(crate::buffered_file::BufferedOffline),
}

impl LibpcapFile {
    fn get(&mut self) -> &mut pcap::Capture<pcap::Offline> {
        match self {
            LibpcapFile::Plain(capture) => capture,
            LibpcapFile::Buffered(buffered) => buffered.capture(),
        }
    }
}

/// The stdio buffer libpcap reads a capture file through (see [`crate::stdio`]). On the 2.15M-frame
/// bench capture (0.95 GB, page cache) the floor took 0.42-1.5 s with stdio's 4 KiB and 0.28-0.42 s with
/// anything from 32 KiB to 4 MiB (no size clearly ahead); 64 KiB stays in L2 beside the pipeline's
/// batches, and the replays were no slower with it than with 1 MiB (benches/RESULTS.md).
pub const FILE_READ_BUFFER: usize = 64 << 10;

/// How [`FileSource::open_with`] has libpcap read the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileReading {
    /// Through a stdio buffer of [`FILE_READ_BUFFER`] bytes.
    Buffered,
    /// Exactly as `pcap_open_offline` opens it: stdio's default buffer (the file system's block size).
    Plain,
}

/// The file name that means standard input, as in most Unix tools and in libpcap itself.
pub const STDIN_NAME: &str = "-";
const STDIN_DEVICE: &str = "/dev/stdin";

const PCAPNG_MAGIC: [u8; 4] = [0x0A, 0x0D, 0x0D, 0x0A];

impl FileSource {
    /// Opens a capture file (or a named pipe, or `-` for standard input), read through the larger stdio
    /// buffer.
    pub fn open(path: &Path, filter: Option<&str>) -> Result<FileSource, CaptureError> {
        FileSource::open_with(path, filter, FileReading::Buffered)
    }

    /// `-` is standard input (a capture piped in: `zcat day.pcap.gz | gtpcharge replay -`).
    pub fn open_with(path: &Path, filter: Option<&str>, reading: FileReading) -> Result<FileSource, CaptureError> {
        let stdin = path == Path::new(STDIN_NAME);
        // The file we open ourselves: standard input by its /dev name (plain mode leaves `-` to libpcap).
        let file = if stdin { Path::new(STDIN_DEVICE) } else { path };
        if stdin && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return Err(CaptureError::Open {
                path: path.into(),
                message: "standard input is a terminal; pipe a capture in (`zcat day.pcap.gz | gtpcharge replay -`)"
                    .into(),
            });
        }
        // libpcap reports a directory or an empty file obscurely; say it plainly first.
        match std::fs::metadata(file) {
            Ok(meta) if meta.is_dir() => {
                return Err(CaptureError::Open { path: path.into(), message: "is a directory".into() })
            }
            Ok(_) => {}
            Err(error) => return Err(CaptureError::Open { path: path.into(), message: error.to_string() }),
        }
        let not_readable = |error: String| CaptureError::Open {
            path: path.into(),
            message: format!("not a readable pcap or pcapng file ({error})"),
        };
        let mut capture = if reading == FileReading::Buffered {
            LibpcapFile::Buffered(
                crate::buffered_file::BufferedOffline::open(file, FILE_READ_BUFFER).map_err(not_readable)?,
            )
        } else {
            LibpcapFile::Plain(pcap::Capture::from_file(path).map_err(|error| not_readable(error.to_string()))?)
        };
        if let Some(filter) = filter {
            let capture = capture.get();
            capture.filter(filter, true).map_err(|error| CaptureError::Filter {
                path: path.into(),
                filter: filter.into(),
                message: error.to_string(),
            })?;
        }
        let linktype = capture.get().get_datalink().0;
        Ok(FileSource {
            path: path.into(),
            filter: filter.map(str::to_owned),
            backend: Backend::Libpcap { capture, linktype },
            delivered: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls `each` for every frame of the file, in order. Returns the number of frames; an error
    /// names the file (frames before it were delivered).
    pub fn for_each(&mut self, mut each: impl FnMut(&Frame<'_>)) -> Result<u64, CaptureError> {
        while self.read(&mut each)? > 0 {}
        Ok(self.delivered)
    }

    /// Hands `each` the next frames of the file, at most [`DISPATCH_FRAMES`], as [`LiveSource::dispatch`]
    /// does for an interface. Returns how many; 0 only at the end of the file. An error names the file
    /// (frames before it were delivered).
    pub fn read(&mut self, mut each: impl FnMut(&Frame<'_>)) -> Result<usize, CaptureError> {
        loop {
            let read = match &mut self.backend {
                Backend::Libpcap { capture, linktype } => {
                    dispatch(capture.get(), *linktype, &self.path, &mut self.delivered, &mut each)
                }
                Backend::PcapNg(fallback) => match fallback.next(&self.path) {
                    Ok(Some(frame)) => {
                        self.delivered += 1;
                        each(&frame);
                        Ok(1)
                    }
                    Ok(None) => Ok(0),
                    Err(error) => Err(error),
                },
            };
            let error = match read {
                Ok(count) => return Ok(count),
                Err(error) => error,
            };
            let Backend::Libpcap { .. } = self.backend else { return Err(error) };
            // Only libpcap's multi-interface limitation switches parsers; any other error (a damaged or
            // hostile file) is reported as it is.
            let multi_interface = matches!(&error, CaptureError::Read { message, .. }
                if message.contains("different from the") && message.contains("first interface"));
            if !multi_interface || !self.is_pcapng() {
                return Err(error);
            }
            let fallback = self.fallback(&error)?;
            self.backend = Backend::PcapNg(Box::new(fallback));
        }
    }

    fn is_pcapng(&self) -> bool {
        // A pipe cannot be read again from its start, which the fallback needs.
        if self.path == Path::new(STDIN_NAME) {
            return false;
        }
        let mut magic = [0u8; 4];
        std::fs::File::open(&self.path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok_and(|()| magic == PCAPNG_MAGIC)
    }

    /// Opens the pcapng parser and skips the packets libpcap already delivered.
    fn fallback(&self, libpcap_error: &CaptureError) -> Result<PcapNgFallback, CaptureError> {
        let read_error = |message: String| CaptureError::Read { path: self.path.clone(), message };
        let file = std::fs::File::open(&self.path).map_err(|e| read_error(e.to_string()))?;
        let reader = pcap_file::pcapng::PcapNgReader::new(std::io::BufReader::new(file))
            .map_err(|e| read_error(format!("{libpcap_error}; pcapng parser: {e}")))?;
        let mut fallback =
            PcapNgFallback { reader, interfaces: Vec::new(), data: Vec::new(), filter: self.filter.clone() };
        for _ in 0..self.delivered {
            if fallback.next(&self.path)?.is_none() {
                break;
            }
        }
        Ok(fallback)
    }
}

/// Frames libpcap hands over per `pcap_dispatch` call, from a file or an interface. `pcap_next_ex`, one
/// call a frame, costs measurably more instructions a frame (callgrind, `benches/instructions.sh`;
/// figures in `benches/RESULTS.md`); 256 frames a call still gives the caller control back every few
/// microseconds.
pub const DISPATCH_FRAMES: usize = 256;

/// Hands up to [`DISPATCH_FRAMES`] frames of a file to `each`; returns how many (0 at the end of the file).
fn dispatch(
    capture: &mut pcap::Capture<pcap::Offline>,
    linktype: i32,
    path: &Path,
    delivered: &mut u64,
    each: &mut impl FnMut(&Frame<'_>),
) -> Result<usize, CaptureError> {
    capture
        .dispatch(Some(DISPATCH_FRAMES), |packet| {
            *delivered += 1;
            each(&frame(&packet, linktype))
        })
        .map_err(|error| CaptureError::Read { path: path.into(), message: error.to_string() })
}

/// A packet libpcap handed over, as a [`Frame`].
#[inline(always)]
fn frame<'a>(packet: &pcap::Packet<'a>, linktype: i32) -> Frame<'a> {
    Frame { ts_us: timestamp_us(packet.header), wire_len: packet.header.len, linktype, data: packet.data }
}

/// Settings of a live capture (a span or mirror port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    pub interface: String,
    pub snaplen: i32,
    pub buffer_size_bytes: i32,
    pub promiscuous: bool,
    pub immediate: bool,
    pub filter: Option<String>,
    /// How long one read waits before returning nothing, so the caller can check for shutdown.
    pub read_timeout_ms: i32,
}

impl Default for LiveConfig {
    fn default() -> Self {
        // Chosen for a mirror port (see the README's "Live capture"): libpcap's memory-mapped ring
        // (TPACKET_V3 on Linux) hands over whole blocks, retired when full or after the read timeout,
        // instead of waking the reader for every packet (immediate mode); 256 MiB holds a burst of a
        // busy link (0.2 s at 10 Gbit/s) while the reader catches up.
        LiveConfig {
            interface: String::new(),
            snaplen: 65_535,
            buffer_size_bytes: 256 << 20,
            promiscuous: true,
            immediate: false,
            filter: None,
            read_timeout_ms: 10,
        }
    }
}

/// libpcap's own counters of a live capture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveStats {
    pub received: u32,
    pub dropped: u32,
    pub interface_dropped: u32,
}

pub struct LiveSource {
    interface: String,
    capture: pcap::Capture<pcap::Active>,
    linktype: i32,
    /// How long one read waits for packets (`LiveConfig::read_timeout_ms`).
    wait_ms: i32,
}

impl LiveSource {
    pub fn open(config: &LiveConfig) -> Result<LiveSource, CaptureError> {
        let live =
            |error: pcap::Error| CaptureError::Live { interface: config.interface.clone(), message: error.to_string() };
        let mut capture = pcap::Capture::from_device(config.interface.as_str())
            .map_err(live)?
            .snaplen(config.snaplen)
            .buffer_size(config.buffer_size_bytes)
            .promisc(config.promiscuous)
            .immediate_mode(config.immediate)
            .timeout(config.read_timeout_ms)
            .open()
            .map_err(live)?;
        if let Some(filter) = &config.filter {
            capture.filter(filter, true).map_err(live)?;
        }
        // Reads never block inside libpcap; `dispatch` waits in `wait::readable` (see there why).
        let capture = capture.setnonblock().map_err(live)?;
        let linktype = capture.get_datalink().0;
        Ok(LiveSource { interface: config.interface.clone(), capture, linktype, wait_ms: config.read_timeout_ms })
    }

    fn error(&self, error: pcap::Error) -> CaptureError {
        CaptureError::Live { interface: self.interface.clone(), message: error.to_string() }
    }

    /// Hands `each` the frames libpcap has ready, at most [`DISPATCH_FRAMES`] (`pcap_dispatch`, as files
    /// are read); when none are, waits up to the read timeout for some. Returns how many, 0 when the
    /// wait ended with nothing to deliver, so the caller sees a stop within the read timeout.
    pub fn dispatch(&mut self, mut each: impl FnMut(&Frame<'_>)) -> Result<usize, CaptureError> {
        use std::os::fd::AsRawFd;
        let linktype = self.linktype;
        let mut read = |capture: &mut pcap::Capture<pcap::Active>| {
            capture.dispatch(Some(DISPATCH_FRAMES), |packet| each(&frame(&packet, linktype)))
        };
        match read(&mut self.capture) {
            Ok(0) => {}
            Ok(count) => return Ok(count),
            Err(error) => return Err(self.error(error)),
        }
        if !crate::wait::readable(self.capture.as_raw_fd(), self.wait_ms) {
            return Ok(0);
        }
        read(&mut self.capture).map_err(|error| self.error(error))
    }

    pub fn stats(&mut self) -> Result<LiveStats, CaptureError> {
        let stat = self.capture.stats().map_err(|error| self.error(error))?;
        Ok(LiveStats { received: stat.received, dropped: stat.dropped, interface_dropped: stat.if_dropped })
    }
}

/// Writes frames onto an interface through libpcap (`pcap_sendpacket`): the project's own way to play a
/// capture onto a test network (a veth pair in a namespace) without tcpreplay.
pub struct Injector {
    interface: String,
    capture: pcap::Capture<pcap::Active>,
}

impl Injector {
    pub fn open(interface: &str) -> Result<Injector, CaptureError> {
        let live = |error: pcap::Error| CaptureError::Live { interface: interface.into(), message: error.to_string() };
        let capture = pcap::Capture::from_device(interface).map_err(live)?.snaplen(65_535).open().map_err(live)?;
        Ok(Injector { interface: interface.into(), capture })
    }

    pub fn send(&mut self, frame: &[u8]) -> Result<(), CaptureError> {
        self.capture
            .sendpacket(frame)
            .map_err(|error| CaptureError::Live { interface: self.interface.clone(), message: error.to_string() })
    }
}
