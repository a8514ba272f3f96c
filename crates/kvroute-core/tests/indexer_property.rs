//! Property test: the indexer against a naive reference model, over random operation sequences.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kvroute_core::indexer::{Indexer, Matches, MAX_TIERS};

mod common;
use common::Rng;

type SlotKey = (String, u32);
/// A match: (slot, blocks, tier_blocks), the slot named by the model or by the indexer.
type Match<S> = (S, u32, [u32; MAX_TIERS]);

/// The reference: what each known slot holds, on which tiers, by the definitions.
#[derive(Default)]
struct Model {
    tiers: Vec<String>,
    slots: BTreeMap<SlotKey, HashMap<u64, BTreeSet<usize>>>,
    removes_unknown: u64,
}

impl Model {
    fn new() -> Self {
        Model {
            tiers: vec!["GPU".into()],
            ..Default::default()
        }
    }

    fn tier(&self, medium: Option<&str>) -> Option<usize> {
        let name = medium.unwrap_or("GPU");
        self.tiers.iter().position(|t| t == name)
    }

    fn store(&mut self, w: &str, dp: u32, medium: Option<&str>, keys: &[u64]) {
        let t = match self.tier(medium) {
            Some(t) => t,
            None => {
                self.tiers.push(medium.unwrap().to_string());
                self.tiers.len() - 1
            }
        };
        let held = self.slots.entry((w.to_string(), dp)).or_default();
        for &k in keys {
            held.entry(k).or_default().insert(t);
        }
    }

    fn remove(&mut self, w: &str, dp: u32, medium: Option<&str>, keys: &[u64]) {
        let t = self.tier(medium);
        let held = self.slots.get_mut(&(w.to_string(), dp));
        let (Some(t), Some(held)) = (t, held) else {
            self.removes_unknown += keys.len() as u64;
            return;
        };
        for k in keys {
            let gone = match held.get_mut(k) {
                Some(ts) if ts.contains(&t) => {
                    ts.remove(&t);
                    ts.is_empty()
                }
                _ => {
                    self.removes_unknown += 1;
                    false
                }
            };
            if gone {
                held.remove(k);
            }
        }
    }

    fn clear(&mut self, w: &str, dp: Option<u32>) -> u64 {
        let mut dropped = 0;
        for ((w2, d2), held) in self.slots.iter_mut() {
            if w2 == w && dp.is_none_or(|d| d == *d2) {
                dropped += held.values().map(|ts| ts.len() as u64).sum::<u64>();
                held.clear();
            }
        }
        dropped
    }

    fn remove_worker(&mut self, w: &str) -> bool {
        let before = self.slots.len();
        self.slots.retain(|(w2, _), _| w2 != w);
        before != self.slots.len()
    }

    /// Sorted ((worker, dp), blocks, tier_blocks) and the number of keys a query must look at.
    fn matches(&self, q: &[u64]) -> (Vec<Match<&SlotKey>>, usize) {
        let mut out = Vec::new();
        let Some(q0) = q.first() else {
            return (out, 0);
        };
        for (slot, held) in &self.slots {
            if !held.contains_key(q0) {
                continue;
            }
            let mut tb = [0u32; MAX_TIERS];
            let mut k = 0;
            while k < q.len() {
                let Some(ts) = held.get(&q[k]) else { break };
                tb[*ts.iter().next().unwrap()] += 1;
                k += 1;
            }
            out.push((slot, k as u32, tb));
        }
        let maxb = out.iter().map(|e| e.1 as usize).max().unwrap_or(0);
        (out, q.len().min(maxb + 1))
    }

    fn blocks(&self) -> u64 {
        let keys: BTreeSet<u64> = self
            .slots
            .values()
            .flat_map(|h| h.keys().copied())
            .collect();
        keys.len() as u64
    }

    fn pairs(&self) -> u64 {
        self.slots
            .values()
            .flat_map(|h| h.values())
            .map(|ts| ts.len() as u64)
            .sum()
    }
}

/// A universe of prefix trees: a pool of chains where each new chain either starts a new root or
/// branches off an existing chain at a random point, so chains share prefixes and queries overlap.
struct Universe {
    pool: Vec<Vec<u64>>,
}

impl Universe {
    fn new(rng: &mut Rng, chains: usize, small_keys: bool) -> Self {
        let mut next = 0u64;
        let mut fresh = |rng: &mut Rng| {
            if small_keys {
                // Small integers (0 included): table collisions, the side entry for key 0.
                next += 1;
                next - 1
            } else {
                rng.next()
            }
        };
        let mut pool: Vec<Vec<u64>> = Vec::new();
        for _ in 0..chains {
            let len = 8 + rng.below(57);
            let mut c = if pool.is_empty() || rng.chance(20) {
                Vec::new()
            } else {
                let base = &pool[rng.below(pool.len())];
                base[..rng.below(base.len().min(len))].to_vec()
            };
            while c.len() < len {
                c.push(fresh(rng));
            }
            pool.push(c);
        }
        Universe { pool }
    }

