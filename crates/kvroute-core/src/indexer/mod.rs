//! The KV indexer: which holder — a `(worker_id, dp_rank)` pair, called a *slot* — holds which
//! block on which tier, and prefix-overlap queries over it.
//!
//! # Semantics
//!
//! Blocks are named by 64-bit *chained* keys: a key names a block and its whole prefix, so a query
//! is a sequence of keys `q[0..n]` in which `q[i]`'s parent is `q[i-1]`. For every slot holding
//! `q[0]`, [`Indexer::find_matches`] reports `blocks` = the largest `k` such that the slot holds
//! every `q[i]`, `i < k`, on *some* tier, and `tier_blocks[t]` = how many of those `k` blocks have
//! `t` as their best (lowest-numbered) tier on that slot. Because the keys are chained, contiguity
//! comes from the query; the index itself is flat (key → holders) and keeps no parent pointers.
//!
//! Tiers are vLLM's `medium` strings, interned in order of first appearance; tier 0 is `"GPU"`,
//! which is also what `None` means. At most [`MAX_TIERS`] tiers.
//!
//! The index keeps a *set* of `(key, slot, tier)` holdings: storing one twice is still one holding,
//! and one removal drops it. vLLM does not de-duplicate blocks (two physical copies may share a
//! hash, and each eviction sends its own `BlockRemoved`), so the copies are counted by the caller,
//! [`crate::event_applier::EventApplier`], which removes a holding with its last copy; it learns
//! whether a store repeats a holding from [`Indexer::apply_stored_with`] (no extra lookup), and
//! [`Indexer::holds`] is the O(1) membership test.
//!
//! # Design
//!
//! One table (see [`table`]) keeps, per block, the key and `T` bitsets of `W = ceil(slots / 64)`
//! words (tier-major), one bit per slot, in an *arena* in insertion order, found by key through a
//! Swiss-table index of arena positions (5 bytes a bucket). A query walks `q` keeping `active` = the slots
//! still contiguous; at step `i` it ANDs in the any-tier holders of `q[i]` (the OR of the `T`
//! bitsets), and a slot that drops out gets `blocks = i`. It stops as soon as `active` is empty.
//! Tier attribution costs nothing when `T == 1`; otherwise the walk keeps, per tier `t > 0`, the
//! mask of slots whose best tier for the block is `t`, and credits the mask's slots once per run
//! of blocks over which it stays the same (tier 0 gets the rest).
//!
//! Long lookups: a `BlockStored` batch is a chain, so its new blocks sit in consecutive arena
//! blocks, and a long prompt is mostly such runs. The walk first tries the arena block right after
//! the previous one (`arena[e + 1].key == q[i + 1]` and live: a sequential read the hardware
//! prefetcher has already brought in) and goes through the index only at run boundaries; the
//! answer is exact either way, since a block is only ever taken on key equality. A full hit of a
//! 512-block prompt is one index probe and a 512-block sequential scan.
//!
//! Neither the walks nor the applies prefetch (the Swiss table shows no bucket address to
//! prefetch): even on the 1M-block, ~30 MB build, its writes without a prefetch ran ~1.5x faster
//! than the Robin Hood index's two-stage prefetched ones (benchmarks/RESULTS.md, "Indexer, fourth
//! pass"). `W == 1` walks are monomorphized per `T ≤ 4` (stride a constant).
//!
//! Invariants (besides the table's T1, T2, T4, T5 and the slots' S1–S3; [`Indexer::check_invariants`]
//! verifies them all):
//! - I1: the table's stride is `1 + T * W` with `T = tiers.len() ≥ 1` and
//!   `W ≥ max(1, ceil(slot_bound / 64))`; `tiers[0] == "GPU"`.
//! - I2: bit `s` of tier `t` in the entry of key `k` is set iff slot `s` holds `k` on tier `t`; in
//!   particular the bits of a free slot id (a removed worker's) are zero in every entry.
//! - I3: `pairs` is the total number of set bits.
//!
//! Costs: `apply_*` O(keys); `holds` O(1); `find_matches` O(walked keys × T × W), no allocation once the
//! [`Matches`] buffer is warm; `clear_worker` and `remove_worker` are O(table) (they are rare:
//! worker restart or departure), as is a change of `T` or `W` (a new tier, the 65th slot...).

mod slots;
mod table;

use crate::error::{Error, Result};
use slots::Slots;
use table::Table;

