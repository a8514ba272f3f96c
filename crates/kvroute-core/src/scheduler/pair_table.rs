//! `PairTable`: `(block key, target) → u32`, the hash table under the speculative overlay (value:
//! a record's sequence number) and the active-block refcounts (value: a count).
//!
//! Open addressing with linear probing over 16-byte slots `(key, target, value)`, at most half
//! full, backward-shift deletion (no tombstones). A decision touches a few hundred keys scattered
//! over a table of megabytes, so, as the indexer's walk does, callers prefetch the home slot of
//! the key [`PREFETCH`] ahead ([`PairTable::prefetch`]) and keep many cache misses in flight
//! instead of taking them one by one. Block keys are uniform 64-bit hashes already; the target is
//! mixed in multiplicatively.
//!
//! Invariants (checked by [`PairTable::check`]): `len` counts the non-free slots; `len ≤ cap / 2`;
//! `cap` is a power of two ≥ [`MIN_CAP`]; every pair sits where probing from its home first
//! reaches it (no free slot in between).

/// How many keys ahead inserts and removals prefetch.
pub(crate) const PREFETCH: usize = 16;
const MUL: u64 = 0x9E37_79B9_7F4A_7C15;
/// `target` of a free slot (target ids never reach it).
const FREE: u32 = u32::MAX;
pub(crate) const MIN_CAP: usize = 1024;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub(crate) key: u64,
    pub(crate) target: u32,
    pub(crate) value: u32,
}

const EMPTY: Slot = Slot {
    key: 0,
    target: FREE,
    value: 0,
};

/// See the [module documentation](self).
pub(crate) struct PairTable {
    slots: Vec<Slot>,
    shift: u32,
    len: usize,
}

impl Default for PairTable {
    fn default() -> Self {
        PairTable::with_cap(MIN_CAP)
    }
}

impl PairTable {
    pub(crate) fn with_cap(cap: usize) -> Self {
        debug_assert!(cap.is_power_of_two());
        PairTable {
            slots: vec![EMPTY; cap],
            shift: 64 - cap.trailing_zeros(),
            len: 0,
        }
    }

    #[inline(always)]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[inline(always)]
    fn home(&self, key: u64, target: u32) -> usize {
        let h = (key ^ (target as u64 + 1).wrapping_mul(MUL)).wrapping_mul(MUL);
        (h >> self.shift) as usize
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn cap(&self) -> usize {
        self.slots.len()
    }

    #[inline(always)]
    pub(crate) fn prefetch(&self, key: u64, target: u32) {
        let slot = &self.slots[self.home(key, target)];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: `_mm_prefetch` needs SSE, in the x86_64 baseline; a prefetch reads nothing
            // and cannot fault, and the pointer points into `slots` anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(slot as *const Slot as *const i8) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            std::hint::black_box(slot.key);
        }
    }

    /// The value of `(key, target)`, if present.
    #[inline(always)]
    pub(crate) fn get(&self, key: u64, target: u32) -> Option<u32> {
        self.find(key, target).map(|i| self.slots[i].value)
    }

    /// The value of `(key, target)`, if present, to change in place.
    #[inline(always)]
    pub(crate) fn get_mut(&mut self, key: u64, target: u32) -> Option<&mut u32> {
        self.find(key, target).map(|i| &mut self.slots[i].value)
    }

