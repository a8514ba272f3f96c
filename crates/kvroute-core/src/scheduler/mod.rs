//! The scheduler: one model's routing decisions. It owns the model's [`EventApplier`] (so KV
//! events and decisions share one index), the candidate *targets* (one per `(worker, dp_rank)`
//! the registry lists), the router's own load bookkeeping ([`load`]), the speculative overlay
//! ([`speculative`]) and the workers' scraped metrics, and answers a decision in one call:
//! request tokens → block keys → index walk → one score per target → a choice.
//!
//! # Cost model (mode `kv`)
//!
//! For every candidate target `t`, with `w = overlap_weight` and `λ = sequence_weight`:
//!
//! ```text
//! overlap(t)  = indexed overlap + speculative run after it          blocks, ≤ full prompt blocks
//! prefill(t)  = prompt blocks - overlap(t)                         this request's uncached blocks
//! load(t)     = Σ over tiers k of hits(t, k) × (1 - credit(k))    the overlap's loading time
//! queued(t)   = Σ prefill blocks of t's requests without a first token       (bookkeeping)
//! decode(t)   = unique KV blocks t's unfinished requests keep active, with this request added:
//!               shared prompt prefixes once, plus each request's own blocks   (bookkeeping)
//! context(t)  = Σ context blocks of those requests, shared prefixes per request (bookkeeping)
//! penalty(t)  = external × mean context blocks + w × external waiting × mean prompt blocks
//! cost(t)     = w × (prefill(t) + load(t) + queued(t)) + decode(t) + λ × context(t) + penalty(t)
//! ```
//!
//! **Tiers** ([`crate::tiers`]): `hits(t, k)` is how many of the indexed overlap's blocks `t`
//! holds at best on tier `k` (GPU, CPU, disk; speculative blocks count as GPU), and `credit(k)`
//! the fraction of a block's prefill time a hit there saves: 1 on the GPU, `1 - load time /
//! prefill time` per block elsewhere ([`SchedulerConfig::tier_credit`]). So `load` is the
//! loading time in units of prefill blocks, and a hit of `n` blocks on tier `k` is worth
//! `n × credit(k)` prefill blocks: a 30k-token CPU hit is worth a hundred times a 300-token one.
//! A credit of 0 prices a tier's hits like misses.
//!
//! `decode` is the KV memory the requests hold (vLLM shares a cached prefix among them), so a
//! request joining others with its prefix adds little there; `λ × context` is the per-sequence
//! decode work (each sequence reads its whole context every step), which keeps a few popular
//! prefixes from parking all the traffic on their holders while other workers idle. See
//! [`load`] for the bookkeeping.
//!
//! `prompt blocks = ceil(prompt tokens / block size)` (a trailing partial block is always
//! computed). The penalty is the *metrics correction* ([`metrics`]): the load a worker's last
//! scrape showed that the router did not place itself, fading over `metrics_ttl_ms`, priced with
//! the router's running means of its requests' prompt and context blocks; 0 without metrics.
//!
//! **Busy**: a target is busy when its fresh metrics show `kv_usage > busy_kv_usage` or
//! `waiting > busy_queue_depth`, or the router has `≥ busy_active_requests` requests on it.
//! Busy targets are skipped unless every candidate is busy (`all_busy`), in every mode.
//!
//! **Choice** ([`choice`]): `temperature == 0`: the minimum cost, ties broken uniformly at
//! random with the seeded PRNG; `temperature > 0`: softmax sampling over the costs normalized to
//! `[0, 1]`. Other modes: `round-robin` (cursor over the eligible targets in target order),
//! `random` (uniform), `least-loaded` (minimum of `w × queued + decode + λ × context +
//! penalty`, random tie-break). All modes compute overlaps (for the decision's numbers) and book
//! load; only `kv` credits speculative entries (the only mode they steer).
//!
//! **After a decision** (unless a dry run): the request is booked on the chosen target (unstarted,
//! lapsing after `unstarted_ttl_ms` unless [`Scheduler::start`] confirms it), and the target is
//! credited in the speculative overlay, for `speculative_ttl_ms` (0: off), with the request's
//! blocks past the prefix its index entry already confirms, so a burst sharing a new prefix sees
//! it there before the worker's events do ([`speculative`] has the exact semantics). Credit is
//! not cleared when events confirm the blocks (the indexed part of a later query simply covers
//! them); it lapses.
//!
//! # The parts, one file each
//!
//! - this file: the [`Scheduler`], its configuration and decision types, lifecycle calls and
//!   the decision itself ([`Scheduler::route`]: keys, index walk, scoring);
//! - [`targets`]: target registration and bookkeeping (ids, worker → targets), and the KV
//!   events that give targets their KV view ([`Scheduler::apply_payload`] and siblings);
//! - [`metrics`]: scraped worker metrics and the external-load penalty they give;
//! - [`choice`]: argmin / softmax over the scored candidates, and the PRNG;
//! - [`load`]: the router's own load bookkeeping (queued, decode and context blocks);
//! - [`speculative`]: the speculative overlay (and its `pair_table`).