/// Most tiers an indexer can hold (tier ids are `0..MAX_TIERS`).
pub const MAX_TIERS: usize = 8;
/// Most slots (`(worker, dp_rank)` pairs) an indexer can hold at once.
pub const MAX_SLOTS: usize = 1 << 16;
/// The tier of `medium == None`.
const DEFAULT_TIER: &str = "GPU";

/// Counters and sizes of an [`Indexer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexerStats {
    /// Distinct live keys.
    pub blocks: u64,
    /// Live `(key, slot, tier)` holdings.
    pub pairs: u64,
    /// Known slots (`(worker, dp_rank)` pairs).
    pub workers: u64,
    /// Interned tiers (≥ 1: GPU).
    pub tiers: u32,
    /// Heap footprint of the index structures, from capacities.
    pub approx_bytes: u64,
    /// Removals of `(key, slot, tier)` holdings that did not exist (ignored).
    pub removes_unknown: u64,
}

/// One slot's overlap with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchEntry {
    /// The holder; see [`Indexer::slot_worker`].
    pub slot: u32,
    /// Length of the longest query prefix the slot holds (on any tier); ≥ 1.
    pub blocks: u32,
    /// Those blocks counted under their best (lowest-numbered) tier; sums to `blocks`.
    pub tier_blocks: [u32; MAX_TIERS],
}

/// Reusable output of [`Indexer::find_matches`]: once its buffers have grown, queries do not
/// allocate.
#[derive(Debug, Clone, Default)]
pub struct Matches {
    entries: Vec<MatchEntry>,
    walked: usize,
    /// Scratch: slots still contiguous, `W` words.
    active: Vec<u64>,
    /// Scratch: slot id → index in `entries`, valid for the slots of the current query.
    pos: Vec<u32>,
    /// Scratch for tier runs (generic walk): per (tier, word) the current mask and its length.
    prev: Vec<u64>,
    run: Vec<u32>,
}

impl Matches {
    pub fn new() -> Self {
        Self::default()
    }

    /// The slots with a nonzero overlap, in increasing slot order.
    pub fn entries(&self) -> &[MatchEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many query keys the last query looked at before it stopped.
    pub fn walked(&self) -> usize {
        self.walked
    }

    /// The largest overlap in blocks (0 if none).
    pub fn max_blocks(&self) -> u32 {
        self.entries.iter().map(|e| e.blocks).max().unwrap_or(0)
    }

    /// Drop-out of every slot whose bit is set in `dropped` (word `wi`): its overlap ends at `i`.
    #[inline]
    fn end_at(&mut self, wi: usize, mut dropped: u64, i: usize) {
        while dropped != 0 {
            let s = wi * 64 + dropped.trailing_zeros() as usize;
            self.entries[self.pos[s] as usize].blocks = i as u32;
            dropped &= dropped - 1;
        }
    }

    /// Credits `n` blocks to tier `t` for every slot whose bit is set in `m` (word `wi`).
    #[inline]
    fn count_tier(&mut self, wi: usize, mut m: u64, t: usize, n: u32) {
        while m != 0 {
            let s = wi * 64 + m.trailing_zeros() as usize;
            self.entries[self.pos[s] as usize].tier_blocks[t] += n;
            m &= m - 1;
        }
    }
}

/// The KV indexer. See the [module documentation](self).
pub struct Indexer {
    table: Table,
    /// `W`: bit words per tier per entry.
    w: usize,
    /// Interned tier names; `T = tiers.len()`.
    tiers: Vec<Box<str>>,
    slots: Slots,
    pairs: u64,
    removes_unknown: u64,
}

impl Default for Indexer {
    fn default() -> Self {
        Self::new()
    }
}

impl Indexer {
    pub fn new() -> Self {
        Indexer {
            table: Table::new(2),
            w: 1,
            tiers: vec![DEFAULT_TIER.into()],
            slots: Slots::default(),
            pairs: 0,
            removes_unknown: 0,
        }
    }

    /// vLLM BlockStored: slot `(worker_id, dp_rank)` now holds each of `keys` on tier `medium`
    /// (`None` = GPU). Registers the slot and interns the tier if new (even if `keys` is empty).
    ///
    /// `parent` is the chain parent of `keys[0]`. It is accepted for fidelity to the event and
    /// ignored: with chained keys a query's contiguity follows from the keys themselves, so the
    /// flat index needs no parent pointers (and a parent the router has already evicted is not an
    /// error in vLLM's stream either).
    ///
    /// Errors (`InvalidInput`, nothing changed): a new tier beyond [`MAX_TIERS`], a new slot
    /// beyond [`MAX_SLOTS`].
    pub fn apply_stored(
        &mut self,
        worker_id: &str,
        dp_rank: u32,
        medium: Option<&str>,
        parent: Option<u64>,
        keys: &[u64],
    ) -> Result<()> {
        self.apply_stored_with(worker_id, dp_rank, medium, parent, keys, |_, _| {})
            .map(|_| ())
    }

