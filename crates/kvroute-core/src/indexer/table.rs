//! The block table: an open-addressing, linear-probing hash table from block key to the block's
//! holder bitsets, stored *inline* in the entry so that a lookup costs one cache miss, not two.
//!
//! Layout: `words` is one flat `Vec<u64>` of `cap + 1` entries of `stride` words each:
//!
//! ```text
//! entry i: [ key | tier 0: W words | tier 1: W words | ... | tier T-1: W words ]   stride = 1 + T*W
//! ```
//!
//! `EMPTY_KEY` (0) marks a free entry, so the one block whose key really is 0 cannot live in the
//! probed part; it lives in the extra *side entry* at index `cap` (never reached by probing), whose
//! key word stays 0 and which is live iff `side_live`.
//!
//! Invariants (between public calls; checked by [`Table::check`]):
//! - T1: an entry `i < cap` is either empty (all `stride` words zero) or live (key != 0 and at least
//!   one bit word nonzero). The side entry's key word is 0; `side_live` iff one of its bit words is
//!   nonzero, and all its words are zero otherwise. ("A key is in the table iff it has a holder.")
//! - T2: a live key sits at the first position, probing linearly from `home(key)`, that is not
//!   occupied by another key; in particular no empty entry lies between `home(key)` and it.
//!   Deletion keeps this with backward-shift (no tombstones).
//! - T3: `len` (live entries in the probed part) ≤ 3/4 `cap`, so probing always finds an empty
//!   entry and terminates. After removals [`Table::maybe_shrink`] keeps `len ≥ cap/4` unless
//!   `cap == MIN_CAP`, so memory stays proportional to live blocks.
//! - T4: `cap` is a power of two ≥ `MIN_CAP` and `shift == 64 - log2(cap)`.

/// The key word of a free entry.
use std::hint::select_unpredictable;

pub(super) const EMPTY_KEY: u64 = 0;
/// Smallest capacity (entries in the probed part); a power of two.
pub(super) const MIN_CAP: usize = 16;
/// Not an entry index.
const NONE: usize = usize::MAX;
/// Odd 64-bit constant for multiplicative (Fibonacci) hashing: 2^64 / golden ratio.
const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

pub(super) struct Table {
    words: Vec<u64>,
    stride: usize,
    cap: usize,
    shift: u32,
    len: usize,
    side_live: bool,
}

impl Table {
    pub(super) fn new(stride: usize) -> Self {
        Self::alloc(MIN_CAP, stride)
    }

    fn alloc(cap: usize, stride: usize) -> Self {
        debug_assert!(cap.is_power_of_two() && cap >= MIN_CAP && stride >= 2);
        Table {
            // Zeroed allocation: every entry starts empty (T1).
            words: vec![0; (cap + 1) * stride],
            stride,
            cap,
            shift: 64 - cap.trailing_zeros(),
            len: 0,
            side_live: false,
        }
    }

