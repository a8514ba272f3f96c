//! `EventApplier`: golden vLLM frames applied to the index (both keyings, checked against a naive
//! model built from the fixtures' neutral JSON), token keying across workers with different
//! seeds, the engine-hash map, the parity flags, garbage payloads, and a throughput probe
//! (`cargo test --release -p kvroute-core --test event_applier -- --ignored --nocapture`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use kvroute_core::block_keys::RouterKeyer;
use kvroute_core::engine_hash::{EngineHasher, EngineHasherConfig, HashAlgorithm};
use kvroute_core::event_applier::{EventApplier, EventApplierConfig, Keying};
use kvroute_core::events::msgpack::Value as Mp;
use kvroute_core::events::{
    encode_batch, BlockHash, BlockHashes, BlockRemoved, BlockStored, KvEvent, KvEventBatch, Medium,
    WireFormat,
};
use kvroute_core::extra_keys::{BlockExtraKeys, ExtraKeys, MmFeature};
use kvroute_core::indexer::Matches;
use serde_json::Value;

mod common;
use common::XorShift;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn fixtures() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/kv_events");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "json").then_some(p)
        })
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (v["vllm_version"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 12, "expected every golden version");
    out
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().parse().unwrap())
        .collect()
}

fn applier(keying: Keying, bs: u32) -> EventApplier {
    let mut cfg = EventApplierConfig::new(bs);
    cfg.keying = keying;
    EventApplier::new(cfg).unwrap()
}

/// `(worker, dp_rank) -> blocks` for a query.
fn matches(ap: &EventApplier, keys: &[u64]) -> BTreeMap<(String, u32), u32> {
    let mut m = Matches::new();
    ap.indexer().find_matches(keys, &mut m);
    m.entries()
        .iter()
        .map(|e| {
            let (w, r) = ap.indexer().slot_worker(e.slot);
            ((w.to_owned(), r), e.blocks)
        })
        .collect()
}

fn slot(w: &str, r: u32) -> (String, u32) {
    (w.to_owned(), r)
}

fn router_keys(bs: usize, tokens: &[u32], extra: &ExtraKeys) -> Vec<u64> {
    let mut out = Vec::new();
    RouterKeyer::new(bs).unwrap().keys(tokens, extra, &mut out);
    out
}

fn one(ev: KvEvent, dp: Option<i64>) -> KvEventBatch {
    KvEventBatch {
        ts: 1.0,
        events: vec![ev],
        data_parallel_rank: dp,
        skipped: vec![],
    }
}

fn stored_ev(
    hashes: Vec<u64>,
    parent: Option<u64>,
    tokens: Vec<u32>,
    bs: u32,
    medium: &str,
) -> KvEvent {
    KvEvent::BlockStored(BlockStored {
        block_hashes: BlockHashes::from_keys(hashes),
        parent_block_hash: parent.map(BlockHash::Int),
        token_ids: tokens,
        block_size: bs,
        medium: Some(Medium::parse(medium)),
        ..Default::default()
    })
}

fn removed_ev(hashes: Vec<u64>, medium: &str) -> KvEvent {
    KvEvent::BlockRemoved(BlockRemoved {
        block_hashes: BlockHashes::from_keys(hashes),
        medium: Some(Medium::parse(medium)),
        ..Default::default()
    })
}

