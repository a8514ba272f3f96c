//! The router's own bookkeeping of the load it has put on each target: every request it placed
//! and has not seen finish, keyed by request id.
//!
//! A request contributes, on its target:
//! - **prefill blocks** (`prompt blocks - overlap` at the decision) until its first token: work
//!   queued ahead of the next request there;
//! - **decode blocks**: the KV blocks it keeps active until it finishes. Its prompt's full blocks
//!   are *shared* with the target's other active requests holding the same prefix, so they are
//!   counted once per target (refcounted by key, as vLLM shares them in its prefix cache); the
//!   rest — the partial last prompt block and its output, `max(generated, expected, 1)` tokens —
//!   is its *own*: `own = ceil((prompt + max(generated, expected, 1)) / block size) - full prompt
//!   blocks` (≥ 1), with `expected = min(max_tokens, cap) / 2` (the mean context over its life if
//!   it runs to `max_tokens`; 0 when unknown).
//!
//! So a target's decode load is `unique active prompt blocks + Σ own blocks`, and the *marginal*
//! decode load of a new request there ([`LoadBook::marginal`]) is only what it does not share
//! with the requests already running: its prompt blocks past the longest prefix active there,
//! plus its own blocks.
//!
//! A booking made by a decision is *unstarted* until [`LoadBook::start`] confirms it; an unstarted
//! booking lapses after its TTL (the caller may route without sending, or give up while queued).
//! Started bookings last until finish.
//!
//! A key whose last request finishes stays in the table at zero ("idle") instead of being removed:
//! a conversation's next turn usually books the same prefix on the same target right after, and
//! finds it there. Idle pairs are swept out when they outnumber the held ones (and pass
//! [`MIN_IDLE_SWEEP`]), so the table stays within twice the held pairs plus that.
//!
//! Invariants (checked by [`LoadBook::check`]):
//! - L1: `keys[(k, t)]` is the number of requests on `t` whose prompt keys include `k` (0: idle,
//!   or absent); `idle` counts the pairs at zero.
//! - L2: for every target `t`, `loads[t]` sums its requests (requests, prefilling count, prefill
//!   blocks) and `loads[t].decode_blocks = |{k : keys[(k, t)] > 0}| + Σ own blocks`.
//! - L3: the keys active on a target are a union of whole prefixes (each request's keys start at
//!   its first block), so "the longest active prefix of a query" is a binary search.

use std::collections::{HashMap, VecDeque};

use super::pair_table::{PairTable, PREFETCH};

/// Idle pairs (refcount zero) are swept out once they outnumber the held ones and reach this.
const MIN_IDLE_SWEEP: usize = 1 << 14;

/// The router's predicted load on one target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetLoad {
    /// Requests placed there and not finished.
    pub requests: u32,
    /// Of those, requests without a first token yet.
    pub prefilling: u32,
    /// Prefill blocks of the prefilling requests (uncached prompt blocks at their decision).
    pub prefill_blocks: u64,
    /// Unique active prompt blocks plus every request's own blocks (see the module docs).
    pub decode_blocks: u64,
    /// Σ of its requests' whole context blocks, shared prefixes counted per request.
    pub context_blocks: u64,
}

#[derive(Debug, Clone)]
struct Active {
    target: u32,
    /// The prompt's full-block keys (empty when booked from a decision's numbers only).
    keys: Box<[u64]>,
    prompt_tokens: u32,
    prefill_blocks: u32,
    prefilling: bool,
    generated: u32,
    expected_out: u32,
    own_blocks: u32,
    /// `f64::INFINITY` once started.
    expires: f64,
}

pub(crate) struct LoadBook {
    block_size: u32,
    active: HashMap<Box<str>, Active>,
    loads: Vec<TargetLoad>,
    /// `(prompt key, target) → requests holding it` (L1).
    keys: PairTable,
    /// Pairs of `keys` at zero (see the module docs).
    idle: usize,
    /// Unstarted bookings by expiry (entries of requests started or finished since are skipped).
    unstarted: VecDeque<(f64, Box<str>)>,
    pub(crate) lapsed: u64,
    pub(crate) unknown: u64,
}

