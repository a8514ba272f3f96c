//! `EventApplier` and vLLM's duplicate blocks: vLLM does not de-duplicate KV blocks, so a hash can
//! be stored twice (two physical copies) and each copy's eviction sends its own `BlockRemoved`.
//! The applier counts copies per `(worker, dp_rank, tier, engine hash)` and keeps a block in the
//! index until its last copy is removed, in both keyings. Checked case by case and against a
//! reference multiset over random store / remove / clear sequences.

use std::collections::{BTreeMap, HashMap};

use kvroute_core::block_keys::RouterKeyer;
use kvroute_core::engine_hash::{EngineHasher, EngineHasherConfig, HashAlgorithm};
use kvroute_core::event_applier::{EventApplier, EventApplierConfig, Keying};
use kvroute_core::events::{
    encode_batch, BlockHash, BlockHashes, BlockRemoved, BlockStored, KvEvent, KvEventBatch, Medium,
    WireFormat,
};
use kvroute_core::extra_keys::ExtraKeys;
use kvroute_core::indexer::{Matches, MAX_TIERS};

mod common;
use common::XorShift;

const BS: usize = 4;
const KEYINGS: [Keying; 2] = [Keying::Tokens, Keying::Engine];

fn applier(keying: Keying) -> EventApplier {
    let mut cfg = EventApplierConfig::new(BS as u32);
    cfg.keying = keying;
    EventApplier::new(cfg).unwrap()
}

fn engine() -> EngineHasher {
    EngineHasher::new(EngineHasherConfig {
        block_size: BS,
        algorithm: HashAlgorithm::Sha256,
        seed: Some("0".into()),
    })
    .unwrap()
}

/// A prompt's engine hashes and router keys.
struct Prompt {
    tokens: Vec<u32>,
    hashes: Vec<u64>,
    keys: Vec<u64>,
}

impl Prompt {
    fn new(tokens: Vec<u32>) -> Self {
        let mut hashes = vec![];
        engine().hashes(&tokens, &ExtraKeys::default(), &mut hashes);
        let mut keys = vec![];
        RouterKeyer::new(BS)
            .unwrap()
            .keys(&tokens, &ExtraKeys::default(), &mut keys);
        Prompt {
            tokens,
            hashes,
            keys,
        }
    }

    /// What the index is keyed by.
    fn index_keys(&self, keying: Keying) -> &[u64] {
        match keying {
            Keying::Tokens => &self.keys,
            Keying::Engine => &self.hashes,
        }
    }

    /// `BlockStored` of blocks `a..b` with their tokens, chained under block `a - 1`.
    fn stored(&self, a: usize, b: usize, medium: &str) -> KvEvent {
        KvEvent::BlockStored(BlockStored {
            block_hashes: BlockHashes::from_keys(self.hashes[a..b].to_vec()),
            parent_block_hash: a.checked_sub(1).map(|p| BlockHash::Int(self.hashes[p])),
            token_ids: self.tokens[a * BS..b * BS].to_vec(),
            block_size: BS as u32,
            medium: Some(Medium::parse(medium)),
            ..Default::default()
        })
    }
}

/// A token-less `BlockStored` (as the CPU offloading connector sends them).
fn stored_by_hash(hashes: &[u64], medium: &str) -> KvEvent {
    KvEvent::BlockStored(BlockStored {
        block_hashes: BlockHashes::from_keys(hashes.to_vec()),
        medium: Some(Medium::parse(medium)),
        ..Default::default()
    })
}

fn removed(hashes: &[u64], medium: &str) -> KvEvent {
    KvEvent::BlockRemoved(BlockRemoved {
        block_hashes: BlockHashes::from_keys(hashes.to_vec()),
        medium: Some(Medium::parse(medium)),
        ..Default::default()
    })
}