    /// [`Indexer::apply_stored`], also telling the caller, key by key, whether the slot already
    /// held it on that tier: `seen(i, held_before)` is called for each `keys[i]` in order, with
    /// `held_before` true when the holding existed before `keys[i]` was applied (so a key repeated
    /// within `keys` is "held" from its second occurrence on). This lets a caller that counts
    /// copies (the index itself keeps a *set* of holdings; see
    /// [`crate::event_applier`]) tell a duplicate store from a new one at no extra lookup.
    ///
    /// Returns the tier id of `medium` (as [`Indexer::tier_id`] would after the call). Same
    /// errors as [`Indexer::apply_stored`]; on an error nothing changes and `seen` is not called.
    pub fn apply_stored_with(
        &mut self,
        worker_id: &str,
        dp_rank: u32,
        medium: Option<&str>,
        parent: Option<u64>,
        keys: &[u64],
        mut seen: impl FnMut(usize, bool),
    ) -> Result<usize> {
        let _ = parent;
        let tier = self.tier_id(medium);
        if tier.is_none() && self.tiers.len() >= MAX_TIERS {
            return Err(Error::input(format!(
                "too many KV cache tiers: {:?} would be the {}th (max {MAX_TIERS})",
                medium.unwrap_or(DEFAULT_TIER),
                MAX_TIERS + 1
            )));
        }
        let slot = self.slots.find(worker_id, dp_rank);
        if slot.is_none() && self.slots.next_id() as usize >= MAX_SLOTS {
            return Err(Error::input(format!(
                "too many workers: more than {MAX_SLOTS} slots"
            )));
        }
        let tier = match tier {
            Some(t) => t,
            None => self.add_tier(medium.unwrap_or(DEFAULT_TIER)),
        };
        let slot = match slot {
            Some(s) => s,
            None => self.add_slot(worker_id, dp_rank),
        } as usize;
        let off = tier * self.w + slot / 64;
        let bit = 1u64 << (slot % 64);
        self.table.begin_batch();
        for (j, &k) in keys.iter().enumerate() {
            let e = self.table.find_or_insert(k);
            let word = self.table.word_mut(e, off);
            let held = *word & bit != 0;
            self.pairs += !held as u64;
            *word |= bit;
            seen(j, held);
        }
        Ok(tier)
    }

    /// Whether slot `slot` holds `key` on tier `tier` (false for an unknown slot, tier or key).
    /// One table lookup: O(1) expected, no allocation.
    #[inline]
    pub fn holds(&self, slot: u32, tier: usize, key: u64) -> bool {
        let slot = slot as usize;
        if tier >= self.tiers.len() || slot >= self.w * 64 {
            return false;
        }
        match self.table.find(key) {
            Some(e) => self.table.bits(e)[tier * self.w + slot / 64] & (1 << (slot % 64)) != 0,
            None => false,
        }
    }

    /// vLLM BlockRemoved: slot `(worker_id, dp_rank)` no longer holds `keys` on tier `medium`.
    /// Holdings that do not exist (unknown slot, tier or key) are ignored and counted in
    /// [`IndexerStats::removes_unknown`]. Keys left without holders are deleted.
    pub fn apply_removed(
        &mut self,
        worker_id: &str,
        dp_rank: u32,
        medium: Option<&str>,
        keys: &[u64],
    ) {
        let (Some(tier), Some(slot)) = (self.tier_id(medium), self.slots.find(worker_id, dp_rank))
        else {
            self.removes_unknown += keys.len() as u64;
            return;
        };
        let slot = slot as usize;
        let off = tier * self.w + slot / 64;
        let bit = 1u64 << (slot % 64);
        for &k in keys {
            if self.table.clear_bit(k, off, bit) {
                self.pairs -= 1;
            } else {
                self.removes_unknown += 1;
            }
        }
        self.table.maybe_shrink();
    }

    /// vLLM AllBlocksCleared: drops every block of slot `(worker_id, dp_rank)`, or of all the
    /// worker's dp ranks when `dp_rank` is `None`, on every tier. The slots stay known. Returns the
    /// number of holdings dropped. O(table).
    pub fn clear_worker(&mut self, worker_id: &str, dp_rank: Option<u32>) -> u64 {
        let mut mask = vec![0u64; self.w];
        let mut any = false;
        for s in self.slots.of_worker(worker_id) {
            if dp_rank.is_none_or(|r| self.slots.get(s).is_some_and(|(_, r2)| r2 == r)) {
                mask[s as usize / 64] |= 1 << (s % 64);
                any = true;
            }
        }
        if any {
            self.clear_slots(&mask)
        } else {
            0
        }
    }

