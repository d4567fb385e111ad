//! Evidence for every charge (`--evidence-dir DIR`): for each sighting, a pcap that Wireshark opens with
//! the GTP-C exchanges that created and last updated the session the token was attributed to, and the
//! packet that carried the token; beside it a JSON file that names each packet's role and its frame in
//! the original capture. `gtpcharge explain FILE` reads them back.
//!
//! Nothing of this lives in the session table (its memory per session is a budget). The signalling is
//! kept on disk, in a bounded, rotating store under `DIR/.work/`:
//! - `signalling-N`: every GTP-C frame as it was captured (frame number, time, link type, bytes), in
//!   segments; an in-memory index (frame number → segment, offset; 24 bytes a GTP-C frame) covers the
//!   segments still on disk.
//! - `chains-N`: one fixed-size record per session event (session id and the frame numbers of its Create
//!   exchange and last Update exchange). The session keeps the record's number as its evidence tag, a
//!   `u32` that fits in its record's padding.
//!
//! Every bound has a counter: segments rotated out, evidence that referred to them, files removed to
//! keep the directory under its cap. The work store is the run's own and starts empty; the evidence
//! files stay.
use anyhow::{Context, Result};
use gtpcharge_capture::{Frame, PcapWriter};
use gtpcharge_correlate::{SessionEvent, Sighting};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Segments each store keeps at most.
const SEGMENTS_MAX: u64 = 8;
/// A chain record: session id, then the request and response frames of the Create and last Update.
const CHAIN_RECORD: usize = 40;
const WORK_DIR: &str = ".work";

/// Counters of the evidence store (in the summary and on `/metrics`).
#[derive(Debug, Clone, Default)]
pub struct EvidenceStats {
    pub files_written: u64,
    pub files_removed: u64,
    pub signalling_frames: u64,
    pub signalling_segments_rotated: u64,
    /// A frame the evidence needed was in a segment already rotated out.
    pub signalling_expired: u64,
    /// A session's chain record was already rotated out.
    pub chain_expired: u64,
    /// A frame of another link type than the token's (one pcap file has one link type).
    pub linktype_mixed: u64,
    pub errors: u64,
}

/// Append-only segment files of one kind, oldest removed beyond `SEGMENTS_MAX`.
struct Segments {
    dir: PathBuf,
    prefix: &'static str,
    segment_bytes: u64,
    first: u64,
    current: u64,
    written: u64,
    writer: BufWriter<File>,
}

impl Segments {
    fn open(dir: &Path, prefix: &'static str, segment_bytes: u64) -> Result<Segments> {
        let writer = BufWriter::with_capacity(1 << 16, create_private(&dir.join(format!("{prefix}-0")))?);
        Ok(Segments { dir: dir.to_path_buf(), prefix, segment_bytes, first: 0, current: 0, written: 0, writer })
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("{}-{segment}", self.prefix))
    }

    /// Appends one record; returns (segment, offset) and the segments removed to make room.
    fn append(&mut self, parts: &[&[u8]]) -> Result<((u64, u64), u64)> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let mut removed = 0;
        if self.written + len > self.segment_bytes && self.written > 0 {
            self.writer.flush()?;
            self.current += 1;
            self.writer = BufWriter::with_capacity(1 << 16, create_private(&self.path(self.current))?);
            self.written = 0;
            while self.current - self.first >= SEGMENTS_MAX {
                let _ = std::fs::remove_file(self.path(self.first));
                self.first += 1;
                removed += 1;
            }
        }
        let at = (self.current, self.written);
        for part in parts {
            self.writer.write_all(part)?;
        }
        self.written += len;
        Ok((at, removed))
    }

    /// Reads `len` bytes at a position; `None` when its segment was rotated out.
    fn read(&mut self, (segment, offset): (u64, u64), len: usize) -> Result<Option<Vec<u8>>> {
        if segment < self.first || segment > self.current {
            return Ok(None);
        }
        if segment == self.current {
            self.writer.flush()?;
        }
        let file = File::open(self.path(segment))?;
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, offset)?;
        Ok(Some(bytes))
    }
}

/// The frames of one session's evidence, by role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Chain {
    session_id: u64,
    /// Create request, Create response, last Update request, last Update response (0: none).
    frames: [u64; 4],
}