/// Applies through the wire (vLLM's current encoding, decoded); returns the events skipped.
fn apply_any(ap: &mut EventApplier, worker: &str, rank: u32, events: Vec<KvEvent>) -> u32 {
    let batch = KvEventBatch {
        ts: 1.0,
        events,
        data_parallel_rank: Some(rank.into()),
        skipped: vec![],
    };
    ap.apply_payload(worker, &encode_batch(&batch, WireFormat::CURRENT))
        .unwrap()
        .skipped
}

/// [`apply_any`], none skipped.
fn apply(ap: &mut EventApplier, worker: &str, rank: u32, events: Vec<KvEvent>) {
    let skipped = apply_any(ap, worker, rank, events);
    assert_eq!(skipped, 0, "{:?}", ap.stats().skipped_reasons);
}

/// `(worker, rank) -> (blocks, blocks per tier name)` of a query.
type Answer = BTreeMap<(String, u32), (u32, BTreeMap<String, u32>)>;

fn answer(ap: &EventApplier, keys: &[u64]) -> Answer {
    let ix = ap.indexer();
    let mut m = Matches::new();
    ix.find_matches(keys, &mut m);
    m.entries()
        .iter()
        .map(|e| {
            let (w, r) = ix.slot_worker(e.slot);
            let tiers = (0..MAX_TIERS)
                .filter(|&t| e.tier_blocks[t] > 0)
                .map(|t| (ix.tier_name(t).unwrap().to_owned(), e.tier_blocks[t]))
                .collect();
            ((w.to_owned(), r), (e.blocks, tiers))
        })
        .collect()
}

/// Blocks of the query `keys` held by `(w, 0)`.
fn held(ap: &EventApplier, w: &str, keys: &[u64]) -> u32 {
    answer(ap, keys)
        .get(&(w.to_owned(), 0))
        .map_or(0, |(b, _)| *b)
}

fn prompt(seed: u32, blocks: usize) -> Prompt {
    Prompt::new((0..(blocks * BS) as u32).map(|i| seed * 1000 + i).collect())
}

// ---------------------------------------------------------------------------------------------
// Case by case
// ---------------------------------------------------------------------------------------------

#[test]
fn a_block_stored_twice_stays_until_its_second_removal() {
    for keying in KEYINGS {
        let mut ap = applier(keying);
        let p = prompt(1, 3);
        let q = p.index_keys(keying);
        apply(&mut ap, "w", 0, vec![p.stored(0, 3, "GPU")]);
        // The request's blocks again (a repeated block-aligned prompt recomputes its last block;
        // identical decodes cache identical blocks): a second copy of blocks 1..3.
        apply(&mut ap, "w", 0, vec![p.stored(1, 3, "GPU")]);
        let s = ap.stats();
        assert_eq!((s.duplicate_stores, s.extra_copies), (2, 2), "{keying}");
        assert_eq!(ap.worker_stats("w", 0).unwrap().extra_copies, 2);
        assert_eq!(
            ap.indexer().stats().pairs,
            3,
            "{keying}: one holding per block"
        );
        ap.check_invariants().unwrap();

        // vLLM evicts one copy of block 2: the other copy is still cached.
        apply(&mut ap, "w", 0, vec![removed(&p.hashes[2..3], "GPU")]);
        assert_eq!(held(&ap, "w", q), 3, "{keying}: store, store, remove");
        assert_eq!(ap.stats().duplicate_removes, 1);
        assert_eq!(ap.stats().extra_copies, 1);
        if keying == Keying::Tokens {
            assert_eq!(ap.router_key_of("w", 0, p.hashes[2]), Some(p.keys[2]));
            assert_eq!(ap.map_len("w", 0), 3);
        }
        ap.check_invariants().unwrap();

        // The second copy goes: the block leaves the index (and the engine map).
        apply(&mut ap, "w", 0, vec![removed(&p.hashes[2..3], "GPU")]);
        assert_eq!(
            held(&ap, "w", q),
            2,
            "{keying}: store, store, remove, remove"
        );
        assert_eq!(ap.router_key_of("w", 0, p.hashes[2]), None);
        // Block 0 had one copy, block 1 two: removing both once leaves block 1 alone (no longer a
        // prefix of the query: looked up by itself).
        apply(&mut ap, "w", 0, vec![removed(&p.hashes[..2], "GPU")]);
        assert_eq!(held(&ap, "w", q), 0);
        assert_eq!(held(&ap, "w", &q[1..2]), 1, "{keying}");
        apply(&mut ap, "w", 0, vec![removed(&p.hashes[1..2], "GPU")]);
        assert_eq!(ap.indexer().stats().pairs, 0, "{keying}");
        assert_eq!(ap.map_len("w", 0), 0);
        let s = ap.stats();
        assert_eq!(
            (s.duplicate_stores, s.duplicate_removes, s.extra_copies),
            (2, 2, 0)
        );
        assert_eq!(s.blocks_stored, 5);
        assert_eq!(s.blocks_removed, 5, "every removal counts, copies included");
        assert_eq!(ap.indexer().stats().removes_unknown, 0, "{keying}");
        ap.check_invariants().unwrap();
    }
}