    /// Live blocks (probed part plus the side entry).
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.len + self.side_live as usize
    }

    #[inline]
    pub(super) fn stride(&self) -> usize {
        self.stride
    }

    /// Heap bytes held (capacity-based).
    pub(super) fn heap_bytes(&self) -> usize {
        self.words.capacity() * std::mem::size_of::<u64>()
    }

    /// The entry's home position; see [`Probe::home`].
    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        self.probe().home(key)
    }

    /// A copyable read-only view for lookups in a hot loop.
    #[inline(always)]
    pub(super) fn probe(&self) -> Probe<'_> {
        Probe {
            words: &self.words,
            mask: self.cap - 1,
            shift: self.shift,
            side_live: self.side_live,
        }
    }

    #[inline(always)]
    pub(super) fn prefetch(&self, key: u64) {
        self.probe().prefetch(key, self.stride)
    }

    /// The entry index of `key`, if it is live.
    #[inline(always)]
    pub(super) fn find(&self, key: u64) -> Option<usize> {
        self.probe().find(key, self.stride)
    }

    /// The entry index of `key`, inserting an entry with all-zero bits if absent (growing the table
    /// first if needed). The caller must set a bit before its call returns (T1).
    #[inline(always)]
    pub(super) fn find_or_insert(&mut self, key: u64) -> usize {
        if key == EMPTY_KEY {
            self.side_live = true;
            return self.cap;
        }
        loop {
            let mask = self.cap - 1;
            let mut i = self.home(key);
            loop {
                let k = self.words[i * self.stride];
                if k == key {
                    return i;
                }
                if k == EMPTY_KEY {
                    break;
                }
                i = (i + 1) & mask;
            }
            if (self.len + 1) * 4 <= self.cap * 3 {
                self.words[i * self.stride] = key;
                self.len += 1;
                return i;
            }
            self.resize(self.cap * 2);
        }
    }

    /// The bit words of entry `e` (T*W words, tier-major).
    #[inline(always)]
    pub(super) fn bits(&self, e: usize) -> &[u64] {
        let s = self.stride;
        &self.words[e * s + 1..e * s + s]
    }

    #[inline(always)]
    pub(super) fn bits_mut(&mut self, e: usize) -> &mut [u64] {
        let s = self.stride;
        &mut self.words[e * s + 1..e * s + s]
    }

    /// One bit word of entry `e` (`off` counts from the first bit word).
    #[inline(always)]
    pub(super) fn word_mut(&mut self, e: usize, off: usize) -> &mut u64 {
        &mut self.words[e * self.stride + 1 + off]
    }

    /// Deletes entry `e` (whose bits the caller has just made all zero) with backward-shift
    /// deletion, keeping T1 and T2. Does not shrink; call [`Table::maybe_shrink`] after a batch.
    pub(super) fn remove_at(&mut self, e: usize) {
        let s = self.stride;
        if e == self.cap {
            self.side_live = false;
            self.words[e * s..e * s + s].fill(0);
            return;
        }
        let mask = self.cap - 1;
        let mut hole = e;
        let mut j = (e + 1) & mask;
        loop {
            let k = self.words[j * s];
            if k == EMPTY_KEY {
                break;
            }
            // The entry at j may move back into the hole iff the hole lies cyclically within
            // [home(k), j), i.e. moving does not put it before its home.
            let h = self.home(k);
            if (j.wrapping_sub(h) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.words.copy_within(j * s..j * s + s, hole * s);
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.words[hole * s..hole * s + s].fill(0);
        self.len -= 1;
    }

    /// Calls `f` on the bits of every live entry (it may clear bits) and deletes the entries it
    /// leaves all zero. An entry may be visited twice when a deletion wraps around the end of the
    /// table, so `f` must be idempotent (clearing bits is).
    pub(super) fn clear_where(&mut self, mut f: impl FnMut(&mut [u64])) {
        let mut i = 0;
        while i < self.cap {
            if self.words[i * self.stride] != EMPTY_KEY {
                let b = self.bits_mut(i);
                f(b);
                if b.iter().all(|&w| w == 0) {
                    // Backward shift may move a not-yet-visited entry into i: look at i again.
                    self.remove_at(i);
                    continue;
                }
            }
            i += 1;
        }
        if self.side_live {
            let cap = self.cap;
            let b = self.bits_mut(cap);
            f(b);
            if b.iter().all(|&w| w == 0) {
                self.side_live = false;
            }
        }
    }

    /// Halves (or more) the capacity when the table has become sparse (T3).
    pub(super) fn maybe_shrink(&mut self) {
        if self.cap > MIN_CAP && self.len * 4 < self.cap {
            self.resize(Self::fit(self.len));
        }
    }

    /// The capacity that holds `n` entries at load ≤ 1/2.
    fn fit(n: usize) -> usize {
        (n * 2).next_power_of_two().max(MIN_CAP)
    }

    fn resize(&mut self, cap: usize) {
        let stride = self.stride;
        self.rebuild(cap, stride, |old, new| new.copy_from_slice(old));
    }

    /// Re-lays out the table with `new_stride` (sized for the live entries), mapping each live
    /// entry's bits with `remap(old_bits, new_zeroed_bits)`. Every live entry must stay nonzero.
    pub(super) fn relayout(&mut self, new_stride: usize, remap: impl Fn(&[u64], &mut [u64])) {
        self.rebuild(Self::fit(self.len), new_stride, remap);
    }

    fn rebuild(&mut self, cap: usize, stride: usize, remap: impl Fn(&[u64], &mut [u64])) {
        let mut t = Table::alloc(cap, stride);
        let mask = cap - 1;
        for i in 0..self.cap {
            let k = self.words[i * self.stride];
            if k == EMPTY_KEY {
                continue;
            }
            let mut p = t.home(k);
            while t.words[p * stride] != EMPTY_KEY {
                p = (p + 1) & mask;
            }
            t.words[p * stride] = k;
            remap(
                self.bits(i),
                &mut t.words[p * stride + 1..p * stride + stride],
            );
        }
        if self.side_live {
            remap(
                self.bits(self.cap),
                &mut t.words[cap * stride + 1..cap * stride + stride],
            );
        }
        t.len = self.len;
        t.side_live = self.side_live;
        debug_assert!(t.len * 4 <= t.cap * 3);
        *self = t;
    }

    /// Calls `f(key, bits)` for every live entry.
    pub(super) fn for_each(&self, mut f: impl FnMut(u64, &[u64])) {
        for i in 0..self.cap {
            let k = self.words[i * self.stride];
            if k != EMPTY_KEY {
                f(k, self.bits(i));
            }
        }
        if self.side_live {
            f(EMPTY_KEY, self.bits(self.cap));
        }
    }

    /// Verifies T1–T4 (O(capacity); for tests).
    pub(super) fn check(&self) -> Result<(), String> {
        let s = self.stride;
        if !self.cap.is_power_of_two() || self.cap < MIN_CAP {
            return Err(format!(
                "T4: cap {} not a power of two ≥ {MIN_CAP}",
                self.cap
            ));
        }
        if self.shift != 64 - self.cap.trailing_zeros() {
            return Err("T4: shift".into());
        }
        if self.words.len() != (self.cap + 1) * s {
            return Err("words length".into());
        }
        let mask = self.cap - 1;
        let mut live = 0;
        for i in 0..self.cap {
            let k = self.words[i * s];
            let nonzero = self.bits(i).iter().any(|&w| w != 0);
            if k == EMPTY_KEY {
                if nonzero {
                    return Err(format!("T1: empty entry {i} has bits"));
                }
                continue;
            }
            if !nonzero {
                return Err(format!("T1: live key {k:#x} has no holder"));
            }
            live += 1;
            let mut p = self.home(k);
            while p != i {
                if self.words[p * s] == EMPTY_KEY {
                    return Err(format!("T2: empty entry between home and key {k:#x}"));
                }
                if self.words[p * s] == k {
                    return Err(format!("T2: key {k:#x} twice"));
                }
                p = (p + 1) & mask;
            }
        }
        if live != self.len {
            return Err(format!("len {} but {live} live entries", self.len));
        }
        if self.len * 4 > self.cap * 3 {
            return Err("T3: overloaded".into());
        }
        if self.cap > MIN_CAP && self.len * 4 < self.cap {
            return Err(format!("T3: sparse: {} live in {}", self.len, self.cap));
        }
        let side = &self.words[self.cap * s..];
        if side[0] != 0 || self.side_live != side[1..].iter().any(|&w| w != 0) {
            return Err("T1: side entry".into());
        }
        Ok(())
    }
}

/// Lookups in a [`Table`] with the stride passed in, so that a caller that knows it at compile
/// time (the `W == 1` walks) gets it folded into the address arithmetic.
#[derive(Clone, Copy)]
pub(super) struct Probe<'a> {
    words: &'a [u64],
    mask: usize,
    shift: u32,
    side_live: bool,
}

