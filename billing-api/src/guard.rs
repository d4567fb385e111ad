//! Failed authentication, slowed and seen. Each peer address's failures (no key, an unknown or revoked
//! key) are counted over a window of [`WINDOW_US`]; past [`FREE_FAILURES`] in the window, each further
//! failure is answered only after a delay that doubles up to [`DELAY_MAX`], so a peer guessing keys gets
//! a few a second at most while other peers are served as before. Every failure is counted (the
//! server's totals, [`AuthGuard::failures`]); the log says the first failure of a peer in a window and
//! every tenth after, with the peer's address and count, never the key.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Failures a peer may make in the window before they are delayed (a mistyped key is not an attack).
pub const FREE_FAILURES: u32 = 5;
/// How long a peer's failures are remembered after its last one.
pub const WINDOW_US: u64 = 10 * 60 * 1_000_000;
/// The longest delay of one failed call.
pub const DELAY_MAX: Duration = Duration::from_secs(5);
/// Peers remembered at most; beyond it the quietest half is forgotten.
const PEERS_MAX: usize = 65_536;

#[derive(Default)]
pub struct AuthGuard {
    peers: Mutex<HashMap<IpAddr, (u32, u64)>>,
    failures: AtomicU64,
    delayed: AtomicU64,
}

impl AuthGuard {
    /// Records a failed authentication from `peer` at `now_us`; returns how long to hold the answer.
    pub fn failed(&self, peer: Option<IpAddr>, now_us: u64, why: &'static str) -> Duration {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let Some(peer) = peer else { return Duration::ZERO };
        let count = {
            let Ok(mut peers) = self.peers.lock() else { return Duration::ZERO };
            if peers.len() >= PEERS_MAX && !peers.contains_key(&peer) {
                let cutoff = now_us.saturating_sub(WINDOW_US);
                peers.retain(|_, (_, last)| *last >= cutoff);
                if peers.len() >= PEERS_MAX {
                    let mut lasts: Vec<u64> = peers.values().map(|(_, last)| *last).collect();
                    lasts.sort_unstable();
                    let median = lasts[lasts.len() / 2];
                    peers.retain(|_, (_, last)| *last > median);
                }
            }
            let entry = peers.entry(peer).or_insert((0, now_us));
            if now_us.saturating_sub(entry.1) > WINDOW_US {
                entry.0 = 0;
            }
            entry.0 = entry.0.saturating_add(1);
            entry.1 = now_us;
            entry.0
        };
        if count == 1 || count % 10 == 0 {
            tracing::warn!(%peer, failures = count, why, "authentication failed");
        }
        let delay = delay_for(count);
        if !delay.is_zero() {
            self.delayed.fetch_add(1, Ordering::Relaxed);
        }
        delay
    }

    /// Failed authentications since the server started, and how many of them were delayed.
    pub fn failures(&self) -> (u64, u64) {
        (self.failures.load(Ordering::Relaxed), self.delayed.load(Ordering::Relaxed))
    }
}

/// The delay of a peer's `count`-th failure in its window: none for the first [`FREE_FAILURES`], then
/// 250 ms doubling to [`DELAY_MAX`].
pub fn delay_for(count: u32) -> Duration {
    if count <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES - 1).min(5);
    (Duration::from_millis(250) * (1 << doublings)).min(DELAY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_then_doubling_then_capped() {
        let delays: Vec<u64> = (1..=13).map(|n| delay_for(n).as_millis() as u64).collect();
        assert_eq!(delays, [0, 0, 0, 0, 0, 250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
    }

    #[test]
    fn per_peer_and_forgotten_after_the_window() {
        let guard = AuthGuard::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for n in 0..6 {
            let delay = guard.failed(Some(a), n, "unknown-key");
            assert_eq!(delay.is_zero(), n < 5, "failure {}", n + 1);
        }
        assert!(guard.failed(Some(b), 7, "unknown-key").is_zero(), "another peer is not slowed");
        assert!(guard.failed(Some(a), 7 + WINDOW_US + 1, "unknown-key").is_zero(), "a quiet window forgets");
        assert_eq!(guard.failures(), (8, 1));
    }
}
