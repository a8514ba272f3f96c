//! `KvIndexer`: which worker holds which block. Hashes come in as `BigUint64Array`s, one call per
//! batch, or as whole vLLM KV event payloads (`applyEventBatch`, decoded and applied in Rust by
//! `kvroute_core::event_applier`); a query answers per worker, never per block.

use std::collections::HashMap;

use kvroute_core::engine_hash::HashAlgorithm;
use kvroute_core::event_applier::{EventApplier, EventApplierConfig, Keying};
use kvroute_core::indexer::Matches;
use napi::bindgen_prelude::{
    BigInt, BigUint64ArraySlice, Either, Uint32ArraySlice, Uint8ArraySlice,
};
use napi_derive::napi;

use crate::convert::{invalid_config, invalid_input, to_napi};

#[napi(object)]
pub struct KvIndexerOptions {
    /// Tokens per block of the model this index serves.
    pub block_size: u32,
    /// How `applyEventBatch` keys blocks: `"tokens"` (default: router keys from token ids) or
    /// `"engine"` (vLLM's hashes as is).
    #[napi(ts_type = "'tokens' | 'engine'")]
    pub keying: Option<String>,
    /// The workers' `--prefix-caching-hash-algo`; with `keying: "engine"` it enables the hash
    /// parity check.
    pub hash_algorithm: Option<String>,
    /// The workers' PYTHONHASHSEED (unset when absent).
    pub hash_seed: Option<String>,
    /// Bound of each (worker, dpRank) engine-hash map (token keying); default 1048576.
    pub max_engine_map_entries: Option<u32>,
    /// Parity check sampling: the first N stored events per (worker, dpRank) (default 16) ...
    pub parity_first: Option<u32>,
    /// ... then one in K (default 64; 0 = only the first N).
    pub parity_every: Option<u32>,
}

/// What `applyEventBatch` did with one payload.
#[napi(object)]
pub struct ApplyEventBatchResult {
    /// Events in the batch (including dropped ones).
    pub events: u32,
    /// Blocks stored / removed in the index.
    pub stored: u32,
    pub removed: u32,
    /// AllBlocksCleared events applied.
    pub cleared: u32,
    /// Events skipped (see `eventStats().skippedReasons`).
    pub skipped: u32,
    /// Of those, BlockStored/BlockRemoved/AllBlocksCleared events with unreadable fields: the
    /// worker's view may be off, a resync is advisable.
    pub skipped_known: u32,
    /// The batch's data-parallel rank (0 when absent).
    pub dp_rank: u32,
    /// Set when the payload could not be decoded at all (nothing was applied): the reason.
    pub malformed: Option<String>,
}

/// Parity and map state of one (worker, dpRank).
#[napi(object, use_nullable = true)]
pub struct WorkerEventStats {
    pub worker_id: String,
    pub dp_rank: u32,
    /// Engine-hash map entries (token keying).
    pub map_entries: i64,
    /// Recomputed block hashes differ from the worker's (engine keying with a hash algorithm).
    pub hash_mismatch: bool,
    /// A BlockStored had another block size (or token count) than the model's.
    pub block_size_mismatch: bool,
    /// The block size of the last mismatching event.
    pub worker_block_size: Option<u32>,
    /// E.g. "seed: the worker's PYTHONHASHSEED is unset (the router's is \"42\")"; starts with
    /// block_size, algorithm, seed, "algorithm and seed" or unknown.
    pub likely_cause: Option<String>,
    /// Sampled BlockStored events recomputed, and how many differed.
    pub checked: i64,
    pub mismatched: i64,
}

/// Counters of `applyEventBatch`.
#[napi(object)]
pub struct KvEventStats {
    #[napi(ts_type = "'tokens' | 'engine'")]
    pub keying: String,
    pub batches: i64,
    pub events_stored: i64,
    pub events_removed: i64,
    pub events_cleared: i64,
    pub blocks_stored: i64,
    pub blocks_removed: i64,
    pub malformed_batches: i64,
    pub malformed_reasons: HashMap<String, i64>,
    pub skipped_events: i64,
    pub skipped_reasons: HashMap<String, i64>,
    /// BlockStored events whose parent hash was unknown (token keying).
    pub unresolved_parents: i64,
    /// Hashes of BlockRemoved / token-less BlockStored events that were unknown (token keying).
    pub unresolved_hashes: i64,
    pub map_evictions: i64,
    pub map_rekeyed: i64,
    pub block_size_mismatches: i64,
    pub map_entries: i64,
    pub workers: Vec<WorkerEventStats>,
}

