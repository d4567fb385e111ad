//! The correlator: one UDP datagram in (already out of its link, IP and UDP layers), events out.
//!
//! GTP-C feeds the session table (requests wait in a bounded pending table for their responses);
//! GTP-U G-PDUs are attributed to a session by tunnel, their inner uplink packets are scanned for
//! tokens, and each valid token becomes a sighting (attributed) or an unattributed event. Time comes
//! only from the packet timestamps passed in, so a replay is deterministic.
use crate::event::{Attachment, Attribution, Event, Interface, SessionEvent, Sighting, Unattributed};
use crate::flow::{self, FlowKey, FlowKind, FlowState, FlowTable, SegmentOrder, CARRY_LEN};
use crate::pending::{Added, Matched, Pending, PendingTable};
use crate::scan::{dns, http, tls, Carrier, TokenFinder};
use crate::session::{Direction, Endpoint, Session, SessionTable, TunnelKey, SHARED_KEY_MAX};
use crate::sharded::ShardedMap;
use crate::wire::gtpu::{self, Transport};
use crate::wire::{gtpv0, gtpv1, gtpv2, Tbcd, WireError};
use gtpcharge_proto::Token;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

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

/// Counters. Every packet that is not fully processed lands in `drops` under a reason; `notes` counts
/// things worth knowing that are not drops (retransmissions, look-alike tokens ...).
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
    pub drops: BTreeMap<&'static str, u64>,
    /// Rare notes by name; the frequent ones are plain fields (no map lookup per packet).
    other_notes: BTreeMap<&'static str, u64>,
    g_pdu_downlink: u64,
    g_pdu_unknown_tunnel: u64,
    tcp_retransmission: u64,
    tcp_gap: u64,
}

impl Stats {
    fn drop(&mut self, reason: &'static str) {
        *self.drops.entry(reason).or_default() += 1;
    }
    fn note(&mut self, what: &'static str) {
        *self.other_notes.entry(what).or_default() += 1;
    }

    /// Every note by name (zero counts left out).
    pub fn notes(&self) -> BTreeMap<&'static str, u64> {
        let mut all = self.other_notes.clone();
        for (name, count) in [
            ("g-pdu-downlink", self.g_pdu_downlink),
            ("g-pdu-unknown-tunnel", self.g_pdu_unknown_tunnel),
            ("tcp-retransmission", self.tcp_retransmission),
            ("tcp-gap", self.tcp_gap),
        ] {
            if count > 0 {
                all.insert(name, count);
            }
        }
        all
    }
}

/// The token finder and its per-packet budget.
struct Scanner {
    finder: TokenFinder,
    bytes_max: usize,
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

