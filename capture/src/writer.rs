//! Writing frames to a pcap file through libpcap (`pcap_dump`), with the link type they were captured
//! with, so Wireshark and tshark open the result as they would the original capture.
use std::path::Path;

pub struct PcapWriter {
    save: pcap::Savefile,
}

impl PcapWriter {
    /// Creates (or truncates) `path` for frames of `linktype` (a DLT number).
    pub fn create(path: &Path, linktype: i32) -> Result<PcapWriter, pcap::Error> {
        let dead = pcap::Capture::dead(pcap::Linktype(linktype))?;
        Ok(PcapWriter { save: dead.savefile(path)? })
    }

    pub fn write(&mut self, ts_us: u64, data: &[u8]) {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let ts = libc::timeval { tv_sec: (ts_us / 1_000_000) as _, tv_usec: (ts_us % 1_000_000) as _ };
        let header = pcap::PacketHeader { ts, caplen: len, len };
        self.save.write(&pcap::Packet::new(&header, data));
    }

    /// Flushes what libpcap buffered; the file is complete when this returns `Ok`.
    pub fn finish(mut self) -> Result<(), pcap::Error> {
        self.save.flush()
    }
}
