//! The correlator: one UDP datagram in (already out of its link, IP and UDP layers), events out.
//!
//! GTP-C feeds the session table (requests wait in a bounded pending table for their responses);
//! GTP-U G-PDUs are attributed to a session by tunnel, their inner uplink packets are scanned for
//! tokens, and each valid token becomes a sighting (attributed) or an unattributed event. Time comes
//! only from the packet timestamps passed in, so a replay is deterministic.
//!
//! This file holds the configuration, the counters and the correlator's state and clock; one file a
//! concern holds the rest of its methods: `control.rs` (GTP-C pairing and each version's messages),
//! `sessions.rs` (a session's events), `user.rs` (GTP-U attribution, TCP flows and the carriers).
use crate::event::{Attachment, Attribution, Event, Interface, SessionEvent, Sighting, Unattributed};
use crate::flow::{self, FlowKey, FlowState, FlowTable, SegmentOrder};
use crate::pending::{Added, Matched, Pending, PendingTable};
use crate::reason::{DropCounts, DropReason, Note, NoteCounts};
use crate::scan::segment::{collect, scan_segment, Scanner};
use crate::scan::{dns, Carrier, TokenFinder};
use crate::session::{Direction, Endpoint, Session, SessionTable, TunnelKey, SHARED_KEY_MAX};
use crate::sharded::ShardedMap;
use crate::wire::gtpu::{self, Transport};
use crate::wire::{gtpv0, gtpv1, gtpv2, Tbcd, WireError};
use gtpcharge_proto::Token;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

mod control;
mod sessions;
mod user;

/// Limits and ports. Every table has a bound here; see ARCHITECTURE.md for the eviction rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub gtpc_ports: Vec<u16>,
    pub gtpu_ports: Vec<u16>,
    pub gtpv0_ports: Vec<u16>,
    pub sessions_max: usize,
    pub session_idle_timeout_s: u64,
    pub pending_max: usize,
    /// T3-RESPONSE: how long a GTP-C requester waits for a response before it sends the request again.
    pub t3_response_ms: u64,
    /// N3-REQUESTS: how many times it sends a request at most. A response pairs only with a request sent
    /// within T3-RESPONSE x N3-REQUESTS (the retransmission window).
    pub n3_requests: u64,
    pub flows_max: usize,
    pub flow_idle_timeout_s: u64,
    /// Bytes of one packet's payload that are scanned for tokens.
    pub scan_bytes_max: usize,
    /// A token seen again for the same subscriber within this window is not reported again.
    pub sighting_dedupe_window_s: u64,
    pub sighting_dedupe_max: usize,
    /// How long the tunnel ends of an ended session stay marked (traffic on them is never attributed by
    /// UE address during that time).
    pub tombstone_s: u64,
    /// Attribute a G-PDU on an unknown tunnel to the one live session that holds its UE address (see
    /// `Correlator::fallback`). Off by default: a packet on a tunnel no signalling explains means the
    /// probe missed signalling, and the address may have moved on with it (a lost Delete, then a lost
    /// Create of the address's next holder), so the guess can bill the wrong subscriber.
    pub attribute_by_ue_ip: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            gtpc_ports: vec![2123],
            gtpu_ports: vec![2152],
            gtpv0_ports: vec![3386],
            sessions_max: 2_000_000,
            session_idle_timeout_s: 24 * 3600,
            pending_max: 65_536,
            t3_response_ms: 3_000,
            n3_requests: 5,
            flows_max: 1_000_000,
            flow_idle_timeout_s: 300,
            scan_bytes_max: 4096,
            sighting_dedupe_window_s: 600,
            sighting_dedupe_max: 1_000_000,
            tombstone_s: 600,
            attribute_by_ue_ip: false,
        }
    }
}

/// A UDP datagram as the capture layer hands it over.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    pub ts_us: u64,
    /// The capture frame that carried it (from 1, in capture order; 0 when unknown): session events
    /// name the frames of their exchange, so evidence can be gathered.
    pub frame: u64,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub payload: &'a [u8],
}

/// Counters. Every packet that is not fully processed is counted in `drops` under a reason; `notes`
/// counts things worth knowing that are not drops (retransmissions, look-alike tokens ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub datagrams: u64,
    pub gtpc_messages: BTreeMap<(u8, u8), u64>,
    pub gtpu_messages: BTreeMap<u8, u64>,
    pub g_pdus: u64,
    pub sessions_up: u64,
    pub sessions_updated: u64,
    pub sessions_down: u64,
    pub sightings: u64,
    pub unattributed: u64,
    pub drops: DropCounts,
    pub notes: NoteCounts,
}