    /// Counts a packet the capture layer could not decode, so all drops live in one place.
    pub fn count_drop(&mut self, reason: &'static str) {
        self.stats.drop(reason);
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
            Route::Other => self.stats.drop("udp-not-gtp-port"),
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
                self.stats.note("gtpc-request-unanswered");
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

    // ---------------------------------------------------------------- GTP-C

    fn on_gtpc(&mut self, datagram: &Datagram<'_>, out: &mut Vec<Event>) {
        match datagram.payload.first().map(|flags| flags >> 5) {
            Some(1) => self.on_gtpv1c(datagram, out),
            Some(2) => {
                let mut data = datagram.payload;
                for _ in 0..=PIGGYBACK_MAX {
                    match gtpv2::Header::parse(data) {
                        Ok(header) => {
                            self.on_gtpv2c(datagram, &header, out);
                            if !header.piggybacked || header.next.is_empty() {
                                break;
                            }
                            data = header.next;
                        }
                        Err(error) => {
                            self.stats.drop(error.reason());
                            break;
                        }
                    }
                }
            }
            Some(0) => self.on_gtpv0(datagram, out),
            _ => self.stats.drop("gtpc-bad-version"),
        }
    }

    /// Keeps a request until its response, under the proof the response must carry (see `pending.rs`).
    /// A request without a proof is not kept: its response could not be told from another's.
    fn request(&mut self, datagram: &Datagram<'_>, version: u8, sequence: u32, proof: Option<u64>, kind: PendingKind) {
        let Some(proof) = proof else {
            return self.stats.note("gtpc-request-without-control-teid");
        };
        let pending = Pending {
            ts_us: self.now_us,
            frame: datagram.frame,
            requester: datagram.source.ip(),
            responder: datagram.destination.ip(),
            proof,
            kind,
        };
        match self.pending.add(version, sequence, pending) {
            Added::New => {}
            Added::Retransmission => self.stats.note("gtpc-request-retransmitted"),
            Added::Crowded => self.stats.note("pending-sequence-crowded"),
            Added::TableFull => self.stats.drop("pending-table-full"),
        }
    }

    /// The request a response answers, by the proof in its header; counted by reason when there is none.
    fn response(
        &mut self,
        datagram: &Datagram<'_>,
        version: u8,
        sequence: u32,
        proof: Option<u64>,
    ) -> Option<Pending<PendingKind>> {
        let Some(proof) = proof else {
            self.stats.note("gtpc-response-without-teid");
            return None;
        };
        let (requester, responder) = (datagram.destination.ip(), datagram.source.ip());
        match self.pending.take(version, sequence, proof, requester, responder, self.window_start()) {
            Ok((pending, matched)) => {
                match matched {
                    Matched::SameAddresses => {}
                    Matched::OtherResponder => self.stats.note("gtpc-response-from-other-address"),
                    Matched::ProofOnly => self.stats.note("gtpc-response-by-proof-only"),
                }
                Some(pending)
            }
            Err(why) => {
                self.stats.note(why.reason());
                None
            }
        }
    }

    fn on_gtpv1c(&mut self, datagram: &Datagram<'_>, out: &mut Vec<Event>) {
        let header = match gtpv1::Header::parse(datagram.payload) {
            Ok(header) => header,
            Err(error) => return self.stats.drop(error.reason()),
        };
        *self.stats.gtpc_messages.entry((1, header.message_type)).or_default() += 1;
        use gtpv1::message::*;
        let relevant = matches!(
            header.message_type,
            CREATE_PDP_REQUEST
                | CREATE_PDP_RESPONSE
                | UPDATE_PDP_REQUEST
                | UPDATE_PDP_RESPONSE
                | DELETE_PDP_REQUEST
                | DELETE_PDP_RESPONSE
        );
        if !relevant {
            return;
        }
        let Some(sequence) = header.sequence else {
            return self.stats.drop("gtpc-no-sequence");
        };
        let sequence = u32::from(sequence);
        let fields = match gtpv1::ControlFields::parse(header.body) {
            Ok(fields) => fields,
            Err(error) => return self.stats.drop(error.reason()),
        };
        let receiver = TunnelKey { address: datagram.destination.ip(), teid: header.teid };
        match header.message_type {
            CREATE_PDP_REQUEST => {
                let mut fields = fields;
                let mut known_teid_c = None;
                if let (Some(linked), true) = (fields.linked_nsapi, header.teid != 0) {
                    // Secondary context: it inherits the subscriber of the primary it is linked to.
                    match self
                        .sessions
                        .by_control(receiver, linked, datagram.source.ip())
                        .and_then(|id| self.sessions.get(id))
                    {
                        Some(primary) => {
                            fields.imsi = fields.imsi.or(Some(primary.imsi));
                            fields.msisdn = fields.msisdn.or(Some(primary.msisdn));
                            fields.imei = fields.imei.or(Some(primary.imei));
                            fields.ue_ipv4 = fields.ue_ipv4.or(primary.ue_ipv4);
                            fields.ue_ipv6 = fields.ue_ipv6.or(primary.ue_ipv6);
                            if fields.apn.is_none() {
                                fields.apn = primary.apn.as_deref().and_then(crate::wire::Apn::from_text);
                            }
                            known_teid_c = primary.access.control.map(|k| k.teid);
                        }
                        None => self.stats.note("gtpc-secondary-without-primary"),
                    }
                }
                let proof = fields.teid_control.or(known_teid_c).map(u64::from);
                self.request(datagram, 1, sequence, proof, PendingKind::CreateV1 { fields, version: 1, tid: None });
            }
            UPDATE_PDP_REQUEST | DELETE_PDP_REQUEST => {
                let peer = datagram.source.ip();
                let sessions: Vec<u64> = match (header.message_type, fields.teardown, fields.nsapi) {
                    (DELETE_PDP_REQUEST, true, _) | (_, _, None) => {
                        self.sessions.by_control_every_nsapi(receiver, peer)
                    }
                    (_, _, Some(nsapi)) => self.sessions.by_control(receiver, nsapi, peer).into_iter().collect(),
                };
                let Some(first) = sessions.first().and_then(|&id| self.sessions.get(id)) else {
                    return self.stats.note("gtpc-unknown-context");
                };
                // The requester is the side whose control key the request was not sent to.
                let sender_is_access = first.core.control == Some(receiver);
                let sender_end = if sender_is_access { first.access } else { first.core };
                let known_teid_c = sender_end.control.map(|k| k.teid);
                if header.message_type == DELETE_PDP_REQUEST {
                    let proof = known_teid_c.map(u64::from);
                    self.request(datagram, 1, sequence, proof, PendingKind::DeleteV1 { sessions });
                } else {
                    let proof = fields.teid_control.or(known_teid_c).map(u64::from);
                    let kind = PendingKind::UpdateV1 { session: first.id, fields, sender_is_access };
                    self.request(datagram, 1, sequence, proof, kind);
                }
            }
            CREATE_PDP_RESPONSE | UPDATE_PDP_RESPONSE | DELETE_PDP_RESPONSE => {
                let Some(request) = self.response(datagram, 1, sequence, Some(u64::from(header.teid))) else {
                    return;
                };
                let accepted = fields.cause.is_some_and(gtpv1::cause_accepted);
                self.on_v1_response(datagram, request, &fields, accepted, out);
            }
            _ => {}
        }
    }

    fn on_v1_response(
        &mut self,
        datagram: &Datagram<'_>,
        request: Pending<PendingKind>,
        response: &gtpv1::ControlFields,
        accepted: bool,
        out: &mut Vec<Event>,
    ) {
        let (requester, responder) = (datagram.destination.ip(), datagram.source.ip());
        let frames = [request.frame, datagram.frame];
        match request.kind {
            PendingKind::CreateV1 { fields, version, tid } => {
                if !accepted {
                    return self.stats.note("gtpc-create-rejected");
                }
                let access = v1_endpoint(&fields, requester);
                let core = v1_endpoint(response, responder);
                let session = Session {
                    id: 0,
                    gtp_version: version,
                    imsi: fields.imsi.unwrap_or(Tbcd::EMPTY),
                    msisdn: fields.msisdn.unwrap_or(Tbcd::EMPTY),
                    imei: fields.imei.unwrap_or(Tbcd::EMPTY),
                    apn: self.sessions.intern_apn(fields.apn),
                    ue_ipv4: response.ue_ipv4.or(fields.ue_ipv4),
                    ue_ipv6: response.ue_ipv6.or(fields.ue_ipv6),
                    nsapi: fields.nsapi.unwrap_or(0),
                    tid,
                    access,
                    core,
                    last_seen_us: self.now_us,
                    interface: Interface::Gn,
                    evidence_tag: 0,
                };
                self.session_up(session, v1_attachment(&fields, response), frames, out);
            }
            PendingKind::UpdateV1 { session, fields, sender_is_access } => {
                if !accepted {
                    return self.stats.note("gtpc-update-rejected");
                }
                let (sender, responder_side) = (v1_endpoint(&fields, requester), v1_endpoint(response, responder));
                let attachment = v1_attachment(&fields, response);
                self.session_update(session, "updated", attachment, frames, out, |s| {
                    let (sender_end, responder_end) =
                        if sender_is_access { (&mut s.access, &mut s.core) } else { (&mut s.core, &mut s.access) };
                    merge_endpoint(sender_end, sender);
                    merge_endpoint(responder_end, responder_side);
                    s.ue_ipv4 = response.ue_ipv4.or(s.ue_ipv4);
                    s.ue_ipv6 = response.ue_ipv6.or(s.ue_ipv6);
                });
            }
            PendingKind::DeleteV1 { sessions } => {
                // 192 "Non-existent": the peer has no such context either; it is gone all the same.
                if accepted || response.cause == Some(192) {
                    for id in sessions {
                        if let Some(session) = self.sessions.remove(id) {
                            self.session_down(&session, "deleted", frames, out);
                        }
                    }
                } else {
                    self.stats.note("gtpc-delete-rejected");
                }
            }
            _ => self.stats.note("gtpc-response-type-mismatch"),
        }
    }

    fn on_gtpv2c(&mut self, datagram: &Datagram<'_>, header: &gtpv2::Header<'_>, out: &mut Vec<Event>) {
        *self.stats.gtpc_messages.entry((2, header.message_type)).or_default() += 1;
        use gtpv2::message::*;
        if !matches!(header.message_type, CREATE_SESSION_REQUEST..=DELETE_SESSION_RESPONSE) {
            return;
        }
        let fields = match gtpv2::ControlFields::parse(header.body) {
            Ok(fields) => fields,
            Err(error) => return self.stats.drop(error.reason()),
        };
        let sequence = header.sequence;
        let receiver = TunnelKey { address: datagram.destination.ip(), teid: header.teid.unwrap_or(0) };
        match header.message_type {
            CREATE_SESSION_REQUEST => {
                let proof = fields.sender_control.map(|f| u64::from(f.teid));
                self.request(datagram, 2, sequence, proof, PendingKind::CreateV2 { fields });
            }
            MODIFY_BEARER_REQUEST | DELETE_SESSION_REQUEST => {
                let Some(session) =
                    self.sessions.by_control(receiver, 0, datagram.source.ip()).and_then(|id| self.sessions.get(id))
                else {
                    return self.stats.note("gtpc-unknown-context");
                };
                let sender_is_access = session.core.control == Some(receiver);
                let sender_end = if sender_is_access { session.access } else { session.core };
                // A Sender F-TEID for Control Plane in the request (a relocated MME or SGW) is where the
                // response goes; otherwise the requester's known one.
                let proof = fields.sender_control.map(|f| f.teid).or(sender_end.control.map(|k| k.teid));
                let kind = if header.message_type == DELETE_SESSION_REQUEST {
                    PendingKind::DeleteV2 { session: session.id }
                } else {
                    PendingKind::ModifyV2 { session: session.id, fields, sender_is_access }
                };
                self.request(datagram, 2, sequence, proof.map(u64::from), kind);
            }
            CREATE_SESSION_RESPONSE | MODIFY_BEARER_RESPONSE | DELETE_SESSION_RESPONSE => {
                let Some(request) = self.response(datagram, 2, sequence, header.teid.map(u64::from)) else {
                    return;
                };
                let accepted = fields.cause.is_some_and(gtpv2::cause_accepted);
                self.on_v2_response(datagram, request, &fields, accepted, out);
            }
            _ => {}
        }
    }

    fn on_v2_response(
        &mut self,
        datagram: &Datagram<'_>,
        request: Pending<PendingKind>,
        response: &gtpv2::ControlFields,
        accepted: bool,
        out: &mut Vec<Event>,
    ) {
        let (requester, responder) = (datagram.destination.ip(), datagram.source.ip());
        let frames = [request.frame, datagram.frame];
        match request.kind {
            PendingKind::CreateV2 { fields } => {
                if !accepted {
                    return self.stats.note("gtpc-create-rejected");
                }
                let access = Endpoint {
                    control: fields.sender_control.map(|f| fteid_key(&f, requester)),
                    user: fields.downlink_fteid().map(|f| fteid_key(&f, requester)),
                };
                let core = Endpoint {
                    control: response.sender_control.map(|f| fteid_key(&f, responder)),
                    user: response.uplink_fteid().map(|f| fteid_key(&f, responder)),
                };
                let interface = match fields.sender_control.map(|f| Interface::from_fteid_type(f.interface_type)) {
                    Some(Interface::Unknown) | None => response
                        .sender_control
                        .map_or(Interface::Unknown, |f| Interface::from_fteid_type(f.interface_type)),
                    Some(known) => known,
                };
                let session = Session {
                    id: 0,
                    gtp_version: 2,
                    imsi: fields.imsi.unwrap_or(Tbcd::EMPTY),
                    msisdn: fields.msisdn.unwrap_or(Tbcd::EMPTY),
                    imei: fields.mei.unwrap_or(Tbcd::EMPTY),
                    apn: self.sessions.intern_apn(fields.apn),
                    ue_ipv4: response.ue_ipv4.or(fields.ue_ipv4),
                    ue_ipv6: response.ue_ipv6.or(fields.ue_ipv6),
                    nsapi: 0,
                    tid: None,
                    access,
                    core,
                    last_seen_us: self.now_us,
                    interface,
                    evidence_tag: 0,
                };
                self.session_up(session, v2_attachment(&fields, response), frames, out);
            }
            PendingKind::ModifyV2 { session, fields, sender_is_access } => {
                if !accepted {
                    return self.stats.note("gtpc-update-rejected");
                }
                let attachment = v2_attachment(&fields, response);
                self.session_update(session, "updated", attachment, frames, out, |s| {
                    for message in [&fields, response] {
                        if let Some(f) = message.downlink_fteid() {
                            s.access.user = Some(fteid_key(&f, requester));
                        }
                        if let Some(f) = message.uplink_fteid() {
                            s.core.user = Some(fteid_key(&f, responder));
                        }
                    }
                    if let Some(f) = fields.sender_control {
                        let end = if sender_is_access { &mut s.access } else { &mut s.core };
                        end.control = Some(fteid_key(&f, requester));
                    }
                });
            }
            PendingKind::DeleteV2 { session } => {
                // 64 "Context Not Found": the peer has no such session either.
                if accepted || response.cause == Some(64) {
                    if let Some(session) = self.sessions.remove(session) {
                        self.session_down(&session, "deleted", frames, out);
                    }
                } else {
                    self.stats.note("gtpc-delete-rejected");
                }
            }
            _ => self.stats.note("gtpc-response-type-mismatch"),
        }
    }

    fn on_gtpv0(&mut self, datagram: &Datagram<'_>, out: &mut Vec<Event>) {
        let header = match gtpv0::Header::parse(datagram.payload) {
            Ok(header) => header,
            Err(error) => return self.stats.drop(error.reason()),
        };
        *self.stats.gtpc_messages.entry((0, header.message_type)).or_default() += 1;
        use gtpv1::message::*;
        // GTPv0's proof is the TID: a response carries the TID of the context its request named.
        let sequence = u32::from(header.sequence);
        let proof = Some(header.tid_key());
        match header.message_type {
            G_PDU => {
                self.stats.g_pdus += 1;
                let found = self.sessions.by_tid(header.tid_key()).map(|id| {
                    let uplink = self.sessions.get(id).and_then(|s| s.core.user).map(|k| k.address)
                        == Some(datagram.destination.ip());
                    (id, if uplink { Direction::Uplink } else { Direction::Downlink })
                });
                self.on_g_pdu(found, None, header.body, out);
            }
            CREATE_PDP_REQUEST => {
                let mut fields = match gtpv0::control_fields(header.body) {
                    Ok(fields) => fields,
                    Err(error) => return self.stats.drop(error.reason()),
                };
                fields.imsi = Some(header.imsi());
                fields.nsapi = Some(header.nsapi());
                let kind = PendingKind::CreateV1 { fields, version: 0, tid: Some(header.tid_key()) };
                self.request(datagram, 0, sequence, proof, kind);
            }
            CREATE_PDP_RESPONSE => {
                let fields = match gtpv0::control_fields(header.body) {
                    Ok(fields) => fields,
                    Err(error) => return self.stats.drop(error.reason()),
                };
                let Some(request) = self.response(datagram, 0, sequence, proof) else { return };
                let accepted = fields.cause.is_some_and(gtpv1::cause_accepted);
                self.on_v1_response(datagram, request, &fields, accepted, out);
            }
            DELETE_PDP_REQUEST => {
                if let Some(id) = self.sessions.by_tid(header.tid_key()) {
                    self.request(datagram, 0, sequence, proof, PendingKind::DeleteV1 { sessions: vec![id] });
                }
            }
            DELETE_PDP_RESPONSE => {
                let fields = gtpv0::control_fields(header.body).unwrap_or_default();
                let Some(request) = self.response(datagram, 0, sequence, proof) else { return };
                let accepted = fields.cause.is_some_and(gtpv1::cause_accepted);
                self.on_v1_response(datagram, request, &fields, accepted, out);
            }
            _ => {}
        }
    }

    /// A new session from an accepted Create. Where another live session already holds its UE address
    /// for the same IMSI (the same UE seen on another interface: S11 and S5/S8 in one capture), it is
    /// one subscriber: identity values one view lacks are taken from the other (the older view gets a
    /// `session_update` with reason `merged`), and two views that disagree on the MSISDN are counted
    /// (`identity-conflict`) and left as they are.
    fn session_up(&mut self, mut session: Session, attachment: Attachment, frames: [u64; 2], out: &mut Vec<Event>) {
        let mut lacking: [Option<u64>; SHARED_KEY_MAX] = [None; SHARED_KEY_MAX];
        if !session.imsi.is_empty() {
            for ip in [session.ue_ipv4.map(IpAddr::V4), session.ue_ipv6.map(IpAddr::V6)].into_iter().flatten() {
                let mut holders = [0u64; SHARED_KEY_MAX];
                let count = self.sessions.ue_ip_holders(ip, &mut holders);
                for other in holders.iter().take(count).filter_map(|&id| self.sessions.get(id)) {
                    if other.imsi != session.imsi || other.interface == session.interface {
                        continue;
                    }
                    if session.msisdn.is_empty() {
                        session.msisdn = other.msisdn;
                    } else if !other.msisdn.is_empty() && other.msisdn != session.msisdn {
                        self.stats.note("identity-conflict");
                        continue;
                    }
                    if session.imei.is_empty() {
                        session.imei = other.imei;
                    }
                    let gives = (other.msisdn.is_empty() && !session.msisdn.is_empty())
                        || (other.imei.is_empty() && !session.imei.is_empty());
                    if gives && !lacking.contains(&Some(other.id)) {
                        if let Some(slot) = lacking.iter_mut().find(|s| s.is_none()) {
                            *slot = Some(other.id);
                        }
                    }
                }
            }
        }
        let (msisdn, imei) = (session.msisdn, session.imei);
        match self.sessions.insert(session) {
            Ok((id, displaced)) => {
                for old in displaced {
                    self.session_down(&old, "replaced", frames, out);
                }
                if let Some(session) = self.sessions.get(id) {
                    self.stats.sessions_up += 1;
                    out.push(Event::SessionUp(session_event(&session, self.now_us, "created", attachment, frames)));
                }
                self.note_crowding();
                for other in lacking.into_iter().flatten() {
                    self.session_update(other, "merged", Attachment::default(), frames, out, |s| {
                        if s.msisdn.is_empty() {
                            s.msisdn = msisdn;
                        }
                        if s.imei.is_empty() {
                            s.imei = imei;
                        }
                    });
                }
            }
            Err(reason) => self.stats.drop(reason),
        }
    }

    fn session_update(
        &mut self,
        id: u64,
        reason: &'static str,
        attachment: Attachment,
        frames: [u64; 2],
        out: &mut Vec<Event>,
        change: impl FnOnce(&mut Session),
    ) {
        let displaced = match self.sessions.update(id, change) {
            Ok(displaced) => displaced,
            Err(reason) => return self.stats.drop(reason),
        };
        for old in displaced {
            self.session_down(&old, "replaced", frames, out);
        }
        self.sessions.touch(id, self.now_us);
        if let Some(session) = self.sessions.get(id) {
            self.stats.sessions_updated += 1;
            out.push(Event::SessionUpdate(session_event(&session, self.now_us, reason, attachment, frames)));
        }
        self.note_crowding();
    }

    /// Sessions the table left out of a crowded index (see `session::SHARED_KEY_MAX`), as notes.
    fn note_crowding(&mut self) {
        let (control, ue_ip) = self.sessions.crowded();
        for (name, count) in [("control-key-crowded", control), ("ue-ip-crowded", ue_ip)] {
            if count > 0 {
                self.stats.other_notes.insert(name, count);
            }
        }
    }

    fn session_down(&mut self, session: &Session, reason: &'static str, frames: [u64; 2], out: &mut Vec<Event>) {
        self.stats.sessions_down += 1;
        out.push(Event::SessionDown(session_event(session, self.now_us, reason, Attachment::default(), frames)));
    }

    // ---------------------------------------------------------------- GTP-U

    fn on_gtpu(&mut self, datagram: &Datagram<'_>, out: &mut Vec<Event>) {
        let header = match gtpv1::Header::parse(datagram.payload) {
            Ok(header) => header,
            Err(WireError::Version(_)) if datagram.payload.first().map(|f| f >> 5) == Some(0) => {
                return self.on_gtpv0(datagram, out);
            }
            Err(error) => return self.stats.drop(error.reason()),
        };
        if header.message_type != gtpv1::message::G_PDU {
            *self.stats.gtpu_messages.entry(header.message_type).or_default() += 1;
            return;
        }
        self.stats.g_pdus += 1;
        let tunnel = TunnelKey { address: datagram.destination.ip(), teid: header.teid };
        let found = self.sessions.by_user(tunnel);
        self.on_g_pdu(found, Some(tunnel), header.body, out);
    }

    /// A G-PDU of a known session, by direction, or of an unknown tunnel. Downlink (half the G-PDUs) only
    /// keeps the session alive and is not decoded further: tokens count only in the subscriber's own,
    /// uplink, traffic. Inlined into both GTP versions' paths, so a downlink packet makes no call.
    #[inline(always)]
    fn on_g_pdu(
        &mut self,
        found: Option<(u64, Direction)>,
        tunnel: Option<TunnelKey>,
        inner: &[u8],
        out: &mut Vec<Event>,
    ) {
        match found {
            Some((id, Direction::Downlink)) => {
                self.sessions.touch(id, self.now_us);
                self.stats.g_pdu_downlink += 1;
            }
            _ => self.on_user_packet(found.map(|(id, _)| id), tunnel, inner, out),
        }
    }

    /// One uplink subscriber packet; `found` is the tunnel's session, if the tunnel is known.
    fn on_user_packet(&mut self, found: Option<u64>, tunnel: Option<TunnelKey>, inner: &[u8], out: &mut Vec<Event>) {
        let now = self.now_us;
        let packet = match gtpu::inner_packet(inner) {
            Ok(packet) => packet,
            Err(error) => return self.stats.drop(error.reason()),
        };
        let mut unattributed_reason = "unknown-tunnel";
        let attributed = match found {
            Some(id) => {
                let owns_source = self.sessions.touch_from(id, now, packet.source);
                if !owns_source {
                    self.stats.note("inner-source-not-ue-ip");
                }
                Some((id, Attribution::Tunnel))
            }
            None => {
                self.stats.g_pdu_unknown_tunnel += 1;
                match self.fallback(tunnel, packet.source) {
                    Ok(id) if self.config.attribute_by_ue_ip => {
                        self.sessions.touch(id, now);
                        self.stats.note("attributed-by-ue-ip");
                        Some((id, Attribution::UeIp))
                    }
                    Ok(_) => {
                        // What the fallback would have attributed: the sales the default leaves unmade.
                        self.stats.note("unknown-tunnel-ue-ip-held");
                        None
                    }
                    Err(reason) => {
                        unattributed_reason = reason;
                        None
                    }
                }
            }
        };
        let session_id = attributed.map_or(0, |(id, _)| id);
        let mut found_tokens: [Option<(Token, Carrier)>; 4] = [None; 4];
        let (source_port, destination_port) = match packet.transport {
            Transport::Udp { source_port, destination_port, payload } => {
                if destination_port == 53 {
                    let mut name = [0u8; dns::NAME_MAX];
                    match dns::query_name(payload, &mut name) {
                        Ok(len) => {
                            let name = name.get(..len).unwrap_or_default();
                            collect(&self.scanner, &mut self.stats, name, Carrier::Dns, &mut found_tokens);
                        }
                        Err(_) => self.stats.note("dns-not-a-query"),
                    }
                }
                (source_port, destination_port)
            }
            Transport::Tcp { source_port, destination_port, sequence, syn, fin, rst, payload } => {
                let key = FlowKey::new(session_id, packet.source, packet.destination, source_port, destination_port);
                self.on_tcp(key, sequence, syn, fin || rst, payload, &mut found_tokens);
                (source_port, destination_port)
            }
            Transport::Other => return,
        };
        if let [None, ..] = found_tokens {
            return; // the common case; `push_token` fills the slots in order
        }
        let source = SocketAddr::new(packet.source, source_port);
        let destination = SocketAddr::new(packet.destination, destination_port);
        for (token, carrier) in found_tokens.into_iter().flatten() {
            self.report(token, carrier, source, destination, attributed, unattributed_reason, out);
        }
    }

    /// The UE-address fallback for a G-PDU on an unknown tunnel, used only with
    /// [`Config::attribute_by_ue_ip`]. It answers only when the signalling the probe saw allows one
    /// subscriber: the tunnel is not one of an ended session, exactly one live session holds the address,
    /// and that session's uplink tunnel ends at the same GSN address the packet was sent to. Signalling
    /// the probe did not see can still make that subscriber the wrong one, hence off by default.
    ///
    /// The same UE seen on two interfaces (S11 and S5/S8) is held by two sessions, one per interface;
    /// their uplink tunnels end at different GSNs, so the GSN the packet was sent to picks one. Two
    /// holders left at the same GSN answer only when they are the same subscriber (same IMSI and
    /// MSISDN, so the sighting is the same); otherwise the token stays unattributed.
    fn fallback(&self, tunnel: Option<TunnelKey>, source: IpAddr) -> Result<u64, &'static str> {
        if tunnel.is_some_and(|t| self.sessions.is_tombstone(t, self.tombstone_cutoff())) {
            return Err("ended-tunnel");
        }
        let mut holders = [0u64; SHARED_KEY_MAX];
        let count = self.sessions.ue_ip_holders(source, &mut holders);
        if count == 0 {
            return Err(if self.sessions.is_empty() { "no-live-session" } else { "unknown-tunnel" });
        }
        let mut chosen: Option<Session> = None;
        for session in holders.iter().take(count).filter_map(|&id| self.sessions.get(id)) {
            let same_gsn = match (tunnel, session.core.user) {
                (Some(tunnel), Some(core)) => tunnel.address == core.address,
                (None, _) => true, // GTPv0: no tunnel key, the TID lookup already failed
                (Some(_), None) => false,
            };
            if !same_gsn {
                continue;
            }
            match &chosen {
                None => chosen = Some(session),
                Some(first) => {
                    let same_subscriber =
                        !first.imsi.is_empty() && first.imsi == session.imsi && first.msisdn == session.msisdn;
                    if !same_subscriber {
                        return Err("unknown-tunnel");
                    }
                }
            }
        }
        chosen.map(|s| s.id).ok_or("unknown-tunnel")
    }

