//! GTP-C: requests kept until their response, responses paired by proof (`pending.rs`), and what each
//! accepted Create, Update and Delete does, per GTP version (v1 and v0 on Gn, v2 on S11 and S5/S8).
use super::*;

impl Correlator {
    pub(super) fn on_gtpc(&mut self, datagram: &Datagram<'_>, out: &mut Vec<Event>) {
        self.sessions.set_now(self.now_us);
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
                            self.stats.dropped(error.reason());
                            break;
                        }
                    }
                }
            }
            Some(0) => self.on_gtpv0(datagram, out),
            _ => self.stats.dropped(DropReason::GtpcBadVersion),
        }
    }

    /// Keeps a request until its response, under the proof the response must carry (see `pending.rs`).
    /// A request without a proof is not kept: its response could not be told from another's.
    pub(super) fn request(
        &mut self,
        datagram: &Datagram<'_>,
        version: u8,
        sequence: u32,
        proof: Option<u64>,
        kind: PendingKind,
    ) {
        let Some(proof) = proof else {
            return self.stats.note(Note::GtpcRequestWithoutControlTeid);
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
            Added::Retransmission => self.stats.note(Note::GtpcRequestRetransmitted),
            Added::Crowded => self.stats.note(Note::PendingSequenceCrowded),
            Added::TableFull => self.stats.dropped(DropReason::PendingTableFull),
        }
    }

    /// The request a response answers, by the proof in its header; counted by reason when there is none.
    pub(super) fn response(
        &mut self,
        datagram: &Datagram<'_>,
        version: u8,
        sequence: u32,
        proof: Option<u64>,
    ) -> Option<Pending<PendingKind>> {
        let Some(proof) = proof else {
            self.stats.note(Note::GtpcResponseWithoutTeid);
            return None;
        };
        let (requester, responder) = (datagram.destination.ip(), datagram.source.ip());
        match self.pending.take(version, sequence, proof, requester, responder, self.window_start()) {
            Ok((pending, matched)) => {
                match matched {
                    Matched::SameAddresses => {}
                    Matched::OtherResponder => self.stats.note(Note::GtpcResponseFromOtherAddress),
                    Matched::ProofOnly => self.stats.note(Note::GtpcResponseByProofOnly),
                }
                Some(pending)
            }
            Err(why) => {
                self.stats.note(why.reason());
                None
            }
        }
    }

    pub(super) fn on_gtpv1c(&mut self, datagram: &Datagram<'_>, out: &mut Vec<Event>) {
        let header = match gtpv1::Header::parse(datagram.payload) {
            Ok(header) => header,
            Err(error) => return self.stats.dropped(error.reason()),
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
            return self.stats.dropped(DropReason::GtpcNoSequence);
        };
        let sequence = u32::from(sequence);
        let fields = match gtpv1::ControlFields::parse(header.body) {
            Ok(fields) => fields,
            Err(error) => return self.stats.dropped(error.reason()),
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
                        None => self.stats.note(Note::GtpcSecondaryWithoutPrimary),
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
                    return self.stats.note(Note::GtpcUnknownContext);
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

    pub(super) fn on_v1_response(
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
                    return self.stats.note(Note::GtpcCreateRejected);
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
                    return self.stats.note(Note::GtpcUpdateRejected);
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
                    self.stats.note(Note::GtpcDeleteRejected);
                }
            }
            _ => self.stats.note(Note::GtpcResponseTypeMismatch),
        }
    }

    pub(super) fn on_gtpv2c(&mut self, datagram: &Datagram<'_>, header: &gtpv2::Header<'_>, out: &mut Vec<Event>) {
        *self.stats.gtpc_messages.entry((2, header.message_type)).or_default() += 1;
        use gtpv2::message::*;
        if !matches!(header.message_type, CREATE_SESSION_REQUEST..=DELETE_SESSION_RESPONSE) {
            return;
        }
        let fields = match gtpv2::ControlFields::parse(header.body) {
            Ok(fields) => fields,
            Err(error) => return self.stats.dropped(error.reason()),
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
                    return self.stats.note(Note::GtpcUnknownContext);
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

    pub(super) fn on_v2_response(
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
                    return self.stats.note(Note::GtpcCreateRejected);
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
                    return self.stats.note(Note::GtpcUpdateRejected);
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
                    self.stats.note(Note::GtpcDeleteRejected);
                }
            }
            _ => self.stats.note(Note::GtpcResponseTypeMismatch),
        }
    }

    pub(super) fn on_gtpv0(&mut self, datagram: &Datagram<'_>, out: &mut Vec<Event>) {
        self.sessions.set_now(self.now_us);
        let header = match gtpv0::Header::parse(datagram.payload) {
            Ok(header) => header,
            Err(error) => return self.stats.dropped(error.reason()),
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
                    Err(error) => return self.stats.dropped(error.reason()),
                };
                fields.imsi = Some(header.imsi());
                fields.nsapi = Some(header.nsapi());
                let kind = PendingKind::CreateV1 { fields, version: 0, tid: Some(header.tid_key()) };
                self.request(datagram, 0, sequence, proof, kind);
            }
            CREATE_PDP_RESPONSE => {
                let fields = match gtpv0::control_fields(header.body) {
                    Ok(fields) => fields,
                    Err(error) => return self.stats.dropped(error.reason()),
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
}

pub(super) fn v1_attachment(request: &gtpv1::ControlFields, response: &gtpv1::ControlFields) -> Attachment {
    Attachment {
        rat_type: request.rat_type.or(response.rat_type),
        uli: request.uli.or(response.uli),
        charging_id: response.charging_id.or(request.charging_id),
        serving_node: None,
    }
}

pub(super) fn v2_attachment(request: &gtpv2::ControlFields, response: &gtpv2::ControlFields) -> Attachment {
    Attachment {
        rat_type: request.rat_type.or(response.rat_type),
        uli: request.uli.or(response.uli),
        charging_id: response.charging_id.or(request.charging_id),
        serving_node: None,
    }
}

pub(super) fn v1_endpoint(fields: &gtpv1::ControlFields, sender: IpAddr) -> Endpoint {
    let control_address = fields.gsn_control.unwrap_or(sender);
    let user_address = fields.gsn_user.unwrap_or(control_address);
    Endpoint {
        control: fields.teid_control.map(|teid| TunnelKey { address: control_address, teid }),
        user: fields.teid_data.map(|teid| TunnelKey { address: user_address, teid }),
    }
}

pub(super) fn merge_endpoint(end: &mut Endpoint, new: Endpoint) {
    end.control = new.control.or(end.control);
    end.user = new.user.or(end.user);
}

pub(super) fn fteid_key(fteid: &gtpv2::FTeid, sender: IpAddr) -> TunnelKey {
    TunnelKey { address: fteid.address().unwrap_or(sender), teid: fteid.teid }
}