impl Stats {
    #[inline(always)]
    fn drop(&mut self, reason: DropReason) {
        self.drops.add(reason);
    }
    #[inline(always)]
    fn note(&mut self, what: Note) {
        self.notes.add(what);
    }
}

#[derive(Debug, Clone)]
enum PendingKind {
    CreateV1 { fields: gtpv1::ControlFields, version: u8, tid: Option<u64> },
    UpdateV1 { session: u64, fields: gtpv1::ControlFields, sender_is_access: bool },
    DeleteV1 { sessions: Vec<u64> },
    CreateV2 { fields: gtpv2::ControlFields },
    ModifyV2 { session: u64, fields: gtpv2::ControlFields, sender_is_access: bool },
    DeleteV2 { session: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct DedupeKey {
    token: Token,
    who: u128,
}

const SWEEP_INTERVAL_US: u64 = 1_000_000;
const SESSION_SWEEP_INTERVAL_US: u64 = 60_000_000;
/// At most this many piggybacked GTPv2 messages are read from one datagram.
const PIGGYBACK_MAX: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    UserPlane,
    Control,
    Gtpv0,
    Other,
}

/// What each UDP port is configured as (bits, a port may be several): one load per port instead of a
/// search of three lists per packet.
struct PortClasses(Box<[u8]>);

impl PortClasses {
    const GTPC: u8 = 1;
    const GTPU: u8 = 2;
    const GTPV0: u8 = 4;

    fn new(config: &Config) -> PortClasses {
        let mut classes = vec![0u8; 1 << 16].into_boxed_slice();
        for (ports, class) in
            [(&config.gtpc_ports, Self::GTPC), (&config.gtpu_ports, Self::GTPU), (&config.gtpv0_ports, Self::GTPV0)]
        {
            for &port in ports {
                if let Some(slot) = classes.get_mut(usize::from(port)) {
                    *slot |= class;
                }
            }
        }
        PortClasses(classes)
    }

    #[inline]
    fn of(&self, port: u16) -> u8 {
        self.0.get(usize::from(port)).copied().unwrap_or(0)
    }
}

pub struct Correlator {
    config: Config,
    ports: PortClasses,
    sessions: SessionTable,
    pending: PendingTable<PendingKind>,
    flows: FlowTable,
    dedupe: ShardedMap<DedupeKey, u64>,
    scanner: Scanner,
    stats: Stats,
    now_us: u64,
    /// The frame of the datagram being processed.
    frame: u64,
    next_sweep_us: u64,
    /// When the flows, the sighting dedupe and the tombstones are next swept.
    next_table_sweep_us: [u64; 3],
    next_session_sweep_us: u64,
    /// The earliest of the three above: until then a packet's time moves no sweep (one test per packet).
    next_due_us: u64,
}

impl Correlator {
    pub fn new(config: Config) -> Correlator {
        Correlator {
            ports: PortClasses::new(&config),
            sessions: SessionTable::new(config.sessions_max),
            flows: FlowTable::new(config.flows_max),
            pending: PendingTable::new(config.pending_max),
            dedupe: ShardedMap::default(),
            scanner: Scanner { finder: TokenFinder::default(), bytes_max: config.scan_bytes_max },
            stats: Stats::default(),
            now_us: 0,
            frame: 0,
            next_sweep_us: 0,
            next_table_sweep_us: [0; 3],
            next_session_sweep_us: 0,
            next_due_us: 0,
            config,
        }
    }

