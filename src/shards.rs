//! `--workers N`: correlation on N shard threads, with the events the same as one correlator's, in the
//! same order (a test compares them for every N from 1 to 8).
//!
//! The correlating thread decodes each frame (link, IP, UDP, reassembly: all in capture order) and
//! dispatches the datagram:
//! - a G-PDU goes to one shard, chosen by its inner source address ([`ShardRouter::key`]): uplink, that
//!   is the UE's, so a UE address's TCP flows (their split tokens) are always on one shard;
//! - everything else (GTP-C, GTPv0, other GTP-U messages, what does not parse) goes to every shard:
//!   each keeps the whole session table, built by the same messages in the same order, so a G-PDU meets
//!   on its shard exactly the contexts it would have met on one thread. Shard 0 counts these and emits
//!   their events; the others follow them with their counters set aside (`Correlator::uncounted`).
//!
//! Time: each datagram carries the dispatcher's clock (the latest packet time so far). A [`Clock`]
//! mirror tells the dispatcher when a sweep falls due; at such a packet every shard that does not get it
//! is sent a tick, so every shard sweeps at the same packets. Sessions idle past their timeout are the
//! ones no shard saw traffic from: the shards agree on them at the sweep (an [`Agreement`]; each sees
//! only its own share of the user plane). The sighting dedupe runs after the merge, in capture order
//! (a subscriber's two PDN connections can be on two shards), its sweeps at the same packets.
//!
//! Rounds: what one batch of frames gives each shard is sent as one `Work`, its payloads read where the
//! reader put them (the round keeps the batch's bytes: [`Shards::hold`]); each shard answers with its
//! events, tagged with their frames. A round's answers are merged by (frame, shard): shard 0's events
//! of a frame (its ticks' sweeps) come before the owner's, as one thread's sweep came before the packet.
//! At most [`ROUNDS_IN_FLIGHT`] rounds are out at once.
use crate::pipeline::waiting;
use gtpcharge_correlate::clock::Clock;
use gtpcharge_correlate::dedupe::Dedupe;
use gtpcharge_correlate::reason::Note;
use gtpcharge_correlate::{Config, Correlator, Datagram, Event, ShardRouter, Stats};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Rounds dispatched and not yet merged, at most (then the dispatcher waits for the oldest).
pub const ROUNDS_IN_FLIGHT: usize = 8;
/// How often a shard copies its counters out for the metrics.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(250);

/// What a shard does with one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    /// A sweep falls due at another shard's packet: move the clock only.
    Tick,
    /// A datagram every shard follows (shard 0 counts it).
    Follow,
    /// A G-PDU of this shard's.
    Own,
}

struct Item {
    frame: u64,
    ts_us: u64,
    /// The dispatcher's clock at this packet.
    now_us: u64,
    source: SocketAddr,
    destination: SocketAddr,
    what: What,
    /// Whether the payload is in the round's batch (else in the work's own bytes).
    in_batch: bool,
    start: u32,
    end: u32,
}

/// One round's items for one shard: their payloads in the batch the round was read from, or, where a
/// payload is not in it (a reassembled datagram), copied behind each other.
#[derive(Default)]
struct Work {
    round: u64,
    items: Vec<Item>,
    bytes: Vec<u8>,
    batch: Option<Arc<Vec<u8>>>,
}

impl Work {
    fn push(&mut self, datagram: &Datagram<'_>, now_us: u64, what: What, batch: Option<&[u8]>) {
        let payload = datagram.payload;
        let in_batch = batch.and_then(|batch| {
            // Where the payload lies in the batch, if it does.
            let start = (payload.as_ptr() as usize).checked_sub(batch.as_ptr() as usize)?;
            (start + payload.len() <= batch.len()).then_some(start as u32)
        });
        let (in_batch, start, end) = match in_batch {
            Some(start) => (true, start, start + payload.len() as u32),
            None => {
                let start = self.bytes.len() as u32;
                if what != What::Tick {
                    self.bytes.extend_from_slice(payload);
                }
                (false, start, self.bytes.len() as u32)
            }
        };
        self.items.push(Item {
            frame: datagram.frame,
            ts_us: datagram.ts_us,
            now_us,
            source: datagram.source,
            destination: datagram.destination,
            what,
            in_batch,
            start,
            end,
        });
    }

    /// An item's payload.
    fn payload(&self, item: &Item) -> &[u8] {
        let bytes = if item.in_batch { self.batch.as_deref().map(Vec::as_slice) } else { Some(self.bytes.as_slice()) };
        bytes.and_then(|bytes| bytes.get(item.start as usize..item.end as usize)).unwrap_or_default()
    }
}

