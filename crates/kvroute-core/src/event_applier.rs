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
//! # What is skipped (and counted, never a panic)
//!
//! Per event (`skipped_reasons`), the rest of the batch still applies:
//! - `unresolved_parent` (tokens): the parent hash is not in the engine map (events were lost,
//!   or the map evicted it), so the chain cannot be placed; the event is skipped rather than
//!   keyed from a guessed parent.
//! - `unknown_block_hashes` (tokens): a token-less `BlockStored` none of whose hashes is in the
//!   map (each unknown hash of `BlockStored`/`BlockRemoved` also counts in `unresolved_hashes`;
//!   the known ones apply).
//! - `block_size_mismatch` (tokens): `block_size` differs from the model's, or `token_ids` is
//!   not `block_hashes.len() * block_size` long; the worker gets the `block_size_mismatch` flag.
//! - `partial_block` (tokens): vLLM ≥ 0.24 fine-grained prefix entries (one hash covering fewer
//!   tokens than a block, dividing it); they cannot be router-keyed and are not a misconfiguration.
//! - `lora_without_name` (tokens): `lora_id` set but no `lora_name` (vLLM < 0.14): keying it
//!   without the adapter would let base-model requests match LoRA blocks.
//! - `mm_without_offset`, `unrecognized_extra_keys`, `extra_keys_length` (tokens): extra keys
//!   the router keying cannot reproduce (vLLM 0.17–0.18 bare multimodal identifiers, anything
//!   else). Prompt-embeddings digests (a block's last key, 32 bytes) are keyed like a request's
//!   ([`crate::prompt_embeds`]).
//! - `unknown_medium`, `remote_medium` (both keyings): a `medium` not in [`crate::tiers`]'s
//!   table, or blocks not local to the worker (`locality` other than `LOCAL`, object stores).
//!   Never taken for the GPU. Known media are stored under their tier's canonical name (`GPU`,
//!   `CPU`, `DISK`), so `cpu`, `CPU_PINNED` and `CPU` are one tier.
//! - `tier_block_size` (both keyings): a non-GPU tier's `BlockStored` with tokens in another
//!   block size than the model's (LMCache publishes its 256-token chunks): skipped, and unlike a
//!   GPU event of the wrong size it does not flag the worker.
//! - `indexer_rejected`: the indexer refused the store (a 9th tier, or more than 65 536 slots).
//! - the decoder's own reasons for events it dropped (unknown type, wrong field types).
//!
//! Per batch (`malformed_reasons`, nothing changes): the decoder's batch-level reasons, and
//! `data_parallel_rank out of range` (not in `0..2^32`).
//!
//! # Duplicate blocks (copy counts)
//!
//! vLLM does not de-duplicate KV blocks: when a block-aligned prompt repeats, or two requests
//! generate the same tokens, a second physical block is cached under the same hash and
//! `BlockStored` is sent for the hash again; evicting *either* copy sends `BlockRemoved` for it
//! (vLLM's `BlockHashToBlockMap`, NOTE #1; the mocker does the same). The [`Indexer`] keeps a set
//! of holdings, so the applier counts copies per `(worker, dp_rank, tier, engine hash)`, in both
//! keyings: a `BlockStored` of a hash the `(worker, rank)` already holds on that tier adds a copy
//! (`duplicate_stores`), and a `BlockRemoved` takes one copy away, the holding leaving the index
//! with the last one (`duplicate_removes` counts the removals that left a copy behind). A hash
//! repeated within one event is one copy per occurrence. `group_idx` is not part of the count's
//! key (the applier ignores KV cache groups): copies cached by the groups of a hybrid model are
//! copies of the hash, and the block stays in the index while any group holds one.
//!
//! Storage is sparse: one copy is the holding itself (the index bit, or the engine map's tier bit),
//! and only extra copies are kept, as `(hash, tier) → extra count` in a per-`(worker, rank)` map
//! that is empty, and costs nothing on the apply path, while no hash is duplicated. Each of its
//! entries belongs to a live holding (`Engine` keying: the index holds the hash on that tier;
//! `Tokens` keying: the engine-map entry holds that tier), so it is **bounded by the live
//! holdings** of the `(worker, rank)` (and with `Tokens` keying by `max_engine_map_entries × tiers`);
//! the entries go with their holding (last copy removed, map eviction or rekeying, which drop the
//! holding whatever its count), and `AllBlocksCleared`, [`EventApplier::clear_worker`] and
//! [`EventApplier::remove_worker`] drop them all. Duplicates are detected without an extra lookup:
//! from the engine map's tier bits (`Tokens`), or from [`Indexer::apply_stored_with`] (`Engine`).
//! Once [`EventApplier::indexer_mut`] has been used, an `Engine`-keyed store also drops the stale
//! count of a holding that was removed behind the applier's back (a lookup per stored key while
//! the `(worker, rank)` has extra copies, which is why it waits for that).
//!
//! Caveat: vLLM ≥ 0.26 re-sends `BlockStored` for prefix-cache *hits* of requests sent with
//! `extra_args={"kv_cache_report_mode": "full"}` (`emit_cached_block_events`: no new copy). Such a
//! re-send is indistinguishable on the wire from a real duplicate (a root event of blocks the worker
//! holds), so it counts as a copy and the block outlives its eviction in the index (until the
//! worker is cleared or resynced). The default `"incremental"` mode sends no such events.
//!
//! # The engine map
//!
//! One map per `(worker, dp_rank)`: engine hash → `(router key, tier bitmask, stamp)`. A store sets
//! the tier's bit (or, if it is set, adds a copy), a removal takes a copy away and clears the bit
//! with the last one, and the entry goes when no tier holds the block, so the map tracks exactly the
//! worker's live blocks and shrinks back to empty. `AllBlocksCleared`,
//! [`EventApplier::clear_worker`] and [`EventApplier::remove_worker`] empty it.
//!
//! **Bound and eviction policy**: at most `max_engine_map_entries` entries per `(worker, rank)`.
//! When full, the entry stored or refreshed **least recently is evicted and its router key is
//! removed from the index on every tier it held**, so the index never keeps a block the router
//! can no longer remove (a false negative at worst, never a false positive), with all its copies.
//! Evicting the oldest
//! rather than refusing new entries self-heals when removals were lost (old blocks are the ones
//! vLLM's LRU dropped first), whereas refusing would freeze the worker's view. The order is a
//! FIFO of `(hash, stamp)` with lazy deletion, compacted when it exceeds twice the map.
//! Counted in `map_evictions`. If two engine hashes of one worker map to the same router key
//! (only possible when vLLM hashes inputs the events do not carry: LoRA path, look-ahead tokens),
//! removing one drops the key from the index: again a false negative, never a false positive.
//!
//! # Hash parity check
//!
//! - Block size (both keyings): every `BlockStored` with tokens must have the model's
//!   `block_size` and `block_hashes.len() * block_size` tokens, else the worker is flagged
//!   `block_size_mismatch` (with its block size and a `likely_cause`). Sticky until
//!   [`EventApplier::clear_worker`] / [`EventApplier::remove_worker`].
//! - Engine keying with a configured algorithm (and seed): the first `parity_first` `BlockStored`
//!   events with tokens of each `(worker, rank)`, then one in `parity_every`, are recomputed with
//!   [`EngineHasher`]. Events only carry the parent's 64-bit form, so a sampled event is checkable
//!   when its parent is `None` (`NONE_HASH`), a full digest (bytes hashes), or a digest this
//!   checker recomputed and verified earlier (kept in a small per-worker cache keyed by its u64
//!   form); otherwise, and for events with extra keys (LoRA paths, multimodal, salts or look-ahead
//!   tokens are not all on the wire), the check waits for the next checkable event. A mismatch
//!   sets `hash_mismatch` and a `likely_cause` found by trying, on the first block, other block
//!   sizes, the other algorithms, and the unset-seed default and common seeds. Serving goes on.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::str::FromStr;

