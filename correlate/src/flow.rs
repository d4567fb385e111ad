//! Per-flow state for uplink TCP: where the next in-order byte is (so retransmissions are not scanned
//! twice), the tail of the last scanned bytes (so a token split across two segments is found), and
//! where the flow is in its HTTP request. Bounded by `flows_max`; idle flows are swept.
use crate::scan::http::HttpState;
use crate::scan::Carrier;
use crate::sharded::ShardedMap;
use gtpcharge_proto::token::TEXT_LEN;
use std::net::IpAddr;

/// Bytes kept from the end of a segment: one less than a token, so any token crossing the boundary has
/// its start in the carry.
pub const CARRY_LEN: usize = TEXT_LEN - 1;

/// A TCP flow of one session. The addresses are kept as 128-bit words (IPv4 mapped) with a family
/// flag, not as `IpAddr`s: an `IpAddr` has byte alignment, so building the key copied it byte by byte
/// (39 instructions an uplink packet), and comparing or hashing it matched on its variant each time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    source: u128,
    destination: u128,
    /// The session the flow belongs to (0: none), so equal private addresses on two APNs do not mix.
    session: u64,
    /// Source port in the high half, destination port in the low.
    ports: u32,
    /// Whether the addresses are IPv6 (an IPv4 address and its IPv4-mapped IPv6 form are two flows).
    v6: bool,
}

impl FlowKey {
    pub fn new(session: u64, source: IpAddr, destination: IpAddr, source_port: u16, destination_port: u16) -> FlowKey {
        FlowKey {
            source: crate::ip_word(source),
            destination: crate::ip_word(destination),
            session,
            ports: u32::from(source_port) << 16 | u32::from(destination_port),
            v6: source.is_ipv6(),
        }
    }
}

impl std::hash::Hash for FlowKey {
    /// Two 128-bit words (per packet, so few and wide): each address, IPv4 mapped so its high 80 bits
    /// are free, with the session id or the ports folded in. (The family flag is left out: the words
    /// of the two families differ but for IPv4-mapped IPv6 addresses, which equality tells apart.)
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(self.source ^ u128::from(self.session) << 64);
        state.write_u128(self.destination ^ u128::from(self.ports) << 64);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowKind {
    Undecided,
    Http,
    Tls,
    Other,
}

#[derive(Debug, Clone)]
pub struct FlowState {
    pub next_sequence: u32,
    pub kind: FlowKind,
    pub http: HttpState,
    pub carry: [u8; CARRY_LEN],
    pub carry_len: u8,
    pub carry_carrier: Carrier,
    pub last_seen_us: u64,
}

impl FlowState {
    pub fn new(next_sequence: u32, ts_us: u64) -> FlowState {
        FlowState {
            next_sequence,
            kind: FlowKind::Undecided,
            http: HttpState::default(),
            carry: [0; CARRY_LEN],
            carry_len: 0,
            carry_carrier: Carrier::HttpUrl,
            last_seen_us: ts_us,
        }
    }

    pub fn carry(&self) -> &[u8] {
        self.carry.get(..usize::from(self.carry_len)).unwrap_or_default()
    }

    /// Keeps the last bytes of `scanned` (which ended at the segment's end) as the carry.
    pub fn keep_tail(&mut self, scanned: &[u8], carrier: Carrier) {
        let take = scanned.len().min(CARRY_LEN);
        let tail = scanned.get(scanned.len() - take..).unwrap_or_default();
        if let Some(slot) = self.carry.get_mut(..take) {
            slot.copy_from_slice(tail);
        }
        self.carry_len = take as u8; // take <= CARRY_LEN < 256
        self.carry_carrier = carrier;
    }
}

/// Where a segment stands against what the flow already saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentOrder {
    /// Starts at the next expected byte (or the flow is new): `skip` bytes at its start were seen before.
    InOrder { skip: usize },
    /// Every byte was seen before.
    Retransmission,
    /// Starts after a hole: the carry no longer joins it.
    AfterGap,
}

/// Classifies a segment by TCP sequence arithmetic (RFC 793, modulo 2^32).
pub fn order(next_sequence: u32, sequence: u32, len: usize) -> SegmentOrder {
    let offset = sequence.wrapping_sub(next_sequence) as i32;
    if offset > 0 {
        return SegmentOrder::AfterGap;
    }
    let behind = offset.unsigned_abs() as usize;
    if behind >= len {
        SegmentOrder::Retransmission
    } else {
        SegmentOrder::InOrder { skip: behind }
    }
}

/// A bounded map of flows (sharded, so that its growth never stops packet reading for long).
pub struct FlowTable {
    flows: ShardedMap<FlowKey, FlowState>,
    flows_max: usize,
}

