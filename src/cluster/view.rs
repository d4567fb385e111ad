//! The cluster's messages (session changes, progress marks) and the session view a probe builds from
//! them: per uplink tunnel, its sessions by capture time.
use anyhow::{Context, Result};
use gtpcharge_correlate::wire::Tbcd;
use gtpcharge_correlate::{Event, Identity, SessionEvent};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A message of the stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Message {
    Change(Change),
    /// A probe that sees signalling has published every change up to `ts_us` of its capture (`done`: all
    /// of them; its capture has ended).
    Progress {
        probe: String,
        ts_us: u64,
        done: bool,
        /// The publisher's wall clock (Unix microseconds): a probe not heard from for [`PROGRESS_STALE_US`]
        /// has left, and no longer holds the view back. Not part of the message id.
        #[serde(default)]
        sent_us: u64,
    },
}

/// How many messages the stream keeps per subject: per tunnel, its last changes (a late joiner reads no
/// more than that of each); per probe, its last progress marks.
pub const SUBJECT_HISTORY: i64 = 4;

impl Message {
    /// The subject it is published under: a change under its tunnel's (`<prefix>.tunnel.<GSN
    /// address in hex>-<TEID in hex>`), a progress mark under its probe's (`<prefix>.progress.<id>`), so
    /// that the stream, keeping [`SUBJECT_HISTORY`] a subject, is compacted as a key-value bucket is.
    pub fn subject(&self, prefix: &str) -> String {
        match self {
            Message::Change(c) => {
                let address: String = match c.gsn {
                    IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
                    IpAddr::V6(v6) => v6.octets().iter().map(|b| format!("{b:02x}")).collect(),
                };
                format!("{prefix}.tunnel.{address}-{:08x}", c.teid)
            }
            Message::Progress { probe, .. } => format!("{prefix}.progress.{}", super::subject_token(probe)),
        }
    }

    /// The message id: what the message says, so two probes that saw the same change publish it once.
    pub fn id(&self) -> String {
        match self {
            Message::Change(c) => format!("{}-{}-{}-{}-{}", c.kind, c.ts_us, c.imsi, c.gsn, c.teid),
            Message::Progress { probe, ts_us, done, .. } => format!("progress-{probe}-{ts_us}-{done}"),
        }
    }
}

/// What a probe says of a session on the stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    /// `up`, `update` or `down` (of the session on this tunnel), or `left`: the session moved from this
    /// tunnel to another (its `update` is under the other tunnel's subject).
    pub kind: String,
    pub ts_us: u64,
    pub imsi: String,
    pub msisdn: String,
    pub imei: String,
    pub apn: Option<String>,
    pub ue_ipv4: Option<std::net::Ipv4Addr>,
    pub ue_ipv6: Option<std::net::Ipv6Addr>,
    /// The uplink tunnel: GSN user-plane address and TEID.
    pub gsn: IpAddr,
    pub teid: u32,
    pub probe: String,
    /// The publisher's wall clock when it published (Unix microseconds): how long the change took to
    /// reach each probe's view (`view-delay` in the summary). Not part of the message id.
    #[serde(default)]
    pub sent_us: u64,
}

impl Change {
    /// What a session event says on the stream: its change under its uplink tunnel, and, when it moved
    /// the session off another tunnel, that it `left` that one (after the update, so that a view applies
    /// the move first).
    pub(super) fn of(event: &Event, probe: &str) -> Vec<Change> {
        let (kind, s): (&str, &SessionEvent) = match event {
            Event::SessionUp(s) => ("up", s),
            Event::SessionUpdate(s) => ("update", s),
            Event::SessionDown(s) => ("down", s),
            _ => return Vec::new(),
        };
        let Some(tunnel) = s.tunnel_up else { return Vec::new() };
        let change = |kind: &str, tunnel: gtpcharge_correlate::session::TunnelKey| Change {
            kind: kind.to_owned(),
            ts_us: s.ts_us,
            imsi: s.identity.imsi.to_string(),
            msisdn: s.identity.msisdn.to_string(),
            imei: s.identity.imei.to_string(),
            apn: s.identity.apn.as_deref().map(str::to_owned),
            ue_ipv4: s.identity.ue_ipv4,
            ue_ipv6: s.identity.ue_ipv6,
            gsn: tunnel.address,
            teid: tunnel.teid,
            probe: probe.to_owned(),
            sent_us: 0,
        };
        let mut changes = vec![change(kind, tunnel)];
        if let Some(before) = s.tunnel_up_before.filter(|_| kind == "update") {
            changes.push(change("left", before));
        }
        changes
    }
}