use crate::block_keys::RouterKeyer;
use crate::engine_hash::{Digest, EngineHasher, EngineHasherConfig, HashAlgorithm};
use crate::error::{Error, Result};
use crate::events::msgpack::Value;
use crate::events::{
    decode_batch, BlockHash, BlockRemoved, BlockStored, DecodeError, KvEvent, KvEventBatch,
};
use crate::extra_keys::{BlockExtraKeys, BlockMm, LoraKey, MmBlockKey};
use crate::indexer::{Indexer, MAX_TIERS};
use crate::tiers::{self, Placement, Tier};

mod keyed;
pub use keyed::{decode_keyed, KeyedEvent};

/// Default bound of each `(worker, dp_rank)` engine map.
pub const DEFAULT_MAX_ENGINE_MAP_ENTRIES: usize = 1 << 20;
/// Default number of leading `BlockStored` events checked per `(worker, dp_rank)`.
pub const DEFAULT_PARITY_FIRST: u32 = 16;
/// Default sampling period after the first ones.
pub const DEFAULT_PARITY_EVERY: u32 = 64;
/// Verified digests kept per `(worker, dp_rank)` for checking child events.
const DIGEST_CACHE_MAX: usize = 4096;
/// Distinct reason keys kept per counter map (further ones go to `"other"`).
const MAX_REASONS: usize = 64;
/// Block sizes tried when diagnosing a block-size mismatch.
const COMMON_BLOCK_SIZES: [u32; 6] = [16, 32, 64, 128, 256, 8];
/// Seeds tried when diagnosing a hash mismatch (`None` = unset).
const COMMON_SEEDS: [Option<&str>; 5] = [None, Some("0"), Some("42"), Some("1"), Some("")];

const _: () = assert!(MAX_TIERS <= 8, "tier bitmasks are u8");

/// How blocks are keyed in the index; see the [module documentation](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Keying {
    /// The router's own chained keys over token ids (needs no worker hash settings).
    #[default]
    Tokens,
    /// vLLM's block hashes, as the events carry them.
    Engine,
}

impl Keying {
    pub fn as_str(self) -> &'static str {
        match self {
            Keying::Tokens => "tokens",
            Keying::Engine => "engine",
        }
    }
}

