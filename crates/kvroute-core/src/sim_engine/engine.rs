//! One simulated engine core: its requests, vLLM v1's FCFS scheduler (`EngineCore.schedule` in
//! ts/mocker/engine-core.ts), the KV cache manager's allocation and caching
//! (ts/mocker/kv-cache-manager.ts), sampling, and the step's duration. Stepped by the replay's
//! discrete-event clock: `begin_step` schedules a step and returns its duration, `end_step`
//! applies it (tokens sampled, requests finished, KV events flushed as one batch).
//!
//! Invariants (the TS core's C1-C3):
//! - C1: a live request is in exactly one of `waiting`, `running`; a finished one is in neither
//!   and its slot is free.
//! - C2: a request's `blocks` hold one reference each; `num_computed <= blocks.len() * block_size`;
//!   its first `num_cached_blocks` blocks are in the prefix cache under `keys[..num_cached_blocks]`.
//! - C3: `num_computed <= num_tokens()`; a token is sampled exactly when a step makes them equal.
//! - `keys[i]` is the router key of block i of the request's tokens (chained from the first
//!   block); keys are computed when a block is first needed, and only for blocks full of real
//!   tokens.
//! - `tokens` holds the request's tokens from position `base` on: the tail that later keys and
//!   sampled tokens still depend on (a prompt whose keys the caller gave is not copied whole: the
//!   Mooncake trace's prompts are 145M tokens).

use std::collections::VecDeque;

use super::block_pool::{prefetch_ptr, BlockPool, PREFETCH};
use super::{
    context_fingerprint, sample_token, SimConfig, StepTiming, CONTEXT_WINDOW, EOS_TOKEN_ID,
};
use crate::block_keys::RouterKeyer;
use crate::extra_keys::BlockExtraKeys;

/// Bound on re-scheduling a step that only preempted (the TS core's `beginStep`).
const MAX_TRIES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Waiting,
    Running,
    Finished,
}

struct Req {
    /// The caller's name for it (the replay's flight).
    handle: u32,
    /// Tokens from position `base` on (see the module docs).
    tokens: Vec<u32>,
    base: u32,
    num_computed: u32,
    blocks: Vec<u32>,
    num_cached_blocks: u32,
    keys: Vec<u64>,
    status: Status,
    num_output: u32,
    num_preemptions: u32,
    /// Prompt tokens found in the prefix cache at the first admission (-1: not admitted yet).
    num_local_cached: i64,
    max_tokens: u32,
    /// The output position of EOS (`u32::MAX`: never).
    eos_at: u32,
    seed: u32,
    stop_token_ids: Vec<u32>,
}

/// A request's news from a step: one token sampled, and whether it was the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOutput {
    pub handle: u32,
    /// Output tokens so far (this step's included).
    pub num_output: u32,
    pub finished: bool,
    /// Prompt tokens served from the prefix cache at its first admission.
    pub cached_tokens: u32,
}

/// A request as the caller hands it over (already validated and clamped, as `coreRequestInit`).
pub struct NewRequest<'a> {
    pub handle: u32,
    pub prompt: &'a [u32],
    /// The router keys of the prompt's full blocks, if the caller has them (ignored unless there
    /// is one per full block).
    pub prompt_keys: Option<&'a [u64]>,
    pub max_tokens: u32,
    pub min_tokens: u32,
    pub ignore_eos: bool,
    /// `(config.seed ^ sampleSeed) | 0` as its 32 bits.
    pub seed: u32,
    pub stop_token_ids: &'a [u32],
}

/// The scheduler's gauges as last published (what a metrics scrape reads).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Published {
    pub running: u32,
    pub waiting: u32,
    pub kv_usage: f64,
}

