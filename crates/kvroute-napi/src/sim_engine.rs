//! `SimEngines`: the virtual replay's simulated engines and their agenda
//! (`kvroute_core::sim_engine::SimFleet`), one object for the whole fleet, behind N-API. The
//! replay calls `run` up to its next arrival; steps whose outputs the router does not hear about,
//! and the delivery of KV event batches (applied to the router's `KvRouterCore` here, in Rust),
//! never cross to JS. What does comes back packed into the caller's reused typed arrays: nothing
//! is allocated on the JS heap per step.

use std::time::Instant;

use kvroute_core::sim_engine::engine::NewRequest;
use kvroute_core::sim_engine::{Notice, SimConfig, SimEngine, SimFleet, StepTiming, Stop};
use napi::bindgen_prelude::{
    BigUint64ArraySlice, Float64ArraySlice, Int32ArraySlice, Uint32ArraySlice,
};
use napi_derive::napi;

use crate::convert::{invalid_config, invalid_input, to_napi};
use crate::router::KvRouterCore;

/// Words per packed output: engine, handle, output tokens so far, finished (0/1), cached tokens.
const OUTPUT_WORDS: usize = 5;
/// Words of `stats`.
const STATS_WORDS: usize = 7;
/// Words of `run`'s state: now, engines stepping, outputs.
const STATE_WORDS: usize = 3;

#[napi(object)]
pub struct SimPolynomialOptions {
    pub prefill: Vec<f64>,
    pub decode: Vec<f64>,
    pub decode_floor_ms: f64,
}

#[napi(object)]
pub struct SimTimingOptions {
    pub step_base_ms: f64,
    pub prefill_per_token_ms: f64,
    pub attention_per_token_pair_ms: f64,
    pub decode_per_seq_ms: f64,
    pub decode_per_context_token_ms: f64,
    pub polynomial: Option<SimPolynomialOptions>,
}

#[napi(object)]
pub struct SimEnginesOptions {
    pub engines: u32,
    pub block_size: u32,
    pub num_gpu_blocks: u32,
    pub max_model_len: u32,
    pub max_num_seqs: u32,
    pub max_num_batched_tokens: u32,
    pub eos_after_tokens: u32,
    pub timing: SimTimingOptions,
    /// The router's worker id of each engine (its KV events are applied under it).
    pub worker_ids: Vec<String>,
    /// Simulated delay from a step's end to its KV events reaching the router (> 0).
    pub event_delay_ms: f64,
}

fn three(v: &[f64], what: &str) -> napi::Result<[f64; 3]> {
    <[f64; 3]>::try_from(v).map_err(|_| invalid_config(format!("{what} must be three numbers")))
}

fn timing(t: &SimTimingOptions) -> napi::Result<StepTiming> {
    Ok(match &t.polynomial {
        Some(p) => StepTiming::Polynomial {
            prefill: three(&p.prefill, "timing.polynomial.prefill")?,
            decode: three(&p.decode, "timing.polynomial.decode")?,
            decode_floor_ms: p.decode_floor_ms,
        },
        None => StepTiming::Linear {
            step_base_ms: t.step_base_ms,
            prefill_per_token_ms: t.prefill_per_token_ms,
            attention_per_token_pair_ms: t.attention_per_token_pair_ms,
            decode_per_seq_ms: t.decode_per_seq_ms,
            decode_per_context_token_ms: t.decode_per_context_token_ms,
        },
    })
}

#[napi]
pub struct SimEngines {
    fleet: SimFleet,
    worker_ids: Vec<String>,
    /// The router's request id of each live request, by handle (empty once it finished).
    request_ids: Vec<String>,
    router_ms: f64,
}

#[napi]
impl SimEngines {
    #[napi(constructor)]
    pub fn new(options: SimEnginesOptions) -> napi::Result<Self> {
        let cfg = SimConfig {
            block_size: options.block_size,
            num_gpu_blocks: options.num_gpu_blocks,
            max_model_len: options.max_model_len,
            max_num_seqs: options.max_num_seqs,
            max_num_batched_tokens: options.max_num_batched_tokens,
            eos_after_tokens: options.eos_after_tokens,
            timing: timing(&options.timing)?,
        };
        if options.worker_ids.len() != options.engines as usize {
            return Err(invalid_config("workerIds must name every engine"));
        }
        if options.event_delay_ms.is_nan() || options.event_delay_ms <= 0.0 {
            return Err(invalid_config("eventDelayMs must be > 0"));
        }
        let engines = (0..options.engines)
            .map(|_| SimEngine::new(cfg))
            .collect::<Result<Vec<_>, _>>()
            .map_err(to_napi)?;
        Ok(SimEngines {
            fleet: SimFleet::new(engines, cfg.block_size, options.event_delay_ms),
            worker_ids: options.worker_ids,
            request_ids: Vec::new(),
            router_ms: 0.0,
        })
    }

    fn engine(&mut self, w: u32) -> napi::Result<&mut SimEngine> {
        self.fleet
            .engine_mut(w as usize)
            .ok_or_else(|| invalid_input(format!("no engine {w}")))
    }