    /// Drops all blocks of the worker (all dp ranks) and forgets it; its slot ids are reused
    /// later. Returns whether it was known. O(table).
    pub fn remove_worker(&mut self, worker_id: &str) -> bool {
        self.clear_worker(worker_id, None);
        if !self.slots.remove_worker(worker_id) {
            return false;
        }
        // Narrow the bitsets if the highest slots are gone (their bits are zero: I2).
        let w = self.slots.bound().div_ceil(64).max(1);
        if w < self.w {
            self.set_layout(self.tiers.len(), w);
        }
        true
    }

    /// For each slot holding `keys[0]`, the longest prefix of `keys` it holds and its split by
    /// best tier; see the [module documentation](self). Results go to `out` (cleared first), in
    /// increasing slot order. Stops walking as soon as no slot is still contiguous.
    pub fn find_matches(&self, keys: &[u64], out: &mut Matches) {
        out.entries.clear();
        out.walked = 0;
        let Some(&k0) = keys.first() else {
            return;
        };
        out.walked = 1;
        let Some(e0) = self.table.find(k0) else {
            return;
        };
        // The slots holding q[0] on any tier get an entry each, in slot order.
        let (w, t) = (self.w, self.tiers.len());
        let b0 = self.table.bits(e0);
        out.active.clear();
        out.active.resize(w, 0);
        for ti in 0..t {
            for wi in 0..w {
                out.active[wi] |= b0[ti * w + wi];
            }
        }
        if out.pos.len() < w * 64 {
            out.pos.resize(w * 64, 0);
        }
        for wi in 0..w {
            let mut m = out.active[wi];
            while m != 0 {
                let s = wi * 64 + m.trailing_zeros() as usize;
                out.pos[s] = out.entries.len() as u32;
                out.entries.push(MatchEntry {
                    slot: s as u32,
                    blocks: 0,
                    tier_blocks: [0; MAX_TIERS],
                });
                m &= m - 1;
            }
        }
        // The walk (from q[0] again: it is cached now) sets `blocks` of the slots that drop out
        // and credits tiers > 0.
        match (w, t) {
            (1, 1) => self.walk_w1::<1>(keys, out),
            (1, 2) => self.walk_w1::<2>(keys, out),
            (1, 3) => self.walk_w1::<3>(keys, out),
            (1, 4) => self.walk_w1::<4>(keys, out),
            _ => self.walk(keys, out),
        }
        // Survivors hold the whole query; tier 0 gets what no other tier got.
        let n = keys.len();
        for wi in 0..w {
            let a = out.active[wi];
            out.end_at(wi, a, n);
        }
        for e in &mut out.entries {
            let upper: u32 = e.tier_blocks[1..t].iter().sum();
            e.tier_blocks[0] = e.blocks - upper;
        }
    }

    /// The walk for `W == 1` and `T` tiers: `active` and the tier runs live in registers.
    ///
    /// Tier attribution goes by runs: at each block, the mask of slots whose best tier for it is
    /// `t > 0` is usually the same as at the previous block, so the walk only counts how long
    /// each mask lasts and credits its slots once per run, not once per block.
    #[inline(never)]
    fn walk_w1<const T: usize>(&self, keys: &[u64], out: &mut Matches) {
        let table = self.table.probe();
        let s = 1 + T; // the stride, a constant here
        let n = keys.len();
        let mut active = out.active[0];
        let mut prev = [0u64; T];
        let mut run = [0u32; T];
        let mut e = usize::MAX;
        let mut j = 0;
        let walked = loop {
            if j == n {
                break n;
            }
            let k = keys[j];
            // Sequential fast path: the next block of the arena run (see [`table`]).
            let mut b: &[u64; T] = &[0; T];
            if e != usize::MAX && table.next_is(e, k, s) {
                e += 1;
                b = table.bits(e, s).try_into().expect("W == 1");
            }
            let mut any = b.iter().fold(0, |a, &x| a | x);
            if any == 0 {
                let Some(f) = table.find(k, s) else {
                    out.end_at(0, active, j);
                    active = 0;
                    break j + 1;
                };
                e = f;
                b = table.bits(e, s).try_into().expect("W == 1");
                any = b.iter().fold(0, |a, &x| a | x);
            }
            let dropped = active & !any;
            if dropped != 0 {
                out.end_at(0, dropped, j);
                active &= any;
                if active == 0 {
                    break j + 1;
                }
            }
            if T > 1 {
                let mut seen = b[0];
                for ti in 1..T {
                    let m = b[ti] & active & !seen;
                    seen |= b[ti];
                    if m != prev[ti] {
                        out.count_tier(0, prev[ti], ti, run[ti]);
                        prev[ti] = m;
                        run[ti] = 0;
                    }
                    run[ti] += 1;
                }
            }
            j += 1;
        };
        for ti in 1..T {
            out.count_tier(0, prev[ti], ti, run[ti]);
        }
        out.active[0] = active;
        out.walked = walked;
    }

