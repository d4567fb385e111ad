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
pub struct FileSource {
    path: PathBuf,
    capture: pcap::Capture<pcap::Offline>,
    linktype: i32,
}

impl FileSource {
    pub fn open(path: &Path, filter: Option<&str>) -> Result<FileSource, CaptureError> {
        // libpcap reports a directory or an empty file obscurely; say it plainly first.
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                return Err(CaptureError::Open { path: path.into(), message: "is a directory".into() })
            }
            Ok(_) => {}
            Err(error) => return Err(CaptureError::Open { path: path.into(), message: error.to_string() }),
        }
        let mut capture = pcap::Capture::from_file(path).map_err(|error| CaptureError::Open {
            path: path.into(),
            message: format!("not a readable pcap or pcapng file ({error})"),
        })?;
        if let Some(filter) = filter {
            capture.filter(filter, true).map_err(|error| CaptureError::Filter {
                path: path.into(),
                filter: filter.into(),
                message: error.to_string(),
            })?;
        }
        let linktype = capture.get_datalink().0;
        Ok(FileSource { path: path.into(), capture, linktype })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next frame, `Ok(None)` at the end of the file.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, CaptureError> {
        match self.capture.next_packet() {
            Ok(packet) => Ok(Some(Frame {
                ts_us: timestamp_us(packet.header),
                wire_len: packet.header.len,
                linktype: self.linktype,
                data: packet.data,
            })),
            Err(pcap::Error::NoMorePackets) => Ok(None),
            Err(error) => Err(CaptureError::Read { path: self.path.clone(), message: error.to_string() }),
        }
    }
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
        LiveConfig {
            interface: String::new(),
            snaplen: 65_535,
            buffer_size_bytes: 64 << 20,
            promiscuous: true,
            immediate: true,
            filter: None,
            read_timeout_ms: 100,
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
}

impl LiveSource {
    pub fn open(config: &LiveConfig) -> Result<LiveSource, CaptureError> {
        let live = |error: pcap::Error| CaptureError::Live { interface: config.interface.clone(), message: error.to_string() };
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
        let linktype = capture.get_datalink().0;
        Ok(LiveSource { interface: config.interface.clone(), capture, linktype })
    }

    /// The next frame; `Ok(None)` when the read timed out with nothing to deliver.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, CaptureError> {
        match self.capture.next_packet() {
            Ok(packet) => Ok(Some(Frame {
                ts_us: timestamp_us(packet.header),
                wire_len: packet.header.len,
                linktype: self.linktype,
                data: packet.data,
            })),
            Err(pcap::Error::TimeoutExpired) => Ok(None),
            Err(error) => Err(CaptureError::Live { interface: self.interface.clone(), message: error.to_string() }),
        }
    }

    pub fn stats(&mut self) -> Result<LiveStats, CaptureError> {
        let stat = self
            .capture
            .stats()
            .map_err(|error| CaptureError::Live { interface: self.interface.clone(), message: error.to_string() })?;
        Ok(LiveStats { received: stat.received, dropped: stat.dropped, interface_dropped: stat.if_dropped })
    }
}