#[test]
fn copies_are_per_worker_and_rank() {
    for keying in KEYINGS {
        let mut ap = applier(keying);
        let p = prompt(2, 2);
        let q = p.index_keys(keying);
        for (w, r) in [("a", 0), ("a", 1), ("b", 0)] {
            apply(&mut ap, w, r, vec![p.stored(0, 2, "GPU")]);
        }
        // Only (a, 0) holds two copies.
        apply(&mut ap, "a", 0, vec![p.stored(0, 2, "GPU")]);
        for (w, r) in [("a", 0), ("a", 1), ("b", 0)] {
            apply(&mut ap, w, r, vec![removed(&p.hashes, "GPU")]);
        }
        let got = answer(&ap, q);
        assert_eq!(got.keys().collect::<Vec<_>>(), [&("a".to_owned(), 0)]);
        assert_eq!(got[&("a".to_owned(), 0)].0, 2, "{keying}");
        ap.check_invariants().unwrap();
    }
}

#[test]
fn tiers_count_their_copies_independently() {
    for keying in KEYINGS {
        for tokenless_cpu in [false, true] {
            if tokenless_cpu && keying == Keying::Engine {
                continue;
            }
            let ctx = format!("{keying} tokenless_cpu={tokenless_cpu}");
            let mut ap = applier(keying);
            let p = prompt(3, 2);
            let q = p.index_keys(keying);
            let cpu = |ap: &mut EventApplier| {
                let ev = if tokenless_cpu {
                    stored_by_hash(&p.hashes, "CPU")
                } else {
                    p.stored(0, 2, "CPU")
                };
                apply(ap, "w", 0, vec![ev]);
            };
            // GPU: two copies; CPU: one, then two.
            apply(&mut ap, "w", 0, vec![p.stored(0, 2, "GPU")]);
            cpu(&mut ap);
            apply(&mut ap, "w", 0, vec![p.stored(0, 2, "GPU")]);
            assert_eq!(ap.stats().extra_copies, 2, "{ctx}");
            cpu(&mut ap);
            assert_eq!(ap.stats().extra_copies, 4, "{ctx}");
            assert_eq!(ap.indexer().stats().pairs, 4, "{ctx}");

            let tiers = |ap: &EventApplier| {
                answer(ap, q)
                    .get(&("w".to_owned(), 0))
                    .map(|(b, t)| (*b, t.clone()))
            };
            let split = |gpu: u32, cpu: u32| {
                let mut t = BTreeMap::new();
                if gpu > 0 {
                    t.insert("GPU".to_owned(), gpu);
                }
                if cpu > 0 {
                    t.insert("CPU".to_owned(), cpu);
                }
                Some((gpu + cpu, t))
            };
            // One GPU removal: both tiers still hold both blocks (GPU is the best tier).
            apply(&mut ap, "w", 0, vec![removed(&p.hashes, "GPU")]);
            assert_eq!(tiers(&ap), split(2, 0), "{ctx}");
            // Two CPU removals take CPU's two copies; GPU keeps its last one.
            apply(&mut ap, "w", 0, vec![removed(&p.hashes, "CPU")]);
            assert_eq!(tiers(&ap), split(2, 0), "{ctx}");
            apply(&mut ap, "w", 0, vec![removed(&p.hashes, "CPU")]);
            assert_eq!(tiers(&ap), split(2, 0), "{ctx}");
            assert_eq!(ap.indexer().stats().pairs, 2, "{ctx}: CPU holdings gone");
            // GPU's last copy of block 1: block 0 alone remains.
            apply(&mut ap, "w", 0, vec![removed(&p.hashes[1..], "GPU")]);
            assert_eq!(tiers(&ap), split(1, 0), "{ctx}");
            // And the other way round: CPU outlives GPU.
            cpu(&mut ap);
            cpu(&mut ap);
            if tokenless_cpu {
                // Block 1 left the engine map with its last copy: not resolvable any more.
                assert_eq!(ap.stats().unresolved_hashes, 2, "{ctx}");
                apply(&mut ap, "w", 0, vec![removed(&p.hashes[..1], "GPU")]);
                assert_eq!(tiers(&ap), split(0, 1), "{ctx}");
                apply(&mut ap, "w", 0, vec![removed(&p.hashes[..1], "CPU")]);
                assert_eq!(tiers(&ap), split(0, 1), "{ctx}");
            } else {
                apply(&mut ap, "w", 0, vec![removed(&p.hashes[..1], "GPU")]);
                assert_eq!(tiers(&ap), split(0, 2), "{ctx}");
                apply(&mut ap, "w", 0, vec![removed(&p.hashes, "CPU")]);
                assert_eq!(tiers(&ap), split(0, 2), "{ctx}");
            }
            ap.check_invariants().unwrap();
        }
    }
}

