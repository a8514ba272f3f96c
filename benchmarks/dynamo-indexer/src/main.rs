//! kvroute's indexer beside Dynamo's two (dynamo-kv-router 1.6.1: `RadixTree` and
//! `ConcurrentRadixTreeCompressed`), fed the very same events, on one thread each for lookups.
//!
//! Scenarios:
//! - a 1M-block, 64-worker build (2,048 chains of 512 blocks, each on 10 workers), then 512-block
//!   full hits and partial hits (256 held blocks, then 256 unknown ones);
//! - the Mooncake conversation trace at 16- and 512-token blocks, 8 workers with LRU caches
//!   (26,000 blocks of 16 tokens each, 812 of 512): requests routed to the worker with the longest
//!   cached prefix, evictions leaf first as vLLM's free queue does; one lookup per request, then
//!   the request's events.
//!
//! Every lookup's answer (worker → blocks of prefix overlap) is compared across the three indexers
//! and the run fails if one differs. Writes are timed in a separate write-only pass (Dynamo's
//! concurrent tree applies events on its own thread, fed through its channel: the pass ends when it
//! acknowledges the last one). Memory is the heap the indexer holds at the end of the write pass,
//! counted by this process's allocator, per live (block, worker) pair.
//!
//! Usage: `dynamo-indexer-bench [--trace PATH] [--quick] [--only-kvroute]` (the last to profile
//! kvroute alone: its columns are then repeated in Dynamo's). `--trace PATH --write-rounds N`
//! only times the Mooncake write passes, N rounds of kvroute and Dynamo's RadixTree alternately
//! (the write path's A/B loop; the concurrent tree is left out).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dynamo_kv_router::indexer::concurrent_radix_tree_compressed::ConcurrentRadixTreeCompressed;
use dynamo_kv_router::indexer::{RadixTree, SyncIndexer, WorkerTask};
use dynamo_kv_router::protocols::{
    ExternalSequenceBlockHash, KvCacheEvent, KvCacheEventData, KvCacheRemoveData, KvCacheStoreData,
    KvCacheStoredBlockData, LocalBlockHash, RouterEvent,
};
use kvroute_core::indexer::{Indexer, Matches};

// ---------------------------------------------------------------- allocation counting

struct Counting;
static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        ALLOCATED.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCATED.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// This process's CPU time in seconds (all threads: Dynamo's concurrent tree writes on its own).
fn cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer to a local.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn heap() -> isize {
    ALLOCATED.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------- workload

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone)]
enum Ev {
    Stored {
        worker: u64,
        parent: Option<u64>,
        keys: Vec<u64>,
    },
    Removed {
        worker: u64,
        keys: Vec<u64>,
    },
}

impl Ev {
    fn blocks(&self) -> usize {
        match self {
            Ev::Stored { keys, .. } | Ev::Removed { keys, .. } => keys.len(),
        }
    }
}

/// One step of a scenario: a lookup, or an event.
enum Step {
    Query(Vec<u64>),
    Event(Ev),
}

/// A sorted answer: (worker, blocks).
type Answer = Vec<(u64, u32)>;

// ---------------------------------------------------------------- the three indexers

trait Subject {
    fn name(&self) -> &'static str;
    fn apply(&mut self, ev: &Ev);
    /// Waits until every applied event is visible to lookups.
    fn sync(&mut self) {}
    /// Prints the structure's shape at the end of the write pass (kvroute only).
    fn describe(&self, _pairs: u64) {}
    /// Times one lookup; returns (ns, answer).
    fn lookup(&mut self, q: &[u64]) -> (f64, Answer);
}

struct Kvroute {
    ix: Indexer,
    m: Matches,
    names: &'static [String],
}

/// Worker names, made once (outside the memory measured).
fn names() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| (0..256).map(|w| format!("w{w}")).collect())
}

impl Kvroute {
    fn new() -> Self {
        Kvroute {
            ix: Indexer::new(),
            m: Matches::new(),
            names: names(),
        }
    }
}

