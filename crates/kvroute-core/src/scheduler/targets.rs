//! Target registration and bookkeeping: the candidate *targets* of a [`Scheduler`], one per
//! `(worker, dp_rank)` the registry lists. Ids are dense and reused lowest first after a worker
//! leaves, so a decision walks a plain `Vec` in target order; `by_worker` maps a worker to its
//! ranks' ids. Dropping a target forgets its bookings, speculative credit and metrics (the index
//! keeps its blocks until the worker leaves or is cleared). Here because it is the registry's side
//! of the scheduler, called on membership changes and event batches, not by `route`. A target has
//! a *KV view* once a batch of its rank was applied here ([`Scheduler::apply_payload`] and
//! siblings; the events go to the model's applier, whose index decisions read) and loses it when
//! its blocks are cleared; a decision with a candidate lacking one is *blind*.

use std::collections::VecDeque;

use crate::event_applier::{ApplyOutcome, KeyedEvent};
use crate::events::{DecodeError, KvEventBatch};

use super::load::TargetLoad;
use super::metrics::Scraped;
use super::{Role, Scheduler, TargetId};

/// One candidate: where it is, its cached index slot, and what the metrics correction keeps of
/// it ([`super::metrics`]).
pub(super) struct Target {
    pub(super) worker: Box<str>,
    pub(super) dp_rank: u32,
    pub(super) role: Role,
    /// Cached index slot of `(worker, dp_rank)`, validated on use.
    pub(super) slot: Option<u32>,
    pub(super) kv_view: bool,
    pub(super) metrics: Option<Scraped>,
    /// When the router's started requests here finished, oldest first: the last
    /// `RECENT_FINISHES_MS`, at most `RECENT_FINISHES_CAP` of them ([`super::metrics`]).
    pub(super) finished_at: VecDeque<f64>,
}

impl Scheduler {
    /// Makes `worker`'s targets exactly its `dp_ranks` (deduplicated), all with `role`; returns
    /// their ids in `dp_ranks` order. Ranks no longer listed are removed as by
    /// [`Scheduler::remove_worker`] (their blocks leave the index).
    pub fn upsert_worker(&mut self, worker: &str, dp_ranks: &[u32], role: Role) -> Vec<TargetId> {
        let old: Vec<TargetId> = self.by_worker.get(worker).cloned().unwrap_or_default();
        for &tid in &old {
            let rank = self.target(tid).dp_rank;
            if !dp_ranks.contains(&rank) {
                self.drop_target(tid);
                self.applier.clear_worker(worker, Some(rank));
            }
        }
        let mut out = Vec::with_capacity(dp_ranks.len());
        for &rank in dp_ranks {
            let existing = self
                .by_worker
                .get(worker)
                .and_then(|v| v.iter().copied().find(|&t| self.target(t).dp_rank == rank));
            let tid = match existing {
                Some(t) => t,
                None => self.add_target(worker, rank, role),
            };
            if let Some(t) = self.targets[tid as usize].as_mut() {
                t.role = role;
            }
            out.push(tid);
        }
        out
    }

    fn add_target(&mut self, worker: &str, dp_rank: u32, role: Role) -> TargetId {
        let index = self.applier.indexer();
        let slot = index.slot_of(worker, dp_rank);
        let kv_view = slot.is_some() || self.applier.worker_stats(worker, dp_rank).is_some();
        let t = Target {
            worker: worker.into(),
            dp_rank,
            role,
            slot,
            kv_view,
            metrics: None,
            finished_at: VecDeque::new(),
        };
        let tid = match self.free.pop_first() {
            Some(tid) => {
                self.targets[tid as usize] = Some(t);
                tid
            }
            None => {
                self.targets.push(Some(t));
                (self.targets.len() - 1) as TargetId
            }
        };
        self.by_worker.entry(worker.into()).or_default().push(tid);
        tid
    }

    fn target(&self, tid: TargetId) -> &Target {
        self.targets[tid as usize]
            .as_ref()
            .expect("by_worker lists live targets")
    }

    /// Forgets one target: its bookings, speculative credit and metrics (not its index blocks).
    fn drop_target(&mut self, tid: TargetId) {
        let Some(t) = self.targets[tid as usize].take() else {
            return;
        };
        if let Some(v) = self.by_worker.get_mut(&*t.worker) {
            v.retain(|&x| x != tid);
            if v.is_empty() {
                self.by_worker.remove(&*t.worker);
            }
        }
        self.book.remove_target(tid);
        self.overlay.remove_target(tid);
        self.free.insert(tid);
        while let Some(None) = self.targets.last() {
            self.targets.pop();
            self.free.remove(&(self.targets.len() as TargetId));
        }
    }

