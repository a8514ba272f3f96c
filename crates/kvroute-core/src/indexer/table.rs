//! The block table: the blocks' holder bitsets in an *arena* kept in insertion order, found by
//! key through a compact open-addressing *index*.
//!
//! Why an arena: a `BlockStored` batch is a chain (`keys[i]`'s parent is `keys[i - 1]`), and its
//! new blocks get consecutive arena positions. A lookup walks a query that is, for long prompts,
//! mostly made of such runs, so after the first key of a run it finds the next one at the next
//! arena position: the walk checks `arena[e + 1].key == q[i + 1]` (a sequential read the
//! hardware prefetcher has already fetched) and only goes through the index at run boundaries.
//! Exactness needs nothing more: a block is found by key equality either way.
//!
//! Layout:
//!
//! ```text
//! arena block e: [ key | tier 0: W words | tier 1: W words | ... | tier T-1: W words ]   stride = 1 + T*W
//! index:         a Swiss table (hashbrown's `HashTable`) of arena positions `e` (u32), hashed by key
//! ```
//!
//! Why a Swiss table for the index: a probe reads one 16-byte group of 7-bit tags and compares
//! them in one SIMD step, so its branches do not depend on how far a key lies from its home.
//! The Robin Hood index it replaced (8-byte slots, linear probing) spent most of a write on the
//! mispredicted exits of its probe and shift loops; this one writes ~1.8x faster on the Mooncake
//! trace and holds 5 bytes a bucket instead of 8 a slot. The index reads the arena only to confirm
//! a tag match (1 in 128 of the other keys in a group) and to rehash when it resizes.
//!
//! Invariants (between public calls; checked by [`Table::check`]):
//! - T1: `arena.len() == used * stride`; block `e < used` is *live* iff one of its bit words is
//!   nonzero ("a key is in the table iff it has a holder"); `live` counts them.
//! - T2: every live block is the value of exactly one index entry, found by its key; dead blocks
//!   are the value of none; no two live blocks share a key.
//! - T4: after [`Table::maybe_shrink`], the index has at most 4 buckets per live block (or its
//!   initial 32), and dead blocks are at most half the live ones (plus a small slack), so memory
//!   stays proportional to live blocks.
//! - T5: the runs kept for reuse (`free_runs`, `freeing`, `fill`) are disjoint and hold only
//!   dead blocks.

use hashbrown::hash_table::{Entry, HashTable};

/// Entries a new index holds before its first growth (it starts with 32 buckets).
const MIN_CAP: usize = 16;
/// Buckets of a new index (`MIN_CAP` entries at hashbrown's 7/8 load, rounded up to a power of
/// two); it never shrinks below.
const MIN_BUCKETS: usize = 32;
/// Odd 64-bit constant for multiplicative (Fibonacci) hashing: 2^64 / golden ratio.
const MUL: u64 = 0x9E37_79B9_7F4A_7C15;
/// Shortest run of dead blocks kept for reuse (shorter ones wait for a compaction).
const MIN_FREE_RUN: usize = 4;
/// Dead blocks tolerated before a compaction, beyond half the live ones. A compaction copies the
/// live blocks and rewrites the index once, so removals pay for ~2 of each, amortized.
const DEAD_SLACK: usize = 256;

/// The 64-bit hash of a key. Keys are already hashes in production but small integers in tests,
/// so fold the high half down and multiply (the top bits of the product depend on all key bits),
/// then fold the product's top half into its bottom: the index takes its group position from the
/// low bits and its 7-bit tag from the top ones.
#[inline(always)]
fn hash(key: u64) -> u64 {
    let m = (key ^ (key >> 32)).wrapping_mul(MUL);
    m ^ (m >> 32)
}

pub(super) struct Table {
    arena: Vec<u64>,
    stride: usize,
    used: usize,
    live: usize,
    /// Arena positions of the live blocks, hashed by their keys (a SIMD-probed Swiss table: a
    /// probe is one 16-byte group of tags, so its branches are the same whatever the load).
    index: HashTable<u32>,
    /// Runs `[lo, hi)` of dead arena blocks kept for reuse (see [`Table::begin_batch`]).
    free_runs: Vec<(usize, usize)>,
    /// The run the current removals are extending.
    freeing: (usize, usize),
    /// Where new blocks go next while `fill.0 < fill.1` (then at the arena's end).
    fill: (usize, usize),
    /// Arena compactions and index rebuilds so far (bench diagnostics).
    pub(super) rebuilds: (u64, u64),
}

