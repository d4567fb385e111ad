//! The correlator's clock: packet time (never the wall clock) and when each periodic sweep is next
//! due. A pure function of the sequence of packet times it is moved to, so a copy moved through the
//! same times fires the same sweeps at the same packets: the probe's dispatcher keeps one to tell its
//! shards when a sweep falls on a packet another shard processes (`src/shards.rs`).
use crate::engine::Config;

const SWEEP_INTERVAL_US: u64 = 1_000_000;
const SESSION_SWEEP_INTERVAL_US: u64 = 60_000_000;

/// What fell due at one packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Due {
    /// Pending requests past the retransmission window (every second).
    pub pending: bool,
    /// The flow table, the sighting dedupe and the tombstones, each every eighth of its own timeout.
    pub flows: bool,
    pub dedupe: bool,
    pub tombstones: bool,
    /// Idle sessions (every minute).
    pub sessions: bool,
}

#[derive(Debug, Clone)]
pub struct Clock {
    now_us: u64,
    next_sweep_us: u64,
    /// When the flows, the sighting dedupe and the tombstones are next swept, and each one's interval.
    next_table_sweep_us: [u64; 3],
    table_interval_us: [u64; 3],
    next_session_sweep_us: u64,
    /// The earliest of the above: until then a packet's time moves no sweep (one test per packet).
    next_due_us: u64,
}

impl Clock {
    pub fn new(config: &Config) -> Clock {
        // The big tables are swept every eighth of their own timeout: a full pass over a million flows
        // each second of packet time would cost more than the packets. Between sweeps, lookups check
        // the age themselves, so an entry past its timeout is never used, only not yet freed.
        let eighth = |timeout_s: u64| timeout_s.saturating_mul(1_000_000 / 8).max(SWEEP_INTERVAL_US);
        Clock {
            now_us: 0,
            next_sweep_us: 0,
            next_table_sweep_us: [0; 3],
            table_interval_us: [
                eighth(config.flow_idle_timeout_s),
                eighth(config.sighting_dedupe_window_s),
                eighth(config.tombstone_s),
            ],
            next_session_sweep_us: 0,
            next_due_us: 0,
        }
    }

    /// The latest packet time seen.
    #[inline(always)]
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// Moves the clock to a packet's time (a packet older than the clock leaves it where it is); what
    /// fell due, if anything.
    #[inline(always)]
    pub fn advance(&mut self, ts_us: u64) -> Option<Due> {
        if ts_us <= self.now_us {
            return None;
        }
        self.now_us = ts_us;
        if ts_us < self.next_due_us {
            return None;
        }
        Some(self.fire())
    }

    #[inline(never)]
    fn fire(&mut self) -> Due {
        let now = self.now_us;
        let mut due = Due::default();
        if now >= self.next_sweep_us {
            self.next_sweep_us = now + SWEEP_INTERVAL_US;
            due.pending = true;
        }
        let mut fired = [false; 3];
        for ((next, interval), fired) in
            self.next_table_sweep_us.iter_mut().zip(self.table_interval_us).zip(fired.iter_mut())
        {
            if now >= *next {
                *next = now + interval;
                *fired = true;
            }
        }
        [due.flows, due.dedupe, due.tombstones] = fired;
        if now >= self.next_session_sweep_us {
            self.next_session_sweep_us = now + SESSION_SWEEP_INTERVAL_US;
            due.sessions = true;
        }
        let tables = self.next_table_sweep_us.iter().copied().min().unwrap_or(0);
        self.next_due_us = self.next_sweep_us.min(self.next_session_sweep_us).min(tables);
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_fire_by_packet_time_and_copies_agree() {
        let config = Config { flow_idle_timeout_s: 16, ..Config::default() };
        let mut clock = Clock::new(&config);
        let first = clock.advance(5).expect("the first packet fires every sweep");
        assert!(first.pending && first.flows && first.dedupe && first.tombstones && first.sessions);
        assert_eq!(clock.advance(4), None, "an older packet moves nothing");
        assert_eq!(clock.now_us(), 5);
        assert_eq!(clock.advance(999_999), None, "within the second");
        let second = clock.advance(1_000_005).expect("a second later");
        assert!(second.pending && !second.flows && !second.sessions);
        let flows = clock.advance(2_000_005).expect("flows every 16/8 s");
        assert!(flows.flows && flows.pending && !flows.dedupe);
        // A copy moved through only the packets where something fell due fires the same sweeps.
        let times = [10u64, 700_000, 1_000_010, 1_500_000, 2_000_011, 61_000_000, 61_000_001, 62_500_000];
        let mut every = Clock::new(&config);
        let fired: Vec<(u64, Due)> = times.iter().filter_map(|&t| every.advance(t).map(|d| (t, d))).collect();
        let mut sparse = Clock::new(&config);
        let again: Vec<(u64, Due)> = fired.iter().filter_map(|&(t, _)| sparse.advance(t).map(|d| (t, d))).collect();
        assert_eq!(fired, again);
        assert!(fired.iter().any(|(_, d)| d.sessions && d.pending), "a minute later: sessions too");
    }
}