impl LoadBook {
    pub(crate) fn new(block_size: u32) -> Self {
        LoadBook {
            block_size: block_size.max(1),
            active: HashMap::new(),
            loads: Vec::new(),
            keys: PairTable::default(),
            idle: 0,
            unstarted: VecDeque::new(),
            lapsed: 0,
            unknown: 0,
        }
    }

    pub(crate) fn load(&self, target: u32) -> TargetLoad {
        self.loads.get(target as usize).copied().unwrap_or_default()
    }

    /// The target of a booked request, and whether it was started (or has progressed).
    pub(crate) fn target_of(&self, id: &str) -> Option<(u32, bool)> {
        self.active
            .get(id)
            .map(|a| (a.target, a.expires == f64::INFINITY))
    }

    /// Requests booked (started or not).
    pub(crate) fn len(&self) -> usize {
        self.active.len()
    }

    pub(crate) fn unstarted(&self) -> usize {
        self.active
            .values()
            .filter(|a| a.expires.is_finite())
            .count()
    }

    /// Own blocks of a request with `shared` full prompt blocks counted as shared.
    pub(crate) fn own_blocks(&self, prompt_tokens: u32, output: u32, shared: usize) -> u32 {
        own_blocks(self.block_size, prompt_tokens, output, shared)
    }

    /// Starts loading what [`LoadBook::marginal`] reads first for `target`.
    #[inline(always)]
    pub(crate) fn prefetch(&self, target: u32, first_key: u64) {
        self.keys.prefetch(first_key, target);
    }

    /// The marginal decode blocks of a request with prompt keys `keys` and `own` own blocks on
    /// `target`: its keys past the longest prefix active there (L3), plus `own`.
    pub(crate) fn marginal(&self, target: u32, keys: &[u64], own: u32) -> u64 {
        let held = |i: usize| self.keys.get(keys[i], target).is_some_and(|n| n > 0);
        let shared = if keys.is_empty() || self.keys.len() == 0 || !held(0) {
            0
        } else {
            // held(lo) is true; hi is the first index known not held (or the end).
            let (mut lo, mut hi) = (0usize, keys.len());
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if held(mid) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            hi
        };
        (keys.len() - shared) as u64 + own as u64
    }