impl Table {
    pub(super) fn new(stride: usize) -> Self {
        debug_assert!(stride >= 2);
        Table {
            arena: Vec::new(),
            stride,
            used: 0,
            live: 0,
            index: HashTable::with_capacity(MIN_CAP),
            free_runs: Vec::new(),
            freeing: (0, 0),
            fill: (0, 0),
            rebuilds: (0, 0),
        }
    }

    /// Starts a batch of insertions (a `BlockStored` chain): its new blocks go, in order, into
    /// the most recently freed run of dead blocks if there is one (an evicted chain's tail: the
    /// arena neither grows nor needs compacting under steady churn), else at the arena's end.
    pub(super) fn begin_batch(&mut self) {
        self.end_freeing();
        if self.fill.0 >= self.fill.1 {
            self.fill = self.free_runs.pop().unwrap_or((0, 0));
        }
    }

    /// Files the run of dead blocks the removals were extending.
    fn end_freeing(&mut self) {
        let (lo, hi) = std::mem::take(&mut self.freeing);
        if hi - lo >= MIN_FREE_RUN {
            self.free_runs.push((lo, hi));
        }
    }

    /// Live blocks.
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.live
    }

    #[inline]
    pub(super) fn stride(&self) -> usize {
        self.stride
    }

    /// Heap bytes held (capacity-based).
    pub(super) fn heap_bytes(&self) -> usize {
        self.arena.capacity() * std::mem::size_of::<u64>() + self.index.allocation_size()
    }

    /// `(used arena blocks, live blocks, arena capacity in blocks, index buckets, compactions,
    /// index resizes)`; for benches.
    pub(super) fn shape(&self) -> (usize, usize, usize, usize, u64, u64) {
        (
            self.used,
            self.live,
            self.arena.capacity() / self.stride,
            self.index.num_buckets(),
            self.rebuilds.0,
            self.rebuilds.1,
        )
    }

    /// A copyable read-only view for lookups in a hot loop.
    #[inline(always)]
    pub(super) fn probe(&self) -> Probe<'_> {
        Probe {
            arena: &self.arena,
            index: &self.index,
            used: self.used,
        }
    }

    /// The arena position of `key`, if it is live.
    #[inline(always)]
    pub(super) fn find(&self, key: u64) -> Option<usize> {
        self.probe().find(key, self.stride)
    }

    /// The arena position of `key`, appending a block with all-zero bits if absent (growing the
    /// index first if needed). The caller must set a bit before its call returns (T1).
    #[inline(always)]
    pub(super) fn find_or_insert(&mut self, key: u64) -> usize {
        let s = self.stride;
        let Table {
            arena,
            index,
            used,
            live,
            free_runs,
            fill,
            rebuilds,
            ..
        } = self;
        let grows = index.len() == index.capacity();
        let entry = index.entry(
            hash(key),
            |&e| arena[e as usize * s] == key,
            |&e| hash(arena[e as usize * s]),
        );
        let vacant = match entry {
            Entry::Occupied(o) => return *o.get() as usize,
            Entry::Vacant(v) => v,
        };
        rebuilds.1 += grows as u64;
        if fill.0 >= fill.1 {
            // The batch's run is used up: go on in the next freed one rather than grow the
            // arena (a chain split over two runs costs a lookup one index probe at the seam).
            if let Some(run) = free_runs.pop() {
                *fill = run;
            }
        }
        let e = if fill.0 < fill.1 {
            // A dead block of a freed run: its bits are zero (T1), only the key changes.
            let e = fill.0;
            fill.0 += 1;
            arena[e * s] = key;
            e
        } else {
            if arena.len() + s > arena.capacity() {
                // Grow by an eighth, not double: the arena is most of the memory.
                arena.reserve_exact((arena.len() / 8).max(64 * s));
            }
            arena.push(key);
            arena.resize(arena.len() + s - 1, 0);
            *used += 1;
            *used - 1
        };
        *live += 1;
        debug_assert!(
            e <= u32::MAX as usize,
            "arena positions fit the index's u32 values"
        );
        vacant.insert(e as u32);
        e
    }

    /// The bit words of block `e` (T*W words, tier-major).
    #[inline(always)]
    pub(super) fn bits(&self, e: usize) -> &[u64] {
        let s = self.stride;
        &self.arena[e * s + 1..e * s + s]
    }

    #[inline(always)]
    fn bits_mut(&mut self, e: usize) -> &mut [u64] {
        let s = self.stride;
        &mut self.arena[e * s + 1..e * s + s]
    }

    /// One bit word of block `e` (`off` counts from the first bit word).
    #[inline(always)]
    pub(super) fn word_mut(&mut self, e: usize, off: usize) -> &mut u64 {
        &mut self.arena[e * self.stride + 1 + off]
    }

    /// Clears bit `bit` of word `off` in the block of `key` (one index probe), deleting the block
    /// when that leaves it without holders; false when the key is absent or lacks that bit. Does
    /// not shrink; call [`Table::maybe_shrink`] after a batch.
    #[inline(always)]
    pub(super) fn clear_bit(&mut self, key: u64, off: usize, bit: u64) -> bool {
        let s = self.stride;
        let Table { arena, index, .. } = self;
        let Ok(o) = index.find_entry(hash(key), |&e| arena[e as usize * s] == key) else {
            return false;
        };
        let e = *o.get() as usize;
        let bits = &mut arena[e * s + 1..e * s + s];
        let word = &mut bits[off];
        if *word & bit == 0 {
            return false;
        }
        *word &= !bit;
        if *word == 0 && bits.iter().all(|&w| w == 0) {
            o.remove();
            self.dead(e);
        }
        true
    }

    /// Deletes block `e` (whose bits the caller has just made all zero): drops it from the
    /// index (T2); the arena position stays dead until a compaction. Does not shrink; call
    /// [`Table::maybe_shrink`] after a batch.
    fn remove_at(&mut self, e: usize) {
        let key = self.arena[e * self.stride];
        let Ok(o) = self.index.find_entry(hash(key), |&x| x as usize == e) else {
            unreachable!("T2: live block {e} without an index entry");
        };
        o.remove();
        self.dead(e);
    }

    /// Counts block `e` dead (just removed from the index).
    #[inline(always)]
    fn dead(&mut self, e: usize) {
        self.live -= 1;
        // Track runs of consecutive dead blocks (evictions go leaf first: down a stored run).
        let (lo, hi) = self.freeing;
        if lo < hi && e + 1 == lo {
            self.freeing.0 = e;
        } else if lo < hi && e == hi {
            self.freeing.1 = e + 1;
        } else {
            self.end_freeing();
            self.freeing = (e, e + 1);
        }
    }

    /// Calls `f` on the bits of every live block (it may clear bits) and deletes the blocks it
    /// leaves all zero.
    pub(super) fn clear_where(&mut self, mut f: impl FnMut(&mut [u64])) {
        for e in 0..self.used {
            let b = self.bits_mut(e);
            if b.iter().all(|&w| w == 0) {
                continue;
            }
            f(b);
            if b.iter().all(|&w| w == 0) {
                self.remove_at(e);
            }
        }
    }

    /// Compacts the arena when dead blocks pile up, and shrinks the index when sparse (T4).
    pub(super) fn maybe_shrink(&mut self) {
        self.end_freeing();
        if self.used - self.live > self.live / 2 + DEAD_SLACK {
            let s = self.stride;
            self.rebuild_arena(s, |old, new| new.copy_from_slice(old));
        }
        if self.index_sparse() {
            // To between 8/7 and 16/7 buckets per live block: the next shrink waits until
            // half of them are gone, the next growth until their number has nearly doubled.
            self.rebuilds.1 += 1;
            let (arena, s) = (&self.arena, self.stride);
            self.index
                .shrink_to(self.live.max(MIN_CAP), |&e| hash(arena[e as usize * s]));
        }
    }

    /// Whether the index has more than 4 buckets per live block (T4), beyond its initial size.
    fn index_sparse(&self) -> bool {
        let b = self.index.num_buckets();
        b > MIN_BUCKETS && self.live * 4 < b
    }

    /// Re-lays out the arena with `new_stride`, dropping dead blocks (keeping the order),
    /// mapping each live block's bits with `remap(old_bits, new_zeroed_bits)`. Every live block
    /// must stay nonzero.
    pub(super) fn relayout(&mut self, new_stride: usize, remap: impl Fn(&[u64], &mut [u64])) {
        self.rebuild_arena(new_stride, remap);
    }

    #[inline(never)]
    fn rebuild_arena(&mut self, stride: usize, remap: impl Fn(&[u64], &mut [u64])) {
        self.rebuilds.0 += 1;
        let old = self.stride;
        let mut arena = Vec::with_capacity(self.live * stride + (self.live / 16).max(64) * stride);
        // Old position → new position (positions only move down: keys do not change, so the
        // index keeps its buckets and only their values are rewritten).
        let mut moved = vec![u32::MAX; self.used];
        let mut n = 0usize;
        for (e, m) in moved.iter_mut().enumerate() {
            let b = &self.arena[e * old + 1..e * old + old];
            if b.iter().all(|&w| w == 0) {
                continue;
            }
            arena.push(self.arena[e * old]);
            let at = arena.len();
            arena.resize(at + stride - 1, 0);
            remap(b, &mut arena[at..at + stride - 1]);
            *m = n as u32;
            n += 1;
        }
        debug_assert_eq!(n, self.live);
        for v in self.index.iter_mut() {
            *v = moved[*v as usize];
        }
        self.arena = arena;
        self.stride = stride;
        self.used = n;
        // Positions moved: no dead block is left to reuse.
        self.free_runs.clear();
        self.freeing = (0, 0);
        self.fill = (0, 0);
    }

    /// Calls `f(key, bits)` for every live block, in arena order.
    pub(super) fn for_each(&self, mut f: impl FnMut(u64, &[u64])) {
        for e in 0..self.used {
            let b = self.bits(e);
            if b.iter().any(|&w| w != 0) {
                f(self.arena[e * self.stride], b);
            }
        }
    }

    /// Verifies T1–T5 (O(capacity); for tests).
    pub(super) fn check(&self) -> Result<(), String> {
        let s = self.stride;
        if self.arena.len() != self.used * s {
            return Err("T1: arena length".into());
        }
        let live = (0..self.used)
            .filter(|&e| self.bits(e).iter().any(|&w| w != 0))
            .count();
        if live != self.live {
            return Err(format!("T1: live {} but {live} live blocks", self.live));
        }
        let mut referenced = vec![false; self.used];
        for &v in self.index.iter() {
            let e = v as usize;
            if e >= self.used || referenced[e] {
                return Err(format!("T2: an index entry refers to {e} (bad or twice)"));
            }
            referenced[e] = true;
            let key = self.arena[e * s];
            if self.bits(e).iter().all(|&w| w == 0) {
                return Err(format!("T2: index entry of dead block {e}"));
            }
            if self.find(key) != Some(e) {
                return Err(format!("T2: key {key:#x} not found at {e}, or twice"));
            }
        }
        if self.index.len() != self.live {
            return Err(format!(
                "T2: {} index entries for {} live blocks",
                self.index.len(),
                self.live
            ));
        }
        if self.index_sparse() {
            return Err(format!(
                "T4: sparse: {} live in {} buckets",
                self.live,
                self.index.num_buckets()
            ));
        }
        if self.used - self.live > self.live / 2 + DEAD_SLACK {
            return Err(format!("T4: {} dead blocks", self.used - self.live));
        }
        let mut reusable = vec![false; self.used];
        for &(lo, hi) in self.free_runs.iter().chain([&self.freeing, &self.fill]) {
            if hi > self.used {
                return Err(format!("T5: reusable run [{lo}, {hi}) out of range"));
            }
            for (e, r) in reusable.iter_mut().enumerate().take(hi).skip(lo) {
                if *r || self.bits(e).iter().any(|&w| w != 0) {
                    return Err(format!("T5: reusable block {e} is live or twice"));
                }
                *r = true;
            }
        }
        Ok(())
    }
}