pub struct SimEngine {
    cfg: SimConfig,
    pool: BlockPool,
    keyer: RouterKeyer,
    reqs: Vec<Option<Req>>,
    free_slots: Vec<u32>,
    waiting: VecDeque<u32>,
    running: Vec<u32>,
    /// The step in progress: (slot, tokens to compute).
    plan: Vec<(u32, u32)>,
    vclock: f64,
    step_duration: f64,
    published: Published,
    /// Cumulative `vllm:prefix_cache_queries` / `_hits` (tokens).
    pub prefix_queries: f64,
    pub prefix_hits: f64,
    /// Cumulative `vllm:num_preemptions`.
    pub preemptions: u64,
    /// Flushed KV event batches not yet taken (keyed layout), oldest first.
    batches: VecDeque<(Vec<u32>, Vec<u64>)>,
    spare_batches: Vec<(Vec<u32>, Vec<u64>)>,
    hits: Vec<u32>,
    scratch: Vec<u32>,
    stored: Vec<u64>,
}

impl SimEngine {
    pub fn new(cfg: SimConfig) -> crate::error::Result<Self> {
        if cfg.num_gpu_blocks < 2 || cfg.max_num_seqs == 0 || cfg.max_num_batched_tokens == 0 {
            return Err(crate::Error::config(
                "sim engine: numGpuBlocks must be >= 2, maxNumSeqs and maxNumBatchedTokens > 0",
            ));
        }
        Ok(SimEngine {
            cfg,
            pool: BlockPool::new(cfg.num_gpu_blocks),
            keyer: RouterKeyer::new(cfg.block_size as usize)?,
            reqs: Vec::new(),
            free_slots: Vec::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            plan: Vec::new(),
            vclock: 0.0,
            step_duration: 0.0,
            published: Published::default(),
            prefix_queries: 0.0,
            prefix_hits: 0.0,
            preemptions: 0,
            batches: VecDeque::new(),
            spare_batches: Vec::new(),
            hits: Vec::new(),
            scratch: Vec::new(),
            stored: Vec::new(),
        })
    }

    /// waiting + running: what vLLM's DP load balancer compares (`EngineCore.load`).
    pub fn load(&self) -> u32 {
        (self.waiting.len() + self.running.len()) as u32
    }

    pub fn published(&self) -> Published {
        self.published
    }

