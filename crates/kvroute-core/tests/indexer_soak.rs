//! Soak test: millions of random stores and removes; the counts stay exact and the memory
//! footprint follows the live set down again (tables shrink when sparse).

use std::collections::HashMap;

use kvroute_core::indexer::{Indexer, IndexerStats};

mod common;
use common::Rng;

const WORKERS: usize = 12;
const DP: u32 = 2;
const SLOTS: usize = WORKERS * DP as usize;
const MEDIA: [Option<&str>; 2] = [None, Some("CPU")];
/// The memory bound: bytes ≤ PER_PAIR × live pairs + FIXED. The table entry of a block is
/// 8 × (1 + T·W) = 24 bytes here, at load ≥ 1/4, so ≤ 96 bytes per block ≤ 96 per pair.
const PER_PAIR: u64 = 128;
const FIXED: u64 = 64 * 1024;

fn worker(s: usize) -> (String, u32) {
    (
        format!("worker-{}", s / DP as usize),
        (s % DP as usize) as u32,
    )
}

/// The indexer plus the minimal bookkeeping to pick real holdings to remove and to know the exact
/// counts: every live (slot, tier, key) once, and each key's holding count.
struct Soak {
    rng: Rng,
    ix: Indexer,
    live: Vec<(u8, u8, u64)>,
    refs: HashMap<u64, u32>,
    names: Vec<(String, u32)>,
    /// Slot clears / worker removals per 100k operations (each is O(table)).
    clears_per_100k: usize,
    /// Holdings stored and removed so far (one per key per slot).
    stored: u64,
    removed: u64,
}

impl Soak {
    fn new(seed: u64) -> Self {
        Soak {
            rng: Rng(seed),
            ix: Indexer::new(),
            live: Vec::new(),
            refs: HashMap::new(),
            names: (0..SLOTS).map(worker).collect(),
            clears_per_100k: 20,
            stored: 0,
            removed: 0,
        }
    }

    /// A chain of fresh random keys, stored on 1–3 distinct slots (so blocks < pairs), one tier.
    fn store(&mut self) {
        let n = 1 + self.rng.below(32);
        let keys: Vec<u64> = (0..n).map(|_| self.rng.next()).collect();
        let tier = self.rng.below(MEDIA.len());
        let first = self.rng.below(SLOTS);
        let replicas = 1 + self.rng.below(3);
        for r in 0..replicas {
            let s = (first + r * 5) % SLOTS;
            let (w, dp) = &self.names[s];
            self.ix
                .apply_stored(w, *dp, MEDIA[tier], None, &keys)
                .unwrap();
            self.stored += keys.len() as u64;
            for &k in &keys {
                self.live.push((s as u8, tier as u8, k));
                *self.refs.entry(k).or_default() += 1;
            }
        }
    }

    /// Removes up to 16 random live holdings, and now and then an unknown one.
    fn remove(&mut self) {
        for _ in 0..1 + self.rng.below(16) {
            if self.live.is_empty() {
                return;
            }
            let i = self.rng.below(self.live.len());
            let (s, tier, k) = self.live.swap_remove(i);
            let (w, dp) = &self.names[s as usize];
            self.ix.apply_removed(w, *dp, MEDIA[tier as usize], &[k]);
            self.removed += 1;
            self.unref(k);
        }
        if self.rng.below(50) == 0 {
            let before = self.ix.stats().removes_unknown;
            self.ix
                .apply_removed("worker-0", 0, None, &[self.rng.next()]);
            assert_eq!(self.ix.stats().removes_unknown, before + 1);
        }
    }

    fn unref(&mut self, k: u64) {
        let r = self.refs.get_mut(&k).unwrap();
        *r -= 1;
        if *r == 0 {
            self.refs.remove(&k);
        }
    }