impl<'a> Probe<'a> {
    /// The entry's home position. Keys are already hashes in production but small integers in
    /// tests, so fold the high half down and multiply (Fibonacci hashing); the top bits of the
    /// product depend on all key bits.
    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        ((key ^ (key >> 32)).wrapping_mul(MUL) >> self.shift) as usize
    }

    /// Hints the CPU to start loading `key`'s home entry and the one after it (what
    /// [`Probe::find`] reads first); never faults, never blocks. `s` is the table's stride.
    #[inline(always)]
    pub(super) fn prefetch(&self, key: u64, s: usize) {
        let i = self.home(key) * s;
        // In bounds: the side entry follows the last probed entry.
        let span = &self.words[i..i + 2 * s];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has (it is in the x86_64
            // baseline target features); a prefetch reads nothing and cannot fault, and both
            // pointers point into `words` anyway.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(span.as_ptr() as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(&span[span.len() - 1] as *const u64 as *const i8);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            std::hint::black_box(span[0]);
        }
    }

    /// The entry index of `key`, if it is live. `s` is the table's stride.
    #[inline(always)]
    pub(super) fn find(&self, key: u64, s: usize) -> Option<usize> {
        let mask = self.mask;
        if key == EMPTY_KEY {
            return if self.side_live { Some(mask + 1) } else { None };
        }
        // The first two probes without a data-dependent branch between them: about a third of
        // the keys sit one past their home at our loads, and a mispredicted probe loop costs more
        // than the (usually same cache line, prefetched) extra load.
        let i0 = self.home(key);
        let i1 = (i0 + 1) & mask;
        let (k0, k1) = (self.words[i0 * s], self.words[i1 * s]);
        let hit = select_unpredictable(k0 == key, i0, select_unpredictable(k1 == key, i1, NONE));
        if hit != NONE {
            return Some(hit);
        }
        if (k0 == EMPTY_KEY) | (k1 == EMPTY_KEY) {
            return None;
        }
        let mut i = (i1 + 1) & mask;
        loop {
            let k = self.words[i * s];
            if k == key {
                return Some(i);
            }
            if k == EMPTY_KEY {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// The bit words of entry `e`. `s` is the table's stride.
    #[inline(always)]
    pub(super) fn bits(&self, e: usize, s: usize) -> &'a [u64] {
        &self.words[e * s + 1..e * s + s]
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
    fn insert_find_remove_grow_shrink() {
        let mut t = Table::new(2);
        for k in 0..10_000u64 {
            set(&mut t, k);
        }
        t.check().unwrap();
        assert_eq!(t.len(), 10_000);
        assert!(t.cap >= 10_000 * 4 / 3);
        for k in 0..10_000u64 {
            assert!(t.find(k).is_some(), "{k}");
        }
        assert!(t.find(10_000).is_none());
        let cap = t.cap;
        for k in (0..10_000u64).filter(|k| k % 7 != 0) {
            del(&mut t, k);
        }
        assert_eq!(t.cap, cap, "remove_at does not shrink");
        assert!(t.check().unwrap_err().contains("sparse"));
        t.maybe_shrink();
        t.check().unwrap();
        assert!(t.len * 4 >= t.cap, "shrunk: len {} cap {}", t.len, t.cap);
        for k in 0..10_000u64 {
            assert_eq!(t.find(k).is_some(), k % 7 == 0, "{k}");
        }
    }

    #[test]
    fn shrinking_has_hysteresis() {
        // Right after a growth (load 3/8) removals do not shrink until load < 1/4, and right after
        // a shrink (load < 1/2) insertions do not grow until load > 3/4: no O(n) rebuild ping-pong.
        let mut t = Table::new(2);
        let mut k = 1;
        while t.cap == MIN_CAP {
            set(&mut t, k);
            k += 1;
        }
        let cap = t.cap;
        for j in 1..4 {
            del(&mut t, j);
            t.maybe_shrink();
        }
        assert_eq!(t.cap, cap);
        for j in 4..k {
            del(&mut t, j);
            t.maybe_shrink();
        }
        assert_eq!(t.cap, MIN_CAP);
        t.check().unwrap();
    }

    #[test]
    fn backward_shift_across_the_wrap() {
        // Keys whose homes are the last position of a 16-entry table, so the probe run wraps.
        let mut t = Table::new(2);
        let last: Vec<u64> = (1..u64::MAX)
            .filter(|&k| t.home(k) == MIN_CAP - 1)
            .take(5)
            .collect();
        let first: Vec<u64> = (1..u64::MAX).filter(|&k| t.home(k) == 0).take(2).collect();
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
        // clear_where over a wrapped run, deleting every other key.
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
    fn key_zero_lives_in_the_side_entry() {
        let mut t = Table::new(3);
        assert!(t.find(0).is_none());
        set(&mut t, 0);
        set(&mut t, 5);
        assert_eq!(t.find(0), Some(t.cap));
        assert_eq!(t.len(), 2);
        t.check().unwrap();
        for k in 6..100 {
            set(&mut t, k);
        }
        assert_eq!(t.find(0), Some(t.cap));
        assert_eq!(t.bits(t.cap)[0], 1);
        del(&mut t, 0);
        assert!(t.find(0).is_none());
        t.check().unwrap();
    }
}
