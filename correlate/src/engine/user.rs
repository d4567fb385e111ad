//! GTP-U: uplink packets attributed to their tunnel's session (or, opt-in, by UE address), TCP flows
//! followed across segments, and each carrier's bytes scanned for tokens; every token reported once
//! within the dedupe window.
use super::*;

impl Correlator {
    pub(super) fn on_gtpu(&mut self, datagram: &Datagram<'_>, out: &mut Vec<Event>) {
        let header = match gtpv1::Header::parse(datagram.payload) {
            Ok(header) => header,
            Err(WireError::Version(_)) if datagram.payload.first().map(|f| f >> 5) == Some(0) => {
                return self.on_gtpv0(datagram, out);
            }
            Err(error) => return self.stats.dropped(error.reason()),
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
    pub(super) fn on_g_pdu(
        &mut self,
        found: Option<(u64, Direction)>,
        tunnel: Option<TunnelKey>,
        inner: &[u8],
        out: &mut Vec<Event>,
    ) {
        match found {
            Some((id, Direction::Downlink)) => {
                self.sessions.touch(id, self.now_us);
                self.stats.note(Note::GPduDownlink);
            }
            _ => self.on_user_packet(found.map(|(id, _)| id), tunnel, inner, out),
        }
    }

    /// One uplink subscriber packet; `found` is the tunnel's session, if the tunnel is known.
    pub(super) fn on_user_packet(
        &mut self,
        found: Option<u64>,
        tunnel: Option<TunnelKey>,
        inner: &[u8],
        out: &mut Vec<Event>,
    ) {
        let now = self.now_us;
        let packet = match gtpu::inner_packet(inner) {
            Ok(packet) => packet,
            Err(error) => return self.stats.dropped(error.reason()),
        };
        let mut unattributed_reason = "unknown-tunnel";
        let attributed = match found {
            Some(id) => {
                let owns_source = self.sessions.touch_from(id, now, packet.source);
                if !owns_source {
                    self.stats.note(Note::InnerSourceNotUeIp);
                }
                Some((id, Attribution::Tunnel))
            }
            None => {
                self.stats.note(Note::GPduUnknownTunnel);
                match self.fallback(tunnel, packet.source) {
                    Ok(id) if self.config.attribute_by_ue_ip => {
                        self.sessions.touch(id, now);
                        self.stats.note(Note::AttributedByUeIp);
                        Some((id, Attribution::UeIp))
                    }
                    Ok(_) => {
                        // What the fallback would have attributed: the sales the default leaves unmade.
                        self.stats.note(Note::UnknownTunnelUeIpHeld);
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
                            collect(&self.scanner, &mut |n| self.stats.note(n), name, Carrier::Dns, &mut found_tokens);
                        }
                        Err(_) => self.stats.note(Note::DnsNotAQuery),
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
            self.report(token, carrier, (source, destination), tunnel, attributed, unattributed_reason, out);
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
    pub(super) fn fallback(&self, tunnel: Option<TunnelKey>, source: IpAddr) -> Result<u64, &'static str> {
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

    pub(super) fn on_tcp(
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
                self.stats.dropped(DropReason::FlowTableFull);
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
            stats.note(Note::FlowTableFull);
            let mut state = FlowState::new(sequence, now);
            scan_segment(scanner, &mut |n| stats.note(n), &mut state, payload, 0, false, found);
            return;
        };
        if state.last_seen_us < idle_cutoff {
            *state = FlowState::new(sequence, now); // idle past its timeout, not yet swept: a new flow
        }
        state.last_seen_us = now;
        let (skip, contiguous) = match flow::order(state.next_sequence, sequence, payload.len()) {
            SegmentOrder::Retransmission => {
                stats.note(Note::TcpRetransmission);
                return;
            }
            SegmentOrder::InOrder { skip } => (skip, true),
            SegmentOrder::AfterGap => {
                stats.note(Note::TcpGap);
                (0, false)
            }
        };
        let end = sequence.wrapping_add(payload.len() as u32);
        if end.wrapping_sub(state.next_sequence) as i32 > 0 || !contiguous {
            state.next_sequence = end;
        }
        scan_segment(scanner, &mut |n| stats.note(n), state, payload, skip, contiguous, found);
        if closing {
            self.flows.remove(&key);
        }
    }

    #[allow(clippy::too_many_arguments)] // the sighting's parts, gathered once per found token
    pub(super) fn report(
        &mut self,
        token: Token,
        carrier: Carrier,
        (source, destination): (SocketAddr, SocketAddr),
        tunnel: Option<TunnelKey>,
        attributed: Option<(u64, Attribution)>,
        unattributed_reason: &'static str,
        out: &mut Vec<Event>,
    ) {
        let session = attributed.and_then(|(id, how)| self.sessions.get(id).map(|s| (s, how)));
        match session {
            Some((session, attribution)) => {
                let event = Event::Sighting(Sighting {
                    ts_us: self.now_us,
                    token,
                    identity: session.identity(),
                    carrier,
                    source,
                    destination,
                    attribution,
                    evidence_tag: session.evidence_tag,
                    evidence: None,
                });
                if self.admit(&event) {
                    self.stats.sightings += 1;
                    out.push(event);
                }
            }
            None => {
                let event = Event::Unattributed(Unattributed {
                    ts_us: self.now_us,
                    token,
                    ue_ip: source.ip(),
                    reason: unattributed_reason,
                    tunnel,
                    carrier,
                    source,
                    destination,
                });
                if self.admit(&event) {
                    self.stats.unattributed += 1;
                    out.push(event);
                }
            }
        }
    }

    /// Whether the dedupe lets a token event through (counted when it does not).
    fn admit(&mut self, event: &Event) -> bool {
        let admitted = self.dedupe.as_mut().is_none_or(|dedupe| dedupe.admit(event));
        if !admitted {
            self.stats.note(Note::SightingDuplicate);
        }
        admitted
    }
}
