//! The session table: live PDP contexts (GTPv0/v1) and PDN connections (GTPv2), and their indices.
//!
//! Rules (ARCHITECTURE.md, "Attribution"):
//! - A context becomes live only when an accepting response answers its request (same sequence number
//!   between the same two GSN addresses); the engine does the pairing, this table holds the result.
//! - User-plane packets are attributed by tunnel: (GSN user-plane address, TEID) → session. A tunnel key
//!   registered by a new context ends any older context that held it (the TEID was reallocated, so the
//!   old context is gone): a key never points at two sessions.
//! - The UE address is only a fallback (opt-in in the engine), answered when exactly one live session
//!   holds it.
//! - Capacity: `sessions_max`. A new context beyond it is refused and counted (`session-table-full`),
//!   never squeezed in by evicting a live subscriber. Sessions idle (no signalling, no user plane) for
//!   `session_idle_timeout_s` of packet time are ended with reason `idle-timeout`.
//!
//! Layout (ARCHITECTURE.md, "Session memory"): a carrier runs millions of live contexts, so a session is
//! one 80-byte [`Record`] in a slab (`Vec`, freed slots reused) and every index is one shared
//! open-addressing table of 4-byte entries (`slot << 3 | kind`) whose keys are read back from the record,
//! in 64 shards that grow one at a time.
//! GSN addresses (a few hundred per carrier) are interned to `u16` ids with reference counts, APNs to
//! `u16` ids; IPv6 UE addresses and GTPv0 TIDs, which few sessions have, live in side maps. [`Session`]
//! is the wide form the engine builds and reads; it is not what is stored. The storage is in
//! `session/store.rs`, the types handed out in `session/types.rs`.
use crate::event::{Identity, Interface};
use crate::reason::DropReason;
use crate::sharded::{shard_of, SHARDS};
use crate::wire::{Apn, Tbcd};
use crate::Map;
use hashbrown::HashTable;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A session found under a control key: its insertion order, its id, and whether its other side is
/// the message's sender.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    seq: u64,
    id: u64,
    with_peer: bool,
}

/// The best candidate so far for one NSAPI: the oldest whose other side is the sender, and the newest.
#[derive(Debug, Clone, Copy, Default)]
struct Choice {
    first_with_peer: Option<(u64, u64)>,
    latest: Option<(u64, u64)>,
}

impl Choice {
    fn id(self) -> Option<u64> {
        self.first_with_peer.or(self.latest).map(|(_, id)| id)
    }
}

impl Candidate {
    fn consider(self, choice: &mut Choice) {
        let seen = (self.seq, self.id);
        if self.with_peer && choice.first_with_peer.is_none_or(|(seq, _)| self.seq < seq) {
            choice.first_with_peer = Some(seen);
        }
        if choice.latest.is_none_or(|(seq, _)| self.seq > seq) {
            choice.latest = Some(seen);
        }
    }
}

mod types;
pub use types::{Direction, Endpoint, Session, TunnelKey};

mod store;
pub use store::SHARED_KEY_MAX;
use store::*;

/// Live sessions and their indices. Every index entry points at a live session.
pub struct SessionTable {
    store: Store,
    /// Every index in one (sharded) table: tunnel ends (user plane, unique), control keys (shared by at
    /// most [`SHARED_KEY_MAX`]), UE addresses (likewise) and GTPv0 TIDs (unique).
    index: Index,
    free: Vec<u32>,
    live: usize,
    apn_ids: Map<Arc<str>, u16>,
    /// Holders of a UE address beyond [`SHARED_KEY_MAX`], which are not in the index.
    ue_ip_crowded: Map<IpAddr, u32>,
    /// User-plane tunnel ends of sessions that ended, with when: traffic still arriving on them belongs
    /// to nobody, and must not fall back to the UE address (which may already be someone else's).
    tombstones: Map<TunnelKey, u64>,
    tombstones_max: usize,
    /// The packet time a session removed now ends at (its tombstones' time), set by the correlator.
    now_us: u64,
    next_seq: u64,
    sessions_max: usize,
    apns_max: usize,
    crowded_control_keys: u64,
    crowded_ue_ips: u64,
}

