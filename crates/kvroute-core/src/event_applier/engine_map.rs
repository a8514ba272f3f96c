//! The engine map of each `(worker, dp_rank)` (`Tokens` keying): engine hash → router key, so
//! that `BlockRemoved`, token-less `BlockStored` and parent hashes resolve to the keys the index
//! holds; and the mixing hasher of the applier's u64-keyed maps.
//!
//! # The engine map
//!
//! One map per `(worker, dp_rank)`: engine hash → `(router key, tier bitmask, stamp)`. A store sets
//! the tier's bit (or, if it is set, adds a copy), a removal takes a copy away and clears the bit
//! with the last one, and the entry goes when no tier holds the block, so the map tracks exactly the
//! worker's live blocks and shrinks back to empty. `AllBlocksCleared`,
//! [`EventApplier::clear_worker`] and [`EventApplier::remove_worker`] empty it.
//!
//! **Bound and eviction policy**: at most `max_engine_map_entries` entries per `(worker, rank)`.
//! When full, the entry stored or refreshed **least recently is evicted and its router key is
//! removed from the index on every tier it held**, so the index never keeps a block the router
//! can no longer remove (a false negative at worst, never a false positive), with all its copies.
//! Evicting the oldest rather than refusing new entries self-heals when removals were lost (old
//! blocks are the ones vLLM's LRU dropped first), whereas refusing would freeze the worker's view.
//! The order is a FIFO of `(hash, stamp)` with lazy deletion, compacted when it exceeds twice the
//! map. Counted in `map_evictions`. If two engine hashes of one worker map to the same router key
//! (only possible when vLLM hashes inputs the events do not carry: LoRA path, look-ahead tokens),
//! removing one drops the key from the index: again a false negative, never a false positive.
//!
//! [`EventApplier::clear_worker`]: super::EventApplier::clear_worker
//! [`EventApplier::remove_worker`]: super::EventApplier::remove_worker

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::stats::Counters;
use super::{Core, RankState};
use crate::indexer::MAX_TIERS;

const _: () = assert!(MAX_TIERS <= 8, "tier bitmasks are u8");

/// murmur3's 64-bit finalizer over `write_u64`: engine hashes may be small ints (vLLM 0.9) or
/// adversarial, so they are mixed rather than used as is.
#[derive(Default, Clone, Copy)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ b as u64);
        }
    }

    #[inline]
    fn write_u64(&mut self, k: u64) {
        let mut x = k ^ (k >> 33);
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        self.0 = x ^ (x >> 33);
    }
}

pub(super) type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

#[derive(Debug, Clone, Copy)]
pub(super) struct MapEntry {
    /// Router key.
    pub(super) key: u64,
    /// Last store/refresh; matches the entry's live item in `order`.
    pub(super) stamp: u32,
    /// Tiers (indexer tier ids) holding at least one copy of the block (further copies are in
    /// [`RankState::copies`]).
    pub(super) tiers: u8,
}

impl RankState {
    pub(super) fn clear_map(&mut self) {
        self.map.clear();
        self.order.clear();
        self.copies.clear();
        if self.map.capacity() > 1024 {
            self.map.shrink_to(0);
            self.order.shrink_to(0);
        }
    }

    fn stamp(&mut self) -> u32 {
        self.next_stamp = self.next_stamp.wrapping_add(1);
        self.next_stamp
    }

    /// Maps `hash` to `key` held on `tier`; entries that leave (rekeyed or evicted) go to `drop`
    /// as `(router key, tiers)`.
    pub(super) fn insert(
        &mut self,
        hash: u64,
        key: u64,
        tier: usize,
        max: usize,
        c: &mut Counters,
        drop: &mut Vec<(u64, u8)>,
    ) {
        let stamp = self.stamp();
        let bit = 1u8 << tier;
        match self.map.entry(hash) {
            Entry::Occupied(mut o) => {
                let e = o.get_mut();
                if e.key != key {
                    // The old key leaves the index on every tier, whatever its copies.
                    drop.push((e.key, e.tiers));
                    c.map_rekeyed += 1;
                    self.copies.forget(hash, e.tiers);
                    e.key = key;
                    e.tiers = 0;
                }
                if e.tiers & bit != 0 {
                    self.copies.add(hash, tier, c);
                }
                e.tiers |= bit;
                e.stamp = stamp;
            }
            Entry::Vacant(v) => {
                v.insert(MapEntry {
                    key,
                    stamp,
                    tiers: bit,
                });
            }
        }
        self.order.push_back((hash, stamp));
        while self.map.len() > max {
            if !self.evict_oldest(c, drop) {
                break;
            }
        }
        self.maybe_compact();
    }

