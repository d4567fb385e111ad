//! Requests waiting for their responses, and the rule that pairs them.
//!
//! A response answers a request only with the protocol's own proof (TS 29.060 7.3, TS 29.274 5.5):
//! - the same GTP version and sequence number, and
//! - its header TEID is the control-plane TEID that the requester announced (GTPv1: the TEID Control Plane
//!   IE of a Create, or the requester's known TEID-C; GTPv2: the Sender F-TEID for Control Plane, or the
//!   known one; GTPv0: the TID, which names the subscriber and the NSAPI), and
//! - the request is younger than the retransmission window (T3-RESPONSE x N3-REQUESTS).
//!
//! Addresses are a hint, not the key: mirrors lose packets, nodes restart their sequence numbers, and
//! pooled or multi-homed peers answer from another address. Among requests that carry the proof, the
//! one sent between the response's own two addresses wins; failing that, the one sent to the address the
//! response came back to (the requester answered from another address); failing that, the only one. Two
//! or more left is a doubt, and a doubt pairs nothing. A retransmitted request (same sequence, proof
//! and addresses) never makes a second entry.
use crate::reason::Note;
use crate::Map;
use std::net::IpAddr;

/// At most this many requests wait under one (version, sequence): several peers draw sequence numbers
/// from the same space, but a hostile stream must not make one bucket long.
pub const PER_SEQUENCE_MAX: usize = 8;

/// Emptied buckets kept for reuse at most (the rest are freed).
const SPARE_MAX: usize = 1024;

/// One waiting request.
#[derive(Debug, Clone)]
pub struct Pending<K> {
    pub ts_us: u64,
    /// Capture frame of the request (0 when unknown).
    pub frame: u64,
    pub requester: IpAddr,
    pub responder: IpAddr,
    /// The TEID (or GTPv0 TID) the response must carry in its header.
    pub proof: u64,
    pub kind: K,
}

/// Why a response paired with nothing (each a counted note).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpaired {
    /// No request waits under that version and sequence number.
    NoRequest,
    /// Requests wait under that sequence between the same addresses, but none announced the response's
    /// TEID: the signature of a lost request whose sequence number an older one shares.
    TeidMismatch,
    /// The only requests with the proof are older than the retransmission window.
    Late,
    /// Several requests carry the proof and the addresses do not tell them apart.
    Ambiguous,
}

impl Unpaired {
    pub fn reason(self) -> Note {
        match self {
            Unpaired::NoRequest => Note::GtpcResponseWithoutRequest,
            Unpaired::TeidMismatch => Note::GtpcResponseTeidMismatch,
            Unpaired::Late => Note::GtpcResponseLate,
            Unpaired::Ambiguous => Note::GtpcResponseAmbiguous,
        }
    }
}

/// What adding a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    New,
    /// The same request again (a retransmission): the first copy keeps waiting, with its own time.
    Retransmission,
    /// The bucket was full: its oldest request was given up to make room.
    Crowded,
    /// The table was full: the request was not kept.
    TableFull,
}

/// How a pairing was decided (the rare cases are counted as notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    SameAddresses,
    /// The response came from another address than the request went to.
    OtherResponder,
    /// Neither address matched; the proof alone decided.
    ProofOnly,
}

pub struct PendingTable<K> {
    buckets: Map<(u8, u32), Vec<Pending<K>>>,
    /// Emptied buckets' vectors, reused: a request and its response allocate nothing in steady state.
    spare: Vec<Vec<Pending<K>>>,
    len: usize,
    max: usize,
}

