//! Probes that share subscriber state through NATS JetStream (`--cluster`): a probe that sees the control
//! plane publishes what it learns (each session's start, change and end, with its uplink tunnel and the
//! capture time); every probe follows the stream and attributes a token on a tunnel it has no signalling
//! for by what the stream says that tunnel was at the packet's capture time. The user plane never crosses
//! the engine; only session changes do.
//!
//! - **One stream per cluster** (`GTPCHARGE_<NAME>`, subject `gtpcharge.<name>.sessions`), file storage,
//!   kept 7 days. Each message carries `Nats-Msg-Id` made of what it says (kind, capture time, IMSI,
//!   tunnel), so the same change published by two probes that saw the same packet is stored once.
//! - **By capture time.** The view keeps, per uplink tunnel, its changes ordered by capture time; a token
//!   belongs to the session the tunnel held at the packet's time, even when that session's later end
//!   reached this probe first. A session that moved to another tunnel closes its old one then.
//! - **Only a complete view answers.** Every probe that sees signalling publishes, about once a second
//!   and after the changes it has published, how far its capture has got (`progress`), and at the end of
//!   a replay that it is done. A token is placed only when every such probe has passed the token's
//!   capture time: a session's end that a probe behind has not yet published cannot be missed, and a
//!   token is never given to a session that had already ended.
//! - **Held, then said.** A token the view cannot place yet waits up to `--cluster-grace-ms` (a
//!   control-plane probe may be behind, or not started); then it is reported unattributed, as without
//!   a cluster.
//! - **Before the first token,** a probe reads the stream up to its last message at start.
//!
//! NATS runs on its own thread with a tokio runtime; the probe's thread only sends to and reads from
//! channels, and never waits on the network.
use anyhow::{Context, Result};
use gtpcharge_correlate::wire::Tbcd;
use gtpcharge_correlate::{Attribution, Event, Identity, SessionEvent, Sighting, Unattributed};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    },
}

impl Message {
    /// The message id: what the message says, so two probes that saw the same change publish it once.
    pub fn id(&self) -> String {
        match self {
            Message::Change(c) => format!("{}-{}-{}-{}-{}", c.kind, c.ts_us, c.imsi, c.gsn, c.teid),
            Message::Progress { probe, ts_us, done } => format!("progress-{probe}-{ts_us}-{done}"),
        }
    }
}

/// What a probe says of a session on the stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    /// `up`, `update` or `down`.
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
    fn of(event: &Event, probe: &str) -> Option<Change> {
        let (kind, s): (&str, &SessionEvent) = match event {
            Event::SessionUp(s) => ("up", s),
            Event::SessionUpdate(s) => ("update", s),
            Event::SessionDown(s) => ("down", s),
            _ => return None,
        };
        let tunnel = s.tunnel_up?;
        Some(Change {
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
        })
    }
}

/// Who a session is, as the view keeps it: shared by every entry of its tunnels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub imsi: Tbcd,
    pub msisdn: Tbcd,
    pub imei: Tbcd,
    pub apn: Option<Arc<str>>,
    pub ue_ipv4: Option<Ipv4Addr>,
    pub ue_ipv6: Option<Ipv6Addr>,
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
    whos: Vec<Who>,
    /// Each session's identity and current tunnel, to close the tunnel when the session moves.
    current: HashMap<SessionKey, (u32, (u32, u32))>,
    apns: std::collections::HashSet<Arc<str>>,
    /// How far each probe that sees signalling has published (`u64::MAX` once done).
    progress: HashMap<String, u64>,
    pub changes: u64,
}

impl View {
    pub fn apply_message(&mut self, message: Message) {
        match message {
            Message::Change(change) => self.apply(change),
            Message::Progress { probe, ts_us, done } => {
                let at = self.progress.entry(probe).or_default();
                *at = if done { u64::MAX } else { (*at).max(ts_us) };
            }
        }
    }

