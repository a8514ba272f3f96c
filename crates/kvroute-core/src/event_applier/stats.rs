//! The applier's counters ([`Counters`], bumped on the apply path) and the snapshots it hands out
//! ([`EventStats`], [`WorkerEventStats`]), with the list of reasons an event is skipped.

use std::collections::BTreeMap;

use super::{ApplyOutcome, EventApplier, RankState};

/// Distinct reason keys kept per counter map (further ones go to `"other"`).
const MAX_REASONS: usize = 64;

/// Parity and map state of one `(worker, dp_rank)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerEventStats {
    pub worker_id: String,
    pub dp_rank: u32,
    /// Entries of its engine map (`Tokens` keying).
    pub map_entries: u64,
    /// Extra copies of blocks it holds more than once (see the [`event_applier`](super) module
    /// docs).
    pub extra_copies: u64,
    /// A recomputed block hash differed (`Engine` keying with a configured algorithm).
    pub hash_mismatch: bool,
    /// A `BlockStored` had another block size (or token count) than the model's.
    pub block_size_mismatch: bool,
    /// The block size of the last mismatching event.
    pub worker_block_size: Option<u32>,
    /// The first definite diagnosis, e.g. `seed: the worker's PYTHONHASHSEED is unset (router
    /// "42")`. Starts with `block_size`, `algorithm`, `seed`, `algorithm and seed` or `unknown`.
    pub likely_cause: Option<String>,
    /// Sampled `BlockStored` events recomputed.
    pub checked: u64,
    /// Of those, how many differed.
    pub mismatched: u64,
}

/// Counters of an [`EventApplier`].
///
/// # What is skipped (and counted, never a panic)
///
/// Per event (`skipped_reasons`), the rest of the batch still applies:
/// - `unresolved_parent` (tokens): the parent hash is not in the engine map (events were lost,
///   or the map evicted it), so the chain cannot be placed; the event is skipped rather than
///   keyed from a guessed parent.
/// - `unknown_block_hashes` (tokens): a token-less `BlockStored` none of whose hashes is in the
///   map (each unknown hash of `BlockStored`/`BlockRemoved` also counts in `unresolved_hashes`;
///   the known ones apply).
/// - `block_size_mismatch` (tokens): `block_size` differs from the model's, or `token_ids` is
///   not `block_hashes.len() * block_size` long; the worker gets the `block_size_mismatch` flag.
/// - `partial_block` (tokens): vLLM ≥ 0.24 fine-grained prefix entries (one hash covering fewer
///   tokens than a block, dividing it); they cannot be router-keyed and are not a misconfiguration.
/// - `lora_without_name` (tokens): `lora_id` set but no `lora_name` (vLLM < 0.14): keying it
///   without the adapter would let base-model requests match LoRA blocks.
/// - `mm_without_offset`, `unrecognized_extra_keys`, `extra_keys_length` (tokens): extra keys
///   the router keying cannot reproduce (vLLM 0.17–0.18 bare multimodal identifiers, anything
///   else). Prompt-embeddings digests (a block's last key, 32 bytes) are keyed like a request's
///   ([`crate::prompt_embeds`]).
/// - `unknown_medium`, `remote_medium` (both keyings): a `medium` not in [`crate::tiers`]'s
///   table, or blocks not local to the worker (`locality` other than `LOCAL`, object stores).
///   Never taken for the GPU. Known media are stored under their tier's canonical name (`GPU`,
///   `CPU`, `DISK`), so `cpu`, `CPU_PINNED` and `CPU` are one tier.
/// - `tier_block_size` (both keyings): a non-GPU tier's `BlockStored` with tokens in another
///   block size than the model's (LMCache publishes its 256-token chunks): skipped, and unlike a
///   GPU event of the wrong size it does not flag the worker.
/// - `indexer_rejected`: the indexer refused the store (a 9th tier, or more than 65 536 slots).
/// - the decoder's own reasons for events it dropped (unknown type, wrong field types).
///
/// Per batch (`malformed_reasons`, nothing changes): the decoder's batch-level reasons, and
/// `data_parallel_rank out of range` (not in `0..2^32`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Batches applied (not counting malformed ones).
    pub batches: u64,
    pub events_stored: u64,
    pub events_removed: u64,
    pub events_cleared: u64,
    pub blocks_stored: u64,
    pub blocks_removed: u64,
    /// Payloads rejected as a whole, and why.
    pub malformed_batches: u64,
    pub malformed_reasons: BTreeMap<&'static str, u64>,
    /// Events skipped, and why (see above).
    pub skipped_events: u64,
    pub skipped_reasons: BTreeMap<&'static str, u64>,
    /// `BlockStored` events whose parent was not in the engine map.
    pub unresolved_parents: u64,
    /// Hashes of `BlockRemoved` / token-less `BlockStored` events not in the engine map.
    pub unresolved_hashes: u64,
    /// Engine-map entries evicted by the bound (their keys left the index).
    pub map_evictions: u64,
    /// Engine hashes stored again with another router key (the old key left the index).
    pub map_rekeyed: u64,
    /// `BlockStored` hashes a `(worker, rank)` already held on that tier: one more copy counted
    /// (vLLM does not de-duplicate blocks; see the [`event_applier`](super) module docs).
    pub duplicate_stores: u64,
    /// `BlockRemoved` hashes that took away one of several copies: the block stays in the index.
    pub duplicate_removes: u64,
    /// Extra copies now counted, over all workers (each `(worker, rank, tier, hash)` held `n > 1`
    /// times counts `n - 1`).
    pub extra_copies: u64,
    /// `BlockStored` events with another block size than the model's.
    pub block_size_mismatches: u64,
    /// Engine-map entries over all workers.
    pub map_entries: u64,
    /// Per `(worker, dp_rank)`, sorted.
    pub workers: Vec<WorkerEventStats>,
}