    /// The walk for any `W` and `T` (see [`Indexer::walk_w1`]).
    #[inline(never)]
    fn walk(&self, keys: &[u64], out: &mut Matches) {
        let table = self.table.probe();
        let s = self.table.stride();
        let (w, t) = (self.w, self.tiers.len());
        let n = keys.len();
        let mut active = std::mem::take(&mut out.active);
        let mut prev = std::mem::take(&mut out.prev);
        let mut run = std::mem::take(&mut out.run);
        prev.clear();
        prev.resize(t * w, 0);
        run.clear();
        run.resize(t * w, 0);
        let mut e = usize::MAX;
        let mut j = 0;
        let walked = loop {
            if j == n {
                break n;
            }
            let k = keys[j];
            let seq = e != usize::MAX
                && table.next_is(e, k, s)
                && table.bits(e + 1, s).iter().any(|&x| x != 0);
            if seq {
                e += 1;
            } else {
                let Some(f) = table.find(k, s) else {
                    for (wi, a) in active.iter_mut().enumerate() {
                        out.end_at(wi, std::mem::take(a), j);
                    }
                    break j + 1;
                };
                e = f;
            }
            let b = table.bits(e, s);
            let mut alive = 0;
            for (wi, a) in active.iter_mut().enumerate() {
                if *a == 0 {
                    continue;
                }
                let any = (0..t).fold(0, |acc, ti| acc | b[ti * w + wi]);
                let dropped = *a & !any;
                if dropped != 0 {
                    out.end_at(wi, dropped, j);
                    *a &= any;
                }
                alive |= *a;
            }
            if alive == 0 {
                break j + 1;
            }
            if t > 1 {
                for (wi, &a) in active.iter().enumerate() {
                    let mut seen = b[wi];
                    for ti in 1..t {
                        let x = b[ti * w + wi];
                        let m = x & a & !seen;
                        seen |= x;
                        let r = ti * w + wi;
                        if m != prev[r] {
                            out.count_tier(wi, prev[r], ti, run[r]);
                            prev[r] = m;
                            run[r] = 0;
                        }
                        run[r] += 1;
                    }
                }
            }
            j += 1;
        };
        if t > 1 {
            for wi in 0..w {
                for ti in 1..t {
                    let r = ti * w + wi;
                    out.count_tier(wi, prev[r], ti, run[r]);
                }
            }
        }
        out.active = active;
        out.prev = prev;
        out.run = run;
        out.walked = walked;
    }

    /// Counters and sizes.
    pub fn stats(&self) -> IndexerStats {
        let tiers: usize = self
            .tiers
            .iter()
            .map(|t| t.len() + std::mem::size_of::<Box<str>>())
            .sum();
        IndexerStats {
            blocks: self.table.len() as u64,
            pairs: self.pairs,
            workers: self.slots.live() as u64,
            tiers: self.tiers.len() as u32,
            approx_bytes: (std::mem::size_of::<Self>()
                + self.table.heap_bytes()
                + self.slots.heap_bytes()
                + tiers) as u64,
            removes_unknown: self.removes_unknown,
        }
    }

    /// The table's `(used arena blocks, live blocks, arena capacity in blocks, index slots)`.
    #[doc(hidden)]
    pub fn table_shape(&self) -> (usize, usize, usize, usize, u64, u64) {
        self.table.shape()
    }

    /// The name of tier `t` (`"GPU"` for 0), if interned.
    pub fn tier_name(&self, t: usize) -> Option<&str> {
        self.tiers.get(t).map(|s| &**s)
    }

    /// The id of tier `medium` (`None` = GPU = 0), if interned.
    pub fn tier_id(&self, medium: Option<&str>) -> Option<usize> {
        let name = medium.unwrap_or(DEFAULT_TIER);
        self.tiers.iter().position(|t| **t == *name)
    }

