//! What the front did since the JS gateway last asked: the JS side adds it to its own Prometheus
//! metrics (the same families and labels its own requests feed), marks the failed workers as
//! suspects, logs, and runs its parity check's report. Kept as sums and small maps, so memory is
//! bounded by the labels (routes, statuses, models, workers), never by the request rate;
//! mismatching parity checks keep their ids for JS's log, at most `MAX_MISMATCHES` per drain
//! (the rest counted, not described).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Mismatch reports (with both id lists) kept between drains.
const MAX_MISMATCHES: usize = 16;

#[derive(Default, Debug, Clone)]
pub struct ModelCounts {
    pub decisions: u64,
    pub blind: u64,
    pub prefill_tokens: u64,
    pub saved_tokens: u64,
    pub avoidable_tokens: u64,
    /// Overlap blocks of each decision -> how many decisions had it.
    pub overlaps: HashMap<u32, u64>,
    /// Clients gone while their request was with a worker, before its first token / after.
    pub cancelled_prefill: u64,
    pub cancelled_decode: u64,
    /// Streams: time to first token and between tokens, as `latency_key` -> count.
    pub ttft: HashMap<u32, u64>,
    pub itl: HashMap<u32, u64>,
}

/// Latencies are kept to 0.1% (log steps of 1.001 from 1 µs, up to a day): at most ~25k
/// distinct keys whatever the timings, and a histogram bucket off only for a value within 0.1%
/// of its bound.
const LATENCY_STEP: f64 = 1.001;

fn latency_key(seconds: f64) -> u32 {
    let us = (seconds * 1e6).clamp(1.0, 86_400e6);
    (us.ln() / LATENCY_STEP.ln()).round() as u32
}

/// The seconds a `latency_key` stands for.
pub fn latency_seconds(key: u32) -> f64 {
    LATENCY_STEP.powi(key as i32) / 1e6
}

/// A parity check whose ids differed.
#[derive(Debug, Clone)]
pub struct Mismatch {
    pub model: String,
    pub worker: String,
    pub ours: Vec<u32>,
    pub engine: Vec<u32>,
}

#[derive(Default, Debug, Clone)]
pub struct Drained {
    /// (route: 0 completions, 1 chat; status) -> requests answered by the front.
    pub requests: HashMap<(u8, u16), u64>,
    pub models: HashMap<String, ModelCounts>,
    /// (worker, kind) -> failures seen.
    pub upstream_errors: HashMap<(String, &'static str), u64>,
    /// (model, worker) -> parity checks whose ids were equal.
    pub checks_equal: HashMap<(String, String), u64>,
    pub mismatches: Vec<Mismatch>,
    /// (model, worker) -> mismatches beyond `MAX_MISMATCHES`.
    pub mismatches_uncounted: HashMap<(String, String), u64>,
    /// Requests that left a target (JS's queue may admit a waiter).
    pub released: u64,
}

#[derive(Default)]
pub struct Stats {
    inner: Mutex<Drained>,
}

impl Stats {
    fn get(&self) -> MutexGuard<'_, Drained> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn drain(&self) -> Drained {
        std::mem::take(&mut *self.get())
    }

    pub fn request(&self, route: u8, status: u16) {
        *self.get().requests.entry((route, status)).or_insert(0) += 1;
    }

    /// One routing decision (exchange.ts `route` -> metrics.ts `decision`).
    pub fn decision(
        &self,
        model: &str,
        overlap: u32,
        best: u32,
        prompt_tokens: u32,
        block_size: u32,
        blind: bool,
    ) {
        let mut g = self.get();
        let m = model_counts(&mut g, model);
        m.decisions += 1;
        m.blind += blind as u64;
        m.prefill_tokens += prompt_tokens as u64;
        m.saved_tokens += (overlap as u64 * block_size as u64).min(prompt_tokens as u64);
        m.avoidable_tokens += (best as u64 * block_size as u64).min(prompt_tokens as u64);
        *m.overlaps.entry(overlap).or_insert(0) += 1;
    }

    pub fn cancelled(&self, model: &str, phase: &str) {
        let mut g = self.get();
        let m = model_counts(&mut g, model);
        if phase == "decode" {
            m.cancelled_decode += 1;
        } else {
            m.cancelled_prefill += 1;
        }
    }

    /// A stream's first token came `seconds` after its request.
    pub fn first_token(&self, model: &str, seconds: f64) {
        *model_counts(&mut self.get(), model)
            .ttft
            .entry(latency_key(seconds))
            .or_insert(0) += 1;
    }

    /// The gap per token between two token events of a stream.
    pub fn inter_token(&self, model: &str, seconds: f64) {
        *model_counts(&mut self.get(), model)
            .itl
            .entry(latency_key(seconds))
            .or_insert(0) += 1;
    }

    pub fn upstream_error(&self, worker: &str, kind: &'static str) {
        *self
            .get()
            .upstream_errors
            .entry((worker.to_string(), kind))
            .or_insert(0) += 1;
    }

    pub fn released(&self) {
        self.get().released += 1;
    }

    pub fn check(&self, model: &str, worker: &str, ours: &[u32], engine: Vec<u32>) {
        let mut g = self.get();
        let key = (model.to_string(), worker.to_string());
        if ours == engine.as_slice() {
            *g.checks_equal.entry(key).or_insert(0) += 1;
        } else if g.mismatches.len() < MAX_MISMATCHES {
            g.mismatches.push(Mismatch {
                model: key.0,
                worker: key.1,
                ours: ours.to_vec(),
                engine,
            });
        } else {
            *g.mismatches_uncounted.entry(key).or_insert(0) += 1;
        }
    }
}

fn model_counts<'a>(g: &'a mut Drained, model: &str) -> &'a mut ModelCounts {
    if !g.models.contains_key(model) {
        g.models.insert(model.to_string(), ModelCounts::default());
    }
    g.models.get_mut(model).expect("inserted above")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_keys_round_trip_within_a_thousandth() {
        for s in [1e-6, 1e-4, 0.0123, 0.5, 7.0, 3600.0] {
            let back = latency_seconds(latency_key(s));
            assert!((back - s).abs() <= s * 1e-3, "{s} -> {back}");
        }
        assert_eq!(latency_key(0.0), 0);
        assert!(latency_key(1e9) <= latency_key(86_400.0));
    }
}