impl Chain {
    fn to_bytes(self) -> [u8; CHAIN_RECORD] {
        let mut out = [0u8; CHAIN_RECORD];
        for (slot, value) in out.chunks_exact_mut(8).zip([self.session_id].iter().chain(&self.frames)) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> Chain {
        let mut words = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        let mut next = || words.next().unwrap_or(0);
        Chain { session_id: next(), frames: [next(), next(), next(), next()] }
    }
}

const ROLES: [&str; 4] = ["create-request", "create-response", "update-request", "update-response"];

/// Bytes of recent user-plane frames kept (a ring), so that a token split over TCP segments or carried
/// in a fragmented outer packet has all its packets in its evidence.
const RECENT_BYTES: u64 = 4 << 20;
/// Earlier packets of the token's tunnel put in its evidence at most, and how far back.
const EARLIER_MAX: usize = 3;
const EARLIER_US: u64 = 10_000_000;

/// Where a user-plane frame went: the tunnel (GSN address, TEID) of a G-PDU, or `None` for a fragment
/// still being reassembled.
pub type TunnelOf = Option<(std::net::IpAddr, u32)>;

struct RecentFrame {
    number: u64,
    tunnel: TunnelOf,
    ts_us: u64,
    linktype: i32,
    /// Position in the ring as a running count of bytes (the ring index is this modulo its size).
    at: u64,
    len: usize,
}

/// Recent user-plane frames in one preallocated byte ring: no allocation per frame.
struct Recent {
    ring: Vec<u8>,
    frames: VecDeque<RecentFrame>,
    next: u64,
}

impl Recent {
    fn new() -> Recent {
        Recent { ring: vec![0; RECENT_BYTES as usize], frames: VecDeque::new(), next: 0 }
    }

    fn keep(&mut self, number: u64, tunnel: TunnelOf, frame: &Frame<'_>) {
        let size = self.ring.len() as u64;
        let len = frame.data.len();
        if len as u64 > size / 16 {
            return;
        }
        // A frame never wraps: it starts again at the ring's start when it would not fit.
        let mut at = self.next;
        if at % size + len as u64 > size {
            at += size - at % size;
        }
        let end = at + len as u64;
        while self.frames.front().is_some_and(|f| f.at < end.saturating_sub(size)) {
            self.frames.pop_front();
        }
        let start = (at % size) as usize;
        if let Some(slot) = self.ring.get_mut(start..start + len) {
            slot.copy_from_slice(frame.data);
            self.frames.push_back(RecentFrame {
                number,
                tunnel,
                ts_us: frame.ts_us,
                linktype: frame.linktype,
                at,
                len,
            });
        }
        self.next = end;
    }

