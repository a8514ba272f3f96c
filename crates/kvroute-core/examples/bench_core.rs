//! Core microbenchmarks without Node: block hashing per algorithm beside the raw hash function
//! over the very same message bytes, and the indexer (apply rate, find_matches latency, memory).
//! Run: `cargo run --release -p kvroute-core --example bench_core [-- --json]`.
//! `npm run bench:core` runs this and the N-API/TypeScript comparison together.

use std::hint::black_box;
use std::time::Instant;

use kvroute_core::block_keys::RouterKeyer;
use kvroute_core::engine_hash::{serialize_block, EngineHasher, EngineHasherConfig, HashAlgorithm};
use kvroute_core::extra_keys::{BlockExtraKeys, ExtraKeys};
use kvroute_core::indexer::{Indexer, Matches};
use sha2::{Digest as _, Sha256};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

const BLOCK: usize = 16;

/// splitmix64: deterministic, dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Token ids shaped like real text under a 128k vocabulary: mostly small ids, some large.
fn realistic_tokens(n: usize, rng: &mut Rng) -> Vec<u32> {
    (0..n)
        .map(|_| {
            let r = rng.below(100);
            (if r < 60 {
                rng.below(8_000)
            } else if r < 95 {
                rng.below(40_000)
            } else {
                rng.below(128_256)
            }) as u32
        })
        .collect()
}

/// Runs `f` (which processes `units` items) until ~`secs` elapsed; returns items/s.
fn rate(units: usize, secs: f64, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed().as_secs_f64() < secs {
        f();
        n += units;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let mut rows: Vec<(String, f64, String)> = Vec::new();
    let mut rng = Rng(42);
    let blocks = 4096;
    let tokens = realistic_tokens(blocks * BLOCK, &mut rng);
    let none = ExtraKeys::default();
    let mut out = Vec::with_capacity(blocks);

    let router = RouterKeyer::new(BLOCK).unwrap();
    let r = rate(blocks, 0.5, || {
        out.clear();
        router.keys(&tokens, &none, &mut out);
        black_box(&out);
    });
    rows.push(("hash router (XXH3-64 keys)".into(), r, "blocks/s".into()));

    for algorithm in HashAlgorithm::ALL {
        let cfg = EngineHasherConfig {
            block_size: BLOCK,
            algorithm,
            seed: Some("0".into()),
        };
        let hasher = EngineHasher::new(cfg).unwrap();
        let r = rate(blocks, 0.5, || {
            out.clear();
            hasher.hashes(&tokens, &none, &mut out);
            black_box(&out);
        });
        // The exact messages this algorithm hashes, then the raw hash function over them alone.
        let mut messages = Vec::with_capacity(blocks);
        let mut digests = Vec::new();
        hasher.digests(&tokens, &none, &mut digests);
        let mut parent = *hasher.none_hash();
        for (i, block) in tokens.chunks_exact(BLOCK).enumerate() {
            let mut buf = Vec::new();
            serialize_block(
                algorithm,
                parent.as_bytes(),
                block,
                &BlockExtraKeys::NONE,
                &mut buf,
            );
            messages.push(buf);
            parent = digests[i];
        }
        let msg_len = messages[0].len();
        let raw = match algorithm {
            HashAlgorithm::Sha256 | HashAlgorithm::Sha256Cbor => rate(blocks, 0.5, || {
                for m in &messages {
                    black_box(Sha256::digest(m));
                }
            }),
            HashAlgorithm::Xxhash | HashAlgorithm::XxhashCbor => rate(blocks, 0.5, || {
                for m in &messages {
                    black_box(xxh3_128(m));
                }
            }),
        };
        rows.push((format!("hash {algorithm}"), r, "blocks/s".into()));
        let raw_name = if algorithm.is_cryptographic() {
            "SHA-256"
        } else {
            "XXH3-128"
        };
        rows.push((
            format!("  raw {raw_name} over the same {msg_len}-byte messages"),
            raw,
            "msgs/s".into(),
        ));
    }
    let router_msgs: Vec<Vec<u8>> = tokens
        .chunks_exact(BLOCK)
        .map(|b| {
            let mut m = 0u64.to_le_bytes().to_vec();
            b.iter().for_each(|t| m.extend_from_slice(&t.to_le_bytes()));
            m
        })
        .collect();
    let raw = rate(blocks, 0.5, || {
        for m in &router_msgs {
            black_box(xxh3_64(m));
        }
    });
    rows.push((
        format!("  raw XXH3-64 over {}-byte messages", router_msgs[0].len()),
        raw,
        "msgs/s".into(),
    ));

    // Indexer: 2,048 chains of 512 blocks (1M distinct blocks), each on 10 of 64 workers.
    let (chains, chain_len, workers, per_chain) = (2048usize, 512usize, 64usize, 10usize);
    let chain_keys: Vec<Vec<u64>> = (0..chains)
        .map(|_| (0..chain_len).map(|_| rng.next()).collect())
        .collect();
    let names: Vec<String> = (0..workers).map(|w| format!("worker-{w}")).collect();
    let mut index = Indexer::new();
    let start = Instant::now();
    let mut stored = 0usize;
    for chain in &chain_keys {
        for _ in 0..per_chain {
            let w = rng.below(workers as u64) as usize;
            index.apply_stored(&names[w], 0, None, None, chain).unwrap();
            stored += chain.len();
        }
    }
    let apply = stored as f64 / start.elapsed().as_secs_f64();
    rows.push((
        "indexer apply (512-block BlockStored batches)".into(),
        apply,
        "blocks/s".into(),
    ));
    let stats = index.stats();
    rows.push((
        format!(
            "indexer memory at {:.1}M pairs, {:.2}M blocks",
            stats.pairs as f64 / 1e6,
            stats.blocks as f64 / 1e6
        ),
        stats.approx_bytes as f64 / stats.pairs as f64,
        "bytes/pair".into(),
    ));

    let mut matches = Matches::new();
    let mut lat = Vec::with_capacity(20_000);
    for i in 0..20_000 {
        let q = &chain_keys[rng.below(chains as u64) as usize];
        let t = Instant::now();
        index.find_matches(q, &mut matches);
        lat.push(t.elapsed().as_nanos() as f64 / 1000.0);
        black_box(matches.len());
        if i == 0 {
            lat.clear();
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rows.push((
        "indexer find_matches 512-block query p50".into(),
        percentile(&lat, 0.5),
        "µs".into(),
    ));
    rows.push((
        "indexer find_matches 512-block query p99".into(),
        percentile(&lat, 0.99),
        "µs".into(),
    ));

    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|(name, v, unit)| format!("{{\"name\":{name:?},\"value\":{v},\"unit\":{unit:?}}}"))
            .collect();
        println!("[{}]", items.join(","));
    } else {
        println!("{:<58} {:>14}  unit", "rust core (one thread)", "value");
        for (name, v, unit) in rows {
            println!("{name:<58} {v:>14.2}  {unit}");
        }
    }
}
