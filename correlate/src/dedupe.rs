//! The sighting dedupe: a token seen again for the same subscriber (or, unattributed, from the same
//! address) within the window is not reported again. Keyed by what the event says, so the same table
//! works inside the correlator and, with the probe's shards, after their events are merged back into
//! capture order (a subscriber's two PDN connections can be on two shards).
use crate::event::Event;
use crate::sharded::ShardedMap;
use gtpcharge_proto::Token;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    token: Token,
    who: u128,
}

impl Key {
    /// The subscriber (IMSI, else MSISDN, else the session) or, unattributed, the sender's address; and
    /// the token's time.
    fn of(event: &Event) -> Option<(Key, u64)> {
        let (token, who, ts_us) = match event {
            Event::Sighting(s) => {
                let id = &s.identity;
                let who = if !id.imsi.is_empty() {
                    u128::from(u64::from_le_bytes(id.imsi.packed()))
                } else if !id.msisdn.is_empty() {
                    u128::from(u64::from_le_bytes(id.msisdn.packed())) | 1 << 64
                } else {
                    u128::from(id.session_id) | 2 << 64
                };
                (s.token, who, s.ts_us)
            }
            Event::Unattributed(u) => (u.token, ip_bits(u.source.ip()) | 3 << 126, u.ts_us),
            _ => return None,
        };
        Some((Key { token, who }, ts_us))
    }
}

pub struct Dedupe {
    seen: ShardedMap<Key, u64>,
    window_us: u64,
    max: usize,
}

impl Dedupe {
    pub fn new(window_s: u64, max: usize) -> Dedupe {
        Dedupe { seen: ShardedMap::default(), window_us: window_s.saturating_mul(1_000_000), max }
    }

    fn cutoff(&self, now_us: u64) -> u64 {
        now_us.saturating_sub(self.window_us)
    }

    /// Whether a sighting or unattributed token is reported (`false`: a repeat within the window of the
    /// event's time). Other events always are. The table is bounded: when full, new keys are not
    /// remembered.
    pub fn admit(&mut self, event: &Event) -> bool {
        let Some((key, now_us)) = Key::of(event) else { return true };
        if self.seen.get(&key).is_some_and(|seen| *seen >= self.cutoff(now_us)) {
            return false;
        }
        let room = self.seen.len() < self.max;
        if let Some(seen) = self.seen.get_or_insert_with(key, room, || 0) {
            *seen = now_us;
        }
        true
    }

    /// Forgets what is past the window (lookups check the age themselves; this frees the room).
    pub fn sweep(&mut self, now_us: u64) {
        let cutoff = self.cutoff(now_us);
        self.seen.retain(|_, seen| *seen >= cutoff);
    }
}

pub(crate) fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) >> 2,
    }
}
