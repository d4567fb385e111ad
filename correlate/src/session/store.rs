//! The session table's storage: each session one 80-byte [`Record`] in a slab, the GSN addresses
//! interned with reference counts ([`Gsns`]), and the shared open-addressing [`Index`] of 4-byte entries
//! (`slot << KIND_BITS | kind`) whose keys [`Store`] reads back from the records.
use super::*;

// Index entries are `slot << KIND_BITS | kind`.
pub(super) const ACCESS_CONTROL: u32 = 0;
pub(super) const ACCESS_USER: u32 = 1;
pub(super) const CORE_CONTROL: u32 = 2;
pub(super) const CORE_USER: u32 = 3;
pub(super) const UE_V4: u32 = 4;
pub(super) const UE_V6: u32 = 5;
pub(super) const TID: u32 = 6;
pub(super) const KIND_BITS: u32 = 3;
pub(super) const KIND_MASK: u32 = (1 << KIND_BITS) - 1;
/// Slots that fit in an index entry.
pub(super) const SLOTS_MAX: usize = 1 << (32 - KIND_BITS);

/// At most this many live sessions are indexed under one control key or one UE address (a SGW's S11 and
/// S5 sharing a TEID, private addresses reused across APNs: a handful). Sessions beyond it are counted,
/// not indexed, so a hostile stream cannot turn every lookup into a walk over thousands of entries (a
/// control key's chain holds at most this many per NSAPI, 128 in all).
pub const SHARED_KEY_MAX: usize = 8;

/// NSAPIs are 4 bits (3GPP TS 29.060 7.7.17).
pub(super) const NSAPIS: usize = 16;
/// Mixed into control keys' hashes, so a control key and a user-plane key with the same address and
/// TEID (which some GSNs use) do not share a chain.
pub(super) const CONTROL_TAG: u8 = 0xC0;

pub(super) const NO_GSN: u16 = u16::MAX;
pub(super) const NO_APN: u16 = u16::MAX;
/// The APN is not interned (the APN table was full): it is in `Store::apn_elsewhere`.
pub(super) const APN_ELSEWHERE: u16 = u16::MAX - 1;

pub(super) const HAS_V4: u8 = 1;
pub(super) const HAS_V6: u8 = 2;
pub(super) const HAS_TID: u8 = 4;
pub(super) const INDEXED_V4: u8 = 8;
pub(super) const INDEXED_V6: u8 = 16;
pub(super) const INDEXED_ACCESS_CONTROL: u8 = 32;
pub(super) const INDEXED_CORE_CONTROL: u8 = 64;
pub(super) const INDEXED: u8 = INDEXED_V4 | INDEXED_V6 | INDEXED_ACCESS_CONTROL | INDEXED_CORE_CONTROL;

/// A live session as stored: 80 bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record {
    /// Insertion number, from 1; 0 marks a free slot. Its low 32 bits are the high half of the id.
    pub(super) seq: u64,
    pub(super) last_seen_us: u64,
    pub(super) imsi: Tbcd,
    pub(super) msisdn: Tbcd,
    pub(super) imei: Tbcd,
    /// Tunnel ends in kind order: access control, access user, core control, core user.
    pub(super) teids: [u32; 4],
    pub(super) gsns: [u16; 4],
    pub(super) ue_ipv4: u32,
    pub(super) apn: u16,
    pub(super) nsapi: u8,
    pub(super) gtp_version: u8,
    pub(super) flags: u8,
    pub(super) interface: u8,
    /// In what was padding: the record stays 80 bytes.
    pub(super) evidence_tag: u32,
}

pub(super) const FREE: Record = Record {
    seq: 0,
    last_seen_us: 0,
    imsi: Tbcd::EMPTY,
    msisdn: Tbcd::EMPTY,
    imei: Tbcd::EMPTY,
    teids: [0; 4],
    gsns: [NO_GSN; 4],
    ue_ipv4: 0,
    apn: NO_APN,
    nsapi: 0,
    gtp_version: 0,
    flags: 0,
    interface: 0,
    evidence_tag: 0,
};

