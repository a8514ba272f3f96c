//! Timing of the indexer at fleet scale. Ignored by default; run in release:
//!
//! ```text
//! cargo test --release -p kvroute-core --test indexer_timing -- --ignored --nocapture
//! ```
//!
//! Scenario: 64 workers; 2048 documents of 512 blocks, each starting with one of 64 shared
//! 32-block system prompts (≈ 1M distinct blocks); each document cached on 10 random workers
//! (≈ 10M (block, worker) pairs), stored in 64-block events in random order. Queries are whole
//! 512-block documents (every holder matches to the end: the longest walk), half-hits (256 blocks
//! then unknown keys) and misses. Targets (2-core box): apply ≥ 10M blocks/s, 512-block
//! find_matches p50 ≤ 10 µs and p99 ≤ 40 µs, ≤ 48 bytes per pair.

use std::time::Instant;

use kvroute_core::indexer::{Indexer, Matches};

mod common;
use common::Rng;

struct Scenario {
    name: &'static str,
    workers: usize,
    /// Percent of holdings stored on the CPU tier instead of GPU.
    cpu_pct: usize,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

fn run(sc: &Scenario) {
    const DOCS: usize = 2048;
    const DOC_BLOCKS: usize = 512;
    const PROMPTS: usize = 64;
    const PROMPT_BLOCKS: usize = 32;
    const REPLICAS: usize = 10;
    const EVENT: usize = 64;

    let mut rng = Rng(42);
    let prompts: Vec<Vec<u64>> = (0..PROMPTS)
        .map(|_| (0..PROMPT_BLOCKS).map(|_| rng.next()).collect())
        .collect();
    let docs: Vec<Vec<u64>> = (0..DOCS)
        .map(|d| {
            let mut v = prompts[d % PROMPTS].clone();
            v.extend((PROMPT_BLOCKS..DOC_BLOCKS).map(|_| rng.next()));
            v
        })
        .collect();
    let names: Vec<String> = (0..sc.workers)
        .map(|i| format!("vllm-worker-{i:03}"))
        .collect();
    // (doc, worker, event index) in random order, as events from a busy fleet would interleave.
    let mut events: Vec<(u32, u16, u16)> = Vec::new();
    for d in 0..DOCS {
        let mut ws: Vec<usize> = Vec::new();
        while ws.len() < REPLICAS.min(sc.workers) {
            let w = rng.below(sc.workers);
            if !ws.contains(&w) {
                ws.push(w);
            }
        }
        for w in ws {
            for e in 0..DOC_BLOCKS / EVENT {
                events.push((d as u32, w as u16, e as u16));
            }
        }
    }
    for i in (1..events.len()).rev() {
        events.swap(i, rng.below(i + 1));
    }
    // A worker stores a document's events in order (the parent first): renumber each
    // (doc, worker) run's events in order of appearance.
    let mut next: std::collections::HashMap<(u32, u16), u16> = Default::default();
    for ev in events.iter_mut() {
        let n = next.entry((ev.0, ev.1)).or_default();
        ev.2 = *n;
        *n += 1;
    }

    let mut ix = Indexer::new();
    let t0 = Instant::now();
    let mut stored = 0u64;
    for &(d, w, e) in &events {
        let a = e as usize * EVENT;
        let keys = &docs[d as usize][a..a + EVENT];
        let parent = a.checked_sub(1).map(|p| docs[d as usize][p]);
        let medium = if (d as usize * 31 + w as usize) % 100 < sc.cpu_pct {
            Some("CPU")
        } else {
            None
        };
        ix.apply_stored(&names[w as usize], 0, medium, parent, keys)
            .unwrap();
        stored += keys.len() as u64;
    }
    let apply = t0.elapsed();
    let st = ix.stats();

    let mut m = Matches::new();
    let mut time_queries = |label: &str, make: &mut dyn FnMut(&mut Rng) -> Vec<u64>| {
        let qs: Vec<Vec<u64>> = (0..20_000).map(|_| make(&mut rng)).collect();
        // Warm the output buffer.
        ix.find_matches(&qs[0], &mut m);
        let mut ns = Vec::with_capacity(qs.len());
        let (mut holders, mut blocks) = (0u64, 0u64);
        for q in &qs {
            let t = Instant::now();
            ix.find_matches(q, &mut m);
            ns.push(t.elapsed().as_nanos() as u64);
            holders += m.len() as u64;
            blocks += m.max_blocks() as u64;
        }
        ns.sort_unstable();
        println!(
            "  {label:<28} p50 {:>6.2} µs  p90 {:>6.2} µs  p99 {:>6.2} µs  max {:>7.1} µs  (avg {:.1} holders, {:.0} blocks)",
            percentile(&ns, 0.5),
            percentile(&ns, 0.9),
            percentile(&ns, 0.99),
            *ns.last().unwrap() as f64 / 1000.0,
            holders as f64 / qs.len() as f64,
            blocks as f64 / qs.len() as f64,
        );
    };

    println!(
        "[{}] {} workers: {} blocks, {} pairs, {} tiers; apply {:.1}M blocks/s ({} stored in {:.2?}); \
         {:.0} MB = {:.1} bytes/pair, {:.1} bytes/block",
        sc.name,
        sc.workers,
        st.blocks,
        st.pairs,
        st.tiers,
        stored as f64 / apply.as_secs_f64() / 1e6,
        stored,
        apply,
        st.approx_bytes as f64 / 1e6,
        st.approx_bytes as f64 / st.pairs as f64,
        st.approx_bytes as f64 / st.blocks as f64,
    );
    time_queries("512-block full hit", &mut |r| docs[r.below(DOCS)].clone());
    time_queries("256 hit + 256 unknown", &mut |r| {
        let mut q = docs[r.below(DOCS)][..256].to_vec();
        q.extend((0..256).map(|_| r.next()));
        q
    });
    time_queries("512 unknown (miss)", &mut |r| {
        (0..512).map(|_| r.next()).collect()
    });

    // Removal: evict every document's tail on all its holders, then check the footprint shrank.
    let t0 = Instant::now();
    let mut removed = 0u64;
    for &(d, w, e) in &events {
        if e as usize >= DOC_BLOCKS / EVENT / 2 {
            let a = e as usize * EVENT;
            let medium = if (d as usize * 31 + w as usize) % 100 < sc.cpu_pct {
                Some("CPU")
            } else {
                None
            };
            ix.apply_removed(
                &names[w as usize],
                0,
                medium,
                &docs[d as usize][a..a + EVENT],
            );
            removed += EVENT as u64;
        }
    }
    let rm = t0.elapsed();
    let st2 = ix.stats();
    println!(
        "  remove {:.1}M blocks/s; after evicting half: {} blocks, {} pairs, {:.0} MB ({:.1} bytes/pair), removes_unknown {}",
        removed as f64 / rm.as_secs_f64() / 1e6,
        st2.blocks,
        st2.pairs,
        st2.approx_bytes as f64 / 1e6,
        st2.approx_bytes as f64 / st2.pairs as f64,
        st2.removes_unknown,
    );
    let t0 = Instant::now();
    ix.remove_worker(&names[0]);
    println!("  remove_worker: {:.2?}", t0.elapsed());
}

#[test]
#[ignore]
fn timing_1m_blocks_64_workers() {
    run(&Scenario {
        name: "A: GPU only",
        workers: 64,
        cpu_pct: 0,
    });
}

#[test]
#[ignore]
fn timing_variants() {
    run(&Scenario {
        name: "B: 30% on CPU tier",
        workers: 64,
        cpu_pct: 30,
    });
    run(&Scenario {
        name: "C: 256 workers",
        workers: 256,
        cpu_pct: 0,
    });
}
