//! The metrics correction: workers' scraped metrics ([`Scheduler::update_metrics`]) and the
//! external-load penalty and busy flag they give a target. Kept apart from the decision code
//! because it is its own model (what a scrape shows that the router did not place, and how long
//! it counts), with its own state (each target's last scrape and recent finishes); a decision
//! only reads the stored result through [`Scraped::correction`].
//!
//! When a scrape of a worker arrives, `external = max(0, running + waiting - our requests
//! there)` is the load the router did not place itself (other routers, direct traffic, lost
//! lifecycle calls), of which `external waiting = min(external, max(0, waiting - our prefilling
//! requests))` also sits in its prefill queue. *Our requests* are counted at that moment: those
//! booked there now plus those the router finished there since the scrape was taken
//! (`taken_at`, default `metrics_lag_ms` before its arrival), which the scrape may still show
//! running. Both numbers are stored with the scrape and never recomputed against later
//! bookkeeping: the router's own requests finishing after a scrape must not turn the scrape's
//! count of them into "external" load (with short requests that starved a worker for a whole
//! scrape interval). They fade linearly to 0 over `metrics_ttl_ms` (a later scrape replaces
//! them) and are priced with the router's running means (EWMA) of its requests' prompt and
//! context blocks:
//!
//! ```text
//! penalty(t) = fade × (external × mean context + w × external waiting × mean prompt)   blocks
//! ```
//!
//! Without metrics the penalty is 0. Fresh metrics also decide the busy threshold's
//! `kv_usage > busy_kv_usage` and `waiting > busy_queue_depth`.

use super::targets::Target;
use super::{Scheduler, SchedulerConfig};

/// A worker's scraped metrics (one rank's share when the worker hosts several).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkerMetrics {
    /// `vllm:num_requests_waiting`.
    pub waiting: f64,
    /// `vllm:num_requests_running`.
    pub running: f64,
    /// `vllm:kv_cache_usage_perc` (a fraction, 0..1).
    pub kv_usage: f64,
}

/// A target's last scrape with the load it showed that the router did not place, as of its
/// arrival (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(super) struct Scraped {
    m: WorkerMetrics,
    at: f64,
    external: f64,
    external_waiting: f64,
}

/// How long finish times are kept for [`Scheduler::update_metrics`].
const RECENT_FINISHES_MS: f64 = 5_000.0;
/// At most this many finish times per target.
const RECENT_FINISHES_CAP: usize = 4096;

impl Target {
    /// Remembers a started request of the router finishing here at `now_ms`.
    pub(super) fn note_finish(&mut self, now_ms: f64) {
        while self
            .finished_at
            .front()
            .is_some_and(|&t| t < now_ms - RECENT_FINISHES_MS)
            || self.finished_at.len() >= RECENT_FINISHES_CAP
        {
            self.finished_at.pop_front();
        }
        self.finished_at.push_back(now_ms);
    }

    /// The router's requests here that finished after `since`.
    fn finished_since(&self, since: f64) -> u32 {
        self.finished_at
            .iter()
            .rev()
            .take_while(|&&t| t > since)
            .count() as u32
    }
}

impl Scraped {
    /// The penalty and the metrics' busy verdict at `now_ms` with the given running means, or
    /// `None` once the scrape is older than `metrics_ttl_ms` (it no longer counts).
    #[inline]
    pub(super) fn correction(
        &self,
        now_ms: f64,
        cfg: &SchedulerConfig,
        mean_context: f64,
        mean_prompt: f64,
    ) -> Option<(f64, bool)> {
        let Scraped {
            m,
            at,
            external,
            external_waiting,
        } = *self;
        let (age, ttl) = (now_ms - at, cfg.metrics_ttl_ms);
        // Written as `age <= ttl` so that a NaN age counts as stale.
        if age <= ttl {
            let w = cfg.overlap_weight;
            // As of the scrape (never against later bookkeeping), fading with its age.
            let fade = if ttl > 0.0 && ttl.is_finite() {
                (1.0 - age / ttl).clamp(0.0, 1.0)
            } else {
                1.0
            };
            let penalty = fade * (external * mean_context + w * external_waiting * mean_prompt);
            let busy = cfg.busy_kv_usage.is_some_and(|b| m.kv_usage > b)
                || cfg.busy_queue_depth.is_some_and(|b| m.waiting > b);
            Some((penalty, busy))
        } else {
            None
        }
    }
}

impl Scheduler {
    /// A worker's scraped metrics arriving at `now_ms`, for one rank, or (`None`) for the whole
    /// worker: then counts are split evenly over its ranks and the KV usage applies to each.
    /// `taken_at_ms`: when the scrape was requested (default `now_ms - metrics_lag_ms`). The
    /// load the router did not place is computed here, against its bookkeeping now, and stored
    /// (see the module docs).
    pub fn update_metrics(
        &mut self,
        worker: &str,
        dp_rank: Option<u32>,
        m: WorkerMetrics,
        now_ms: f64,
        taken_at_ms: Option<f64>,
    ) -> bool {
        let Some(v) = self.by_worker.get(worker) else {
            return false;
        };
        // Sanitized so the cost stays finite whatever a scrape returned.
        let clean = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
        let m = WorkerMetrics {
            waiting: clean(m.waiting),
            running: clean(m.running),
            kv_usage: clean(m.kv_usage),
        };
        let since = taken_at_ms
            .filter(|t| t.is_finite())
            .unwrap_or(now_ms - self.cfg.metrics_lag_ms)
            .min(now_ms);
        // The router's requests the scrape may count, over the targets it covers.
        let (mut ours, mut prefilling, mut n) = (0.0, 0.0, 0usize);
        for &tid in v {
            let Some(t) = self.targets[tid as usize].as_ref() else {
                continue;
            };
            if dp_rank.is_none_or(|r| r == t.dp_rank) {
                let l = self.book.load(tid);
                ours += (l.requests + t.finished_since(since)) as f64;
                prefilling += l.prefilling as f64;
                n += 1;
            }
        }
        if n == 0 {
            return false;
        }
        let external = (m.running + m.waiting - ours).max(0.0);
        let external_waiting = (m.waiting - prefilling).clamp(0.0, external);
        let share = 1.0 / n as f64;
        for &tid in v {
            if let Some(t) = self.targets[tid as usize].as_mut() {
                if dp_rank.is_none_or(|r| r == t.dp_rank) {
                    t.metrics = Some(Scraped {
                        m: WorkerMetrics {
                            waiting: m.waiting * share,
                            running: m.running * share,
                            kv_usage: m.kv_usage,
                        },
                        at: now_ms,
                        external: external * share,
                        external_waiting: external_waiting * share,
                    });
                }
            }
        }
        true
    }
}
