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
//!
//! Layout, for memory: a block's fields sit together (`Block`), and the index is an
//! open-addressing table of `(key, first block)` slots (linear probing, at most half full,
//! backward-shift deletion), so a lookup is one cache miss. The free queue is a deque of block
//! ids, not a linked list: popping the head reads ids in a row instead of chasing a link per block
//! (a cache miss each, one after the other). A block taken out of the middle (a prefix hit) leaves
//! a stale entry behind, skipped when reached: an entry is live iff its block is free and records
//! that entry's position (`qpos`). Allocation and caching touch the blocks and slots they will
//! need [`PREFETCH`] ahead of use, so that the misses of a batch overlap.

use std::collections::VecDeque;

/// Ops codes of the keyed batch layout.
pub const OP_STORED: u32 = 0;
pub const OP_REMOVED: u32 = 1;
/// The GPU medium's code in the keyed layout.
pub const MEDIUM_GPU: u32 = 1;

const NONE: u32 = u32::MAX;

/// How many keys ahead allocation and caching prefetch index slots.
pub const PREFETCH: usize = 8;
const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug, Clone, Copy)]
struct Block {
    /// Its key (valid while `cached`).
    key: u64,
    /// The absolute position of its entry in the free queue (valid while it is free).
    qpos: i64,
    ref_cnt: u32,
    /// The next (younger) block holding the same key, or NONE.
    next_same: u32,
    cached: bool,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: u64,
    /// The key's first (oldest) block; NONE: a free slot.
    block: u32,
}

const FREE_SLOT: Slot = Slot {
    key: 0,
    block: NONE,
};

/// Brings the cache line at `p` in ahead of its use.
#[inline(always)]
fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: `_mm_prefetch` needs SSE, in the x86_64 baseline; a prefetch reads nothing and
        // cannot fault, and the pointer comes from a reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const T as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = p;
    }
}

/// One engine's blocks, prefix cache and pending KV events.
pub struct BlockPool {
    num_blocks: u32,
    blocks: Vec<Block>,
    /// The free queue (P2, P3), head first, with stale entries (see the module docs).
    queue: VecDeque<u32>,
    /// The absolute position of `queue[0]`.
    front_pos: i64,
    free: u32,
    /// The index (P4); a power of two >= 2 x blocks slots.
    slots: Vec<Slot>,
    shift: u32,
    /// Pending events (keyed layout) since the last `take_events`.
    pub(crate) ops: Vec<u32>,
    pub(crate) keys: Vec<u64>,
    /// Where the count of the latest event sits in `ops`, when it is a BlockRemoved of evictions.
    open_removal: Option<usize>,
}