    /// Queues a request (validated and clamped by the caller, as `coreRequestInit` does).
    /// `requestId`: the router's id of it; `handle`: the caller's (a small integer, unique among
    /// live requests). `promptKeys`: the router keys of the prompt's full blocks, when the caller
    /// has them. `seed`: `(config.seed ^ sampleSeed) | 0`.
    #[napi]
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        engine: u32,
        handle: u32,
        request_id: String,
        prompt: Uint32ArraySlice,
        prompt_keys: Option<BigUint64ArraySlice>,
        max_tokens: u32,
        min_tokens: u32,
        ignore_eos: bool,
        seed: i32,
        stop_token_ids: Option<Uint32ArraySlice>,
    ) -> napi::Result<()> {
        let keys = prompt_keys.as_deref();
        let stops: &[u32] = stop_token_ids.as_deref().unwrap_or(&[]);
        let h = handle as usize;
        if self.request_ids.len() <= h {
            self.request_ids.resize(h + 1, String::new());
        }
        self.request_ids[h] = request_id;
        self.engine(engine)?.add(NewRequest {
            handle,
            prompt: &prompt,
            prompt_keys: keys,
            max_tokens,
            min_tokens,
            ignore_eos,
            seed: seed as u32,
            stop_token_ids: stops,
        });
        Ok(())
    }

    /// Starts a step of `engine` at `now` unless it is stepping; returns the engines stepping.
    #[napi]
    pub fn kick(&mut self, engine: u32, now: f64) -> napi::Result<u32> {
        if engine as usize >= self.fleet.len() {
            return Err(invalid_input(format!("no engine {engine}")));
        }
        self.fleet.kick(engine, now);
        Ok(self.fleet.stepping())
    }

    /// Schedules one of the caller's events (`kind` >= 2) at `t`, in the same agenda as the steps.
    #[napi]
    pub fn push(&mut self, t: f64, kind: u32) -> napi::Result<()> {
        if kind < 2 {
            return Err(invalid_input("event kinds 0 and 1 are the engines'"));
        }
        self.fleet.push(t, kind, u32::MAX);
        Ok(())
    }

    /// Runs the agenda up to `until` (inclusive), applying KV event batches to `router` and
    /// telling it the progress of steps with nothing else for it (`tokens`). Returns
    /// 0 when nothing more is due by then, 1 when a step ended with outputs for the router (packed
    /// into `out`, 5 words each: engine, handle, output tokens so far, finished, cached tokens) or
    /// an engine went idle, else the kind of the caller's event due. `state` gets `[now, engines
    /// stepping, outputs]`.
    #[napi]
    pub fn run(
        &mut self,
        until: f64,
        router: &mut KvRouterCore,
        mut out: Int32ArraySlice,
        mut state: Float64ArraySlice,
    ) -> napi::Result<u32> {
        // SAFETY: synchronous call on the JS thread, which is blocked until it returns; the
        // slices (two distinct typed arrays of the caller) do not outlive the call.
        let (out, state) = unsafe { (out.as_mut(), state.as_mut()) };
        if state.len() < STATE_WORDS {
            return Err(invalid_config("run state buffer too small"));
        }
        let ids = &self.worker_ids;
        let request_ids = &self.request_ids;
        let mut failed: Option<&'static str> = None;
        // What it does in the router is the router's work (the replay reports its cost): timed.
        let mut spent = std::time::Duration::ZERO;
        let stop = self.fleet.run(until, &mut |notice| {
            let t0 = Instant::now();
            match notice {
                Notice::Batch { engine, ops, keys } => {
                    if let Err(e) = router.apply_keyed_slices(&ids[engine as usize], 0, ops, keys) {
                        failed.get_or_insert(e);
                    }
                }
                Notice::Tokens { handle, num_output } => {
                    router.tokens_of(&request_ids[handle as usize], num_output);
                }
            }
            spent += t0.elapsed();
        });
        self.router_ms += spent.as_secs_f64() * 1000.0;
        if let Some(e) = failed {
            return Err(invalid_input(format!(
                "sim engines: a KV event batch did not decode: {e}"
            )));
        }
        let outputs = &self.fleet.outputs;
        if out.len() < outputs.len() * OUTPUT_WORDS {
            return Err(invalid_config("run output buffer too small"));
        }
        for (_, o) in outputs.iter().filter(|(_, o)| o.finished) {
            self.request_ids[o.handle as usize] = String::new();
        }
        for ((w, o), chunk) in outputs.iter().zip(out.chunks_exact_mut(OUTPUT_WORDS)) {
            chunk.copy_from_slice(&[
                *w as i32,
                o.handle as i32,
                o.num_output as i32,
                i32::from(o.finished),
                o.cached_tokens as i32,
            ]);
        }
        state[..STATE_WORDS].copy_from_slice(&[
            self.fleet.now(),
            f64::from(self.fleet.stepping()),
            outputs.len() as f64,
        ]);
        Ok(match stop {
            Stop::Until => 0,
            Stop::Outputs => 1,
            Stop::Event(k) => k,
        })
    }

    /// Milliseconds `run` spent in the router (KV event batches, progress), for its cost.
    #[napi(getter)]
    pub fn router_ms(&self) -> f64 {
        self.router_ms
    }

    /// `engine`'s gauges as last published and its counters, into `out`: `[running, waiting,
    /// kvUsage, prefixQueries, prefixHits, load, preemptions]` (load: waiting + running now).
    #[napi]
    pub fn stats(&mut self, engine: u32, mut out: Float64ArraySlice) -> napi::Result<()> {
        let e = self.engine(engine)?;
        // SAFETY: as in `run`.
        let out = unsafe { out.as_mut() };
        if out.len() < STATS_WORDS {
            return Err(invalid_config("stats output buffer too small"));
        }
        let p = e.published();
        out[..STATS_WORDS].copy_from_slice(&[
            f64::from(p.running),
            f64::from(p.waiting),
            p.kv_usage,
            e.prefix_queries,
            e.prefix_hits,
            f64::from(e.load()),
            e.preemptions as f64,
        ]);
        Ok(())
    }
}