    /// The latest packet time seen (the correlator's clock).
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    pub fn flows_len(&self) -> usize {
        self.flows.len()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Gives a live session the evidence store's tag (it comes back in the session's later events and
    /// sightings); `false` if the session is not live.
    pub fn set_evidence_tag(&mut self, session: u64, tag: u32) -> bool {
        self.sessions.set_evidence_tag(session, tag)
    }

    /// Which path a datagram takes, by its ports.
    #[inline(always)]
    fn route(&self, datagram: &Datagram<'_>) -> Route {
        let destination = self.ports.of(datagram.destination.port());
        let either = destination | self.ports.of(datagram.source.port());
        if destination & PortClasses::GTPU != 0 || (either & PortClasses::GTPC == 0 && either & PortClasses::GTPU != 0)
        {
            Route::UserPlane
        } else if either & PortClasses::GTPC != 0 {
            Route::Control
        } else if either & PortClasses::GTPV0 != 0 {
            Route::Gtpv0
        } else {
            Route::Other
        }
    }

    /// Whether a datagram goes the signalling way (GTP-C, or GTPv0 on its own port): what an evidence
    /// store keeps.
    pub fn carries_signalling(&self, datagram: &Datagram<'_>) -> bool {
        matches!(self.route(datagram), Route::Control | Route::Gtpv0)
    }

    /// Processes one UDP datagram; appends what it caused to `out`.
    pub fn on_datagram(&mut self, datagram: &Datagram<'_>, out: &mut Vec<Event>) {
        self.stats.datagrams += 1;
        self.frame = datagram.frame;
        self.advance_time(datagram.ts_us, out);
        match self.route(datagram) {
            Route::UserPlane => self.on_gtpu(datagram, out),
            Route::Control => self.on_gtpc(datagram, out),
            Route::Gtpv0 => self.on_gtpv0(datagram, out),
            Route::Other => self.stats.drop(DropReason::UdpNotGtpPort),
        }
    }

    /// The start of the retransmission window: requests sent before it can no longer be answered.
    fn window_start(&self) -> u64 {
        let window_ms = self.config.t3_response_ms.saturating_mul(self.config.n3_requests.max(1));
        self.now_us.saturating_sub(window_ms.saturating_mul(1000))
    }

    fn advance_time(&mut self, ts_us: u64, out: &mut Vec<Event>) {
        if ts_us <= self.now_us {
            return;
        }
        self.now_us = ts_us;
        if self.now_us < self.next_due_us {
            return;
        }
        if self.now_us >= self.next_sweep_us {
            self.next_sweep_us = self.now_us + SWEEP_INTERVAL_US;
            let since = self.window_start();
            for _ in 0..self.pending.expire(since) {
                self.stats.note(Note::GtpcRequestUnanswered);
            }
        }
        // The big tables are swept every eighth of their own timeout: a full pass over a million flows each
        // second of packet time would cost more than the packets. Between sweeps, lookups check the age
        // themselves (`flow_idle_cutoff`, `dedupe_cutoff`, `tombstone_cutoff`), so an entry past its
        // timeout is never used, only not yet freed.
        let due = |next: &mut u64, timeout_s: u64, now: u64| {
            let due = now >= *next;
            if due {
                *next = now + timeout_s.saturating_mul(1_000_000 / 8).max(SWEEP_INTERVAL_US);
            }
            due
        };
        let mut next = self.next_table_sweep_us;
        let [flows, dedupe, tombstones] = &mut next;
        if due(flows, self.config.flow_idle_timeout_s, self.now_us) {
            self.flows.expire(self.flow_idle_cutoff());
        }
        if due(dedupe, self.config.sighting_dedupe_window_s, self.now_us) {
            let dedupe_cutoff = self.dedupe_cutoff();
            self.dedupe.retain(|_, seen| *seen >= dedupe_cutoff);
        }
        if due(tombstones, self.config.tombstone_s, self.now_us) {
            self.sessions.expire_tombstones(self.tombstone_cutoff());
        }
        self.next_table_sweep_us = next;
        if self.now_us >= self.next_session_sweep_us {
            self.next_session_sweep_us = self.now_us + SESSION_SWEEP_INTERVAL_US;
            let cutoff = self.now_us.saturating_sub(self.config.session_idle_timeout_s * 1_000_000);
            for session in self.sessions.expire(cutoff) {
                self.session_down(&session, "idle-timeout", [0, 0], out);
            }
        }
        let tables = self.next_table_sweep_us.iter().copied().min().unwrap_or(0);
        self.next_due_us = self.next_sweep_us.min(self.next_session_sweep_us).min(tables);
    }

    /// Flows last seen before this are idle: forgotten.
    fn flow_idle_cutoff(&self) -> u64 {
        self.now_us.saturating_sub(self.config.flow_idle_timeout_s * 1_000_000)
    }

    /// Sightings before this no longer suppress a repeat.
    fn dedupe_cutoff(&self) -> u64 {
        self.now_us.saturating_sub(self.config.sighting_dedupe_window_s * 1_000_000)
    }

    /// Tunnel ends of sessions that ended before this are no longer marked.
    fn tombstone_cutoff(&self) -> u64 {
        self.now_us.saturating_sub(self.config.tombstone_s * 1_000_000)
    }
}

fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) >> 2,
    }
}

#[cfg(test)]
#[path = "tests/engine.rs"]
mod tests;