/// A shard's answer: its events of a round, with their frames, and the emptied `Work` back.
struct Done {
    shard: usize,
    events: Vec<(u64, Event)>,
    work: Work,
}

/// The shards' agreement on idle sessions: each hands in the ids it found idle, and an id is idle when
/// every shard found it so (a session's traffic may have reached any of them).
struct Agreement {
    barrier: Barrier,
    lists: Vec<Mutex<Vec<u64>>>,
}

impl Agreement {
    fn agree(&self, shard: usize, mine: Vec<u64>) -> Vec<u64> {
        if let Some(list) = self.lists.get(shard) {
            list.lock().unwrap_or_else(PoisonError::into_inner).clone_from(&mine);
        }
        waiting(|| self.barrier.wait());
        let mut found: HashMap<u64, usize> = HashMap::with_capacity(mine.len());
        for list in &self.lists {
            for id in list.lock().unwrap_or_else(PoisonError::into_inner).iter() {
                *found.entry(*id).or_default() += 1;
            }
        }
        // Everyone has read every list before anyone writes the next sweep's.
        waiting(|| self.barrier.wait());
        mine.into_iter().filter(|id| found.get(id) == Some(&self.lists.len())).collect()
    }
}

/// What a shard last copied out for the metrics: its counters and the sessions it holds.
#[derive(Default, Clone)]
struct Snapshot {
    stats: Stats,
    sessions: usize,
}

struct Shard {
    work: crossbeam_channel::Sender<Work>,
    thread: std::thread::JoinHandle<Correlator>,
    snapshot: Arc<Mutex<Snapshot>>,
    /// Emptied `Work`s, for the next rounds.
    spare: Vec<Work>,
}

/// A round out: which shards got work, and the answers so far.
struct Round {
    sweeps: Vec<(u64, u64)>,
    /// The batch the round was read from, while its shards read payloads in it.
    batch: Option<Arc<Vec<u8>>>,
    answers: Vec<Option<Vec<(u64, Event)>>>,
    waiting: usize,
}

pub struct Shards {
    shards: Vec<Shard>,
    router: ShardRouter,
    clock: Clock,
    /// The round being filled: one `Work` per shard.
    filling: Vec<Work>,
    /// The bytes of the batch being dispatched ([`Shards::hold`]).
    batch: Option<Arc<Vec<u8>>>,
    /// Batches' bytes no round reads any more, for the reader's next batches.
    spare_bytes: Vec<Vec<u8>>,
    /// Packets in the round being filled at which the sighting dedupe is swept (frame, time).
    sweeps: Vec<(u64, u64)>,
    next_round: u64,
    out: VecDeque<Round>,
    done: crossbeam_channel::Receiver<Done>,
    dedupe: Dedupe,
    /// What the dedupe after the merge suppressed: sightings, unattributed tokens.
    duplicates: (u64, u64),
    /// The shards' correlators once they have ended (`finish`).
    ended: Vec<Correlator>,
}

impl Shards {
    /// Starts `count` shard threads (at least one), each with a correlator of `config`.
    pub fn start(config: &Config, count: usize) -> std::io::Result<Shards> {
        let count = count.max(1);
        let agreement = Arc::new(Agreement {
            barrier: Barrier::new(count),
            lists: (0..count).map(|_| Mutex::new(Vec::new())).collect(),
        });
        let (done_tx, done) = crossbeam_channel::unbounded();
        let mut shards = Vec::with_capacity(count);
        for index in 0..count {
            let mut correlator = Correlator::new(config.clone());
            correlator.without_sighting_dedupe();
            let agreement = agreement.clone();
            correlator.set_idle_agreement(Box::new(move |idle| agreement.agree(index, idle)));
            let (work, inbox) = crossbeam_channel::bounded(ROUNDS_IN_FLIGHT + 1);
            let snapshot = Arc::new(Mutex::new(Snapshot::default()));
            let (shared, answers) = (snapshot.clone(), done_tx.clone());
            let thread = std::thread::Builder::new().name(format!("gtpcharge-shard-{index}")).spawn(move || {
                let work = std::panic::AssertUnwindSafe(|| run(index, correlator, &inbox, &answers, &shared));
                std::panic::catch_unwind(work).unwrap_or_else(|_| {
                    // The other shards would wait for it for ever (its answers, the idle agreement):
                    // the run ends here, and what is in the spool is delivered by the next start.
                    tracing::error!(shard = index, "a correlating shard failed; the probe stops");
                    std::process::exit(70)
                })
            })?;
            shards.push(Shard { work, thread, snapshot, spare: Vec::new() });
        }
        Ok(Shards {
            filling: (0..count).map(|_| Work::default()).collect(),
            batch: None,
            spare_bytes: Vec::new(),
            shards,
            router: ShardRouter::new(config),
            clock: Clock::new(config),
            sweeps: Vec::new(),
            next_round: 0,
            out: VecDeque::new(),
            done,
            dedupe: Dedupe::new(config.sighting_dedupe_window_s, config.sighting_dedupe_max),
            duplicates: (0, 0),
            ended: Vec::new(),
        })
    }

