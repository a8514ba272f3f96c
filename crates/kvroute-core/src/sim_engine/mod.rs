//! A simulated vLLM engine for the virtual-time replay, in Rust: the scheduler step of vLLM v1
//! (FCFS, chunked prefill, preemption, `max_num_seqs`, the batched-token budget), its block pool
//! with prefix caching and LRU eviction keyed by router keys, the toy model's output tokens, and
//! the step timing of the mocker's profiles. It is the TS mocker's engine core
//! (`ts/mocker/engine-core.ts`, `kv-cache-manager.ts`, `block-pool.ts`, `step-timing.ts`) for
//! the configurations the virtual replay's keyed event path runs, step for step: the same
//! requests get the same blocks, the same tokens and the same step durations (the replay's
//! exactness test, `__test__/replay-rust-engine.test.ts`, compares every request).
//!
//! What it leaves to the TS engine: CPU offload, remote KV (NIXL, disaggregation), LoRA, cache
//! salts, prompt embeddings, stop strings, real tokenizers, aborts, and the wire and direct
//! event forms.
//!
//! - [`block_pool`]: blocks, the prefix cache index, the LRU free queue, KV events.
//! - [`engine`]: one engine's requests, its scheduler step and its outputs.
//! - [`fleet`]: the replay's engines on one discrete-event agenda (steps, KV event delivery).

pub mod block_pool;
pub mod engine;
pub mod fleet;

pub use engine::{SimEngine, StepOutput};
pub use fleet::{Notice, SimFleet, Stop};

/// A step's modelled duration (`ts/mocker/step-timing.ts`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepTiming {
    /// kvroute's linear model (`TimingModel` without `polynomial`).
    Linear {
        step_base_ms: f64,
        prefill_per_token_ms: f64,
        attention_per_token_pair_ms: f64,
        decode_per_seq_ms: f64,
        decode_per_context_token_ms: f64,
    },
    /// Dynamo's mocker's polynomial (`StepPolynomial`).
    Polynomial {
        prefill: [f64; 3],
        decode: [f64; 3],
        decode_floor_ms: f64,
    },
}

/// One engine's settings (a resolved mocker config's fields the step reads).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    pub block_size: u32,
    pub num_gpu_blocks: u32,
    pub max_model_len: u32,
    pub max_num_seqs: u32,
    pub max_num_batched_tokens: u32,
    /// The toy model emits EOS at this output position (unless a request ignores EOS).
    pub eos_after_tokens: u32,
    pub timing: StepTiming,
}

/// The toy tokenizer's EOS id (`ts/mocker/toy-tokenizer.ts`).
pub const EOS_TOKEN_ID: u32 = 128_001;
const FIRST_WORD_ID: u32 = 256;
const WORD_COUNT: u32 = 128_000 - FIRST_WORD_ID;
/// Tokens before a position that the toy model's next token depends on.
pub(crate) const CONTEXT_WINDOW: usize = 8;

/// `contextFingerprint` (toy-tokenizer.ts): the 32-bit fingerprint of the context before `end`.
/// JS's `Math.imul` and `>>>` on int32 are u32 wrapping arithmetic on the same bits.
pub fn context_fingerprint(tokens: &[u32], end: usize, seed: u32) -> u32 {
    let mut h = 0x811c_9dc5u32 ^ seed.wrapping_mul(0x9e37_79b1);
    for &t in &tokens[end.saturating_sub(CONTEXT_WINDOW)..end] {
        h = (h ^ t).wrapping_mul(0x0100_0193);
        h ^= h >> 15;
    }
    h
}

/// `sampleToken(fingerprint, 0)` of the toy tokenizer: the word the toy model emits.
pub fn sample_token(fingerprint: u32) -> u32 {
    let mut x = fingerprint ^ 0x9e37_79b1; // index 0: imul(1, golden)
    x = (x ^ (x >> 16)).wrapping_mul(0x85eb_ca6b);
    x = (x ^ (x >> 13)).wrapping_mul(0xc2b2_ae35);
    x ^= x >> 16;
    FIRST_WORD_ID + x % WORD_COUNT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toy_tokens_match_the_ts_model() {
        // Values from ts/mocker/toy-tokenizer.ts (node: contextFingerprint / sampleToken).
        let tokens = [1u32, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        let fp = context_fingerprint(&tokens, 10, 7);
        assert_eq!(fp, 2_926_941_406);
        assert_eq!(sample_token(fp), 23_114);
        // A token id past i32 and a negative seed (`seed | 0` in JS: the same 32 bits).
        let fp = context_fingerprint(&[4_000_000_000, 5], 2, (-5i32) as u32);
        assert_eq!(fp, 3_184_159_618);
        assert_eq!(sample_token(fp), 24_360);
    }
}