    /// The slot holding `(key, target)`, if any.
    #[inline(always)]
    fn find(&self, key: u64, target: u32) -> Option<usize> {
        let mask = self.mask();
        let mut i = self.home(key, target);
        loop {
            let s = &self.slots[i];
            if s.target == FREE {
                return None;
            }
            if s.key == key && s.target == target {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Makes room for `extra` more pairs without growing in between.
    pub(crate) fn reserve(&mut self, extra: usize) {
        let mut cap = self.slots.len();
        while (self.len + extra) * 2 > cap {
            cap *= 2;
        }
        if cap != self.slots.len() {
            self.rehash(cap);
        }
    }

    /// The value of `(key, target)`, inserted as `init` if absent (the caller has reserved
    /// room); returns it and whether it was inserted.
    #[inline(always)]
    pub(crate) fn entry(&mut self, key: u64, target: u32, init: u32) -> (&mut u32, bool) {
        debug_assert!((self.len + 1) * 2 <= self.slots.len());
        let mask = self.mask();
        let mut i = self.home(key, target);
        loop {
            let s = self.slots[i];
            if s.target == FREE {
                self.slots[i] = Slot {
                    key,
                    target,
                    value: init,
                };
                self.len += 1;
                return (&mut self.slots[i].value, true);
            }
            if s.key == key && s.target == target {
                return (&mut self.slots[i].value, false);
            }
            i = (i + 1) & mask;
        }
    }

    /// Inserts or overwrites; the caller has reserved room.
    #[inline(always)]
    pub(crate) fn insert(&mut self, key: u64, target: u32, value: u32) {
        *self.entry(key, target, value).0 = value;
    }

    /// Removes `(key, target)` if `pred` holds for its value (backward-shift deletion); returns
    /// whether it did.
    #[inline(always)]
    pub(crate) fn remove_if(
        &mut self,
        key: u64,
        target: u32,
        pred: impl FnOnce(u32) -> bool,
    ) -> bool {
        let Some(i) = self.find(key, target) else {
            return false;
        };
        if !pred(self.slots[i].value) {
            return false;
        }
        self.remove_at(i);
        true
    }

    fn remove_at(&mut self, mut i: usize) {
        let mask = self.mask();
        let mut j = (i + 1) & mask;
        loop {
            let s = self.slots[j];
            if s.target == FREE {
                break;
            }
            let h = self.home(s.key, s.target);
            // Move `s` back into the hole unless its home lies cyclically in (i, j].
            if (j.wrapping_sub(h) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = s;
                i = j;
            }
            j = (j + 1) & mask;
        }
        self.slots[i] = EMPTY;
        self.len -= 1;
    }

    fn rehash(&mut self, cap: usize) {
        let old = std::mem::replace(self, PairTable::with_cap(cap));
        for s in old.slots {
            if s.target != FREE {
                self.insert(s.key, s.target, s.value);
            }
        }
    }

    /// Whether `maybe_shrink` would shrink the table.
    pub(crate) fn shrinkable(&self) -> bool {
        self.slots.len() > MIN_CAP && self.len * 8 <= self.slots.len()
    }

    /// Halves the table while it is at most 1/8 full.
    pub(crate) fn maybe_shrink(&mut self) {
        let mut cap = self.slots.len();
        while cap > MIN_CAP && self.len * 8 <= cap {
            cap /= 2;
        }
        if cap != self.slots.len() {
            self.rehash(cap);
        }
    }

    pub(crate) fn retain(&mut self, keep: impl Fn(&Slot) -> bool) {
        let old = std::mem::replace(self, PairTable::with_cap(self.slots.len()));
        for s in old.slots {
            if s.target != FREE && keep(&s) {
                self.insert(s.key, s.target, s.value);
            }
        }
        self.maybe_shrink();
    }

    /// Every pair, for checks.
    #[cfg(test)]
    pub(crate) fn pairs(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|s| s.target != FREE)
    }

    /// Verifies the invariants of the module docs. For tests.
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), String> {
        let cap = self.slots.len();
        if !cap.is_power_of_two() || cap < MIN_CAP || self.len * 2 > cap {
            return Err(format!("table: len {} cap {cap}", self.len));
        }
        let mut n = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if s.target == FREE {
                continue;
            }
            n += 1;
            if self.find(s.key, s.target) != Some(i) {
                return Err(format!(
                    "table: pair ({:#x}, {}) unreachable",
                    s.key, s.target
                ));
            }
        }
        if n != self.len {
            return Err(format!("table: len {} but {n} pairs", self.len));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_get_mut_remove_and_resize() {
        let mut t = PairTable::default();
        let keys: Vec<u64> = (0..5000u64).map(|i| i.wrapping_mul(MUL)).collect();
        t.reserve(keys.len() * 2);
        for &k in &keys {
            assert!(t.entry(k, 1, 1).1);
            *t.entry(k, 1, 0).0 += 1;
            t.insert(k, 2, 7);
        }
        assert_eq!(t.len(), 10_000);
        t.check().unwrap();
        for &k in &keys {
            *t.get_mut(k, 1).unwrap() -= 1;
            assert!(!t.remove_if(k, 1, |v| v == 2));
            assert!(t.remove_if(k, 1, |v| v == 1));
            assert!(!t.remove_if(k, 1, |_| true), "absent stays absent");
            assert_eq!(t.get_mut(k, 1), None);
        }
        assert!(t.remove_if(keys[0], 2, |v| v == 7));
        assert!(!t.remove_if(keys[1], 2, |v| v == 8));
        t.check().unwrap();
        t.retain(|s| s.key != keys[1]);
        assert_eq!(t.len(), 4998);
        assert_eq!(t.get(keys[2], 2), Some(7));
        t.retain(|_| false);
        assert_eq!(t.cap(), MIN_CAP);
        t.check().unwrap();
    }
}