    fn chain(&self, rng: &mut Rng) -> &[u64] {
        &self.pool[rng.below(self.pool.len())]
    }
}

/// Runs `q` on the indexer and the model and compares; returns the matches' entry count.
fn compare(ix: &Indexer, model: &Model, m: &mut Matches, q: &[u64], ctx: &str) {
    ix.find_matches(q, m);
    let got: Vec<Match<u32>> = m
        .entries()
        .iter()
        .map(|e| (e.slot, e.blocks, e.tier_blocks))
        .collect();
    assert!(
        got.windows(2).all(|p| p[0].0 < p[1].0),
        "{ctx}: entries in slot order"
    );
    let (want, walked) = model.matches(q);
    let mut want: Vec<Match<u32>> = want
        .into_iter()
        .map(|((w, r), b, tb)| {
            (
                ix.slot_of(w, *r)
                    .expect("model slot unknown to the indexer"),
                b,
                tb,
            )
        })
        .collect();
    want.sort_unstable();
    assert_eq!(got, want, "{ctx}: find_matches({q:?})");
    assert_eq!(m.walked(), walked, "{ctx}: walked (early stop)");
}

struct Config {
    seed: u64,
    ops: usize,
    workers: usize,
    dp_ranks: u32,
    media: &'static [Option<&'static str>],
    small_keys: bool,
}