    fn bytes(&self, frame: &RecentFrame) -> &[u8] {
        let start = (frame.at % self.ring.len() as u64) as usize;
        self.ring.get(start..start + frame.len).unwrap_or_default()
    }
}

pub struct Evidence {
    dir: PathBuf,
    signalling: Segments,
    /// (frame number, segment, offset) of every GTP-C frame still on disk, in frame order.
    index: VecDeque<(u64, u64, u64)>,
    chains: Segments,
    /// Chain records written so far; a session's tag is its record's number (from 1) in 32 bits.
    chain_count: u64,
    /// Evidence files in the directory (oldest first) and their bytes, against `files_max`.
    files: VecDeque<(PathBuf, u64)>,
    files_bytes: u64,
    files_max: u64,
    recent: Recent,
    pub stats: EvidenceStats,
}

impl Evidence {
    /// Opens the evidence directory (created owner-only), with `max_bytes` for all of it: a quarter each
    /// for the two work stores, half for the evidence files.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Evidence> {
        create_private_dir(dir)?;
        let work = dir.join(WORK_DIR);
        if work.exists() {
            std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
        }
        create_private_dir(&work)?;
        let segment_bytes = (max_bytes / 4 / SEGMENTS_MAX).max(1 << 16);
        // Chain segments hold whole records, so a record's number says where it is.
        let chain_segment = (segment_bytes / CHAIN_RECORD as u64).max(1) * CHAIN_RECORD as u64;
        let mut files: Vec<(PathBuf, u64, std::time::SystemTime)> = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            let meta = entry.metadata()?;
            if meta.is_file() && matches!(path.extension().and_then(|e| e.to_str()), Some("pcap" | "json")) {
                files.push((path, meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH)));
            }
        }
        files.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
        let files_bytes = files.iter().map(|f| f.1).sum();
        Ok(Evidence {
            dir: dir.to_path_buf(),
            signalling: Segments::open(&work, "signalling", segment_bytes)?,
            index: VecDeque::new(),
            chains: Segments::open(&work, "chains", chain_segment)?,
            chain_count: 0,
            files: files.into_iter().map(|(p, len, _)| (p, len)).collect(),
            files_bytes,
            files_max: max_bytes / 2,
            recent: Recent::new(),
            stats: EvidenceStats::default(),
        })
    }

    /// Keeps one GTP-C frame in the signalling store.
    pub fn keep_signalling(&mut self, number: u64, frame: &Frame<'_>) {
        let len = u32::try_from(frame.data.len()).unwrap_or(u32::MAX);
        let head =
            [&number.to_le_bytes()[..], &frame.ts_us.to_le_bytes(), &frame.linktype.to_le_bytes(), &len.to_le_bytes()]
                .concat();
        match self.signalling.append(&[&head, frame.data]) {
            Ok(((segment, offset), removed)) => {
                self.stats.signalling_frames += 1;
                self.stats.signalling_segments_rotated += removed;
                let first = self.signalling.first;
                while self.index.front().is_some_and(|&(_, s, _)| s < first) {
                    self.index.pop_front();
                }
                self.index.push_back((number, segment, offset));
            }
            Err(error) => self.error("keeping a signalling frame", &error),
        }
    }

    /// Keeps a user-plane frame for a while (see [`RECENT_BYTES`]).
    pub fn keep_user_plane(&mut self, number: u64, tunnel: TunnelOf, frame: &Frame<'_>) {
        self.recent.keep(number, tunnel, frame);
    }

    /// Earlier frames that carried part of the token: the last few frames of the same inner flow in the
    /// same tunnel, and the other fragments of its outer packet.
    fn earlier(
        &self,
        sighting: &Sighting,
        number: u64,
        tunnel: TunnelOf,
        frame: &Frame<'_>,
    ) -> Vec<(&'static str, u64, u64, Vec<u8>)> {
        let mut out = Vec::new();
        let fragment_of = gtpcharge_capture::decode::ipv4_fragment_of;
        if let Some(key) = fragment_of(frame.linktype, frame.data) {
            for f in self.recent.frames.iter().filter(|f| f.number < number && f.tunnel.is_none()) {
                let bytes = self.recent.bytes(f);
                if f.linktype == frame.linktype && fragment_of(f.linktype, bytes) == Some(key) {
                    out.push(("fragment", f.number, f.ts_us, bytes.to_vec()));
                }
            }
        }
        if tunnel.is_some() {
            let since = frame.ts_us.saturating_sub(EARLIER_US);
            let mut decoder = gtpcharge_capture::Decoder::new(&gtpcharge_capture::DecoderConfig::default());
            let same_flow = self.recent.frames.iter().rev().filter(|f| {
                f.number < number
                    && f.tunnel == tunnel
                    && f.ts_us >= since
                    && f.linktype == frame.linktype
                    && inner_flow(&mut decoder, f, self.recent.bytes(f))
                        == Some((sighting.source, sighting.destination))
            });
            for f in same_flow.take(EARLIER_MAX) {
                out.push(("earlier-segment", f.number, f.ts_us, self.recent.bytes(f).to_vec()));
            }
        }
        out
    }

    /// Records the exchange of a session event; returns the session's new evidence tag.
    pub fn chain(&mut self, event: &SessionEvent, created: bool) -> Option<u32> {
        let previous = if created { None } else { self.read_chain(event.evidence_tag, event.identity.session_id) };
        let mut chain = previous.unwrap_or(Chain { session_id: event.identity.session_id, frames: [0; 4] });
        if created {
            chain.frames = [event.frames[0], event.frames[1], 0, 0];
        } else {
            chain.frames[2] = event.frames[0];
            chain.frames[3] = event.frames[1];
        }
        match self.chains.append(&[&chain.to_bytes()]) {
            Ok((_, removed)) => {
                self.stats.signalling_segments_rotated += removed;
                self.chain_count += 1;
                // Tags are the record number (from 1) in 32 bits; 0 stays "none".
                Some((self.chain_count as u32).max(1))
            }
            Err(error) => {
                self.error("recording a session's evidence", &error);
                None
            }
        }
    }

    fn read_chain(&mut self, tag: u32, session_id: u64) -> Option<Chain> {
        if tag == 0 {
            return None;
        }
        // The newest record whose number has these low 32 bits.
        let back = u64::from((self.chain_count as u32).wrapping_sub(tag));
        let number = self.chain_count.checked_sub(back).filter(|&n| n >= 1)?;
        let per_segment = self.chains.segment_bytes / CHAIN_RECORD as u64;
        let index = number - 1;
        let at = (index / per_segment, (index % per_segment) * CHAIN_RECORD as u64);
        match self.chains.read(at, CHAIN_RECORD) {
            Ok(Some(bytes)) => Some(Chain::from_bytes(&bytes)).filter(|c| c.session_id == session_id).or_else(|| {
                self.stats.chain_expired += 1;
                None
            }),
            Ok(None) => {
                self.stats.chain_expired += 1;
                None
            }
            Err(error) => {
                self.error("reading a session's evidence", &error);
                None
            }
        }
    }

    /// A signalling frame by number: (time, link type, bytes).
    fn signalling_frame(&mut self, number: u64) -> Option<(u64, i32, Vec<u8>)> {
        let at = self.index.binary_search_by_key(&number, |&(n, _, _)| n).ok()?;
        let &(_, segment, offset) = self.index.get(at)?;
        let head = match self.signalling.read((segment, offset), 24) {
            Ok(Some(head)) => head,
            Ok(None) => return None,
            Err(error) => {
                self.error("reading a signalling frame", &error);
                return None;
            }
        };
        let word = |at: usize| head.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        let half = |at: usize| head.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
        let (ts_us, linktype, len) = (word(8)?, half(16)? as i32, half(20)? as usize);
        match self.signalling.read((segment, offset + 24), len) {
            Ok(Some(bytes)) => Some((ts_us, linktype, bytes)),
            Ok(None) => None,
            Err(error) => {
                self.error("reading a signalling frame", &error);
                None
            }
        }
    }

    /// Writes the evidence of one sighting; returns the pcap's file name.
    pub fn write(&mut self, sighting: &Sighting, number: u64, tunnel: TunnelOf, frame: &Frame<'_>) -> Option<String> {
        let chain = self.read_chain(sighting.evidence_tag, sighting.identity.session_id);
        let stem = format!(
            "{}-{}-f{number}",
            crate::jsonl::rfc3339(sighting.ts_us).replace([':', '-'], ""),
            sighting.token.to_string().get(..12).unwrap_or("token")
        );
        let pcap_path = self.dir.join(format!("{stem}.pcap"));
        let mut packets: Vec<(&str, u64, u64, Vec<u8>)> = Vec::new();
        let mut seen = Vec::new();
        for (role, &frame_number) in ROLES.iter().zip(chain.map(|c| c.frames).unwrap_or_default().iter()) {
            if frame_number == 0 || seen.contains(&frame_number) {
                continue;
            }
            seen.push(frame_number);
            match self.signalling_frame(frame_number) {
                Some((ts_us, linktype, bytes)) if linktype == frame.linktype => {
                    packets.push((role, frame_number, ts_us, bytes))
                }
                Some(_) => self.stats.linktype_mixed += 1,
                None => self.stats.signalling_expired += 1,
            }
        }
        if chain.is_none() {
            self.stats.chain_expired += 1;
        }
        packets.extend(self.earlier(sighting, number, tunnel, frame));
        packets.sort_by_key(|p| p.1);
        packets.dedup_by_key(|p| p.1);
        packets.push(("token", number, frame.ts_us, frame.data.to_vec()));
        let written = (|| -> Result<u64> {
            let mut writer = PcapWriter::create(&pcap_path, frame.linktype)?;
            for (_, _, ts_us, bytes) in &packets {
                writer.write(*ts_us, bytes);
            }
            writer.finish()?;
            std::fs::set_permissions(&pcap_path, std::fs::Permissions::from_mode(0o600))?;
            let side = serde_json::json!({
                "token": sighting.token.to_string(),
                "msisdn": sighting.identity.msisdn.to_string(),
                "imsi": sighting.identity.imsi.to_string(),
                "ue_ip": sighting.identity.ue_ip().map(|ip| ip.to_string()),
                "where": sighting.carrier.as_str(),
                "session_id": sighting.identity.session_id,
                "packets": packets.iter().map(|(role, number, ts_us, _)| serde_json::json!({
                    "role": role, "frame": number, "ts": crate::jsonl::rfc3339(*ts_us),
                })).collect::<Vec<_>>(),
            });
            let json_path = pcap_path.with_extension("json");
            let mut file = create_private(&json_path)?;
            writeln!(file, "{side:#}")?;
            Ok(std::fs::metadata(&pcap_path)?.len() + std::fs::metadata(&json_path)?.len())
        })();
        match written {
            Ok(bytes) => {
                self.stats.files_written += 1;
                self.files.push_back((pcap_path.clone(), bytes));
                self.files_bytes += bytes;
                while self.files_bytes > self.files_max && self.files.len() > 1 {
                    let Some((old, len)) = self.files.pop_front() else { break };
                    let _ = std::fs::remove_file(&old);
                    let _ = std::fs::remove_file(old.with_extension("json"));
                    self.files_bytes = self.files_bytes.saturating_sub(len);
                    self.stats.files_removed += 1;
                    tracing::warn!(
                        removed = %old.display(),
                        "evidence directory over its size cap (--evidence-max-bytes): the oldest evidence was removed"
                    );
                }
                pcap_path.file_name().map(|n| n.to_string_lossy().into_owned())
            }
            Err(error) => {
                self.error("writing evidence", &error);
                None
            }
        }
    }

    fn error(&mut self, what: &str, error: &dyn std::fmt::Display) {
        self.stats.errors += 1;
        if self.stats.errors <= 10 || self.stats.errors.is_power_of_two() {
            tracing::error!(errors = self.stats.errors, "evidence: {what}: {error}");
        }
    }

    /// One summary line.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        format!(
            "evidence files {} (removed for the cap {})  signalling frames kept {}  segments rotated {}  \
             expired: signalling {} chains {}  link type mixed {}  errors {}",
            s.files_written,
            s.files_removed,
            s.signalling_frames,
            s.signalling_segments_rotated,
            s.signalling_expired,
            s.chain_expired,
            s.linktype_mixed,
            s.errors
        )
    }
}

