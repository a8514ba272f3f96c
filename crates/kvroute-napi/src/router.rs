//! `KvRouterCore`: one model's scheduler (`kvroute_core::scheduler`) — its KV index, targets,
//! load bookkeeping, speculative entries and metrics — behind N-API. A decision is one call:
//! the prompt's tokens go in as a `Uint32Array` (hashed here), the answer comes back packed into
//! the caller's reused `Float64Array`, so the JS side never loops over blocks and allocates
//! nothing per decision but the decision object it builds.

use kvroute_core::event_applier::decode_keyed;
use kvroute_core::events::{decode_direct, DecodeError};
use kvroute_core::extra_keys::ExtraKeys;
use kvroute_core::scheduler::{
    Decision, Mode, Role, RouteRequest, Scheduler, SchedulerConfig, WorkerMetrics,
};
use kvroute_core::tiers::Tier;
use kvroute_front::fleet::{lock_scheduler, SharedScheduler};
use napi::bindgen_prelude::{
    BigUint64Array, BigUint64ArraySlice, Float64ArraySlice, Uint32ArraySlice, Uint8ArraySlice,
};
use napi_derive::napi;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::convert::{invalid_config, to_napi};
use crate::indexer::{apply_result, event_applier_config, ApplyEventBatchResult, KvEventStats};

/// Words of the packed decision header (see `route`).
pub const ROUTE_HEADER: u32 = 8;
/// Words per packed candidate.
pub const ROUTE_STRIDE: u32 = 15;
/// Words of a packed `applyEventBatchInto` outcome.
const APPLY_WORDS: usize = 7;

#[napi(object)]
pub struct KvRouterCoreOptions {
    pub block_size: u32,
    #[napi(ts_type = "'tokens' | 'engine'")]
    pub keying: Option<String>,
    /// The workers' `--prefix-caching-hash-algo` (engine keying hashes requests with it; default
    /// sha256).
    pub hash_algorithm: Option<String>,
    /// The workers' PYTHONHASHSEED (unset when absent).
    pub hash_seed: Option<String>,
    pub max_engine_map_entries: Option<u32>,
    /// Default 16.
    pub overlap_weight: Option<f64>,
    /// Default 1.6.
    pub sequence_weight: Option<f64>,
    /// Default 0 (argmin).
    pub temperature: Option<f64>,
    pub busy_kv_usage: Option<f64>,
    pub busy_queue_depth: Option<f64>,
    pub busy_active_requests: Option<u32>,
    /// Default 2000; 0 disables speculative entries.
    pub speculative_ttl_ms: Option<f64>,
    /// Default 262144 (block, target) pairs.
    pub max_speculative_blocks: Option<u32>,
    /// Default 2000.
    pub unstarted_ttl_ms: Option<f64>,
    /// Default 10000.
    pub metrics_ttl_ms: Option<f64>,
    /// Default 250: a scrape is assumed taken this long before it arrives unless its caller
    /// says when.
    pub metrics_lag_ms: Option<f64>,
    /// Default 4096.
    pub expected_output_cap: Option<u32>,
    /// PRNG seed (an integer; default fixed).
    pub seed: Option<u32>,
    /// Fraction of a block's prefill a CPU-tier hit saves, 0..1 (default 0.95).
    pub cpu_tier_credit: Option<f64>,
    /// Fraction of a block's prefill a disk-tier hit saves, 0..1 (default 0.75).
    pub disk_tier_credit: Option<f64>,
}

/// The router's predicted load on one (worker, dpRank).
#[napi(object)]
pub struct TargetLoadInfo {
    pub target: u32,
    pub worker_id: String,
    pub dp_rank: u32,
    pub requests: u32,
    pub prefilling: u32,
    pub prefill_blocks: i64,
    pub decode_blocks: i64,
}