impl Record {
    pub(super) fn live(&self) -> bool {
        self.seq != 0
    }

    pub(super) fn id(&self, slot: u32) -> u64 {
        (self.seq & 0xFFFF_FFFF) << 32 | u64::from(slot)
    }

    /// Whether this live record is the session `id` names (and not a later one in the same slot).
    pub(super) fn is(&self, id: u64) -> bool {
        self.live() && self.seq & 0xFFFF_FFFF == id >> 32
    }
}

/// The slot an id names (its low half).
pub(super) fn slot_in(id: u64) -> u32 {
    (id & 0xFFFF_FFFF) as u32
}

/// GSN addresses as `u16` ids, reference-counted by the tunnel ends of live sessions, so the table stays
/// bounded (65,535 addresses in use at once) however many addresses a stream names over time.
#[derive(Default)]
pub(super) struct Gsns {
    pub(super) addresses: Vec<IpAddr>,
    pub(super) refs: Vec<u32>,
    pub(super) ids: Map<IpAddr, u16>,
    pub(super) free: Vec<u16>,
}

impl Gsns {
    pub(super) fn acquire(&mut self, address: IpAddr) -> Option<u16> {
        if let Some(&id) = self.ids.get(&address) {
            if let Some(refs) = self.refs.get_mut(usize::from(id)) {
                *refs += 1;
            }
            return Some(id);
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None if self.addresses.len() < usize::from(NO_GSN) => {
                self.addresses.push(address);
                self.refs.push(0);
                u16::try_from(self.addresses.len() - 1).ok()?
            }
            None => return None,
        };
        *self.addresses.get_mut(usize::from(id))? = address;
        *self.refs.get_mut(usize::from(id))? = 1;
        self.ids.insert(address, id);
        Some(id)
    }

    pub(super) fn release(&mut self, id: u16) {
        let Some(refs) = self.refs.get_mut(usize::from(id)) else { return };
        *refs = refs.saturating_sub(1);
        if *refs == 0 {
            if let Some(address) = self.addresses.get(usize::from(id)) {
                self.ids.remove(address);
            }
            self.free.push(id);
        }
    }

    pub(super) fn address(&self, id: u16) -> Option<IpAddr> {
        self.addresses.get(usize::from(id)).copied()
    }
}

/// Whether `ip` is one of the UE addresses of the record in `slot` (its IPv6 one in `ue_ipv6`), or the
/// record has none to compare with.
pub(super) fn sends_from(record: &Record, slot: u32, ip: IpAddr, ue_ipv6: &Map<u32, Ipv6Addr>) -> bool {
    if record.flags & (HAS_V4 | HAS_V6) == 0 {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => record.flags & HAS_V4 != 0 && record.ue_ipv4 == u32::from(v4),
        IpAddr::V6(v6) => ue_ipv6_of(record, slot, ue_ipv6) == Some(v6),
    }
}

/// The IPv6 UE address of the record in `slot`, kept in `ue_ipv6` (few sessions have one).
pub(super) fn ue_ipv6_of(record: &Record, slot: u32, ue_ipv6: &Map<u32, Ipv6Addr>) -> Option<Ipv6Addr> {
    if record.flags & HAS_V6 == 0 {
        return None;
    }
    ue_ipv6.get(&slot).copied()
}

/// What index entries are resolved against: the slab and the side tables.
pub(super) struct Store {
    pub(super) records: Vec<Record>,
    pub(super) gsns: Gsns,
    pub(super) ue_ipv6: Map<u32, Ipv6Addr>,
    pub(super) tids: Map<u32, u64>,
    pub(super) apn_names: Vec<Arc<str>>,
    pub(super) apn_elsewhere: Map<u32, Arc<str>>,
    pub(super) hasher: foldhash::fast::RandomState,
}

