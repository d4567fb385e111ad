//! The slowest single insert while a table fills to a million entries: the growth that moves every
//! entry, during which the probe reads no packet. The flow table and a dedupe-sized map (48-byte
//! entries) as the probe has them (sharded), and the same map unsharded for comparison. The session
//! index's figure is printed by the `session_memory` example.
//!
//! cargo run --release -p gtpcharge-correlate --example growth [N]
use gtpcharge_correlate::flow::{FlowKey, FlowState, FlowTable};
use gtpcharge_correlate::sharded::ShardedMap;
use gtpcharge_correlate::Map;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The slowest call of `insert(i)` for i in 0..n, and at which i.
fn slowest(n: u32, mut insert: impl FnMut(u32)) -> (Duration, u32) {
    let mut worst = (Duration::ZERO, 0);
    for i in 0..n {
        let started = Instant::now();
        insert(i);
        worst = worst.max((started.elapsed(), i));
    }
    worst
}

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let mut flows = FlowTable::new(n as usize);
    let (took, at) = slowest(n, |i| {
        let key = FlowKey::new(
            u64::from(i),
            IpAddr::from((0x0A00_0000 + i).to_be_bytes()),
            IpAddr::from([203, 0, 113, 7]),
            40_000 + (i % 20_000) as u16,
            80,
        );
        flows.insert(key, FlowState::new(i, 1));
    });
    println!("flow table (sharded): slowest insert {:.1} ms at flow {at}", took.as_secs_f64() * 1e3);
    let mut sharded: ShardedMap<(u128, u128), u64> = ShardedMap::default();
    let (took, at) = slowest(n, |i| {
        sharded.get_or_insert_with((u128::from(i) * 7919, u128::from(i)), true, || 5);
    });
    println!("48-byte entries, sharded: slowest insert {:.1} ms at entry {at}", took.as_secs_f64() * 1e3);
    let mut single: Map<(u128, u128), u64> = Map::default();
    let (took, at) = slowest(n, |i| {
        single.insert((u128::from(i) * 7919, u128::from(i)), 5);
    });
    println!("48-byte entries, one table: slowest insert {:.1} ms at entry {at}", took.as_secs_f64() * 1e3);
}