/// A tunnel's entry: from `ts_us` on it carried `who` (an index into the view's `whos`), or nothing
/// ([`ENDED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    ts_us: u64,
    who: u32,
}

const ENDED: u32 = u32::MAX;

/// A tunnel's entries in capture order; most tunnels carry one session, kept without an allocation.
#[derive(Debug)]
enum Entries {
    One(Entry),
    Many(Vec<Entry>),
}

impl Entries {
    fn as_slice(&self) -> &[Entry] {
        match self {
            Entries::One(entry) => std::slice::from_ref(entry),
            Entries::Many(entries) => entries,
        }
    }

    /// Inserts in capture order (an entry arrives late when its probe is behind); an equal entry is kept once.
    fn insert(&mut self, entry: Entry) {
        if self.as_slice().contains(&entry) {
            return;
        }
        let mut entries = match std::mem::replace(self, Entries::Many(Vec::new())) {
            Entries::One(first) => vec![first],
            Entries::Many(entries) => entries,
        };
        let at = entries.partition_point(|e| e.ts_us <= entry.ts_us);
        entries.insert(at, entry);
        *self = Entries::Many(entries);
    }
}

/// A signalling probe that has not published progress for this long (wall clock) has left the cluster:
/// its sessions stay in the view, but it no longer holds tokens back.
pub const PROGRESS_STALE_US: u64 = 30_000_000;

/// A session's key in the view (a session may move between tunnels).
type SessionKey = (Tbcd, Option<Ipv4Addr>, Option<Ipv6Addr>);

/// The cluster's session view: per uplink tunnel, what it carried since when, by capture time. Compact
/// (`gtpcharge cluster-view-bytes` measures it): GSN addresses interned to indices, identities stored
/// once per session, a tunnel's single entry inline.
#[derive(Default)]
pub struct View {
    gsns: Vec<IpAddr>,
    gsn_ids: HashMap<IpAddr, u32>,
    tunnels: HashMap<(u32, u32), Entries>,
    /// Who each session is (the correlator's `Identity`, no session id): shared by its tunnels' entries.
    whos: Vec<Identity>,
    /// Each session's identity and current tunnel, to close the tunnel when the session moves.
    current: HashMap<SessionKey, (u32, (u32, u32))>,
    apns: std::collections::HashSet<Arc<str>>,
    /// How far each probe that sees signalling has published (`u64::MAX` once done), and when it said so
    /// (its wall clock).
    progress: HashMap<String, (u64, u64)>,
    pub changes: u64,
}

impl View {
    pub fn apply_message(&mut self, message: Message) {
        match message {
            Message::Change(change) => self.apply(change),
            Message::Progress { probe, ts_us, done, sent_us } => {
                let (at, heard) = self.progress.entry(probe).or_default();
                // A probe that said it was done and speaks again was started anew: it is behind again.
                *at = if done {
                    u64::MAX
                } else if *at == u64::MAX {
                    ts_us
                } else {
                    (*at).max(ts_us)
                };
                *heard = (*heard).max(sent_us);
            }
        }
    }

    /// Up to which capture time the view holds every change, at wall time `now_us`: the least progress of
    /// the probes that see signalling and were heard from within [`PROGRESS_STALE_US`] (or are done);
    /// none while no such probe has said anything.
    pub fn complete_until(&self, now_us: u64) -> Option<u64> {
        self.progress
            .values()
            .filter(|(at, heard)| *at == u64::MAX || now_us.saturating_sub(*heard) <= PROGRESS_STALE_US)
            .map(|(at, _)| *at)
            .min()
    }

    fn gsn(&mut self, address: IpAddr) -> u32 {
        if let Some(id) = self.gsn_ids.get(&address) {
            return *id;
        }
        let id = self.gsns.len() as u32;
        self.gsns.push(address);
        self.gsn_ids.insert(address, id);
        id
    }

    fn who(&mut self, change: &Change) -> Identity {
        let apn = change.apn.as_deref().map(|apn| match self.apns.get(apn) {
            Some(interned) => interned.clone(),
            None => {
                let interned: Arc<str> = Arc::from(apn);
                self.apns.insert(interned.clone());
                interned
            }
        });
        Identity {
            session_id: 0,
            imsi: Tbcd::from_digits(&change.imsi).unwrap_or(Tbcd::EMPTY),
            msisdn: Tbcd::from_digits(&change.msisdn).unwrap_or(Tbcd::EMPTY),
            imei: Tbcd::from_digits(&change.imei).unwrap_or(Tbcd::EMPTY),
            apn,
            ue_ipv4: change.ue_ipv4,
            ue_ipv6: change.ue_ipv6,
        }
    }

