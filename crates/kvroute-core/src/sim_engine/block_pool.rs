//! The KV block pool of one simulated engine: vLLM v1's `BlockPool` + `FreeKVCacheBlockQueue`
//! (vllm/v1/core/block_pool.py, kv_cache_utils.py), block for block what the TS mocker's
//! `ts/mocker/block-pool.ts` does, keyed by router keys, with its KV events written in the
//! keyed batch layout (`event_applier::decode_keyed`: per event `[kind, n, medium]`, then the
//! n keys; `[2]` for a clear).
//!
//! Invariants (the TS pool's P1-P5):
//! - P1: block 0 is the null block: never free, never allocated, never cached.
//! - P2: a block is in the free queue iff its ref count is 0 (block 0 aside); `free` counts them.
//! - P3: the free queue is LRU order, head first: allocation pops the head, and a popped block
//!   that is cached leaves the prefix cache (a BlockRemoved of its key). Freed blocks with a key
//!   go to the tail (evicted last), freed blocks without one to the head (reused first).
//! - P4: `index` maps a key to the first (oldest) block holding it; the key's other blocks follow
//!   through `next_same`. Blocks are not de-duplicated (as in vLLM): a block that becomes full
//!   with a key another block holds is cached too, and BlockStored is sent again.
//! - P5: a block holds at most one key (`key_of`, valid while `cached`).
//! - Events: consecutive evictions extend the latest event when it is a BlockRemoved of
//!   evictions (`open_removal`), as the virtual replay's TS pool does with `mergeRemovals`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Ops codes of the keyed batch layout.
pub const OP_STORED: u32 = 0;
pub const OP_REMOVED: u32 = 1;
/// The GPU medium's code in the keyed layout.
pub const MEDIUM_GPU: u32 = 1;

const NONE: u32 = u32::MAX;

/// Router keys are XXH3 outputs: already uniform, used as their own hash.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(b) ^ (self.0 >> 56);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type KeyMap = HashMap<u64, u32, BuildHasherDefault<KeyHasher>>;

/// One engine's blocks, prefix cache and pending KV events.
pub struct BlockPool {
    num_blocks: u32,
    ref_cnt: Vec<u32>,
    /// The free queue, a doubly linked list over block ids with two sentinels at the end.
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    free: u32,
    key_of: Vec<u64>,
    cached: Vec<bool>,
    next_same: Vec<u32>,
    index: KeyMap,
    /// Pending events (keyed layout) since the last `take_events`.
    pub(crate) ops: Vec<u32>,
    pub(crate) keys: Vec<u64>,
    /// Where the count of the latest event sits in `ops`, when it is a BlockRemoved of evictions.
    open_removal: Option<usize>,
}

impl BlockPool {
    pub fn new(num_blocks: u32) -> Self {
        let n = num_blocks as usize;
        let head = num_blocks;
        let tail = num_blocks + 1;
        let mut prev = vec![NONE; n + 2];
        let mut next = vec![NONE; n + 2];
        // All blocks free in id order, the null block taken out (vLLM pops it first).
        let mut last = head;
        for id in 1..num_blocks {
            next[last as usize] = id;
            prev[id as usize] = last;
            last = id;
        }
        next[last as usize] = tail;
        prev[tail as usize] = last;
        BlockPool {
            num_blocks,
            ref_cnt: vec![0; n],
            prev,
            next,
            head,
            tail,
            free: num_blocks.saturating_sub(1),
            key_of: vec![0; n],
            cached: vec![false; n],
            next_same: vec![NONE; n],
            index: KeyMap::with_capacity_and_hasher(n, Default::default()),
            ops: Vec::new(),
            keys: Vec::new(),
            open_removal: None,
        }
    }

    pub fn num_free(&self) -> u32 {
        self.free
    }