    /// Clears one slot (AllBlocksCleared) or removes a whole worker.
    fn clear_or_remove(&mut self) {
        let s = self.rng.below(SLOTS);
        let (w, dp) = self.names[s].clone();
        let whole = self.rng.below(2) == 0;
        let d = DP as usize;
        let hit = |x: u8| x as usize / d == s / d && (whole || x as usize == s);
        let (gone, kept): (Vec<_>, Vec<_>) = self.live.iter().partition(|e| hit(e.0));
        self.live = kept;
        for &(_, _, k) in &gone {
            self.unref(k);
        }
        if whole {
            self.ix.remove_worker(&w);
        } else {
            assert_eq!(self.ix.clear_worker(&w, Some(dp)), gone.len() as u64);
        }
    }

    fn check(&self, what: &str) -> IndexerStats {
        let s = self.ix.stats();
        assert_eq!(s.pairs, self.live.len() as u64, "{what}: pairs");
        assert_eq!(s.blocks, self.refs.len() as u64, "{what}: blocks");
        assert!(
            s.approx_bytes <= PER_PAIR * s.pairs + FIXED,
            "{what}: {} bytes for {} pairs ({} blocks)",
            s.approx_bytes,
            s.pairs,
            s.blocks
        );
        s
    }

    /// Runs `ops` operations with `store_pct`% stores; checks the counts and the bound as it goes.
    fn phase(&mut self, ops: usize, store_pct: usize, what: &str) -> IndexerStats {
        for op in 0..ops {
            let r = self.rng.below(100_000);
            if r < store_pct * 1000 {
                self.store();
            } else if r < 100_000 - self.clears_per_100k {
                self.remove();
            } else {
                self.clear_or_remove();
            }
            if op % 20_000 == 0 {
                self.check(what);
            }
        }
        self.check(what)
    }

    /// Removes holdings until at most `target` pairs are live.
    fn drain_to(&mut self, target: usize) {
        while self.live.len() > target {
            self.remove();
        }
    }
}

fn soak(seed: u64, cycles: usize, grow_ops: usize, clears_per_100k: usize) {
    let mut s = Soak::new(seed);
    s.clears_per_100k = clears_per_100k;
    let mut floor_bytes = Vec::new();
    for c in 0..cycles {
        let peak = s.phase(grow_ops, 60, &format!("cycle {c} grow"));
        let churn = s.phase(grow_ops / 2, 50, &format!("cycle {c} churn"));
        let target = (churn.pairs / 100) as usize;
        s.drain_to(target);
        let low = s.check(&format!("cycle {c} drained"));
        s.ix.check_invariants().unwrap();
        eprintln!(
            "cycle {c}: peak {} pairs {} blocks {:.1} MB ({:.1} B/pair); after drain {} pairs {} \
             blocks {:.2} MB ({:.1} B/pair)",
            peak.pairs,
            peak.blocks,
            peak.approx_bytes as f64 / 1e6,
            peak.approx_bytes as f64 / peak.pairs as f64,
            low.pairs,
            low.blocks,
            low.approx_bytes as f64 / 1e6,
            low.approx_bytes as f64 / low.pairs.max(1) as f64,
        );
        // The footprint follows the live set down (not just "bounded by the peak").
        assert!(
            low.approx_bytes * 8 < peak.approx_bytes,
            "cycle {c}: memory not reclaimed"
        );
        floor_bytes.push(low.approx_bytes);
    }
    // No drift across cycles: the drained footprint does not creep upwards.
    let (first, last) = (floor_bytes[0], *floor_bytes.last().unwrap());
    assert!(
        last <= first * 2 + FIXED,
        "drained footprint grew from {first} to {last}"
    );
    s.drain_to(0);
    let end = s.check("empty");
    eprintln!(
        "{} holdings stored, {} removed one by one",
        s.stored, s.removed
    );
    assert_eq!((end.pairs, end.blocks), (0, 0));
    assert!(
        end.approx_bytes <= FIXED,
        "empty index holds {} bytes",
        end.approx_bytes
    );
    s.ix.check_invariants().unwrap();
}

/// ~250k operations (plus the drains); runs by default, a few seconds in debug.
#[test]
fn soak_small() {
    soak(0x5eed, 3, 40_000, 20);
}

/// ~6M operations and several million live pairs at the peaks:
/// `cargo test --release -p kvroute-core --test indexer_soak -- --ignored --nocapture`
#[test]
#[ignore]
fn soak_millions() {
    soak(0xfeed, 4, 300_000, 5);
}