/// Lookups in a [`Table`] with the stride passed in, so that a caller that knows it at compile
/// time (the `W == 1` walks) gets it folded into the address arithmetic.
#[derive(Clone, Copy)]
pub(super) struct Probe<'a> {
    arena: &'a [u64],
    index: &'a HashTable<u32>,
    used: usize,
}

impl<'a> Probe<'a> {
    /// The arena position of `key`, if it is live. `s` is the table's stride.
    #[inline(always)]
    pub(super) fn find(&self, key: u64, s: usize) -> Option<usize> {
        let arena = self.arena;
        self.index
            .find(hash(key), |&e| arena[e as usize * s] == key)
            .map(|&e| e as usize)
    }

    /// Whether the arena block right after `e` carries `key`: the walk's sequential fast path.
    /// The block may be dead (a removed key keeps its place until a compaction), so the caller
    /// checks its bits. `s` is the stride.
    #[inline(always)]
    pub(super) fn next_is(&self, e: usize, key: u64, s: usize) -> bool {
        e + 1 < self.used && self.arena[(e + 1) * s] == key
    }

    /// The bit words of block `e`. `s` is the table's stride.
    #[inline(always)]
    pub(super) fn bits(&self, e: usize, s: usize) -> &'a [u64] {
        &self.arena[e * s + 1..e * s + s]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(t: &mut Table, k: u64) {
        let e = t.find_or_insert(k);
        *t.word_mut(e, 0) |= 1;
    }