    /// The `(worker_id, dp_rank)` of a live slot, e.g. from a [`MatchEntry`].
    ///
    /// # Panics
    /// If `slot` is not live; see [`Indexer::try_slot_worker`].
    pub fn slot_worker(&self, slot: u32) -> (&str, u32) {
        self.slots
            .get(slot)
            .unwrap_or_else(|| panic!("slot {slot} is not live"))
    }

    /// The `(worker_id, dp_rank)` of `slot`, if live.
    pub fn try_slot_worker(&self, slot: u32) -> Option<(&str, u32)> {
        self.slots.get(slot)
    }

    /// The slot of `(worker_id, dp_rank)`, if known.
    pub fn slot_of(&self, worker_id: &str, dp_rank: u32) -> Option<u32> {
        self.slots.find(worker_id, dp_rank)
    }

    fn add_tier(&mut self, name: &str) -> usize {
        self.tiers.push(name.into());
        self.set_layout(self.tiers.len(), self.w);
        self.tiers.len() - 1
    }

    fn add_slot(&mut self, worker_id: &str, dp_rank: u32) -> u32 {
        let s = self.slots.add(worker_id, dp_rank);
        let w = self.slots.bound().div_ceil(64);
        if w > self.w {
            self.set_layout(self.tiers.len(), w);
        }
        s
    }

    /// Re-lays out every entry for `t` tiers of `w` words (tiers only grow; `w` may shrink when
    /// the dropped words are zero, I2).
    fn set_layout(&mut self, t: usize, w: usize) {
        let (ow, ot) = (self.w, (self.table.stride() - 1) / self.w);
        debug_assert!(t >= ot);
        let keep = ow.min(w);
        self.table.relayout(1 + t * w, |old, new| {
            for ti in 0..ot {
                new[ti * w..ti * w + keep].copy_from_slice(&old[ti * ow..ti * ow + keep]);
                debug_assert!(old[ti * ow + keep..ti * ow + ow].iter().all(|&x| x == 0));
            }
        });
        self.w = w;
    }

    /// Clears the bits of `mask` (one word per `W`) in every entry, on every tier.
    fn clear_slots(&mut self, mask: &[u64]) -> u64 {
        let (w, t) = (self.w, self.tiers.len());
        let mut dropped = 0u64;
        self.table.clear_where(|b| {
            for ti in 0..t {
                for (wi, &m) in mask.iter().enumerate() {
                    let x = &mut b[ti * w + wi];
                    dropped += (*x & m).count_ones() as u64;
                    *x &= !m;
                }
            }
        });
        self.table.maybe_shrink();
        self.pairs -= dropped;
        dropped
    }

    /// Verifies every invariant (table T1, T2, T4, T5, slots S1–S3, indexer I1–I3). O(table); for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.table.check()?;
        self.slots.check()?;
        let t = self.tiers.len();
        if t == 0 || t > MAX_TIERS || *self.tiers[0] != *DEFAULT_TIER {
            return Err("I1: tiers".into());
        }
        if self.table.stride() != 1 + t * self.w || self.w < self.slots.bound().div_ceil(64).max(1)
        {
            return Err(format!(
                "I1: stride {} w {} t {t}",
                self.table.stride(),
                self.w
            ));
        }
        let mut live = vec![0u64; self.w];
        for s in 0..self.slots.bound() {
            if self.slots.get(s as u32).is_some() {
                live[s / 64] |= 1 << (s % 64);
            }
        }
        let mut pairs = 0u64;
        let mut bad = None;
        self.table.for_each(|k, b| {
            for (i, &x) in b.iter().enumerate() {
                pairs += x.count_ones() as u64;
                if x & !live[i % self.w] != 0 {
                    bad = Some(k);
                }
            }
        });
        if let Some(k) = bad {
            return Err(format!("I2: key {k:#x} has a bit of a free slot"));
        }
        if pairs != self.pairs {
            return Err(format!("I3: pairs {} but {pairs} bits set", self.pairs));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ix: &Indexer, m: &Matches, worker: &str, dp: u32) -> Option<MatchEntry> {
        let s = ix.slot_of(worker, dp)?;
        m.entries().iter().find(|e| e.slot == s).copied()
    }

    #[test]
    fn indexer_and_matches_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Indexer>();
        send_sync::<Matches>();
    }