    /// Queues a request; it waits for the next step.
    pub fn add(&mut self, r: NewRequest<'_>) {
        let b = self.cfg.block_size as usize;
        let keys = match r.prompt_keys {
            Some(k) if k.len() == r.prompt.len() / b => k.to_vec(),
            _ => Vec::new(),
        };
        // Blocks past the known keys, and the context window of the next sampled token.
        let base = (keys.len() * b).min(r.prompt.len().saturating_sub(CONTEXT_WINDOW));
        let tail = &r.prompt[base..];
        let mut tokens = Vec::with_capacity(tail.len() + (r.max_tokens as usize).min(1024));
        tokens.extend_from_slice(tail);
        let eos_at = if r.ignore_eos {
            u32::MAX
        } else {
            self.cfg
                .eos_after_tokens
                .max(r.min_tokens.saturating_add(1))
        };
        let req = Req {
            handle: r.handle,
            tokens,
            base: base as u32,
            num_computed: 0,
            blocks: Vec::new(),
            num_cached_blocks: 0,
            keys,
            status: Status::Waiting,
            num_output: 0,
            num_preemptions: 0,
            num_local_cached: -1,
            max_tokens: r.max_tokens,
            eos_at,
            seed: r.seed,
            stop_token_ids: r.stop_token_ids.to_vec(),
        };
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.reqs[s as usize] = Some(req);
                s
            }
            None => {
                self.reqs.push(Some(req));
                (self.reqs.len() - 1) as u32
            }
        };
        self.waiting.push_back(slot);
    }

    /// Schedules one step at simulated time `now` (an idle engine's clock jumps there): its
    /// modelled duration, or None when nothing is runnable. Also returns how many KV event
    /// batches were flushed meanwhile (`take_batch`).
    pub fn begin_step(&mut self, now: f64) -> (Option<f64>, u32) {
        if now > self.vclock {
            self.vclock = now;
        }
        let mut flushed = 0;
        for _ in 0..MAX_TRIES {
            let (d, f) = self.prepare_step();
            flushed += f;
            if d.is_some() || self.running.len() + self.waiting.len() == 0 {
                return (d, flushed);
            }
        }
        (None, flushed)
    }

    /// Ends the step `begin_step` started: outputs (in the plan's order) appended to `out`;
    /// returns the KV event batches flushed (0 or 1).
    pub fn end_step(&mut self, out: &mut Vec<StepOutput>) -> u32 {
        self.vclock += self.step_duration;
        self.apply_step(out);
        let f = self.flush();
        self.publish();
        f
    }

    /// The oldest flushed batch not yet taken, handed to `f`, then recycled.
    pub fn take_batch<R>(&mut self, f: impl FnOnce(&[u32], &[u64]) -> R) -> Option<R> {
        let (ops, keys) = self.batches.pop_front()?;
        let r = f(&ops, &keys);
        if self.spare_batches.len() < 64 {
            self.spare_batches.push((ops, keys));
        }
        Some(r)
    }

    /// The sizes (ops, keys) of the oldest flushed batch not yet taken.
    pub fn next_batch_len(&self) -> Option<(usize, usize)> {
        self.batches.front().map(|(o, k)| (o.len(), k.len()))
    }

    fn prepare_step(&mut self) -> (Option<f64>, u32) {
        self.plan.clear();
        if self.running.len() + self.waiting.len() > 0 {
            self.schedule();
        }
        if self.plan.is_empty() {
            let f = self.flush();
            self.publish();
            return (None, f);
        }
        self.step_duration = self.step_ms();
        (Some(self.step_duration), 0)
    }

    fn flush(&mut self) -> u32 {
        if !self.pool.has_events() {
            return 0;
        }
        let (mut ops, mut keys) = self.spare_batches.pop().unwrap_or_default();
        ops.clear();
        keys.clear();
        self.pool.take_events(&mut ops, &mut keys);
        self.batches.push_back((ops, keys));
        1
    }

    fn publish(&mut self) {
        self.published = Published {
            running: self.running.len() as u32,
            waiting: self.waiting.len() as u32,
            kv_usage: self.pool.usage(),
        };
    }

    // ---- scheduling (vLLM v1, FCFS) ----------------------------------------------------------

    fn schedule(&mut self) {
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            // Each step reads every running request: load them ahead (a decode step is mostly
            // these misses).
            if let Some(&ahead) = self.running.get(i + REQ_PREFETCH) {
                prefetch_req(&self.reqs[ahead as usize]);
            }
            let slot = self.running[i];
            let req = self.reqs[slot as usize].as_ref().expect("running request");
            let left = req.num_tokens() - req.num_computed;
            let num_new = left.min(budget);
            if num_new == 0 {
                i += 1;
                continue;
            }
            let mut ok = true;
            while !self.allocate_slots(slot, num_new, 0) {
                let victim = self.running.pop().expect("a running request to preempt");
                self.preempt(victim);
                preempted = true;
                if victim == slot {
                    ok = false;
                    break;
                }
            }
            if !ok {
                break;
            }
            self.plan.push((slot, num_new));
            budget -= num_new;
            i += 1;
        }
        if preempted {
            return;
        }
        while budget > 0 && self.running.len() < self.cfg.max_num_seqs as usize {
            let Some(&slot) = self.waiting.front() else {
                break;
            };
            let hit_tokens = self.find_cache_hit(slot);
            let req = self.reqs[slot as usize].as_ref().expect("waiting request");
            let num_new = (req.num_tokens() - hit_tokens).min(budget);
            if !self.allocate_slots(slot, num_new, hit_tokens) {
                break;
            }
            self.waiting.pop_front();
            let req = self.reqs[slot as usize].as_mut().expect("waiting request");
            if req.num_local_cached < 0 {
                req.num_local_cached = i64::from(hit_tokens);
            }
            // vLLM counts previously preempted requests separately (not in queries/hits).
            if req.num_preemptions == 0 {
                self.prefix_queries += f64::from(req.num_tokens());
                self.prefix_hits += f64::from(hit_tokens);
            }
            req.status = Status::Running;
            self.running.push(slot);
            self.plan.push((slot, num_new));
            budget -= num_new;
        }
    }

    /// Longest cached prefix, at most all tokens but the last, as blocks in `self.hits`;
    /// returns its tokens.
    fn find_cache_hit(&mut self, slot: u32) -> u32 {
        let b = self.cfg.block_size as usize;
        let req = self.reqs[slot as usize].as_mut().expect("request");
        let max_blocks = (req.num_tokens() as usize - 1) / b;
        ensure_keys(&self.keyer, req, max_blocks, b);
        self.hits.clear();
        let keys = &req.keys[..max_blocks];
        for &k in keys.iter().take(PREFETCH) {
            self.pool.prefetch_key(k);
        }
        for (i, &k) in keys.iter().enumerate() {
            if let Some(&ahead) = keys.get(i + PREFETCH) {
                self.pool.prefetch_key(ahead);
            }
            match self.pool.lookup(k) {
                Some(block) => self.hits.push(block),
                None => break,
            }
        }
        (self.hits.len() * b) as u32
    }

    /// vLLM's allocate_slots (`KvCacheManager.allocateSlots`): room for `num_new` more tokens
    /// after the computed ones and the prefix hits in `self.hits` (when `hit_tokens > 0`), or
    /// false without side effects; on success the blocks that are full once this step computes
    /// them are cached (one BlockStored).
    fn allocate_slots(&mut self, slot: u32, num_new: u32, hit_tokens: u32) -> bool {
        let b = self.cfg.block_size;
        let req = self.reqs[slot as usize].as_mut().expect("request");
        let hits: &[u32] = if hit_tokens > 0 { &self.hits } else { &[] };
        let total_computed = req.num_computed + hit_tokens;
        let required = (total_computed + num_new).div_ceil(b) as i64;
        let new_blocks = required - req.blocks.len() as i64 - hits.len() as i64;
        let evictable = hits
            .iter()
            .filter(|&&h| self.pool.ref_count(h) == 0)
            .count() as i64;
        if new_blocks.max(0) + evictable > i64::from(self.pool.num_free()) {
            return false;
        }
        if hit_tokens > 0 {
            self.pool.touch(hits);
            req.blocks.extend_from_slice(hits);
            req.num_cached_blocks = req.blocks.len() as u32;
            req.num_computed = total_computed;
        }
        if new_blocks > 0 {
            self.pool.allocate(new_blocks as u32, &mut req.blocks);
        }
        let full = (total_computed + num_new).min(req.num_tokens()) / b;
        cache_full_blocks(
            &mut self.pool,
            &self.keyer,
            &mut self.stored,
            req,
            full as usize,
            b as usize,
        );
        true
    }

    fn preempt(&mut self, slot: u32) {
        let req = self.reqs[slot as usize].as_mut().expect("request");
        self.pool.free_blocks(&req.blocks, &mut self.scratch);
        req.blocks.clear();
        req.num_cached_blocks = 0;
        req.num_computed = 0;
        req.status = Status::Waiting;
        req.num_preemptions += 1;
        self.preemptions += 1;
        self.waiting.push_front(slot);
    }

    // ---- the step's duration and results ------------------------------------------------------

    fn step_ms(&self) -> f64 {
        let req = |slot: u32| self.reqs[slot as usize].as_ref().expect("planned request");
        let is_decode = |r: &Req, num_new: u32| {
            r.num_tokens() - r.num_computed == 1 && num_new == 1 && r.num_output > 0
        };
        match self.cfg.timing {
            StepTiming::Linear {
                step_base_ms,
                prefill_per_token_ms,
                attention_per_token_pair_ms,
                decode_per_seq_ms,
                decode_per_context_token_ms,
            } => {
                // The same operations in the same order as step-timing.ts: the same doubles.
                let mut ms = step_base_ms;
                for &(slot, num_new) in &self.plan {
                    let r = req(slot);
                    let nc = f64::from(r.num_computed);
                    let nn = f64::from(num_new);
                    if is_decode(r, num_new) {
                        ms += decode_per_seq_ms + decode_per_context_token_ms * nc;
                    } else {
                        ms += prefill_per_token_ms * nn
                            + attention_per_token_pair_ms * nn * (nc + nn / 2.0);
                    }
                }
                ms
            }
            StepTiming::Polynomial {
                prefill,
                decode,
                decode_floor_ms,
            } => {
                let mut prefill_tokens = 0u64;
                let mut decode_seqs = 0u64;
                let mut decode_kv = 0u64;
                for &(slot, num_new) in &self.plan {
                    let r = req(slot);
                    if is_decode(r, num_new) {
                        decode_seqs += 1;
                        decode_kv += u64::from(r.num_computed);
                    } else {
                        prefill_tokens += u64::from(num_new);
                    }
                }
                let mut ms = 0.0;
                if prefill_tokens > 0 {
                    let t = prefill_tokens as f64;
                    ms += prefill[0] + prefill[1] * t + prefill[2] * t * t;
                }
                if decode_seqs > 0 {
                    let cap = f64::from(self.cfg.num_gpu_blocks) * f64::from(self.cfg.block_size);
                    let u = decode_kv as f64 / cap;
                    ms += decode_floor_ms.max(decode[0] + decode[1] * u + decode[2] * u * u);
                }
                ms
            }
        }
    }

    fn apply_step(&mut self, out: &mut Vec<StepOutput>) {
        let mut any_finished = false;
        for p in 0..self.plan.len() {
            if let Some(&(ahead, _)) = self.plan.get(p + 2 * REQ_PREFETCH) {
                prefetch_req(&self.reqs[ahead as usize]);
            }
            // And the tail of the tokens that sampling reads, of a request loaded by now.
            if let Some(&(ahead, _)) = self.plan.get(p + REQ_PREFETCH) {
                if let Some(r) = &self.reqs[ahead as usize] {
                    prefetch_ptr(
                        r.tokens
                            .as_ptr()
                            .wrapping_add(r.tokens.len().saturating_sub(1))
                            as *const u8,
                    );
                }
            }
            let (slot, num_new) = self.plan[p];
            let req = self.reqs[slot as usize].as_mut().expect("planned request");
            if req.status != Status::Running {
                continue;
            }
            req.num_computed += num_new;
            if req.num_computed < req.num_tokens() {
                continue; // chunked prefill goes on
            }
            let finished = sample(req, &self.cfg);
            out.push(StepOutput {
                handle: req.handle,
                num_output: req.num_output,
                finished,
                cached_tokens: req.num_local_cached.max(0) as u32,
            });
            if finished {
                any_finished = true;
                req.status = Status::Finished;
                self.pool.free_blocks(&req.blocks, &mut self.scratch);
                req.blocks.clear();
            }
        }
        if any_finished {
            let reqs = &mut self.reqs;
            let free_slots = &mut self.free_slots;
            self.running.retain(|&slot| {
                let live = reqs[slot as usize].as_ref().map(|r| r.status) == Some(Status::Running);
                if !live {
                    reqs[slot as usize] = None;
                    free_slots.push(slot);
                }
                live
            });
        }
    }
}

