//! The hash parity check: whether a worker's block size, hash algorithm and seed are the ones the
//! router was configured with, found from its `BlockStored` events, with a diagnosis of what
//! differs. The flags are per `(worker, dp_rank)` ([`ParityState`]) and show in
//! [`WorkerEventStats`].
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
//!
//! [`WorkerEventStats`]: super::WorkerEventStats
//! [`EventApplier::clear_worker`]: super::EventApplier::clear_worker
//! [`EventApplier::remove_worker`]: super::EventApplier::remove_worker

use super::engine_map::KeyMap;
use super::Core;
use crate::engine_hash::{Digest, EngineHasher, EngineHasherConfig, HashAlgorithm};
use crate::events::{BlockHash, BlockStored};
use crate::extra_keys::BlockExtraKeys;

/// Verified digests kept per `(worker, dp_rank)` for checking child events.
const DIGEST_CACHE_MAX: usize = 4096;
/// Block sizes tried when diagnosing a block-size mismatch.
const COMMON_BLOCK_SIZES: [u32; 6] = [16, 32, 64, 128, 256, 8];
/// Seeds tried when diagnosing a hash mismatch (`None` = unset).
const COMMON_SEEDS: [Option<&str>; 5] = [None, Some("0"), Some("42"), Some("1"), Some("")];

/// The parity state of one `(worker, dp_rank)`: its flags (as in [`WorkerEventStats`]) and the
/// sampling and digest cache of the hash check.
#[derive(Default)]
pub(super) struct ParityState {
    pub(super) block_size_mismatch: bool,
    pub(super) worker_block_size: Option<u32>,
    pub(super) hash_mismatch: bool,
    pub(super) likely_cause: Option<String>,
    /// `likely_cause` is a definite diagnosis (no need to diagnose again).
    cause_final: bool,
    pub(super) checked: u64,
    pub(super) mismatched: u64,
    /// `BlockStored` events with tokens seen (for sampling).
    stored_seen: u64,
    /// A sample is due but no checkable event came yet.
    parity_due: bool,
    /// Verified digests by u64 form, for checking children.
    digests: KeyMap<Digest>,
}

impl ParityState {
    pub(super) fn flag_block_size(&mut self, e: &BlockStored, model: u32) {
        self.block_size_mismatch = true;
        self.worker_block_size = Some(e.block_size);
        if self.likely_cause.is_none() {
            self.likely_cause = Some(block_size_cause(e, model, None));
        }
    }
}

/// How a `BlockStored`'s block size compares with the model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BlockSizeCheck {
    Ok,
    /// A vLLM ≥ 0.24 partial-block prefix entry.
    Partial,
    Mismatch,
}

pub(super) fn check_block_size(e: &BlockStored, model: u32) -> BlockSizeCheck {
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

impl Core {
    /// The engine-keying parity check of one `BlockStored` with tokens (see the module docs).
    pub(super) fn parity_check(
        &mut self,
        ps: &mut ParityState,
        e: &BlockStored,
        bs: BlockSizeCheck,
    ) {
        let Some(h) = &self.parity else { return };
        ps.stored_seen += 1;
        let first = u64::from(self.cfg.parity_first);
        let every = u64::from(self.cfg.parity_every);
        if ps.stored_seen > first && every > 0 && (ps.stored_seen - first).is_multiple_of(every) {
            ps.parity_due = true;
        }
        if !(ps.stored_seen <= first || ps.parity_due) {
            return;
        }
        match bs {
            BlockSizeCheck::Partial => return,
            BlockSizeCheck::Mismatch => {
                // The router hashes model-size blocks: these hashes can never match.
                ps.parity_due = false;
                ps.checked += 1;
                ps.mismatched += 1;
                ps.hash_mismatch = true;
                if !ps.cause_final {
                    ps.likely_cause = Some(block_size_cause(e, self.cfg.block_size, Some(h)));
                    ps.cause_final = true;
                }
                return;
            }
            BlockSizeCheck::Ok => {}
        }
        if !parity_checkable(e) {
            ps.parity_due = true;
            return;
        }
        let alg = h.algorithm();
        let (parent, parent_verified) = match &e.parent_block_hash {
            None => (*h.none_hash(), true),
            Some(BlockHash::Bytes(b)) if b.as_slice().len() == alg.digest_len() => {
                match Digest::from_bytes(b.as_slice()) {
                    Ok(d) => (d, false),
                    Err(_) => {
                        ps.parity_due = true;
                        return;
                    }
                }
            }
            Some(p) => match ps.digests.get(&p.to_u64()) {
                Some(d) => (*d, true),
                None => {
                    ps.parity_due = true;
                    return;
                }
            },
        };
        ps.parity_due = false;
        ps.checked += 1;
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
            if ps.digests.len() >= DIGEST_CACHE_MAX {
                ps.digests.clear();
            }
            ps.digests.insert(want, d);
        }
        let Some(i) = bad else { return };
        ps.mismatched += 1;
        ps.hash_mismatch = true;
        if ps.cause_final {
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
        ps.likely_cause = Some(cause);
        ps.cause_final = definite;
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