    /// Up to which capture time the view holds every change: the least progress of the probes that see
    /// signalling; none before one has said anything.
    pub fn complete_until(&self) -> Option<u64> {
        self.progress.values().copied().min()
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

    fn who(&mut self, change: &Change) -> Who {
        let apn = change.apn.as_deref().map(|apn| match self.apns.get(apn) {
            Some(interned) => interned.clone(),
            None => {
                let interned: Arc<str> = Arc::from(apn);
                self.apns.insert(interned.clone());
                interned
            }
        });
        Who {
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
        if change.kind == "down" {
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
    pub fn at(&self, gsn: IpAddr, teid: u32, ts_us: u64) -> Option<&Who> {
        let entries = self.tunnels.get(&(*self.gsn_ids.get(&gsn)?, teid))?;
        let last = entries.as_slice().iter().take_while(|e| e.ts_us <= ts_us).last()?;
        self.whos.get(last.who as usize)
    }
}

/// What becomes of a correlator's event in a cluster.
pub enum Verdict {
    Pass,
    /// Kept until the view places it or the grace ends ([`Cluster::poll`]).
    Held,
    /// This instead (the view's sighting of an unknown tunnel's token).
    Instead(Event),
}

/// `--cluster` and its companions.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub url: String,
    pub name: String,
    pub probe_id: String,
    pub grace: Duration,
}

/// A probe's membership: the channel to the NATS thread, the view, and the tokens held for it.
pub struct Cluster {
    config: ClusterConfig,
    publish: tokio::sync::mpsc::UnboundedSender<Message>,
    received: crossbeam_channel::Receiver<(u64, Message)>,
    /// The stream sequence of the last message read.
    read_to: u64,
    view: View,
    held: Vec<(Instant, Unattributed)>,
    pub resolved: u64,
    pub published: u64,
    pub released: u64,
    /// Progress messages published.
    pub progressed: u64,
    /// From publication to this probe's view, in microseconds, for the changes read after joining (at most
    /// [`DELAYS_KEPT`]).
    delays: Vec<u64>,
}

/// Delay samples kept for the summary.
const DELAYS_KEPT: usize = 1_000_000;

fn wall_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn stream_name(name: &str) -> String {
    format!("GTPCHARGE_{}", name.to_ascii_uppercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_"))
}

fn subject(name: &str) -> String {
    format!("gtpcharge.{}.sessions", name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"))
}

impl Cluster {
    /// Connects, makes sure the stream exists, and reads it up to its last message before returning.
    pub fn join(config: ClusterConfig) -> Result<Cluster> {
        let (publish, to_publish) = tokio::sync::mpsc::unbounded_channel::<Message>();
        let (deliver, received) = crossbeam_channel::unbounded::<(u64, Message)>();
        let (ready_tx, ready) = crossbeam_channel::bounded::<Result<u64, String>>(1);
        let thread_config = config.clone();
        std::thread::Builder::new()
            .name("gtpcharge-cluster".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("starting the cluster's runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(nats(thread_config, to_publish, deliver, ready_tx));
            })
            .context("starting the cluster thread")?;
        let caught_up = match ready.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(last)) => last,
            Ok(Err(e)) => anyhow::bail!("--cluster {}: {e}", config.url),
            Err(_) => anyhow::bail!("--cluster {}: no answer within 30 s", config.url),
        };
        let mut cluster = Cluster {
            config,
            publish,
            received,
            read_to: 0,
            view: View::default(),
            held: Vec::new(),
            resolved: 0,
            published: 0,
            released: 0,
            progressed: 0,
            delays: Vec::new(),
        };
        // The view up to the stream's last message at start, before any token is attributed.
        let deadline = Instant::now() + Duration::from_secs(60);
        while cluster.read_to < caught_up {
            match cluster.received.recv_timeout(Duration::from_millis(200)) {
                Ok((sequence, message)) => {
                    cluster.read_to = sequence;
                    cluster.view.apply_message(message);
                }
                Err(_) if Instant::now() > deadline => anyhow::bail!("--cluster: the stream was not read within 60 s"),
                Err(_) => {}
            }
        }
        tracing::info!(
            stream = %stream_name(&cluster.config.name),
            changes = cluster.view.changes,
            probe = %cluster.config.probe_id,
            "joined the cluster"
        );
        Ok(cluster)
    }

    /// An event of this probe's correlator: session changes are published (and pass); a token on a
    /// tunnel this probe has no signalling for becomes the view's sighting, or is held for the view;
    /// anything else passes.
    pub fn filter(&mut self, event: &Event) -> Verdict {
        match event {
            Event::SessionUp(_) | Event::SessionUpdate(_) | Event::SessionDown(_) => {
                if let Some(mut change) = Change::of(event, &self.config.probe_id) {
                    self.published += 1;
                    change.sent_us = wall_us();
                    let _ = self.publish.send(Message::Change(change));
                }
                Verdict::Pass
            }
            Event::Unattributed(u)
                if u.tunnel.is_some() && matches!(u.reason, "unknown-tunnel" | "no-live-session") =>
            {
                match self.resolve(u) {
                    Some(sighting) => Verdict::Instead(sighting),
                    None => {
                        self.held.push((Instant::now() + self.config.grace, u.clone()));
                        Verdict::Held
                    }
                }
            }
            _ => Verdict::Pass,
        }
    }

    /// What the view says of a held token: `None` while the view is not complete up to its capture
    /// time; then the sighting, or the token itself, unattributed.
    fn resolve(&mut self, u: &Unattributed) -> Option<Event> {
        let tunnel = u.tunnel?;
        if self.view.complete_until().is_none_or(|until| until < u.ts_us) {
            return None;
        }
        let Some(who) = self.view.at(tunnel.address, tunnel.teid, u.ts_us) else {
            self.released += 1;
            return Some(Event::Unattributed(u.clone()));
        };
        let identity = Identity {
            session_id: 0,
            imsi: who.imsi,
            msisdn: who.msisdn,
            imei: who.imei,
            apn: who.apn.clone(),
            ue_ipv4: who.ue_ipv4,
            ue_ipv6: who.ue_ipv6,
        };
        self.resolved += 1;
        Some(Event::Sighting(Sighting {
            ts_us: u.ts_us,
            token: u.token,
            identity,
            carrier: u.carrier,
            source: u.source,
            destination: u.destination,
            attribution: Attribution::Tunnel,
            evidence_tag: 0,
            evidence: None,
        }))
    }

    /// What the stream brought since, then the held tokens it places, and those whose grace is over
    /// (unattributed). Called about every second and at the end of the run.
    pub fn poll(&mut self, now: Instant) -> Vec<Event> {
        while let Ok((sequence, message)) = self.received.try_recv() {
            self.read_to = sequence;
            if let (Message::Change(change), true) = (&message, self.delays.len() < DELAYS_KEPT) {
                if change.sent_us > 0 {
                    self.delays.push(wall_us().saturating_sub(change.sent_us));
                }
            }
            self.view.apply_message(message);
        }
        let mut out = Vec::new();
        let held = std::mem::take(&mut self.held);
        for (deadline, u) in held {
            if let Some(sighting) = self.resolve(&u) {
                out.push(sighting);
            } else if now >= deadline {
                self.released += 1;
                out.push(Event::Unattributed(u));
            } else {
                self.held.push((deadline, u));
            }
        }
        out
    }

    /// How far this probe's capture has got, published when it has seen signalling (so the others wait
    /// for its changes up to there before placing a token).
    pub fn progress(&mut self, ts_us: u64, sees_signalling: bool) {
        if sees_signalling && ts_us > 0 {
            self.progressed += 1;
            let _ = self.publish.send(Message::Progress { probe: self.config.probe_id.clone(), ts_us, done: false });
        }
    }

    /// At the end of the run: says this probe's changes are all published (when it saw signalling),
    /// waits for the held tokens (at most the grace), and for the queue to be stored. Returns the events
    /// still to sink.
    pub fn finish(mut self, sees_signalling: bool) -> (Vec<Event>, String) {
        if sees_signalling {
            self.progressed += 1;
            let _ = self.publish.send(Message::Progress { probe: self.config.probe_id.clone(), ts_us: 0, done: true });
        }
        let mut out = Vec::new();
        while !self.held.is_empty() {
            out.extend(self.poll(Instant::now()));
            std::thread::sleep(Duration::from_millis(50));
        }
        let summary = self.summary();
        drop(self.publish);
        // The NATS thread ends after publishing what was queued; it is given a moment to.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.received.is_empty() || Instant::now() < deadline {
            match self.received.recv_timeout(Duration::from_millis(100)) {
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                _ => continue,
            }
        }
        (out, summary)
    }

    pub fn summary(&self) -> String {
        let mut delays = self.delays.clone();
        delays.sort_unstable();
        let at = |q: f64| {
            delays.get(((delays.len() as f64 - 1.0) * q).round() as usize).map_or(0.0, |us| *us as f64 / 1000.0)
        };
        format!(
            "cluster {} probe {}  view-changes {}  published {} (+{} progress)  resolved-by-view {}  \
             unresolved-after-grace {}  view-delay p50 {:.1} ms p99 {:.1} ms ({} changes)",
            self.config.name,
            self.config.probe_id,
            self.view.changes,
            self.published,
            self.progressed,
            self.resolved,
            self.released,
            at(0.5),
            at(0.99),
            delays.len()
        )
    }
}

/// The NATS side: connect, stream, then publish what the probe sends and deliver what the stream has.
/// Publishing retries until the server has stored the message (a restarted server loses nothing the
/// probe queued). Ends when the probe drops its sender and the queue is published.
async fn nats(
    config: ClusterConfig,
    mut to_publish: tokio::sync::mpsc::UnboundedReceiver<Message>,
    deliver: crossbeam_channel::Sender<(u64, Message)>,
    ready: crossbeam_channel::Sender<Result<u64, String>>,
) {
    use async_nats::jetstream;
    use futures_util::StreamExt;
    let setup = async {
        let client = async_nats::ConnectOptions::new()
            .name(format!("gtpcharge probe {}", config.probe_id))
            .retry_on_initial_connect()
            .connect(config.url.trim_start_matches("nats://"))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let js = jetstream::new(client);
        let mut stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: stream_name(&config.name),
                subjects: vec![subject(&config.name)],
                max_age: Duration::from_secs(7 * 86_400),
                duplicate_window: Duration::from_secs(120),
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("the stream {}: {e}", stream_name(&config.name)))?;
        let last = stream.info().await.map_err(|e| format!("the stream's state: {e}"))?.state.last_sequence;
        Ok::<_, String>((js, stream, last))
    };
    let (js, stream, last) = match setup.await {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(last));
    let subject = subject(&config.name);
    // Follows the stream from its start; after an error (a restarted server forgets the consumer), again
    // from the message after the last one read.
    let reader = tokio::spawn(async move {
        let mut next = 1u64;
        loop {
            let policy = if next <= 1 {
                jetstream::consumer::DeliverPolicy::All
            } else {
                jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: next }
            };
            let config = jetstream::consumer::pull::OrderedConfig { deliver_policy: policy, ..Default::default() };
            let messages = match stream.create_consumer(config).await {
                Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, "following the cluster stream; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(message) = messages.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(%error, "reading the cluster stream; following it again");
                        break;
                    }
                };
                let sequence = message.info().map(|info| info.stream_sequence).unwrap_or(next);
                next = sequence + 1;
                match serde_json::from_slice::<Message>(&message.payload) {
                    Ok(parsed) => {
                        if deliver.send((sequence, parsed)).is_err() {
                            return;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "a cluster message this probe does not read"),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // Published in batches of what is queued (at most 256), every acknowledgement of a batch awaited
    // together: one connection keeps them in order. A batch with any failure is published again whole,
    // in order (the ids make what was stored already a duplicate the server drops), so no progress
    // message is ever stored before a change it covers.
    while let Some(first) = to_publish.recv().await {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match to_publish.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        let encoded: Vec<(String, Vec<u8>)> =
            batch.iter().filter_map(|m| Some((m.id(), serde_json::to_vec(m).ok()?))).collect();
        let mut delay = Duration::from_millis(100);
        loop {
            let mut acks = Vec::with_capacity(encoded.len());
            let mut failed = None;
            for (id, payload) in &encoded {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                match js.publish_with_headers(subject.clone(), headers, payload.clone().into()).await {
                    Ok(ack) => acks.push(ack),
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            for ack in acks {
                if let Err(e) = ack.await {
                    failed.get_or_insert(e.to_string());
                }
            }
            match failed {
                None => break,
                Some(error) => {
                    tracing::warn!(%error, messages = encoded.len(), "publishing session changes failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    reader.abort();
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
        // Complete only as far as every probe that sees signalling has said.
        assert_eq!(view.complete_until(), None);
        view.apply_message(Message::Progress { probe: "a".into(), ts_us: 500, done: false });
        view.apply_message(Message::Progress { probe: "b".into(), ts_us: 300, done: false });
        assert_eq!(view.complete_until(), Some(300));
        view.apply_message(Message::Progress { probe: "b".into(), ts_us: 0, done: true });
        assert_eq!(view.complete_until(), Some(500));
    }
}