mod choice;
pub mod load;
mod metrics;
mod pair_table;
mod recent_keys;
mod speculative;
mod targets;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use crate::block_keys::RouterKeyer;
use crate::engine_hash::{EngineHasher, EngineHasherConfig, HashAlgorithm};
use crate::error::{Error, Result};
use crate::event_applier::{EventApplier, EventApplierConfig, Keying};
use crate::extra_keys::ExtraKeys;
use crate::indexer::{Matches, MAX_TIERS};
use crate::tiers::{Tier, TIERS};

use choice::Rng;
use load::LoadBook;
pub use load::TargetLoad;
pub use metrics::WorkerMetrics;
use recent_keys::RecentKeys;
use speculative::Overlay;
use targets::Target;

/// A candidate's id: dense, reused lowest first after its worker leaves.
pub type TargetId = u32;

/// How a decision is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Cost model of the module docs.
    #[default]
    Kv,
    RoundRobin,
    Random,
    LeastLoaded,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Kv => "kv",
            Mode::RoundRobin => "round-robin",
            Mode::Random => "random",
            Mode::LeastLoaded => "least-loaded",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "kv" => Ok(Mode::Kv),
            "round-robin" => Ok(Mode::RoundRobin),
            "random" => Ok(Mode::Random),
            "least-loaded" => Ok(Mode::LeastLoaded),
            _ => Err(Error::config(format!(
                "unknown router mode {s:?} (expected kv, round-robin, random or least-loaded)"
            ))),
        }
    }
}

/// A worker's role; requests may ask for targets of some roles only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Role {
    #[default]
    Aggregated,
    Prefill,
    Decode,
}

impl Role {
    /// Its bit in a role mask (see [`RouteRequest::roles`]).
    pub fn bit(self) -> u8 {
        match self {
            Role::Aggregated => 1,
            Role::Prefill => 2,
            Role::Decode => 4,
        }
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "aggregated" => Ok(Role::Aggregated),
            "prefill" => Ok(Role::Prefill),
            "decode" => Ok(Role::Decode),
            _ => Err(Error::config(format!(
                "unknown worker role {s:?} (expected aggregated, prefill or decode)"
            ))),
        }
    }
}

/// Configuration of one model's [`Scheduler`].
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Block size, keying, the workers' hash algorithm and seed (engine keying hashes requests
    /// with them; sha256 when unset), engine-map bounds.
    pub events: EventApplierConfig,
    /// `w` of the cost model; ≥ 0.
    pub overlap_weight: f64,
    /// `λ` of the cost model (per-sequence decode work); ≥ 0.
    pub sequence_weight: f64,
    /// 0: argmin; > 0: softmax sampling over normalized costs.
    pub temperature: f64,
    /// Busy above this KV cache usage (0..1, vLLM's `kv_cache_usage_perc`).
    pub busy_kv_usage: Option<f64>,
    /// Busy above this many waiting requests (`num_requests_waiting`).
    pub busy_queue_depth: Option<f64>,
    /// Busy at this many of the router's own requests on the target.
    pub busy_active_requests: Option<u32>,
    /// Speculative credit per decision; 0 disables it.
    pub speculative_ttl_ms: f64,
    /// Bound of the speculative overlay in `(block, target)` pairs.
    pub max_speculative_blocks: usize,
    /// An unstarted booking lapses after this long.
    pub unstarted_ttl_ms: f64,
    /// Metrics older than this are ignored; their external load fades to 0 over it.
    pub metrics_ttl_ms: f64,
    /// How long before its arrival a scrape is assumed taken when the caller does not say:
    /// requests the router finished since then still count as its own in that scrape.
    pub metrics_lag_ms: f64,
    /// `max_tokens` beyond this does not grow the expected output further.
    pub expected_output_cap: u32,
    /// PRNG seed (tie-breaks, sampling, `random` mode).
    pub seed: u64,
    /// Per [`Tier`] (GPU, CPU, disk), the fraction of a block's prefill a hit there saves, in
    /// `[0, 1]` (GPU: 1). See the module docs; [`tier_credit`] derives it from speeds.
    pub tier_credit: [f64; TIERS],
}