    #[test]
    fn prefix_overlap_and_early_stop() {
        let mut ix = Indexer::new();
        ix.apply_stored("a", 0, None, None, &[1, 2, 3, 4]).unwrap();
        ix.apply_stored("b", 0, None, None, &[1, 2]).unwrap();
        ix.apply_stored("b", 0, None, Some(2), &[9]).unwrap();
        ix.apply_stored("c", 0, None, None, &[2, 3, 4]).unwrap();
        let mut m = Matches::new();
        ix.find_matches(&[1, 2, 3, 4, 5, 6], &mut m);
        assert_eq!(m.len(), 2);
        assert_eq!(entry(&ix, &m, "a", 0).unwrap().blocks, 4);
        assert_eq!(entry(&ix, &m, "b", 0).unwrap().blocks, 2);
        assert!(entry(&ix, &m, "c", 0).is_none(), "c does not hold q[0]");
        assert_eq!(
            m.walked(),
            5,
            "stops at the first key nobody contiguous holds"
        );
        assert_eq!(m.max_blocks(), 4);
        ix.find_matches(&[7, 1], &mut m);
        assert!(m.is_empty());
        ix.find_matches(&[], &mut m);
        assert!(m.is_empty());
        ix.check_invariants().unwrap();
    }

    #[test]
    fn tiers_best_tier_attribution() {
        let mut ix = Indexer::new();
        ix.apply_stored("a", 0, Some("CPU"), None, &[1, 2, 3])
            .unwrap();
        ix.apply_stored("a", 0, None, None, &[2]).unwrap();
        ix.apply_stored("a", 0, Some("DISK"), None, &[3, 4])
            .unwrap();
        assert_eq!(ix.tier_name(0), Some("GPU"));
        assert_eq!(ix.tier_name(1), Some("CPU"));
        assert_eq!(ix.tier_name(2), Some("DISK"));
        assert_eq!(ix.tier_id(Some("GPU")), Some(0));
        let mut m = Matches::new();
        ix.find_matches(&[1, 2, 3, 4], &mut m);
        let e = m.entries()[0];
        assert_eq!(e.blocks, 4);
        // 1: CPU, 2: GPU (best of GPU+CPU), 3: CPU (best of CPU+DISK), 4: DISK.
        assert_eq!(&e.tier_blocks[..3], &[1, 2, 1]);
        assert_eq!(ix.stats().pairs, 6);
        ix.apply_removed("a", 0, Some("CPU"), &[2, 3, 3, 77]);
        assert_eq!(ix.stats().removes_unknown, 2);
        ix.find_matches(&[1, 2, 3, 4], &mut m);
        assert_eq!(&m.entries()[0].tier_blocks[..3], &[1, 1, 2]);
        ix.check_invariants().unwrap();
    }

