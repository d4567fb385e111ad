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
use crate::clock::{Clock, Due};
use crate::dedupe::Dedupe;
use crate::event::{Attachment, Attribution, Event, Interface, SessionEvent, Sighting, Unattributed};
use crate::flow::{self, FlowKey, FlowState, FlowTable, SegmentOrder};
use crate::pending::{Added, Matched, Pending, PendingTable};
use crate::reason::{DropCounts, DropReason, Note, NoteCounts};
use crate::scan::segment::{collect, scan_segment, Scanner};
use crate::scan::{dns, Carrier, TokenFinder};
use crate::session::{Direction, Endpoint, Session, SessionTable, TunnelKey, SHARED_KEY_MAX};
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
    /// Adds another correlator's counters (the probe's shards: each counts what it alone processed).
    pub fn merge(&mut self, other: &Stats) {
        self.datagrams += other.datagrams;
        for (message, count) in &other.gtpc_messages {
            *self.gtpc_messages.entry(*message).or_default() += count;
        }
        for (message, count) in &other.gtpu_messages {
            *self.gtpu_messages.entry(*message).or_default() += count;
        }
        self.g_pdus += other.g_pdus;
        self.sessions_up += other.sessions_up;
        self.sessions_updated += other.sessions_updated;
        self.sessions_down += other.sessions_down;
        self.sightings += other.sightings;
        self.unattributed += other.unattributed;
        self.drops.merge(&other.drops);
        self.notes.merge(&other.notes);
    }

    #[inline(always)]
    fn dropped(&mut self, reason: DropReason) {
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

/// Where the probe's dispatcher sends a datagram when several shards correlate (`src/shards.rs`).
pub struct ShardRouter {
    ports: PortClasses,
}

impl ShardRouter {
    pub fn new(config: &Config) -> ShardRouter {
        ShardRouter { ports: PortClasses::new(config) }
    }

    /// The key a G-PDU is sharded by: its inner source address (the UE's, uplink), so a UE address's
    /// flows meet on one shard whatever tunnel they take. `None` for everything else (GTP-C, GTPv0,
    /// other GTP-U messages, what does not parse): every shard follows it, one counts it.
    pub fn key(&self, datagram: &Datagram<'_>) -> Option<u128> {
        if route(&self.ports, datagram) != Route::UserPlane {
            return None;
        }
        let header = gtpv1::Header::parse(datagram.payload).ok()?;
        if header.message_type != gtpv1::message::G_PDU {
            return None;
        }
        gtpu::inner_source(header.body).map(crate::ip_word)
    }
}

/// Which path a datagram takes, by its ports.
#[inline(always)]
fn route(ports: &PortClasses, datagram: &Datagram<'_>) -> Route {
    let destination = ports.of(datagram.destination.port());
    let either = destination | ports.of(datagram.source.port());
    if destination & PortClasses::GTPU != 0 || (either & PortClasses::GTPC == 0 && either & PortClasses::GTPU != 0) {
        Route::UserPlane
    } else if either & PortClasses::GTPC != 0 {
        Route::Control
    } else if either & PortClasses::GTPV0 != 0 {
        Route::Gtpv0
    } else {
        Route::Other
    }
}

pub struct Correlator {
    config: Config,
    ports: PortClasses,
    sessions: SessionTable,
    pending: PendingTable<PendingKind>,
    flows: FlowTable,
    /// `None` where the events are deduplicated after this correlator (the probe's shards).
    dedupe: Option<Dedupe>,
    scanner: Scanner,
    /// Boxed, so that setting the counters aside (`uncounted`) swaps two pointers, not two kilobytes.
    stats: Box<Stats>,
    /// Where the counters go while [`Correlator::uncounted`] runs.
    set_aside: Box<Stats>,
    now_us: u64,
    clock: Clock,
    /// The frame of the datagram being processed.
    frame: u64,
    /// With shards: which of this correlator's idle sessions every shard agrees are idle.
    idle_agreement: Option<IdleAgreement>,
}

/// Given the ids of the sessions one shard found idle (ascending), the ids every shard found idle: a
/// session is idle only if no shard saw its traffic, and each shard sees only its own share of it.
pub type IdleAgreement = Box<dyn FnMut(Vec<u64>) -> Vec<u64> + Send>;

impl Correlator {
    pub fn new(config: Config) -> Correlator {
        Correlator {
            ports: PortClasses::new(&config),
            sessions: SessionTable::new(config.sessions_max),
            flows: FlowTable::new(config.flows_max),
            pending: PendingTable::new(config.pending_max),
            dedupe: Some(Dedupe::new(config.sighting_dedupe_window_s, config.sighting_dedupe_max)),
            scanner: Scanner { finder: TokenFinder::default(), bytes_max: config.scan_bytes_max },
            stats: Box::default(),
            set_aside: Box::default(),
            now_us: 0,
            clock: Clock::new(&config),
            frame: 0,
            idle_agreement: None,
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
        route(&self.ports, datagram)
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
            Route::Other => self.stats.dropped(DropReason::UdpNotGtpPort),
        }
    }

    /// The start of the retransmission window: requests sent before it can no longer be answered.
    fn window_start(&self) -> u64 {
        let window_ms = self.config.t3_response_ms.saturating_mul(self.config.n3_requests.max(1));
        self.now_us.saturating_sub(window_ms.saturating_mul(1000))
    }

    fn advance_time(&mut self, ts_us: u64, out: &mut Vec<Event>) {
        let due = self.clock.advance(ts_us);
        self.now_us = self.clock.now_us();
        if let Some(due) = due {
            self.sweep(due, out);
        }
    }

    #[inline(never)]
    fn sweep(&mut self, due: Due, out: &mut Vec<Event>) {
        self.sessions.set_now(self.now_us);
        if due.pending {
            let since = self.window_start();
            for _ in 0..self.pending.expire(since) {
                self.stats.note(Note::GtpcRequestUnanswered);
            }
        }
        if due.flows {
            self.flows.expire(self.flow_idle_cutoff());
        }
        if let (true, Some(dedupe)) = (due.dedupe, &mut self.dedupe) {
            dedupe.sweep(self.now_us);
        }
        if due.tombstones {
            self.sessions.expire_tombstones(self.tombstone_cutoff());
        }
        if due.sessions {
            let cutoff = self.now_us.saturating_sub(self.config.session_idle_timeout_s * 1_000_000);
            let mut idle = self.sessions.idle(cutoff);
            if let Some(agree) = &mut self.idle_agreement {
                idle = agree(idle);
            }
            for id in idle {
                if let Some(session) = self.sessions.remove(id) {
                    self.session_down(&session, "idle-timeout", [0, 0], out);
                }
            }
        }
    }

    /// Moves the clock to `now_us` without a datagram, running the sweeps that fall due (a shard is
    /// told the time of the packets other shards process when a sweep falls on one).
    pub fn advance(&mut self, now_us: u64, out: &mut Vec<Event>) {
        self.advance_time(now_us, out);
    }

    /// Runs `work` with the counters set aside: a shard's copy of what another shard counts (every
    /// shard follows the whole control plane; one counts it).
    pub fn uncounted<R>(&mut self, work: impl FnOnce(&mut Correlator) -> R) -> R {
        std::mem::swap(&mut self.stats, &mut self.set_aside);
        let result = work(self);
        std::mem::swap(&mut self.stats, &mut self.set_aside);
        result
    }

    /// Leaves the sighting dedupe to whoever reads this correlator's events (the shards' merge).
    pub fn without_sighting_dedupe(&mut self) {
        self.dedupe = None;
    }

    /// With shards: how idle sessions are agreed on (see [`IdleAgreement`]).
    pub fn set_idle_agreement(&mut self, agreement: IdleAgreement) {
        self.idle_agreement = Some(agreement);
    }

    /// Flows last seen before this are idle: forgotten.
    fn flow_idle_cutoff(&self) -> u64 {
        self.now_us.saturating_sub(self.config.flow_idle_timeout_s * 1_000_000)
    }

    /// Tunnel ends of sessions that ended before this are no longer marked.
    fn tombstone_cutoff(&self) -> u64 {
        self.now_us.saturating_sub(self.config.tombstone_s * 1_000_000)
    }
}

#[cfg(test)]
#[path = "tests/engine.rs"]
mod tests;