/// The inner (source, destination) of a G-PDU frame.
fn inner_flow(
    decoder: &mut gtpcharge_capture::Decoder,
    frame: &RecentFrame,
    bytes: &[u8],
) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
    use gtpcharge_correlate::wire::{gtpu, gtpv1};
    let payload = decoder.decode(frame.linktype, frame.ts_us, bytes).ok()??.payload;
    let header = gtpv1::Header::parse(payload).ok()?;
    let packet = gtpu::inner_packet(header.body).ok()?;
    let (source_port, destination_port) = match packet.transport {
        gtpu::Transport::Tcp { source_port, destination_port, .. }
        | gtpu::Transport::Udp { source_port, destination_port, .. } => (source_port, destination_port),
        gtpu::Transport::Other => return None,
    };
    Some((
        std::net::SocketAddr::new(packet.source, source_port),
        std::net::SocketAddr::new(packet.destination, destination_port),
    ))
}

fn create_private(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_records_round_trip() {
        let chain = Chain { session_id: 7 << 32 | 3, frames: [1, 2, 0, u64::MAX] };
        assert_eq!(Chain::from_bytes(&chain.to_bytes()), chain);
    }

    #[test]
    fn segments_rotate_and_forget_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut segments = Segments::open(dir.path(), "t", 100).unwrap();
        let mut positions = Vec::new();
        let mut removed = 0;
        for n in 0u8..40 {
            let (at, r) = segments.append(&[&[n; 30]]).unwrap();
            positions.push(at);
            removed += r;
        }
        // 3 records a segment: 14 segments written (0 to 13), the newest 8 kept.
        assert_eq!((segments.first, segments.current, removed), (6, 13, 6));
        assert_eq!(segments.read(positions[39], 30).unwrap(), Some(vec![39; 30]));
        assert_eq!(segments.read(positions[18], 30).unwrap(), Some(vec![18; 30]));
        assert_eq!(segments.read(positions[17], 30).unwrap(), None, "rotated out");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 8);
    }
}