    /// How many shards correlate.
    pub fn count(&self) -> usize {
        self.shards.len().max(self.ended.len())
    }

    /// The latest packet time dispatched.
    pub fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    /// Keeps a batch's bytes while the frames read from them are dispatched and their round is out, so
    /// the shards read the payloads where the reader put them, without a copy. The bytes go back to
    /// [`Shards::spare_bytes`] once the round is merged.
    pub fn hold(&mut self, bytes: Vec<u8>) -> Arc<Vec<u8>> {
        if self.filling.iter().any(|work| !work.items.is_empty()) {
            // A round holds one batch: what an earlier batch left unsent goes now.
            self.send_round();
        }
        let bytes = Arc::new(bytes);
        self.batch = Some(bytes.clone());
        bytes
    }

    /// Bytes for the reader's next batch: a merged round's, or new.
    pub fn spare_bytes(&mut self) -> Vec<u8> {
        self.spare_bytes.pop().unwrap_or_default()
    }

    /// One datagram to its shard, or to every shard. Out of line: inlined into the decoder's closure, it
    /// made the dispatching thread run more instructions a frame (`benches/workers.sh instructions`).
    #[inline(never)]
    pub fn dispatch(&mut self, datagram: &Datagram<'_>) {
        let due = self.clock.advance(datagram.ts_us);
        let now = self.clock.now_us();
        if due.is_some_and(|due| due.dedupe) {
            self.sweeps.push((datagram.frame, now));
        }
        let count = self.filling.len();
        let batch = self.batch.as_deref().map(Vec::as_slice);
        match self.router.key(datagram) {
            Some(key) => {
                let owner = shard_of(key, count);
                if due.is_some() {
                    for (index, work) in self.filling.iter_mut().enumerate() {
                        work.push(datagram, now, if index == owner { What::Own } else { What::Tick }, batch);
                    }
                } else if let Some(work) = self.filling.get_mut(owner) {
                    work.push(datagram, now, What::Own, batch);
                }
            }
            None => self.filling.iter_mut().for_each(|work| work.push(datagram, now, What::Follow, batch)),
        }
    }

    /// Sends the round being filled, then merges every round answered, keeping at most `in_flight`
    /// out (waiting for the oldest if need be); each merged event goes to `emit`, in capture order.
    pub fn flush(&mut self, in_flight: usize, emit: &mut impl FnMut(&Event)) {
        self.send_round();
        loop {
            while let Ok(done) = self.done.try_recv() {
                self.answer(done);
            }
            while self.out.front().is_some_and(|round| round.waiting == 0) {
                if let Some(round) = self.out.pop_front() {
                    self.merge(round, emit);
                }
            }
            if self.out.len() <= in_flight {
                return;
            }
            match waiting(|| self.done.recv()) {
                Ok(done) => self.answer(done),
                // Every shard has gone (only after `finish`): nothing more will come.
                Err(_) => return,
            }
        }
    }

    fn send_round(&mut self) {
        if self.filling.iter().all(|work| work.items.is_empty()) {
            return;
        }
        // The batch stays with this round; the next one is read from another.
        let batch = self.batch.take();
        let round = self.next_round;
        self.next_round += 1;
        let mut answers = Vec::with_capacity(self.shards.len());
        let mut expected = 0;
        for (shard, work) in self.shards.iter_mut().zip(self.filling.iter_mut()) {
            if work.items.is_empty() {
                answers.push(Some(Vec::new()));
                continue;
            }
            let mut next = shard.spare.pop().unwrap_or_default();
            std::mem::swap(work, &mut next);
            next.round = round;
            next.batch = batch.clone();
            // A shard that has gone cannot answer: its round is merged without it (and `finish` says so).
            if waiting(|| shard.work.send(next)).is_ok() {
                answers.push(None);
                expected += 1;
            } else {
                answers.push(Some(Vec::new()));
            }
        }
        self.out.push_back(Round { sweeps: std::mem::take(&mut self.sweeps), batch, answers, waiting: expected });
    }