    /// Refreshes `hash` (one more copy on `tier`); false if unknown.
    pub(super) fn touch(&mut self, hash: u64, tier: usize, c: &mut Counters) -> bool {
        let stamp = self.stamp();
        let Some(e) = self.map.get_mut(&hash) else {
            return false;
        };
        if e.tiers & (1 << tier) != 0 {
            self.copies.add(hash, tier, c);
        }
        e.tiers |= 1 << tier;
        e.stamp = stamp;
        self.order.push_back((hash, stamp));
        true
    }

    fn evict_oldest(&mut self, c: &mut Counters, drop: &mut Vec<(u64, u8)>) -> bool {
        while let Some((h, s)) = self.order.pop_front() {
            if let Entry::Occupied(o) = self.map.entry(h) {
                if o.get().stamp == s {
                    let e = o.remove();
                    self.copies.forget(h, e.tiers);
                    drop.push((e.key, e.tiers));
                    c.map_evictions += 1;
                    return true;
                }
            }
        }
        false
    }

    pub(super) fn maybe_compact(&mut self) {
        if self.map.is_empty() {
            self.order.clear();
        } else if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(h, s)| map.get(h).is_some_and(|e| e.stamp == *s));
        }
        if self.map.capacity() > 4096 && self.map.len() * 8 < self.map.capacity() {
            self.map.shrink_to(self.map.len() * 2);
            self.order.shrink_to(self.map.len() * 2 + 64);
        }
    }
}

impl Core {
    /// Removes from the index the router keys of entries that left the map (evicted or rekeyed).
    pub(super) fn drop_keys(&mut self, w: &str, rank: u32) {
        for i in 0..self.drop.len() {
            let (key, tiers) = self.drop[i];
            for t in 0..MAX_TIERS {
                if tiers & (1 << t) != 0 {
                    if let Some(name) = self.index.tier_name(t).map(str::to_owned) {
                        self.index.apply_removed(w, rank, Some(&name), &[key]);
                    }
                }
            }
        }
        self.drop.clear();
    }
}

#[cfg(test)]
mod tests {
    use crate::event_applier::{EventApplier, EventApplierConfig};
    use crate::events::{BlockHash, BlockHashes, BlockStored, KvEvent, KvEventBatch, Medium};

    fn stored(hashes: &[u64], parent: Option<u64>, tokens: Vec<u32>, bs: u32) -> KvEvent {
        KvEvent::BlockStored(BlockStored {
            block_hashes: BlockHashes::from_keys(hashes.to_vec()),
            parent_block_hash: parent.map(BlockHash::Int),
            token_ids: tokens,
            block_size: bs,
            medium: Some(Medium::Gpu),
            ..Default::default()
        })
    }

    fn batch(events: Vec<KvEvent>) -> KvEventBatch {
        KvEventBatch {
            ts: 1.0,
            events,
            data_parallel_rank: Some(0),
            skipped: vec![],
        }
    }

    #[test]
    fn eviction_removes_oldest_from_index() {
        let mut cfg = EventApplierConfig::new(2);
        cfg.max_engine_map_entries = 2;
        let mut ap = EventApplier::new(cfg).unwrap();
        ap.apply_batch(
            "w",
            &batch(vec![stored(&[1, 2], None, vec![1, 2, 3, 4], 2)]),
        )
        .unwrap();
        ap.apply_batch("w", &batch(vec![stored(&[3], Some(2), vec![5, 6], 2)]))
            .unwrap();
        assert_eq!(ap.map_len("w", 0), 2);
        assert_eq!(ap.stats().map_evictions, 1);
        assert!(ap.router_key_of("w", 0, 1).is_none());
        assert_eq!(ap.indexer().stats().blocks, 2);
        ap.check_invariants().unwrap();
    }
}
