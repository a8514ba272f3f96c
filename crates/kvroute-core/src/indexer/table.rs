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
//! index slot:    [ top 32 bits of mix(key) | e + 1 ]   (0 = empty)
//! ```
//!
//! The index slot's top half holds the hash bits that decide the slot's home (the fingerprint
//! times the capacity, shifted down 32 bits: any capacity up to 2^32 works, so the index grows
//! by steps that keep its load between 1/2 and 3/4 rather than halving it at powers of two), so
//! the index can be probed, backward-shifted and rebuilt without touching the arena; a probe
//! reads the arena only to confirm a fingerprint match.
//!
//! Invariants (between public calls; checked by [`Table::check`]):
//! - T1: `arena.len() == used * stride`; block `e < used` is *live* iff one of its bit words is
//!   nonzero ("a key is in the table iff it has a holder"); `live` counts them.
//! - T2: every live block is referenced by exactly one index slot, whose fingerprint is its
//!   key's; dead blocks are referenced by none; no two live blocks share a key.
//! - T3: an index slot sits at or after its home with no empty slot between (linear probing),
//!   and the index is Robin Hood ordered: along a run of occupied slots, no slot lies farther
//!   from its home than the next one lies from its home plus one (equivalently, each cluster is
//!   sorted by home), so a search stops at the first slot closer to its home than the key would
//!   be, and deletion shifts back only up to a slot at its home. This keeps probes short at the
//!   high loads the index runs at (up to 3/4).
//! - T5: the runs kept for reuse (`free_runs`, `freeing`, `fill`) are disjoint and hold only
//!   dead blocks.
//! - T4: `cap` (index slots) is ≥ `MIN_CAP` and `live ≤ 3/4 cap`. After
//!   [`Table::maybe_shrink`]: `live ≥ cap / 4` unless `cap == MIN_CAP`,
//!   and dead blocks are at most half the live ones (plus a small slack), so memory stays
//!   proportional to live blocks.

use std::hint::select_unpredictable;

/// Smallest index capacity.
pub(super) const MIN_CAP: usize = 16;
/// An empty index slot.
const EMPTY: u64 = 0;
/// Odd 64-bit constant for multiplicative (Fibonacci) hashing: 2^64 / golden ratio.
const MUL: u64 = 0x9E37_79B9_7F4A_7C15;
/// Shortest run of dead blocks kept for reuse (shorter ones wait for a compaction).
const MIN_FREE_RUN: usize = 4;
/// Dead blocks tolerated before a compaction, beyond half the live ones. A compaction copies the
/// live blocks and rewrites the index once, so removals pay for ~2 of each, amortized.
const DEAD_SLACK: usize = 256;

/// The 64-bit hash of a key. Keys are already hashes in production but small integers in tests,
/// so fold the high half down and multiply; the top bits of the product depend on all key bits.
#[inline(always)]
fn mix(key: u64) -> u64 {
    (key ^ (key >> 32)).wrapping_mul(MUL)
}

/// The home position of a 32-bit fingerprint in an index of `cap` slots (Lemire's fast range:
/// monotonic in the fingerprint, any capacity).
#[inline(always)]
fn home_in(fp32: u64, cap: usize) -> usize {
    ((fp32 * cap as u64) >> 32) as usize
}

/// The position after `i` in an index of `cap` slots, wrapping.
#[inline(always)]
fn next(i: usize, cap: usize) -> usize {
    if i + 1 == cap {
        0
    } else {
        i + 1
    }
}

/// How far `from` lies behind `j`, cyclically, in an index of `cap` slots.
#[inline(always)]
fn back(j: usize, from: usize, cap: usize) -> usize {
    if j >= from {
        j - from
    } else {
        j + cap - from
    }
}

/// The index slot of `key` stored at arena position `e`.
#[inline(always)]
fn slot_of(key: u64, e: usize) -> u64 {
    (mix(key) & !0xFFFF_FFFF) | (e as u64 + 1)
}