    fn answer(&mut self, done: Done) {
        let Done { shard, events, mut work } = done;
        let first = self.next_round - self.out.len() as u64;
        let round = work.round.checked_sub(first).and_then(|at| self.out.get_mut(at as usize));
        if let Some(slot) = round.and_then(|round| {
            round.waiting -= 1;
            round.answers.get_mut(shard)
        }) {
            *slot = Some(events);
        }
        work.items.clear();
        work.bytes.clear();
        work.batch = None;
        if let Some(shard) = self.shards.get_mut(shard) {
            shard.spare.push(work);
        }
    }

    /// A round's answers in capture order (by frame, then shard), through the dedupe, to `emit`.
    fn merge(&mut self, mut round: Round, emit: &mut impl FnMut(&Event)) {
        // Every shard has answered and let go of the batch: its bytes serve a next one.
        if let Some(bytes) = round.batch.take().and_then(|batch| Arc::try_unwrap(batch).ok()) {
            if self.spare_bytes.len() <= ROUNDS_IN_FLIGHT {
                self.spare_bytes.push(bytes);
            }
        }
        let mut events: Vec<(u64, usize, Event)> = Vec::new();
        for (shard, answer) in round.answers.into_iter().enumerate() {
            events.extend(answer.unwrap_or_default().into_iter().map(|(frame, event)| (frame, shard, event)));
        }
        // Stable: a shard's events of one frame stay in the order it made them.
        events.sort_by_key(|(frame, shard, _)| (*frame, *shard));
        let mut sweeps = round.sweeps.into_iter().peekable();
        for (frame, _, event) in events {
            while let Some((_, now)) = sweeps.next_if(|(at, _)| *at <= frame) {
                self.dedupe.sweep(now);
            }
            if self.dedupe.admit(&event) {
                emit(&event);
            } else if matches!(event, Event::Sighting(_)) {
                self.duplicates.0 += 1;
            } else {
                self.duplicates.1 += 1;
            }
        }
        for (_, now) in sweeps {
            self.dedupe.sweep(now);
        }
    }

    /// Every round merged, then the shards stopped and their final counters kept.
    pub fn finish(&mut self, emit: &mut impl FnMut(&Event)) {
        self.flush(0, emit);
        for shard in std::mem::take(&mut self.shards) {
            drop(shard.work);
            match shard.thread.join() {
                Ok(correlator) => self.ended.push(correlator),
                Err(_) => tracing::error!("a correlating shard failed; its counters are missing from the summary"),
            }
        }
    }

    /// Every shard's counters added up, less what the dedupe after the merge suppressed: exact after
    /// `finish`, at most a quarter of a second old before.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        if self.ended.is_empty() {
            for shard in &self.shards {
                total.merge(&shard.snapshot.lock().unwrap_or_else(PoisonError::into_inner).stats);
            }
        } else {
            self.ended.iter().for_each(|correlator| total.merge(correlator.stats()));
        }
        total.sightings = total.sightings.saturating_sub(self.duplicates.0);
        total.unattributed = total.unattributed.saturating_sub(self.duplicates.1);
        let duplicates = total.notes.get(Note::SightingDuplicate) + self.duplicates.0 + self.duplicates.1;
        total.notes.set(Note::SightingDuplicate, duplicates);
        total
    }

    /// Live sessions (every shard holds them all: shard 0's count).
    pub fn sessions_live(&self) -> usize {
        match (self.ended.first(), self.shards.first()) {
            (Some(correlator), _) => correlator.sessions().len(),
            (None, Some(shard)) => shard.snapshot.lock().unwrap_or_else(PoisonError::into_inner).sessions,
            (None, None) => 0,
        }
    }
}

/// A shard for a key: the same on every run (the hash is fixed), spread evenly.
fn shard_of(key: u128, count: usize) -> usize {
    let folded = (key as u64) ^ ((key >> 64) as u64);
    let mixed = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((mixed >> 32) % count.max(1) as u64) as usize
}