impl SessionTable {
    pub fn new(sessions_max: usize) -> SessionTable {
        SessionTable {
            store: Store {
                records: Vec::new(),
                gsns: Gsns::default(),
                ue_ipv6: Map::default(),
                tids: Map::default(),
                apn_names: Vec::new(),
                apn_elsewhere: Map::default(),
                hasher: foldhash::fast::RandomState::default(),
            },
            index: Index::new(),
            free: Vec::new(),
            live: 0,
            apn_ids: Map::default(),
            ue_ip_crowded: Map::default(),
            tombstones: Map::default(),
            tombstones_max: 262_144,
            now_us: 0,
            next_seq: 1,
            sessions_max: sessions_max.min(SLOTS_MAX),
            apns_max: 4096,
            crowded_control_keys: 0,
            crowded_ue_ips: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn is_full(&self) -> bool {
        self.live >= self.sessions_max
    }

    /// Sessions left out of a crowded index: (control keys, UE addresses) since the start.
    pub fn crowded(&self) -> (u64, u64) {
        (self.crowded_control_keys, self.crowded_ue_ips)
    }

    fn slot_of(&self, id: u64) -> Option<u32> {
        let slot = slot_in(id);
        self.store.record(slot).is_some_and(|r| r.is(id)).then_some(slot)
    }

    /// The session, in full (a copy: the table stores it packed).
    pub fn get(&self, id: u64) -> Option<Session> {
        self.store.decode(self.slot_of(id)?)
    }

    /// One shared copy per distinct APN (carriers have few); bounded, then APNs are not interned.
    pub fn intern_apn(&mut self, apn: Option<Apn>) -> Option<Arc<str>> {
        let apn = apn?;
        let text = apn.as_str();
        if let Some(&id) = self.apn_ids.get(text) {
            return self.store.apn_names.get(usize::from(id)).cloned();
        }
        let name: Arc<str> = Arc::from(text);
        if let Ok(id) = u16::try_from(self.store.apn_names.len()) {
            if usize::from(id) < self.apns_max && id < APN_ELSEWHERE {
                self.store.apn_names.push(name.clone());
                self.apn_ids.insert(name.clone(), id);
            }
        }
        Some(name)
    }

    /// The session a control message sent to `key` by `peer` is about: among the sessions using that
    /// key with this NSAPI, the first whose other side is `peer`, else the most recent.
    pub fn by_control(&self, key: TunnelKey, nsapi: u8, peer: IpAddr) -> Option<u64> {
        let mut chosen = Choice::default();
        self.control_holders(key, peer, |holder_nsapi, pick| {
            if holder_nsapi == nsapi {
                pick.consider(&mut chosen);
            }
        });
        chosen.id()
    }

    /// [`SessionTable::by_control`] for every NSAPI at once (in NSAPI order, each NSAPI's session once),
    /// in one walk over the key's index entries: what a GTPv1 Delete with Teardown Ind ends.
    pub fn by_control_every_nsapi(&self, key: TunnelKey, peer: IpAddr) -> Vec<u64> {
        let mut chosen = [Choice::default(); NSAPIS];
        self.control_holders(key, peer, |nsapi, pick| {
            if let Some(slot) = chosen.get_mut(usize::from(nsapi)) {
                pick.consider(slot);
            }
        });
        chosen.iter().filter_map(|c| c.id()).collect()
    }

    /// Calls `each` with the NSAPI and the candidate of every live session indexed under control key `key`.
    fn control_holders(&self, key: TunnelKey, peer: IpAddr, mut each: impl FnMut(u8, Candidate)) {
        let store = &self.store;
        for &entry in self.index.iter_hash(store.hash_control(key)) {
            let kind = entry & KIND_MASK;
            if kind != ACCESS_CONTROL && kind != CORE_CONTROL {
                continue;
            }
            let slot = entry >> KIND_BITS;
            let Some(record) = store.record(slot) else { continue };
            if !store.has_key(record, kind, key) {
                continue;
            }
            let other = if kind == ACCESS_CONTROL { CORE_CONTROL } else { ACCESS_CONTROL };
            let with_peer = store.key_at(record, other).is_some_and(|o| o.address == peer);
            each(record.nsapi, Candidate { seq: record.seq, id: record.id(slot), with_peer });
        }
    }

    /// The session whose user-plane tunnel end this is, and which way traffic into it flows.
    #[inline(always)] // once per G-PDU; outlined by LLVM once `Header::parse` was inlined beside it
    pub fn by_user(&self, key: TunnelKey) -> Option<(u64, Direction)> {
        let store = &self.store;
        let &entry = self.index.find(store.hash_user(key), |&e| store.is_user(e, key))?;
        let direction = if entry & KIND_MASK == CORE_USER { Direction::Uplink } else { Direction::Downlink };
        Some((store.id_of(entry)?, direction))
    }

    pub fn by_tid(&self, tid: u64) -> Option<u64> {
        let store = &self.store;
        let &entry = self.index.find(store.hash_tid(tid), |&e| store.is_tid(e, tid))?;
        store.id_of(entry)
    }

    /// The single live session holding this UE address, if exactly one does.
    pub fn by_ue_ip(&self, ip: IpAddr) -> Option<u64> {
        if self.ue_ip_crowded.contains_key(&ip) {
            return None;
        }
        let store = &self.store;
        let mut holders = self.index.iter_hash(store.hash_ip(ip)).filter(|&&e| store.is_ip(e, ip));
        let only = *holders.next()?;
        if holders.next().is_some() {
            return None;
        }
        store.id_of(only)
    }

    /// Every live session indexed under a UE address (at most [`SHARED_KEY_MAX`]; none when the address
    /// is crowded beyond that).
    /// Written into `out`; returns how many.
    pub fn ue_ip_holders(&self, ip: IpAddr, out: &mut [u64; SHARED_KEY_MAX]) -> usize {
        if self.ue_ip_crowded.contains_key(&ip) {
            return 0;
        }
        let store = &self.store;
        let ids =
            self.index.iter_hash(store.hash_ip(ip)).filter(|&&e| store.is_ip(e, ip)).filter_map(|&e| store.id_of(e));
        let mut count = 0;
        for (slot, id) in out.iter_mut().zip(ids) {
            *slot = id;
            count += 1;
        }
        count
    }

    /// Gives a live session the evidence store's tag; `false` if it is not live.
    pub fn set_evidence_tag(&mut self, id: u64, tag: u32) -> bool {
        let Some(record) = self.store.records.get_mut(slot_in(id) as usize) else { return false };
        if !record.is(id) {
            return false;
        }
        record.evidence_tag = tag;
        true
    }

    /// Marks a session as seen at `ts_us` (packet time); `false` if it is not live.
    pub fn touch(&mut self, id: u64, ts_us: u64) -> bool {
        let Some(record) = self.store.records.get_mut(slot_in(id) as usize) else { return false };
        if !record.is(id) {
            return false;
        }
        record.last_seen_us = record.last_seen_us.max(ts_us);
        true
    }

    /// Whether `ip` is one of the session's UE addresses, or the session has none to compare with.
    pub fn may_send_from(&self, id: u64, ip: IpAddr) -> bool {
        let Some(slot) = self.slot_of(id) else { return false };
        self.store.record(slot).is_some_and(|record| sends_from(record, slot, ip, &self.store.ue_ipv6))
    }

    /// [`SessionTable::touch`] and then [`SessionTable::may_send_from`] in one visit to the record (an
    /// uplink packet on the session's tunnel): `false` if the session is not live or `ip` is not its.
    pub fn touch_from(&mut self, id: u64, ts_us: u64, ip: IpAddr) -> bool {
        let slot = slot_in(id);
        let Store { records, ue_ipv6, .. } = &mut self.store;
        let Some(record) = records.get_mut(slot as usize).filter(|r| r.is(id)) else { return false };
        record.last_seen_us = record.last_seen_us.max(ts_us);
        sends_from(record, slot, ip, ue_ipv6)
    }

    /// Inserts a new live session (its id is assigned here) and indexes it. Returns the id and the
    /// sessions it displaced (whose tunnel keys it now holds), already removed; or why it was refused
    /// (`session-table-full`, `gsn-table-full`).
    pub fn insert(&mut self, session: Session) -> Result<(u64, Vec<Session>), DropReason> {
        if self.is_full() {
            return Err(DropReason::SessionTableFull);
        }
        let record = self.encode(&session, self.next_seq)?;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.store.records.len()).ok().filter(|s| (*s as usize) < SLOTS_MAX);
                let Some(slot) = slot else {
                    self.release(&record);
                    return Err(DropReason::SessionTableFull);
                };
                self.store.records.push(FREE);
                slot
            }
        };
        self.next_seq += 1;
        self.place(slot, record, Some(&session));
        self.live += 1;
        let displaced = self.index(slot);
        Ok((record.id(slot), displaced))
    }

    /// Changes a live session (Update PDP Context, Modify Bearer) and re-indexes it. Returns the sessions
    /// displaced by its new keys, or why the change was refused (the session is then unchanged).
    pub fn update(&mut self, id: u64, change: impl FnOnce(&mut Session)) -> Result<Vec<Session>, DropReason> {
        let Some(slot) = self.slot_of(id) else { return Ok(Vec::new()) };
        let (Some(old), Some(mut session)) = (self.store.record(slot).copied(), self.store.decode(slot)) else {
            return Ok(Vec::new());
        };
        change(&mut session);
        let record = self.encode(&session, old.seq)?;
        self.unindex(slot, false);
        self.release(&old);
        self.place(slot, record, Some(&session));
        Ok(self.index(slot))
    }

    /// Packs a session, taking references on its GSN addresses (given back if one cannot be had).
    fn encode(&mut self, session: &Session, seq: u64) -> Result<Record, DropReason> {
        let mut record = FREE;
        for (kind, key) in session.keys().into_iter().enumerate() {
            let Some(key) = key else { continue };
            let Some(gsn) = self.store.gsns.acquire(key.address) else {
                self.release(&record);
                return Err(DropReason::GsnTableFull);
            };
            if let (Some(g), Some(t)) = (record.gsns.get_mut(kind), record.teids.get_mut(kind)) {
                (*g, *t) = (gsn, key.teid);
            }
        }
        record.seq = seq;
        record.last_seen_us = session.last_seen_us;
        (record.imsi, record.msisdn, record.imei) = (session.imsi, session.msisdn, session.imei);
        record.apn = match &session.apn {
            None => NO_APN,
            Some(name) => self.apn_ids.get(&**name).copied().unwrap_or(APN_ELSEWHERE),
        };
        if let Some(v4) = session.ue_ipv4 {
            record.ue_ipv4 = u32::from(v4);
            record.flags |= HAS_V4;
        }
        record.flags |=
            if session.ue_ipv6.is_some() { HAS_V6 } else { 0 } | if session.tid.is_some() { HAS_TID } else { 0 };
        (record.nsapi, record.gtp_version) = (session.nsapi, session.gtp_version);
        (record.interface, record.evidence_tag) = (session.interface.to_u8(), session.evidence_tag);
        Ok(record)
    }

    fn release(&mut self, record: &Record) {
        for gsn in record.gsns {
            if gsn != NO_GSN {
                self.store.gsns.release(gsn);
            }
        }
    }

    /// Stores a packed record and its side-table parts in `slot` (whose index entries are gone); `None`
    /// frees the slot.
    fn place(&mut self, slot: u32, record: Record, session: Option<&Session>) {
        if let Some(stored) = self.store.records.get_mut(slot as usize) {
            *stored = record;
        }
        let store = &mut self.store;
        match (record.apn, session.and_then(|s| s.apn.as_ref())) {
            (APN_ELSEWHERE, Some(name)) => store.apn_elsewhere.insert(slot, name.clone()),
            _ => store.apn_elsewhere.remove(&slot),
        };
        match session.and_then(|s| s.ue_ipv6) {
            Some(v6) => store.ue_ipv6.insert(slot, v6),
            None => store.ue_ipv6.remove(&slot),
        };
        match session.and_then(|s| s.tid) {
            Some(tid) => store.tids.insert(slot, tid),
            None => store.tids.remove(&slot),
        };
    }

    fn set_flag(&mut self, slot: u32, flag: u8) {
        if let Some(record) = self.store.records.get_mut(slot as usize) {
            record.flags |= flag;
        }
    }

    /// Adds a session's index entries; removes and returns the sessions that held its unique keys.
    fn index(&mut self, slot: u32) -> Vec<Session> {
        let Some(record) = self.store.record(slot).copied() else { return Vec::new() };
        let mut displaced = Vec::new();
        for (kind, flag) in [(ACCESS_CONTROL, INDEXED_ACCESS_CONTROL), (CORE_CONTROL, INDEXED_CORE_CONTROL)] {
            let Some(key) = self.store.key_at(&record, kind) else { continue };
            let store = &self.store;
            let hash = store.hash_control(key);
            let (mut holders, mut mine) = (0usize, false);
            for &e in self.index.iter_hash(hash).filter(|&&e| store.is_control(e, key, record.nsapi)) {
                holders += 1;
                mine |= e >> KIND_BITS == slot;
            }
            if mine {
                continue; // both sides use the same key: one entry finds it
            }
            if holders >= SHARED_KEY_MAX {
                self.crowded_control_keys += 1;
                continue;
            }
            self.index.insert(hash, slot << KIND_BITS | kind, |&e| store.entry_hash(e));
            self.set_flag(slot, flag);
        }
        // GTPv0 user traffic is keyed by its TID (port 3386), not by GTPv1 tunnel ends.
        let tid = self.store.tid(slot, &record);
        let unique: [Option<(u32, u64)>; 2] = match tid {
            Some(tid) => [Some((TID, self.store.hash_tid(tid))), None],
            None => [
                self.store.key_at(&record, ACCESS_USER).map(|k| (ACCESS_USER, self.store.hash_user(k))),
                self.store.key_at(&record, CORE_USER).map(|k| (CORE_USER, self.store.hash_user(k))),
            ],
        };
        for (kind, hash) in unique.into_iter().flatten() {
            let store = &self.store;
            let same_key = |e: &u32| match (kind, tid) {
                (TID, Some(tid)) => store.is_tid(*e, tid),
                _ => store.key_at(&record, kind).is_some_and(|key| store.is_user(*e, key)),
            };
            if let Some(old) = self.index.remove(hash, same_key) {
                if old >> KIND_BITS != slot {
                    displaced.push(old >> KIND_BITS);
                }
            }
            if let Some(key) = store.key_at(&record, kind).filter(|_| kind != TID) {
                self.tombstones.remove(&key);
            }
            let store = &self.store;
            self.index.insert(hash, slot << KIND_BITS | kind, |&e| store.entry_hash(e));
        }
        let v4 = (record.flags & HAS_V4 != 0).then(|| IpAddr::V4(record.ue_ipv4.into()));
        let v6 = self.store.ue_ipv6(slot, &record).map(IpAddr::V6);
        for (kind, flag, ip) in [(UE_V4, INDEXED_V4, v4), (UE_V6, INDEXED_V6, v6)] {
            let Some(ip) = ip else { continue };
            let store = &self.store;
            let hash = store.hash_ip(ip);
            if self.index.iter_hash(hash).filter(|&&e| store.is_ip(e, ip)).count() >= SHARED_KEY_MAX {
                *self.ue_ip_crowded.entry(ip).or_default() += 1;
                self.crowded_ue_ips += 1;
                continue;
            }
            self.index.insert(hash, slot << KIND_BITS | kind, |&e| store.entry_hash(e));
            self.set_flag(slot, flag);
        }
        displaced.sort_unstable();
        displaced.dedup();
        displaced.into_iter().filter_map(|old| self.remove_slot(old)).collect()
    }

    /// Removes a session's index entries (its record still in place: each entry's hash is recomputed
    /// from it); user-plane keys it still held become tombstones when `tombstone` is set.
    fn unindex(&mut self, slot: u32, tombstone: bool) {
        let Some(record) = self.store.record(slot).copied() else { return };
        let has = |flag: u8| record.flags & flag != 0;
        let user_keys = !has(HAS_TID);
        for (kind, indexed) in [
            (ACCESS_CONTROL, has(INDEXED_ACCESS_CONTROL)),
            (CORE_CONTROL, has(INDEXED_CORE_CONTROL)),
            (ACCESS_USER, user_keys),
            (CORE_USER, user_keys),
            (UE_V4, has(INDEXED_V4)),
            (UE_V6, has(INDEXED_V6)),
            (TID, has(HAS_TID)),
        ] {
            if !indexed {
                continue;
            }
            let entry = slot << KIND_BITS | kind;
            let hash = self.store.entry_hash(entry);
            // A user key another session has taken over is that session's now: not found, no tombstone.
            if self.index.remove(hash, |&e| e == entry).is_none() {
                continue;
            }
            let user_key =
                if kind == ACCESS_USER || kind == CORE_USER { self.store.key_at(&record, kind) } else { None };
            if let (true, Some(key)) = (tombstone && self.tombstones.len() < self.tombstones_max, user_key) {
                self.tombstones.insert(key, self.now_us);
            }
        }
        let v4 = (record.flags & (HAS_V4 | INDEXED_V4) == HAS_V4).then(|| IpAddr::V4(record.ue_ipv4.into()));
        let v6 = (record.flags & (HAS_V6 | INDEXED_V6) == HAS_V6)
            .then(|| self.store.ue_ipv6(slot, &record).map(IpAddr::V6))
            .flatten();
        for ip in [v4, v6].into_iter().flatten() {
            if let std::collections::hash_map::Entry::Occupied(mut crowded) = self.ue_ip_crowded.entry(ip) {
                *crowded.get_mut() -= 1;
                if *crowded.get() == 0 {
                    crowded.remove();
                }
            }
        }
        if let Some(stored) = self.store.records.get_mut(slot as usize) {
            stored.flags &= !INDEXED;
        }
    }

    /// Whether this tunnel end belonged to a session that ended at or after `since_us`.
    pub fn is_tombstone(&self, key: TunnelKey, since_us: u64) -> bool {
        self.tombstones.get(&key).is_some_and(|ended| *ended >= since_us)
    }

    /// Forgets tunnel ends of sessions that ended before `cutoff_us`.
    pub fn expire_tombstones(&mut self, cutoff_us: u64) {
        self.tombstones.retain(|_, ended| *ended >= cutoff_us);
    }

    /// Removes a session and every index entry that points at it; its user-plane tunnel ends are
    /// remembered as tombstones (bounded: when full, no new marks are kept and the fallback stays off
    /// only by the TEID lookup failing, see `Correlator`).
    pub fn remove(&mut self, id: u64) -> Option<Session> {
        self.remove_slot(self.slot_of(id)?)
    }

    fn remove_slot(&mut self, slot: u32) -> Option<Session> {
        let session = self.store.decode(slot)?;
        let record = *self.store.record(slot)?;
        self.unindex(slot, true);
        self.release(&record);
        self.place(slot, FREE, None);
        self.free.push(slot);
        self.live -= 1;
        Some(session)
    }

    /// The packet time now: a session removed from here on ended then (its tunnel ends' tombstones).
    pub fn set_now(&mut self, now_us: u64) {
        self.now_us = now_us;
    }

    /// The ids of the live sessions not seen since `cutoff_us`, in slot order.
    pub fn idle(&self, cutoff_us: u64) -> Vec<u64> {
        (0u32..)
            .zip(&self.store.records)
            .filter(|(_, r)| r.live() && r.last_seen_us < cutoff_us)
            .map(|(slot, r)| r.id(slot))
            .collect()
    }

    /// All live sessions, oldest first (for end-of-run reporting and tests).
    pub fn sessions(&self) -> Vec<Session> {
        let mut all: Vec<(u64, Session)> = (0u32..)
            .zip(&self.store.records)
            .filter(|(_, r)| r.live())
            .filter_map(|(slot, r)| Some((r.seq, self.store.decode(slot)?)))
            .collect();
        all.sort_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, s)| s).collect()
    }
}

#[cfg(test)]
#[path = "tests/session.rs"]
mod tests;