fn run(cfg: &Config) {
    let mut rng = Rng(cfg.seed);
    let chains = 16 + rng.below(48);
    let uni = Universe::new(&mut rng, chains, cfg.small_keys);
    let mut ix = Indexer::new();
    let mut model = Model::new();
    let mut m = Matches::new();
    let worker = |i: usize| format!("worker-{i}");
    let mut queries = 0;
    // Coverage: queries that matched several blocks, several slots, and the most slots seen.
    let (mut deep, mut shared, mut max_slots) = (0, 0, 0);
    for op in 0..cfg.ops {
        let w = worker(rng.below(cfg.workers));
        let dp = rng.below(cfg.dp_ranks as usize) as u32;
        let medium = cfg.media[rng.below(cfg.media.len())];
        let r = rng.below(1000);
        let ctx = format!("seed {} op {op}", cfg.seed);
        if r < 550 {
            // Store a run of a chain, as BlockStored does: mostly from its start.
            let chain = uni.chain(&mut rng);
            let a = if rng.chance(70) {
                0
            } else {
                rng.below(chain.len())
            };
            let b = a + rng.below(chain.len() - a + 1);
            let parent = a.checked_sub(1).map(|p| chain[p]);
            ix.apply_stored(&w, dp, medium, parent, &chain[a..b])
                .unwrap();
            model.store(&w, dp, medium, &chain[a..b]);
        } else if r < 900 {
            // Remove: mostly keys the slot holds (an eviction tail), sometimes anything.
            let mut keys: Vec<u64> = match model.slots.get(&(w.clone(), dp)) {
                Some(h) if !h.is_empty() && rng.chance(80) => {
                    let mut ks: Vec<u64> = h.keys().copied().collect();
                    ks.sort_unstable();
                    let n = 1 + rng.below(ks.len().min(12));
                    (0..n).map(|_| ks[rng.below(ks.len())]).collect()
                }
                _ => {
                    let c = uni.chain(&mut rng);
                    c[rng.below(c.len())..].to_vec()
                }
            };
            if rng.chance(10) {
                keys.push(rng.next());
            }
            ix.apply_removed(&w, dp, medium, &keys);
            model.remove(&w, dp, medium, &keys);
        } else if r < 930 {
            let d = if rng.chance(50) { Some(dp) } else { None };
            let got = ix.clear_worker(&w, d);
            assert_eq!(got, model.clear(&w, d), "{ctx}: clear_worker dropped");
        } else if r < 950 {
            assert_eq!(
                ix.remove_worker(&w),
                model.remove_worker(&w),
                "{ctx}: remove_worker"
            );
        } else {
            ix.apply_stored(&w, dp, medium, None, &[]).unwrap();
            model.store(&w, dp, medium, &[]);
        }

        // Queries: chains from the universe (mostly overlapping), extended, or random.
        for _ in 0..2 {
            let c = uni.chain(&mut rng);
            let len = rng.below(c.len() + 1);
            let mut q = c[..len].to_vec();
            match rng.below(10) {
                0 => q.extend((0..rng.below(5)).map(|_| rng.next())),
                1 => {
                    let d = uni.chain(&mut rng);
                    q.extend_from_slice(d);
                }
                2 => q.insert(0, rng.next()),
                3 => q = (0..len).map(|_| rng.next() % 64).collect(),
                _ => {}
            }
            compare(&ix, &model, &mut m, &q, &ctx);
            queries += 1;
            deep += (m.max_blocks() >= 4) as usize;
            shared += (m.len() >= 2) as usize;
        }

        // Cheap stats after every op; the ones the model computes in O(pairs) every few ops.
        let s = ix.stats();
        assert_eq!(s.workers, model.slots.len() as u64, "{ctx}: workers");
        assert_eq!(s.tiers as usize, model.tiers.len(), "{ctx}: tiers");
        assert_eq!(
            s.removes_unknown, model.removes_unknown,
            "{ctx}: removes_unknown"
        );
        max_slots = max_slots.max(s.workers);
        if op % 29 == 0 {
            assert_eq!(s.blocks, model.blocks(), "{ctx}: blocks");
            assert_eq!(s.pairs, model.pairs(), "{ctx}: pairs");
            for (t, name) in model.tiers.iter().enumerate() {
                assert_eq!(ix.tier_name(t), Some(name.as_str()));
            }
            for (w, r) in model.slots.keys() {
                let slot = ix.slot_of(w, *r).expect("known slot");
                assert_eq!(ix.slot_worker(slot), (w.as_str(), *r), "{ctx}: slot_worker");
            }
        }
        if op % 97 == 0 {
            ix.check_invariants()
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        }
    }
    ix.check_invariants().unwrap();
    // Removing every worker (which narrows the bitsets as the highest slots go) leaves an empty
    // index; the answers stay right on the way.
    for i in 0..cfg.workers {
        assert_eq!(
            ix.remove_worker(&worker(i)),
            model.remove_worker(&worker(i))
        );
        if i % 8 == 0 {
            ix.check_invariants()
                .unwrap_or_else(|e| panic!("seed {}: {e}", cfg.seed));
            for _ in 0..4 {
                let q = uni.chain(&mut rng);
                compare(
                    &ix,
                    &model,
                    &mut m,
                    q,
                    &format!("seed {}: removing workers", cfg.seed),
                );
            }
        }
    }
    let s = ix.stats();
    assert_eq!(
        (s.blocks, s.pairs, s.workers),
        (0, 0, 0),
        "seed {}",
        cfg.seed
    );
    ix.check_invariants().unwrap();
    // The test must exercise what it claims: overlapping queries, and > 64 slots when asked.
    assert!(
        deep * 10 >= queries,
        "seed {}: {deep}/{queries} deep matches",
        cfg.seed
    );
    if cfg.workers * cfg.dp_ranks as usize > 1 {
        assert!(
            shared * 20 >= queries,
            "seed {}: {shared}/{queries} shared",
            cfg.seed
        );
    }
    if cfg.workers * cfg.dp_ranks as usize > 128 {
        assert!(max_slots > 128, "seed {}: only {max_slots} slots", cfg.seed);
    }
    eprintln!(
        "seed {}: {queries} queries, {deep} deep, {shared} shared, max {max_slots} slots",
        cfg.seed
    );
}

const GPU: &[Option<&str>] = &[None];
const GPU_CPU: &[Option<&str>] = &[None, Some("CPU"), Some("GPU")];
const THREE: &[Option<&str>] = &[Some("CPU"), None, Some("DISK")];

#[test]
fn single_worker_single_tier() {
    for seed in 1..=3 {
        let cfg = Config {
            seed,
            ops: 2000,
            workers: 1,
            dp_ranks: 1,
            media: GPU,
            small_keys: true,
        };
        run(&cfg);
    }
}

#[test]
fn few_workers_dp_ranks_two_tiers() {
    for seed in 10..=13 {
        let small_keys = seed % 2 == 0;
        let cfg = Config {
            seed,
            ops: 3000,
            workers: 4,
            dp_ranks: 2,
            media: GPU_CPU,
            small_keys,
        };
        run(&cfg);
    }
}

#[test]
fn many_workers_three_tiers_wide_bitsets() {
    // Up to 100 workers × 2 dp ranks = 200 slots: W up to 4 words, grown and shrunk.
    for seed in 20..=23 {
        let small_keys = seed % 2 == 1;
        let cfg = Config {
            seed,
            ops: 3000,
            workers: 100,
            dp_ranks: 2,
            media: THREE,
            small_keys,
        };
        run(&cfg);
    }
}

