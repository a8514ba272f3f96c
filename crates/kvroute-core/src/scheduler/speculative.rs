//! Speculative entries: blocks the router *predicts* a target holds because it just sent it a
//! request with those blocks, before the worker's own KV events say so.
//!
//! Each routing decision credits the chosen target, for `ttl`, with the request's keys *beyond*
//! the prefix the index already shows it holding (one *record*): those are the blocks its events
//! have not confirmed yet. A query then extends each target's indexed overlap `I` with the run of
//! speculatively credited keys starting right at `q[I]`:
//!
//! ```text
//! overlap(t) = I(t) + S(t),   S(t) = the largest s with q[I(t) .. I(t) + s] all credited to t
//! ```
//!
//! This is the union of indexed and speculative holdings walked as one prefix (conservatively:
//! an indexed block past a gap in the credit is not counted). Crediting only the unconfirmed tail
//! keeps the cost of a decision proportional to what is new, not to the prompt: a request whose
//! first 6,000 tokens the worker already holds credits only the rest.
//!
//! # Invariants
//!
//! - V1: `map[(k, t)] = (expires, seq)` where `seq` is the newest live record of target `t` that
//!   credits key `k`, and `expires` is that record's expiry. Records are appended with
//!   non-decreasing expiry (time is monotonic and the TTL is fixed), so the newest record is also
//!   the one expiring last.
//! - V2: `keys` is the concatenation of the keys of the records in `recs`, in order.
//!
//! - V3: `recs[i]` has sequence number `front_seq + i` (wrapping); a pair's `seq` names a record
//!   in `recs`, so a pair is live iff that record's `expires > now`.
//!
//! Expiry is lazy: [`Overlay::sweep`] pops expired records (amortized O(1) per credited key), and
//! queries also treat a pair whose record has `expires <= now` as absent. The table holds at most
//! `max_pairs` pairs: beyond that the oldest records go first (counted in `evicted`).
//!
//! The pairs live in a [`PairTable`] (value: the record's `seq`); inserts and removals prefetch
//! [`PREFETCH`] keys ahead.

use std::collections::VecDeque;

use super::pair_table::{PairTable, PREFETCH};

#[derive(Debug, Clone, Copy)]
struct Record {
    expires: f64,
    target: u32,
    len: u32,
}

pub(crate) struct Overlay {
    table: PairTable,
    keys: VecDeque<u64>,
    recs: VecDeque<Record>,
    /// Sequence number of `recs[0]` (V3).
    front_seq: u32,
    max_pairs: usize,
    pub(crate) evicted: u64,
    /// Sweeps in a row that found the table sparse: it shrinks after [`SHRINK_AFTER`] of them,
    /// not at the first, so that a long prompt's keys coming and going (every few requests on a
    /// long-context trace) do not resize it back and forth.
    sparse_sweeps: u32,
}

/// Sweeps of a sparse table before it shrinks (see `Overlay::sparse_sweeps`).
const SHRINK_AFTER: u32 = 256;

impl Overlay {
    pub(crate) fn new(max_pairs: usize) -> Self {
        Overlay {
            table: PairTable::default(),
            keys: VecDeque::new(),
            recs: VecDeque::new(),
            front_seq: 0,
            max_pairs: max_pairs.max(1),
            evicted: 0,
            sparse_sweeps: 0,
        }
    }

    /// Live `(key, target)` pairs (some may be past their expiry until the next sweep).
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Credits `target` with `keys` (consecutive blocks of one chain) until `expires`.
    pub(crate) fn credit(&mut self, target: u32, keys: &[u64], expires: f64) {
        if keys.is_empty() {
            return;
        }
        let seq = self.front_seq.wrapping_add(self.recs.len() as u32);
        self.table.reserve(keys.len());
        for &k in keys.iter().take(PREFETCH) {
            self.table.prefetch(k, target);
        }
        for (i, &k) in keys.iter().enumerate() {
            if let Some(&ahead) = keys.get(i + PREFETCH) {
                self.table.prefetch(ahead, target);
            }
            self.table.insert(k, target, seq);
        }
        self.keys.extend(keys.iter().copied());
        self.recs.push_back(Record {
            expires,
            target,
            len: keys.len() as u32,
        });
        while self.table.len() > self.max_pairs && self.recs.len() > 1 {
            self.pop_front();
            self.evicted += 1;
        }
    }