/// A worker, or one data-parallel rank of it.
#[napi(object)]
pub struct WorkerRef {
    pub worker_id: String,
    /// Default 0; for `clearWorker`, absent means every rank.
    pub dp_rank: Option<u32>,
}

#[napi(object)]
pub struct KvIndexerStats {
    /// Distinct blocks held by anyone.
    pub blocks: i64,
    /// Live (block, worker, tier) holdings.
    pub pairs: i64,
    /// Known (worker, dpRank) slots.
    pub workers: i64,
    pub tiers: u32,
    /// Heap bytes of the index (capacity-based).
    pub approx_bytes: i64,
    /// Removals of holdings that did not exist (ignored).
    pub removes_unknown: i64,
}

fn worker_parts(worker: &Either<String, WorkerRef>) -> (&str, Option<u32>) {
    match worker {
        Either::A(id) => (id.as_str(), None),
        Either::B(w) => (w.worker_id.as_str(), w.dp_rank),
    }
}

fn parent_key(parent: Option<BigInt>) -> napi::Result<Option<u64>> {
    parent
        .map(|p| {
            let (signed, value, lossless) = p.get_u64();
            if signed || !lossless {
                Err(invalid_input(
                    "parentHash must be an unsigned 64-bit bigint",
                ))
            } else {
                Ok(value)
            }
        })
        .transpose()
}

pub(crate) fn counts(m: &std::collections::BTreeMap<&'static str, u64>) -> HashMap<String, i64> {
    m.iter().map(|(k, v)| (k.to_string(), *v as i64)).collect()
}

/// The JS view of an applier's counters (shared with `KvRouter.eventStats`).
pub(crate) fn event_stats_of(applier: &EventApplier) -> KvEventStats {
    let s = applier.stats();
    KvEventStats {
        keying: applier.keying().as_str().to_owned(),
        batches: s.batches as i64,
        events_stored: s.events_stored as i64,
        events_removed: s.events_removed as i64,
        events_cleared: s.events_cleared as i64,
        blocks_stored: s.blocks_stored as i64,
        blocks_removed: s.blocks_removed as i64,
        malformed_batches: s.malformed_batches as i64,
        malformed_reasons: counts(&s.malformed_reasons),
        skipped_events: s.skipped_events as i64,
        skipped_reasons: counts(&s.skipped_reasons),
        unresolved_parents: s.unresolved_parents as i64,
        unresolved_hashes: s.unresolved_hashes as i64,
        map_evictions: s.map_evictions as i64,
        map_rekeyed: s.map_rekeyed as i64,
        block_size_mismatches: s.block_size_mismatches as i64,
        map_entries: s.map_entries as i64,
        workers: s
            .workers
            .into_iter()
            .map(|w| WorkerEventStats {
                worker_id: w.worker_id,
                dp_rank: w.dp_rank,
                map_entries: w.map_entries as i64,
                hash_mismatch: w.hash_mismatch,
                block_size_mismatch: w.block_size_mismatch,
                worker_block_size: w.worker_block_size,
                likely_cause: w.likely_cause,
                checked: w.checked as i64,
                mismatched: w.mismatched as i64,
            })
            .collect(),
    }
}

/// The JS view of one applied payload (shared with `KvRouter.applyEventBatch`).
pub(crate) fn apply_result(
    outcome: std::result::Result<
        kvroute_core::event_applier::ApplyOutcome,
        kvroute_core::events::DecodeError,
    >,
    fallback_rank: u32,
) -> ApplyEventBatchResult {
    match outcome {
        Ok(o) => ApplyEventBatchResult {
            events: o.events,
            stored: o.stored,
            removed: o.removed,
            cleared: o.cleared,
            skipped: o.skipped,
            skipped_known: o.skipped_known,
            dp_rank: o.dp_rank,
            malformed: None,
        },
        Err(e) => ApplyEventBatchResult {
            events: 0,
            stored: 0,
            removed: 0,
            cleared: 0,
            skipped: 0,
            skipped_known: 0,
            dp_rank: fallback_rank,
            malformed: Some(e.reason.to_owned()),
        },
    }
}