    fn on_tcp(
        &mut self,
        key: FlowKey,
        sequence: u32,
        syn: bool,
        closing: bool,
        payload: &[u8],
        found: &mut [Option<(Token, Carrier)>; 4],
    ) {
        let now = self.now_us;
        if syn {
            // A new connection: any older state under this key is from a previous one.
            if !self.flows.insert(key, FlowState::new(sequence.wrapping_add(1), now)) {
                self.stats.drop("flow-table-full");
            }
            return;
        }
        if payload.is_empty() {
            if closing {
                self.flows.remove(&key);
            }
            return;
        }
        let idle_cutoff = self.flow_idle_cutoff();
        let Correlator { flows, scanner, stats, .. } = self;
        let Some(state) = flows.get_or_insert(key, || FlowState::new(sequence, now)) else {
            // No room for state: scan this segment alone (no carry, no retransmission check).
            stats.note("flow-table-full");
            let mut state = FlowState::new(sequence, now);
            scan_segment(scanner, stats, &mut state, payload, 0, false, found);
            return;
        };
        if state.last_seen_us < idle_cutoff {
            *state = FlowState::new(sequence, now); // idle past its timeout, not yet swept: a new flow
        }
        state.last_seen_us = now;
        let (skip, contiguous) = match flow::order(state.next_sequence, sequence, payload.len()) {
            SegmentOrder::Retransmission => {
                stats.tcp_retransmission += 1;
                return;
            }
            SegmentOrder::InOrder { skip } => (skip, true),
            SegmentOrder::AfterGap => {
                stats.tcp_gap += 1;
                (0, false)
            }
        };
        let end = sequence.wrapping_add(payload.len() as u32);
        if end.wrapping_sub(state.next_sequence) as i32 > 0 || !contiguous {
            state.next_sequence = end;
        }
        scan_segment(scanner, stats, state, payload, skip, contiguous, found);
        if closing {
            self.flows.remove(&key);
        }
    }