    /// Pops every record that expired at `now`.
    pub(crate) fn sweep(&mut self, now: f64) {
        let popped = self.recs.front().is_some_and(|r| r.expires <= now);
        while self.recs.front().is_some_and(|r| r.expires <= now) {
            self.pop_front();
        }
        if popped {
            if !self.table.shrinkable() {
                self.sparse_sweeps = 0;
            } else {
                self.sparse_sweeps += 1;
                if self.sparse_sweeps >= SHRINK_AFTER {
                    self.sparse_sweeps = 0;
                    self.table.maybe_shrink();
                }
            }
        }
    }

    fn pop_front(&mut self) {
        let Some(rec) = self.recs.pop_front() else {
            return;
        };
        let seq = self.front_seq;
        self.front_seq = seq.wrapping_add(1);
        let n = rec.len as usize;
        for i in 0..n.min(PREFETCH) {
            self.table.prefetch(self.keys[i], rec.target);
        }
        for i in 0..n {
            if i + PREFETCH < n {
                self.table.prefetch(self.keys[i + PREFETCH], rec.target);
            }
            self.table.remove_if(self.keys[i], rec.target, |v| v == seq);
        }
        self.keys.drain(..n);
    }

    #[inline(always)]
    fn live(&self, key: u64, target: u32, now: f64) -> bool {
        self.table.get(key, target).is_some_and(|seq| {
            let off = seq.wrapping_sub(self.front_seq) as usize;
            self.recs.get(off).is_some_and(|r| r.expires > now)
        })
    }

    /// Starts loading what `run(target, [key, ..])` reads first.
    #[inline(always)]
    pub(crate) fn prefetch(&self, target: u32, key: u64) {
        self.table.prefetch(key, target);
    }

    /// How many keys of `keys`, from the first on, are credited to `target` at `now` (the run
    /// `S(t)` when `keys` starts at the target's indexed overlap).
    pub(crate) fn run(&self, target: u32, keys: &[u64], now: f64) -> u32 {
        keys.iter()
            .take_while(|&&k| self.live(k, target, now))
            .count() as u32
    }

    /// Forgets every credit of `target` (its records stay queued and pop harmlessly: V1's `seq`
    /// check leaves pairs credited later, e.g. to a reused target id, alone).
    pub(crate) fn remove_target(&mut self, target: u32) {
        self.table.retain(|s| s.target != target);
    }