impl Subject for Kvroute {
    fn name(&self) -> &'static str {
        "kvroute"
    }
    fn apply(&mut self, ev: &Ev) {
        match ev {
            Ev::Stored {
                worker,
                parent,
                keys,
            } => self
                .ix
                .apply_stored(&self.names[*worker as usize], 0, None, *parent, keys)
                .unwrap(),
            Ev::Removed { worker, keys } => {
                self.ix
                    .apply_removed(&self.names[*worker as usize], 0, None, keys)
            }
        }
    }
    fn describe(&self, pairs: u64) {
        let (used, live, arena, index, compactions, rehashes) = self.ix.table_shape();
        eprintln!(
            "  kvroute table: {live} live blocks for {pairs} pairs, {used} used and {arena} allocated arena blocks, {index} index slots; {compactions} compactions, {rehashes} index rebuilds"
        );
    }
    fn lookup(&mut self, q: &[u64]) -> (f64, Answer) {
        let t = Instant::now();
        self.ix.find_matches(q, &mut self.m);
        let ns = t.elapsed().as_nanos() as f64;
        let mut a: Answer = self
            .m
            .entries()
            .iter()
            .map(|e| {
                let (w, _) = self.ix.slot_worker(e.slot);
                (w[1..].parse().unwrap(), e.blocks)
            })
            .collect();
        a.sort_unstable();
        (ns, a)
    }
}

fn router_event(ev: &Ev, id: u64) -> RouterEvent {
    let (worker, data) = match ev {
        Ev::Stored {
            worker,
            parent,
            keys,
        } => (
            *worker,
            KvCacheEventData::Stored(KvCacheStoreData {
                parent_hash: parent.map(ExternalSequenceBlockHash),
                start_position: None,
                blocks: keys
                    .iter()
                    .map(|&k| KvCacheStoredBlockData {
                        block_hash: ExternalSequenceBlockHash(k),
                        // Dynamo's trees walk by the block's own (local) hash; the chained key
                        // is unique per prefix, so it serves as both.
                        tokens_hash: LocalBlockHash(k),
                        mm_extra_info: None,
                    })
                    .collect(),
            }),
        ),
        Ev::Removed { worker, keys } => (
            *worker,
            KvCacheEventData::Removed(KvCacheRemoveData {
                block_hashes: keys.iter().map(|&k| ExternalSequenceBlockHash(k)).collect(),
            }),
        ),
    };
    RouterEvent::new(
        worker,
        KvCacheEvent {
            event_id: id,
            data,
            dp_rank: 0,
        },
    )
}

fn answer_of(scores: &dynamo_kv_router::protocols::OverlapScores) -> Answer {
    let mut a: Answer = scores
        .scores
        .iter()
        .filter(|(_, &b)| b > 0)
        .map(|(w, &b)| (w.worker_id, b))
        .collect();
    a.sort_unstable();
    a
}

struct DynRadix {
    tree: RadixTree,
    id: u64,
}

impl Subject for DynRadix {
    fn name(&self) -> &'static str {
        "Dynamo RadixTree"
    }
    fn apply(&mut self, ev: &Ev) {
        self.id += 1;
        let e = router_event(ev, self.id);
        self.tree.apply_event(e).ok();
    }
    fn lookup(&mut self, q: &[u64]) -> (f64, Answer) {
        let seq: Vec<LocalBlockHash> = q.iter().map(|&k| LocalBlockHash(k)).collect();
        let t = Instant::now();
        let s = self.tree.find_matches(seq, false);
        let ns = t.elapsed().as_nanos() as f64;
        (ns, answer_of(&s))
    }
}

struct DynConcurrent {
    tree: Arc<ConcurrentRadixTreeCompressed>,
    tx: Option<flume::Sender<WorkerTask>>,
    thread: Option<std::thread::JoinHandle<()>>,
    id: u64,
}

impl DynConcurrent {
    fn new() -> Self {
        let tree = Arc::new(ConcurrentRadixTreeCompressed::new());
        let (tx, rx) = flume::unbounded();
        let t2 = tree.clone();
        let thread = std::thread::spawn(move || {
            t2.worker(rx, None).unwrap();
        });
        DynConcurrent {
            tree,
            tx: Some(tx),
            thread: Some(thread),
            id: 0,
        }
    }
}

