//! Interned holders: each `(worker_id, dp_rank)` gets a dense slot id, its bit position in the
//! block bitsets. Freed ids are reused lowest first so the bitsets stay narrow.
//!
//! Invariants (checked by [`Slots::check`]):
//! - S1: `info[s]` is `Some((w, r))` iff `by_worker[w]` contains `(r, s)`; `live` counts them.
//! - S2: `free` holds exactly the ids `< info.len()` whose `info` is `None`.
//! - S3: `info` never ends with `None` (trailing free ids are trimmed), so `info.len()` is one
//!   past the highest live slot and bounds the bitset width.

use std::collections::{BTreeSet, HashMap};

#[derive(Default)]
pub(super) struct Slots {
    by_worker: HashMap<Box<str>, Vec<(u32, u32)>>,
    info: Vec<Option<(Box<str>, u32)>>,
    free: BTreeSet<u32>,
    live: usize,
}

impl Slots {
    #[inline]
    pub(super) fn find(&self, worker_id: &str, dp_rank: u32) -> Option<u32> {
        let ranks = self.by_worker.get(worker_id)?;
        ranks.iter().find(|&&(r, _)| r == dp_rank).map(|&(_, s)| s)
    }

    /// The slot ids of a worker's dp ranks (empty if unknown).
    pub(super) fn of_worker(&self, worker_id: &str) -> impl Iterator<Item = u32> + '_ {
        self.by_worker
            .get(worker_id)
            .into_iter()
            .flatten()
            .map(|&(_, s)| s)
    }

    /// The id the next new holder would get.
    pub(super) fn next_id(&self) -> u32 {
        self.free.first().copied().unwrap_or(self.info.len() as u32)
    }

    pub(super) fn add(&mut self, worker_id: &str, dp_rank: u32) -> u32 {
        debug_assert!(self.find(worker_id, dp_rank).is_none());
        let s = match self.free.pop_first() {
            Some(s) => s,
            None => {
                self.info.push(None);
                (self.info.len() - 1) as u32
            }
        };
        self.info[s as usize] = Some((worker_id.into(), dp_rank));
        match self.by_worker.get_mut(worker_id) {
            Some(v) => v.push((dp_rank, s)),
            None => {
                self.by_worker.insert(worker_id.into(), vec![(dp_rank, s)]);
            }
        }
        self.live += 1;
        s
    }

    /// Forgets the worker (all dp ranks); returns whether it was known.
    pub(super) fn remove_worker(&mut self, worker_id: &str) -> bool {
        let Some(ranks) = self.by_worker.remove(worker_id) else {
            return false;
        };
        for (_, s) in ranks {
            self.info[s as usize] = None;
            self.free.insert(s);
            self.live -= 1;
        }
        while let Some(None) = self.info.last() {
            let s = (self.info.len() - 1) as u32;
            self.free.remove(&s);
            self.info.pop();
        }
        true
    }

    #[inline]
    pub(super) fn get(&self, slot: u32) -> Option<(&str, u32)> {
        match self.info.get(slot as usize) {
            Some(Some((w, r))) => Some((w, *r)),
            _ => None,
        }
    }

    pub(super) fn live(&self) -> usize {
        self.live
    }

    /// One past the highest live slot id.
    pub(super) fn bound(&self) -> usize {
        self.info.len()
    }

    pub(super) fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let map = self.by_worker.capacity() * (size_of::<(Box<str>, Vec<(u32, u32)>)>() + 1)
            + self
                .by_worker
                .iter()
                .map(|(k, v)| k.len() + v.capacity() * size_of::<(u32, u32)>())
                .sum::<usize>();
        let info = self.info.capacity() * size_of::<Option<(Box<str>, u32)>>()
            + self
                .info
                .iter()
                .flatten()
                .map(|(w, _)| w.len())
                .sum::<usize>();
        // A BTreeSet node holds up to 11 keys in roughly 100 bytes.
        map + info + self.free.len().div_ceil(5) * 100
    }

    pub(super) fn check(&self) -> Result<(), String> {
        let mut n = 0;
        for (w, ranks) in &self.by_worker {
            for &(r, s) in ranks {
                match self.info.get(s as usize) {
                    Some(Some((w2, r2))) if **w2 == **w && *r2 == r => n += 1,
                    _ => return Err(format!("S1: slot {s} of ({w}, {r})")),
                }
            }
        }
        let infos = self.info.iter().flatten().count();
        if n != infos || n != self.live {
            return Err(format!("S1: {n} mapped, {infos} infos, live {}", self.live));
        }
        let free: BTreeSet<u32> = (0..self.info.len() as u32)
            .filter(|&s| self.info[s as usize].is_none())
            .collect();
        if free != self.free {
            return Err("S2: free set".into());
        }
        if matches!(self.info.last(), Some(None)) {
            return Err("S3: trailing free id".into());
        }
        Ok(())
    }
}