#[napi(object)]
pub struct KvRouterCoreStats {
    pub targets: i64,
    pub active_requests: i64,
    pub unstarted_requests: i64,
    pub lapsed_bookings: i64,
    pub unknown_lifecycle: i64,
    pub speculative_pairs: i64,
    pub speculative_evicted: i64,
    pub decisions: i64,
    pub blind_decisions: i64,
    pub all_busy_decisions: i64,
    /// Distinct blocks in the index, live (block, worker, tier) holdings, indexed slots.
    pub blocks: i64,
    pub pairs: i64,
    pub indexed_workers: i64,
    pub approx_bytes: i64,
}

fn config(o: KvRouterCoreOptions) -> napi::Result<SchedulerConfig> {
    let ev = event_applier_config(
        o.block_size,
        o.keying.as_deref(),
        o.hash_algorithm.as_deref(),
        o.hash_seed,
        o.max_engine_map_entries,
    )?;
    let mut c = SchedulerConfig::new(ev);
    if let Some(v) = o.overlap_weight {
        c.overlap_weight = v;
    }
    if let Some(v) = o.sequence_weight {
        c.sequence_weight = v;
    }
    if let Some(v) = o.temperature {
        c.temperature = v;
    }
    c.busy_kv_usage = o.busy_kv_usage;
    c.busy_queue_depth = o.busy_queue_depth;
    c.busy_active_requests = o.busy_active_requests;
    if let Some(v) = o.speculative_ttl_ms {
        c.speculative_ttl_ms = v;
    }
    if let Some(v) = o.max_speculative_blocks {
        c.max_speculative_blocks = v.max(1) as usize;
    }
    if let Some(v) = o.unstarted_ttl_ms {
        c.unstarted_ttl_ms = v;
    }
    if let Some(v) = o.metrics_ttl_ms {
        c.metrics_ttl_ms = v;
    }
    if let Some(v) = o.metrics_lag_ms {
        c.metrics_lag_ms = v;
    }
    if let Some(v) = o.expected_output_cap {
        c.expected_output_cap = v;
    }
    if let Some(v) = o.seed {
        c.seed = v as u64;
    }
    if let Some(v) = o.cpu_tier_credit {
        c.tier_credit[Tier::Cpu as usize] = v;
    }
    if let Some(v) = o.disk_tier_credit {
        c.tier_credit[Tier::Disk as usize] = v;
    }
    Ok(c)
}

#[napi]
pub struct KvRouterCore {
    /// Shared with the native front (crates/kvroute-front), which routes on its own thread.
    sched: SharedScheduler,
    decision: Decision,
}

impl KvRouterCore {
    fn sched(&self) -> MutexGuard<'_, Scheduler> {
        lock_scheduler(&self.sched)
    }

    /// The scheduler itself, for the native front.
    pub fn shared(&self) -> SharedScheduler {
        self.sched.clone()
    }
}

#[napi]
impl KvRouterCore {
    #[napi(constructor)]
    pub fn new(options: KvRouterCoreOptions) -> napi::Result<Self> {
        Ok(KvRouterCore {
            sched: Arc::new(Mutex::new(
                Scheduler::new(config(options)?).map_err(to_napi)?,
            )),
            decision: Decision::default(),
        })
    }

    #[napi(getter)]
    pub fn block_size(&self) -> u32 {
        self.sched().block_size()
    }

    /// Makes the worker's targets exactly `dpRanks` with `role`; returns their target ids, in
    /// `dpRanks` order. Ranks no longer listed leave (with their blocks).
    #[napi]
    pub fn upsert_worker(
        &mut self,
        worker_id: String,
        dp_ranks: Vec<u32>,
        #[napi(ts_arg_type = "'aggregated' | 'prefill' | 'decode'")] role: String,
    ) -> napi::Result<Vec<u32>> {
        let role = role.parse::<Role>().map_err(to_napi)?;
        Ok(self.sched().upsert_worker(&worker_id, &dp_ranks, role))
    }

