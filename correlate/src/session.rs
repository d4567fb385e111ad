//! The session table: live PDP contexts (GTPv0/v1) and PDN connections (GTPv2), their indices, and the
//! bounded table of requests waiting for their responses.
//!
//! Rules (ARCHITECTURE.md, "Attribution"):
//! - A context becomes live only when an accepting response answers its request (same sequence number
//!   between the same two GSN addresses).
//! - User-plane packets are attributed by tunnel: (GSN user-plane address, TEID) → session. A tunnel key
//!   registered by a new context ends any older context that held it (the TEID was reallocated, so the
//!   old context is gone): a key never points at two sessions.
//! - The UE address is only a fallback, used when exactly one live session holds it.
//! - Capacity: `sessions_max`. A new context beyond it is refused and counted (`session-table-full`),
//!   never squeezed in by evicting a live subscriber. Sessions idle (no signalling, no user plane) for
//!   `session_idle_timeout_s` of packet time are ended with reason `idle-timeout`.
use crate::event::Identity;
use crate::wire::{Apn, Tbcd};
use crate::Map;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A tunnel end: the address a GTP packet is sent to and the TEID it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TunnelKey {
    pub address: IpAddr,
    pub teid: u32,
}

/// Which way user traffic flows into a tunnel end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Subscriber to network: the GGSN/PGW/SGW S1-U end.
    Uplink,
    /// Network to subscriber: the SGSN/eNodeB/SGW S5 end.
    Downlink,
}

/// One side of a context: its control-plane and user-plane tunnel ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub control: Option<TunnelKey>,
    pub user: Option<TunnelKey>,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: u64,
    pub gtp_version: u8,
    pub imsi: Tbcd,
    pub msisdn: Tbcd,
    pub imei: Tbcd,
    pub apn: Option<Arc<str>>,
    pub ue_ipv4: Option<Ipv4Addr>,
    pub ue_ipv6: Option<Ipv6Addr>,
    /// NSAPI (GTPv1) or 0 (GTPv2: one entry per PDN connection).
    pub nsapi: u8,
    /// GTPv0 TID, when the context was set up by GTPv0.
    pub tid: Option<u64>,
    /// SGSN / MME / SGW-on-S5 side: receives downlink.
    pub access: Endpoint,
    /// GGSN / PGW / SGW-on-S11 side: receives uplink.
    pub core: Endpoint,
    pub last_seen_us: u64,
}

impl Session {
    pub fn identity(&self) -> Identity {
        Identity {
            session_id: self.id,
            imsi: self.imsi,
            msisdn: self.msisdn,
            imei: self.imei,
            apn: self.apn.clone(),
            ue_ipv4: self.ue_ipv4,
            ue_ipv6: self.ue_ipv6,
        }
    }

    /// The uplink TEID (0 when unknown, and for GTPv0, whose flow labels are not TEIDs).
    pub fn teid_up(&self) -> u32 {
        if self.tid.is_some() {
            return 0;
        }
        self.core.user.map_or(0, |k| k.teid)
    }

    /// The downlink TEID (0 when unknown, and for GTPv0).
    pub fn teid_down(&self) -> u32 {
        if self.tid.is_some() {
            return 0;
        }
        self.access.user.map_or(0, |k| k.teid)
    }

    fn ue_ips(&self) -> impl Iterator<Item = IpAddr> {
        self.ue_ipv4.map(IpAddr::V4).into_iter().chain(self.ue_ipv6.map(IpAddr::V6))
    }
}

/// Owners of one UE address: the last session that took it and how many live sessions hold it.
#[derive(Debug, Clone, Copy)]
struct IpOwners {
    last: u64,
    count: u32,
    /// `last` is no longer known to be the single owner (an owner left while others remain).
    stale: bool,
}