    /// Verifies V1–V3 and the table's invariants. For tests.
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), String> {
        use std::collections::HashMap;
        let total: usize = self.recs.iter().map(|r| r.len as usize).sum();
        if total != self.keys.len() {
            return Err("V2: keys and records disagree".into());
        }
        let mut at = 0;
        let mut newest: HashMap<(u64, u32), u32> = HashMap::new();
        for (i, r) in self.recs.iter().enumerate() {
            let seq = self.front_seq.wrapping_add(i as u32);
            for k in 0..r.len as usize {
                newest.insert((self.keys[at + k], r.target), seq);
            }
            at += r.len as usize;
        }
        for p in self.table.pairs() {
            if newest.get(&(p.key, p.target)) != Some(&p.value) {
                return Err(format!(
                    "V1: pair ({:#x}, {}) -> {}",
                    p.key, p.target, p.value
                ));
            }
        }
        self.table.check()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_query_expire() {
        let mut o = Overlay::new(1 << 20);
        o.credit(3, &[10, 11, 12, 13], 100.0);
        assert_eq!(o.run(3, &[10, 11, 12, 13, 14], 0.0), 4);
        assert_eq!(o.run(3, &[12, 13], 0.0), 2, "a run may start mid-record");
        assert_eq!(o.run(3, &[10, 11, 99], 0.0), 2);
        assert_eq!(o.run(3, &[99, 10], 0.0), 0);
        assert_eq!(o.run(2, &[10, 11], 0.0), 0, "other target");
        assert_eq!(o.run(3, &[10, 11], 100.0), 0, "expired, before any sweep");
        o.check().unwrap();
        // A later, shorter record refreshes the shared keys only.
        o.credit(3, &[10, 11], 150.0);
        o.sweep(120.0);
        assert_eq!(o.len(), 2);
        assert_eq!(o.run(3, &[10, 11, 12, 13], 120.0), 2);
        o.check().unwrap();
        o.sweep(150.0);
        assert!(o.is_empty());
        o.check().unwrap();
    }

    #[test]
    fn bound_evicts_oldest_records_whole() {
        let mut o = Overlay::new(6);
        o.credit(0, &[1, 2, 3, 4], 10.0);
        o.credit(0, &[1, 2, 5], 10.0);
        o.credit(1, &[7, 8, 9], 10.0);
        // 4 + 1 + 3 = 8 pairs > 6: the first record goes; keys 1 and 2 stay (record 2 has them).
        assert_eq!(o.evicted, 1);
        assert_eq!(o.run(0, &[1, 2, 3], 0.0), 2);
        assert_eq!(o.run(0, &[1, 2, 5], 0.0), 3);
        assert_eq!(o.run(1, &[7, 8, 9], 0.0), 3);
        o.check().unwrap();
    }

    #[test]
    fn remove_target_then_reuse() {
        let mut o = Overlay::new(100);
        o.credit(0, &[1, 2], 10.0);
        o.remove_target(0);
        assert_eq!(o.run(0, &[1, 2], 0.0), 0);
        o.credit(0, &[1, 2, 3], 20.0);
        o.sweep(10.0); // pops the old record; must not touch the new credit
        assert_eq!(o.run(0, &[1, 2, 3], 10.0), 3);
        o.check().unwrap();
    }

    #[test]
    fn table_grows_shrinks_and_deletes_without_tombstones() {
        let mut o = Overlay::new(1 << 20);
        let keys: Vec<u64> = (0..5000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        o.credit(1, &keys, 10.0);
        o.credit(2, &keys[..100], 20.0);
        assert_eq!(o.len(), 5100);
        o.check().unwrap();
        o.sweep(10.0);
        assert_eq!(o.len(), 100);
        // Sparse, but a table shrinks only after SHRINK_AFTER sweeps in a row find it so.
        assert!(o.table.cap() > 1024, "not shrunk at the first sparse sweep");
        assert_eq!(o.run(2, &keys, 10.0), 100);
        o.check().unwrap();
        for i in 0..SHRINK_AFTER {
            let t = 20.0 + f64::from(i);
            o.credit(3, &keys[4000..4001], t);
            o.sweep(t);
        }
        assert!(o.table.cap() <= 1024, "shrunk");
        assert_eq!(o.len(), 0);
        o.check().unwrap();
    }

    #[test]
    fn matches_a_reference_model_under_churn() {
        // Random tails of one chain credited to random targets over time, with the size bound
        // biting: run() equals the reference (newest credit per pair, by expiry).
        let mut s = 7u64;
        let mut next = move || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z ^ (z >> 31)
        };
        let chain: Vec<u64> = (0..64).map(|i| 1000 + i).collect();
        let mut o = Overlay::new(300);
        let mut now = 0.0;
        for _ in 0..2000 {
            now += (next() % 5) as f64;
            o.sweep(now);
            let t = (next() % 4) as u32;
            let from = (next() % 32) as usize;
            let to = from + 1 + (next() % (64 - from as u64)) as usize;
            o.credit(t, &chain[from..to], now + 20.0);
            o.check().unwrap();
            let q = (next() % 4) as u32;
            let at = (next() % 64) as usize;
            let reference = chain[at..]
                .iter()
                .take_while(|&&k| {
                    // The newest record crediting (k, q), by the records themselves.
                    let mut pos = 0;
                    let mut live = false;
                    for r in &o.recs {
                        let ks = o.keys.range(pos..pos + r.len as usize);
                        if r.target == q && ks.clone().any(|&x| x == k) {
                            live = r.expires > now;
                        }
                        pos += r.len as usize;
                    }
                    live
                })
                .count() as u32;
            assert_eq!(o.run(q, &chain[at..], now), reference);
        }
    }
}