pub(super) struct Table {
    arena: Vec<u64>,
    stride: usize,
    used: usize,
    live: usize,
    index: Vec<u64>,
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
            index: vec![EMPTY; MIN_CAP],
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
        (self.arena.capacity() + self.index.capacity()) * std::mem::size_of::<u64>()
    }

    /// `(used arena blocks, live blocks, arena capacity in blocks, index slots)`; for benches.
    pub(super) fn shape(&self) -> (usize, usize, usize, usize, u64, u64) {
        (
            self.used,
            self.live,
            self.arena.capacity() / self.stride,
            self.index.len(),
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

    #[inline(always)]
    pub(super) fn prefetch(&self, key: u64) {
        self.probe().prefetch(key)
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
        let (fp, mut i) = {
            let p = self.probe();
            (mix(key) & !0xFFFF_FFFF, p.home(key))
        };
        let cap = self.index.len();
        // Robin Hood (T3): the key is absent once a slot sits closer to its home than we would.
        let mut d = 0;
        loop {
            let v = self.index[i];
            if v == EMPTY || back(i, self.home_of_slot(v), cap) < d {
                break;
            }
            if v & !0xFFFF_FFFF == fp {
                let e = (v & 0xFFFF_FFFF) as usize - 1;
                if self.arena[e * s] == key {
                    return e;
                }
            }
            i = next(i, cap);
            d += 1;
        }
        if (self.live + 1) * 4 > cap * 3 {
            self.rebuild_index(Self::fit(self.live + 1));
            return self.find_or_insert(key);
        }
        if self.fill.0 >= self.fill.1 {
            // The batch's run is used up: go on in the next freed one rather than grow the
            // arena (a chain split over two runs costs a lookup one index probe at the seam).
            if let Some(run) = self.free_runs.pop() {
                self.fill = run;
            }
        }
        let e = if self.fill.0 < self.fill.1 {
            // A dead block of a freed run: its bits are zero (T1), only the key changes.
            let e = self.fill.0;
            self.fill.0 += 1;
            self.arena[e * s] = key;
            e
        } else {
            if self.arena.len() + s > self.arena.capacity() {
                // Grow by an eighth, not double: the arena is most of the memory.
                self.arena.reserve_exact((self.arena.len() / 8).max(64 * s));
            }
            self.arena.push(key);
            self.arena.resize(self.arena.len() + s - 1, 0);
            self.used += 1;
            self.used - 1
        };
        self.live += 1;
        self.place(i, d, slot_of(key, e));
        e
    }

    /// Puts slot value `v` at index position `i`, `d` past its home, Robin Hood style: a resident
    /// closer to its own home yields its place and moves on (T3).
    #[inline(always)]
    fn place(&mut self, mut i: usize, mut d: usize, mut v: u64) {
        let cap = self.index.len();
        loop {
            let cur = self.index[i];
            if cur == EMPTY {
                self.index[i] = v;
                return;
            }
            let cd = back(i, self.home_of_slot(cur), cap);
            if cd < d {
                self.index[i] = v;
                v = cur;
                d = cd;
            }
            i = next(i, cap);
            d += 1;
        }
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

    /// Deletes block `e` (whose bits the caller has just made all zero): drops its index slot
    /// with backward shift (T2, T3); the arena position stays dead until a compaction. Does not
    /// shrink; call [`Table::maybe_shrink`] after a batch.
    pub(super) fn remove_at(&mut self, e: usize) {
        let key = self.arena[e * self.stride];
        let want = slot_of(key, e);
        let cap = self.index.len();
        let mut hole = self.probe().home(key);
        while self.index[hole] != want {
            debug_assert!(self.index[hole] != EMPTY, "T2: live block without a slot");
            hole = next(hole, cap);
        }
        self.remove_slot(hole, e);
    }

    /// The index position and arena position of `key`, if it is live: what
    /// [`Table::remove_slot`] takes, so a removal probes the index once.
    #[inline(always)]
    pub(super) fn find_slot(&self, key: u64) -> Option<(usize, usize)> {
        let s = self.stride;
        let fp = mix(key) & !0xFFFF_FFFF;
        let cap = self.index.len();
        let mut i = self.probe().home(key);
        let mut d = 0;
        loop {
            let v = self.index[i];
            if v == EMPTY || back(i, self.home_of_slot(v), cap) < d {
                return None;
            }
            if v & !0xFFFF_FFFF == fp {
                let e = (v & 0xFFFF_FFFF) as usize - 1;
                if self.arena[e * s] == key {
                    return Some((i, e));
                }
            }
            i = next(i, cap);
            d += 1;
        }
    }

    /// [`Table::remove_at`] for block `e` whose index slot is at `hole` (from
    /// [`Table::find_slot`], with no index change since).
    pub(super) fn remove_slot(&mut self, mut hole: usize, e: usize) {
        debug_assert_eq!(self.index[hole] & 0xFFFF_FFFF, e as u64 + 1);
        let cap = self.index.len();
        // Robin Hood backward shift: the slots after the hole move back one until an empty slot
        // or one already at its home (T3 keeps every cluster sorted by home).
        let mut j = next(hole, cap);
        loop {
            let v = self.index[j];
            if v == EMPTY || self.home_of_slot(v) == j {
                break;
            }
            self.index[hole] = v;
            hole = j;
            j = next(j, cap);
        }
        self.index[hole] = EMPTY;
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

    #[inline(always)]
    fn home_of_slot(&self, v: u64) -> usize {
        home_in(v >> 32, self.index.len())
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
        if self.index.len() > MIN_CAP && self.live * 4 < self.index.len() {
            self.rebuild_index(Self::fit(self.live));
        }
    }

    /// The index capacity that holds `n` blocks at load 1/2.
    fn fit(n: usize) -> usize {
        (n * 2).max(MIN_CAP)
    }

    /// Re-hashes the index into `cap` slots (from the slots alone: no arena access).
    #[inline(never)]
    fn rebuild_index(&mut self, cap: usize) {
        self.rebuilds.1 += 1;
        let old = std::mem::replace(&mut self.index, vec![EMPTY; cap]);
        for v in old {
            if v != EMPTY {
                self.place(home_in(v >> 32, cap), 0, v);
            }
        }
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
        // Old position → new position + 1 (0: dead).
        let mut moved = vec![0u32; self.used];
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
            n += 1;
            *m = n as u32;
        }
        debug_assert_eq!(n, self.live);
        for v in self.index.iter_mut() {
            if *v != EMPTY {
                let e = (*v & 0xFFFF_FFFF) as usize - 1;
                *v = (*v & !0xFFFF_FFFF) | moved[e] as u64;
            }
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

    /// Verifies T1–T4 (O(capacity); for tests).
    pub(super) fn check(&self) -> Result<(), String> {
        let s = self.stride;
        let cap = self.index.len();
        if cap < MIN_CAP {
            return Err(format!("T4: cap {cap}"));
        }
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
        let mut slots = 0;
        for (i, &v) in self.index.iter().enumerate() {
            if v == EMPTY {
                continue;
            }
            slots += 1;
            let e = (v & 0xFFFF_FFFF) as usize - 1;
            if e >= self.used || referenced[e] {
                return Err(format!("T2: slot {i} refers to {e} (bad or twice)"));
            }
            referenced[e] = true;
            let key = self.arena[e * s];
            if slot_of(key, e) != v || self.bits(e).iter().all(|&w| w == 0) {
                return Err(format!("T2: slot {i} does not match live block {e}"));
            }
            let mut p = self.home_of_slot(v);
            while p != i {
                if self.index[p] == EMPTY {
                    return Err(format!("T3: empty slot between home and key {key:#x}"));
                }
                p = next(p, cap);
            }
            if self.find(key) != Some(e) {
                return Err(format!("T2: key {key:#x} twice"));
            }
        }
        if slots != self.live {
            return Err(format!("T2: {slots} slots for {} live blocks", self.live));
        }
        for i in 0..cap {
            let (v, w) = (self.index[i], self.index[next(i, cap)]);
            if v != EMPTY && w != EMPTY {
                let (dv, dw) = (
                    back(i, self.home_of_slot(v), cap),
                    back(next(i, cap), self.home_of_slot(w), cap),
                );
                if dw > dv + 1 {
                    return Err(format!(
                        "T3: slot {i} not Robin Hood ordered ({dv}, then {dw})"
                    ));
                }
            }
        }
        if self.live * 4 > cap * 3 {
            return Err("T4: overloaded".into());
        }
        if cap > MIN_CAP && self.live * 4 < cap {
            return Err(format!("T4: sparse: {} live in {cap}", self.live));
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
    index: &'a [u64],
    used: usize,
}

impl<'a> Probe<'a> {
    /// The index home position of `key`.
    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        home_in(mix(key) >> 32, self.index.len())
    }

    /// Hints the CPU to start loading `key`'s home index slot and the one after it (what
    /// [`Probe::find`] reads first); never faults, never blocks.
    #[inline(always)]
    pub(super) fn prefetch(&self, key: u64) {
        let i = self.home(key);
        let a = &self.index[i];
        let b = &self.index[next(i, self.index.len())];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has (it is in the x86_64
            // baseline target features); a prefetch reads nothing and cannot fault, and both
            // pointers point into `index` anyway.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(a as *const u64 as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b as *const u64 as *const i8);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            std::hint::black_box((a, b));
        }
    }

    /// Hints the CPU to load the arena block of `key` when its home index slot (prefetched
    /// earlier, so cached by now) holds a matching fingerprint: the second stage of a two-stage
    /// prefetch. Reads one slot and never loops, so a slot that has not arrived costs one wait
    /// at most. `s` is the stride.
    #[inline(always)]
    pub(super) fn prefetch_block(&self, key: u64, s: usize) {
        let v = self.index[self.home(key)];
        if v != EMPTY && v & !0xFFFF_FFFF == mix(key) & !0xFFFF_FFFF {
            let e = (v & 0xFFFF_FFFF) as usize - 1;
            let w = &self.arena[e * s];
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                // SAFETY: as in `prefetch`; the pointer points into `arena`.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(w as *const u64 as *const i8) };
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                std::hint::black_box(w);
            }
        }
    }

    /// The arena position of `key`, if it is live. `s` is the table's stride.
    #[inline(always)]
    pub(super) fn find(&self, key: u64, s: usize) -> Option<usize> {
        let fp = mix(key) & !0xFFFF_FFFF;
        let cap = self.index.len();
        // The first two slots without a data-dependent branch between them: about a third of
        // the keys sit one past their home at our loads.
        let i0 = self.home(key);
        let i1 = next(i0, cap);
        let (v0, v1) = (self.index[i0], self.index[i1]);
        let c = select_unpredictable(
            v0 & !0xFFFF_FFFF == fp && v0 != EMPTY,
            v0,
            select_unpredictable(v1 & !0xFFFF_FFFF == fp && v1 != EMPTY, v1, EMPTY),
        );
        if c != EMPTY {
            let e = (c & 0xFFFF_FFFF) as usize - 1;
            if self.arena[e * s] == key {
                return Some(e);
            }
        } else if (v0 == EMPTY) | (v1 == EMPTY) {
            return None;
        }
        // Slow path: a fingerprint collision or a longer probe sequence.
        let mut i = i0;
        let mut d = 0;
        loop {
            let v = self.index[i];
            if v == EMPTY || back(i, home_in(v >> 32, cap), cap) < d {
                return None;
            }
            if v & !0xFFFF_FFFF == fp {
                let e = (v & 0xFFFF_FFFF) as usize - 1;
                if self.arena[e * s] == key {
                    return Some(e);
                }
            }
            i = next(i, cap);
            d += 1;
        }
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
        assert!(t.index.len() >= 10_000 * 4 / 3);
        for k in 0..10_000u64 {
            assert_eq!(t.find(k), Some(k as usize), "{k}: arena in insertion order");
        }
        assert!(t.find(10_000).is_none());
        let cap = t.index.len();
        for k in (0..10_000u64).filter(|k| k % 7 != 0) {
            del(&mut t, k);
        }
        assert_eq!(t.index.len(), cap, "remove_at does not shrink");
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
    fn shrinking_has_hysteresis() {
        let mut t = Table::new(2);
        let mut k = 1;
        while t.index.len() == MIN_CAP {
            set(&mut t, k);
            k += 1;
        }
        let cap = t.index.len();
        for j in 1..4 {
            del(&mut t, j);
            t.maybe_shrink();
        }
        assert_eq!(t.index.len(), cap);
        for j in 4..k {
            del(&mut t, j);
            t.maybe_shrink();
        }
        assert_eq!(t.index.len(), MIN_CAP);
        t.check().unwrap();
    }

    #[test]
    fn backward_shift_across_the_wrap() {
        let t0 = Table::new(2);
        let last: Vec<u64> = (1..u64::MAX)
            .filter(|&k| t0.probe().home(k) == MIN_CAP - 1)
            .take(5)
            .collect();
        let first: Vec<u64> = (1..u64::MAX)
            .filter(|&k| t0.probe().home(k) == 0)
            .take(2)
            .collect();
        let mut t = Table::new(2);
        for &k in last.iter().chain(&first) {
            set(&mut t, k);
        }
        t.check().unwrap();
        del(&mut t, last[0]);
        t.check().unwrap();
        del(&mut t, first[0]);
        t.check().unwrap();
        for &k in last[1..].iter().chain(&first[1..]) {
            assert!(t.find(k).is_some());
        }
        let mut n = 0;
        t.clear_where(|b| {
            n += 1;
            if n % 2 == 0 {
                b[0] = 0;
            }
        });
        t.check().unwrap();
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
