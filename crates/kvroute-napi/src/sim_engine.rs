//! `SimEngines`: the virtual replay's simulated engines (`kvroute_core::sim_engine`), one object
//! for the whole fleet, behind N-API. Per step and engine: one call to begin it, one to end it
//! (the outputs come back packed into the caller's reused `Int32Array`), one per KV event batch
//! to copy it into the caller's reused arrays (the keyed layout the router's
//! `applyKeyedBatchInto` reads). Nothing is allocated on the JS heap per step.

use kvroute_core::sim_engine::engine::NewRequest;
use kvroute_core::sim_engine::{SimConfig, SimEngine, StepOutput, StepTiming};
use napi::bindgen_prelude::{
    BigUint64ArraySlice, Float64ArraySlice, Int32ArraySlice, Uint32ArraySlice,
};
use napi_derive::napi;

use crate::convert::{invalid_config, invalid_input, to_napi};

/// Words per packed step output: handle, output tokens so far, finished (0/1), cached tokens.
pub const SIM_OUTPUT_WORDS: u32 = 4;
/// Words of `stats`.
const STATS_WORDS: usize = 7;

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
    engines: Vec<SimEngine>,
    outputs: Vec<StepOutput>,
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
        let engines = (0..options.engines)
            .map(|_| SimEngine::new(cfg))
            .collect::<Result<Vec<_>, _>>()
            .map_err(to_napi)?;
        Ok(SimEngines {
            engines,
            outputs: Vec::new(),
        })
    }

    fn engine(&mut self, w: u32) -> napi::Result<&mut SimEngine> {
        self.engines
            .get_mut(w as usize)
            .ok_or_else(|| invalid_input(format!("no engine {w}")))
    }

    /// Queues a request (validated and clamped by the caller, as `coreRequestInit` does).
    /// `promptKeys`: the router keys of the prompt's full blocks, when the caller has them.
    /// `seed`: `(config.seed ^ sampleSeed) | 0`.
    #[napi]
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        engine: u32,
        handle: u32,
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

    /// Schedules a step of `engine` at simulated time `now`: its duration (>= 0), or, when
    /// nothing is runnable, -1 - the KV event batches flushed meanwhile.
    #[napi]
    pub fn begin_step(&mut self, engine: u32, now: f64) -> napi::Result<f64> {
        let (d, flushed) = self.engine(engine)?.begin_step(now);
        Ok(match d {
            Some(d) => d,
            None => -1.0 - f64::from(flushed),
        })
    }

    /// Ends the step `beginStep` started: its outputs packed into `out` (`SIM_OUTPUT_WORDS` per
    /// output, in the plan's order). Returns outputs x 2 + the batches flushed (0 or 1).
    #[napi]
    pub fn end_step(&mut self, engine: u32, mut out: Int32ArraySlice) -> napi::Result<u32> {
        let mut outputs = std::mem::take(&mut self.outputs);
        outputs.clear();
        let flushed = self.engine(engine)?.end_step(&mut outputs);
        // SAFETY: synchronous call on the JS thread, which is blocked until it returns; the
        // slice does not outlive the call.
        let out = unsafe { out.as_mut() };
        let words = SIM_OUTPUT_WORDS as usize;
        if out.len() < outputs.len() * words {
            self.outputs = outputs;
            return Err(invalid_config("endStep output buffer too small"));
        }
        for (o, chunk) in outputs.iter().zip(out.chunks_exact_mut(words)) {
            chunk.copy_from_slice(&[
                o.handle as i32,
                o.num_output as i32,
                i32::from(o.finished),
                o.cached_tokens as i32,
            ]);
        }
        let n = outputs.len() as u32;
        self.outputs = outputs;
        Ok(n * 2 + flushed)
    }

    /// Copies the oldest flushed KV event batch of `engine` into `ops` and `keys` and drops it;
    /// `sizes` gets `[ops, keys]` (its lengths). Returns false, taking nothing, when there is none
    /// or it does not fit (then `sizes` holds what it needs).
    #[napi]
    pub fn take_batch(
        &mut self,
        engine: u32,
        mut ops: Uint32ArraySlice,
        mut keys: BigUint64ArraySlice,
        mut sizes: Uint32ArraySlice,
    ) -> napi::Result<bool> {
        let e = self.engine(engine)?;
        // SAFETY: as in `end_step`; the three slices are distinct typed arrays of the caller.
        let (ops, keys, sizes) = unsafe { (ops.as_mut(), keys.as_mut(), sizes.as_mut()) };
        if sizes.len() < 2 {
            return Err(invalid_config("takeBatch sizes buffer too small"));
        }
        let Some((n_ops, n_keys)) = e.next_batch_len() else {
            sizes[0] = 0;
            sizes[1] = 0;
            return Ok(false);
        };
        sizes[0] = n_ops as u32;
        sizes[1] = n_keys as u32;
        if ops.len() < n_ops || keys.len() < n_keys {
            return Ok(false);
        }
        e.take_batch(|o, k| {
            ops[..o.len()].copy_from_slice(o);
            keys[..k.len()].copy_from_slice(k);
        });
        Ok(true)
    }

    /// `engine`'s gauges as last published and its counters, into `out`: `[running, waiting,
    /// kvUsage, prefixQueries, prefixHits, load, preemptions]` (load: waiting + running now).
    #[napi]
    pub fn stats(&mut self, engine: u32, mut out: Float64ArraySlice) -> napi::Result<()> {
        let e = self.engine(engine)?;
        // SAFETY: as in `end_step`.
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