/// A shard's thread: each round's items through its correlator, the events back.
fn run(
    index: usize,
    mut correlator: Correlator,
    inbox: &crossbeam_channel::Receiver<Work>,
    answers: &crossbeam_channel::Sender<Done>,
    snapshot: &Mutex<Snapshot>,
) -> Correlator {
    // Shard 0 counts (and reports) what every shard follows, and the sweeps.
    let counts_shared = index == 0;
    let mut out = Vec::new();
    let mut set_aside = Vec::new();
    let mut copied = Instant::now();
    while let Ok(work) = waiting(|| inbox.recv()) {
        let mut events = Vec::new();
        for item in &work.items {
            let datagram = Datagram {
                ts_us: item.ts_us,
                frame: item.frame,
                source: item.source,
                destination: item.destination,
                payload: work.payload(item),
            };
            if item.now_us > correlator.now_us() {
                if counts_shared {
                    correlator.advance(item.now_us, &mut out);
                } else {
                    correlator.uncounted(|c| c.advance(item.now_us, &mut set_aside));
                }
            }
            match item.what {
                What::Tick => {}
                What::Own => correlator.on_datagram(&datagram, &mut out),
                What::Follow if counts_shared => correlator.on_datagram(&datagram, &mut out),
                What::Follow => correlator.uncounted(|c| c.on_datagram(&datagram, &mut set_aside)),
            }
            if !set_aside.is_empty() {
                set_aside.clear();
            }
            if !out.is_empty() {
                events.extend(out.drain(..).map(|event| (item.frame, event)));
            }
        }
        if copied.elapsed() >= SNAPSHOT_EVERY {
            copied = Instant::now();
            *snapshot.lock().unwrap_or_else(PoisonError::into_inner) =
                Snapshot { stats: correlator.stats().clone(), sessions: correlator.sessions().len() };
        }
        if answers.send(Done { shard: index, events, work }).is_err() {
            break;
        }
    }
    correlator
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_the_shards_and_stay_put() {
        for count in 1..=8 {
            let mut seen = vec![0u32; count];
            for host in 0u32..4096 {
                let key = u128::from(std::net::Ipv4Addr::from(0x0a00_0000 + host).to_ipv6_mapped());
                let shard = shard_of(key, count);
                assert_eq!(shard, shard_of(key, count));
                seen[shard] += 1;
            }
            let fair = 4096 / count as u32;
            assert!(seen.iter().all(|&n| n > fair / 2 && n < fair * 3 / 2), "{count} shards: {seen:?}");
        }
    }

    #[test]
    fn a_payload_in_the_batch_is_read_there_and_any_other_is_copied() {
        let batch = Arc::new((0u8..200).collect::<Vec<u8>>());
        let reassembled = vec![9u8; 40];
        let address: SocketAddr = "10.0.0.1:2152".parse().unwrap();
        let datagram = |payload| Datagram { ts_us: 5, frame: 1, source: address, destination: address, payload };
        let mut work = Work { batch: Some(batch.clone()), ..Work::default() };
        work.push(&datagram(&batch[20..60]), 5, What::Own, Some(&batch));
        work.push(&datagram(&reassembled), 5, What::Follow, Some(&batch));
        work.push(&datagram(&batch[150..200]), 5, What::Own, None);
        work.push(&datagram(&batch[0..0]), 5, What::Tick, Some(&batch));
        let [first, second, third, tick] = &work.items[..] else { panic!("four items") };
        assert!(first.in_batch && !second.in_batch && !third.in_batch && tick.in_batch);
        assert_eq!(work.payload(first), &batch[20..60]);
        assert_eq!(work.payload(second), &reassembled[..]);
        assert_eq!(work.payload(third), &batch[150..200], "without a batch, copied");
        assert_eq!(work.bytes.len(), 40 + 50, "only what is not in the batch is copied");
        assert!(work.payload(tick).is_empty());
    }

    #[test]
    fn an_idle_session_is_one_every_shard_found_idle() {
        let agreement =
            Arc::new(Agreement { barrier: Barrier::new(3), lists: (0..3).map(|_| Mutex::new(Vec::new())).collect() });
        let found = [vec![7, 3, 9, 1], vec![9, 7, 1], vec![1, 9, 7, 5]];
        let threads: Vec<_> = found
            .into_iter()
            .enumerate()
            .map(|(shard, mine)| {
                let agreement = agreement.clone();
                std::thread::spawn(move || agreement.agree(shard, mine))
            })
            .collect();
        let agreed: Vec<Vec<u64>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(agreed, vec![vec![7, 9, 1], vec![9, 7, 1], vec![1, 9, 7]], "each in its own order");
    }
}
