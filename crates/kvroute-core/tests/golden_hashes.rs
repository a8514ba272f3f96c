//! Engine keying against golden vectors made by vLLM's own code
//! (fixtures/golden/block_hashes.json, from scripts/golden/make-block-hashes.sh), and router-key
//! properties.

use std::collections::HashMap;
use std::time::Instant;

use kvroute_core::block_keys::{RouterKeyer, ROOT_KEY};
use kvroute_core::engine_hash::{
    digest_to_u64, none_hash_for_seed, serialize_block, Digest, EngineHasher, EngineHasherConfig,
    HashAlgorithm,
};
use kvroute_core::extra_keys::{
    BlockExtraKeys, BlockMm, ExtraKeys, LoraKey, MmBlockKey, MmFeature,
};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/golden/block_hashes.json"
    );
    let text = std::fs::read_to_string(path).expect("read golden fixture");
    serde_json::from_str(&text).expect("parse golden fixture")
}

/// Expands the fixture's compact forms: {"repeat": c, "count": n} and {"range": [a, b]}.
fn string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let c = o["repeat"].as_str().unwrap();
            c.repeat(o["count"].as_u64().unwrap() as usize)
        }
        _ => panic!("not a string: {v}"),
    }
}

fn opt_string(v: &Value) -> Option<String> {
    if v.is_null() {
        None
    } else {
        Some(string(v))
    }
}

fn tokens(v: &Value) -> Vec<u32> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|t| u32::try_from(t.as_u64().unwrap()).unwrap())
            .collect(),
        Value::Object(o) => {
            let r = o["range"].as_array().unwrap();
            (r[0].as_u64().unwrap() as u32..r[1].as_u64().unwrap() as u32).collect()
        }
        _ => panic!("not tokens: {v}"),
    }
}

struct Input {
    tokens: Vec<u32>,
    extra: ExtraKeys,
}

fn inputs(doc: &Value) -> HashMap<String, Input> {
    let mut map = HashMap::new();
    for inp in doc["inputs"].as_array().unwrap() {
        let mm = inp["mm"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                MmFeature::new(
                    string(&f["identifier"]),
                    f["offset"].as_u64().unwrap() as usize,
                    f["length"].as_u64().unwrap() as usize,
                )
            })
            .collect();
        let extra = ExtraKeys {
            prompt_embeds: Vec::new(),
            lora_name: opt_string(&inp["lora_name"]),
            lora_path: opt_string(&inp["lora_path"]),
            cache_salt: opt_string(&inp["cache_salt"]),
            mm,
        };
        map.insert(
            inp["id"].as_str().unwrap().to_string(),
            Input {
                tokens: tokens(&inp["tokens"]),
                extra,
            },
        );
    }
    map
}

fn algorithm(v: &Value) -> HashAlgorithm {
    v.as_str().unwrap().parse().unwrap()
}

fn hasher(algorithm: HashAlgorithm, seed: &Value, block_size: usize) -> EngineHasher {
    EngineHasher::new(EngineHasherConfig {
        block_size,
        algorithm,
        seed: opt_string(seed),
    })
    .unwrap()
}

/// vLLM's per-block extra keys in the fixture's JSON shape.
fn block_keys_json(b: &BlockExtraKeys<'_>) -> Value {
    if b.is_empty() {
        return Value::Null;
    }
    let mut v = Vec::new();
    if let Some(l) = b.lora {
        v.push(serde_json::json!(["lora", l.name, l.path]));
    }
    for (id, off) in b.mm_keys() {
        v.push(serde_json::json!(["mm", id, off]));
    }
    if let Some(s) = b.cache_salt {
        v.push(serde_json::json!(["cache_salt", s]));
    }
    Value::Array(v)
}