impl fmt::Display for Keying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Keying {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tokens" => Ok(Keying::Tokens),
            "engine" => Ok(Keying::Engine),
            _ => Err(Error::config(format!(
                "unknown keying {s:?} (expected \"tokens\" or \"engine\")"
            ))),
        }
    }
}

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
    /// Events skipped, by the decoder or here (see the module docs for the reasons).
    pub skipped: u32,
    /// Of those, events of a known type the decoder could not read (`BlockStored`,
    /// `BlockRemoved`, `AllBlocksCleared` with wrong fields): the worker's view may be wrong,
    /// a resync is advisable.
    pub skipped_known: u32,
    /// The batch's `data_parallel_rank` (0 when absent).
    pub dp_rank: u32,
}

/// Parity and map state of one `(worker, dp_rank)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerEventStats {
    pub worker_id: String,
    pub dp_rank: u32,
    /// Entries of its engine map (`Tokens` keying).
    pub map_entries: u64,
    /// Extra copies of blocks it holds more than once (see "Duplicate blocks" in the module docs).
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
    /// Events skipped, and why (see the module docs).
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
    /// (vLLM does not de-duplicate blocks; see the module docs).
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

/// murmur3's 64-bit finalizer over `write_u64`: engine hashes may be small ints (vLLM 0.9) or
/// adversarial, so they are mixed rather than used as is.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ b as u64);
        }
    }

    #[inline]
    fn write_u64(&mut self, k: u64) {
        let mut x = k ^ (k >> 33);
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        self.0 = x ^ (x >> 33);
    }
}

type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// An engine hash on a tier (indexer tier id) of one `(worker, rank)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    hash: u64,
    tier: u8,
}

impl std::hash::Hash for Held {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash ^ u64::from(self.tier).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
}

/// The extra copies of one `(worker, rank)`: `(hash, tier)` → copies beyond the first (≥ 1). Only
/// duplicated holdings have an entry; see "Duplicate blocks" in the module docs.
#[derive(Default)]
struct CopyCounts {
    extra: HashMap<Held, u32, BuildHasherDefault<KeyHasher>>,
    /// Sum of `extra`'s values.
    total: u64,
}

impl CopyCounts {
    #[inline]
    fn is_empty(&self) -> bool {
        self.extra.is_empty()
    }

    /// One more copy of a holding that exists.
    fn add(&mut self, hash: u64, tier: usize, c: &mut Counters) {
        let n = self
            .extra
            .entry(Held {
                hash,
                tier: tier as u8,
            })
            .or_insert(0);
        *n = n.saturating_add(1);
        self.total += 1;
        c.duplicate_stores += 1;
    }

    /// Takes one extra copy away; false if the holding has only one (remove the holding).
    #[inline]
    fn take(&mut self, hash: u64, tier: usize, c: &mut Counters) -> bool {
        if self.extra.is_empty() {
            return false;
        }
        let h = Held {
            hash,
            tier: tier as u8,
        };
        let Entry::Occupied(mut o) = self.extra.entry(h) else {
            return false;
        };
        *o.get_mut() -= 1;
        if *o.get() == 0 {
            o.remove();
            self.maybe_shrink();
        }
        self.total -= 1;
        c.duplicate_removes += 1;
        true
    }

    /// Drops the extra copies of `hash` on the tiers of `tiers` (its holdings there are gone).
    #[inline]
    fn forget(&mut self, hash: u64, tiers: u8) {
        if self.extra.is_empty() {
            return;
        }
        let mut m = tiers;
        while m != 0 {
            let tier = m.trailing_zeros() as u8;
            if let Some(n) = self.extra.remove(&Held { hash, tier }) {
                self.total -= u64::from(n);
            }
            m &= m - 1;
        }
        self.maybe_shrink();
    }

    fn clear(&mut self) {
        self.extra.clear();
        self.total = 0;
        if self.extra.capacity() > 1024 {
            self.extra.shrink_to(0);
        }
    }

