//! Applies decoded vLLM KV event batches ([`crate::events`]) to an [`Indexer`], one call per
//! batch, with the per-worker state the two keyings need and the hash parity check.
//!
//! # Keyings (per model, [`Keying`])
//!
//! - **`Tokens`** (default): a `BlockStored`'s router keys are computed with
//!   [`RouterKeyer`] from its `token_ids` (blocks of the model's block size; the LoRA name from
//!   `lora_name`; multimodal `(identifier, offset)` pairs and the cache salt from `extra_keys`),
//!   chained from the router key of its parent. The parent's engine hash is resolved through a
//!   bounded per-`(worker, dp_rank)` **engine map** (engine hash, u64 form → router key + the tiers
//!   holding it). The same map resolves `BlockRemoved` and token-less `BlockStored` events (e.g. a
//!   CPU-tier store of blocks already seen on the GPU) hash by hash.
//! - **`Engine`**: the events' hashes (u64 form, [`BlockHash::to_u64`]) are the keys, as is.
//!
//! Whatever cannot be applied is skipped and counted, never a panic: per event
//! (`skipped_reasons`, the rest of the batch still applies) or per batch (`malformed_reasons`,
//! nothing changes); [`EventStats`] lists the reasons.
//!
//! # The parts, one file each
//!
//! This file holds the applier itself: its configuration, the per-`(worker, dp_rank)` state and
//! the batch loop that dispatches each event. Beside it, in `event_applier/`:
//! - `keying.rs`: [`Keying`] and the store and remove paths of both keyings.
//! - `engine_map.rs`: the engine map (`Tokens` keying). It is bounded (`max_engine_map_entries`
//!   per `(worker, rank)`); when full, the entry stored or refreshed least recently is evicted
//!   and its router key leaves the index on every tier (a false negative at worst, never a false
//!   positive). Counted in `map_evictions`.
//! - `copy_counts.rs`: duplicate blocks. vLLM caches a block-aligned repeat under the same hash
//!   and sends `BlockStored` for it again; evicting either copy sends `BlockRemoved`. Copies are
//!   counted per `(worker, dp_rank, tier, engine hash)` in both keyings, so a block stored twice
//!   leaves the index with its second removal (`duplicate_stores`, `duplicate_removes`).
//! - `parity.rs`: the hash parity check. A `BlockStored` with another block size than the
//!   model's flags the worker `block_size_mismatch`; with `Engine` keying and a configured
//!   algorithm, sampled events are recomputed with [`EngineHasher`] and a difference flags
//!   `hash_mismatch`, both with a `likely_cause`. Serving goes on.
//! - `stats.rs`: the counters, the skip reasons and the stats snapshots.
//! - `keyed.rs`: batches whose block hashes already are the router's keys.

use std::collections::{HashMap, VecDeque};

use crate::block_keys::RouterKeyer;
use crate::engine_hash::{EngineHasher, EngineHasherConfig, HashAlgorithm};
use crate::error::{Error, Result};
use crate::events::{
    decode_batch, BlockHash, BlockRemoved, BlockStored, DecodeError, KvEvent, KvEventBatch,
};
use crate::indexer::Indexer;
use crate::tiers::{self, Placement, Tier};

mod copy_counts;
mod engine_map;
mod keyed;
mod keying;
mod parity;
mod stats;

use copy_counts::CopyCounts;
use engine_map::{KeyMap, MapEntry};
pub use keyed::{decode_keyed, KeyedEvent};
pub use keying::Keying;
use parity::{check_block_size, BlockSizeCheck, ParityState};
use stats::{bump, worker_stats, Counters};
pub use stats::{EventStats, WorkerEventStats};

