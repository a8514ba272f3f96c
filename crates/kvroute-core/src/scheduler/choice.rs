//! The choice among scored candidates, and the seeded PRNG behind it. Here because it is the
//! one part of a decision that does not depend on the cost model: it sees only the candidates'
//! costs and the eligible ones (`Scheduler::eligible`, the non-busy candidates, or all when every
//! one is busy).
//!
//! `temperature == 0` ([`Scheduler::argmin`]): the minimum cost, ties (within 1e-9 relative)
//! broken uniformly at random with the seeded PRNG, so equal candidates (e.g. cache misses
//! everywhere at low concurrency) spread instead of all landing on the first. `temperature > 0`
//! ([`Scheduler::softmax`]): sample with probability ∝ `exp(-z / temperature)`, `z = (cost -
//! min) / (max - min)` (costs normalized to `[0, 1]` over the eligible candidates, so the
//! temperature is unitless; uniform when all are equal). Neither allocates once warm (`weights`
//! is reused scratch).

use super::{CandidateScore, Scheduler};

/// splitmix64.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub(super) fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub(super) fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

impl Scheduler {
    /// Index into `cands` of the eligible minimum, ties broken uniformly.
    pub(super) fn argmin(&mut self, cands: &[CandidateScore]) -> u32 {
        let min = self
            .eligible
            .iter()
            .map(|&i| cands[i as usize].cost)
            .fold(f64::INFINITY, f64::min);
        let tol = 1e-9 * min.abs().max(1.0);
        let mut n = 0usize;
        let mut pick = self.eligible[0];
        // Reservoir sampling over the tied candidates: one pass, no allocation.
        for &i in &self.eligible {
            if cands[i as usize].cost <= min + tol {
                n += 1;
                if self.rng.below(n) == 0 {
                    pick = i;
                }
            }
        }
        pick
    }

    /// Index into `cands` sampled with probability ∝ exp(-normalized cost / temperature).
    pub(super) fn softmax(&mut self, cands: &[CandidateScore]) -> u32 {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for &i in &self.eligible {
            let c = cands[i as usize].cost;
            lo = lo.min(c);
            hi = hi.max(c);
        }
        let range = hi - lo;
        if range <= 1e-12 * lo.abs().max(1.0) {
            return self.eligible[self.rng.below(self.eligible.len())];
        }
        self.weights.clear();
        let mut total = 0.0;
        for &i in &self.eligible {
            let z = (cands[i as usize].cost - lo) / range;
            let wt = (-z / self.cfg.temperature).exp();
            total += wt;
            self.weights.push(wt);
        }
        let mut r = self.rng.f64() * total;
        for (k, &wt) in self.weights.iter().enumerate() {
            if r < wt {
                return self.eligible[k];
            }
            r -= wt;
        }
        *self.eligible.last().expect("eligible is not empty")
    }
}