/// The running counters (the [`EventStats`] fields not summed from the workers at a snapshot).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) batches: u64,
    pub(super) events_stored: u64,
    pub(super) events_removed: u64,
    pub(super) events_cleared: u64,
    pub(super) blocks_stored: u64,
    pub(super) blocks_removed: u64,
    pub(super) malformed_batches: u64,
    pub(super) malformed_reasons: BTreeMap<&'static str, u64>,
    pub(super) skipped_events: u64,
    pub(super) skipped_reasons: BTreeMap<&'static str, u64>,
    pub(super) unresolved_parents: u64,
    pub(super) unresolved_hashes: u64,
    pub(super) map_evictions: u64,
    pub(super) map_rekeyed: u64,
    pub(super) duplicate_stores: u64,
    pub(super) duplicate_removes: u64,
    pub(super) block_size_mismatches: u64,
}

pub(super) fn bump(map: &mut BTreeMap<&'static str, u64>, reason: &'static str) {
    let key = if map.len() >= MAX_REASONS && !map.contains_key(reason) {
        "other"
    } else {
        reason
    };
    *map.entry(key).or_insert(0) += 1;
}

impl Counters {
    pub(super) fn skip(&mut self, reason: &'static str, out: &mut ApplyOutcome) {
        self.skipped_events += 1;
        bump(&mut self.skipped_reasons, reason);
        out.skipped = out.skipped.saturating_add(1);
    }
}

pub(super) fn worker_stats(worker_id: &str, dp_rank: u32, rs: &RankState) -> WorkerEventStats {
    WorkerEventStats {
        worker_id: worker_id.to_owned(),
        dp_rank,
        map_entries: rs.map.len() as u64,
        extra_copies: rs.copies.total,
        hash_mismatch: rs.parity.hash_mismatch,
        block_size_mismatch: rs.parity.block_size_mismatch,
        worker_block_size: rs.parity.worker_block_size,
        likely_cause: rs.parity.likely_cause.clone(),
        checked: rs.parity.checked,
        mismatched: rs.parity.mismatched,
    }
}

impl EventApplier {
    /// Events skipped so far, by reason: what `stats().skipped_reasons` holds, without the
    /// snapshot (the gateway reads it after every batch that skipped some).
    pub fn skipped_reasons(&self) -> &BTreeMap<&'static str, u64> {
        &self.core.c.skipped_reasons
    }

    pub fn stats(&self) -> EventStats {
        let c = &self.core.c;
        let mut workers: Vec<WorkerEventStats> = self
            .workers
            .iter()
            .flat_map(|(w, ranks)| ranks.iter().map(move |(r, rs)| worker_stats(w, *r, rs)))
            .collect();
        workers.sort_by(|a, b| (&a.worker_id, a.dp_rank).cmp(&(&b.worker_id, b.dp_rank)));
        EventStats {
            batches: c.batches,
            events_stored: c.events_stored,
            events_removed: c.events_removed,
            events_cleared: c.events_cleared,
            blocks_stored: c.blocks_stored,
            blocks_removed: c.blocks_removed,
            malformed_batches: c.malformed_batches,
            malformed_reasons: c.malformed_reasons.clone(),
            skipped_events: c.skipped_events,
            skipped_reasons: c.skipped_reasons.clone(),
            unresolved_parents: c.unresolved_parents,
            unresolved_hashes: c.unresolved_hashes,
            map_evictions: c.map_evictions,
            map_rekeyed: c.map_rekeyed,
            duplicate_stores: c.duplicate_stores,
            duplicate_removes: c.duplicate_removes,
            extra_copies: workers.iter().map(|w| w.extra_copies).sum(),
            block_size_mismatches: c.block_size_mismatches,
            map_entries: workers.iter().map(|w| w.map_entries).sum(),
            workers,
        }
    }
}