/// Default bound of each `(worker, dp_rank)` engine map.
pub const DEFAULT_MAX_ENGINE_MAP_ENTRIES: usize = 1 << 20;
/// Default number of leading `BlockStored` events checked per `(worker, dp_rank)`.
pub const DEFAULT_PARITY_FIRST: u32 = 16;
/// Default sampling period after the first ones.
pub const DEFAULT_PARITY_EVERY: u32 = 64;
/// Configuration of an [`EventApplier`] (one model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventApplierConfig {
    /// The model's block size (tokens per block), as the router hashes requests.
    pub block_size: u32,
    pub keying: Keying,
    /// The router's `--prefix-caching-hash-algo` for the workers; with `Engine` keying it enables
    /// the parity check. Unused with `Tokens` keying.
    pub hash_algorithm: Option<HashAlgorithm>,
    /// The workers' PYTHONHASHSEED (`None` = unset; see docs/hashing.md).
    pub hash_seed: Option<String>,
    /// Bound of each `(worker, dp_rank)` engine map (`Tokens` keying); ≥ 1.
    pub max_engine_map_entries: usize,
    /// Parity check: the first N `BlockStored` events with tokens per `(worker, rank)` ...
    pub parity_first: u32,
    /// ... then one in K (0: no more after the first N).
    pub parity_every: u32,
}