#[test]
fn mid_fleet_one_tier() {
    for seed in 30..=32 {
        let cfg = Config {
            seed,
            ops: 3000,
            workers: 40,
            dp_ranks: 1,
            media: GPU,
            small_keys: seed == 31,
        };
        run(&cfg);
    }
}

/// Many more seeds and shapes (`cargo test --release --test indexer_property -- --ignored`).
#[test]
#[ignore]
fn many_seeds() {
    const MEDIA: [&[Option<&str>]; 3] = [GPU, GPU_CPU, THREE];
    for seed in 100..160u64 {
        let cfg = Config {
            seed,
            ops: 5000,
            workers: [1, 2, 7, 33, 70, 130][seed as usize % 6],
            dp_ranks: 1 + (seed % 3) as u32,
            media: MEDIA[(seed / 6) as usize % 3],
            small_keys: seed % 2 == 0,
        };
        run(&cfg);
    }
}

/// Holes left by out-of-order evictions in long chains, which the walk reads as arena runs: a
/// chain stored in one batch lies in consecutive arena blocks, and the walk follows the run
/// without the index. Evicting blocks in the middle (not the tail first, as an LRU would), by
/// some holders only, re-storing them (their new blocks land elsewhere in the arena while the dead
/// ones keep their keys in place), storing sub-runs out of order, and the compactions that all
/// this churn triggers must leave every answer equal to the model's.
#[test]
fn holes_from_out_of_order_evictions_in_long_runs() {
    for seed in 40..=45u64 {
        let mut rng = Rng(seed);
        let small_keys = seed % 2 == 0;
        let mut next = 0u64;
        let mut fresh = |rng: &mut Rng| {
            if small_keys {
                next += 1;
                next - 1
            } else {
                rng.next()
            }
        };
        // Long chains, half of them branching off another one.
        let mut chains: Vec<Vec<u64>> = Vec::new();
        for _ in 0..12 {
            let len = 100 + rng.below(500);
            let mut c = if chains.is_empty() || rng.chance(50) {
                Vec::new()
            } else {
                let base = &chains[rng.below(chains.len())];
                base[..rng.below(base.len())].to_vec()
            };
            while c.len() < len {
                c.push(fresh(&mut rng));
            }
            chains.push(c);
        }
        let workers = ["a", "b", "c"];
        let mut ix = Indexer::new();
        let mut model = Model::new();
        let mut m = Matches::new();
        let mut holes = 0;
        for op in 0..1500 {
            let ctx = format!("seed {seed} op {op}");
            let w = workers[rng.below(workers.len())];
            let c = &chains[rng.below(chains.len())];
            match rng.below(10) {
                // Whole chain in one batch (one arena run for its new keys).
                0..=2 => {
                    ix.apply_stored(w, 0, None, None, c).unwrap();
                    model.store(w, 0, None, c);
                }
                // A sub-run, parent given, possibly re-filling a hole.
                3..=4 => {
                    let a = rng.below(c.len());
                    let b = a + 1 + rng.below((c.len() - a).min(40));
                    let parent = a.checked_sub(1).map(|p| c[p]);
                    ix.apply_stored(w, 0, None, parent, &c[a..b]).unwrap();
                    model.store(w, 0, None, &c[a..b]);
                }
                // Out-of-order eviction: a few blocks from the middle, parents before children.
                5..=8 => {
                    let a = rng.below(c.len());
                    let n = 1 + rng.below(4);
                    let keys: Vec<u64> = (a..(a + n).min(c.len())).map(|i| c[i]).collect();
                    if model
                        .slots
                        .get(&(w.to_string(), 0))
                        .is_some_and(|h| keys.iter().any(|k| h.contains_key(k)))
                        && a + n < c.len()
                    {
                        holes += 1;
                    }
                    ix.apply_removed(w, 0, None, &keys);
                    model.remove(w, 0, None, &keys);
                }
                // A tail eviction (LRU order).
                _ => {
                    let a = rng.below(c.len());
                    let keys: Vec<u64> = c[a..].iter().rev().copied().collect();
                    ix.apply_removed(w, 0, None, &keys);
                    model.remove(w, 0, None, &keys);
                }
            }
            for _ in 0..3 {
                let c = &chains[rng.below(chains.len())];
                let q = &c[..rng.below(c.len() + 1)];
                compare(&ix, &model, &mut m, q, &ctx);
            }
            if op % 101 == 0 {
                ix.check_invariants()
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(ix.stats().pairs, model.pairs(), "{ctx}: pairs");
            }
        }
        assert!(holes > 100, "seed {seed}: only {holes} holes made");
        ix.check_invariants().unwrap();
    }
}