    #[test]
    fn too_many_tiers_is_an_error_and_changes_nothing() {
        let mut ix = Indexer::new();
        for t in 1..MAX_TIERS {
            ix.apply_stored("a", 0, Some(&format!("T{t}")), None, &[t as u64])
                .unwrap();
        }
        let before = ix.stats();
        let err = ix
            .apply_stored("new", 0, Some("ninth"), None, &[100])
            .unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::InvalidInput);
        assert_eq!(ix.stats(), before);
        assert!(ix.slot_of("new", 0).is_none());
        ix.apply_stored("a", 0, Some("T3"), None, &[100]).unwrap();
        ix.check_invariants().unwrap();
    }

    #[test]
    fn clear_and_remove_worker() {
        let mut ix = Indexer::new();
        ix.apply_stored("a", 0, None, None, &[1, 2]).unwrap();
        ix.apply_stored("a", 1, Some("CPU"), None, &[1, 2, 3])
            .unwrap();
        ix.apply_stored("b", 0, None, None, &[1]).unwrap();
        assert_eq!(ix.clear_worker("a", Some(1)), 3);
        assert_eq!(ix.stats().blocks, 2);
        assert_eq!(ix.stats().workers, 3);
        assert_eq!(ix.clear_worker("a", None), 2);
        assert_eq!(ix.stats().blocks, 1);
        assert_eq!(ix.clear_worker("zzz", None), 0);
        ix.apply_stored("a", 1, None, None, &[5]).unwrap();
        assert!(ix.remove_worker("a"));
        assert!(!ix.remove_worker("a"));
        let s = ix.stats();
        assert_eq!((s.blocks, s.pairs, s.workers), (1, 1, 1));
        // Freed slot ids are reused, lowest first.
        let c = {
            ix.apply_stored("c", 0, None, None, &[1]).unwrap();
            ix.slot_of("c", 0).unwrap()
        };
        assert_eq!(c, 0);
        let mut m = Matches::new();
        ix.find_matches(&[1], &mut m);
        assert_eq!(m.len(), 2);
        assert_eq!(ix.slot_worker(m.entries()[0].slot), ("c", 0));
        ix.check_invariants().unwrap();
    }

    #[test]
    fn wide_bitsets_grow_and_shrink() {
        let mut ix = Indexer::new();
        for i in 0..150u32 {
            ix.apply_stored(&format!("w{i}"), 0, None, None, &[1, 2, 3 + i as u64])
                .unwrap();
        }
        assert_eq!(ix.w, 3);
        ix.check_invariants().unwrap();
        let mut m = Matches::new();
        ix.find_matches(&[1, 2, 3 + 140, 1000], &mut m);
        assert_eq!(m.len(), 150);
        for e in m.entries() {
            let want = if ix.slot_worker(e.slot).0 == "w140" {
                3
            } else {
                2
            };
            assert_eq!(e.blocks, want);
        }
        for i in 60..150 {
            ix.remove_worker(&format!("w{i}"));
        }
        assert_eq!(ix.w, 1);
        ix.check_invariants().unwrap();
        ix.find_matches(&[1, 2, 3], &mut m);
        assert_eq!(m.len(), 60);
    }

    #[test]
    fn holds_and_apply_stored_with_report_existing_holdings() {
        let mut ix = Indexer::new();
        let mut seen = vec![];
        let t = ix
            .apply_stored_with("a", 0, None, None, &[1, 2, 1, 0], |i, held| {
                seen.push((i, held))
            })
            .unwrap();
        assert_eq!(t, 0);
        assert_eq!(seen, [(0, false), (1, false), (2, true), (3, false)]);
        let a = ix.slot_of("a", 0).unwrap();
        assert!(ix.holds(a, 0, 1) && ix.holds(a, 0, 2) && ix.holds(a, 0, 0));
        assert!(!ix.holds(a, 0, 3), "unknown key");
        assert!(!ix.holds(a, 1, 1), "unknown tier");
        assert!(!ix.holds(a + 1, 0, 1), "unknown slot");
        assert!(!ix.holds(1000, 0, 1), "slot beyond the bitsets");
        assert_eq!(ix.stats().pairs, 3);

        // Per tier and per slot: another tier or slot holding the key is not "held".
        seen.clear();
        let t = ix
            .apply_stored_with("a", 0, Some("CPU"), None, &[1, 5], |i, held| {
                seen.push((i, held))
            })
            .unwrap();
        assert_eq!(t, 1);
        ix.apply_stored_with("b", 0, None, None, &[1], |i, held| seen.push((i, held)))
            .unwrap();
        assert_eq!(seen, [(0, false), (1, false), (0, false)]);
        let cpu = ix.tier_id(Some("CPU")).unwrap();
        let b = ix.slot_of("b", 0).unwrap();
        assert!(ix.holds(a, cpu, 1) && ix.holds(a, cpu, 5) && !ix.holds(a, 0, 5));
        assert!(ix.holds(b, 0, 1) && !ix.holds(b, cpu, 1));
        seen.clear();
        ix.apply_stored_with("a", 0, Some("CPU"), None, &[5, 6], |i, held| {
            seen.push((i, held))
        })
        .unwrap();
        assert_eq!(seen, [(0, true), (1, false)]);

        // Removal and clears are seen at once.
        ix.apply_removed("a", 0, Some("CPU"), &[5]);
        assert!(!ix.holds(a, cpu, 5));
        ix.clear_worker("a", None);
        assert!(!ix.holds(a, 0, 1) && !ix.holds(a, cpu, 1));
        assert!(ix.holds(b, 0, 1));

        // Errors: nothing changes and the callback is not called.
        for t in 2..MAX_TIERS {
            ix.apply_stored("a", 0, Some(&format!("T{t}")), None, &[])
                .unwrap();
        }
        let mut called = false;
        assert!(ix
            .apply_stored_with("a", 0, Some("ninth"), None, &[1], |_, _| called = true)
            .is_err());
        assert!(!called);
        ix.check_invariants().unwrap();
    }

    #[test]
    fn key_zero_and_max() {
        let mut ix = Indexer::new();
        ix.apply_stored("a", 0, None, None, &[0, u64::MAX, 0])
            .unwrap();
        let mut m = Matches::new();
        ix.find_matches(&[0, u64::MAX, 0, 1], &mut m);
        assert_eq!(m.entries()[0].blocks, 3);
        assert_eq!(ix.stats().blocks, 2);
        ix.apply_removed("a", 0, None, &[0]);
        ix.find_matches(&[0], &mut m);
        assert!(m.is_empty());
        ix.check_invariants().unwrap();
    }
}