impl Store {
    pub(super) fn record(&self, slot: u32) -> Option<&Record> {
        self.records.get(slot as usize).filter(|r| r.live())
    }

    pub(super) fn key_at(&self, record: &Record, kind: u32) -> Option<TunnelKey> {
        let gsn = *record.gsns.get(kind as usize)?;
        let teid = *record.teids.get(kind as usize)?;
        Some(TunnelKey { address: self.gsns.address(gsn)?, teid })
    }

    /// Whether the record's tunnel end of `kind` is `key`, as `key_at(record, kind) == Some(key)` but
    /// without building the record's key (per G-PDU): the TEID first, which tells entries apart, then
    /// the GSN address in place.
    pub(super) fn has_key(&self, record: &Record, kind: u32, key: TunnelKey) -> bool {
        record.teids.get(kind as usize) == Some(&key.teid)
            && record.gsns.get(kind as usize).and_then(|&gsn| self.gsns.addresses.get(usize::from(gsn)))
                == Some(&key.address)
    }

    // Entries of different kinds may share a hash: every lookup also checks the entry's kind.
    pub(super) fn hash_user(&self, key: TunnelKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// A control key's entries share one hash whatever their NSAPI (which the lookups check in the
    /// record), so the contexts of one key are found in one walk: a GTPv1 Delete with Teardown Ind ends
    /// every NSAPI's context, and probing the 16 NSAPIs one by one cost 16 cache misses.
    pub(super) fn hash_control(&self, key: TunnelKey) -> u64 {
        self.hasher.hash_one((key, CONTROL_TAG))
    }

    pub(super) fn hash_ip(&self, ip: IpAddr) -> u64 {
        self.hasher.hash_one(crate::ip_word(ip))
    }

    pub(super) fn hash_tid(&self, tid: u64) -> u64 {
        self.hasher.hash_one(tid)
    }

    /// The id of the session an index entry points at.
    pub(super) fn id_of(&self, entry: u32) -> Option<u64> {
        let slot = entry >> KIND_BITS;
        Some(self.record(slot)?.id(slot))
    }

    pub(super) fn ue_ipv6(&self, slot: u32, record: &Record) -> Option<Ipv6Addr> {
        ue_ipv6_of(record, slot, &self.ue_ipv6)
    }

    pub(super) fn tid(&self, slot: u32, record: &Record) -> Option<u64> {
        if record.flags & HAS_TID == 0 {
            return None;
        }
        self.tids.get(&slot).copied()
    }

    /// The hash an index entry was stored under, recomputed from its record (for the table's growth).
    pub(super) fn entry_hash(&self, entry: u32) -> u64 {
        let (slot, kind) = (entry >> KIND_BITS, entry & KIND_MASK);
        let Some(record) = self.record(slot) else { return 0 };
        let hash = match kind {
            ACCESS_CONTROL | CORE_CONTROL => self.key_at(record, kind).map(|k| self.hash_control(k)),
            ACCESS_USER | CORE_USER => self.key_at(record, kind).map(|k| self.hash_user(k)),
            UE_V4 => Some(self.hash_ip(IpAddr::V4(record.ue_ipv4.into()))),
            UE_V6 => self.ue_ipv6(slot, record).map(|ip| self.hash_ip(IpAddr::V6(ip))),
            _ => self.tid(slot, record).map(|tid| self.hash_tid(tid)),
        };
        hash.unwrap_or(0)
    }

    pub(super) fn is_user(&self, entry: u32, key: TunnelKey) -> bool {
        let kind = entry & KIND_MASK;
        (kind == ACCESS_USER || kind == CORE_USER)
            && self.record(entry >> KIND_BITS).is_some_and(|r| self.has_key(r, kind, key))
    }

    pub(super) fn is_control(&self, entry: u32, key: TunnelKey, nsapi: u8) -> bool {
        let kind = entry & KIND_MASK;
        (kind == ACCESS_CONTROL || kind == CORE_CONTROL)
            && self.record(entry >> KIND_BITS).is_some_and(|r| r.nsapi == nsapi && self.has_key(r, kind, key))
    }

    pub(super) fn is_ip(&self, entry: u32, ip: IpAddr) -> bool {
        let slot = entry >> KIND_BITS;
        match (entry & KIND_MASK, ip) {
            (UE_V4, IpAddr::V4(v4)) => self.record(slot).is_some_and(|r| r.ue_ipv4 == u32::from(v4)),
            (UE_V6, IpAddr::V6(v6)) => self.record(slot).and_then(|r| self.ue_ipv6(slot, r)) == Some(v6),
            _ => false,
        }
    }

    pub(super) fn is_tid(&self, entry: u32, tid: u64) -> bool {
        let slot = entry >> KIND_BITS;
        entry & KIND_MASK == TID && self.record(slot).and_then(|r| self.tid(slot, r)) == Some(tid)
    }

    pub(super) fn decode(&self, slot: u32) -> Option<Session> {
        let record = self.record(slot)?;
        let key = |kind| self.key_at(record, kind);
        Some(Session {
            id: record.id(slot),
            gtp_version: record.gtp_version,
            imsi: record.imsi,
            msisdn: record.msisdn,
            imei: record.imei,
            apn: match record.apn {
                NO_APN => None,
                APN_ELSEWHERE => self.apn_elsewhere.get(&slot).cloned(),
                id => self.apn_names.get(usize::from(id)).cloned(),
            },
            ue_ipv4: (record.flags & HAS_V4 != 0).then(|| Ipv4Addr::from(record.ue_ipv4)),
            ue_ipv6: self.ue_ipv6(slot, record),
            nsapi: record.nsapi,
            tid: self.tid(slot, record),
            access: Endpoint { control: key(ACCESS_CONTROL), user: key(ACCESS_USER) },
            core: Endpoint { control: key(CORE_CONTROL), user: key(CORE_USER) },
            last_seen_us: record.last_seen_us,
            interface: Interface::from_u8(record.interface),
            evidence_tag: record.evidence_tag,
        })
    }
}

/// The index, in shards as [`crate::sharded`] shards its maps. One table's growth rehashes every entry,
/// each read back from its record: 370 ms at 734,003 sessions, during which no packet is read; a shard
/// grows alone, in a 64th of that.
pub(super) struct Index {
    pub(super) shards: [HashTable<u32>; SHARDS],
}

impl Index {
    pub(super) fn new() -> Index {
        Index { shards: std::array::from_fn(|_| HashTable::new()) }
    }

    pub(super) fn shard(&self, hash: u64) -> Option<&HashTable<u32>> {
        self.shards.get(shard_of(hash))
    }

    pub(super) fn find(&self, hash: u64, eq: impl FnMut(&u32) -> bool) -> Option<&u32> {
        self.shard(hash)?.find(hash, eq)
    }

    pub(super) fn iter_hash(&self, hash: u64) -> impl Iterator<Item = &u32> {
        self.shard(hash).into_iter().flat_map(move |shard| shard.iter_hash(hash))
    }

    /// Removes the entry `eq` picks; what it was.
    pub(super) fn remove(&mut self, hash: u64, eq: impl FnMut(&u32) -> bool) -> Option<u32> {
        let shard = self.shards.get_mut(shard_of(hash))?;
        shard.find_entry(hash, eq).ok().map(|found| found.remove().0)
    }

    pub(super) fn insert(&mut self, hash: u64, entry: u32, rehash: impl Fn(&u32) -> u64) {
        if let Some(shard) = self.shards.get_mut(shard_of(hash)) {
            shard.insert_unique(hash, entry, rehash);
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(HashTable::len).sum()
    }
}