    fn del(t: &mut Table, k: u64) {
        let e = t.find(k).unwrap();
        *t.word_mut(e, 0) = 0;
        t.remove_at(e);
    }

    #[test]
    fn insert_find_remove_grow_shrink_compact() {
        let mut t = Table::new(2);
        for k in 0..10_000u64 {
            set(&mut t, k);
        }
        t.check().unwrap();
        assert_eq!(t.len(), 10_000);
        assert!(t.index.capacity() >= 10_000);
        for k in 0..10_000u64 {
            assert_eq!(t.find(k), Some(k as usize), "{k}: arena in insertion order");
        }
        assert!(t.find(10_000).is_none());
        let buckets = t.index.num_buckets();
        for k in (0..10_000u64).filter(|k| k % 7 != 0) {
            del(&mut t, k);
        }
        assert_eq!(t.index.num_buckets(), buckets, "removals do not shrink");
        assert!(t.check().is_err());
        t.maybe_shrink();
        t.check().unwrap();
        assert_eq!(t.used, t.live, "compacted");
        let mut prev = None;
        for k in (0..10_000u64).filter(|k| k % 7 == 0) {
            let e = t.find(k).unwrap();
            assert!(prev.is_none_or(|p| p + 1 == e), "order kept");
            prev = Some(e);
        }
        for k in 0..10_000u64 {
            assert_eq!(t.find(k).is_some(), k % 7 == 0, "{k}");
        }
    }

