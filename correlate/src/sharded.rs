//! A hash map in 64 shards, for the tables that grow to a million entries (flows, sighting dedupe).
//! A hashbrown table grows by moving every entry at once: 159 ms for the flow table at 917,504 flows and
//! 95 ms for the dedupe table, during which the probe reads no packet and a busy link overflows the
//! kernel buffer. A shard grows alone, in a 64th of that (`cargo run --release -p
//! gtpcharge-correlate --example growth`). The key is hashed once: the shard comes from bits of the hash
//! that a shard's table does not use itself (its bucket comes from the low bits, its control byte from
//! the top seven).
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use std::hash::{BuildHasher, Hash};

pub(crate) const SHARDS: usize = 64;

/// The shard of a key with this hash: bits that neither a shard's bucket (low bits) nor its control byte
/// (top seven) come from.
pub(crate) fn shard_of(hash: u64) -> usize {
    (hash >> 40) as usize % SHARDS
}

pub struct ShardedMap<K, V> {
    /// Inline, not behind a pointer: a lookup's first load is its shard's table header.
    shards: [HashTable<(K, V)>; SHARDS],
    hasher: foldhash::fast::RandomState,
    len: usize,
}

impl<K: Hash + Eq, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            shards: std::array::from_fn(|_| HashTable::new()),
            hasher: foldhash::fast::RandomState::default(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The key's hash and its shard's index.
    fn locate(&self, key: &K) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, shard_of(hash))
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        let (hash, shard) = self.locate(key);
        self.shards.get(shard)?.find(hash, |(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let (hash, shard) = self.locate(key);
        self.shards.get_mut(shard)?.find_mut(hash, |(k, _)| k == key).map(|(_, v)| v)
    }

    /// The key's value, made with `make` when it is new and `room` allows a new entry; `None` otherwise.
    pub fn get_or_insert_with(&mut self, key: K, room: bool, make: impl FnOnce() -> V) -> Option<&mut V> {
        let (hash, shard) = self.locate(&key);
        let ShardedMap { shards, hasher, len } = self;
        let entry = shards.get_mut(shard)?.entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k));
        match entry {
            Entry::Occupied(entry) => Some(&mut entry.into_mut().1),
            Entry::Vacant(_) if !room => None,
            Entry::Vacant(entry) => {
                *len += 1;
                Some(&mut entry.insert((key, make())).into_mut().1)
            }
        }
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (hash, shard) = self.locate(key);
        let found = self.shards.get_mut(shard)?.find_entry(hash, |(k, _)| k == key).ok()?;
        self.len -= 1;
        Some(found.remove().0 .1)
    }

    /// Keeps the entries `keep` says yes to; returns how many went.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) -> usize {
        let before = self.len;
        for shard in &mut self.shards {
            shard.retain(|(k, v)| keep(k, v));
        }
        self.len = self.shards.iter().map(HashTable::len).sum();
        before - self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_replaced_removed_and_retained_across_shards() {
        let mut map: ShardedMap<u32, u32> = ShardedMap::default();
        for i in 0..10_000 {
            assert_eq!(map.get_or_insert_with(i, true, || i * 2).copied(), Some(i * 2));
        }
        assert_eq!(map.get_or_insert_with(10_000, false, || 0), None, "no room for a new key");
        assert_eq!(map.get_or_insert_with(5, false, || 0).copied(), Some(10), "an existing key needs none");
        assert_eq!(map.len(), 10_000);
        assert!(map.shards.iter().all(|s| !s.is_empty()), "every shard is used");
        if let Some(v) = map.get_mut(&7) {
            *v = 1;
        }
        assert_eq!(map.get(&7), Some(&1));
        for i in (0..10_000).step_by(2) {
            assert_eq!(map.remove(&i), Some(i * 2));
        }
        assert_eq!(map.remove(&0), None);
        assert_eq!(map.len(), 5_000);
        assert_eq!(map.retain(|k, _| *k >= 5_000), 2_500);
        assert_eq!(map.len(), 2_500);
        assert_eq!((map.get(&4_999), map.get(&5_001)), (None, Some(&10_002)));
    }
}