    /// The worker left: its targets, bookings and speculative credit go, and every block of it
    /// leaves the index. Returns whether it was known (as a target or in the index).
    pub fn remove_worker(&mut self, worker: &str) -> bool {
        let tids = self.by_worker.get(worker).cloned().unwrap_or_default();
        for &tid in &tids {
            self.drop_target(tid);
        }
        let indexed = self.applier.remove_worker(worker);
        indexed || !tids.is_empty()
    }

    /// The target of `(worker, dp_rank)`, if registered.
    pub fn target_of(&self, worker: &str, dp_rank: u32) -> Option<TargetId> {
        self.by_worker
            .get(worker)?
            .iter()
            .copied()
            .find(|&t| self.target(t).dp_rank == dp_rank)
    }

    /// `(worker, dp_rank)` of a live target.
    pub fn target_worker(&self, tid: TargetId) -> Option<(&str, u32)> {
        self.targets
            .get(tid as usize)?
            .as_ref()
            .map(|t| (&*t.worker, t.dp_rank))
    }

    /// One past the highest live target id.
    pub fn target_bound(&self) -> usize {
        self.targets.len()
    }

    pub fn has_kv_view(&self, worker: &str, dp_rank: Option<u32>) -> bool {
        self.by_worker.get(worker).is_some_and(|v| {
            v.iter().any(|&t| {
                let t = self.target(t);
                t.kv_view && dp_rank.is_none_or(|r| r == t.dp_rank)
            })
        })
    }

    /// The router's predicted load on a target.
    pub fn load(&self, tid: TargetId) -> TargetLoad {
        self.book.load(tid)
    }

    // ---- KV views: events --------------------------------------------------------------------

    /// One KV event payload of `worker` (see [`EventApplier::apply_payload_at`]); the target of
    /// the batch's rank gains a KV view.
    ///
    /// [`EventApplier::apply_payload_at`]: crate::event_applier::EventApplier::apply_payload_at
    pub fn apply_payload(
        &mut self,
        worker: &str,
        payload: &[u8],
        fallback_rank: u32,
    ) -> std::result::Result<ApplyOutcome, DecodeError> {
        let out = self
            .applier
            .apply_payload_at(worker, payload, fallback_rank)?;
        self.set_view(worker, Some(out.dp_rank), true);
        Ok(out)
    }

    /// Applies a batch already in its typed form (the in-process path of a virtual replay,
    /// [`decode_direct`](crate::events::decode_direct)): the same effect as its wire bytes.
    pub fn apply_batch(
        &mut self,
        worker: &str,
        batch: &KvEventBatch,
        fallback_rank: u32,
    ) -> std::result::Result<ApplyOutcome, DecodeError> {
        let out = self.applier.apply_batch_at(worker, batch, fallback_rank)?;
        self.set_view(worker, Some(out.dp_rank), true);
        Ok(out)
    }

    /// Applies a batch whose hashes are router keys ([`EventApplier::apply_keyed`]).
    ///
    /// [`EventApplier::apply_keyed`]: crate::event_applier::EventApplier::apply_keyed
    pub fn apply_keyed(
        &mut self,
        worker: &str,
        dp_rank: u32,
        events: &[KeyedEvent<'_>],
    ) -> ApplyOutcome {
        let out = self.applier.apply_keyed(worker, dp_rank, events);
        self.set_view(worker, Some(dp_rank), true);
        out
    }

    /// Drops the worker's blocks (one rank or all): a restart or a stale view. Its targets are
    /// blind until their next batch.
    pub fn clear_worker(&mut self, worker: &str, dp_rank: Option<u32>) -> u64 {
        self.set_view(worker, dp_rank, false);
        self.applier.clear_worker(worker, dp_rank)
    }

    /// Sets the KV view of `worker`'s targets (one rank or all).
    fn set_view(&mut self, worker: &str, dp_rank: Option<u32>, view: bool) {
        if let Some(v) = self.by_worker.get(worker) {
            for &tid in v {
                if let Some(t) = self.targets[tid as usize].as_mut() {
                    if dp_rank.is_none_or(|r| r == t.dp_rank) {
                        t.kv_view = view;
                    }
                }
            }
        }
    }
}