    /// The worker left: its targets, bookings, speculative credit and blocks go.
    #[napi]
    pub fn remove_worker(&mut self, worker_id: String) -> bool {
        self.sched().remove_worker(&worker_id)
    }

    /// One decision. `mode`: 0 kv, 1 round-robin, 2 random, 3 least-loaded. `flags`: bit 0
    /// explain (write every candidate, sorted by cost), bit 1 dry run (no booking, no
    /// speculative credit), bits 8..10 a role mask (aggregated 1, prefill 2, decode 4; 0 = any).
    /// `out` gets `[target, overlapBlocks, promptBlocks, bestOverlapBlocks, blind, allBusy, cost,
    /// candidates n]`, then with explain `n` (or as many as fit) records of `[target, overlap,
    /// speculative, prefill, queuedPrefill, decode, penalty, cost, busy, kvView, context, gpu,
    /// cpu, disk, load]` (the indexed overlap by tier, its load time in prefill blocks). Returns 0
    /// when there is no candidate (nothing written), else the header length.
    #[napi]
    #[allow(clippy::too_many_arguments)]
    pub fn route(
        &mut self,
        tokens: Uint32ArraySlice,
        request_id: String,
        now_ms: f64,
        mode: u32,
        flags: u32,
        max_tokens: Option<u32>,
        lora_name: Option<String>,
        cache_salt: Option<String>,
        exclude: Option<Uint32ArraySlice>,
        mut out: Float64ArraySlice,
        prompt_embeds: Option<Uint8ArraySlice>,
    ) -> napi::Result<u32> {
        let mode = match mode {
            0 => Mode::Kv,
            1 => Mode::RoundRobin,
            2 => Mode::Random,
            3 => Mode::LeastLoaded,
            _ => return Err(invalid_config(format!("unknown router mode {mode}"))),
        };
        // SAFETY: synchronous call on the JS thread, which is blocked until it returns; the
        // slice does not outlive the call.
        let out = unsafe { out.as_mut() };
        if out.len() < ROUTE_HEADER as usize {
            return Err(invalid_config("route output buffer too small"));
        }
        let extra = ExtraKeys {
            prompt_embeds: match &prompt_embeds {
                Some(d) => crate::embeds::digests(d)?,
                None => Vec::new(),
            },
            lora_name,
            cache_salt,
            ..ExtraKeys::default()
        };
        let explain = flags & 1 != 0;
        let req = RouteRequest {
            tokens: &tokens,
            extra: &extra,
            request_id: &request_id,
            max_tokens,
            mode,
            explain,
            dry_run: flags & 2 != 0,
            roles: ((flags >> 8) & 7) as u8,
            exclude: exclude.as_deref().unwrap_or(&[]),
        };
        let d = &mut self.decision;
        if !lock_scheduler(&self.sched).route(&req, now_ms, d) {
            return Ok(0);
        }
        let fit = (out.len() - ROUTE_HEADER as usize) / ROUTE_STRIDE as usize;
        let n = if explain {
            d.candidates.len().min(fit)
        } else {
            0
        };
        out[..ROUTE_HEADER as usize].copy_from_slice(&[
            d.target as f64,
            d.overlap_blocks as f64,
            d.prompt_blocks as f64,
            d.best_overlap_blocks as f64,
            d.blind as u8 as f64,
            d.all_busy as u8 as f64,
            d.cost,
            n as f64,
        ]);
        for (k, c) in d.candidates[..n].iter().enumerate() {
            let at = ROUTE_HEADER as usize + k * ROUTE_STRIDE as usize;
            out[at..at + ROUTE_STRIDE as usize].copy_from_slice(&[
                c.target as f64,
                c.overlap_blocks as f64,
                c.speculative_blocks as f64,
                c.prefill_blocks as f64,
                c.queued_prefill_blocks as f64,
                c.decode_blocks as f64,
                c.penalty,
                c.cost,
                c.busy as u8 as f64,
                c.kv_view as u8 as f64,
                c.context_blocks as f64,
                c.tier_blocks[Tier::Gpu as usize] as f64,
                c.tier_blocks[Tier::Cpu as usize] as f64,
                c.tier_blocks[Tier::Disk as usize] as f64,
                c.load_blocks,
            ]);
        }
        Ok(ROUTE_HEADER)
    }