#[test]
fn clears_drop_the_counts() {
    for keying in KEYINGS {
        for how in ["event", "clear_worker", "clear_rank", "remove_worker"] {
            let ctx = format!("{keying} {how}");
            let mut ap = applier(keying);
            let p = prompt(4, 2);
            let q = p.index_keys(keying);
            for _ in 0..3 {
                apply(&mut ap, "w", 0, vec![p.stored(0, 2, "GPU")]);
            }
            apply(&mut ap, "w", 0, vec![p.stored(0, 2, "CPU")]);
            apply(&mut ap, "w", 0, vec![p.stored(0, 2, "CPU")]);
            assert_eq!(ap.stats().extra_copies, 6, "{ctx}");
            match how {
                "event" => apply(&mut ap, "w", 0, vec![KvEvent::AllBlocksCleared]),
                "clear_worker" => assert_eq!(ap.clear_worker("w", None), 4),
                "clear_rank" => assert_eq!(ap.clear_worker("w", Some(0)), 4),
                _ => assert!(ap.remove_worker("w")),
            }
            assert_eq!(ap.stats().extra_copies, 0, "{ctx}");
            assert_eq!(ap.indexer().stats().pairs, 0, "{ctx}");
            ap.check_invariants().unwrap();
            // A single store and a single removal now leave nothing.
            apply(&mut ap, "w", 0, vec![p.stored(0, 2, "GPU")]);
            apply(&mut ap, "w", 0, vec![p.stored(0, 2, "CPU")]);
            assert_eq!(held(&ap, "w", q), 2, "{ctx}");
            apply(&mut ap, "w", 0, vec![removed(&p.hashes, "GPU")]);
            apply(&mut ap, "w", 0, vec![removed(&p.hashes, "CPU")]);
            assert_eq!(held(&ap, "w", q), 0, "{ctx}");
            assert_eq!(ap.indexer().stats().pairs, 0, "{ctx}");
            assert_eq!(ap.map_len("w", 0), 0, "{ctx}");
            let s = ap.stats();
            assert_eq!(s.extra_copies, 0, "{ctx}");
            assert_eq!(s.duplicate_removes, 0, "{ctx}");
            ap.check_invariants().unwrap();
        }
    }
}