impl Req {
    fn num_tokens(&self) -> u32 {
        self.base + self.tokens.len() as u32
    }
}

/// How many requests ahead a step's loops prefetch them.
const REQ_PREFETCH: usize = 4;

/// Brings a request's fields in (it spans a few cache lines).
#[inline(always)]
fn prefetch_req(r: &Option<Req>) {
    let p = r as *const Option<Req> as *const u8;
    for off in (0..std::mem::size_of::<Option<Req>>()).step_by(64) {
        prefetch_ptr(p.wrapping_add(off));
    }
}

/// Makes `req.keys` cover at least `n` blocks (all full of real tokens).
fn ensure_keys(keyer: &RouterKeyer, req: &mut Req, n: usize, b: usize) {
    while req.keys.len() < n {
        let i = req.keys.len();
        let parent = req.keys.last().copied();
        // Blocks without a key start at or after `base` (module docs).
        let from = i * b - req.base as usize;
        let k = keyer.block_key(parent, &req.tokens[from..from + b], &BlockExtraKeys::NONE);
        req.keys.push(k);
    }
}

/// vLLM's cache_full_blocks: caches blocks `[num_cached_blocks, full)`, one BlockStored.
fn cache_full_blocks(
    pool: &mut BlockPool,
    keyer: &RouterKeyer,
    stored: &mut Vec<u64>,
    req: &mut Req,
    full: usize,
    b: usize,
) {
    let start = req.num_cached_blocks as usize;
    if full <= start {
        return;
    }
    ensure_keys(keyer, req, full, b);
    stored.clear();
    for &k in req.keys[start..full].iter().take(PREFETCH) {
        pool.prefetch_key(k);
    }
    for i in start..full {
        if let Some(&ahead) = req.keys[..full].get(i + PREFETCH) {
            pool.prefetch_key(ahead);
        }
        if pool.cache_block(req.blocks[i], req.keys[i]) {
            stored.push(req.keys[i]);
        }
    }
    req.num_cached_blocks = full as u32;
    pool.push_stored(stored);
}