impl<K> PendingTable<K> {
    pub fn new(max: usize) -> PendingTable<K> {
        PendingTable { buckets: Map::default(), spare: Vec::new(), len: 0, max }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps a request until its response or the end of the window.
    pub fn add(&mut self, version: u8, sequence: u32, pending: Pending<K>) -> Added {
        let retransmission = self.buckets.get(&(version, sequence)).is_some_and(|bucket| {
            bucket.iter().any(|p| {
                p.proof == pending.proof && p.requester == pending.requester && p.responder == pending.responder
            })
        });
        if retransmission {
            return Added::Retransmission;
        }
        let bucket_len = self.buckets.get(&(version, sequence)).map_or(0, Vec::len);
        if self.len >= self.max && bucket_len < PER_SEQUENCE_MAX {
            return Added::TableFull;
        }
        let spare = &mut self.spare;
        let bucket = self.buckets.entry((version, sequence)).or_insert_with(|| spare.pop().unwrap_or_default());
        let mut added = Added::New;
        if bucket.len() >= PER_SEQUENCE_MAX {
            let oldest = bucket.iter().enumerate().min_by_key(|(_, p)| p.ts_us).map(|(at, _)| at);
            if let Some(at) = oldest {
                bucket.swap_remove(at);
                self.len -= 1;
            }
            added = Added::Crowded;
        }
        bucket.push(pending);
        self.len += 1;
        added
    }

    /// The request a response answers, taken out of the table, or why there is none. `since_us` is the
    /// start of the retransmission window.
    pub fn take(
        &mut self,
        version: u8,
        sequence: u32,
        proof: u64,
        requester: IpAddr,
        responder: IpAddr,
        since_us: u64,
    ) -> Result<(Pending<K>, Matched), Unpaired> {
        let bucket = self.buckets.get_mut(&(version, sequence)).ok_or(Unpaired::NoRequest)?;
        // 0: carries the proof in the window; 1: and was sent to the response's destination; 2: and was
        // sent to it from the response's source.
        let rank = |p: &Pending<K>| {
            if p.proof != proof || p.ts_us < since_us {
                None
            } else if p.requester != requester {
                Some(0)
            } else if p.responder != responder {
                Some(1)
            } else {
                Some(2)
            }
        };
        let mut counts = [0usize; 3];
        for rank in bucket.iter().filter_map(rank) {
            if let Some(count) = counts.get_mut(rank) {
                *count += 1;
            }
        }
        let (wanted, matched) = match counts {
            [_, _, 1] => (2, Matched::SameAddresses),
            [_, 1, 0] => (1, Matched::OtherResponder),
            [1, 0, 0] => (0, Matched::ProofOnly),
            [0, 0, 0] => {
                let late = bucket.iter().any(|p| p.proof == proof);
                let same_path = bucket.iter().any(|p| p.requester == requester && p.responder == responder);
                return Err(if late {
                    Unpaired::Late
                } else if same_path {
                    Unpaired::TeidMismatch
                } else {
                    Unpaired::NoRequest
                });
            }
            _ => return Err(Unpaired::Ambiguous),
        };
        let at = bucket.iter().position(|p| rank(p) == Some(wanted)).ok_or(Unpaired::NoRequest)?;
        let pending = bucket.swap_remove(at);
        if bucket.is_empty() {
            if let Some(empty) = self.buckets.remove(&(version, sequence)) {
                if self.spare.len() < SPARE_MAX {
                    self.spare.push(empty);
                }
            }
        }
        self.len -= 1;
        Ok((pending, matched))
    }

    /// Forgets requests sent before `since_us`; returns how many were forgotten (never answered).
    pub fn expire(&mut self, since_us: u64) -> usize {
        let before = self.len;
        let spare = &mut self.spare;
        self.buckets.retain(|_, bucket| {
            bucket.retain(|p| p.ts_us >= since_us);
            if bucket.is_empty() && spare.len() < SPARE_MAX {
                spare.push(std::mem::take(bucket));
            }
            !bucket.is_empty()
        });
        self.len = self.buckets.values().map(Vec::len).sum();
        before - self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn request(ts_us: u64, requester: u8, responder: u8, proof: u64, kind: u32) -> Pending<u32> {
        Pending { ts_us, frame: 0, requester: ip(requester), responder: ip(responder), proof, kind }
    }

    #[test]
    fn pairs_only_with_the_announced_teid() {
        let mut table = PendingTable::new(16);
        assert_eq!(table.add(1, 7, request(10, 1, 2, 0xAAAA, 1)), Added::New);
        // A response to a lost request: same sequence and addresses, another TEID.
        assert_eq!(table.take(1, 7, 0xBBBB, ip(1), ip(2), 0).unwrap_err(), Unpaired::TeidMismatch);
        assert_eq!(table.take(1, 8, 0xAAAA, ip(1), ip(2), 0).unwrap_err(), Unpaired::NoRequest);
        assert_eq!(table.take(2, 7, 0xAAAA, ip(1), ip(2), 0).unwrap_err(), Unpaired::NoRequest, "other version");
        let (pending, matched) = table.take(1, 7, 0xAAAA, ip(1), ip(2), 0).unwrap();
        assert_eq!((pending.kind, matched), (1, Matched::SameAddresses));
        assert!(table.is_empty());
    }

    #[test]
    fn another_address_of_the_peer_still_pairs_but_a_doubt_does_not() {
        let mut table = PendingTable::new(16);
        table.add(2, 9, request(10, 1, 2, 0x10, 1));
        let (pending, matched) = table.take(2, 9, 0x10, ip(1), ip(3), 0).unwrap();
        assert_eq!((pending.kind, matched), (1, Matched::OtherResponder));

        // Two requesters that both announced TEID 0x20 with sequence 9; the response goes to a third
        // address: nothing tells them apart.
        table.add(2, 9, request(10, 4, 2, 0x20, 2));
        table.add(2, 9, request(11, 5, 2, 0x20, 3));
        assert_eq!(table.take(2, 9, 0x20, ip(6), ip(2), 0).unwrap_err(), Unpaired::Ambiguous);
        // Sent to one of them: its address decides.
        let (pending, _) = table.take(2, 9, 0x20, ip(5), ip(7), 0).unwrap();
        assert_eq!(pending.kind, 3);
        // One left: the proof alone decides.
        let (pending, matched) = table.take(2, 9, 0x20, ip(6), ip(7), 0).unwrap();
        assert_eq!((pending.kind, matched), (2, Matched::ProofOnly));
    }

    #[test]
    fn window_retransmissions_and_bounds() {
        let mut table = PendingTable::new(3);
        table.add(1, 1, request(10, 1, 2, 0x10, 1));
        assert_eq!(table.add(1, 1, request(20, 1, 2, 0x10, 9)), Added::Retransmission);
        assert_eq!(table.len(), 1);
        assert_eq!(table.take(1, 1, 0x10, ip(1), ip(2), 11).unwrap_err(), Unpaired::Late, "sent before the window");
        let (pending, _) = table.take(1, 1, 0x10, ip(1), ip(2), 10).unwrap();
        assert_eq!((pending.kind, pending.ts_us), (1, 10), "the first copy, with its own time");

        for n in 0..3 {
            assert_eq!(table.add(1, 2 + n, request(30, 1, 2, 0x10, n)), Added::New);
        }
        assert_eq!(table.add(1, 9, request(30, 1, 2, 0x10, 9)), Added::TableFull);
        assert_eq!(table.expire(31), 3);
        assert!(table.is_empty());

        let mut table = PendingTable::new(1000);
        for n in 0..PER_SEQUENCE_MAX as u64 + 2 {
            let added = table.add(1, 5, request(n, 1, 2, n, n as u32));
            assert_eq!(added, if n < PER_SEQUENCE_MAX as u64 { Added::New } else { Added::Crowded });
        }
        assert_eq!(table.len(), PER_SEQUENCE_MAX);
        assert!(table.take(1, 5, 0, ip(1), ip(2), 0).is_err(), "the oldest went first");
        assert!(table.take(1, 5, PER_SEQUENCE_MAX as u64 + 1, ip(1), ip(2), 0).is_ok());
    }
}