    #[allow(clippy::too_many_arguments)] // the sighting's parts, gathered once per found token
    fn report(
        &mut self,
        token: Token,
        carrier: Carrier,
        source: SocketAddr,
        destination: SocketAddr,
        attributed: Option<(u64, Attribution)>,
        unattributed_reason: &'static str,
        out: &mut Vec<Event>,
    ) {
        let session = attributed.and_then(|(id, how)| self.sessions.get(id).map(|s| (s, how)));
        let who = match &session {
            Some((s, _)) if !s.imsi.is_empty() => u128::from(u64::from_le_bytes(s.imsi.packed())),
            Some((s, _)) if !s.msisdn.is_empty() => u128::from(u64::from_le_bytes(s.msisdn.packed())) | 1 << 64,
            Some((s, _)) => u128::from(s.id) | 2 << 64,
            None => ip_bits(source.ip()) | 3 << 126,
        };
        let key = DedupeKey { token, who };
        if self.dedupe.get(&key).is_some_and(|seen| *seen >= self.dedupe_cutoff()) {
            self.stats.note("sighting-duplicate");
            return;
        }
        let room = self.dedupe.len() < self.config.sighting_dedupe_max;
        if let Some(seen) = self.dedupe.get_or_insert_with(key, room, || 0) {
            *seen = self.now_us;
        }
        match session {
            Some((session, attribution)) => {
                self.stats.sightings += 1;
                out.push(Event::Sighting(Sighting {
                    ts_us: self.now_us,
                    token,
                    identity: session.identity(),
                    carrier,
                    source,
                    destination,
                    attribution,
                    evidence_tag: session.evidence_tag,
                    evidence: None,
                }));
            }
            None => {
                self.stats.unattributed += 1;
                out.push(Event::Unattributed(Unattributed {
                    ts_us: self.now_us,
                    token,
                    ue_ip: source.ip(),
                    reason: unattributed_reason,
                    carrier,
                    source,
                    destination,
                }));
            }
        }
    }
}