impl Drop for DynConcurrent {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

impl Subject for DynConcurrent {
    fn name(&self) -> &'static str {
        "Dynamo concurrent tree"
    }
    fn apply(&mut self, ev: &Ev) {
        self.id += 1;
        let e = router_event(ev, self.id);
        self.tx
            .as_ref()
            .unwrap()
            .send(WorkerTask::Event(e))
            .unwrap();
    }
    fn sync(&mut self) {
        // An acknowledged no-op (an empty removal) marks the point where all is applied.
        self.id += 1;
        let (resp, rx) = tokio::sync::oneshot::channel();
        let e = router_event(
            &Ev::Removed {
                worker: 0,
                keys: vec![],
            },
            self.id,
        );
        self.tx
            .as_ref()
            .unwrap()
            .send(WorkerTask::EventWithAck { event: e, resp })
            .unwrap();
        rx.blocking_recv().ok();
    }
    fn lookup(&mut self, q: &[u64]) -> (f64, Answer) {
        let seq: Vec<LocalBlockHash> = q.iter().map(|&k| LocalBlockHash(k)).collect();
        let t = Instant::now();
        let s = self.tree.find_matches(&seq, false);
        let ns = t.elapsed().as_nanos() as f64;
        (ns, answer_of(&s))
    }
}