/// Default credit of a CPU hit: an 8B model's 16-token block (2 MiB) crosses PCIe 4 x16
/// (~25 GB/s) in ~85 µs, against ~1.6 ms to prefill it at 10k tokens/s.
pub const DEFAULT_CPU_CREDIT: f64 = 0.95;
/// Default credit of a disk hit (NVMe at ~5 GB/s: ~0.4 ms a block).
pub const DEFAULT_DISK_CREDIT: f64 = 0.75;

/// The credit of a tier whose blocks load at `load_blocks_per_s` when prefill computes
/// `prefill_blocks_per_s`: `max(0, 1 - prefill speed / load speed)`.
pub fn tier_credit(prefill_blocks_per_s: f64, load_blocks_per_s: f64) -> f64 {
    if load_blocks_per_s.is_nan() || load_blocks_per_s <= 0.0 || !prefill_blocks_per_s.is_finite() {
        return 0.0;
    }
    (1.0 - prefill_blocks_per_s.max(0.0) / load_blocks_per_s).clamp(0.0, 1.0)
}

impl SchedulerConfig {
    pub fn new(events: EventApplierConfig) -> Self {
        SchedulerConfig {
            events,
            overlap_weight: 16.0,
            sequence_weight: 1.6,
            temperature: 0.0,
            busy_kv_usage: None,
            busy_queue_depth: None,
            busy_active_requests: None,
            speculative_ttl_ms: 2000.0,
            max_speculative_blocks: 1 << 18,
            unstarted_ttl_ms: 2000.0,
            metrics_ttl_ms: 10_000.0,
            metrics_lag_ms: 250.0,
            expected_output_cap: 4096,
            seed: 0x6b76_726f_7574_6531,
            tier_credit: [1.0, DEFAULT_CPU_CREDIT, DEFAULT_DISK_CREDIT],
        }
    }
}

/// One decision's input.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    pub tokens: &'a [u32],
    pub extra: &'a ExtraKeys,
    pub request_id: &'a str,
    /// Expected output bound (improves the predicted decode load).
    pub max_tokens: Option<u32>,
    pub mode: Mode,
    /// Sort `Decision::candidates` by cost (they are always filled).
    pub explain: bool,
    /// Decide only: no booking, no speculative credit.
    pub dry_run: bool,
    /// Role mask (OR of [`Role::bit`]); 0 = any role.
    pub roles: u8,
    /// Targets not to choose.
    pub exclude: &'a [TargetId],
}

/// One candidate's score. `cost` is the mode's criterion (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CandidateScore {
    pub target: TargetId,
    pub overlap_blocks: u32,
    /// The part of the overlap owed to speculative credit (the run right after the indexed part).
    pub speculative_blocks: u32,
    pub prefill_blocks: u32,
    /// The indexed overlap by best tier ([`Tier`] order: GPU, CPU, disk).
    pub tier_blocks: [u32; TIERS],
    /// `load(t)` of the module docs: the overlap's load time in prefill blocks.
    pub load_blocks: f64,
    pub queued_prefill_blocks: u64,
    /// Unique active blocks with this request added (shared prefixes once).
    pub decode_blocks: u64,
    /// Σ context blocks of its requests with this one added (shared prefixes per request).
    pub context_blocks: u64,
    pub penalty: f64,
    pub cost: f64,
    pub busy: bool,
    /// The target has a KV view (events or a clear were seen for it).
    pub kv_view: bool,
}

/// A decision; reused across calls (no allocation once warm).
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub target: TargetId,
    pub overlap_blocks: u32,
    pub prompt_blocks: u32,
    pub best_overlap_blocks: u32,
    /// Some candidate had no KV view.
    pub blind: bool,
    /// Every candidate was busy (the choice ignored the busy threshold).
    pub all_busy: bool,
    pub cost: f64,
    /// Every candidate, in target order, or by cost (then target) with `explain`.
    pub candidates: Vec<CandidateScore>,
}