impl BlockPool {
    pub fn new(num_blocks: u32) -> Self {
        let n = num_blocks as usize;
        let empty = Block {
            key: 0,
            qpos: 0,
            ref_cnt: 0,
            next_same: NONE,
            cached: false,
        };
        let mut blocks = vec![empty; n];
        // All blocks free in id order, the null block taken out (vLLM pops it first).
        let queue: VecDeque<u32> = (1..num_blocks).collect();
        for (i, &b) in queue.iter().enumerate() {
            blocks[b as usize].qpos = i as i64;
        }
        let cap = (2 * n).next_power_of_two().max(16);
        BlockPool {
            num_blocks,
            blocks,
            queue,
            front_pos: 0,
            free: num_blocks.saturating_sub(1),
            slots: vec![FREE_SLOT; cap],
            shift: 64 - cap.trailing_zeros(),
            ops: Vec::new(),
            keys: Vec::new(),
            open_removal: None,
        }
    }

    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(MUL) >> self.shift) as usize
    }

    /// The slot holding `key`, or Err(the free slot where it would go).
    #[inline]
    fn find(&self, key: u64) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let s = self.slots[i];
            if s.block == NONE {
                return Err(i);
            }
            if s.key == key {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Empties slot `i`, shifting later entries of its probe run back (no tombstones).
    fn remove_slot(&mut self, mut i: usize) {
        let mask = self.slots.len() - 1;
        let mut j = (i + 1) & mask;
        loop {
            let s = self.slots[j];
            if s.block == NONE {
                break;
            }
            let h = self.home(s.key);
            // Move `s` back into the hole unless its home lies cyclically in (i, j].
            if (j.wrapping_sub(h) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = s;
                i = j;
            }
            j = (j + 1) & mask;
        }
        self.slots[i] = FREE_SLOT;
    }

    /// Touches the index slot where `key` goes, ahead of a lookup or an insert.
    #[inline(always)]
    pub fn prefetch_key(&self, key: u64) {
        prefetch(&self.slots[self.home(key)]);
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
        self.blocks[block as usize].ref_cnt
    }

    /// The first block caching `key`.
    pub fn lookup(&self, key: u64) -> Option<u32> {
        self.find(key).ok().map(|i| self.slots[i].block)
    }

    /// Takes a reference on each block, taking free ones out of the free queue (prefix hits).
    pub fn touch(&mut self, blocks: &[u32]) {
        for &b in blocks {
            if self.blocks[b as usize].ref_cnt == 0 {
                self.unlink(b);
            }
            self.blocks[b as usize].ref_cnt += 1;
        }
    }

    /// Pops `n` blocks from the head of the free queue (the caller checked `num_free`) onto
    /// `out`; a popped block that was cached is evicted first (BlockRemoved).
    pub fn allocate(&mut self, n: u32, out: &mut Vec<u32>) {
        let start = out.len();
        let mut taken = 0;
        while taken < n {
            let b = self.queue.pop_front().expect("the caller checked num_free");
            let pos = self.front_pos;
            self.front_pos += 1;
            if self.live(b, pos) {
                out.push(b);
                taken += 1;
            }
        }
        self.free -= n;
        let got = &out[start..];
        for &b in got.iter().take(PREFETCH) {
            self.prefetch_block_key(b);
        }
        for (i, &b) in got.iter().enumerate() {
            if let Some(&ahead) = got.get(i + PREFETCH) {
                self.prefetch_block_key(ahead);
            }
            self.evict(b);
            self.blocks[b as usize].ref_cnt = 1;
        }
    }

    #[inline(always)]
    fn prefetch_block_key(&self, b: u32) {
        let blk = &self.blocks[b as usize];
        if blk.cached {
            self.prefetch_key(blk.key);
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
            let blk = &mut self.blocks[b as usize];
            blk.ref_cnt -= 1;
            if blk.ref_cnt == 0 {
                if blk.cached {
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
        if self.blocks[bi].cached {
            return false;
        }
        let blk = &mut self.blocks[bi];
        blk.cached = true;
        blk.key = key;
        blk.next_same = NONE;
        match self.find(key) {
            Err(i) => self.slots[i] = Slot { key, block },
            Ok(i) => {
                // Another block holds it already (P4): this one goes last.
                let mut last = self.slots[i].block;
                while self.blocks[last as usize].next_same != NONE {
                    last = self.blocks[last as usize].next_same;
                }
                self.blocks[last as usize].next_same = block;
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
        if !self.blocks[bi].cached {
            return;
        }
        self.blocks[bi].cached = false;
        let key = self.blocks[bi].key;
        let Ok(i) = self.find(key) else {
            return;
        };
        let first = self.slots[i].block;
        if first == block {
            let next = self.blocks[bi].next_same;
            if next == NONE {
                self.remove_slot(i);
            } else {
                self.slots[i].block = next;
            }
        } else {
            let mut prev = first;
            while self.blocks[prev as usize].next_same != NONE
                && self.blocks[prev as usize].next_same != block
            {
                prev = self.blocks[prev as usize].next_same;
            }
            if self.blocks[prev as usize].next_same != block {
                return;
            }
            self.blocks[prev as usize].next_same = self.blocks[bi].next_same;
        }
        self.blocks[bi].next_same = NONE;
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

    /// Whether the queue entry at `pos` holding `b` is its live one.
    #[inline(always)]
    fn live(&self, b: u32, pos: i64) -> bool {
        let blk = &self.blocks[b as usize];
        blk.ref_cnt == 0 && blk.qpos == pos
    }

    /// Takes a free block out of the middle of the queue: its entry goes stale.
    fn unlink(&mut self, b: u32) {
        self.blocks[b as usize].qpos = i64::MIN;
        self.free -= 1;
    }

    fn append(&mut self, b: u32) {
        self.compact_if_stale();
        self.blocks[b as usize].qpos = self.front_pos + self.queue.len() as i64;
        self.queue.push_back(b);
        self.free += 1;
    }

    fn prepend(&mut self, b: u32) {
        self.compact_if_stale();
        self.front_pos -= 1;
        self.blocks[b as usize].qpos = self.front_pos;
        self.queue.push_front(b);
        self.free += 1;
    }

    /// Drops the stale entries once they outnumber the live ones (bounded memory; the live
    /// entries keep their order).
    fn compact_if_stale(&mut self) {
        if self.queue.len() <= 2 * self.num_blocks as usize + 64 {
            return;
        }
        let old = std::mem::take(&mut self.queue);
        let front = self.front_pos;
        for (pos, b) in (front..).zip(old) {
            if self.live(b, pos) {
                self.blocks[b as usize].qpos = front + self.queue.len() as i64;
                self.queue.push_back(b);
            }
        }
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

    #[test]
    fn prefix_hits_leave_stale_entries_that_are_skipped_and_compacted() {
        let mut p = BlockPool::new(6); // blocks 1..5
        let mut scratch = Vec::new();
        let mut got = Vec::new();
        p.allocate(3, &mut got); // 1, 2, 3
        for (b, k) in [(1, 11), (2, 12), (3, 13)] {
            assert!(p.cache_block(b, k));
        }
        p.free_blocks([3, 2, 1].into_iter(), &mut scratch); // queue: 4 5 3 2 1
                                                            // Hits on 2, many times over: each leaves a stale entry behind.
        for _ in 0..200 {
            p.touch(&[2]);
            p.free_blocks([2].into_iter(), &mut scratch);
        }
        assert!(p.queue.len() <= 2 * 6 + 64 + 1);
        assert_eq!(p.num_free(), 5);
        let mut all = Vec::new();
        p.allocate(5, &mut all);
        // LRU order: the never-cached ones, then 3, 1, and 2 (freed last).
        assert_eq!(all, vec![4, 5, 3, 1, 2]);
        assert_eq!(p.num_free(), 0);
    }
}
