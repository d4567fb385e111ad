//! Bounded reassembly of fragmented outer IP packets. GTP adds 36+ bytes to a full-size subscriber
//! packet, so on Gn the outer IPv4 packet is often fragmented; the GTP header is only in the first
//! fragment and the UDP length covers all of them.
//!
//! Hole tracking is etherparse's [`IpDefragBuf`]; this module adds what etherparse's own pool leaves
//! out (its docs say it is not safe against memory exhaustion): at most `packets_max` packets in
//! progress, each at most 64 KiB, dropped `timeout_us` after their first fragment, and a pool of
//! reusable buffers so steady state does not allocate.
use crate::undecoded::Undecoded;
use etherparse::defrag::{IpDefragBuf, IpFragRange};
use etherparse::{IpFragOffset, IpNumber};
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub identification: u32,
    pub protocol: u8,
}

struct InProgress {
    buffer: IpDefragBuf,
    first_ts_us: u64,
}

/// What adding a fragment did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// More fragments are needed.
    Held,
    /// The packet is whole: its payload (the transport header and data).
    Complete(Vec<u8>),
}

pub struct Reassembler {
    in_progress: HashMap<FragmentKey, InProgress>,
    spare_data: Vec<Vec<u8>>,
    spare_sections: Vec<Vec<IpFragRange>>,
    packets_max: usize,
    timeout_us: u64,
    /// Packets dropped because they did not complete in time.
    pub timed_out: u64,
}

const SPARE_MAX: usize = 64;

impl Reassembler {
    pub fn new(packets_max: usize, timeout_us: u64) -> Reassembler {
        Reassembler {
            in_progress: HashMap::new(),
            spare_data: Vec::new(),
            spare_sections: Vec::new(),
            packets_max,
            timeout_us,
            timed_out: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.in_progress.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_progress.is_empty()
    }

    /// Adds one fragment. Errors are counter reasons.
    pub fn add(
        &mut self,
        ts_us: u64,
        key: FragmentKey,
        offset: IpFragOffset,
        more_fragments: bool,
        payload: &[u8],
    ) -> Result<Outcome, Undecoded> {
        self.expire(ts_us);
        if !self.in_progress.contains_key(&key) {
            if self.in_progress.len() >= self.packets_max {
                return Err(Undecoded::FragmentTableFull);
            }
            let data = self.spare_data.pop().unwrap_or_default();
            let sections = self.spare_sections.pop().unwrap_or_default();
            let buffer = IpDefragBuf::new(IpNumber(key.protocol), data, sections);
            self.in_progress.insert(key, InProgress { buffer, first_ts_us: ts_us });
        }
        let Some(entry) = self.in_progress.get_mut(&key) else { return Err(Undecoded::FragmentTableFull) };
        if entry.buffer.add(offset, more_fragments, payload).is_err() {
            if let Some(entry) = self.in_progress.remove(&key) {
                self.recycle_buffer(entry.buffer);
            }
            return Err(Undecoded::FragmentInvalid);
        }
        if !entry.buffer.is_complete() {
            return Ok(Outcome::Held);
        }
        match self.in_progress.remove(&key) {
            Some(entry) => {
                let (data, sections) = entry.buffer.take_bufs();
                self.give_sections(sections);
                Ok(Outcome::Complete(data))
            }
            None => Ok(Outcome::Held),
        }
    }

    /// Returns a completed packet's buffer for reuse.
    pub fn recycle(&mut self, mut data: Vec<u8>) {
        if self.spare_data.len() < SPARE_MAX {
            data.clear();
            self.spare_data.push(data);
        }
    }

    fn give_sections(&mut self, mut sections: Vec<IpFragRange>) {
        if self.spare_sections.len() < SPARE_MAX {
            sections.clear();
            self.spare_sections.push(sections);
        }
    }

    fn recycle_buffer(&mut self, buffer: IpDefragBuf) {
        let (data, sections) = buffer.take_bufs();
        self.recycle(data);
        self.give_sections(sections);
    }

    /// Drops packets whose first fragment is older than the timeout.
    pub fn expire(&mut self, now_us: u64) {
        let cutoff = now_us.saturating_sub(self.timeout_us);
        if self.in_progress.values().all(|e| e.first_ts_us >= cutoff) {
            return;
        }
        let expired: Vec<FragmentKey> =
            self.in_progress.iter().filter(|(_, e)| e.first_ts_us < cutoff).map(|(k, _)| *k).collect();
        for key in expired {
            if let Some(entry) = self.in_progress.remove(&key) {
                self.timed_out += 1;
                self.recycle_buffer(entry.buffer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32) -> FragmentKey {
        FragmentKey { source: [1, 1, 1, 1].into(), destination: [2, 2, 2, 2].into(), identification: id, protocol: 17 }
    }

    fn offset(units: u16) -> IpFragOffset {
        IpFragOffset::try_new(units).unwrap()
    }

    #[test]
    fn reassembles_out_of_order() {
        let mut r = Reassembler::new(4, 1_000_000);
        assert_eq!(r.add(0, key(1), offset(1), false, b"tail"), Ok(Outcome::Held));
        assert_eq!(r.add(1, key(1), offset(0), true, b"01234567"), Ok(Outcome::Complete(b"01234567tail".to_vec())));
        assert!(r.is_empty());
    }

    #[test]
    fn bounded_in_count_and_time() {
        let mut r = Reassembler::new(1, 1_000);
        assert_eq!(r.add(0, key(1), offset(0), true, b"01234567"), Ok(Outcome::Held));
        assert_eq!(r.add(10, key(2), offset(0), true, b"01234567"), Err(Undecoded::FragmentTableFull));
        // After the timeout the first packet is dropped and room is made.
        assert_eq!(r.add(2_000, key(2), offset(0), true, b"01234567"), Ok(Outcome::Held));
        assert_eq!(r.timed_out, 1);
    }

    #[test]
    fn invalid_fragment_is_refused() {
        let mut r = Reassembler::new(4, 1_000_000);
        // A non-final fragment whose length is not a multiple of 8.
        assert_eq!(r.add(0, key(1), offset(0), true, b"0123"), Err(Undecoded::FragmentInvalid));
        assert!(r.is_empty());
    }
}