    /// The request was sent to `target`; confirms the decision's booking (or books it from
    /// these numbers). Returns whether the booking existed.
    #[napi]
    pub fn started(
        &mut self,
        request_id: String,
        target: u32,
        prompt_blocks: u32,
        overlap_blocks: u32,
        max_tokens: Option<u32>,
    ) -> bool {
        self.sched().start(
            &request_id,
            target,
            prompt_blocks,
            overlap_blocks,
            max_tokens,
        )
    }

    /// Another replica's request started on `target` (fleet mode): booked with its prompt keys,
    /// and with `credit` its keys past `overlapBlocks` credited speculatively, as a local route.
    #[napi]
    #[allow(clippy::too_many_arguments)]
    pub fn started_remote(
        &mut self,
        request_id: String,
        target: u32,
        keys: BigUint64ArraySlice,
        prompt_tokens: u32,
        overlap_blocks: u32,
        max_tokens: Option<u32>,
        credit: bool,
        now_ms: f64,
    ) -> bool {
        self.sched().start_remote(
            &request_id,
            target,
            &keys,
            prompt_tokens,
            overlap_blocks,
            max_tokens,
            credit,
            now_ms,
        )
    }

    /// The prompt keys of the last `route` call.
    #[napi]
    pub fn last_keys(&self) -> BigUint64Array {
        BigUint64Array::new(self.sched().last_keys().to_vec())
    }

    #[napi]
    pub fn first_token(&mut self, request_id: String) -> bool {
        self.sched().first_token(&request_id)
    }

    #[napi]
    pub fn tokens(&mut self, request_id: String, generated: u32) -> bool {
        self.sched().tokens(&request_id, generated)
    }

    /// Finished at `nowMs` (remembered for the next scrape of its worker).
    #[napi]
    pub fn finished(&mut self, request_id: String, now_ms: f64) -> bool {
        self.sched().finish(&request_id, now_ms)
    }

    /// Scraped metrics of a worker (one rank, or the whole worker when `dpRank` is absent),
    /// arriving at `nowMs`; `takenAtMs`: when the scrape was requested (default `nowMs -
    /// metricsLagMs`).
    #[napi]
    #[allow(clippy::too_many_arguments)]
    pub fn update_metrics(
        &mut self,
        worker_id: String,
        dp_rank: Option<u32>,
        waiting: f64,
        running: f64,
        kv_usage: f64,
        now_ms: f64,
        taken_at_ms: Option<f64>,
    ) -> bool {
        let m = WorkerMetrics {
            waiting,
            running,
            kv_usage,
        };
        self.sched()
            .update_metrics(&worker_id, dp_rank, m, now_ms, taken_at_ms)
    }

    /// One vLLM KV event payload of `workerId`, decoded and applied in one call (`dpRank`: the
    /// rank to use when the batch names none). Never throws for bad bytes.
    #[napi]
    pub fn apply_event_batch(
        &mut self,
        worker_id: String,
        payload: Uint8ArraySlice,
        dp_rank: Option<u32>,
    ) -> ApplyEventBatchResult {
        apply_result(
            self.sched()
                .apply_payload(&worker_id, &payload, dp_rank.unwrap_or(0)),
            dp_rank.unwrap_or(0),
        )
    }