/// Counters of a [`Scheduler`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub targets: u64,
    /// Requests booked (started or not).
    pub active_requests: u64,
    /// Of those, not started yet.
    pub unstarted_requests: u64,
    /// Unstarted bookings that lapsed.
    pub lapsed_bookings: u64,
    /// Lifecycle calls for unknown request ids (ignored).
    pub unknown_lifecycle: u64,
    pub speculative_pairs: u64,
    /// Speculative records dropped early by the size bound.
    pub speculative_evicted: u64,
    pub decisions: u64,
    pub blind_decisions: u64,
    pub all_busy_decisions: u64,
    /// Prompts whose leading block keys came from a recent prompt ([`recent_keys`]).
    pub reused_key_prompts: u64,
}

enum RequestKeyer {
    Router(RouterKeyer),
    Engine(EngineHasher),
}

/// EWMA weight of the running means.
const MEAN_ALPHA: f64 = 1.0 / 64.0;

/// One model's router; see the [module documentation](self).
pub struct Scheduler {
    cfg: SchedulerConfig,
    applier: EventApplier,
    keyer: RequestKeyer,
    /// Keys of recent long prompts, reused by their next turns.
    recent_keys: RecentKeys,
    targets: Vec<Option<Target>>,
    free: BTreeSet<TargetId>,
    by_worker: HashMap<Box<str>, Vec<TargetId>>,
    book: LoadBook,
    overlay: Overlay,
    rng: Rng,
    rr: usize,
    mean_prompt_blocks: f64,
    mean_context_blocks: f64,
    decisions: u64,
    blind_decisions: u64,
    all_busy_decisions: u64,
    // Scratch.
    keys: Vec<u64>,
    matches: Matches,
    by_slot: Vec<u32>,
    /// Per slot of the current query, its overlap by tier ([`Tier`] order).
    by_slot_tiers: Vec<[u32; TIERS]>,
    eligible: Vec<u32>,
    weights: Vec<f64>,
}