impl EventApplierConfig {
    /// Token keying, default bounds.
    pub fn new(block_size: u32) -> Self {
        EventApplierConfig {
            block_size,
            keying: Keying::Tokens,
            hash_algorithm: None,
            hash_seed: None,
            max_engine_map_entries: DEFAULT_MAX_ENGINE_MAP_ENTRIES,
            parity_first: DEFAULT_PARITY_FIRST,
            parity_every: DEFAULT_PARITY_EVERY,
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Events in the batch (including the ones the decoder dropped).
    pub events: u32,
    /// Blocks stored in the index (on one tier each), duplicate copies included.
    pub stored: u32,
    /// Blocks removed (resolved ones; the index may still count some as unknown). Each takes one
    /// copy away: a block stored twice leaves the index with its second removal.
    pub removed: u32,
    /// `AllBlocksCleared` events applied.
    pub cleared: u32,
    /// Events skipped, by the decoder or here ([`EventStats`] lists the reasons).
    pub skipped: u32,
    /// Of those, events of a known type the decoder could not read (`BlockStored`,
    /// `BlockRemoved`, `AllBlocksCleared` with wrong fields): the worker's view may be wrong,
    /// a resync is advisable.
    pub skipped_known: u32,
    /// The batch's `data_parallel_rank` (0 when absent).
    pub dp_rank: u32,
}

/// One `(worker, dp_rank)`: its engine map (`engine_map.rs`), the extra copies of its duplicated
/// blocks (`copy_counts.rs`) and its parity state (`parity.rs`).
#[derive(Default)]
struct RankState {
    map: KeyMap<MapEntry>,
    /// `(engine hash, stamp)` in store order, with stale items (lazy deletion).
    order: VecDeque<(u64, u32)>,
    /// Extra copies of duplicated blocks, by engine hash (both keyings).
    copies: CopyCounts,
    next_stamp: u32,
    /// Flags, sampling and verified digests of the parity check.
    parity: ParityState,
}

impl RankState {
    /// Back to a fresh worker (restart / resync): map, flags and parity state.
    fn reset(&mut self) {
        self.clear_map();
        let map = std::mem::take(&mut self.map);
        let order = std::mem::take(&mut self.order);
        *self = RankState {
            map,
            order,
            ..RankState::default()
        };
    }
}

/// Everything but the per-worker states (so both can be borrowed at once).
struct Core {
    index: Indexer,
    cfg: EventApplierConfig,
    keyer: RouterKeyer,
    /// `Engine` keying with a configured algorithm.
    parity: Option<EngineHasher>,
    c: Counters,
    keys: Vec<u64>,
    drop: Vec<(u64, u8)>,
    /// `Engine` keying: `(key, held before)` of the keys of a store whose copies need counting.
    pending: Vec<(u64, bool)>,
    /// [`EventApplier::indexer_mut`] was called: copy counts may be stale.
    bypassed: bool,
}

/// Applies KV event batches to an [`Indexer`]; see the [module documentation](self).
pub struct EventApplier {
    core: Core,
    workers: HashMap<String, Vec<(u32, RankState)>>,
}

impl EventApplier {
    /// Errors (`InvalidConfig`): `block_size == 0`, `max_engine_map_entries == 0`, or an engine
    /// hasher that cannot be built (xxhash with an unset seed).
    pub fn new(cfg: EventApplierConfig) -> Result<Self> {
        let keyer = RouterKeyer::new(cfg.block_size as usize)?;
        if cfg.max_engine_map_entries == 0 {
            return Err(Error::config("max_engine_map_entries must be > 0"));
        }
        let parity = match (cfg.keying, cfg.hash_algorithm) {
            (Keying::Engine, Some(algorithm)) => Some(EngineHasher::new(EngineHasherConfig {
                block_size: cfg.block_size as usize,
                algorithm,
                seed: cfg.hash_seed.clone(),
            })?),
            _ => None,
        };
        Ok(EventApplier {
            core: Core {
                index: Indexer::new(),
                cfg,
                keyer,
                parity,
                c: Counters::default(),
                keys: Vec::new(),
                drop: Vec::new(),
                pending: Vec::new(),
                bypassed: false,
            },
            workers: HashMap::new(),
        })
    }

    pub fn config(&self) -> &EventApplierConfig {
        &self.core.cfg
    }

    pub fn keying(&self) -> Keying {
        self.core.cfg.keying
    }

    pub fn block_size(&self) -> u32 {
        self.core.cfg.block_size
    }

    /// The index (for queries).
    pub fn indexer(&self) -> &Indexer {
        &self.core.index
    }

    /// The index, for applying keys directly. Bypasses the engine maps and the copy counts: use
    /// it for keys computed by the caller, not mixed with token-keyed events of the same worker.
    pub fn indexer_mut(&mut self) -> &mut Indexer {
        self.core.bypassed = true;
        &mut self.core.index
    }

    /// Decodes one `KVEventBatch` payload and applies it for `worker_id`; a payload that does not
    /// decode is counted (`malformed_reasons`) and changes nothing.
    pub fn apply_payload(
        &mut self,
        worker_id: &str,
        payload: &[u8],
    ) -> std::result::Result<ApplyOutcome, DecodeError> {
        self.apply_payload_at(worker_id, payload, 0)
    }

    /// Like [`apply_payload`](Self::apply_payload), with the DP rank to use when the batch names
    /// none (vLLM 0.9.0 batches have no `data_parallel_rank`; the subscriber knows the rank from
    /// the endpoint it reads).
    pub fn apply_payload_at(
        &mut self,
        worker_id: &str,
        payload: &[u8],
        fallback_rank: u32,
    ) -> std::result::Result<ApplyOutcome, DecodeError> {
        match decode_batch(payload) {
            Ok(batch) => self.apply_batch_at(worker_id, &batch, fallback_rank),
            Err(e) => {
                self.core.c.malformed_batches += 1;
                bump(&mut self.core.c.malformed_reasons, e.reason);
                Err(e)
            }
        }
    }

    /// Applies one decoded batch for `worker_id` at the batch's DP rank (0 when absent). Fails,
    /// changing nothing but the malformed counters, only for a DP rank outside `u32`.
    pub fn apply_batch(
        &mut self,
        worker_id: &str,
        batch: &KvEventBatch,
    ) -> std::result::Result<ApplyOutcome, DecodeError> {
        self.apply_batch_at(worker_id, batch, 0)
    }

    /// Like [`apply_batch`](Self::apply_batch) with `fallback_rank` for a batch without a rank.
    pub fn apply_batch_at(
        &mut self,
        worker_id: &str,
        batch: &KvEventBatch,
        fallback_rank: u32,
    ) -> std::result::Result<ApplyOutcome, DecodeError> {
        let dp_rank = match batch.data_parallel_rank.map(u32::try_from) {
            None => fallback_rank,
            Some(Ok(r)) => r,
            Some(Err(_)) => {
                const REASON: &str = "data_parallel_rank out of range";
                self.core.c.malformed_batches += 1;
                bump(&mut self.core.c.malformed_reasons, REASON);
                return Err(DecodeError {
                    reason: REASON,
                    event_index: None,
                    offset: 0,
                });
            }
        };
        let core = &mut self.core;
        core.c.batches += 1;
        let mut out = ApplyOutcome {
            events: (batch.events.len() + batch.skipped.len())
                .try_into()
                .unwrap_or(u32::MAX),
            dp_rank,
            ..ApplyOutcome::default()
        };
        for s in &batch.skipped {
            core.c.skip(s.reason, &mut out);
            if matches!(
                s.tag.as_deref(),
                Some("BlockStored" | "BlockRemoved" | "AllBlocksCleared")
            ) {
                out.skipped_known = out.skipped_known.saturating_add(1);
            }
        }
        if batch.events.is_empty() {
            return Ok(out);
        }
        let rs = rank_state(&mut self.workers, worker_id, dp_rank);
        for ev in &batch.events {
            match ev {
                KvEvent::BlockStored(e) => core.stored(worker_id, dp_rank, rs, e, &mut out),
                KvEvent::BlockRemoved(e) => core.removed(worker_id, dp_rank, rs, e, &mut out),
                KvEvent::AllBlocksCleared => {
                    core.c.events_cleared += 1;
                    core.index.clear_worker(worker_id, Some(dp_rank));
                    rs.clear_map();
                    out.cleared = out.cleared.saturating_add(1);
                }
            }
        }
        Ok(out)
    }

    /// Drops the worker's blocks (one rank, or all when `dp_rank` is `None`) and resets its engine
    /// maps and parity flags (for a restart or a resync; `AllBlocksCleared` keeps the flags).
    /// Returns the holdings dropped from the index.
    pub fn clear_worker(&mut self, worker_id: &str, dp_rank: Option<u32>) -> u64 {
        if let Some(ranks) = self.workers.get_mut(worker_id) {
            for (r, rs) in ranks.iter_mut() {
                if dp_rank.is_none_or(|d| d == *r) {
                    rs.reset();
                }
            }
        }
        self.core.index.clear_worker(worker_id, dp_rank)
    }

    /// Drops every block and all state of the worker. Returns whether the index knew it.
    pub fn remove_worker(&mut self, worker_id: &str) -> bool {
        self.workers.remove(worker_id);
        self.core.index.remove_worker(worker_id)
    }

    /// Entries of the engine map of `(worker_id, dp_rank)`.
    pub fn map_len(&self, worker_id: &str, dp_rank: u32) -> usize {
        self.find_rank(worker_id, dp_rank)
            .map_or(0, |rs| rs.map.len())
    }

    /// The router key an engine hash of `(worker_id, dp_rank)` maps to (`Tokens` keying).
    pub fn router_key_of(&self, worker_id: &str, dp_rank: u32, engine_hash: u64) -> Option<u64> {
        self.find_rank(worker_id, dp_rank)?
            .map
            .get(&engine_hash)
            .map(|e| e.key)
    }

    /// Parity flags and map size of one `(worker, rank)`.
    pub fn worker_stats(&self, worker_id: &str, dp_rank: u32) -> Option<WorkerEventStats> {
        self.find_rank(worker_id, dp_rank)
            .map(|rs| worker_stats(worker_id, dp_rank, rs))
    }

    fn find_rank(&self, worker_id: &str, dp_rank: u32) -> Option<&RankState> {
        self.workers
            .get(worker_id)?
            .iter()
            .find(|(r, _)| *r == dp_rank)
            .map(|(_, rs)| rs)
    }

    /// Verifies the index's invariants, the engine maps' (every entry held on ≥ 1 tier, with
    /// exactly one live item in the order queue, within the bound) and the copy counts' (each
    /// belongs to a live holding: the map entry's tier with `Tokens` keying, the index's with
    /// `Engine` keying; counts ≥ 1 and their sum kept). O(size); for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.core.index.check_invariants()?;
        for (w, ranks) in &self.workers {
            for (r, rs) in ranks {
                if rs.map.len() > self.core.cfg.max_engine_map_entries {
                    return Err(format!("{w}#{r}: map over its bound"));
                }
                let mut live = 0usize;
                for (h, s) in &rs.order {
                    if rs.map.get(h).is_some_and(|e| e.stamp == *s) {
                        live += 1;
                    }
                }
                if live != rs.map.len() {
                    return Err(format!(
                        "{w}#{r}: {live} live order items for {} entries",
                        rs.map.len()
                    ));
                }
                if rs.map.values().any(|e| e.tiers == 0) {
                    return Err(format!("{w}#{r}: map entry held on no tier"));
                }
                let slot = self.core.index.slot_of(w, *r);
                let mut total = 0u64;
                for (h, &n) in &rs.copies.extra {
                    total += u64::from(n);
                    let live = match self.core.cfg.keying {
                        Keying::Tokens => rs
                            .map
                            .get(&h.hash)
                            .is_some_and(|e| e.tiers & (1 << h.tier) != 0),
                        Keying::Engine => {
                            slot.is_some_and(|s| self.core.index.holds(s, h.tier.into(), h.hash))
                        }
                    };
                    if n == 0 || !live {
                        return Err(format!(
                            "{w}#{r}: {n} extra copies of {:#x} on tier {} without a holding",
                            h.hash, h.tier
                        ));
                    }
                }
                if total != rs.copies.total {
                    return Err(format!(
                        "{w}#{r}: extra copies {} but the counts sum to {total}",
                        rs.copies.total
                    ));
                }
            }
        }
        Ok(())
    }
}
fn rank_state<'a>(
    workers: &'a mut HashMap<String, Vec<(u32, RankState)>>,
    worker_id: &str,
    dp_rank: u32,
) -> &'a mut RankState {
    if !workers.contains_key(worker_id) {
        workers.insert(worker_id.to_owned(), Vec::new());
    }
    let ranks = workers.get_mut(worker_id).expect("inserted above");
    let i = match ranks.iter().position(|(r, _)| *r == dp_rank) {
        Some(i) => i,
        None => {
            ranks.push((dp_rank, RankState::default()));
            ranks.len() - 1
        }
    };
    &mut ranks[i].1
}
impl Core {
    fn stored(
        &mut self,
        w: &str,
        rank: u32,
        rs: &mut RankState,
        e: &BlockStored,
        out: &mut ApplyOutcome,
    ) {
        self.c.events_stored += 1;
        let placement =
            tiers::classify(e.medium.as_ref().map(|m| m.as_str()), e.locality.as_deref());
        let medium = match placement {
            Placement::Local(t) => Some(t.name()),
            _ => {
                return self
                    .c
                    .skip(placement.skip_reason().unwrap_or("unknown_medium"), out)
            }
        };
        let has_tokens = !e.token_ids.is_empty();
        let bs = if has_tokens {
            check_block_size(e, self.cfg.block_size)
        } else {
            BlockSizeCheck::Ok
        };
        if bs == BlockSizeCheck::Mismatch {
            // Connectors key their tiers in their own chunks (LMCache: 256 tokens by default):
            // not the worker's misconfiguration, and not placeable in the model's blocks.
            if placement != Placement::Local(Tier::Gpu) {
                return self.c.skip("tier_block_size", out);
            }
            self.c.block_size_mismatches += 1;
            rs.parity.flag_block_size(e, self.cfg.block_size);
        }
        match self.cfg.keying {
            Keying::Engine => {
                if has_tokens {
                    self.parity_check(&mut rs.parity, e, bs);
                }
                let parent = e.parent_block_hash.as_ref().map(BlockHash::to_u64);
                self.store_keys(w, rank, rs, medium, parent, e.block_hashes.keys(), out);
            }
            Keying::Tokens if !has_tokens => self.store_by_hash(w, rank, rs, e, medium, out),
            Keying::Tokens => match bs {
                BlockSizeCheck::Ok => self.store_tokens(w, rank, rs, e, medium, out),
                BlockSizeCheck::Partial => self.c.skip("partial_block", out),
                BlockSizeCheck::Mismatch => self.c.skip("block_size_mismatch", out),
            },
        }
    }

    fn count_stored(&mut self, n: usize, out: &mut ApplyOutcome) {
        self.c.blocks_stored += n as u64;
        out.stored = out.stored.saturating_add(n.try_into().unwrap_or(u32::MAX));
    }
    fn removed(
        &mut self,
        w: &str,
        rank: u32,
        rs: &mut RankState,
        e: &BlockRemoved,
        out: &mut ApplyOutcome,
    ) {
        self.c.events_removed += 1;
        let placement =
            tiers::classify(e.medium.as_ref().map(|m| m.as_str()), e.locality.as_deref());
        let medium = match placement {
            Placement::Local(t) => Some(t.name()),
            _ => {
                return self
                    .c
                    .skip(placement.skip_reason().unwrap_or("unknown_medium"), out)
            }
        };
        if self.cfg.keying == Keying::Engine {
            return self.remove_keys(w, rank, rs, medium, e.block_hashes.keys(), out);
        }
        self.remove_by_hash(w, rank, rs, e, medium, out);
    }
}