/// Scans the new bytes of a segment (`payload[skip..]`) with the flow's carrier rules.
fn scan_segment(
    scanner: &Scanner,
    stats: &mut Stats,
    state: &mut FlowState,
    payload: &[u8],
    skip: usize,
    contiguous: bool,
    found: &mut [Option<(Token, Carrier)>; 4],
) {
    let fresh = payload.get(skip..).unwrap_or_default();
    if state.kind == FlowKind::Undecided {
        // A fresh `HttpState` yields a region exactly when the segment starts with a request method, so
        // the method test decides without walking the request's lines twice.
        state.kind = if fresh.starts_with(&[0x16, 0x03]) {
            FlowKind::Tls
        } else if http::starts_request(fresh) {
            FlowKind::Http
        } else {
            FlowKind::Other
        };
        if state.kind == FlowKind::Tls {
            let mut name = [0u8; dns::NAME_MAX];
            match tls::client_hello_sni(fresh, &mut name) {
                Ok(len) => collect(scanner, stats, name.get(..len).unwrap_or_default(), Carrier::TlsSni, found),
                Err(tls::TlsError::Truncated) => stats.note("tls-client-hello-truncated"),
                Err(_) => stats.note("tls-no-server-name"),
            }
            return;
        }
    }
    if state.kind != FlowKind::Http {
        return;
    }
    if !contiguous {
        state.carry_len = 0;
    }
    let budget = scanner.bytes_max;
    let mut regions: [Option<(Carrier, std::ops::Range<usize>)>; 8] = Default::default();
    let mut count = 0usize;
    state.http.regions(fresh, |carrier, range| {
        if let Some(slot) = regions.get_mut(count) {
            *slot = Some((carrier, range));
            count += 1;
        }
    });
    // A token that began in the previous segment: join the carry with the head of this one.
    if state.carry_len > 0 {
        let carry = state.carry();
        let head = fresh.get(..CARRY_LEN.min(fresh.len())).unwrap_or_default();
        let carry_len = carry.len();
        let mut joined = [0u8; 2 * CARRY_LEN];
        if let Some(slot) = joined.get_mut(..carry_len) {
            slot.copy_from_slice(carry);
        }
        if let Some(slot) = joined.get_mut(carry_len..carry_len + head.len()) {
            slot.copy_from_slice(head);
        }
        let carrier = state.carry_carrier;
        let joined = joined.get(..carry_len + head.len()).unwrap_or_default();
        // Only tokens that start in the carry are new here; look-alikes are counted in their segment.
        scanner.finder.scan(joined, |at, token| {
            if at < carry_len {
                push_token(found, token, carrier)
            }
        });
    }
    state.carry_len = 0;
    for (carrier, range) in regions.iter().flatten().cloned() {
        let start = range.start.min(budget);
        let end = range.end.min(budget);
        let Some(bytes) = fresh.get(start..end) else { continue };
        collect(scanner, stats, bytes, carrier, found);
        if range.end == fresh.len() {
            state.keep_tail(fresh.get(range.clone()).unwrap_or_default(), carrier);
        }
    }
}