/// Live sessions and their indices. Every index entry points at a live session.
pub struct SessionTable {
    sessions: Map<u64, Session>,
    /// Control-plane keys are not unique across interfaces: a SGW may use one TEID on S11 and S5.
    /// Each key keeps every session that uses it (a short list); lookups prefer the one whose peer sent.
    by_control: Map<(TunnelKey, u8), Vec<u64>>,
    by_user: Map<TunnelKey, (u64, Direction)>,
    by_tid: Map<u64, u64>,
    by_ue_ip: Map<IpAddr, IpOwners>,
    apns: Map<Apn, Arc<str>>,
    /// User-plane tunnel ends of sessions that ended, with when: traffic still arriving on them belongs
    /// to nobody, and must not fall back to the UE address (which may already be someone else's).
    tombstones: Map<TunnelKey, u64>,
    tombstones_max: usize,
    next_id: u64,
    sessions_max: usize,
    apns_max: usize,
}

impl SessionTable {
    pub fn new(sessions_max: usize) -> SessionTable {
        SessionTable {
            sessions: Map::default(),
            by_control: Map::default(),
            by_user: Map::default(),
            by_tid: Map::default(),
            by_ue_ip: Map::default(),
            apns: Map::default(),
            tombstones: Map::default(),
            tombstones_max: 262_144,
            next_id: 1,
            sessions_max,
            apns_max: 4096,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.sessions.len() >= self.sessions_max
    }

    pub fn get(&self, id: u64) -> Option<&Session> {
        self.sessions.get(&id)
    }

    /// One shared copy per distinct APN (carriers have few); bounded, then APNs are not interned.
    pub fn intern_apn(&mut self, apn: Option<Apn>) -> Option<Arc<str>> {
        let apn = apn?;
        if let Some(name) = self.apns.get(&apn) {
            return Some(name.clone());
        }
        let name: Arc<str> = Arc::from(apn.as_str());
        if self.apns.len() < self.apns_max {
            self.apns.insert(apn, name.clone());
        }
        Some(name)
    }

    /// The session a control message sent to `key` by `peer` is about: among the sessions using that
    /// key, the one whose other side is `peer`, else the most recent.
    pub fn by_control(&self, key: TunnelKey, nsapi: u8, peer: IpAddr) -> Option<u64> {
        let ids = self.by_control.get(&(key, nsapi))?;
        let peer_matches = |id: &&u64| {
            self.sessions.get(id).is_some_and(|s| {
                let other = if s.access.control == Some(key) { s.core.control } else { s.access.control };
                other.is_some_and(|o| o.address == peer)
            })
        };
        ids.iter().find(peer_matches).or(ids.last()).copied()
    }

    pub fn by_user(&self, key: TunnelKey) -> Option<(u64, Direction)> {
        self.by_user.get(&key).copied()
    }

    pub fn by_tid(&self, tid: u64) -> Option<u64> {
        self.by_tid.get(&tid).copied()
    }

    /// The single live session holding this UE address, if exactly one does.
    pub fn by_ue_ip(&self, ip: IpAddr) -> Option<u64> {
        self.by_ue_ip.get(&ip).filter(|o| o.count == 1 && !o.stale).map(|o| o.last)
    }

    /// Marks a session as seen at `ts_us` (packet time) and returns it.
    pub fn touch(&mut self, id: u64, ts_us: u64) -> Option<&Session> {
        let session = self.sessions.get_mut(&id)?;
        session.last_seen_us = session.last_seen_us.max(ts_us);
        Some(session)
    }

    /// Inserts a new live session (its id is assigned here) and indexes it. Returns the id and the
    /// sessions it displaced (whose tunnel keys it now holds), already removed. `None` when full.
    pub fn insert(&mut self, mut session: Session) -> Option<(u64, Vec<Session>)> {
        if self.is_full() {
            return None;
        }
        session.id = self.next_id;
        self.next_id += 1;
        let id = session.id;
        for ip in session.ue_ips() {
            self.by_ue_ip
                .entry(ip)
                .and_modify(|o| {
                    o.last = id;
                    o.count += 1;
                })
                .or_insert(IpOwners { last: id, count: 1, stale: false });
        }
        self.sessions.insert(id, session);
        let displaced = self.index(id);
        Some((id, displaced))
    }

    /// Indexes a session's tunnel keys; removes and returns sessions that held any of them.
    fn index(&mut self, id: u64) -> Vec<Session> {
        let Some(session) = self.sessions.get(&id) else { return Vec::new() };
        let (access, core, nsapi, tid) = (session.access, session.core, session.nsapi, session.tid);
        let mut displaced_ids = Vec::new();
        for control in [access.control, core.control].into_iter().flatten() {
            let ids = self.by_control.entry((control, nsapi)).or_default();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        // GTPv0 user traffic is keyed by its TID (port 3386), not by GTPv1 tunnel ends.
        let users = if tid.is_some() {
            [(None, Direction::Downlink), (None, Direction::Uplink)]
        } else {
            [(access.user, Direction::Downlink), (core.user, Direction::Uplink)]
        };
        for (key, direction) in users {
            if let Some(key) = key {
                self.tombstones.remove(&key);
                if let Some((old, _)) = self.by_user.insert(key, (id, direction)) {
                    if old != id {
                        displaced_ids.push(old);
                    }
                }
            }
        }
        if let Some(tid) = tid {
            if let Some(old) = self.by_tid.insert(tid, id) {
                if old != id {
                    displaced_ids.push(old);
                }
            }
        }
        displaced_ids.sort_unstable();
        displaced_ids.dedup();
        displaced_ids.into_iter().filter_map(|old| self.remove(old)).collect()
    }

    /// Changes a live session's tunnel ends (Update PDP Context, Modify Bearer) and re-indexes it.
    /// Returns the sessions displaced by its new keys.
    pub fn update(&mut self, id: u64, change: impl FnOnce(&mut Session)) -> Vec<Session> {
        let Some(session) = self.sessions.get_mut(&id) else { return Vec::new() };
        let before = (session.access, session.core);
        change(session);
        let nsapi = session.nsapi;
        // Drop the old keys that pointed here, then index the new ones.
        for control in [before.0.control, before.1.control].into_iter().flatten() {
            self.unindex_control(control, nsapi, id);
        }
        for user in [before.0.user, before.1.user].into_iter().flatten() {
            if let Entry::Occupied(entry) = self.by_user.entry(user) {
                if entry.get().0 == id {
                    entry.remove();
                }
            }
        }
        self.index(id)
    }

    /// Whether this tunnel end belonged to a session that ended (and the mark has not expired).
    pub fn is_tombstone(&self, key: TunnelKey) -> bool {
        self.tombstones.contains_key(&key)
    }

    /// Forgets tunnel ends of sessions that ended before `cutoff_us`.
    pub fn expire_tombstones(&mut self, cutoff_us: u64) {
        self.tombstones.retain(|_, ended| *ended >= cutoff_us);
    }

    fn unindex_control(&mut self, control: TunnelKey, nsapi: u8, id: u64) {
        if let Entry::Occupied(mut entry) = self.by_control.entry((control, nsapi)) {
            entry.get_mut().retain(|other| *other != id);
            if entry.get().is_empty() {
                entry.remove();
            }
        }
    }

    /// Removes a session and every index entry that points at it; its user-plane tunnel ends are
    /// remembered as tombstones (bounded: when full, no new marks are kept and the fallback stays off
    /// only by the TEID lookup failing, see `Correlator`).
    pub fn remove(&mut self, id: u64) -> Option<Session> {
        let session = self.sessions.remove(&id)?;
        for control in [session.access.control, session.core.control].into_iter().flatten() {
            self.unindex_control(control, session.nsapi, id);
        }
        for user in [session.access.user, session.core.user].into_iter().flatten() {
            if let Entry::Occupied(entry) = self.by_user.entry(user) {
                // A key another session has taken over is that session's now: no tombstone for it.
                if entry.get().0 == id {
                    entry.remove();
                    if self.tombstones.len() < self.tombstones_max {
                        self.tombstones.insert(user, session.last_seen_us);
                    }
                }
            }
        }
        if let Some(tid) = session.tid {
            if let Entry::Occupied(entry) = self.by_tid.entry(tid) {
                if *entry.get() == id {
                    entry.remove();
                }
            }
        }
        for ip in session.ue_ips() {
            if let Entry::Occupied(mut entry) = self.by_ue_ip.entry(ip) {
                let owners = entry.get_mut();
                owners.count = owners.count.saturating_sub(1);
                if owners.count == 0 {
                    entry.remove();
                } else if owners.last == id {
                    owners.stale = true;
                }
            }
        }
        Some(session)
    }

    /// Removes and returns sessions not seen since `cutoff_us`.
    pub fn expire(&mut self, cutoff_us: u64) -> Vec<Session> {
        let idle: Vec<u64> = self.sessions.values().filter(|s| s.last_seen_us < cutoff_us).map(|s| s.id).collect();
        idle.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// All live sessions, in id order (for end-of-run reporting and tests).
    pub fn sessions(&self) -> Vec<&Session> {
        let mut all: Vec<&Session> = self.sessions.values().collect();
        all.sort_by_key(|s| s.id);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(address: [u8; 4], teid: u32) -> TunnelKey {
        TunnelKey { address: IpAddr::from(address), teid }
    }

    fn session(ue: [u8; 4], up: u32, down: u32) -> Session {
        Session {
            id: 0,
            gtp_version: 1,
            imsi: Tbcd::EMPTY,
            msisdn: Tbcd::EMPTY,
            imei: Tbcd::EMPTY,
            apn: None,
            ue_ipv4: Some(ue.into()),
            ue_ipv6: None,
            nsapi: 5,
            tid: None,
            access: Endpoint { control: Some(key([10, 0, 0, 1], down)), user: Some(key([10, 0, 0, 2], down)) },
            core: Endpoint { control: Some(key([10, 0, 1, 1], up)), user: Some(key([10, 0, 1, 2], up)) },
            last_seen_us: 0,
        }
    }

    #[test]
    fn tunnel_keys_never_point_at_two_sessions() {
        let mut table = SessionTable::new(10);
        let (a, displaced) = table.insert(session([10, 9, 0, 1], 100, 200)).unwrap();
        assert!(displaced.is_empty());
        // The GGSN reuses TEID 100 for a new subscriber: the old context must be gone.
        let (b, displaced) = table.insert(session([10, 9, 0, 2], 100, 300)).unwrap();
        assert_eq!(displaced.iter().map(|s| s.id).collect::<Vec<_>>(), vec![a]);
        assert_eq!(table.by_user(key([10, 0, 1, 2], 100)), Some((b, Direction::Uplink)));
        assert_eq!(table.by_ue_ip(IpAddr::from([10, 9, 0, 1])), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn shared_ue_ip_is_ambiguous_until_one_is_left_and_known() {
        let mut table = SessionTable::new(10);
        let (a, _) = table.insert(session([10, 9, 0, 1], 1, 2)).unwrap();
        let (b, _) = table.insert(session([10, 9, 0, 1], 3, 4)).unwrap();
        let ip = IpAddr::from([10, 9, 0, 1]);
        assert_eq!(table.by_ue_ip(ip), None, "two APNs share the private address: no fallback");
        table.remove(b);
        assert_eq!(table.by_ue_ip(ip), None, "the remaining owner is not known for sure");
        table.remove(a);
        let (c, _) = table.insert(session([10, 9, 0, 1], 5, 6)).unwrap();
        assert_eq!(table.by_ue_ip(ip), Some(c));
    }

    #[test]
    fn capacity_refuses_and_expiry_frees() {
        let mut table = SessionTable::new(1);
        let mut first = session([10, 9, 0, 1], 1, 2);
        first.last_seen_us = 5;
        table.insert(first).unwrap();
        assert!(table.insert(session([10, 9, 0, 2], 3, 4)).is_none());
        assert_eq!(table.expire(10).len(), 1);
        assert!(table.is_empty());
        assert!(table.by_user(key([10, 0, 1, 2], 1)).is_none());
    }

    #[test]
    fn update_moves_keys() {
        let mut table = SessionTable::new(10);
        let (a, _) = table.insert(session([10, 9, 0, 1], 1, 2)).unwrap();
        let displaced = table.update(a, |s| s.access.user = Some(key([10, 0, 0, 99], 77)));
        assert!(displaced.is_empty());
        assert_eq!(table.by_user(key([10, 0, 0, 2], 2)), None);
        assert_eq!(table.by_user(key([10, 0, 0, 99], 77)), Some((a, Direction::Downlink)));
    }
}