/// The event-applier settings the indexer and the router share, checked.
pub(crate) fn event_applier_config(
    block_size: u32,
    keying: Option<&str>,
    hash_algorithm: Option<&str>,
    hash_seed: Option<String>,
    max_engine_map_entries: Option<u32>,
) -> napi::Result<EventApplierConfig> {
    if block_size == 0 {
        return Err(invalid_config("blockSize must be > 0"));
    }
    let mut cfg = EventApplierConfig::new(block_size);
    if let Some(k) = keying {
        cfg.keying = k.parse::<Keying>().map_err(to_napi)?;
    }
    if let Some(a) = hash_algorithm {
        cfg.hash_algorithm = Some(a.parse::<HashAlgorithm>().map_err(to_napi)?);
    }
    cfg.hash_seed = hash_seed;
    if let Some(n) = max_engine_map_entries {
        if n == 0 {
            return Err(invalid_config("maxEngineMapEntries must be > 0"));
        }
        cfg.max_engine_map_entries = n as usize;
    }
    Ok(cfg)
}

fn applier_config(options: KvIndexerOptions) -> napi::Result<EventApplierConfig> {
    let mut cfg = event_applier_config(
        options.block_size,
        options.keying.as_deref(),
        options.hash_algorithm.as_deref(),
        options.hash_seed,
        options.max_engine_map_entries,
    )?;
    if let Some(n) = options.parity_first {
        cfg.parity_first = n;
    }
    if let Some(n) = options.parity_every {
        cfg.parity_every = n;
    }
    Ok(cfg)
}

#[napi]
pub struct KvIndexer {
    applier: EventApplier,
    matches: Matches,
    /// Bumped whenever `remove_worker` frees slots, so JS-side slot-name caches know to reset.
    slot_epoch: u32,
    /// Scratch for sorting matches by overlap.
    order: Vec<u32>,
}

#[napi]
impl KvIndexer {
    #[napi(constructor)]
    pub fn new(options: KvIndexerOptions) -> napi::Result<Self> {
        let applier = EventApplier::new(applier_config(options)?).map_err(to_napi)?;
        Ok(KvIndexer {
            applier,
            matches: Matches::new(),
            slot_epoch: 0,
            order: Vec::new(),
        })
    }

    #[napi(getter)]
    pub fn block_size(&self) -> u32 {
        self.applier.block_size()
    }

    /// `"tokens"` or `"engine"`.
    #[napi(getter, ts_return_type = "'tokens' | 'engine'")]
    pub fn keying(&self) -> String {
        self.applier.keying().as_str().to_owned()
    }

    /// One ZMQ message payload (a msgpack KVEventBatch of any vLLM release) from `workerId`,
    /// decoded and applied in one call at the batch's DP rank. Never throws for bad bytes: a
    /// payload that does not decode changes nothing and comes back with `malformed` set.
    #[napi]
    pub fn apply_event_batch(
        &mut self,
        worker_id: String,
        payload: Uint8ArraySlice,
        dp_rank: Option<u32>,
    ) -> ApplyEventBatchResult {
        apply_result(
            self.applier
                .apply_payload_at(&worker_id, &payload, dp_rank.unwrap_or(0)),
            dp_rank.unwrap_or(0),
        )
    }

    /// Counters of `applyEventBatch` and the per-(worker, dpRank) parity flags.
    #[napi]
    pub fn event_stats(&self) -> KvEventStats {
        event_stats_of(&self.applier)
    }

    /// BlockStored: `worker` now holds `hashes` (a chain under `parentHash`) on tier `medium`
    /// (default "GPU").
    #[napi]
    pub fn apply_stored(
        &mut self,
        worker: Either<String, WorkerRef>,
        parent_hash: Option<BigInt>,
        hashes: BigUint64ArraySlice,
        medium: Option<String>,
    ) -> napi::Result<()> {
        let (id, dp) = worker_parts(&worker);
        let parent = parent_key(parent_hash)?;
        self.applier
            .indexer_mut()
            .apply_stored(id, dp.unwrap_or(0), medium.as_deref(), parent, &hashes)
            .map_err(to_napi)
    }