fn collect(
    scanner: &Scanner,
    stats: &mut Stats,
    haystack: &[u8],
    carrier: Carrier,
    found: &mut [Option<(Token, Carrier)>; 4],
) {
    let haystack = haystack.get(..scanner.bytes_max).unwrap_or(haystack);
    let counts = scanner.finder.scan(haystack, |_, token| push_token(found, token, carrier));
    for _ in 0..counts.rejected {
        stats.note("token-look-alike");
    }
}

fn push_token(found: &mut [Option<(Token, Carrier)>; 4], token: Token, carrier: Carrier) {
    if found.iter().flatten().any(|(t, _)| *t == token) {
        return;
    }
    if let Some(slot) = found.iter_mut().find(|s| s.is_none()) {
        *slot = Some((token, carrier));
    }
}

fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) >> 2,
    }
}

fn session_event(
    session: &Session,
    ts_us: u64,
    reason: &'static str,
    mut attachment: Attachment,
    frames: [u64; 2],
) -> SessionEvent {
    if reason == "created" || reason == "updated" {
        // The serving node is the access side's control end (SGSN, MME, SGW on S5/S8).
        attachment.serving_node = session.access.control.map(|k| k.address);
    }
    SessionEvent {
        ts_us,
        identity: session.identity(),
        teid_up: session.teid_up(),
        teid_down: session.teid_down(),
        gtp_version: session.gtp_version,
        reason,
        interface: session.interface,
        attachment,
        frames,
        evidence_tag: session.evidence_tag,
    }
}