    /// `applyEventBatch` with the outcome packed into the caller's reused `out` instead of a new
    /// object (whose properties cost more than a small batch's applying): `[events, stored,
    /// removed, cleared, skipped, skippedKnown, dpRank]`. Returns `malformed` (null when the
    /// payload decoded). Never throws for bad bytes.
    #[napi]
    pub fn apply_event_batch_into(
        &mut self,
        worker_id: String,
        payload: Uint8ArraySlice,
        dp_rank: Option<u32>,
        mut out: Uint32ArraySlice,
    ) -> napi::Result<Option<String>> {
        // SAFETY: synchronous call on the JS thread, which is blocked until it returns; the
        // slice does not outlive the call.
        let out = unsafe { out.as_mut() };
        if out.len() < APPLY_WORDS {
            return Err(invalid_config(
                "applyEventBatchInto output buffer too small",
            ));
        }
        let r = apply_result(
            self.sched()
                .apply_payload(&worker_id, &payload, dp_rank.unwrap_or(0)),
            dp_rank.unwrap_or(0),
        );
        out[..APPLY_WORDS].copy_from_slice(&[
            r.events,
            r.stored,
            r.removed,
            r.cleared,
            r.skipped,
            r.skipped_known,
            r.dp_rank,
        ]);
        Ok(r.malformed)
    }

    /// `applyEventBatchInto` for a batch in the in-process form of a virtual replay's engines
    /// (`kvroute_core::events::decode_direct`: `ops`, `hashes`, `tokens` instead of msgpack
    /// bytes): the same effect on the router as the batch's wire bytes, without encoding or
    /// decoding them. Returns why the arrays do not form a batch (null when they do).
    #[napi]
    pub fn apply_direct_batch_into(
        &mut self,
        worker_id: String,
        dp_rank: u32,
        ops: Uint32ArraySlice,
        hashes: BigUint64ArraySlice,
        tokens: Uint32ArraySlice,
        mut out: Uint32ArraySlice,
    ) -> napi::Result<Option<String>> {
        // SAFETY: as in `apply_event_batch_into`.
        let out = unsafe { out.as_mut() };
        if out.len() < APPLY_WORDS {
            return Err(invalid_config(
                "applyDirectBatchInto output buffer too small",
            ));
        }
        let outcome = match decode_direct(&ops, &hashes, &tokens, dp_rank) {
            Ok(batch) => self.sched().apply_batch(&worker_id, &batch, dp_rank),
            Err(reason) => Err(DecodeError {
                reason,
                event_index: None,
                offset: 0,
            }),
        };
        let r = apply_result(outcome, dp_rank);
        out[..APPLY_WORDS].copy_from_slice(&[
            r.events,
            r.stored,
            r.removed,
            r.cleared,
            r.skipped,
            r.skipped_known,
            r.dp_rank,
        ]);
        Ok(r.malformed)
    }

    /// `applyDirectBatchInto` for a batch whose hashes are already router keys (a virtual
    /// replay's engines keying their caches with the router's keyer; layout in
    /// `kvroute_core::event_applier::decode_keyed`). Returns why the arrays do not form a batch
    /// (null when they do).
    #[napi]
    pub fn apply_keyed_batch_into(
        &mut self,
        worker_id: String,
        dp_rank: u32,
        ops: Uint32ArraySlice,
        keys: BigUint64ArraySlice,
        mut out: Uint32ArraySlice,
    ) -> napi::Result<Option<String>> {
        // SAFETY: as in `apply_event_batch_into`.
        let out = unsafe { out.as_mut() };
        if out.len() < APPLY_WORDS {
            return Err(invalid_config(
                "applyKeyedBatchInto output buffer too small",
            ));
        }
        let outcome = match decode_keyed(&ops, &keys) {
            Ok(events) => Ok(self.sched().apply_keyed(&worker_id, dp_rank, &events)),
            Err(reason) => Err(DecodeError {
                reason,
                event_index: None,
                offset: 0,
            }),
        };
        let r = apply_result(outcome, dp_rank);
        out[..APPLY_WORDS].copy_from_slice(&[
            r.events,
            r.stored,
            r.removed,
            r.cleared,
            r.skipped,
            r.skipped_known,
            r.dp_rank,
        ]);
        Ok(r.malformed)
    }

