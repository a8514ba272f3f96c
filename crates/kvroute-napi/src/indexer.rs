//! `KvIndexer`: which worker holds which block. Hashes come in as `BigUint64Array`s, one call per
//! batch; a query answers per worker, never per block.

use std::collections::HashMap;

use kvroute_core::indexer::{Indexer, Matches};
use napi::bindgen_prelude::{BigInt, BigUint64ArraySlice, Either};
use napi_derive::napi;

use crate::convert::{invalid_config, invalid_input, to_napi};

#[napi(object)]
pub struct KvIndexerOptions {
    /// Tokens per block of the model this index serves.
    pub block_size: u32,
}

/// A worker, or one data-parallel rank of it.
#[napi(object)]
pub struct WorkerRef {
    pub worker_id: String,
    /// Default 0; for `clearWorker`, absent means every rank.
    pub dp_rank: Option<u32>,
}

#[napi(object)]
pub struct WorkerMatch {
    pub worker_id: String,
    pub dp_rank: u32,
    /// Leading blocks of the query the worker holds, on any tier.
    pub blocks: u32,
    /// Those blocks by the best tier holding each (e.g. `{ GPU: 10, CPU: 2 }`).
    pub tiers: HashMap<String, u32>,
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
                Err(invalid_input("parentHash must be an unsigned 64-bit bigint"))
            } else {
                Ok(value)
            }
        })
        .transpose()
}

#[napi]
pub struct KvIndexer {
    index: Indexer,
    block_size: u32,
    matches: Matches,
}

#[napi]
impl KvIndexer {
    #[napi(constructor)]
    pub fn new(options: KvIndexerOptions) -> napi::Result<Self> {
        if options.block_size == 0 {
            return Err(invalid_config("blockSize must be > 0"));
        }
        Ok(KvIndexer { index: Indexer::new(), block_size: options.block_size, matches: Matches::new() })
    }

    #[napi(getter)]
    pub fn block_size(&self) -> u32 {
        self.block_size
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
        self.index
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
        self.index.apply_removed(id, dp.unwrap_or(0), medium.as_deref(), &hashes);
    }

    /// AllBlocksCleared: drops the worker's blocks (one rank, or all when `dpRank` is absent).
    /// Returns how many holdings were dropped.
    #[napi]
    pub fn clear_worker(&mut self, worker: Either<String, WorkerRef>) -> i64 {
        let (id, dp) = worker_parts(&worker);
        self.index.clear_worker(id, dp) as i64
    }

    /// Drops all the worker's blocks (every rank) and forgets it. Returns whether it was known.
    #[napi]
    pub fn remove_worker(&mut self, worker_id: String) -> bool {
        self.index.remove_worker(&worker_id)
    }

    /// Per worker holding the query's first block: how many leading blocks it holds.
    /// Sorted by `blocks`, largest first.
    #[napi]
    pub fn find_matches(&mut self, hashes: BigUint64ArraySlice) -> Vec<WorkerMatch> {
        self.index.find_matches(&hashes, &mut self.matches);
        let mut out: Vec<WorkerMatch> = self
            .matches
            .entries()
            .iter()
            .map(|e| {
                let (worker_id, dp_rank) = self.index.slot_worker(e.slot);
                let tiers = e
                    .tier_blocks
                    .iter()
                    .enumerate()
                    .filter(|(_, &n)| n > 0)
                    .filter_map(|(t, &n)| self.index.tier_name(t).map(|name| (name.to_string(), n)))
                    .collect();
                WorkerMatch { worker_id: worker_id.to_string(), dp_rank, blocks: e.blocks, tiers }
            })
            .collect();
        out.sort_by(|a, b| b.blocks.cmp(&a.blocks));
        out
    }

    #[napi]
    pub fn stats(&self) -> KvIndexerStats {
        let s = self.index.stats();
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