/// What a GTPv0/v1 exchange says of the attachment: RAT and location from the request, the GGSN's
/// Charging ID from the response.
fn v1_attachment(request: &gtpv1::ControlFields, response: &gtpv1::ControlFields) -> Attachment {
    Attachment {
        rat_type: request.rat_type.or(response.rat_type),
        uli: request.uli.or(response.uli),
        charging_id: response.charging_id.or(request.charging_id),
        serving_node: None,
    }
}

/// What a GTPv2 exchange says of the attachment (as [`v1_attachment`]).
fn v2_attachment(request: &gtpv2::ControlFields, response: &gtpv2::ControlFields) -> Attachment {
    Attachment {
        rat_type: request.rat_type.or(response.rat_type),
        uli: request.uli.or(response.uli),
        charging_id: response.charging_id.or(request.charging_id),
        serving_node: None,
    }
}

/// A GTPv1 sender's tunnel ends: GSN addresses (control, then user) and TEIDs from its IEs; the packet's
/// source address stands in for a missing GSN address.
fn v1_endpoint(fields: &gtpv1::ControlFields, sender: IpAddr) -> Endpoint {
    let control_address = fields.gsn_control.unwrap_or(sender);
    let user_address = fields.gsn_user.unwrap_or(control_address);
    Endpoint {
        control: fields.teid_control.map(|teid| TunnelKey { address: control_address, teid }),
        user: fields.teid_data.map(|teid| TunnelKey { address: user_address, teid }),
    }
}

fn merge_endpoint(end: &mut Endpoint, new: Endpoint) {
    end.control = new.control.or(end.control);
    end.user = new.user.or(end.user);
}

fn fteid_key(fteid: &gtpv2::FTeid, sender: IpAddr) -> TunnelKey {
    TunnelKey { address: fteid.address().unwrap_or(sender), teid: fteid.teid }
}

#[cfg(test)]
mod tests;