#[test]
fn fixture_metadata_and_algorithms() {
    let doc = fixture();
    assert!(!doc["vllm_version"].as_str().unwrap().is_empty());
    let names: Vec<&str> = doc["algorithms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let ours: Vec<&str> = HashAlgorithm::ALL.iter().map(|a| a.as_str()).collect();
    assert_eq!(
        names, ours,
        "vLLM's --prefix-caching-hash-algo values changed"
    );
    assert_eq!(
        doc["default_none_hash_seed"].as_str().unwrap(),
        kvroute_core::engine_hash::DEFAULT_NONE_HASH_SEED
    );
}

#[test]
fn none_hashes_match_vllm() {
    let doc = fixture();
    let mut checked = 0;
    for e in doc["none_hashes"].as_array().unwrap() {
        let algo = algorithm(&e["algorithm"]);
        let cfg = EngineHasherConfig {
            block_size: 16,
            algorithm: algo,
            seed: opt_string(&e["seed"]),
        };
        if e["random"].as_bool().unwrap() {
            // vLLM drew random bytes: we must refuse rather than invent a value.
            assert!(EngineHasher::new(cfg).is_err(), "{e}");
            continue;
        }
        let want = e["none_hash"].as_str().unwrap();
        assert_eq!(
            EngineHasher::new(cfg).unwrap().none_hash().to_hex(),
            want,
            "{e}"
        );
        let resolved = e["resolved_seed"].as_str().unwrap();
        assert_eq!(none_hash_for_seed(algo, resolved).to_hex(), want);
        checked += 1;
    }
    assert!(checked >= 20);
}

#[test]
fn every_case_matches_vllm() {
    let doc = fixture();
    let inputs = inputs(&doc);
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() > 400);
    let mut blocks_checked = 0;
    for case in cases {
        let inp = &inputs[case["input"].as_str().unwrap()];
        let algo = algorithm(&case["algorithm"]);
        let bs = case["block_size"].as_u64().unwrap() as usize;
        let h = hasher(algo, &case["seed"], bs);
        let want_hex: Vec<&str> = case["digests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap())
            .collect();
        let want_u64: Vec<u64> = case["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            want_hex.len(),
            inp.tokens.len() / bs,
            "partial blocks have no hash"
        );

        let mut digests = Vec::new();
        h.digests(&inp.tokens, &inp.extra, &mut digests);
        let got_hex: Vec<String> = digests.iter().map(|d| d.to_hex()).collect();
        assert_eq!(
            got_hex, want_hex,
            "case {} {algo} seed={} bs={bs}",
            case["input"], case["seed"]
        );

        let mut hashes = vec![u64::MAX]; // appends, never clears
        h.hashes(&inp.tokens, &inp.extra, &mut hashes);
        assert_eq!(&hashes[1..], &want_u64[..]);
        for (d, u) in digests.iter().zip(&want_u64) {
            assert_eq!(digest_to_u64(d), *u);
            assert_eq!(d.len(), algo.digest_len());
        }

        // Block by block, resuming at any block with ExtraKeys::block_at, gives the same chain.
        let mut parent: Option<Digest> = None;
        for (i, want) in digests.iter().enumerate() {
            let keys = inp.extra.block_at(i, bs);
            let d = h.block_digest(parent.as_ref(), &inp.tokens[i * bs..(i + 1) * bs], &keys);
            assert_eq!(d, *want, "block {i} of {}", case["input"]);
            parent = Some(d);
        }
        blocks_checked += digests.len();
    }
    assert!(blocks_checked > 5_000, "{blocks_checked}");
}

#[test]
fn per_block_extra_keys_match_vllm() {
    let doc = fixture();
    let inputs = inputs(&doc);
    for entry in doc["extra_keys"].as_array().unwrap() {
        let inp = &inputs[entry["input"].as_str().unwrap()];
        let bs = entry["block_size"].as_u64().unwrap() as usize;
        let want = entry["blocks"].as_array().unwrap();
        let got: Vec<Value> = inp
            .extra
            .blocks(bs, inp.tokens.len())
            .map(|b| block_keys_json(&b))
            .collect();
        assert_eq!(&got, want, "{} bs={bs}", entry["input"]);
    }
}

#[test]
fn serialized_bytes_match_vllm() {
    let doc = fixture();
    for enc in doc["encodings"].as_array().unwrap() {
        let parent = Digest::from_hex(enc["parent"].as_str().unwrap()).unwrap();
        let toks = tokens(&enc["tokens"]);
        let mut lora = None;
        let mut mm = Vec::new();
        let mut salt = None;
        if let Some(keys) = enc["extra_keys"].as_array() {
            for k in keys {
                let k = k.as_array().unwrap();
                match k[0].as_str().unwrap() {
                    "lora" => lora = Some((string(&k[1]), string(&k[2]))),
                    "mm" => mm.push(MmBlockKey {
                        identifier: string(&k[1]),
                        offset: k[2].as_i64().unwrap(),
                    }),
                    "cache_salt" => salt = Some(string(&k[1])),
                    other => panic!("unknown extra key {other}"),
                }
            }
        }
        let extra = BlockExtraKeys {
            lora: lora.as_ref().map(|(n, p)| LoraKey { name: n, path: p }),
            mm: if mm.is_empty() {
                BlockMm::None
            } else {
                BlockMm::Keys(&mm)
            },
            cache_salt: salt.as_deref(),
            prompt_embeds: None,
        };
        for algo in HashAlgorithm::ALL {
            let mut bytes = Vec::new();
            serialize_block(algo, parent.as_bytes(), &toks, &extra, &mut bytes);
            let (hex_key, len_key) = if algo.as_str().ends_with("cbor") {
                ("cbor", "cbor_len")
            } else {
                ("pickle", "pickle_len")
            };
            assert_eq!(
                bytes.len() as u64,
                enc[len_key].as_u64().unwrap(),
                "{algo} {enc}"
            );
            if let Some(want) = enc[hex_key].as_str() {
                let got: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(got, want, "{algo}");
            }
            let h = EngineHasher::with_none_hash(toks.len(), algo, parent).unwrap();
            let d = h.block_digest(Some(&parent), &toks, &extra);
            assert_eq!(d.to_hex(), enc[algo.as_str()].as_str().unwrap(), "{algo}");
        }
    }
}

// ------------------------------------------------------------------------------------------
// Router keys
// ------------------------------------------------------------------------------------------

fn router_keys(bs: usize, tokens: &[u32], extra: &ExtraKeys) -> Vec<u64> {
    let mut out = Vec::new();
    RouterKeyer::new(bs).unwrap().keys(tokens, extra, &mut out);
    out
}

#[test]
fn router_keys_are_deterministic_and_chained() {
    let doc = fixture();
    let inputs = inputs(&doc);
    let a = &inputs["prefix-a"];
    let b = &inputs["prefix-b"];
    for bs in [16, 32] {
        let ka = router_keys(bs, &a.tokens, &a.extra);
        assert_eq!(ka, router_keys(bs, &a.tokens, &a.extra));
        let kb = router_keys(bs, &b.tokens, &b.extra);
        let shared = 64 / bs;
        assert_eq!(ka[..shared], kb[..shared], "equal prefixes give equal keys");
        assert!(ka[shared..].iter().zip(&kb[shared..]).all(|(x, y)| x != y));
        // A prefix of the tokens gives a prefix of the keys; a partial block adds nothing.
        let cut = 2 * bs + bs / 2;
        assert_eq!(router_keys(bs, &a.tokens[..cut], &a.extra), ka[..2]);
        // block_key chains like keys().
        let k = RouterKeyer::new(bs).unwrap();
        let mut parent = None;
        for (i, want) in ka.iter().enumerate() {
            let got = k.block_key(
                parent,
                &a.tokens[i * bs..(i + 1) * bs],
                &BlockExtraKeys::NONE,
            );
            assert_eq!(got, *want);
            parent = Some(got);
        }
        assert_ne!(ka[0], ROOT_KEY);
    }
}

#[test]
fn router_keys_follow_extra_keys() {
    let doc = fixture();
    let inputs = inputs(&doc);
    let base = router_keys(16, &inputs["salt-empty"].tokens, &ExtraKeys::default());
    // An empty salt is no salt.
    let e = &inputs["salt-empty"];
    assert_eq!(router_keys(16, &e.tokens, &e.extra), base);
    // A salt changes the first block, hence every key after it.
    let s = &inputs["salt"];
    let ks = router_keys(16, &s.tokens, &s.extra);
    assert!(ks.iter().zip(&base).all(|(x, y)| x != y));
    // A different salt gives different keys; the same salt the same keys.
    let mut other = s.extra.clone();
    other.cache_salt = Some("tenant-other".into());
    let ko = router_keys(16, &s.tokens, &other);
    assert!(ko.iter().zip(&ks).all(|(x, y)| x != y));
    assert_eq!(router_keys(16, &s.tokens, &s.extra.clone()), ks);
    // The salt's effect is only through the first block: re-chaining blocks 1.. from the salted
    // first key with no extras reproduces the salted keys.
    let k = RouterKeyer::new(16).unwrap();
    let mut parent = ks[0];
    for (i, want) in ks.iter().enumerate().skip(1) {
        parent = k.block_key(
            Some(parent),
            &s.tokens[i * 16..(i + 1) * 16],
            &BlockExtraKeys::NONE,
        );
        assert_eq!(parent, *want);
    }
    // LoRA: name matters, path does not (events carry only the name).
    let l = &inputs["lora"];
    let kl = router_keys(16, &l.tokens, &l.extra);
    assert!(kl.iter().zip(&base).all(|(x, y)| x != y));
    let mut other_path = l.extra.clone();
    other_path.lora_path = Some("/elsewhere".into());
    assert_eq!(router_keys(16, &l.tokens, &other_path), kl);
    // Multimodal: keys before the first placeholder block stay, later ones change.
    let m = &inputs["mm-mixed"];
    let plain = router_keys(16, &m.tokens, &ExtraKeys::default());
    let km = router_keys(16, &m.tokens, &m.extra);
    let mut late = m.extra.clone();
    late.mm.retain(|f| f.offset >= 64);
    let kl = router_keys(16, &m.tokens, &late);
    assert_eq!(kl[..4], plain[..4]);
    assert_ne!(kl[4], plain[4]);
    assert_ne!(km[0], plain[0]);
}

#[test]
fn router_keys_from_event_shaped_extras_equal_request_keys() {
    let doc = fixture();
    let inputs = inputs(&doc);
    for id in ["mm-mixed", "mm-lora-salt", "lora-salt", "one-char-extras"] {
        let inp = &inputs[id];
        for bs in [4, 16, 32] {
            let want = router_keys(bs, &inp.tokens, &inp.extra);
            let k = RouterKeyer::new(bs).unwrap();
            let mut parent = None;
            for (i, b) in inp.extra.blocks(bs, inp.tokens.len()).enumerate() {
                // As an event carries them: lora name, (identifier, offset) pairs, salt.
                let pairs: Vec<MmBlockKey> = b
                    .mm_keys()
                    .map(|(id, off)| MmBlockKey {
                        identifier: id.to_string(),
                        offset: off,
                    })
                    .collect();
                let ev = BlockExtraKeys {
                    lora: b.lora.map(|l| LoraKey {
                        name: l.name,
                        path: "",
                    }),
                    mm: if pairs.is_empty() {
                        BlockMm::None
                    } else {
                        BlockMm::Keys(&pairs)
                    },
                    cache_salt: b.cache_salt,
                    prompt_embeds: None,
                };
                let key = k.block_key(parent, &inp.tokens[i * bs..(i + 1) * bs], &ev);
                assert_eq!(key, want[i], "{id} bs={bs} block {i}");
                parent = Some(key);
            }
        }
    }
}

/// Rough single-core throughput. Run:
/// `cargo test --release -p kvroute-core --test golden_hashes -- --ignored --nocapture`
#[test]
#[ignore]
fn throughput() {
    let n_blocks = 400_000usize;
    for bs in [16usize, 32] {
        let mut x = 12345u64;
        let tokens: Vec<u32> = (0..n_blocks * bs)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 200_000) as u32
            })
            .collect();
        let extra = ExtraKeys::default();
        for algo in HashAlgorithm::ALL {
            let h = EngineHasher::new(EngineHasherConfig {
                block_size: bs,
                algorithm: algo,
                seed: Some("0".into()),
            })
            .unwrap();
            let mut out = Vec::with_capacity(n_blocks);
            h.hashes(&tokens, &extra, &mut out); // warm up
            out.clear();
            let t = Instant::now();
            h.hashes(&tokens, &extra, &mut out);
            let rate = n_blocks as f64 / t.elapsed().as_secs_f64() / 1e6;
            println!("engine {algo:<12} bs={bs}: {rate:6.2} M blocks/s");
        }
        let k = RouterKeyer::new(bs).unwrap();
        let mut out = Vec::with_capacity(n_blocks);
        k.keys(&tokens, &extra, &mut out);
        out.clear();
        let t = Instant::now();
        k.keys(&tokens, &extra, &mut out);
        let rate = n_blocks as f64 / t.elapsed().as_secs_f64() / 1e6;
        println!("router keys         bs={bs}: {rate:6.2} M blocks/s");
    }
}