impl Scheduler {
    /// Errors (`InvalidConfig`): a bad applier config, a negative or non-finite weight,
    /// temperature or TTL, or an engine keying whose request hasher cannot be built (xxhash
    /// without a seed).
    pub fn new(cfg: SchedulerConfig) -> Result<Self> {
        let finite_nonneg = |v: f64, name: &str| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::config(format!("{name} must be a finite number ≥ 0")))
            }
        };
        finite_nonneg(cfg.overlap_weight, "overlapWeight")?;
        finite_nonneg(cfg.sequence_weight, "sequenceWeight")?;
        finite_nonneg(cfg.temperature, "temperature")?;
        finite_nonneg(cfg.speculative_ttl_ms, "speculativeTtlMs")?;
        finite_nonneg(cfg.unstarted_ttl_ms, "unstartedTtlMs")?;
        if cfg.metrics_ttl_ms.is_nan() || cfg.metrics_ttl_ms < 0.0 {
            return Err(Error::config("metricsTtlMs must be ≥ 0"));
        }
        finite_nonneg(cfg.metrics_lag_ms, "metricsLagMs")?;
        if cfg.tier_credit.iter().any(|c| !(0.0..=1.0).contains(c)) {
            return Err(Error::config("tier credits must be within [0, 1]"));
        }
        let applier = EventApplier::new(cfg.events.clone())?;
        let bs = cfg.events.block_size as usize;
        let keyer = match cfg.events.keying {
            Keying::Tokens => RequestKeyer::Router(RouterKeyer::new(bs)?),
            Keying::Engine => RequestKeyer::Engine(EngineHasher::new(EngineHasherConfig {
                block_size: bs,
                algorithm: cfg.events.hash_algorithm.unwrap_or(HashAlgorithm::Sha256),
                seed: cfg.events.hash_seed.clone(),
            })?),
        };
        Ok(Scheduler {
            book: LoadBook::new(cfg.events.block_size),
            overlay: Overlay::new(cfg.max_speculative_blocks),
            rng: Rng(cfg.seed),
            cfg,
            applier,
            keyer,
            recent_keys: RecentKeys::new(recent_keys::DEFAULT_BYTES),
            targets: Vec::new(),
            free: BTreeSet::new(),
            by_worker: HashMap::new(),
            rr: 0,
            mean_prompt_blocks: 0.0,
            mean_context_blocks: 0.0,
            decisions: 0,
            blind_decisions: 0,
            all_busy_decisions: 0,
            keys: Vec::new(),
            matches: Matches::new(),
            by_slot: Vec::new(),
            by_slot_tiers: Vec::new(),
            eligible: Vec::new(),
            weights: Vec::new(),
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    pub fn block_size(&self) -> u32 {
        self.cfg.events.block_size
    }

    /// The model's event applier and index.
    pub fn applier(&self) -> &EventApplier {
        &self.applier
    }

    // ---- lifecycle (targets and KV views: `targets.rs`; metrics: `metrics.rs`) ------------

    /// The request was sent to `target` (confirms the decision's booking, or books it from
    /// these numbers). Returns whether the booking existed.
    pub fn start(
        &mut self,
        request_id: &str,
        target: TargetId,
        prompt_blocks: u32,
        overlap_blocks: u32,
        max_tokens: Option<u32>,
    ) -> bool {
        if self
            .targets
            .get(target as usize)
            .is_none_or(Option::is_none)
        {
            return false;
        }
        let expected = self.expected_out(max_tokens);
        self.book
            .start(request_id, target, prompt_blocks, overlap_blocks, expected)
    }

    /// Another router replica's request (fleet mode), started on `target`: booked with its
    /// prompt's keys exactly as a request routed here (so shared prefixes count once), and with
    /// `credit` its keys past `overlap_blocks` credited to the target's speculative overlay, as
    /// `route` credits its own choice. Returns false for an unknown target.
    #[allow(clippy::too_many_arguments)]
    pub fn start_remote(
        &mut self,
        request_id: &str,
        target: TargetId,
        keys: &[u64],
        prompt_tokens: u32,
        overlap_blocks: u32,
        max_tokens: Option<u32>,
        credit: bool,
        now_ms: f64,
    ) -> bool {
        if self
            .targets
            .get(target as usize)
            .is_none_or(Option::is_none)
        {
            return false;
        }
        let expected = self.expected_out(max_tokens);
        let prompt_blocks = prompt_tokens.div_ceil(self.block_size().max(1));
        self.book.book(
            request_id,
            target,
            keys,
            prompt_tokens,
            prompt_blocks.saturating_sub(overlap_blocks),
            expected,
            f64::INFINITY,
        );
        if credit && self.cfg.speculative_ttl_ms > 0.0 {
            let from = (overlap_blocks as usize).min(keys.len());
            self.overlay
                .credit(target, &keys[from..], now_ms + self.cfg.speculative_ttl_ms);
        }
        true
    }

    /// The prompt keys of the last `route` call (fleet mode shares them with other replicas).
    pub fn last_keys(&self) -> &[u64] {
        &self.keys
    }

    pub fn first_token(&mut self, request_id: &str) -> bool {
        self.book.first_token(request_id)
    }

    pub fn tokens(&mut self, request_id: &str, generated: u32) -> bool {
        self.book.tokens(request_id, generated)
    }

    /// Finished, failed or cancelled at `now_ms`: all its load goes. A started request is
    /// remembered as finished on its target for the next scrape (see [`Scheduler::update_metrics`]).
    pub fn finish(&mut self, request_id: &str, now_ms: f64) -> bool {
        if let Some((target, true)) = self.book.target_of(request_id) {
            if let Some(Some(t)) = self.targets.get_mut(target as usize) {
                t.note_finish(now_ms);
            }
        }
        self.book.finish(request_id)
    }

    fn expected_out(&self, max_tokens: Option<u32>) -> u32 {
        max_tokens.map_or(0, |m| m.min(self.cfg.expected_output_cap) / 2)
    }

    // ---- decisions -------------------------------------------------------------------------

    /// Decides where `req` goes at `now_ms` and fills `out`. Returns false, leaving `out`
    /// unspecified, when there is no candidate (no target of the roles, or all excluded).
    pub fn route(&mut self, req: &RouteRequest<'_>, now_ms: f64, out: &mut Decision) -> bool {
        self.overlay.sweep(now_ms);
        self.book.sweep(now_ms);
        let bs = self.cfg.events.block_size as usize;
        self.keys.clear();
        match &self.keyer {
            RequestKeyer::Router(k) if req.extra.is_empty() => {
                self.recent_keys.keys(k, req.tokens, &mut self.keys)
            }
            RequestKeyer::Router(k) => k.keys(req.tokens, req.extra, &mut self.keys),
            RequestKeyer::Engine(h) => h.hashes(req.tokens, req.extra, &mut self.keys),
        }
        let prompt_blocks = req.tokens.len().div_ceil(bs) as u32;
        let index = self.applier.indexer();
        index.find_matches(&self.keys, &mut self.matches);
        // Index tier ids -> Tier (names the applier did not write count as nothing saved).
        let mut tier_of = [None; MAX_TIERS];
        for (t, slot) in tier_of.iter_mut().enumerate() {
            match index.tier_name(t) {
                Some(n) => *slot = Tier::from_name(n),
                None => break,
            }
        }
        for e in self.matches.entries() {
            let s = e.slot as usize;
            if self.by_slot.len() <= s {
                self.by_slot.resize(s + 1, 0);
                self.by_slot_tiers.resize(s + 1, [0; TIERS]);
            }
            self.by_slot[s] = e.blocks;
            let mut per = [0u32; TIERS];
            // A tier name the applier did not write stays out of every bucket: it saves nothing.
            for (&n, k) in e.tier_blocks.iter().zip(tier_of) {
                if let Some(k) = k {
                    per[k as usize] += n;
                }
            }
            self.by_slot_tiers[s] = per;
        }

        let w = self.cfg.overlap_weight;
        let mean_prompt = if self.decisions == 0 {
            prompt_blocks as f64
        } else {
            self.mean_prompt_blocks
        };
        let expected_out = self.expected_out(req.max_tokens);
        let context_blocks =
            (req.tokens.len() as u64 + expected_out as u64).div_ceil(bs as u64) as f64;
        let mean_context = if self.decisions == 0 {
            context_blocks
        } else {
            self.mean_context_blocks
        };
        let spec_on = !self.overlay.is_empty();
        let n_keys = self.keys.len();
        // Pass 1: indexed overlap, load, metrics; prefetch each candidate's first speculative
        // probe so pass 2 takes those cache misses in parallel.
        out.candidates.clear();
        for (tid, t) in self.targets.iter_mut().enumerate() {
            let Some(t) = t else { continue };
            let tid = tid as TargetId;
            if (req.roles != 0 && req.roles & t.role.bit() == 0) || req.exclude.contains(&tid) {
                continue;
            }
            if t.slot
                .is_none_or(|s| index.try_slot_worker(s) != Some((&*t.worker, t.dp_rank)))
            {
                t.slot = index.slot_of(&t.worker, t.dp_rank);
            }
            let (indexed, tier_blocks) = t
                .slot
                .and_then(|s| {
                    let s = s as usize;
                    Some((*self.by_slot.get(s)?, self.by_slot_tiers[s]))
                })
                .unwrap_or((0, [0; TIERS]));
            // Blocks on tiers without a credit entry (never written by the applier) save nothing.
            let credited: u32 = tier_blocks.iter().sum();
            let load_blocks = (indexed - credited.min(indexed)) as f64
                + tier_blocks
                    .iter()
                    .zip(self.cfg.tier_credit)
                    .map(|(&n, c)| n as f64 * (1.0 - c))
                    .sum::<f64>();
            if spec_on && (indexed as usize) < n_keys {
                self.overlay.prefetch(tid, self.keys[indexed as usize]);
            }
            if n_keys > 0 {
                self.book.prefetch(tid, self.keys[0]);
            }
            let load = self.book.load(tid);
            let mut penalty = 0.0;
            let mut busy = self
                .cfg
                .busy_active_requests
                .is_some_and(|n| load.requests >= n);
            if let Some((p, b)) = t
                .metrics
                .and_then(|m| m.correction(now_ms, &self.cfg, mean_context, mean_prompt))
            {
                penalty = p;
                busy |= b;
            }
            out.candidates.push(CandidateScore {
                target: tid,
                overlap_blocks: indexed,
                speculative_blocks: 0,
                prefill_blocks: 0,
                tier_blocks,
                load_blocks,
                queued_prefill_blocks: load.prefill_blocks,
                decode_blocks: load.decode_blocks,
                context_blocks: load.context_blocks,
                penalty,
                cost: 0.0,
                busy,
                kv_view: t.kv_view,
            });
        }
        // Pass 2: speculative runs, marginal decode blocks and costs.
        let own = self
            .book
            .own_blocks(req.tokens.len() as u32, expected_out, n_keys);
        let lambda = self.cfg.sequence_weight;
        for c in out.candidates.iter_mut() {
            c.decode_blocks += self.book.marginal(c.target, &self.keys, own);
            c.context_blocks += n_keys as u64 + own as u64;
            if spec_on {
                c.speculative_blocks =
                    self.overlay
                        .run(c.target, &self.keys[c.overlap_blocks as usize..], now_ms);
                c.overlap_blocks += c.speculative_blocks;
            }
            c.prefill_blocks = prompt_blocks - c.overlap_blocks.min(prompt_blocks);
            let queued = c.queued_prefill_blocks as f64;
            let load = c.decode_blocks as f64 + lambda * c.context_blocks as f64 + c.penalty;
            c.cost = match req.mode {
                Mode::LeastLoaded => w * queued + load,
                _ => w * (c.prefill_blocks as f64 + c.load_blocks + queued) + load,
            };
        }
        for e in self.matches.entries() {
            self.by_slot[e.slot as usize] = 0;
            self.by_slot_tiers[e.slot as usize] = [0; TIERS];
        }
        if out.candidates.is_empty() {
            return false;
        }

        self.eligible.clear();
        self.eligible
            .extend((0..out.candidates.len() as u32).filter(|&i| !out.candidates[i as usize].busy));
        let all_busy = self.eligible.is_empty();
        if all_busy {
            self.eligible.extend(0..out.candidates.len() as u32);
        }
        let pick = match req.mode {
            Mode::Kv if self.cfg.temperature > 0.0 => self.softmax(&out.candidates),
            Mode::Kv | Mode::LeastLoaded => self.argmin(&out.candidates),
            Mode::Random => self.eligible[self.rng.below(self.eligible.len())],
            Mode::RoundRobin => {
                let i = self.rr % self.eligible.len();
                self.rr = self.rr.wrapping_add(1);
                self.eligible[i]
            }
        };
        let chosen = out.candidates[pick as usize];

        out.target = chosen.target;
        out.overlap_blocks = chosen.overlap_blocks;
        out.prompt_blocks = prompt_blocks;
        out.best_overlap_blocks = out
            .candidates
            .iter()
            .map(|c| c.overlap_blocks)
            .max()
            .unwrap_or(0);
        out.blind = out.candidates.iter().any(|c| !c.kv_view);
        out.all_busy = all_busy;
        out.cost = chosen.cost;
        if req.explain {
            out.candidates.sort_by(|a, b| {
                a.cost
                    .total_cmp(&b.cost)
                    .then_with(|| a.target.cmp(&b.target))
            });
        }

        self.decisions += 1;
        self.blind_decisions += out.blind as u64;
        self.all_busy_decisions += all_busy as u64;
        if self.decisions == 1 {
            self.mean_prompt_blocks = prompt_blocks as f64;
            self.mean_context_blocks = context_blocks;
        } else {
            self.mean_prompt_blocks +=
                MEAN_ALPHA * (prompt_blocks as f64 - self.mean_prompt_blocks);
            self.mean_context_blocks += MEAN_ALPHA * (context_blocks - self.mean_context_blocks);
        }
        if !req.dry_run {
            self.book.book(
                req.request_id,
                chosen.target,
                &self.keys,
                req.tokens.len().min(u32::MAX as usize) as u32,
                chosen.prefill_blocks,
                expected_out,
                now_ms + self.cfg.unstarted_ttl_ms,
            );
            // Only kv scoring is steered by the credit; other modes skip its cost.
            if self.cfg.speculative_ttl_ms > 0.0 && req.mode == Mode::Kv {
                let indexed = chosen.overlap_blocks - chosen.speculative_blocks;
                self.overlay.credit(
                    chosen.target,
                    &self.keys[indexed as usize..],
                    now_ms + self.cfg.speculative_ttl_ms,
                );
            }
        }
        true
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            targets: self.by_worker.values().map(|v| v.len() as u64).sum(),
            active_requests: self.book.len() as u64,
            unstarted_requests: self.book.unstarted() as u64,
            lapsed_bookings: self.book.lapsed,
            unknown_lifecycle: self.book.unknown,
            speculative_pairs: self.overlay.len() as u64,
            speculative_evicted: self.overlay.evicted,
            decisions: self.decisions,
            blind_decisions: self.blind_decisions,
            all_busy_decisions: self.all_busy_decisions,
            reused_key_prompts: self.recent_keys.hits,
        }
    }
}

#[cfg(test)]
mod tests;