impl FlowTable {
    pub fn new(flows_max: usize) -> FlowTable {
        FlowTable { flows: ShardedMap::default(), flows_max }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut FlowState> {
        self.flows.get_mut(key)
    }

    /// Inserts (or replaces) a flow; `false` when the table is full and the flow is new.
    pub fn insert(&mut self, key: FlowKey, state: FlowState) -> bool {
        match self.get_or_insert(key, || state.clone()) {
            Some(slot) => {
                *slot = state;
                true
            }
            None => false,
        }
    }

    /// The flow's state, created with `make` when new; `None` when new and the table is full.
    pub fn get_or_insert(&mut self, key: FlowKey, make: impl FnOnce() -> FlowState) -> Option<&mut FlowState> {
        let room = self.flows.len() < self.flows_max;
        self.flows.get_or_insert_with(key, room, make)
    }

    pub fn remove(&mut self, key: &FlowKey) {
        self.flows.remove(key);
    }

    /// Drops flows idle since `cutoff_us`; returns how many.
    pub fn expire(&mut self, cutoff_us: u64) -> usize {
        self.flows.retain(|_, f| f.last_seen_us >= cutoff_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_order() {
        assert_eq!(order(1000, 1000, 10), SegmentOrder::InOrder { skip: 0 });
        assert_eq!(order(1000, 990, 10), SegmentOrder::Retransmission);
        assert_eq!(order(1000, 995, 10), SegmentOrder::InOrder { skip: 5 });
        assert_eq!(order(1000, 1010, 10), SegmentOrder::AfterGap);
        // Across the 2^32 wrap.
        assert_eq!(order(5, u32::MAX - 4, 10), SegmentOrder::Retransmission);
        assert_eq!(order(5, u32::MAX - 4, 20), SegmentOrder::InOrder { skip: 10 });
    }

    #[test]
    fn an_ipv4_flow_and_its_ipv4_mapped_twin_are_two_flows() {
        let v4 = IpAddr::from([10, 0, 0, 1]);
        let mapped = IpAddr::from(std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        let server = |v6: bool| {
            if v6 {
                IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0x0202, 0x0202])
            } else {
                IpAddr::from([2, 2, 2, 2])
            }
        };
        let (a, b) =
            (FlowKey::new(1, v4, server(false), 40_000, 80), FlowKey::new(1, mapped, server(true), 40_000, 80));
        assert_ne!(a, b);
        let mut table = FlowTable::new(10);
        assert!(table.insert(a, FlowState::new(7, 1)));
        assert!(table.insert(b, FlowState::new(9, 1)));
        assert_eq!(table.len(), 2);
        assert_eq!(table.get_mut(&a).map(|s| s.next_sequence), Some(7));
        assert_eq!(table.get_mut(&b).map(|s| s.next_sequence), Some(9));
        assert_eq!(FlowKey::new(1, v4, server(false), 40_000, 80), a, "the same flow makes the same key");
        assert_ne!(FlowKey::new(1, v4, server(false), 80, 40_000), a, "the ports' order matters");
    }

    #[test]
    fn table_is_bounded() {
        let mut table = FlowTable::new(1);
        let key = |port| FlowKey::new(1, IpAddr::from([1, 1, 1, 1]), IpAddr::from([2, 2, 2, 2]), port, 80);
        assert!(table.insert(key(1), FlowState::new(0, 10)));
        assert!(!table.insert(key(2), FlowState::new(0, 10)));
        assert!(table.insert(key(1), FlowState::new(5, 10)), "replacing an existing flow is allowed");
        assert_eq!(table.expire(11), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn flows_are_found_removed_and_expired_across_shards() {
        let mut table = FlowTable::new(10_000);
        let key = |i: u32| {
            let source = IpAddr::from((0x0A00_0000 + i).to_be_bytes());
            FlowKey::new(u64::from(i % 7), source, IpAddr::from([2, 2, 2, 2]), (i % 50_000) as u16, 443)
        };
        for i in 0..10_000 {
            assert!(table.insert(key(i), FlowState::new(i, u64::from(i))));
        }
        assert!(!table.insert(key(10_000), FlowState::new(0, 0)), "full");
        assert_eq!(table.len(), 10_000);
        for i in (0..10_000).step_by(2) {
            table.remove(&key(i));
        }
        assert_eq!(table.len(), 5_000);
        for i in 0..10_000 {
            assert_eq!(table.get_mut(&key(i)).map(|s| s.next_sequence), (i % 2 == 1).then_some(i));
        }
        // Odd i from 1 to 9,999 were last seen at i: those before 5,000 go.
        assert_eq!(table.expire(5_000), 2_500);
        assert_eq!(table.len(), 2_500);
        assert!(table.get_mut(&key(4_999)).is_none() && table.get_mut(&key(5_001)).is_some());
    }
}
