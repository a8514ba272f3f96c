//! Copy counts: how many times each `(worker, dp_rank)` holds a block, so that a duplicated
//! block leaves the index with its last copy rather than its first removal.
//!
//! # Duplicate blocks
//!
//! vLLM does not de-duplicate KV blocks: when a block-aligned prompt repeats, or two requests
//! generate the same tokens, a second physical block is cached under the same hash and
//! `BlockStored` is sent for the hash again; evicting *either* copy sends `BlockRemoved` for it
//! (vLLM's `BlockHashToBlockMap`, NOTE #1; the mocker does the same). The [`Indexer`] keeps a set
//! of holdings, so the applier counts copies per `(worker, dp_rank, tier, engine hash)`, in both
//! keyings: a `BlockStored` of a hash the `(worker, rank)` already holds on that tier adds a copy
//! (`duplicate_stores`), and a `BlockRemoved` takes one copy away, the holding leaving the index
//! with the last one (`duplicate_removes` counts the removals that left a copy behind). A hash
//! repeated within one event is one copy per occurrence. `group_idx` is not part of the count's
//! key (the applier ignores KV cache groups): copies cached by the groups of a hybrid model are
//! copies of the hash, and the block stays in the index while any group holds one.
//!
//! Storage is sparse: one copy is the holding itself (the index bit, or the engine map's tier bit),
//! and only extra copies are kept, as `(hash, tier) → extra count` in a per-`(worker, rank)` map
//! that is empty, and costs nothing on the apply path, while no hash is duplicated. Each of its
//! entries belongs to a live holding (`Engine` keying: the index holds the hash on that tier;
//! `Tokens` keying: the engine-map entry holds that tier), so it is **bounded by the live
//! holdings** of the `(worker, rank)` (and with `Tokens` keying by `max_engine_map_entries × tiers`);
//! the entries go with their holding (last copy removed, map eviction or rekeying, which drop the
//! holding whatever its count), and `AllBlocksCleared`, [`EventApplier::clear_worker`] and
//! [`EventApplier::remove_worker`] drop them all. Duplicates are detected without an extra lookup:
//! from the engine map's tier bits (`Tokens`), or from [`Indexer::apply_stored_with`] (`Engine`).
//! Once [`EventApplier::indexer_mut`] has been used, an `Engine`-keyed store also drops the stale
//! count of a holding that was removed behind the applier's back (a lookup per stored key while
//! the `(worker, rank)` has extra copies, which is why it waits for that).
//!
//! Caveat: vLLM ≥ 0.26 re-sends `BlockStored` for prefix-cache *hits* of requests sent with
//! `extra_args={"kv_cache_report_mode": "full"}` (`emit_cached_block_events`: no new copy). Such a
//! re-send is indistinguishable on the wire from a real duplicate (a root event of blocks the worker
//! holds), so it counts as a copy and the block outlives its eviction in the index (until the
//! worker is cleared or resynced). The default `"incremental"` mode sends no such events.
//!
//! [`Indexer`]: crate::indexer::Indexer
//! [`EventApplier::clear_worker`]: super::EventApplier::clear_worker
//! [`EventApplier::remove_worker`]: super::EventApplier::remove_worker
//! [`Indexer::apply_stored_with`]: crate::indexer::Indexer::apply_stored_with
//! [`EventApplier::indexer_mut`]: super::EventApplier::indexer_mut

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::engine_map::KeyHasher;
use super::stats::Counters;

/// An engine hash on a tier (indexer tier id) of one `(worker, rank)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Held {
    pub(super) hash: u64,
    pub(super) tier: u8,
}

impl std::hash::Hash for Held {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash ^ u64::from(self.tier).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
}

/// The extra copies of one `(worker, rank)`: `(hash, tier)` → copies beyond the first (≥ 1). Only
/// duplicated holdings have an entry; see the module docs.
#[derive(Default)]
pub(super) struct CopyCounts {
    pub(super) extra: HashMap<Held, u32, BuildHasherDefault<KeyHasher>>,
    /// Sum of `extra`'s values.
    pub(super) total: u64,
}

impl CopyCounts {
    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.extra.is_empty()
    }

    /// One more copy of a holding that exists.
    pub(super) fn add(&mut self, hash: u64, tier: usize, c: &mut Counters) {
        let n = self
            .extra
            .entry(Held {
                hash,
                tier: tier as u8,
            })
            .or_insert(0);
        *n = n.saturating_add(1);
        self.total += 1;
        c.duplicate_stores += 1;
    }

    /// Takes one extra copy away; false if the holding has only one (remove the holding).
    #[inline]
    pub(super) fn take(&mut self, hash: u64, tier: usize, c: &mut Counters) -> bool {
        if self.extra.is_empty() {
            return false;
        }
        let h = Held {
            hash,
            tier: tier as u8,
        };
        let Entry::Occupied(mut o) = self.extra.entry(h) else {
            return false;
        };
        *o.get_mut() -= 1;
        if *o.get() == 0 {
            o.remove();
            self.maybe_shrink();
        }
        self.total -= 1;
        c.duplicate_removes += 1;
        true
    }

    /// Drops the extra copies of `hash` on the tiers of `tiers` (its holdings there are gone).
    #[inline]
    pub(super) fn forget(&mut self, hash: u64, tiers: u8) {
        if self.extra.is_empty() {
            return;
        }
        let mut m = tiers;
        while m != 0 {
            let tier = m.trailing_zeros() as u8;
            if let Some(n) = self.extra.remove(&Held { hash, tier }) {
                self.total -= u64::from(n);
            }
            m &= m - 1;
        }
        self.maybe_shrink();
    }

    pub(super) fn clear(&mut self) {
        self.extra.clear();
        self.total = 0;
        if self.extra.capacity() > 1024 {
            self.extra.shrink_to(0);
        }
    }

    fn maybe_shrink(&mut self) {
        if self.extra.capacity() > 4096 && self.extra.len() * 8 < self.extra.capacity() {
            self.extra.shrink_to(self.extra.len() * 2);
        }
    }
}