/// Applies through the wire (encode in vLLM's current form, decode, apply).
fn apply(ap: &mut EventApplier, worker: &str, ev: KvEvent, dp: Option<i64>) {
    let payload = encode_batch(&one(ev, dp), WireFormat::CURRENT);
    ap.apply_payload(worker, &payload).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Golden frames
// ---------------------------------------------------------------------------------------------

/// A naive model of what the index must hold after the golden cases, built from the fixtures'
/// neutral JSON (not from the decoder): `(dp_rank, tier) -> key -> copies` (vLLM does not
/// de-duplicate blocks: each `BlockStored` of a hash is one more copy, each `BlockRemoved` one
/// less), plus for token keying the engine hash -> router key map with copies per tier.
#[derive(Default)]
struct Reference {
    held: BTreeMap<(u32, String), BTreeMap<u64, u32>>,
    map: HashMap<(u32, u64), (u64, BTreeMap<String, u32>)>,
}

impl Reference {
    fn apply(&mut self, keying: Keying, dp: u32, ev: &Value) {
        let tier = ev["medium"].as_str().unwrap_or("GPU").to_owned();
        match ev["type"].as_str().unwrap() {
            "AllBlocksCleared" => {
                self.held.retain(|(r, _), _| *r != dp);
                self.map.retain(|(r, _), _| *r != dp);
            }
            "BlockStored" => {
                let hashes = u64s(&ev["block_keys_u64"]);
                let tokens: Vec<u32> = ev["token_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap() as u32)
                    .collect();
                let bs = ev["block_size"].as_u64().unwrap() as usize;
                let keys = match keying {
                    Keying::Engine => hashes.clone(),
                    Keying::Tokens if tokens.is_empty() => hashes
                        .iter()
                        .filter_map(|h| self.map.get(&(dp, *h)).map(|e| e.0))
                        .collect(),
                    Keying::Tokens => {
                        if bs != 16 || tokens.len() != 16 * hashes.len() {
                            return;
                        }
                        let parent = match ev["parent_key_u64"].as_str() {
                            None => None,
                            Some(p) => match self.map.get(&(dp, p.parse().unwrap())) {
                                Some(e) => Some(e.0),
                                None => return,
                            },
                        };
                        let lora = ev.get("lora_name").and_then(|n| n.as_str());
                        if !ev["lora_id"].is_null() && lora.is_none() {
                            return;
                        }
                        // Every golden case with extra keys has some the router cannot key.
                        if ev.get("extra_keys").is_some_and(|k| !k.is_null()) {
                            return;
                        }
                        let extra = ExtraKeys {
                            prompt_embeds: Vec::new(),
                            lora_name: lora.map(str::to_owned),
                            ..Default::default()
                        };
                        match parent {
                            None => router_keys(16, &tokens, &extra),
                            Some(p) => {
                                // Chain by hand from the parent's key, block by block.
                                let k = RouterKeyer::new(16).unwrap();
                                let mut prev = Some(p);
                                let mut out = vec![];
                                for (i, b) in tokens.chunks(16).enumerate() {
                                    let bek = extra.block(i * 16 + 16, i * 16 + 32, 0).0;
                                    let key = k.block_key(
                                        prev,
                                        b,
                                        &BlockExtraKeys {
                                            cache_salt: None,
                                            prompt_embeds: None,
                                            ..bek
                                        },
                                    );
                                    out.push(key);
                                    prev = Some(key);
                                }
                                out
                            }
                        }
                    }
                };
                if keying == Keying::Tokens {
                    if tokens.is_empty() {
                        for h in &hashes {
                            if let Some(e) = self.map.get_mut(&(dp, *h)) {
                                *e.1.entry(tier.clone()).or_default() += 1;
                            }
                        }
                    } else {
                        for (h, k) in hashes.iter().zip(&keys) {
                            let e = self.map.entry((dp, *h)).or_insert((*k, BTreeMap::new()));
                            assert_eq!(e.0, *k, "no rekeying in the golden cases");
                            *e.1.entry(tier.clone()).or_default() += 1;
                        }
                    }
                }
                let held = self.held.entry((dp, tier)).or_default();
                for k in keys {
                    *held.entry(k).or_default() += 1;
                }
            }
            "BlockRemoved" => {
                let hashes = u64s(&ev["block_keys_u64"]);
                let keys: Vec<u64> = match keying {
                    Keying::Engine => hashes,
                    Keying::Tokens => hashes
                        .iter()
                        .filter_map(|h| {
                            let e = self.map.get_mut(&(dp, *h))?;
                            let k = e.0;
                            if let Some(n) = e.1.get_mut(&tier) {
                                *n -= 1;
                                if *n == 0 {
                                    e.1.remove(&tier);
                                }
                            }
                            if e.1.is_empty() {
                                self.map.remove(&(dp, *h));
                            }
                            Some(k)
                        })
                        .collect(),
                };
                if let Some(s) = self.held.get_mut(&(dp, tier)) {
                    for k in keys {
                        if let Some(n) = s.get_mut(&k) {
                            *n -= 1;
                            if *n == 0 {
                                s.remove(&k);
                            }
                        }
                    }
                }
            }
            t => panic!("unexpected {t}"),
        }
    }

    fn check(&self, ap: &EventApplier, ctx: &str) {
        let pairs: usize = self.held.values().map(BTreeMap::len).sum();
        assert_eq!(
            ap.indexer().stats().pairs as usize,
            pairs,
            "{ctx}: holdings"
        );
        let mut per_key: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
        for ((r, _), keys) in &self.held {
            for k in keys.keys() {
                per_key.entry(*k).or_default().insert(*r);
            }
        }
        for (k, ranks) in per_key {
            let got: BTreeSet<u32> = matches(ap, &[k]).into_keys().map(|(_, r)| r).collect();
            assert_eq!(got, ranks, "{ctx}: holders of {k:#x}");
        }
    }
}

#[test]
fn golden_frames_of_every_version_apply_to_the_expected_state() {
    for (version, fx) in fixtures() {
        for keying in [Keying::Engine, Keying::Tokens] {
            let mut ap = applier(keying, 16);
            let mut reference = Reference::default();
            for case in fx["cases"].as_array().unwrap() {
                let name = case["name"].as_str().unwrap();
                let ctx = format!("{version} {keying} {name}");
                let out = ap
                    .apply_payload("w", &unhex(case["payload_hex"].as_str().unwrap()))
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                let expected = &case["expected"];
                let dp = expected["data_parallel_rank"].as_u64().unwrap_or(0) as u32;
                assert_eq!(out.dp_rank, dp, "{ctx}");
                assert_eq!(out.skipped_known, 0, "{ctx}");
                for ev in expected["events"].as_array().unwrap() {
                    reference.apply(keying, dp, ev);
                }
                reference.check(&ap, &ctx);
                ap.check_invariants().unwrap();

                // Token keying: the child chains from its parent's router key, so a request of
                // the root's tokens followed by the child's finds all three blocks.
                if keying == Keying::Tokens && name == "stored_child" {
                    let tokens: Vec<u32> = (1..=32).chain(100..116).collect();
                    let q = router_keys(16, &tokens, &ExtraKeys::default());
                    assert_eq!(
                        matches(&ap, &q),
                        BTreeMap::from([(slot("w", 0), 3)]),
                        "{ctx}"
                    );
                }
            }
            let s = ap.stats();
            assert_eq!(s.malformed_batches, 0);
            assert_eq!(s.batches as usize, fx["cases"].as_array().unwrap().len());
            // small_ints uses 4-token blocks: flagged in both keyings.
            let w = ap.worker_stats("w", 0).unwrap();
            assert!(w.block_size_mismatch, "{version} {keying}");
            assert_eq!(w.worker_block_size, Some(4));
            assert!(w.likely_cause.unwrap().starts_with("block_size"));
            assert!(!w.hash_mismatch);
            if keying == Keying::Tokens {
                // The final state has the root block 1..16 of dp_unset (rank 0) and of dp_rank_3.
                let q = router_keys(16, &(1..=16).collect::<Vec<_>>(), &ExtraKeys::default());
                let mut want = BTreeMap::from([(slot("w", 0), 1)]);
                if version != "0.9.0" {
                    want.insert(slot("w", 3), 1);
                }
                assert_eq!(matches(&ap, &q), want, "{version}");
                assert!(s.unresolved_parents > 0);
                assert!(s.skipped_reasons.contains_key("block_size_mismatch"));
                assert!(s.skipped_reasons.contains_key("unresolved_parent"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Token keying
// ---------------------------------------------------------------------------------------------

/// vLLM's untagged event form of a request's per-block extra keys.
fn event_extra_keys(extra: &ExtraKeys, bs: usize, n_tokens: usize) -> Option<Vec<Option<Vec<Mp>>>> {
    let keys: Vec<Option<Vec<Mp>>> = extra
        .blocks(bs, n_tokens)
        .map(|b| {
            if b.is_empty() {
                return None;
            }
            let mut items = vec![];
            if let Some(l) = b.lora {
                items.push(Mp::Str(l.name.to_owned()));
            }
            for (id, off) in b.mm_keys() {
                let off = if off < 0 {
                    Mp::Int(off)
                } else {
                    Mp::UInt(off as u64)
                };
                items.push(Mp::Array(vec![Mp::Str(id.to_owned()), off]));
            }
            if let Some(s) = b.cache_salt {
                items.push(Mp::Str(s.to_owned()));
            }
            Some(items)
        })
        .collect();
    keys.iter().any(Option::is_some).then_some(keys)
}

/// Publishes `tokens` as a worker with `hasher` would: a root event of `split` blocks, then a
/// child event with the rest, parent = the engine hash of the last root block.
fn publish(
    ap: &mut EventApplier,
    worker: &str,
    hasher: &EngineHasher,
    tokens: &[u32],
    extra: &ExtraKeys,
    split: usize,
) -> Vec<u64> {
    let bs = hasher.block_size();
    let mut hashes = vec![];
    hasher.hashes(tokens, extra, &mut hashes);
    let ek = event_extra_keys(extra, bs, tokens.len());
    let n = hashes.len();
    for (range, parent) in [(0..split, None), (split..n, Some(hashes[split - 1]))] {
        let ev = KvEvent::BlockStored(BlockStored {
            block_hashes: BlockHashes::from_keys(hashes[range.clone()].to_vec()),
            parent_block_hash: parent.map(BlockHash::Int),
            token_ids: tokens[range.start * bs..range.end * bs].to_vec(),
            block_size: bs as u32,
            lora_id: extra.lora_name.as_ref().map(|_| 1),
            medium: Some(Medium::Gpu),
            lora_name: extra.lora_name.clone(),
            extra_keys: ek.as_ref().map(|k| k[range].to_vec()),
            ..Default::default()
        });
        apply(ap, worker, ev, Some(0));
    }
    hashes
}

fn engine(seed: &str, alg: HashAlgorithm, bs: usize) -> EngineHasher {
    EngineHasher::new(EngineHasherConfig {
        block_size: bs,
        algorithm: alg,
        seed: Some(seed.to_owned()),
    })
    .unwrap()
}

#[test]
fn token_keying_is_independent_of_the_workers_seed() {
    let tokens: Vec<u32> = (0..16 * 5).map(|i| 1000 + i * 7).collect();
    let cases = [
        ExtraKeys::default(),
        ExtraKeys {
            prompt_embeds: Vec::new(),
            lora_name: Some("sql".into()),
            lora_path: Some("/adapters/sql".into()),
            cache_salt: Some("tenant".into()),
            mm: vec![
                MmFeature::new("img-hash", 3, 20),
                MmFeature::new("img2", 40, 4),
            ],
        },
    ];
    for extra in cases {
        let mut ap = applier(Keying::Tokens, 16);
        let a = publish(
            &mut ap,
            "wa",
            &engine("A", HashAlgorithm::Sha256, 16),
            &tokens,
            &extra,
            2,
        );
        let b = publish(
            &mut ap,
            "wb",
            &engine("B", HashAlgorithm::XxhashCbor, 16),
            &tokens,
            &extra,
            3,
        );
        assert_ne!(a, b, "engine hashes differ by seed");
        let q = router_keys(16, &tokens, &extra);
        assert_eq!(
            matches(&ap, &q),
            BTreeMap::from([(slot("wa", 0), 5), (slot("wb", 0), 5)]),
            "{extra:?}"
        );
        // Equal router keys: the map of both workers resolves to the same keys.
        for i in 0..5 {
            assert_eq!(ap.router_key_of("wa", 0, a[i]), Some(q[i]));
            assert_eq!(ap.router_key_of("wb", 0, b[i]), Some(q[i]));
        }
        // The request without the extras does not match a LoRA/salted worker.
        if !extra.is_empty() {
            let plain = router_keys(16, &tokens, &ExtraKeys::default());
            assert!(matches(&ap, &plain).is_empty());
        }
        let s = ap.stats();
        assert_eq!(s.skipped_events, 0, "{:?}", s.skipped_reasons);
        assert_eq!(s.blocks_stored, 10);
        ap.check_invariants().unwrap();
    }
}

#[test]
fn engine_map_resolves_removals_and_tokenless_stores_and_shrinks_to_zero() {
    let mut ap = applier(Keying::Tokens, 4);
    let h = engine("7", HashAlgorithm::Sha256, 4);
    let tokens: Vec<u32> = (0..4 * 6).collect();
    let hashes = publish(&mut ap, "w", &h, &tokens, &ExtraKeys::default(), 4);
    let q = router_keys(4, &tokens, &ExtraKeys::default());
    assert_eq!(ap.map_len("w", 0), 6);

    // The CPU offload of blocks 0..4 carries no tokens: resolved through the map.
    apply(
        &mut ap,
        "w",
        stored_ev(hashes[..4].to_vec(), None, vec![], 0, "CPU"),
        Some(0),
    );
    // And one unknown hash: counted, skipped.
    apply(
        &mut ap,
        "w",
        stored_ev(vec![12345], None, vec![], 0, "CPU"),
        Some(0),
    );
    let s = ap.stats();
    assert_eq!(s.unresolved_hashes, 1);
    assert_eq!(s.skipped_reasons.get("unknown_block_hashes"), Some(&1));
    assert_eq!(ap.indexer().stats().pairs, 10);

    // GPU evicts blocks 0..6: 0..4 remain on CPU, so the entries stay.
    apply(&mut ap, "w", removed_ev(hashes.clone(), "GPU"), Some(0));
    assert_eq!(ap.map_len("w", 0), 4);
    let mut m = Matches::new();
    ap.indexer().find_matches(&q, &mut m);
    let e = m.entries()[0];
    assert_eq!(e.blocks, 4);
    assert_eq!(e.tier_blocks[ap.indexer().tier_id(Some("CPU")).unwrap()], 4);

    // A child of block 3 (still known via CPU) is placed under its router key.
    let mut more = vec![];
    h.hashes(
        &[tokens.clone(), vec![99, 98, 97, 96]].concat(),
        &ExtraKeys::default(),
        &mut more,
    );
    apply(
        &mut ap,
        "w",
        stored_ev(
            vec![more[6]],
            Some(hashes[5]),
            vec![99, 98, 97, 96],
            4,
            "GPU",
        ),
        Some(0),
    );
    assert_eq!(ap.stats().unresolved_parents, 1, "block 5 left every tier");
    apply(
        &mut ap,
        "w",
        stored_ev(vec![777], Some(hashes[3]), vec![99, 98, 97, 96], 4, "GPU"),
        Some(0),
    );
    let q2 = router_keys(
        4,
        &[&tokens[..16], &[99, 98, 97, 96][..]].concat(),
        &ExtraKeys::default(),
    );
    assert_eq!(matches(&ap, &q2), BTreeMap::from([(slot("w", 0), 5)]));

    apply(
        &mut ap,
        "w",
        removed_ev(hashes[..4].to_vec(), "CPU"),
        Some(0),
    );
    apply(&mut ap, "w", removed_ev(vec![777, 4242], "GPU"), Some(0));
    assert_eq!(ap.map_len("w", 0), 0);
    assert_eq!(ap.indexer().stats().blocks, 0);
    assert_eq!(ap.stats().map_entries, 0);
    ap.check_invariants().unwrap();

    // AllBlocksCleared empties the map and the worker's holdings.
    publish(&mut ap, "w", &h, &tokens, &ExtraKeys::default(), 2);
    assert_eq!(ap.map_len("w", 0), 6);
    let clear = KvEventBatch {
        ts: 2.0,
        events: vec![KvEvent::AllBlocksCleared],
        data_parallel_rank: Some(0),
        skipped: vec![],
    };
    ap.apply_payload("w", &encode_batch(&clear, WireFormat::V0_22))
        .unwrap();
    assert_eq!(ap.map_len("w", 0), 0);
    assert_eq!(ap.indexer().stats().pairs, 0);
    ap.check_invariants().unwrap();
}

#[test]
fn bounded_map_evicts_oldest_and_keeps_the_index_sound() {
    let mut cfg = EventApplierConfig::new(4);
    cfg.max_engine_map_entries = 100;
    let mut ap = EventApplier::new(cfg).unwrap();
    let h = engine("0", HashAlgorithm::Sha256, 4);
    let mut rng = 1u64;
    for round in 0..50 {
        let tokens: Vec<u32> = (0..4 * 8)
            .map(|_| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (rng >> 40) as u32 % 1000
            })
            .collect();
        let hashes = publish(&mut ap, "w", &h, &tokens, &ExtraKeys::default(), 3);
        if round % 3 == 0 {
            apply(
                &mut ap,
                "w",
                removed_ev(hashes[4..].to_vec(), "GPU"),
                Some(0),
            );
        }
        assert!(ap.map_len("w", 0) <= 100);
        ap.check_invariants().unwrap();
    }
    let s = ap.stats();
    assert!(s.map_evictions > 0);
    // Every holding of the index has a map entry (evicted keys left the index).
    assert_eq!(ap.indexer().stats().pairs, ap.map_len("w", 0) as u64);
}

// ---------------------------------------------------------------------------------------------
// Parity
// ---------------------------------------------------------------------------------------------

fn parity_applier(bs: u32, alg: HashAlgorithm, seed: Option<&str>) -> EventApplier {
    let mut cfg = EventApplierConfig::new(bs);
    cfg.keying = Keying::Engine;
    cfg.hash_algorithm = Some(alg);
    cfg.hash_seed = seed.map(str::to_owned);
    EventApplier::new(cfg).unwrap()
}

fn prompts(n: usize, bs: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|p| (0..bs * 4).map(|i| (p * 1000 + i * 3) as u32).collect())
        .collect()
}

#[test]
fn parity_flags_a_worker_with_another_seed() {
    let mut ap = parity_applier(16, HashAlgorithm::Sha256, Some("42"));
    let good = engine("42", HashAlgorithm::Sha256, 16);
    let bad = engine("1234", HashAlgorithm::Sha256, 16);
    let unset = EngineHasher::new(EngineHasherConfig {
        block_size: 16,
        algorithm: HashAlgorithm::Sha256,
        seed: None,
    })
    .unwrap();
    let other_alg = engine("42", HashAlgorithm::Sha256Cbor, 16);
    for tokens in prompts(40, 16) {
        publish(&mut ap, "good", &good, &tokens, &ExtraKeys::default(), 2);
        publish(&mut ap, "bad", &bad, &tokens, &ExtraKeys::default(), 2);
        publish(&mut ap, "unset", &unset, &tokens, &ExtraKeys::default(), 2);
        publish(
            &mut ap,
            "alg",
            &other_alg,
            &tokens,
            &ExtraKeys::default(),
            2,
        );
    }
    let g = ap.worker_stats("good", 0).unwrap();
    assert!(!g.hash_mismatch && !g.block_size_mismatch, "{g:?}");
    // The first 16 events, then 1 in 64 (both the root and its child are checkable: the child's
    // parent digest was verified).
    assert!(g.checked >= 16, "{g:?}");
    assert_eq!(g.mismatched, 0);

    let b = ap.worker_stats("bad", 0).unwrap();
    assert!(b.hash_mismatch, "{b:?}");
    assert!(b.mismatched > 0);
    let cause = b.likely_cause.unwrap();
    assert!(cause.starts_with("seed"), "{cause}");

    let u = ap.worker_stats("unset", 0).unwrap();
    assert!(u.hash_mismatch);
    assert_eq!(
        u.likely_cause.as_deref(),
        Some("seed: the worker's PYTHONHASHSEED is unset (the router's is \"42\")")
    );

    let a = ap.worker_stats("alg", 0).unwrap();
    assert!(a.hash_mismatch);
    assert_eq!(
        a.likely_cause.as_deref(),
        Some("algorithm: the worker hashes with sha256_cbor (the router with sha256)")
    );
    // Serving goes on: the mismatched workers' blocks are indexed as they come.
    assert_eq!(ap.indexer().stats().workers, 4);
    assert_eq!(ap.stats().blocks_stored, 4 * 40 * 4);

    // A restart (clear_worker) resets the flags.
    ap.clear_worker("bad", None);
    assert!(!ap.worker_stats("bad", 0).unwrap().hash_mismatch);
}

#[test]
fn parity_flags_a_wrong_block_size() {
    // Token keying: the event's block size and token count are checked.
    let mut ap = applier(Keying::Tokens, 16);
    let h32 = engine("0", HashAlgorithm::Sha256, 32);
    let tokens: Vec<u32> = (0..64).collect();
    publish(&mut ap, "w32", &h32, &tokens, &ExtraKeys::default(), 1);
    let w = ap.worker_stats("w32", 0).unwrap();
    assert!(w.block_size_mismatch && !w.hash_mismatch, "{w:?}");
    assert_eq!(w.worker_block_size, Some(32));
    assert_eq!(
        ap.stats().skipped_reasons.get("block_size_mismatch"),
        Some(&2)
    );
    assert_eq!(ap.indexer().stats().pairs, 0);
    // Right size, wrong token count.
    apply(
        &mut ap,
        "short",
        stored_ev(vec![1, 2], None, (0..20).collect(), 16, "GPU"),
        None,
    );
    assert!(ap.worker_stats("short", 0).unwrap().block_size_mismatch);

    // Engine keying: flagged, recomputed at the candidate sizes.
    let mut ap = parity_applier(16, HashAlgorithm::Sha256, Some("0"));
    publish(&mut ap, "w32", &h32, &tokens, &ExtraKeys::default(), 1);
    let w = ap.worker_stats("w32", 0).unwrap();
    assert!(w.block_size_mismatch && w.hash_mismatch, "{w:?}");
    assert_eq!(
        w.likely_cause.as_deref(),
        Some("block_size: the worker hashes 32-token blocks, the router 16")
    );
    // Applied as is anyway (engine keying).
    assert_eq!(ap.indexer().stats().pairs, 2);
}

#[test]
fn partial_block_entries_are_not_a_mismatch() {
    let mut ap = applier(Keying::Tokens, 16);
    apply(
        &mut ap,
        "w",
        stored_ev(vec![9], None, (0..8).collect(), 8, "GPU"),
        Some(0),
    );
    let w = ap.worker_stats("w", 0).unwrap();
    assert!(!w.block_size_mismatch);
    assert_eq!(ap.stats().skipped_reasons.get("partial_block"), Some(&1));
}

#[test]
fn bytes_parents_and_dp_ranks() {
    // Bytes-form hashes: the parent is a full digest, so a child event is checkable at once.
    let mut ap = parity_applier(4, HashAlgorithm::Sha256, Some("5"));
    let h = engine("5", HashAlgorithm::Sha256, 4);
    let tokens: Vec<u32> = (0..12).collect();
    let mut digests = vec![];
    h.digests(&tokens, &ExtraKeys::default(), &mut digests);
    let ev = KvEvent::BlockStored(BlockStored {
        block_hashes: BlockHashes::from_hashes(vec![BlockHash::from_bytes(digests[2].as_bytes())]),
        parent_block_hash: Some(BlockHash::from_bytes(digests[1].as_bytes())),
        token_ids: tokens[8..].to_vec(),
        block_size: 4,
        ..Default::default()
    });
    apply(&mut ap, "w", ev, Some(2));
    let w = ap.worker_stats("w", 2).unwrap();
    assert_eq!((w.checked, w.mismatched, w.hash_mismatch), (1, 0, false));
    assert_eq!(
        matches(&ap, &[digests[2].to_u64()]),
        BTreeMap::from([(slot("w", 2), 1)])
    );

    // A DP rank outside u32 is a malformed batch; nothing changes.
    let bad = one(stored_ev(vec![1], None, vec![0; 4], 4, "GPU"), Some(-1));
    assert!(ap
        .apply_payload("w", &encode_batch(&bad, WireFormat::CURRENT))
        .is_err());
    assert_eq!(
        ap.stats()
            .malformed_reasons
            .get("data_parallel_rank out of range"),
        Some(&1)
    );
    assert_eq!(ap.indexer().stats().pairs, 1);
}

// ---------------------------------------------------------------------------------------------
// Garbage
// ---------------------------------------------------------------------------------------------

#[test]
fn garbage_payloads_are_counted_and_leave_the_index_sound() {
    let seeds: Vec<Vec<u8>> = fixtures()
        .iter()
        .flat_map(|(_, fx)| {
            fx["cases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| unhex(c["payload_hex"].as_str().unwrap()))
                .collect::<Vec<_>>()
        })
        .collect();
    for keying in [Keying::Tokens, Keying::Engine] {
        let mut cfg = EventApplierConfig::new(16);
        cfg.keying = keying;
        cfg.max_engine_map_entries = 64;
        if keying == Keying::Engine {
            cfg.hash_algorithm = Some(HashAlgorithm::Sha256);
        }
        let mut ap = EventApplier::new(cfg).unwrap();
        let mut rng = XorShift(0x9e3779b97f4a7c15);
        let (mut ok, mut bad) = (0u64, 0u64);
        for i in 0..6000 {
            let mut p = seeds[rng.below(seeds.len())].clone();
            match i % 4 {
                0 => p.truncate(rng.below(p.len())),
                1 => {
                    for _ in 0..1 + rng.below(4) {
                        let j = rng.below(p.len());
                        p[j] = rng.next() as u8;
                    }
                }
                2 => p = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
                _ => {
                    let j = rng.below(p.len());
                    let k = rng.below(seeds.len());
                    p.splice(j..j, seeds[k][..rng.below(seeds[k].len())].iter().copied());
                }
            }
            let worker = format!("w{}", i % 5);
            match ap.apply_payload(&worker, &p) {
                Ok(_) => ok += 1,
                Err(_) => bad += 1,
            }
            if i % 500 == 0 {
                ap.check_invariants().unwrap();
            }
        }
        ap.check_invariants().unwrap();
        let s = ap.stats();
        assert_eq!(s.malformed_batches, bad);
        assert_eq!(s.batches, ok);
        assert!(bad > 1000 && ok > 100, "{ok} ok, {bad} bad");
        assert_eq!(s.malformed_reasons.values().sum::<u64>(), bad);
        // Still serving correctly afterwards.
        let mut ap2 = applier(keying, 16);
        for a in [&mut ap, &mut ap2] {
            a.remove_worker("fresh");
            apply(
                a,
                "fresh",
                stored_ev(vec![5, 6], None, (0..32).collect(), 16, "GPU"),
                Some(0),
            );
        }
        let q = match keying {
            Keying::Engine => vec![5, 6],
            Keying::Tokens => router_keys(16, &(0..32).collect::<Vec<_>>(), &ExtraKeys::default()),
        };
        assert_eq!(matches(&ap, &q).get(&slot("fresh", 0)), Some(&2));
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------------

/// Payloads of `batch` BlockStored events of one 16-token block each, chained event to event
/// (parent = the previous block), a new root every 64 blocks. Token ids wrap at 150 000, so the
/// blocks repeat after 600 000 (64 chains of 9 375 blocks): of 2^20 stores, 448 576 are second
/// copies of a live block (counted as such, see "Duplicate blocks" in the applier's docs).
fn bench_payloads(batch: usize, total_blocks: usize) -> Vec<Vec<u8>> {
    let h = engine("0", HashAlgorithm::Sha256, 16);
    let mut out = vec![];
    let mut n = 0usize;
    let mut prev: Option<u64> = None;
    let mut digest = *h.none_hash();
    while n < total_blocks {
        let mut events = Vec::with_capacity(batch);
        for _ in 0..batch {
            if n.is_multiple_of(64) {
                prev = None;
                digest = *h.none_hash();
            }
            let tokens: Vec<u32> = (0..16).map(|i| (n * 16 + i) as u32 % 150_000).collect();
            digest = h.block_digest(Some(&digest), &tokens, &BlockExtraKeys::NONE);
            let hash = digest.to_u64();
            events.push(stored_ev(vec![hash], prev, tokens, 16, "GPU"));
            prev = Some(hash);
            n += 1;
        }
        out.push(encode_batch(
            &KvEventBatch {
                ts: n as f64,
                events,
                data_parallel_rank: Some(0),
                skipped: vec![],
            },
            WireFormat::CURRENT,
        ));
    }
    out
}

#[test]
#[ignore = "timing probe; run with --release -- --ignored --nocapture"]
fn apply_throughput() {
    let total = 1 << 20;
    for batch in [1usize, 16, 256] {
        let payloads = bench_payloads(batch, total);
        let bytes: usize = payloads.iter().map(Vec::len).sum();
        for (name, keying, parity) in [
            ("tokens", Keying::Tokens, false),
            ("engine", Keying::Engine, false),
            ("engine+parity", Keying::Engine, true),
        ] {
            let mut cfg = EventApplierConfig::new(16);
            cfg.keying = keying;
            if parity {
                cfg.hash_algorithm = Some(HashAlgorithm::Sha256);
                cfg.hash_seed = Some("0".into());
            }
            let mut ap = EventApplier::new(cfg).unwrap();
            let t = Instant::now();
            for p in &payloads {
                ap.apply_payload("worker-0", p).unwrap();
            }
            let secs = t.elapsed().as_secs_f64();
            let s = ap.stats();
            assert_eq!(
                s.blocks_stored as usize,
                payloads.len() * batch,
                "{:?}",
                s.skipped_reasons
            );
            assert!(!ap.worker_stats("worker-0", 0).unwrap().hash_mismatch);
            println!(
                "batch {batch:>3} {name:<14} {:>6.2} M block events/s ({:>5.1} MB/s, {} blocks, {} duplicates, map {} entries, checked {})",
                s.blocks_stored as f64 / secs / 1e6,
                bytes as f64 / secs / 1e6,
                s.blocks_stored,
                s.duplicate_stores,
                s.map_entries,
                ap.worker_stats("worker-0", 0).unwrap().checked,
            );
        }
    }
}