    fn maybe_shrink(&mut self) {
        if self.extra.capacity() > 4096 && self.extra.len() * 8 < self.extra.capacity() {
            self.extra.shrink_to(self.extra.len() * 2);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct MapEntry {
    /// Router key.
    key: u64,
    /// Last store/refresh; matches the entry's live item in `order`.
    stamp: u32,
    /// Tiers (indexer tier ids) holding at least one copy of the block (further copies are in
    /// [`RankState::copies`]).
    tiers: u8,
}

/// One `(worker, dp_rank)`.
#[derive(Default)]
struct RankState {
    map: KeyMap<MapEntry>,
    /// `(engine hash, stamp)` in store order, with stale items (lazy deletion).
    order: VecDeque<(u64, u32)>,
    /// Extra copies of duplicated blocks, by engine hash (both keyings).
    copies: CopyCounts,
    next_stamp: u32,
    block_size_mismatch: bool,
    worker_block_size: Option<u32>,
    hash_mismatch: bool,
    likely_cause: Option<String>,
    /// `likely_cause` is a definite diagnosis (no need to diagnose again).
    cause_final: bool,
    checked: u64,
    mismatched: u64,
    /// `BlockStored` events with tokens seen (for sampling).
    stored_seen: u64,
    /// A sample is due but no checkable event came yet.
    parity_due: bool,
    /// Verified digests by u64 form, for checking children.
    digests: KeyMap<Digest>,
}

impl RankState {
    fn clear_map(&mut self) {
        self.map.clear();
        self.order.clear();
        self.copies.clear();
        if self.map.capacity() > 1024 {
            self.map.shrink_to(0);
            self.order.shrink_to(0);
        }
    }

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

    fn stamp(&mut self) -> u32 {
        self.next_stamp = self.next_stamp.wrapping_add(1);
        self.next_stamp
    }

    /// Maps `hash` to `key` held on `tier`; entries that leave (rekeyed or evicted) go to `drop`
    /// as `(router key, tiers)`.
    fn insert(
        &mut self,
        hash: u64,
        key: u64,
        tier: usize,
        max: usize,
        c: &mut Counters,
        drop: &mut Vec<(u64, u8)>,
    ) {
        let stamp = self.stamp();
        let bit = 1u8 << tier;
        match self.map.entry(hash) {
            Entry::Occupied(mut o) => {
                let e = o.get_mut();
                if e.key != key {
                    // The old key leaves the index on every tier, whatever its copies.
                    drop.push((e.key, e.tiers));
                    c.map_rekeyed += 1;
                    self.copies.forget(hash, e.tiers);
                    e.key = key;
                    e.tiers = 0;
                }
                if e.tiers & bit != 0 {
                    self.copies.add(hash, tier, c);
                }
                e.tiers |= bit;
                e.stamp = stamp;
            }
            Entry::Vacant(v) => {
                v.insert(MapEntry {
                    key,
                    stamp,
                    tiers: bit,
                });
            }
        }
        self.order.push_back((hash, stamp));
        while self.map.len() > max {
            if !self.evict_oldest(c, drop) {
                break;
            }
        }
        self.maybe_compact();
    }

    /// Refreshes `hash` (one more copy on `tier`); false if unknown.
    fn touch(&mut self, hash: u64, tier: usize, c: &mut Counters) -> bool {
        let stamp = self.stamp();
        let Some(e) = self.map.get_mut(&hash) else {
            return false;
        };
        if e.tiers & (1 << tier) != 0 {
            self.copies.add(hash, tier, c);
        }
        e.tiers |= 1 << tier;
        e.stamp = stamp;
        self.order.push_back((hash, stamp));
        true
    }

    fn evict_oldest(&mut self, c: &mut Counters, drop: &mut Vec<(u64, u8)>) -> bool {
        while let Some((h, s)) = self.order.pop_front() {
            if let Entry::Occupied(o) = self.map.entry(h) {
                if o.get().stamp == s {
                    let e = o.remove();
                    self.copies.forget(h, e.tiers);
                    drop.push((e.key, e.tiers));
                    c.map_evictions += 1;
                    return true;
                }
            }
        }
        false
    }

    fn maybe_compact(&mut self) {
        if self.map.is_empty() {
            self.order.clear();
        } else if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(h, s)| map.get(h).is_some_and(|e| e.stamp == *s));
        }
        if self.map.capacity() > 4096 && self.map.len() * 8 < self.map.capacity() {
            self.map.shrink_to(self.map.len() * 2);
            self.order.shrink_to(self.map.len() * 2 + 64);
        }
    }

    fn flag_block_size(&mut self, e: &BlockStored, model: u32) {
        self.block_size_mismatch = true;
        self.worker_block_size = Some(e.block_size);
        if self.likely_cause.is_none() {
            self.likely_cause = Some(block_size_cause(e, model, None));
        }
    }
}

#[derive(Default)]
struct Counters {
    batches: u64,
    events_stored: u64,
    events_removed: u64,
    events_cleared: u64,
    blocks_stored: u64,
    blocks_removed: u64,
    malformed_batches: u64,
    malformed_reasons: BTreeMap<&'static str, u64>,
    skipped_events: u64,
    skipped_reasons: BTreeMap<&'static str, u64>,
    unresolved_parents: u64,
    unresolved_hashes: u64,
    map_evictions: u64,
    map_rekeyed: u64,
    duplicate_stores: u64,
    duplicate_removes: u64,
    block_size_mismatches: u64,
}

fn bump(map: &mut BTreeMap<&'static str, u64>, reason: &'static str) {
    let key = if map.len() >= MAX_REASONS && !map.contains_key(reason) {
        "other"
    } else {
        reason
    };
    *map.entry(key).or_insert(0) += 1;
}

impl Counters {
    fn skip(&mut self, reason: &'static str, out: &mut ApplyOutcome) {
        self.skipped_events += 1;
        bump(&mut self.skipped_reasons, reason);
        out.skipped = out.skipped.saturating_add(1);
    }
}

/// How a `BlockStored`'s block size compares with the model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockSizeCheck {
    Ok,
    /// A vLLM ≥ 0.24 partial-block prefix entry.
    Partial,
    Mismatch,
}

fn check_block_size(e: &BlockStored, model: u32) -> BlockSizeCheck {
    let n = e.block_hashes.len();
    let covered = n.checked_mul(e.block_size as usize);
    if e.block_size == model && covered == Some(e.token_ids.len()) {
        BlockSizeCheck::Ok
    } else if n == 1
        && e.block_size > 0
        && e.block_size < model
        && model.is_multiple_of(e.block_size)
        && e.token_ids.len() == e.block_size as usize
    {
        BlockSizeCheck::Partial
    } else {
        BlockSizeCheck::Mismatch
    }
}