    /// BlockRemoved: `worker` no longer holds `hashes` on tier `medium` (default "GPU").
    #[napi]
    pub fn apply_removed(
        &mut self,
        worker: Either<String, WorkerRef>,
        hashes: BigUint64ArraySlice,
        medium: Option<String>,
    ) {
        let (id, dp) = worker_parts(&worker);
        self.applier
            .indexer_mut()
            .apply_removed(id, dp.unwrap_or(0), medium.as_deref(), &hashes);
    }

    /// AllBlocksCleared, a restart or a resync: drops the worker's blocks (one rank, or all when
    /// `dpRank` is absent) and resets its engine-hash maps and parity flags. Returns how many
    /// holdings were dropped.
    #[napi]
    pub fn clear_worker(&mut self, worker: Either<String, WorkerRef>) -> i64 {
        let (id, dp) = worker_parts(&worker);
        self.applier.clear_worker(id, dp) as i64
    }

    /// Drops all the worker's blocks (every rank) and state, and forgets it. Returns whether it
    /// was known.
    #[napi]
    pub fn remove_worker(&mut self, worker_id: String) -> bool {
        let known = self.applier.remove_worker(&worker_id);
        if known {
            self.slot_epoch = self.slot_epoch.wrapping_add(1);
        }
        known
    }

    /// Per worker holding the query's first block, packed into the caller's `out` buffer so a
    /// query allocates nothing on either side: `[tiers T, slotEpoch, n, (slot, blocks,
    /// tierBlocks[0..T]) x n]`, largest overlap first. Returns the number of words the answer
    /// needs; when that exceeds `out.length`, nothing is written and the caller retries with a
    /// larger buffer. Slots resolve with `slotWorker`, tier indices with `tierNames`; cached slot
    /// names stay valid while `slotEpoch` (bumped when a worker is removed) is unchanged.
    #[napi]
    pub fn find_matches_into(
        &mut self,
        hashes: BigUint64ArraySlice,
        mut out: Uint32ArraySlice,
    ) -> u32 {
        // SAFETY: this call is synchronous on the JS thread, which is blocked until it returns,
        // so nothing else reads or writes the typed array meanwhile, and the slice does not
        // outlive the call.
        let out = unsafe { out.as_mut() };
        let index = self.applier.indexer();
        index.find_matches(&hashes, &mut self.matches);
        let tiers = (0..).take_while(|&t| index.tier_name(t).is_some()).count();
        let entries = self.matches.entries();
        let needed = 3 + entries.len() * (2 + tiers);
        if needed > out.len() {
            return needed as u32;
        }
        self.order.clear();
        self.order.extend(0..entries.len() as u32);
        self.order
            .sort_unstable_by_key(|&i| std::cmp::Reverse(entries[i as usize].blocks));
        out[..3].copy_from_slice(&[tiers as u32, self.slot_epoch, entries.len() as u32]);
        for (k, &i) in self.order.iter().enumerate() {
            let e = &entries[i as usize];
            let at = 3 + k * (2 + tiers);
            out[at] = e.slot;
            out[at + 1] = e.blocks;
            out[at + 2..at + 2 + tiers].copy_from_slice(&e.tier_blocks[..tiers]);
        }
        needed as u32
    }

    /// The worker and rank of a slot reported by `findMatchesPacked`.
    #[napi]
    pub fn slot_worker(&self, slot: u32) -> Option<WorkerRef> {
        self.applier
            .indexer()
            .try_slot_worker(slot)
            .map(|(id, dp)| WorkerRef {
                worker_id: id.to_string(),
                dp_rank: Some(dp),
            })
    }

    /// Tier names by index (tier 0 is "GPU"); tiers are only ever added.
    #[napi]
    pub fn tier_names(&self) -> Vec<String> {
        let index = self.applier.indexer();
        (0..)
            .map_while(|t| index.tier_name(t).map(str::to_string))
            .collect()
    }

    #[napi]
    pub fn stats(&self) -> KvIndexerStats {
        let s = self.applier.indexer().stats();
        KvIndexerStats {
            blocks: s.blocks as i64,
            pairs: s.pairs as i64,
            workers: s.workers as i64,
            tiers: s.tiers,
            approx_bytes: s.approx_bytes as i64,
            removes_unknown: s.removes_unknown as i64,
        }
    }
}