#[test]
fn engine_keying_counts_a_hash_repeated_within_one_event() {
    let mut ap = applier(Keying::Engine);
    apply(&mut ap, "w", 0, vec![stored_by_hash(&[7, 7, 8], "GPU")]);
    assert_eq!(ap.stats().extra_copies, 1);
    apply(&mut ap, "w", 0, vec![removed(&[7, 8], "GPU")]);
    assert_eq!(held(&ap, "w", &[7]), 1);
    assert_eq!(held(&ap, "w", &[8]), 0);
    apply(&mut ap, "w", 0, vec![removed(&[7, 7], "GPU")]);
    assert_eq!(ap.indexer().stats().pairs, 0);
    assert_eq!(
        ap.indexer().stats().removes_unknown,
        1,
        "the third removal of 7"
    );
    ap.check_invariants().unwrap();
}

#[test]
fn map_eviction_and_rekeying_drop_the_copies_with_the_holding() {
    // Eviction by the map bound removes the block on every tier, whatever its copies.
    let mut cfg = EventApplierConfig::new(BS as u32);
    cfg.max_engine_map_entries = 2;
    let mut ap = EventApplier::new(cfg).unwrap();
    let p = prompt(5, 1);
    apply(&mut ap, "w", 0, vec![p.stored(0, 1, "GPU")]);
    apply(&mut ap, "w", 0, vec![p.stored(0, 1, "GPU")]);
    apply(&mut ap, "w", 0, vec![p.stored(0, 1, "CPU")]);
    apply(&mut ap, "w", 0, vec![p.stored(0, 1, "CPU")]);
    assert_eq!(ap.stats().extra_copies, 2);
    let other = prompt(6, 2);
    apply(&mut ap, "w", 0, vec![other.stored(0, 2, "GPU")]);
    assert_eq!(ap.stats().map_evictions, 1);
    assert_eq!(ap.stats().extra_copies, 0);
    assert_eq!(held(&ap, "w", &p.keys), 0);
    ap.check_invariants().unwrap();
    // Stored again: one copy, gone with one removal.
    apply(&mut ap, "w", 0, vec![p.stored(0, 1, "GPU")]);
    apply(&mut ap, "w", 0, vec![removed(&p.hashes, "GPU")]);
    assert_eq!(held(&ap, "w", &p.keys), 0);
    ap.check_invariants().unwrap();

    // An engine hash stored again under another router key (inputs the events do not carry):
    // the old key leaves the index with all its copies, the new one starts at one copy.
    let mut ap = applier(Keying::Tokens);
    let p = prompt(7, 1);
    apply(&mut ap, "w", 0, vec![p.stored(0, 1, "GPU")]);
    apply(&mut ap, "w", 0, vec![p.stored(0, 1, "GPU")]);
    let q = prompt(8, 1);
    let ev = KvEvent::BlockStored(BlockStored {
        block_hashes: BlockHashes::from_keys(p.hashes.clone()),
        token_ids: q.tokens.clone(),
        block_size: BS as u32,
        medium: Some(Medium::Gpu),
        ..Default::default()
    });
    apply(&mut ap, "w", 0, vec![ev]);
    assert_eq!(ap.stats().map_rekeyed, 1);
    assert_eq!(ap.stats().extra_copies, 0);
    assert_eq!(held(&ap, "w", &p.keys), 0);
    assert_eq!(held(&ap, "w", &q.keys), 1);
    apply(&mut ap, "w", 0, vec![removed(&p.hashes, "GPU")]);
    assert_eq!(ap.indexer().stats().pairs, 0);
    ap.check_invariants().unwrap();
}

