//! Probes that share subscriber state through NATS JetStream (`--cluster`): a probe that sees the control
//! plane publishes what it learns (each session's start, change and end, with its uplink tunnel and the
//! capture time); every probe follows the stream and attributes a token on a tunnel it has no signalling
//! for by what the stream says that tunnel was at the packet's capture time. The user plane never crosses
//! the engine; only session changes do.
//!
//! - **One stream per cluster** (`GTPCHARGE_<NAME>`), file storage, kept 7 days, compacted as a key-value
//!   bucket is: a change is published under its tunnel's subject (`gtpcharge.<name>.tunnel.<key>`), a
//!   progress mark under its probe's, and the stream keeps the last [`SUBJECT_HISTORY`] messages of each
//!   subject, so a late joiner reads a few changes a tunnel, not every change of the week. A session that
//!   moves is said under both tunnels (`update` under the new, `left` under the old), so compaction only
//!   ever forgets a tunnel's older holders, never keeps a session on a tunnel it left (a unit test holds
//!   a compacted view to the whole one). Each message carries `Nats-Msg-Id` made of what it says (kind,
//!   capture time, IMSI, tunnel), so the same change published by two probes that saw the same packet is
//!   stored once.
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
use gtpcharge_correlate::{Attribution, Event, Sighting, Unattributed};
use std::time::{Duration, Instant};

mod nats;
mod view;
pub use view::{view_bytes, Change, Message, View, SUBJECT_HISTORY};

/// What becomes of a correlator's event in a cluster.
pub enum Verdict {
    Pass,
    /// Kept until the view places it or the grace ends ([`Cluster::poll`]).
    Held,
    /// This instead (the view's sighting of an unknown tunnel's token).
    Instead(Box<Event>),
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
    /// Each message with its stream sequence and when the NATS thread received it (wall clock, µs).
    received: crossbeam_channel::Receiver<(u64, Message, u64)>,
    /// The stream sequence of the last message read.
    read_to: u64,
    view: View,
    held: Vec<(Instant, Unattributed)>,
    pub resolved: u64,
    pub published: u64,
    pub released: u64,
    /// Progress messages published.
    pub progressed: u64,
    /// From a change's publication to its arrival on this probe (its NATS thread), in microseconds, for
    /// the changes read after joining (at most [`DELAYS_KEPT`]); the probe's thread applies what arrived
    /// after its next batch of frames (a live batch is at most 20 ms old), or within 200 ms on a quiet
    /// link, or at its tick.
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

/// The prefix of the cluster's subjects (`Message::subject` adds the tunnel's or the probe's).
fn subject_prefix(name: &str) -> String {
    format!("gtpcharge.{}", subject_token(name))
}

/// A name as one token of a NATS subject: what is not a letter, a digit or `-` (dots, wildcards,
/// spaces) becomes `_`.
fn subject_token(name: &str) -> String {
    name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
}

impl Cluster {
    /// Connects, makes sure the stream exists, and reads it up to its last message before returning.
    pub fn join(config: ClusterConfig) -> Result<Cluster> {
        let (publish, to_publish) = tokio::sync::mpsc::unbounded_channel::<Message>();
        let (deliver, received) = crossbeam_channel::unbounded::<(u64, Message, u64)>();
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
                runtime.block_on(nats::run(thread_config, to_publish, deliver, ready_tx));
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
                Ok((sequence, message, _)) => {
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
                for mut change in Change::of(event, &self.config.probe_id) {
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
                    Some(sighting) => Verdict::Instead(Box::new(sighting)),
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
        if self.view.complete_until(wall_us()).is_none_or(|until| until < u.ts_us) {
            return None;
        }
        let Some(who) = self.view.at(tunnel.address, tunnel.teid, u.ts_us) else {
            self.released += 1;
            return Some(Event::Unattributed(u.clone()));
        };
        let identity = who.clone();
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

    /// Whether the stream brought anything not yet applied to the view.
    pub fn has_news(&self) -> bool {
        !self.received.is_empty()
    }

    /// What the stream brought since, then the held tokens it places, and those whose grace is over
    /// (unattributed). Called about every second, after a batch of frames when the stream brought
    /// something, and at the end of the run.
    pub fn poll(&mut self, now: Instant) -> Vec<Event> {
        while let Ok((sequence, message, received_us)) = self.received.try_recv() {
            self.read_to = sequence;
            if let (Message::Change(change), true) = (&message, self.delays.len() < DELAYS_KEPT) {
                if change.sent_us > 0 {
                    self.delays.push(received_us.saturating_sub(change.sent_us));
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
            let progress =
                Message::Progress { probe: self.config.probe_id.clone(), ts_us, done: false, sent_us: wall_us() };
            let _ = self.publish.send(progress);
        }
    }

    /// At the end of the run: at the end of a replay (`done`), says this probe's changes are all
    /// published (when it saw signalling: a replayed link has nothing more to say; a live probe that stops
    /// says nothing, and stops holding the others back once it is stale); waits for the held tokens (at
    /// most the grace), and for the queue to be stored. Returns the events still to sink and the summary.
    pub fn finish(mut self, sees_signalling: bool, done: bool) -> (Vec<Event>, String) {
        if sees_signalling && done {
            self.progressed += 1;
            let done =
                Message::Progress { probe: self.config.probe_id.clone(), ts_us: 0, done: true, sent_us: wall_us() };
            let _ = self.publish.send(done);
        }
        let mut out = self.poll(Instant::now());
        while !self.held.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            out.extend(self.poll(Instant::now()));
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