/// The diagnosis of a block-size mismatch: with a hasher and a root event, the first block is
/// recomputed at the candidate sizes to confirm one.
fn block_size_cause(e: &BlockStored, model: u32, hasher: Option<&EngineHasher>) -> String {
    let n = e.block_hashes.len();
    let t = e.token_ids.len();
    if let (Some(h), None, Some(&want)) =
        (hasher, &e.parent_block_hash, e.block_hashes.keys().first())
    {
        let mut sizes = vec![e.block_size];
        sizes.extend(COMMON_BLOCK_SIZES);
        for bs in sizes {
            if bs == 0 || bs == model || n.checked_mul(bs as usize) != Some(t) {
                continue;
            }
            let Ok(alt) = EngineHasher::with_none_hash(bs as usize, h.algorithm(), *h.none_hash())
            else {
                continue;
            };
            if alt
                .block_digest(None, &e.token_ids[..bs as usize], &BlockExtraKeys::NONE)
                .to_u64()
                == want
            {
                return format!(
                    "block_size: the worker hashes {bs}-token blocks, the router {model}"
                );
            }
        }
    }
    format!(
        "block_size: the worker reports {}-token blocks ({t} tokens for {n} hashes), the router uses {model}",
        e.block_size
    )
}

fn seed_desc(seed: Option<&str>) -> String {
    match seed {
        None => "unset".to_owned(),
        Some(s) => format!("{s:?}"),
    }
}

/// An event whose hashes the checker can recompute from what is on the wire.
fn parity_checkable(e: &BlockStored) -> bool {
    e.lora_name.is_none()
        && e.lora_id.is_none()
        && e.extra_keys
            .as_ref()
            .is_none_or(|k| k.iter().all(Option::is_none))
        && e.lookahead_token_ids
            .as_ref()
            .is_none_or(|l| l.iter().all(Vec::is_empty))
}

/// Per-block extra keys of a `BlockStored` for router keys: `(mm keys, cache salt)` per block.
type ParsedExtras<'e> = Vec<(Vec<MmBlockKey>, Option<&'e str>, Option<&'e [u8; 32]>)>;