    pub fn apply(&mut self, change: Change) {
        self.changes += 1;
        let tunnel = (self.gsn(change.gsn), change.teid);
        let who = self.who(&change);
        let key: SessionKey = (who.imsi, who.ue_ipv4, who.ue_ipv6);
        let insert = |tunnels: &mut HashMap<(u32, u32), Entries>, tunnel, entry| match tunnels.get_mut(&tunnel) {
            Some(entries) => entries.insert(entry),
            None => {
                tunnels.insert(tunnel, Entries::One(entry));
            }
        };
        if change.kind == "down" || change.kind == "left" {
            if self.current.get(&key).is_some_and(|(_, at)| *at == tunnel) {
                self.current.remove(&key);
            }
            insert(&mut self.tunnels, tunnel, Entry { ts_us: change.ts_us, who: ENDED });
            return;
        }
        let index = match self.current.get(&key) {
            Some((index, _)) if self.whos.get(*index as usize) == Some(&who) => *index,
            _ => {
                self.whos.push(who);
                (self.whos.len() - 1) as u32
            }
        };
        if let Some((_, old)) = self.current.insert(key, (index, tunnel)).filter(|(_, old)| *old != tunnel) {
            // The session left its old tunnel: the old one carries nothing of it from now on.
            insert(&mut self.tunnels, old, Entry { ts_us: change.ts_us, who: ENDED });
        }
        insert(&mut self.tunnels, tunnel, Entry { ts_us: change.ts_us, who: index });
    }

    /// The session a tunnel carried at `ts_us`: its last start or change at or before then, unless it
    /// ended between.
    pub fn at(&self, gsn: IpAddr, teid: u32, ts_us: u64) -> Option<&Identity> {
        let entries = self.tunnels.get(&(*self.gsn_ids.get(&gsn)?, teid))?;
        let last = entries.as_slice().iter().take_while(|e| e.ts_us <= ts_us).last()?;
        self.whos.get(last.who as usize)
    }
}

