//! A routed attempt's booking on its target: the scheduler's load, the target's in-flight count
//! (admission), closed exactly once (attempt.ts `closeAttempt`): by `close` when the answer is
//! complete, by `fail` when the worker failed, or, when the client goes away and the request's
//! future or stream is dropped, as cancelled (counted by phase: `prefill` before the first token,
//! `decode` after).

use std::sync::Arc;

use crate::fleet::{lock_scheduler, Model, Target};
use crate::lane::Route;
use crate::upstream::Failure;
use crate::Shared;

pub struct Booking {
    pub shared: Arc<Shared>,
    pub model: Arc<Model>,
    pub target: Target,
    pub request_id: String,
    pub route: Route,
    /// The first output token went to the client (streams).
    pub first_token: bool,
    /// A stream's 200 went out: a cancelled request is counted by it, not as 499.
    pub headers_sent: bool,
    open: bool,
}

impl Booking {
    /// Books a decision the scheduler already started (the caller took the target's slot).
    pub fn new(
        shared: Arc<Shared>,
        model: Arc<Model>,
        target: Target,
        request_id: String,
        route: Route,
    ) -> Booking {
        shared.fleet.take(&target.worker, target.dp_rank);
        Booking {
            shared,
            model,
            target,
            request_id,
            route,
            first_token: false,
            headers_sent: false,
            open: true,
        }
    }

    pub fn close(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        lock_scheduler(&self.model.sched).finish(&self.request_id, self.shared.now_ms());
        self.shared
            .fleet
            .release(&self.target.worker, self.target.dp_rank);
        self.shared.stats.released();
    }

    /// The attempt failed: closed, counted, and the worker avoided for the cooldown.
    pub fn fail(&mut self, failure: &Failure) {
        self.close();
        self.shared
            .stats
            .upstream_error(&self.target.worker, failure.kind.label());
        self.shared.suspect(&self.target.worker);
    }
}

impl Drop for Booking {
    fn drop(&mut self) {
        if self.open {
            self.close();
            let phase = if self.first_token {
                "decode"
            } else {
                "prefill"
            };
            self.shared.stats.cancelled(&self.model.name, phase);
            if !self.headers_sent {
                self.shared.stats.request(self.route.code(), 499);
            }
        }
    }
}