    /// `tokens` called from Rust (the virtual replay's Rust engines tell a request's progress
    /// without crossing to JS).
    pub(crate) fn tokens_of(&mut self, request_id: &str, generated: u32) -> bool {
        self.sched().tokens(request_id, generated)
    }

    /// A keyed batch applied from Rust (the virtual replay's Rust engines deliver theirs without
    /// crossing to JS): as `applyKeyedBatchInto` and the event sink's handling of its outcome (a
    /// batch that skipped events for a known reason drops the worker's view, to be rebuilt).
    pub(crate) fn apply_keyed_slices(
        &mut self,
        worker_id: &str,
        dp_rank: u32,
        ops: &[u32],
        keys: &[u64],
    ) -> Result<(), &'static str> {
        let events = decode_keyed(ops, keys)?;
        let out = self.sched().apply_keyed(worker_id, dp_rank, &events);
        if out.skipped_known > 0 {
            self.sched().clear_worker(worker_id, Some(dp_rank));
        }
        Ok(())
    }

    /// Drops the worker's blocks (one rank, or all); it is blind until its next batch.
    #[napi]
    pub fn clear_worker(&mut self, worker_id: String, dp_rank: Option<u32>) -> i64 {
        self.sched().clear_worker(&worker_id, dp_rank) as i64
    }

    /// Whether events (or a resync) have given the router a view of the worker's cache.
    #[napi]
    pub fn has_kv_view(&self, worker_id: String, dp_rank: Option<u32>) -> bool {
        self.sched().has_kv_view(&worker_id, dp_rank)
    }

    /// `eventStats().skippedReasons` alone (cheap: no per-worker snapshot), read after each
    /// batch that skipped events.
    #[napi]
    pub fn skipped_reasons(&self) -> std::collections::HashMap<String, i64> {
        crate::indexer::counts(self.sched().applier().skipped_reasons())
    }

    /// The predicted load of every target.
    #[napi]
    pub fn target_loads(&self) -> Vec<TargetLoadInfo> {
        let sched = self.sched();
        (0..sched.target_bound() as u32)
            .filter_map(|t| {
                let (w, r) = sched.target_worker(t)?;
                let l = sched.load(t);
                Some(TargetLoadInfo {
                    target: t,
                    worker_id: w.to_owned(),
                    dp_rank: r,
                    requests: l.requests,
                    prefilling: l.prefilling,
                    prefill_blocks: l.prefill_blocks as i64,
                    decode_blocks: l.decode_blocks as i64,
                })
            })
            .collect()
    }

    #[napi]
    pub fn stats(&self) -> KvRouterCoreStats {
        let sched = self.sched();
        let s = sched.stats();
        let i = sched.applier().indexer().stats();
        KvRouterCoreStats {
            targets: s.targets as i64,
            active_requests: s.active_requests as i64,
            unstarted_requests: s.unstarted_requests as i64,
            lapsed_bookings: s.lapsed_bookings as i64,
            unknown_lifecycle: s.unknown_lifecycle as i64,
            speculative_pairs: s.speculative_pairs as i64,
            speculative_evicted: s.speculative_evicted as i64,
            decisions: s.decisions as i64,
            blind_decisions: s.blind_decisions as i64,
            all_busy_decisions: s.all_busy_decisions as i64,
            blocks: i.blocks as i64,
            pairs: i.pairs as i64,
            indexed_workers: i.workers as i64,
            approx_bytes: i.approx_bytes as i64,
        }
    }

    /// Counters of `applyEventBatch` and the per-(worker, dpRank) parity flags (as
    /// `KvIndexer.eventStats`).
    #[napi]
    pub fn event_stats(&self) -> KvEventStats {
        crate::indexer::event_stats_of(self.sched().applier())
    }
}