#[test]
fn engine_keying_forgets_a_count_whose_holding_was_removed_directly() {
    // `indexer_mut` bypasses the applier; a later store must not resurrect the old count.
    let mut ap = applier(Keying::Engine);
    apply(&mut ap, "w", 0, vec![stored_by_hash(&[9, 10], "GPU")]);
    apply(&mut ap, "w", 0, vec![stored_by_hash(&[9, 10], "GPU")]);
    ap.indexer_mut().apply_removed("w", 0, None, &[9]);
    apply(&mut ap, "w", 0, vec![stored_by_hash(&[9], "GPU")]);
    assert_eq!(ap.stats().extra_copies, 1, "10's copy only");
    ap.check_invariants().unwrap();
    apply(&mut ap, "w", 0, vec![removed(&[9], "GPU")]);
    assert_eq!(held(&ap, "w", &[9]), 0);
    ap.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Against a reference multiset
// ---------------------------------------------------------------------------------------------

const WORKERS: [&str; 2] = ["a", "b"];
const RANKS: u32 = 2;
const TIERS: [&str; 2] = ["GPU", "CPU"];
const PROMPT_BLOCKS: usize = 6;

/// Prompts sharing prefixes as a binary tree (block 0 is common to all, block 1 to halves, ...),
/// so the same hashes come back through many requests.
fn universe() -> Vec<Prompt> {
    (0..8u32)
        .map(|p| {
            let tokens = (0..PROMPT_BLOCKS)
                .flat_map(|i| {
                    let branch = p >> 3usize.saturating_sub(i);
                    let c = 1000 * i as u32 + 10 * branch;
                    c..c + BS as u32
                })
                .collect();
            Prompt::new(tokens)
        })
        .collect()
}

/// What one `(worker, rank)` holds: engine hash → (index key, copies per tier). Copies are a
/// multiset: every store adds one, every removal takes one, the hash is held while any is left.
type RefSlot = HashMap<u64, (u64, [u32; 2])>;

#[derive(Default)]
struct Reference {
    slots: BTreeMap<(String, u32), RefSlot>,
}

impl Reference {
    fn slot(&mut self, w: &str, r: u32) -> &mut RefSlot {
        self.slots.entry((w.to_owned(), r)).or_default()
    }

    fn holds(&self, slot: &(String, u32), key: u64, tier: usize) -> bool {
        self.slots
            .get(slot)
            .is_some_and(|s| s.values().any(|(k, c)| *k == key && c[tier] > 0))
    }

    fn expected(&self, q: &[u64]) -> Answer {
        let mut out = Answer::new();
        for slot in self.slots.keys() {
            let mut per_tier = BTreeMap::new();
            let mut blocks = 0;
            for &k in q {
                let Some(t) = (0..TIERS.len()).find(|&t| self.holds(slot, k, t)) else {
                    break;
                };
                blocks += 1;
                *per_tier.entry(TIERS[t].to_owned()).or_insert(0) += 1;
            }
            if blocks > 0 {
                out.insert(slot.clone(), (blocks, per_tier));
            }
        }
        out
    }

    fn pairs(&self) -> u64 {
        self.slots
            .values()
            .flat_map(|s| s.values())
            .map(|(_, c)| c.iter().filter(|&&n| n > 0).count() as u64)
            .sum()
    }

    fn extra_copies(&self) -> u64 {
        self.slots
            .values()
            .flat_map(|s| s.values())
            .map(|(_, c)| {
                c.iter()
                    .map(|&n| u64::from(n.saturating_sub(1)))
                    .sum::<u64>()
            })
            .sum()
    }
}

fn random_run(keying: Keying, seed: u64, steps: usize) {
    let prompts = universe();
    let all_hashes: Vec<u64> = prompts.iter().flat_map(|p| p.hashes.clone()).collect();
    let mut ap = applier(keying);
    let mut reference = Reference::default();
    let mut rng = XorShift(seed);
    let mut dups = 0u64;
    for step in 0..steps {
        let w = WORKERS[rng.below(WORKERS.len())];
        let r = rng.below(RANKS as usize) as u32;
        let t = if rng.chance(75) { 0 } else { 1 };
        let tier = TIERS[t];
        let op = rng.below(100);
        if op < 48 {
            // A store of a prompt's blocks a..b, with tokens (or by hash on CPU, tokens keying).
            let p = &prompts[rng.below(prompts.len())];
            let a = if rng.chance(50) {
                0
            } else {
                rng.below(PROMPT_BLOCKS)
            };
            let b = a + 1 + rng.below(PROMPT_BLOCKS - a);
            let by_hash = keying == Keying::Tokens && t == 1 && rng.chance(50);
            let slot = reference.slot(w, r);
            let ev = if by_hash {
                for h in &p.hashes[a..b] {
                    if let Some(e) = slot.get_mut(h) {
                        dups += u64::from(e.1[t] > 0);
                        e.1[t] += 1;
                    }
                }
                stored_by_hash(&p.hashes[a..b], tier)
            } else {
                // Token keying places the chain under its parent's router key: an unknown parent
                // skips the event.
                let placed =
                    keying == Keying::Engine || a == 0 || slot.contains_key(&p.hashes[a - 1]);
                if placed {
                    for i in a..b {
                        let key = p.index_keys(keying)[i];
                        let e = slot.entry(p.hashes[i]).or_insert((key, [0, 0]));
                        assert_eq!(e.0, key);
                        dups += u64::from(e.1[t] > 0);
                        e.1[t] += 1;
                    }
                }
                p.stored(a, b, tier)
            };
            apply_any(&mut ap, w, r, vec![ev]);
        } else if op < 94 {
            // A removal of one to three hashes, mostly held ones.
            let slot = reference.slot(w, r);
            let held: Vec<u64> = slot
                .iter()
                .filter(|(_, (_, c))| c[t] > 0)
                .map(|(h, _)| *h)
                .collect();
            let hashes: Vec<u64> = (0..1 + rng.below(3))
                .map(|_| {
                    if !held.is_empty() && rng.chance(85) {
                        held[rng.below(held.len())]
                    } else {
                        all_hashes[rng.below(all_hashes.len())]
                    }
                })
                .collect();
            for h in &hashes {
                if let Some(e) = slot.get_mut(h) {
                    e.1[t] = e.1[t].saturating_sub(1);
                    if e.1 == [0, 0] {
                        slot.remove(h);
                    }
                }
            }
            apply_any(&mut ap, w, r, vec![removed(&hashes, tier)]);
        } else if op < 97 {
            reference.slot(w, r).clear();
            apply(&mut ap, w, r, vec![KvEvent::AllBlocksCleared]);
        } else if op < 99 {
            let rank = rng.chance(50).then_some(r);
            for (k, s) in reference.slots.iter_mut() {
                if k.0 == w && rank.is_none_or(|x| x == k.1) {
                    s.clear();
                }
            }
            ap.clear_worker(w, rank);
        } else {
            reference.slots.retain(|k, _| k.0 != w);
            ap.remove_worker(w);
        }

        if step % 16 == 0 || step + 1 == steps {
            let ctx = format!("{keying} seed {seed:#x} step {step}");
            for p in &prompts {
                let q = p.index_keys(keying);
                assert_eq!(answer(&ap, q), reference.expected(q), "{ctx}");
            }
            assert_eq!(ap.indexer().stats().pairs, reference.pairs(), "{ctx}");
            assert_eq!(ap.stats().extra_copies, reference.extra_copies(), "{ctx}");
        }
        if step % 256 == 0 {
            ap.check_invariants().unwrap();
        }
    }
    ap.check_invariants().unwrap();
    let s = ap.stats();
    assert_eq!(s.duplicate_stores, dups, "{keying}");
    assert!(
        s.duplicate_stores > 100 && s.duplicate_removes > 100,
        "{keying}: the run must exercise duplicates ({} stores, {} removes)",
        s.duplicate_stores,
        s.duplicate_removes
    );
}

#[test]
fn random_stores_removes_and_clears_match_a_reference_multiset() {
    for keying in KEYINGS {
        for seed in [0x9e37_79b9_7f4a_7c15, 0xdead_beef_cafe_f00d, 42] {
            random_run(keying, seed, 4000);
        }
    }
}