/// Reads the untagged per-block extra keys vLLM publishes (docs/vllm-kv-events.md): the LoRA
/// name (also in `lora_name`), `[identifier, offset]` multimodal pairs, the cache salt (first
/// block of a request only), a prompt-embeds digest (bytes).
fn parse_extras<'e>(
    e: &'e BlockStored,
    keys: &'e [Option<Vec<Value>>],
) -> std::result::Result<ParsedExtras<'e>, &'static str> {
    if keys.len() != e.block_hashes.len() {
        return Err("extra_keys_length");
    }
    let root = e.parent_block_hash.is_none();
    let lora = e.lora_name.as_deref();
    let mut out = Vec::with_capacity(keys.len());
    for (i, items) in keys.iter().enumerate() {
        let Some(items) = items else {
            out.push((Vec::new(), None, None));
            continue;
        };
        let mut rest = &items[..];
        // A prompt-embeds digest is the block's last key (32 bytes: sha256).
        let mut embeds = None;
        if let Some(Value::Bin(b)) = rest.last() {
            embeds =
                Some(<&[u8; 32]>::try_from(b.as_slice()).map_err(|_| "unrecognized_extra_keys")?);
            rest = &rest[..rest.len() - 1];
        }
        if let (Some(name), Some(Value::Str(s))) = (lora, rest.first()) {
            if s == name {
                rest = &rest[1..];
            }
        }
        let mut mm = Vec::new();
        let mut salt = None;
        for (j, v) in rest.iter().enumerate() {
            match v {
                Value::Array(pair) => match pair.as_slice() {
                    [Value::Str(id), off] => {
                        match off.as_i128().and_then(|o| i64::try_from(o).ok()) {
                            Some(offset) => mm.push(MmBlockKey {
                                identifier: id.clone(),
                                offset,
                            }),
                            None => return Err("unrecognized_extra_keys"),
                        }
                    }
                    _ => return Err("unrecognized_extra_keys"),
                },
                Value::Str(s) if root && i == 0 && j + 1 == rest.len() => salt = Some(s.as_str()),
                Value::Str(_) => return Err("mm_without_offset"),
                _ => return Err("unrecognized_extra_keys"),
            }
        }
        out.push((mm, salt, embeds));
    }
    Ok(out)
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

fn worker_stats(worker_id: &str, dp_rank: u32, rs: &RankState) -> WorkerEventStats {
    WorkerEventStats {
        worker_id: worker_id.to_owned(),
        dp_rank,
        map_entries: rs.map.len() as u64,
        extra_copies: rs.copies.total,
        hash_mismatch: rs.hash_mismatch,
        block_size_mismatch: rs.block_size_mismatch,
        worker_block_size: rs.worker_block_size,
        likely_cause: rs.likely_cause.clone(),
        checked: rs.checked,
        mismatched: rs.mismatched,
    }
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
            rs.flag_block_size(e, self.cfg.block_size);
        }
        match self.cfg.keying {
            Keying::Engine => {
                if has_tokens {
                    self.parity_check(rs, e, bs);
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

    /// Stores `keys` as they are (engine keying, or keys already the router's): duplicates
    /// counted in `rs.copies`.
    #[allow(clippy::too_many_arguments)]
    fn store_keys(
        &mut self,
        w: &str,
        rank: u32,
        rs: &mut RankState,
        medium: Option<&str>,
        parent: Option<u64>,
        keys: &[u64],
        out: &mut ApplyOutcome,
    ) {
        // Keys held before are duplicates (rare: noted here, counted below). After a bypass, a
        // key not held may have a stale count (its holding was removed behind our back): dropped
        // below too.
        let heal = self.bypassed && !rs.copies.is_empty();
        let pending = &mut self.pending;
        pending.clear();
        let stored = self
            .index
            .apply_stored_with(w, rank, medium, parent, keys, |i, held| {
                if held || heal {
                    pending.push((keys[i], held));
                }
            });
        match stored {
            Ok(tier) => {
                for &(k, held) in &self.pending {
                    if held {
                        rs.copies.add(k, tier, &mut self.c);
                    } else {
                        rs.copies.forget(k, 1 << tier);
                    }
                }
                self.count_stored(keys.len(), out);
            }
            Err(_) => self.c.skip("indexer_rejected", out),
        }
    }

    fn count_stored(&mut self, n: usize, out: &mut ApplyOutcome) {
        self.c.blocks_stored += n as u64;
        out.stored = out.stored.saturating_add(n.try_into().unwrap_or(u32::MAX));
    }

    /// `Tokens` keying, an event with tokens (block size already checked).
    fn store_tokens(
        &mut self,
        w: &str,
        rank: u32,
        rs: &mut RankState,
        e: &BlockStored,
        medium: Option<&str>,
        out: &mut ApplyOutcome,
    ) {
        let parent = match &e.parent_block_hash {
            None => None,
            Some(p) => match rs.map.get(&p.to_u64()) {
                Some(entry) => Some(entry.key),
                None => {
                    self.c.unresolved_parents += 1;
                    return self.c.skip("unresolved_parent", out);
                }
            },
        };
        if e.lora_id.is_some() && e.lora_name.is_none() {
            return self.c.skip("lora_without_name", out);
        }
        let lora = e
            .lora_name
            .as_deref()
            .map(|name| LoraKey { name, path: "" });
        let bs = self.cfg.block_size as usize;
        let blocks = e.token_ids.chunks_exact(bs);
        self.keys.clear();
        let mut prev = parent;
        match e
            .extra_keys
            .as_deref()
            .filter(|k| k.iter().any(Option::is_some))
        {
            None => {
                let extra = BlockExtraKeys {
                    lora,
                    ..BlockExtraKeys::NONE
                };
                for block in blocks {
                    let k = self.keyer.block_key(prev, block, &extra);
                    self.keys.push(k);
                    prev = Some(k);
                }
            }
            Some(ek) => {
                let parsed = match parse_extras(e, ek) {
                    Ok(p) => p,
                    Err(reason) => return self.c.skip(reason, out),
                };
                for (block, (mm, salt, embeds)) in blocks.zip(&parsed) {
                    let extra = BlockExtraKeys {
                        lora,
                        mm: if mm.is_empty() {
                            BlockMm::None
                        } else {
                            BlockMm::Keys(mm)
                        },
                        cache_salt: *salt,
                        prompt_embeds: *embeds,
                    };
                    let k = self.keyer.block_key(prev, block, &extra);
                    self.keys.push(k);
                    prev = Some(k);
                }
            }
        }
        if self
            .index
            .apply_stored(w, rank, medium, parent, &self.keys)
            .is_err()
        {
            return self.c.skip("indexer_rejected", out);
        }
        let tier = self.index.tier_id(medium).unwrap_or(0);
        let max = self.cfg.max_engine_map_entries;
        self.drop.clear();
        for (&h, &k) in e.block_hashes.keys().iter().zip(&self.keys) {
            rs.insert(h, k, tier, max, &mut self.c, &mut self.drop);
        }
        self.count_stored(self.keys.len(), out);
        self.drop_keys(w, rank);
    }

    /// `Tokens` keying, a token-less event: each hash through the engine map.
    fn store_by_hash(
        &mut self,
        w: &str,
        rank: u32,
        rs: &mut RankState,
        e: &BlockStored,
        medium: Option<&str>,
        out: &mut ApplyOutcome,
    ) {
        self.keys.clear();
        for h in e.block_hashes.keys() {
            match rs.map.get(h) {
                Some(entry) => self.keys.push(entry.key),
                None => self.c.unresolved_hashes += 1,
            }
        }
        if self.keys.is_empty() {
            if !e.block_hashes.is_empty() {
                self.c.skip("unknown_block_hashes", out);
            }
            return;
        }
        if self
            .index
            .apply_stored(w, rank, medium, None, &self.keys)
            .is_err()
        {
            return self.c.skip("indexer_rejected", out);
        }
        let tier = self.index.tier_id(medium).unwrap_or(0);
        for h in e.block_hashes.keys() {
            rs.touch(*h, tier, &mut self.c);
        }
        rs.maybe_compact();
        self.count_stored(self.keys.len(), out);
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
        // Token keying: each hash through the engine map. A tier the index never saw holds
        // nothing: no copies, the bits stay as they are.
        let tier = self.index.tier_id(medium);
        let bit = tier.map_or(0, |t| 1u8 << t);
        self.keys.clear();
        let mut resolved = 0usize;
        for h in e.block_hashes.keys() {
            let Entry::Occupied(mut o) = rs.map.entry(*h) else {
                self.c.unresolved_hashes += 1;
                continue;
            };
            resolved += 1;
            if let Some(t) = tier.filter(|_| o.get().tiers & bit != 0) {
                if rs.copies.take(*h, t, &mut self.c) {
                    continue;
                }
            }
            self.keys.push(o.get().key);
            o.get_mut().tiers &= !bit;
            if o.get().tiers == 0 {
                o.remove();
            }
        }
        rs.maybe_compact();
        if resolved == 0 && !e.block_hashes.is_empty() {
            return self.c.skip("unknown_block_hashes", out);
        }
        if !self.keys.is_empty() {
            self.index.apply_removed(w, rank, medium, &self.keys);
        }
        self.c.blocks_removed += resolved as u64;
        out.removed = out
            .removed
            .saturating_add(resolved.try_into().unwrap_or(u32::MAX));
    }

    /// Removes `keys` as they are (engine keying, or keys already the router's): a duplicated
    /// key loses one copy and stays.
    fn remove_keys(
        &mut self,
        w: &str,
        rank: u32,
        rs: &mut RankState,
        medium: Option<&str>,
        keys: &[u64],
        out: &mut ApplyOutcome,
    ) {
        // A tier the index never saw holds nothing: no copies.
        let tier = self.index.tier_id(medium);
        let left: &[u64] = match tier {
            Some(t) if !rs.copies.is_empty() => {
                self.keys.clear();
                for &k in keys {
                    if !rs.copies.take(k, t, &mut self.c) {
                        self.keys.push(k);
                    }
                }
                &self.keys
            }
            _ => keys,
        };
        if !left.is_empty() {
            self.index.apply_removed(w, rank, medium, left);
        }
        self.c.blocks_removed += keys.len() as u64;
        out.removed = out
            .removed
            .saturating_add(keys.len().try_into().unwrap_or(u32::MAX));
    }

    /// Removes from the index the router keys of entries that left the map (evicted or rekeyed).
    fn drop_keys(&mut self, w: &str, rank: u32) {
        for i in 0..self.drop.len() {
            let (key, tiers) = self.drop[i];
            for t in 0..MAX_TIERS {
                if tiers & (1 << t) != 0 {
                    if let Some(name) = self.index.tier_name(t).map(str::to_owned) {
                        self.index.apply_removed(w, rank, Some(&name), &[key]);
                    }
                }
            }
        }
        self.drop.clear();
    }

    /// The engine-keying parity check of one `BlockStored` with tokens (see the module docs).
    fn parity_check(&mut self, rs: &mut RankState, e: &BlockStored, bs: BlockSizeCheck) {
        let Some(h) = &self.parity else { return };
        rs.stored_seen += 1;
        let first = u64::from(self.cfg.parity_first);
        let every = u64::from(self.cfg.parity_every);
        if rs.stored_seen > first && every > 0 && (rs.stored_seen - first).is_multiple_of(every) {
            rs.parity_due = true;
        }
        if !(rs.stored_seen <= first || rs.parity_due) {
            return;
        }
        match bs {
            BlockSizeCheck::Partial => return,
            BlockSizeCheck::Mismatch => {
                // The router hashes model-size blocks: these hashes can never match.
                rs.parity_due = false;
                rs.checked += 1;
                rs.mismatched += 1;
                rs.hash_mismatch = true;
                if !rs.cause_final {
                    rs.likely_cause = Some(block_size_cause(e, self.cfg.block_size, Some(h)));
                    rs.cause_final = true;
                }
                return;
            }
            BlockSizeCheck::Ok => {}
        }
        if !parity_checkable(e) {
            rs.parity_due = true;
            return;
        }
        let alg = h.algorithm();
        let (parent, parent_verified) = match &e.parent_block_hash {
            None => (*h.none_hash(), true),
            Some(BlockHash::Bytes(b)) if b.as_slice().len() == alg.digest_len() => {
                match Digest::from_bytes(b.as_slice()) {
                    Ok(d) => (d, false),
                    Err(_) => {
                        rs.parity_due = true;
                        return;
                    }
                }
            }
            Some(p) => match rs.digests.get(&p.to_u64()) {
                Some(d) => (*d, true),
                None => {
                    rs.parity_due = true;
                    return;
                }
            },
        };
        rs.parity_due = false;
        rs.checked += 1;
        let bsz = self.cfg.block_size as usize;
        let mut d = parent;
        let mut bad = None;
        for (i, (block, &want)) in e
            .token_ids
            .chunks_exact(bsz)
            .zip(e.block_hashes.keys())
            .enumerate()
        {
            d = h.block_digest(Some(&d), block, &BlockExtraKeys::NONE);
            if d.to_u64() != want {
                bad = Some(i);
                break;
            }
            if rs.digests.len() >= DIGEST_CACHE_MAX {
                rs.digests.clear();
            }
            rs.digests.insert(want, d);
        }
        let Some(i) = bad else { return };
        rs.mismatched += 1;
        rs.hash_mismatch = true;
        if rs.cause_final {
            return;
        }
        let (cause, definite) = diagnose(
            h,
            self.cfg.hash_seed.as_deref(),
            e,
            i,
            &parent,
            parent_verified,
        );
        rs.likely_cause = Some(cause);
        rs.cause_final = definite;
    }
}

/// Why block `i` of `e` did not hash as the router does, trying the cheap alternatives on that
/// block. Returns the cause and whether it is definite.
fn diagnose(
    ours: &EngineHasher,
    our_seed: Option<&str>,
    e: &BlockStored,
    i: usize,
    parent: &Digest,
    parent_verified: bool,
) -> (String, bool) {
    let bs = ours.block_size();
    let alg = ours.algorithm();
    let (Some(block), Some(&want)) = (
        e.token_ids.chunks_exact(bs).nth(i),
        e.block_hashes.keys().get(i),
    ) else {
        return (
            "unknown: the block could not be recomputed".to_owned(),
            false,
        );
    };
    let root = i == 0 && e.parent_block_hash.is_none();
    if !root && (i > 0 || parent_verified) {
        return (
            "unknown: a block differs although its parent hashed alike (extra keys the events do not show, \
             e.g. a LoRA path, prompt embeddings or look-ahead tokens, or a vLLM hashing change)"
                .to_owned(),
            false,
        );
    }
    let digest_with = |a: HashAlgorithm, seed: Option<&str>| -> Option<u64> {
        let h = EngineHasher::new(EngineHasherConfig {
            block_size: bs,
            algorithm: a,
            seed: seed.map(str::to_owned),
        })
        .ok()?;
        let p = if root { *h.none_hash() } else { *parent };
        Some(
            h.block_digest(Some(&p), block, &BlockExtraKeys::NONE)
                .to_u64(),
        )
    };
    let other_algs = HashAlgorithm::ALL.into_iter().filter(|a| *a != alg);
    if root {
        for seed in COMMON_SEEDS.into_iter().filter(|s| *s != our_seed) {
            if digest_with(alg, seed) == Some(want) {
                return (
                    format!(
                        "seed: the worker's PYTHONHASHSEED is {} (the router's is {})",
                        seed_desc(seed),
                        seed_desc(our_seed)
                    ),
                    true,
                );
            }
        }
    }
    for a in other_algs.clone() {
        if digest_with(a, our_seed) == Some(want) {
            return (
                format!("algorithm: the worker hashes with {a} (the router with {alg})"),
                true,
            );
        }
    }
    if root {
        for a in other_algs {
            for seed in COMMON_SEEDS.into_iter().filter(|s| *s != our_seed) {
                if digest_with(a, seed) == Some(want) {
                    return (
                        format!(
                            "algorithm and seed: the worker hashes with {a} and PYTHONHASHSEED {} (the router with {alg} and {})",
                            seed_desc(seed),
                            seed_desc(our_seed)
                        ),
                        true,
                    );
                }
            }
        }
        return (
            format!(
                "seed: the worker's PYTHONHASHSEED is not the router's ({}) nor a common one; or the worker \
                 is a vLLM older than 0.29 with it unset, or uses xxhash with it unset (random)",
                seed_desc(our_seed)
            ),
            false,
        );
    }
    (
        format!("unknown: the block does not hash with {alg} nor another algorithm"),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{BlockHashes, Medium};

    fn stored(hashes: &[u64], parent: Option<u64>, tokens: Vec<u32>, bs: u32) -> KvEvent {
        KvEvent::BlockStored(BlockStored {
            block_hashes: BlockHashes::from_keys(hashes.to_vec()),
            parent_block_hash: parent.map(BlockHash::Int),
            token_ids: tokens,
            block_size: bs,
            medium: Some(Medium::Gpu),
            ..Default::default()
        })
    }

    fn batch(events: Vec<KvEvent>) -> KvEventBatch {
        KvEventBatch {
            ts: 1.0,
            events,
            data_parallel_rank: Some(0),
            skipped: vec![],
        }
    }

    #[test]
    fn eviction_removes_oldest_from_index() {
        let mut cfg = EventApplierConfig::new(2);
        cfg.max_engine_map_entries = 2;
        let mut ap = EventApplier::new(cfg).unwrap();
        ap.apply_batch(
            "w",
            &batch(vec![stored(&[1, 2], None, vec![1, 2, 3, 4], 2)]),
        )
        .unwrap();
        ap.apply_batch("w", &batch(vec![stored(&[3], Some(2), vec![5, 6], 2)]))
            .unwrap();
        assert_eq!(ap.map_len("w", 0), 2);
        assert_eq!(ap.stats().map_evictions, 1);
        assert!(ap.router_key_of("w", 0, 1).is_none());
        assert_eq!(ap.indexer().stats().blocks, 2);
        ap.check_invariants().unwrap();
    }

    #[test]
    fn keying_parses() {
        assert_eq!("engine".parse::<Keying>().unwrap(), Keying::Engine);
        assert!("x".parse::<Keying>().is_err());
        assert!(EventApplier::new(EventApplierConfig::new(0)).is_err());
    }
}