/// Samples the next token (`EngineCore.sample` without text); true when the request finished.
fn sample(req: &mut Req, cfg: &SimConfig) -> bool {
    let k = req.num_output; // the 0-based position of this token
    let token = if k.wrapping_add(1) == req.eos_at {
        EOS_TOKEN_ID
    } else {
        let end = req.tokens.len();
        sample_token(context_fingerprint(&req.tokens, end, req.seed))
    };
    req.tokens.push(token);
    req.num_output = k + 1;
    // vLLM's check_stop order: EOS, stop token ids, length.
    token == EOS_TOKEN_ID
        || req.stop_token_ids.contains(&token)
        || req.num_tokens() >= cfg.max_model_len
        || req.num_output >= req.max_tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(blocks: u32, seqs: u32, budget: u32) -> SimConfig {
        SimConfig {
            block_size: 4,
            num_gpu_blocks: blocks,
            max_model_len: 4 * (blocks - 1),
            max_num_seqs: seqs,
            max_num_batched_tokens: budget,
            eos_after_tokens: 1024,
            timing: StepTiming::Polynomial {
                prefill: [16.5, 0.015, 4.2e-7],
                decode: [5.74, 54.01, -25.74],
                decode_floor_ms: 1.0,
            },
        }
    }

    fn req(handle: u32, prompt: &[u32], max_tokens: u32) -> NewRequest<'_> {
        NewRequest {
            handle,
            prompt,
            prompt_keys: None,
            max_tokens,
            min_tokens: 0,
            ignore_eos: true,
            seed: 0,
            stop_token_ids: &[],
        }
    }

    fn run(e: &mut SimEngine) -> Vec<StepOutput> {
        let mut all = Vec::new();
        let mut now = 0.0;
        while let (Some(d), _) = e.begin_step(now) {
            now += d;
            e.end_step(&mut all);
        }
        all
    }

    #[test]
    fn a_request_prefills_decodes_and_hits_the_cache_next_time() {
        let mut e = SimEngine::new(cfg(64, 8, 64)).unwrap();
        let prompt: Vec<u32> = (0..10).collect();
        e.add(req(7, &prompt, 3));
        let out = run(&mut e);
        assert_eq!(out.len(), 3);
        assert!(out[2].finished && out[2].num_output == 3 && out[2].handle == 7);
        e.add(req(8, &prompt, 1));
        let out = run(&mut e);
        assert_eq!(out[0].cached_tokens, 8); // two full blocks, the last token recomputed
        assert_eq!(e.prefix_hits, 8.0);
        assert_eq!(e.load(), 0);
        assert_eq!(e.published().kv_usage, 0.0);
    }

    #[test]
    fn a_full_cache_preempts_the_youngest_and_everything_finishes() {
        let mut e = SimEngine::new(cfg(9, 8, 64)).unwrap();
        let a: Vec<u32> = (0..12).collect();
        let b: Vec<u32> = (100..112).collect();
        e.add(req(1, &a, 8));
        e.add(req(2, &b, 8));
        let out = run(&mut e);
        let done: Vec<u32> = out
            .iter()
            .filter(|o| o.finished)
            .map(|o| o.handle)
            .collect();
        assert_eq!(done.len(), 2);
        assert_eq!(e.load(), 0);
        assert!(e.next_batch_len().is_some());
    }
}