/// `gtpcharge cluster-view-bytes`: the resident memory a view of `sessions` sessions adds (Linux
/// `/proc/self/statm`), each session as a control-plane probe publishes it: started, a third of them
/// then moved to another tunnel.
pub fn view_bytes(sessions: u32) -> Result<()> {
    fn resident() -> Result<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
        let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).context("statm")?;
        Ok(pages * 4096)
    }
    let before = resident()?;
    let mut view = View::default();
    for i in 0..sessions {
        let change = |kind: &str, ts_us: u64, teid: u32| Change {
            kind: kind.into(),
            ts_us,
            imsi: format!("00101{:010}", i),
            msisdn: format!("4670{:08}", i),
            imei: format!("35{:013}", i),
            apn: Some("internet".into()),
            ue_ipv4: Some(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
            ue_ipv6: None,
            gsn: IpAddr::from([192, 0, 2, (i % 8) as u8]),
            teid,
            probe: "cp-1".into(),
            sent_us: 0,
        };
        view.apply(change("up", u64::from(i), i));
        if i % 3 == 0 {
            view.apply(change("update", u64::from(i) + 1, i | 0x8000_0000));
        }
    }
    let after = resident()?;
    let added = after.saturating_sub(before);
    println!(
        "sessions {sessions}  changes {}  resident bytes added {added}  bytes per session {:.0}",
        view.changes,
        added as f64 / f64::from(sessions.max(1))
    );
    drop(view);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: &str, ts_us: u64, imsi: &str, teid: u32) -> Change {
        Change {
            kind: kind.into(),
            ts_us,
            imsi: imsi.into(),
            msisdn: format!("4670{imsi}"),
            imei: String::new(),
            apn: None,
            ue_ipv4: Some([10, 0, 0, 1].into()),
            ue_ipv6: None,
            gsn: [192, 0, 2, 1].into(),
            teid,
            probe: "cp".into(),
            sent_us: 0,
        }
    }

    /// Keeps the last `history` messages of each subject, in stream order: what the stream holds once
    /// its per-subject limit has acted.
    fn compacted(messages: &[Message], history: usize) -> Vec<Message> {
        let mut kept: HashMap<String, usize> = HashMap::new();
        let mut out: Vec<Message> = messages
            .iter()
            .rev()
            .filter(|m| {
                let count = kept.entry(m.subject("p")).or_default();
                *count += 1;
                *count <= history
            })
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// Where `view` answers a tunnel at a time and differs from the whole stream's `truth`: a session it
    /// invented. Returns (invented, forgotten).
    fn compare(view: &View, truth: &View, probes: &[(IpAddr, u32, u64)]) -> (usize, usize) {
        let who = |v: &View, (gsn, teid, ts): (IpAddr, u32, u64)| v.at(gsn, teid, ts).map(|w| (w.imsi, w.msisdn));
        let (mut invented, mut forgotten) = (0, 0);
        for &probe in probes {
            match (who(view, probe), who(truth, probe)) {
                (Some(a), Some(b)) if a == b => {}
                (None, Some(_)) => forgotten += 1,
                (None, None) => {}
                _ => invented += 1,
            }
        }
        (invented, forgotten)
    }

    /// The stream keeps [`SUBJECT_HISTORY`] messages a subject (a tunnel): a late joiner's view may have
    /// forgotten a tunnel's older holders (a token then goes unattributed: a lost sale), but never says a
    /// tunnel carried a session it did not (a wrong bill). The session events come from the correlator on
    /// a generated capture, plus tunnels reused over and over and sessions moving between them.
    #[test]
    fn a_compacted_stream_forgets_but_never_invents() {
        let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
        let scenario =
            gtpcharge_pcapgen::Scenario { seed: 5, subscribers: 120, ..gtpcharge_pcapgen::Scenario::sample() };
        gtpcharge_pcapgen::generate(&scenario, &mut frames);
        let mut probe = crate::probe::Probe::new(gtpcharge_correlate::Config::default(), Default::default());
        let mut messages = Vec::new();
        for (ts_us, data) in &frames {
            let frame = gtpcharge_capture::Frame { ts_us: *ts_us, wire_len: data.len() as u32, linktype: 1, data };
            probe.frame(&frame, |event| messages.extend(Change::of(event, "cp").into_iter().map(Message::Change)));
        }
        assert!(messages.len() > 200, "the capture's sessions");
        // Ten tunnels taken by one session after another, each moving to one of three others and ending.
        for i in 0..300u32 {
            let imsi = format!("{:06}", 500 + i);
            let t = 10_000_000 + u64::from(i) * 10;
            let mut moved = change("update", t + 4, &imsi, 100 + i % 3);
            moved.gsn = [192, 0, 2, 9].into();
            let mut up = change("up", t, &imsi, i % 10);
            up.gsn = moved.gsn;
            let mut left = change("left", t + 4, &imsi, i % 10);
            left.gsn = moved.gsn;
            let mut down = change("down", t + 7, &imsi, 100 + i % 3);
            down.gsn = moved.gsn;
            messages.extend([up, moved, left, down].map(Message::Change));
        }
        let mut probes = Vec::new();
        for message in &messages {
            if let Message::Change(c) = message {
                for ts in [c.ts_us.saturating_sub(1), c.ts_us, c.ts_us + 1, c.ts_us + 3] {
                    probes.push((c.gsn, c.teid, ts));
                }
            }
        }
        let view_of = |messages: &[Message]| {
            let mut view = View::default();
            messages.iter().cloned().for_each(|m| view.apply_message(m));
            view
        };
        let truth = view_of(&messages);
        for history in [1, 2, SUBJECT_HISTORY as usize] {
            let kept = compacted(&messages, history);
            let (invented, forgotten) = compare(&view_of(&kept), &truth, &probes);
            assert_eq!(invented, 0, "history {history}: a compacted view placed a token on the wrong session");
            if history < SUBJECT_HISTORY as usize {
                assert!(forgotten > 0 && kept.len() < messages.len(), "history {history} forgot something");
            }
        }
        // Without the `left` marks a compacted view would keep a moved session on its old tunnel.
        let without: Vec<Message> =
            messages.iter().filter(|m| !matches!(m, Message::Change(c) if c.kind == "left")).cloned().collect();
        let (invented, _) = compare(&view_of(&compacted(&without, 1)), &truth, &probes);
        assert!(invented > 0, "the test sees what the left marks prevent");
    }

    /// An update that moved the session's uplink tunnel is published under the new tunnel, then as
    /// `left` under the old one.
    #[test]
    fn a_move_is_said_under_both_tunnels() {
        use gtpcharge_correlate::session::TunnelKey;
        let tunnel = |teid| TunnelKey { address: [192, 0, 2, 1].into(), teid };
        let mut event = gtpcharge_correlate::SessionEvent {
            ts_us: 5,
            identity: Identity {
                session_id: 1,
                imsi: Tbcd::from_digits("001010123456789").unwrap(),
                msisdn: Tbcd::from_digits("46701234567").unwrap(),
                imei: Tbcd::EMPTY,
                apn: None,
                ue_ipv4: Some([10, 0, 0, 1].into()),
                ue_ipv6: None,
            },
            teid_up: 8,
            tunnel_up: Some(tunnel(8)),
            tunnel_up_before: Some(tunnel(7)),
            teid_down: 0,
            gtp_version: 1,
            reason: "updated",
            interface: gtpcharge_correlate::Interface::Gn,
            attachment: Default::default(),
            frames: [0, 0],
            evidence_tag: 0,
        };
        let said = |event: &Event| -> Vec<(String, u32)> {
            Change::of(event, "cp").into_iter().map(|c| (c.kind, c.teid)).collect()
        };
        let update = Event::SessionUpdate(event.clone());
        assert_eq!(said(&update), [("update".to_string(), 8), ("left".to_string(), 7)]);
        let subjects: Vec<String> =
            Change::of(&update, "cp").into_iter().map(|c| Message::Change(c).subject("gtpcharge.a")).collect();
        assert_eq!(subjects, ["gtpcharge.a.tunnel.c0000201-00000008", "gtpcharge.a.tunnel.c0000201-00000007"]);
        event.tunnel_up_before = None;
        assert_eq!(said(&Event::SessionUpdate(event.clone())), [("update".to_string(), 8)]);
        assert_eq!(said(&Event::SessionDown(event)), [("down".to_string(), 8)]);
    }

    #[test]
    fn the_view_answers_by_capture_time_whatever_the_arrival_order() {
        let gsn: IpAddr = [192, 0, 2, 1].into();
        let mut view = View::default();
        // The end arrives before the start (its probe was ahead).
        view.apply(change("down", 300, "1", 7));
        view.apply(change("up", 100, "1", 7));
        assert_eq!(view.at(gsn, 7, 99), None, "before the session");
        let imsi = |digits: &str| Some(Tbcd::from_digits(digits).unwrap());
        assert_eq!(view.at(gsn, 7, 200).map(|w| w.imsi), imsi("1"), "while it lived");
        assert_eq!(view.at(gsn, 7, 300), None, "from its end on");
        // A later session on the same tunnel is another subscriber's.
        view.apply(change("up", 400, "2", 7));
        assert_eq!(view.at(gsn, 7, 200).map(|w| w.imsi), imsi("1"));
        assert_eq!(view.at(gsn, 7, 500).map(|w| w.imsi), imsi("2"));
        // A session that moves to another tunnel leaves the old one.
        view.apply(change("update", 600, "2", 8));
        assert_eq!(view.at(gsn, 7, 700), None);
        assert_eq!(view.at(gsn, 8, 700).map(|w| w.imsi), imsi("2"));
        // The same change twice (two probes on one link) is one entry.
        view.apply(change("update", 600, "2", 8));
        assert_eq!(view.tunnels[&(view.gsn_ids[&gsn], 8)].as_slice().len(), 1);
        assert_eq!(Message::Change(change("up", 1, "9", 3)).id(), Message::Change(change("up", 1, "9", 3)).id());
        // Complete only as far as every probe that sees signalling has said, while it is heard from.
        let now = 100_000_000;
        let progress =
            |probe: &str, ts_us, done, sent_us| Message::Progress { probe: probe.into(), ts_us, done, sent_us };
        assert_eq!(view.complete_until(now), None);
        view.apply_message(progress("a", 500, false, now));
        view.apply_message(progress("b", 300, false, now));
        assert_eq!(view.complete_until(now), Some(300));
        view.apply_message(progress("b", 0, true, now));
        assert_eq!(view.complete_until(now), Some(500));
        // A probe silent for longer than the staleness holds nothing back; one that speaks again does.
        view.apply_message(progress("c", 100, false, now - PROGRESS_STALE_US - 1));
        assert_eq!(view.complete_until(now), Some(500));
        view.apply_message(progress("b", 200, false, now));
        assert_eq!(view.complete_until(now), Some(200), "b started anew is behind again");
    }
}