    #[test]
    fn min_buckets_is_a_new_index_size() {
        assert_eq!(Table::new(2).index.num_buckets(), MIN_BUCKETS);
    }

    #[test]
    fn shrinking_has_hysteresis() {
        let mut t = Table::new(2);
        let mut k = 1;
        let min = t.index.num_buckets();
        while t.index.num_buckets() == min {
            set(&mut t, k);
            k += 1;
        }
        let grown = t.index.num_buckets();
        for j in 1..4 {
            del(&mut t, j);
            t.maybe_shrink();
        }
        assert_eq!(t.index.num_buckets(), grown);
        for j in 4..k {
            del(&mut t, j);
            t.maybe_shrink();
        }
        assert_eq!(t.index.num_buckets(), min);
        t.check().unwrap();
    }

    #[test]
    fn keys_with_one_hash_group_and_tag() {
        // Keys whose hashes share the low bits (one probe group) and the 7-bit tag: every probe
        // for one of them matches the others' tags and must tell them apart by the arena key.
        let same: Vec<u64> = (1..u64::MAX)
            .filter(|&k| hash(k) & 0xFFF == 0x5A5 && hash(k) >> 57 == 0x33)
            .take(40)
            .collect();
        let mut t = Table::new(2);
        for &k in &same {
            set(&mut t, k);
        }
        t.check().unwrap();
        for (i, &k) in same.iter().enumerate() {
            assert_eq!(t.find(k), Some(i));
        }
        for &k in same.iter().step_by(3) {
            del(&mut t, k);
        }
        t.check().unwrap();
        for (i, &k) in same.iter().enumerate() {
            assert_eq!(t.find(k).is_some(), i % 3 != 0, "{k}");
        }
        let mut n = 0;
        t.clear_where(|b| {
            n += 1;
            if n % 2 == 0 {
                b[0] = 0;
            }
        });
        t.maybe_shrink();
        t.check().unwrap();
        assert_eq!(t.len(), (same.len() - same.len().div_ceil(3)).div_ceil(2));
    }

    #[test]
    fn churn_keeps_the_index_and_arena_bounded() {
        // A sliding window of 1,000 live keys over 200,000 inserted: deletions leave the index
        // tombstones and the arena dead blocks; neither may grow with the keys seen.
        let mut t = Table::new(2);
        for k in 0..200_000u64 {
            t.begin_batch();
            set(&mut t, k.wrapping_mul(0x2545_F491_4F6C_DD1D));
            if k >= 1_000 {
                del(&mut t, (k - 1_000).wrapping_mul(0x2545_F491_4F6C_DD1D));
                t.maybe_shrink();
            }
        }
        t.check().unwrap();
        assert_eq!(t.len(), 1_000);
        assert!(t.index.num_buckets() <= 4_096, "{}", t.index.num_buckets());
        assert!(t.used <= 1_000 + 1_000 / 2 + DEAD_SLACK);
    }

    #[test]
    fn key_zero_and_reinsert_after_death() {
        let mut t = Table::new(3);
        assert!(t.find(0).is_none());
        set(&mut t, 0);
        set(&mut t, 5);
        del(&mut t, 0);
        assert!(t.find(0).is_none());
        // The dead block keeps key 0 in the arena; a new one is appended and found.
        set(&mut t, 0);
        assert_eq!(t.find(0), Some(2));
        assert!(!t.probe().next_is(2, 7, 3));
        t.check().unwrap();
    }
}