    /// vLLM's `get_usage`: 1 - free / (blocks - null block).
    pub fn usage(&self) -> f64 {
        let total = self.num_blocks.saturating_sub(1);
        if total == 0 {
            0.0
        } else {
            1.0 - f64::from(self.free) / f64::from(total)
        }
    }

    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_cnt[block as usize]
    }

    /// The first block caching `key`.
    pub fn lookup(&self, key: u64) -> Option<u32> {
        self.index.get(&key).copied()
    }

    /// Takes a reference on each block, taking free ones out of the free queue (prefix hits).
    pub fn touch(&mut self, blocks: &[u32]) {
        for &b in blocks {
            if self.ref_cnt[b as usize] == 0 {
                self.unlink(b);
            }
            self.ref_cnt[b as usize] += 1;
        }
    }

    /// Pops `n` blocks from the head of the free queue (the caller checked `num_free`) onto
    /// `out`; a popped block that was cached is evicted first (BlockRemoved).
    pub fn allocate(&mut self, n: u32, out: &mut Vec<u32>) {
        let start = out.len();
        let mut last = self.head;
        for _ in 0..n {
            last = self.next[last as usize];
            out.push(last);
        }
        let rest = self.next[last as usize];
        self.next[self.head as usize] = rest;
        self.prev[rest as usize] = self.head;
        self.free -= n;
        for &b in &out[start..] {
            self.evict(b);
            self.ref_cnt[b as usize] = 1;
        }
    }

    /// Drops one reference per block; `ordered` in eviction priority (first evicted first), as
    /// vLLM's `free_blocks` (a request's blocks tail first: the caller iterates them reversed).
    pub fn free_blocks(&mut self, ordered: impl Iterator<Item = u32>, scratch: &mut Vec<u32>) {
        scratch.clear();
        for b in ordered {
            if b == 0 {
                continue;
            }
            let r = &mut self.ref_cnt[b as usize];
            *r -= 1;
            if *r == 0 {
                if self.cached[b as usize] {
                    self.append(b);
                } else {
                    scratch.push(b);
                }
            }
        }
        // prepend_n: scratch[0] ends up at the head.
        for i in (0..scratch.len()).rev() {
            let b = scratch[i];
            self.prepend(b);
        }
    }

    /// Caches `block` under `key` (P4, P5); false when it already was.
    pub fn cache_block(&mut self, block: u32, key: u64) -> bool {
        let bi = block as usize;
        if self.cached[bi] {
            return false;
        }
        self.cached[bi] = true;
        self.key_of[bi] = key;
        self.next_same[bi] = NONE;
        match self.index.entry(key) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(block);
            }
            std::collections::hash_map::Entry::Occupied(o) => {
                // Another block holds it already (P4): this one goes last.
                let mut last = *o.get();
                while self.next_same[last as usize] != NONE {
                    last = self.next_same[last as usize];
                }
                self.next_same[last as usize] = block;
            }
        }
        true
    }

    /// A BlockStored of `keys` (none: no event).
    pub fn push_stored(&mut self, keys: &[u64]) {
        if keys.is_empty() {
            return;
        }
        self.ops
            .extend_from_slice(&[OP_STORED, keys.len() as u32, MEDIUM_GPU]);
        self.keys.extend_from_slice(keys);
        self.open_removal = None;
    }

    /// Whether events are pending.
    pub fn has_events(&self) -> bool {
        !self.ops.is_empty()
    }

    /// Hands the pending events over (appended to `ops`, `keys`) and starts a new batch.
    pub fn take_events(&mut self, ops: &mut Vec<u32>, keys: &mut Vec<u64>) {
        ops.append(&mut self.ops);
        keys.append(&mut self.keys);
        self.open_removal = None;
    }

    fn evict(&mut self, block: u32) {
        let bi = block as usize;
        if !self.cached[bi] {
            return;
        }
        self.cached[bi] = false;
        let key = self.key_of[bi];
        // One probe of the index: the entry is updated or removed in place.
        let std::collections::hash_map::Entry::Occupied(mut o) = self.index.entry(key) else {
            return;
        };
        let first = *o.get();
        if first == block {
            let next = self.next_same[bi];
            if next == NONE {
                o.remove();
            } else {
                *o.get_mut() = next;
            }
        } else {
            let mut prev = first;
            while self.next_same[prev as usize] != NONE && self.next_same[prev as usize] != block {
                prev = self.next_same[prev as usize];
            }
            if self.next_same[prev as usize] != block {
                return;
            }
            self.next_same[prev as usize] = self.next_same[bi];
        }
        self.next_same[bi] = NONE;
        match self.open_removal {
            Some(at) => {
                self.ops[at] += 1;
                self.keys.push(key);
            }
            None => {
                self.ops.extend_from_slice(&[OP_REMOVED, 1, MEDIUM_GPU]);
                self.open_removal = Some(self.ops.len() - 2);
                self.keys.push(key);
            }
        }
    }

    fn unlink(&mut self, b: u32) {
        let p = self.prev[b as usize];
        let n = self.next[b as usize];
        self.next[p as usize] = n;
        self.prev[n as usize] = p;
        self.free -= 1;
    }

    fn append(&mut self, b: u32) {
        let last = self.prev[self.tail as usize];
        self.next[last as usize] = b;
        self.prev[b as usize] = last;
        self.next[b as usize] = self.tail;
        self.prev[self.tail as usize] = b;
        self.free += 1;
    }

    fn prepend(&mut self, b: u32) {
        let first = self.next[self.head as usize];
        self.next[self.head as usize] = b;
        self.prev[b as usize] = self.head;
        self.next[b as usize] = first;
        self.prev[first as usize] = b;
        self.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_eviction_merges_removals_and_keeps_duplicates() {
        let mut p = BlockPool::new(4); // blocks 1..3 usable
        let mut got = Vec::new();
        p.allocate(2, &mut got);
        assert_eq!(got, vec![1, 2]);
        assert!(p.cache_block(1, 10));
        assert!(p.cache_block(2, 10)); // a duplicate key is cached too
        p.push_stored(&[10, 10]);
        let mut scratch = Vec::new();
        p.free_blocks([2, 1].into_iter(), &mut scratch);
        assert_eq!(p.num_free(), 3);
        assert_eq!(p.lookup(10), Some(1));
        let mut more = Vec::new();
        p.allocate(3, &mut more);
        // Block 3 (never cached) first, then the cached ones in LRU order (2 was freed first).
        assert_eq!(more, vec![3, 2, 1]);
        assert_eq!(p.lookup(10), None);
        let (mut ops, mut keys) = (Vec::new(), Vec::new());
        p.take_events(&mut ops, &mut keys);
        assert_eq!(
            ops,
            vec![OP_STORED, 2, MEDIUM_GPU, OP_REMOVED, 2, MEDIUM_GPU]
        );
        assert_eq!(keys, vec![10, 10, 10, 10]);
    }
}