    /// Books request `id` on `target` with its prompt keys (replacing an earlier booking of the
    /// same id). `expires`: when an unstarted booking lapses; `f64::INFINITY` books it started.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn book(
        &mut self,
        id: &str,
        target: u32,
        keys: &[u64],
        prompt_tokens: u32,
        prefill_blocks: u32,
        expected_out: u32,
        expires: f64,
    ) {
        self.finish(id);
        let a = Active {
            target,
            keys: keys.into(),
            prompt_tokens,
            prefill_blocks,
            prefilling: true,
            generated: 0,
            expected_out,
            own_blocks: self.own_blocks(prompt_tokens, expected_out, keys.len()),
            expires,
        };
        let added = self.hold(&a);
        let l = slot(&mut self.loads, target);
        add(l, &a);
        l.decode_blocks += added;
        if expires.is_finite() {
            self.unstarted.push_back((expires, id.into()));
        }
        self.active.insert(id.into(), a);
    }

    /// Refcounts the request's keys on its target; returns how many became active there.
    fn hold(&mut self, a: &Active) -> u64 {
        self.keys.reserve(a.keys.len());
        for &k in a.keys.iter().take(PREFETCH) {
            self.keys.prefetch(k, a.target);
        }
        let mut added = 0;
        for (i, &k) in a.keys.iter().enumerate() {
            if let Some(&ahead) = a.keys.get(i + PREFETCH) {
                self.keys.prefetch(ahead, a.target);
            }
            let (n, new) = self.keys.entry(k, a.target, 0);
            if *n == 0 {
                added += 1;
                self.idle -= !new as usize;
            }
            *n += 1;
        }
        added
    }

    /// Releases the request's keys (a key at zero stays, idle); returns how many stopped being
    /// active on its target.
    fn release(&mut self, a: &Active) -> u64 {
        let keys = &mut self.keys;
        for &k in a.keys.iter().take(PREFETCH) {
            keys.prefetch(k, a.target);
        }
        let mut removed = 0;
        for (i, &k) in a.keys.iter().enumerate() {
            if let Some(&ahead) = a.keys.get(i + PREFETCH) {
                keys.prefetch(ahead, a.target);
            }
            if let Some(n) = keys.get_mut(k, a.target) {
                if *n == 1 {
                    removed += 1;
                }
                *n = n.saturating_sub(1);
            }
        }
        self.idle += removed as usize;
        if self.idle >= MIN_IDLE_SWEEP && self.idle * 2 > self.keys.len() {
            self.keys.retain(|s| s.value > 0);
            self.idle = 0;
        }
        removed
    }

    /// The request was sent to `target`: confirms its booking, or books it from the decision's
    /// numbers when it has none there (it lapsed, was a dry run, or named another target; its
    /// prompt then counts as its own blocks). Returns whether a booking on `target` existed.
    pub(crate) fn start(
        &mut self,
        id: &str,
        target: u32,
        prompt_blocks: u32,
        overlap_blocks: u32,
        expected_out: u32,
    ) -> bool {
        if let Some(a) = self.active.get_mut(id) {
            if a.target == target {
                a.expires = f64::INFINITY;
                return true;
            }
        }
        self.book(
            id,
            target,
            &[],
            prompt_blocks.saturating_mul(self.block_size),
            prompt_blocks.saturating_sub(overlap_blocks),
            expected_out,
            f64::INFINITY,
        );
        false
    }

    /// The first output token arrived: the prefill load goes (and the booking counts as started).
    pub(crate) fn first_token(&mut self, id: &str) -> bool {
        self.update(id, |_, a| {
            a.prefilling = false;
        })
    }

    /// `generated` output tokens so far (one or more also means the prefill is done).
    pub(crate) fn tokens(&mut self, id: &str, generated: u32) -> bool {
        self.update(id, |block_size, a| {
            if generated > 0 {
                a.prefilling = false;
            }
            a.generated = generated;
            let output = generated.max(a.expected_out);
            a.own_blocks = own_blocks(block_size, a.prompt_tokens, output, a.keys.len());
        })
    }

    /// Applies `f` to a request's record (its keys unchanged), keeping the sums exact.
    fn update(&mut self, id: &str, f: impl FnOnce(u32, &mut Active)) -> bool {
        let Some(a) = self.active.get_mut(id) else {
            self.unknown += 1;
            return false;
        };
        sub(&mut self.loads[a.target as usize], a);
        a.expires = f64::INFINITY;
        f(self.block_size, a);
        add(&mut self.loads[a.target as usize], a);
        true
    }

    /// Finished, failed or cancelled: all its load goes.
    pub(crate) fn finish(&mut self, id: &str) -> bool {
        match self.active.remove(id) {
            Some(a) => {
                self.drop_active(&a);
                true
            }
            None => false,
        }
    }

    fn drop_active(&mut self, a: &Active) {
        let removed = self.release(a);
        let l = &mut self.loads[a.target as usize];
        sub(l, a);
        l.decode_blocks -= removed;
    }

    /// Drops unstarted bookings whose TTL passed.
    pub(crate) fn sweep(&mut self, now: f64) {
        while let Some((expires, _)) = self.unstarted.front() {
            if *expires > now {
                break;
            }
            let (expires, id) = self.unstarted.pop_front().expect("front exists");
            if self.active.get(&id).is_some_and(|a| a.expires == expires) {
                let a = self.active.remove(&id).expect("present");
                self.drop_active(&a);
                self.lapsed += 1;
            }
        }
    }

    /// Forgets every request of `target` (its worker left).
    pub(crate) fn remove_target(&mut self, target: u32) {
        self.active.retain(|_, a| a.target != target);
        self.keys.retain(|s| s.target != target && s.value > 0);
        self.idle = 0;
        if let Some(l) = self.loads.get_mut(target as usize) {
            *l = TargetLoad::default();
        }
    }

    /// Verifies L1–L2. For tests.
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut counts: HashMap<(u64, u32), u32> = HashMap::new();
        let mut sums = vec![TargetLoad::default(); self.loads.len()];
        for a in self.active.values() {
            for &k in a.keys.iter() {
                *counts.entry((k, a.target)).or_default() += 1;
            }
            let l = sums
                .get_mut(a.target as usize)
                .ok_or("request of an unknown target")?;
            add(l, a);
        }
        let mut zeros = 0;
        for p in self.keys.pairs() {
            if p.value == 0 {
                zeros += 1;
            } else if counts.get(&(p.key, p.target)) != Some(&p.value) {
                return Err(format!("L1: ({:#x}, {}) -> {}", p.key, p.target, p.value));
            }
        }
        if zeros != self.idle {
            return Err(format!("L1: {zeros} idle pairs, {} counted", self.idle));
        }
        if counts.len() != self.keys.len() - self.idle {
            return Err("L1: missing pairs".into());
        }
        for (&(_, t), _) in counts.iter() {
            sums[t as usize].decode_blocks += 1;
        }
        if sums != self.loads {
            return Err(format!("L2: loads {:?} != sums {:?}", self.loads, sums));
        }
        self.keys.check()
    }
}