fn make(i: usize) -> Box<dyn Subject> {
    match i {
        0 => Box::new(Kvroute::new()),
        1 => Box::new(DynRadix {
            tree: RadixTree::new(),
            id: 0,
        }),
        3 => Box::new(Flat(HashMap::default())),
        _ => Box::new(DynConcurrent::new()),
    }
}
/// `--write-rounds` only: a flat `HashMap` from key to holder bits (hashbrown, the same
/// multiplicative hash as kvroute's): one hash-table operation per block and nothing else, the
/// floor of a write with no structure for prefix lookups.
struct Flat(HashMap<u64, u64, std::hash::BuildHasherDefault<IdH>>);
#[derive(Default)]
struct IdH(u64);
impl std::hash::Hasher for IdH {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!()
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (x ^ (x >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
impl Subject for Flat {
    fn name(&self) -> &'static str {
        "flat"
    }
    fn apply(&mut self, ev: &Ev) {
        match ev {
            Ev::Stored { worker, keys, .. } => {
                for k in keys {
                    *self.0.entry(*k).or_insert(0) |= 1 << worker;
                }
            }
            Ev::Removed { worker, keys } => {
                for k in keys {
                    if let Some(v) = self.0.get_mut(k) {
                        *v &= !(1 << worker);
                        if *v == 0 {
                            self.0.remove(k);
                        }
                    }
                }
            }
        }
    }
    fn lookup(&mut self, _q: &[u64]) -> (f64, Answer) {
        unimplemented!()
    }
}

// ---------------------------------------------------------------- measurement

#[derive(Default, Clone)]
struct Result_ {
    writes_per_s: f64,
    /// Writes per second of the process's CPU time (steadier than wall time on a busy machine).
    writes_per_cpu_s: f64,
    bytes_per_pair: f64,
    /// Per query class: sorted latencies in µs.
    lat: Vec<Vec<f64>>,
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A scenario's events (its lookups left out) and how many block operations they hold.
fn events_of(steps: &[Step]) -> (Vec<&Ev>, usize) {
    let events: Vec<&Ev> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    let blocks = events.iter().map(|e| e.blocks()).sum();
    (events, blocks)
}

/// Runs a scenario on every indexer: a write-only pass (timed, then memory), and the lookup pass
/// (steps in order; each query is timed and its answer kept). `class(i)` names the query class of
/// the i-th query. Returns the results and whether all answers agreed.
fn run(
    steps: &[Step],
    pairs: u64,
    classes: usize,
    class: &dyn Fn(usize) -> usize,
) -> (Vec<Result_>, usize, usize) {
    let (events, blocks) = events_of(steps);
    let mut results = Vec::new();
    let mut answers: Vec<Vec<Answer>> = Vec::new();
    let only_kvroute = std::env::args().any(|a| a == "--only-kvroute");
    for i in 0..if only_kvroute { 1 } else { 3 } {
        let mut r = Result_ {
            lat: vec![Vec::new(); classes],
            ..Default::default()
        };
        {
            let before = heap();
            let mut s = make(i);
            let t = Instant::now();
            let c = cpu_s();
            for (j, e) in events.iter().enumerate() {
                s.apply(e);
                // Keeps the concurrent tree's channel short (its queued events are memory).
                if j % 64 == 63 {
                    s.sync();
                }
            }
            s.sync();
            r.writes_per_s = blocks as f64 / t.elapsed().as_secs_f64();
            r.writes_per_cpu_s = blocks as f64 / (cpu_s() - c);
            s.describe(pairs);
            r.bytes_per_pair = (heap() - before) as f64 / pairs as f64;
        }
        let mut s = make(i);
        let mut mine = Vec::new();
        let mut synced = true;
        for step in steps {
            match step {
                Step::Event(e) => {
                    s.apply(e);
                    synced = false;
                }
                Step::Query(q) => {
                    if !synced {
                        s.sync();
                        synced = true;
                    }
                    let (ns, a) = s.lookup(q);
                    r.lat[class(mine.len())].push(ns / 1000.0);
                    mine.push(a);
                }
            }
        }
        for l in &mut r.lat {
            l.sort_by(|a, b| a.partial_cmp(b).unwrap());
        }
        eprintln!("  {} done", s.name());
        results.push(r);
        answers.push(mine);
    }
    let n = answers[0].len();
    let mut bad = 0;
    if only_kvroute {
        results.push(results[0].clone());
        results.push(results[0].clone());
        return (results, n, 0);
    }
    for q in 0..n {
        if answers[1][q] != answers[0][q] || answers[2][q] != answers[0][q] {
            if bad < 3 {
                eprintln!(
                    "answers differ at query {q}: kvroute {:?} radix {:?} concurrent {:?}",
                    &answers[0][q][..answers[0][q].len().min(4)],
                    &answers[1][q][..answers[1][q].len().min(4)],
                    &answers[2][q][..answers[2][q].len().min(4)]
                );
            }
            bad += 1;
        }
    }
    (results, n, bad)
}

/// The 1M-block, 64-worker build; queries: full hits, then partial hits.
fn build_scenario(rng: &mut Rng, chains: usize, queries: usize) -> (Vec<Step>, u64) {
    const LEN: usize = 512;
    let mut steps = Vec::new();
    let mut all = Vec::new();
    let mut pairs = 0;
    for _ in 0..chains {
        let chain: Vec<u64> = (0..LEN).map(|_| rng.next()).collect();
        let mut ws = BTreeSet::new();
        while ws.len() < 10 {
            ws.insert(rng.below(64) as u64);
        }
        for w in ws {
            steps.push(Step::Event(Ev::Stored {
                worker: w,
                parent: None,
                keys: chain.clone(),
            }));
            pairs += LEN as u64;
        }
        all.push(chain);
    }
    for _ in 0..queries {
        steps.push(Step::Query(all[rng.below(all.len())].clone()));
    }
    for _ in 0..queries {
        let mut q = all[rng.below(all.len())][..LEN / 2].to_vec();
        q.extend((0..LEN / 2).map(|_| rng.next()));
        steps.push(Step::Query(q));
    }
    (steps, pairs)
}

/// The Mooncake trace replayed on `workers` LRU caches of `capacity` blocks of `block` tokens.
fn mooncake_scenario(
    trace: &str,
    block: usize,
    workers: usize,
    capacity: usize,
    limit: usize,
) -> (Vec<Step>, u64, usize) {
    let text = std::fs::read_to_string(trace).expect("read the trace");
    let mut steps = Vec::new();
    // Per worker: key → (last use, depth), and the eviction order (last use, -depth, key).
    let mut held: Vec<HashMap<u64, (u64, usize)>> = vec![HashMap::new(); workers];
    let mut order: Vec<BTreeSet<(u64, isize, u64)>> = vec![BTreeSet::new(); workers];
    let mut assigned = vec![0u64; workers];
    let mut max_len = 0;
    for (t, line) in text.lines().take(limit).enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).expect("trace line");
        let input = v["input_length"].as_u64().unwrap() as usize;
        let ids: Vec<u64> = v["hash_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        let n = (input / block).min(ids.len() * 512 / block);
        if n == 0 {
            continue;
        }
        let per = 512 / block;
        let mut keys = Vec::with_capacity(n);
        let mut prev = 0x6b76_726f_7574_6521u64;
        for j in 0..n {
            prev = mix(prev ^ mix(ids[j / per].wrapping_mul(64) + (j % per) as u64 + 1));
            keys.push(prev);
        }
        max_len = max_len.max(n);
        steps.push(Step::Query(keys.clone()));
        // Route: the longest cached prefix, ties to the worker given the fewest requests.
        let overlap = |w: usize| keys.iter().take_while(|k| held[w].contains_key(k)).count();
        let w = (0..workers)
            .max_by_key(|&w| {
                (
                    overlap(w),
                    std::cmp::Reverse(assigned[w]),
                    std::cmp::Reverse(w),
                )
            })
            .unwrap();
        assigned[w] += 1;
        let hit = overlap(w);
        let now = t as u64 + 1;
        for (d, &k) in keys.iter().enumerate() {
            if let Some(&(u, _)) = held[w].get(&k) {
                order[w].remove(&(u, -(d as isize), k));
            }
        }
        // Evict (least recently used first, deeper first among equals) to make room.
        let new = n - hit;
        let mut evicted = Vec::new();
        while held[w].len() - hit + new > capacity {
            let Some(&(u, nd, k)) = order[w].iter().next() else {
                break;
            };
            order[w].remove(&(u, nd, k));
            held[w].remove(&k);
            evicted.push(k);
        }
        if !evicted.is_empty() {
            steps.push(Step::Event(Ev::Removed {
                worker: w as u64,
                keys: evicted,
            }));
        }
        for (d, &k) in keys.iter().enumerate() {
            held[w].insert(k, (now, d));
            order[w].insert((now, -(d as isize), k));
        }
        if new > 0 {
            steps.push(Step::Event(Ev::Stored {
                worker: w as u64,
                parent: hit.checked_sub(1).map(|p| keys[p]),
                keys: keys[hit..].to_vec(),
            }));
        }
    }
    let pairs = held.iter().map(|h| h.len() as u64).sum();
    (steps, pairs, max_len)
}

/// `--write-rounds`: the Mooncake write passes alone, kvroute and Dynamo's RadixTree alternately,
/// writes per CPU-second of each round and the median.
fn write_rounds(trace: &str, rounds: usize) {
    for (block, capacity) in [(16usize, 26_000usize), (512, 812)] {
        let (steps, _, _) = mooncake_scenario(trace, block, 8, capacity, usize::MAX);
        let (events, blocks) = events_of(&steps);
        let mut per = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        let only_kvroute = std::env::args().any(|a| a == "--only-kvroute");
        for _ in 0..rounds {
            for (i, v) in per.iter_mut().enumerate() {
                if i == 1 && only_kvroute {
                    v.push(f64::NAN);
                    continue;
                }
                if i == 2 {
                    // The concurrent tree is left out of this loop.
                    v.push(f64::NAN);
                    continue;
                }
                let mut s = make(i);
                let c = cpu_s();
                for e in &events {
                    s.apply(e);
                }
                v.push(blocks as f64 / (cpu_s() - c) / 1e6);
            }
        }
        for v in &mut per {
            v.sort_by(|a, b| a.total_cmp(b));
        }
        let med = |v: &Vec<f64>| v[v.len() / 2];
        println!(
            "Mooncake {block}-token writes per CPU-s ({blocks} block ops, {rounds} rounds): kvroute median {:.2}M/s (range {:.2}-{:.2}), Dynamo RadixTree median {:.2}M/s (range {:.2}-{:.2}): {:.2}x",
            med(&per[0]), per[0][0], per[0][rounds - 1], med(&per[1]), per[1][0], per[1][rounds - 1], med(&per[0]) / med(&per[1])
        );
        println!(
            "  reference, a flat hash map key -> holder bits (no prefix lookups): median {:.2}M/s",
            med(&per[3])
        );
    }
}

// ---------------------------------------------------------------- output

fn cell(v: f64, unit: &str) -> String {
    match unit {
        "M/s" => format!("{:.2}M/s", v / 1e6),
        "µs" => format!("{v:.2} µs"),
        "B" => format!("{v:.1} B"),
        _ => format!("{v}"),
    }
}

fn print_rows(title: &str, rows: &[(String, [f64; 3], &str, bool)]) {
    println!("\n{title}");
    let names = [
        "kvroute",
        "Dynamo RadixTree",
        "Dynamo concurrent",
        "kvroute vs best",
    ];
    println!(
        "{:<44}  {:>14}  {:>16}  {:>17}  {:>15}",
        "", names[0], names[1], names[2], names[3]
    );
    println!("{}", "-".repeat(44 + 2 + 14 + 2 + 16 + 2 + 17 + 2 + 15));
    for (name, v, unit, higher_better) in rows {
        let best = if *higher_better {
            v[1].max(v[2])
        } else {
            v[1].min(v[2])
        };
        let ratio = if *higher_better {
            v[0] / best
        } else {
            best / v[0]
        };
        println!(
            "{:<44}  {:>14}  {:>16}  {:>17}  {:>14.1}x",
            name,
            cell(v[0], unit),
            cell(v[1], unit),
            cell(v[2], unit),
            ratio
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let trace = args
        .iter()
        .position(|a| a == "--trace")
        .map(|i| args[i + 1].clone());
    println!("Indexers side by side, same events, one thread for lookups (dynamo-kv-router 1.6.1)");
    println!(
        "(\"kvroute vs best\": how many times better kvroute is than the better of Dynamo's two)"
    );

    names();
    if let (Some(trace), Some(i)) = (&trace, args.iter().position(|a| a == "--write-rounds")) {
        let rounds: usize = args[i + 1].parse().expect("--write-rounds N");
        write_rounds(trace, rounds);
        return;
    }
    let mut rng = Rng(7);
    let chains = if quick { 256 } else { 2048 };
    eprintln!("build scenario: {chains} chains x 512 blocks x 10 of 64 workers");
    let (steps, pairs) = build_scenario(&mut rng, chains, if quick { 500 } else { 3000 });
    let nq = if quick { 500 } else { 3000 };
    let (r, n, bad) = run(&steps, pairs, 2, &|i| (i >= nq) as usize);
    let v = |f: &dyn Fn(&Result_) -> f64| [f(&r[0]), f(&r[1]), f(&r[2])];
    print_rows(
        &format!(
            "{}M blocks, 64 workers, 512-block queries ({n} queries, answers {})",
            (chains * 512 / 1_000_000).max(1),
            if bad == 0 {
                "all equal".to_string()
            } else {
                format!("DIFFER in {bad}")
            }
        ),
        &[
            (
                "writes (512-block BlockStored)".into(),
                v(&|r| r.writes_per_s),
                "M/s",
                true,
            ),
            (
                "  … per CPU-second".into(),
                v(&|r| r.writes_per_cpu_s),
                "M/s",
                true,
            ),
            (
                "memory per (block, worker) pair".into(),
                v(&|r| r.bytes_per_pair),
                "B",
                false,
            ),
            (
                "full hit p50".into(),
                v(&|r| pct(&r.lat[0], 0.5)),
                "µs",
                false,
            ),
            (
                "full hit p99".into(),
                v(&|r| pct(&r.lat[0], 0.99)),
                "µs",
                false,
            ),
            (
                "partial hit (256 of 512) p50".into(),
                v(&|r| pct(&r.lat[1], 0.5)),
                "µs",
                false,
            ),
            (
                "partial hit (256 of 512) p99".into(),
                v(&|r| pct(&r.lat[1], 0.99)),
                "µs",
                false,
            ),
        ],
    );
    let mut failed = bad > 0;
    drop(steps);

    if let Some(trace) = trace {
        for (block, capacity) in [(16usize, 26_000usize), (512, 812)] {
            let limit = if quick { 2000 } else { usize::MAX };
            let (steps, pairs, max_len) = mooncake_scenario(&trace, block, 8, capacity, limit);
            eprintln!("mooncake scenario, {block}-token blocks");
            let (r, n, bad) = run(&steps, pairs, 1, &|_| 0);
            failed |= bad > 0;
            let v = |f: &dyn Fn(&Result_) -> f64| [f(&r[0]), f(&r[1]), f(&r[2])];
            print_rows(
                &format!(
                    "Mooncake trace, {block}-token blocks, 8 workers x {capacity} blocks LRU ({n} lookups up to {max_len} blocks, answers {})",
                    if bad == 0 { "all equal".to_string() } else { format!("DIFFER in {bad}") }
                ),
                &[
                    ("writes (stores and LRU removals)".into(), v(&|r| r.writes_per_s), "M/s", true),
                    ("  … per CPU-second".into(), v(&|r| r.writes_per_cpu_s), "M/s", true),
                    ("memory per (block, worker) pair".into(), v(&|r| r.bytes_per_pair), "B", false),
                    ("lookup p50".into(), v(&|r| pct(&r.lat[0], 0.5)), "µs", false),
                    ("lookup p90".into(), v(&|r| pct(&r.lat[0], 0.9)), "µs", false),
                    ("lookup p99".into(), v(&|r| pct(&r.lat[0], 0.99)), "µs", false),
                ],
            );
        }
    }
    if failed {
        eprintln!("FAILED: the indexers' answers differ");
        std::process::exit(1);
    }
}
