//! A session's life as events: up (with its attachment and the frames of its exchange), updated,
//! merged with another view of the same UE, down; and the crowding of shared keys, counted.
use super::*;

impl Correlator {
    /// A new session from an accepted Create. Where another live session already holds its UE address
    /// for the same IMSI (the same UE seen on another interface: S11 and S5/S8 in one capture), it is
    /// one subscriber: identity values one view lacks are taken from the other (the older view gets a
    /// `session_update` with reason `merged`), and two views that disagree on the MSISDN are counted
    /// (`identity-conflict`) and left as they are.
    pub(super) fn session_up(
        &mut self,
        mut session: Session,
        attachment: Attachment,
        frames: [u64; 2],
        out: &mut Vec<Event>,
    ) {
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
                        self.stats.note(Note::IdentityConflict);
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
            Err(reason) => self.stats.dropped(reason),
        }
    }

    pub(super) fn session_update(
        &mut self,
        id: u64,
        reason: &'static str,
        attachment: Attachment,
        frames: [u64; 2],
        out: &mut Vec<Event>,
        change: impl FnOnce(&mut Session),
    ) {
        let uplink = |s: &Session| s.core.user.filter(|_| s.tid.is_none());
        let before = self.sessions.get(id).and_then(|s| uplink(&s));
        let displaced = match self.sessions.update(id, change) {
            Ok(displaced) => displaced,
            Err(reason) => return self.stats.dropped(reason),
        };
        for old in displaced {
            self.session_down(&old, "replaced", frames, out);
        }
        self.sessions.touch(id, self.now_us);
        if let Some(session) = self.sessions.get(id) {
            self.stats.sessions_updated += 1;
            let mut event = session_event(&session, self.now_us, reason, attachment, frames);
            event.tunnel_up_before = before.filter(|before| Some(*before) != event.tunnel_up);
            out.push(Event::SessionUpdate(event));
        }
        self.note_crowding();
    }

    /// Sessions the table left out of a crowded index (see `session::SHARED_KEY_MAX`), as notes.
    pub(super) fn note_crowding(&mut self) {
        let (control, ue_ip) = self.sessions.crowded();
        self.stats.notes.set(Note::ControlKeyCrowded, control);
        self.stats.notes.set(Note::UeIpCrowded, ue_ip);
    }

    pub(super) fn session_down(
        &mut self,
        session: &Session,
        reason: &'static str,
        frames: [u64; 2],
        out: &mut Vec<Event>,
    ) {
        self.stats.sessions_down += 1;
        out.push(Event::SessionDown(session_event(session, self.now_us, reason, Attachment::default(), frames)));
    }
}

pub(super) fn session_event(
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
        tunnel_up: session.core.user.filter(|_| session.tid.is_none()),
        tunnel_up_before: None,
        teid_down: session.teid_down(),
        gtp_version: session.gtp_version,
        reason,
        interface: session.interface,
        attachment,
        frames,
        evidence_tag: session.evidence_tag,
    }
}