/// At least one: a request writes at least one token, so it always holds a block of its own and
/// its load never reads zero (identical prompts still add up).
fn own_blocks(block_size: u32, prompt_tokens: u32, output: u32, shared: usize) -> u32 {
    let ctx = (prompt_tokens as u64 + output.max(1) as u64).div_ceil(block_size as u64);
    ctx.saturating_sub(shared as u64).min(u32::MAX as u64) as u32
}

fn slot(loads: &mut Vec<TargetLoad>, target: u32) -> &mut TargetLoad {
    let t = target as usize;
    if loads.len() <= t {
        loads.resize(t + 1, TargetLoad::default());
    }
    &mut loads[t]
}

/// Adds the request's counts (not its shared keys) to its target's load.
fn add(l: &mut TargetLoad, a: &Active) {
    l.requests += 1;
    l.context_blocks += a.keys.len() as u64 + a.own_blocks as u64;
    if a.prefilling {
        l.prefilling += 1;
        l.prefill_blocks += a.prefill_blocks as u64;
    }
    l.decode_blocks += a.own_blocks as u64;
}

fn sub(l: &mut TargetLoad, a: &Active) {
    l.requests -= 1;
    l.context_blocks -= a.keys.len() as u64 + a.own_blocks as u64;
    if a.prefilling {
        l.prefilling -= 1;
        l.prefill_blocks -= a.prefill_blocks as u64;
    }
    l.decode_blocks -= a.own_blocks as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [u64; 6] = [11, 12, 13, 14, 15, 16];

    #[test]
    fn lifecycle_sums() {
        let mut b = LoadBook::new(16);
        // 10 full blocks of prompt, 8 uncached.
        b.book("a", 0, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 160, 8, 0, 100.0);
        assert_eq!(
            b.load(0),
            TargetLoad {
                requests: 1,
                prefilling: 1,
                prefill_blocks: 8,
                decode_blocks: 11, // 10 prompt blocks + 1 own (its first output token)
                context_blocks: 11,
            }
        );
        assert!(b.start("a", 0, 10, 2, 0));
        b.sweep(1000.0);
        assert_eq!(b.load(0).requests, 1, "started bookings do not lapse");
        assert!(b.first_token("a"));
        assert_eq!(b.load(0).prefill_blocks, 0);
        assert!(b.tokens("a", 17));
        assert_eq!(b.load(0).decode_blocks, 12); // ceil(177 / 16)
        b.check().unwrap();
        assert!(b.finish("a"));
        assert_eq!(b.load(0), TargetLoad::default());
        assert!(!b.finish("a"));
        assert!(!b.first_token("zz"));
        assert_eq!(b.unknown, 1);
        b.check().unwrap();
    }

    #[test]
    fn finished_keys_idle_then_rebook_and_sweep() {
        let mut b = LoadBook::new(4);
        b.book("a", 0, &K, 24, 6, 0, f64::INFINITY);
        assert!(b.finish("a"));
        assert_eq!(
            (b.idle, b.keys.len()),
            (6, 6),
            "a finished request's keys stay, at zero"
        );
        assert_eq!(b.marginal(0, &K, 1), 7, "idle keys are not held");
        b.check().unwrap();
        // The next turn: the same prefix and two blocks more, on the same target.
        let next = [11, 12, 13, 14, 15, 16, 17, 18];
        b.book("b", 0, &next, 32, 2, 0, f64::INFINITY);
        assert_eq!((b.idle, b.keys.len()), (0, 8));
        assert_eq!(b.load(0).decode_blocks, 8 + 1);
        assert_eq!(b.marginal(0, &K, 1), 1);
        b.check().unwrap();
        assert!(b.finish("b"));
        // Many one-off requests: idle pairs are swept once they outnumber the held ones.
        b.book("held", 1, &K, 24, 6, 0, f64::INFINITY);
        let mut most = 0;
        for r in 0..40u64 {
            let keys: Vec<u64> = (0..1000).map(|i| (r << 32) | i).collect();
            b.book("x", 0, &keys, 4000, 1000, 0, f64::INFINITY);
            assert!(b.finish("x"));
            most = most.max(b.keys.len());
            assert!(b.idle <= (MIN_IDLE_SWEEP).max(b.keys.len() - b.idle));
        }
        assert!(most <= 2 * MIN_IDLE_SWEEP + 1000, "table held {most} pairs");
        assert!(b.idle < 40_000, "swept at least once");
        assert_eq!(
            b.marginal(1, &K, 1),
            1,
            "the held request's keys survive the sweeps"
        );
        b.check().unwrap();
        b.remove_target(1);
        assert_eq!((b.idle, b.keys.len()), (0, 0));
        b.check().unwrap();
    }

    #[test]
    fn shared_prefixes_count_once_per_target() {
        let mut b = LoadBook::new(4);
        // Two requests sharing 4 of their 6 and 5 blocks; one on another target.
        b.book("a", 0, &K, 24, 6, 0, f64::INFINITY);
        b.book("b", 0, &[11, 12, 13, 14, 99], 22, 1, 0, f64::INFINITY);
        b.book("c", 1, &K[..2], 8, 2, 0, f64::INFINITY);
        // Target 0: unique {11..16, 99} = 7, own: a ceil(25/4) - 6 = 1, b ceil(23/4) - 5 = 1.
        assert_eq!(b.load(0).decode_blocks, 9);
        assert_eq!(b.load(1).decode_blocks, 3);
        // A request sharing 5 blocks with target 0's active ones adds its sixth and its own.
        assert_eq!(b.marginal(0, &[11, 12, 13, 14, 15, 77], 2), 1 + 2);
        assert_eq!(b.marginal(1, &[11, 12, 13, 14, 15, 77], 2), 4 + 2);
        assert_eq!(b.marginal(2, &K, 0), 6);
        b.check().unwrap();
        b.finish("a");
        assert_eq!(b.load(0).decode_blocks, 5 + 1);
        assert_eq!(b.own_blocks(24, 0, 6), 1, "at least one block of its own");
        assert_eq!(b.marginal(0, &K, 0), 2);
        b.check().unwrap();
    }

    #[test]
    fn expected_output_and_rebooking() {
        let mut b = LoadBook::new(16);
        b.book("a", 1, &[1, 2], 32, 2, 64, 10.0); // ceil((32 + 64) / 16) = 6: 2 shared + 4 own
        assert_eq!(b.load(1).decode_blocks, 6);
        b.book("a", 2, &[1, 2], 32, 2, 0, 10.0); // re-routed: moves
        assert_eq!(b.load(1), TargetLoad::default());
        assert_eq!(b.load(2).requests, 1);
        // Started elsewhere than booked: rebooked from the decision's numbers.
        assert!(!b.start("a", 3, 5, 1, 0));
        assert_eq!(b.load(2), TargetLoad::default());
        assert_eq!(b.load(3).prefill_blocks, 4);
        assert_eq!(b.load(3).decode_blocks, 6); // ceil((80 + 1) / 16), all its own
        b.check().unwrap();
    }

    #[test]
    fn unstarted_bookings_lapse() {
        let mut b = LoadBook::new(4);
        b.book("a", 0, &K[..2], 8, 2, 0, 10.0);
        b.book("b", 0, &K[..2], 8, 2, 0, 10.0);
        b.book("a", 0, &K[..2], 8, 2, 0, 20.0); // refreshed: the first queue entry must not drop it
        b.start("b", 0, 2, 0, 0);
        b.sweep(10.0);
        assert_eq!(b.load(0).requests, 2);
        assert_eq!(b.unstarted(), 1);
        b.sweep(20.0);
        assert_eq!(b.load(0).requests, 1);
        assert_eq!(b.lapsed, 1);
        b.check().unwrap();
        b.remove_target(0);
        assert_eq!(b.len(), 0);
        b.check().unwrap();
    }
}
