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
//! Layout, for memory: the fields of a block that allocation and caching read sit together in
//! 16 bytes (`Block`: four to a cache line, and a request's blocks are mostly neighbours), the
//! rarely used link of duplicates (`next_same`) apart, and the index is an open-addressing table
//! of `(key, first block, duplicates?)` slots (linear probing, at most half full, backward-shift
//! deletion), so a lookup is one cache miss and evicting a key held once reads no link. The free
//! queue is a deque of block ids, not a linked list: popping the head reads ids in a row instead
//! of chasing a link per block (a cache miss each, one after the other). A block taken out of the
//! middle (a prefix hit) leaves a stale entry behind, skipped when reached: an entry is live iff
//! its block is free and records that entry's position (`qpos`, modulo 2^32: the queue never
//! holds 2^32 entries, so two positions in it never agree modulo 2^32). Allocation and caching
//! touch the blocks and slots they will need [`PREFETCH`] ahead of use, so that the misses of a
//! batch overlap.

use std::collections::VecDeque;

/// Ops codes of the keyed batch layout.
pub const OP_STORED: u32 = 0;
pub const OP_REMOVED: u32 = 1;
/// The GPU medium's code in the keyed layout.
pub const MEDIUM_GPU: u32 = 1;

const NONE: u32 = u32::MAX;

/// How many keys ahead allocation and caching prefetch index slots.
pub const PREFETCH: usize = 16;
/// How many free queue entries ahead allocation prefetches their blocks.
const QUEUE_PREFETCH: usize = 16;
const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

/// `Block::meta`'s bit for "in the prefix cache"; the bits below it are the ref count.
const CACHED: u32 = 1 << 31;
const REFS: u32 = CACHED - 1;

#[derive(Debug, Clone, Copy)]
struct Block {
    /// Its key (valid while cached).
    key: u64,
    /// The absolute position of its entry in the free queue, modulo 2^32 (valid while it is free).
    qpos: u32,
    /// Its ref count, and [`CACHED`].
    meta: u32,
}

impl Block {
    #[inline(always)]
    fn refs(&self) -> u32 {
        self.meta & REFS
    }

    #[inline(always)]
    fn cached(&self) -> bool {
        self.meta & CACHED != 0
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: u64,
    /// The key's first (oldest) block; NONE: a free slot.
    block: u32,
    /// Whether other blocks hold the key too (`block`'s `next_same` is not NONE).
    dups: bool,
}

const FREE_SLOT: Slot = Slot {
    key: 0,
    block: NONE,
    dups: false,
};

/// Brings the cache line at `p` in ahead of its use.
#[inline(always)]
pub(crate) fn prefetch<T>(p: &T) {
    prefetch_ptr(p as *const T as *const u8);
}

/// Brings the cache line at address `p` in ahead of its use (`p` need not be valid).
#[inline(always)]
pub(crate) fn prefetch_ptr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: `_mm_prefetch` needs SSE, in the x86_64 baseline; a prefetch is a hint: it
        // reads nothing the program sees and cannot fault, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) };
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
    /// The next (younger) block holding the same key as a cached block, else NONE (every
    /// uncached block's is NONE).
    next_same: Vec<u32>,
    /// The free queue (P2, P3), head first, with stale entries (see the module docs).
    queue: VecDeque<u32>,
    /// The absolute position of `queue[0]`, modulo 2^32.
    front_pos: u32,
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
            meta: 0,
        };
        let mut blocks = vec![empty; n];
        // All blocks free in id order, the null block taken out (vLLM pops it first).
        let queue: VecDeque<u32> = (1..num_blocks).collect();
        for (i, &b) in queue.iter().enumerate() {
            blocks[b as usize].qpos = i as u32;
        }
        let cap = (2 * n).next_power_of_two().max(16);
        BlockPool {
            num_blocks,
            blocks,
            next_same: vec![NONE; n],
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
        self.blocks[block as usize].refs()
    }

    /// The first block caching `key`.
    pub fn lookup(&self, key: u64) -> Option<u32> {
        self.find(key).ok().map(|i| self.slots[i].block)
    }

    /// Takes a reference on each block, taking free ones out of the free queue (prefix hits).
    pub fn touch(&mut self, blocks: &[u32]) {
        for &b in blocks {
            if self.blocks[b as usize].refs() == 0 {
                self.unlink(b);
            }
            self.blocks[b as usize].meta += 1;
        }
    }

    /// Pops `n` blocks from the head of the free queue (the caller checked `num_free`) onto
    /// `out`; a popped block that was cached is evicted first (BlockRemoved).
    pub fn allocate(&mut self, n: u32, out: &mut Vec<u32>) {
        let start = out.len();
        let mut taken = 0;
        while taken < n {
            // The entries' blocks are read in queue order: load them ahead of the check.
            if let Some(&ahead) = self.queue.get(QUEUE_PREFETCH) {
                prefetch(&self.blocks[ahead as usize]);
            }
            let b = self.queue.pop_front().expect("the caller checked num_free");
            let pos = self.front_pos;
            self.front_pos = pos.wrapping_add(1);
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
            self.blocks[b as usize].meta = 1;
        }
    }

    #[inline(always)]
    fn prefetch_block_key(&self, b: u32) {
        let blk = &self.blocks[b as usize];
        if blk.cached() {
            self.prefetch_key(blk.key);
        }
    }

    /// Drops one reference per block of `blocks` taken tail first (eviction priority: first
    /// evicted first), as vLLM's `free_blocks` does with a request's blocks.
    pub fn free_blocks(&mut self, blocks: &[u32], scratch: &mut Vec<u32>) {
        scratch.clear();
        let n = blocks.len();
        // A request's blocks were last touched when it was scheduled: load them ahead of use.
        for &b in blocks.iter().rev().take(QUEUE_PREFETCH) {
            prefetch(&self.blocks[b as usize]);
        }
        for i in (0..n).rev() {
            if let Some(j) = i.checked_sub(QUEUE_PREFETCH) {
                prefetch(&self.blocks[blocks[j] as usize]);
            }
            let b = blocks[i];
            if b == 0 {
                continue;
            }
            let blk = &mut self.blocks[b as usize];
            blk.meta -= 1;
            if blk.refs() == 0 {
                if blk.cached() {
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
        if self.blocks[bi].cached() {
            return false;
        }
        let blk = &mut self.blocks[bi];
        blk.meta |= CACHED;
        blk.key = key;
        // `next_same[block]` is NONE: it was not cached.
        match self.find(key) {
            Err(i) => {
                self.slots[i] = Slot {
                    key,
                    block,
                    dups: false,
                }
            }
            Ok(i) => {
                // Another block holds it already (P4): this one goes last.
                self.slots[i].dups = true;
                let mut last = self.slots[i].block;
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
        if !self.blocks[bi].cached() {
            return;
        }
        self.blocks[bi].meta &= !CACHED;
        let key = self.blocks[bi].key;
        let Ok(i) = self.find(key) else {
            return;
        };
        let slot = self.slots[i];
        if !slot.dups {
            // The key's only block (P4): `block` itself.
            if slot.block != block {
                return;
            }
            self.remove_slot(i);
        } else {
            let next = self.next_same[bi];
            if slot.block == block {
                self.slots[i].block = next;
            } else {
                let mut prev = slot.block;
                while self.next_same[prev as usize] != NONE
                    && self.next_same[prev as usize] != block
                {
                    prev = self.next_same[prev as usize];
                }
                if self.next_same[prev as usize] != block {
                    return;
                }
                self.next_same[prev as usize] = next;
            }
            self.next_same[bi] = NONE;
            let first = self.slots[i].block;
            self.slots[i].dups = self.next_same[first as usize] != NONE;
        }
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
    fn live(&self, b: u32, pos: u32) -> bool {
        let blk = &self.blocks[b as usize];
        blk.refs() == 0 && blk.qpos == pos
    }

    /// Takes a free block out of the middle of the queue: its entry goes stale (the caller takes
    /// a reference at once; once free again the block gets a new entry, at a new position).
    fn unlink(&mut self, _b: u32) {
        self.free -= 1;
    }

    fn append(&mut self, b: u32) {
        self.compact_if_stale();
        self.blocks[b as usize].qpos = self.front_pos.wrapping_add(self.queue.len() as u32);
        self.queue.push_back(b);
        self.free += 1;
    }

    fn prepend(&mut self, b: u32) {
        self.compact_if_stale();
        self.front_pos = self.front_pos.wrapping_sub(1);
        self.blocks[b as usize].qpos = self.front_pos;
        self.queue.push_front(b);
        self.free += 1;
    }

    /// Drops the stale entries once they outnumber the live ones (bounded memory; the live
    /// entries keep their order).
    #[inline(always)]
    fn compact_if_stale(&mut self) {
        if self.queue.len() > 2 * self.num_blocks as usize + 64 {
            self.compact();
        }
    }

    #[cold]
    #[inline(never)]
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.queue);
        let front = self.front_pos;
        for (i, b) in old.into_iter().enumerate() {
            if self.live(b, front.wrapping_add(i as u32)) {
                self.blocks[b as usize].qpos = front.wrapping_add(self.queue.len() as u32);
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
        p.free_blocks(&[1, 2], &mut scratch);
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
    fn duplicates_leave_the_index_in_any_order() {
        for (order, firsts) in [
            // Freed (so evicted) head first: the next duplicate becomes the key's first block.
            ([3u32, 2, 1], [Some(2), Some(3), None]),
            // The middle one, then the head, then the last.
            ([3, 1, 2], [Some(1), Some(3), None]),
            // The last one first.
            ([1, 2, 3], [Some(1), Some(1), None]),
        ] {
            let mut p = BlockPool::new(8); // blocks 1..7
            let (mut got, mut scratch) = (Vec::new(), Vec::new());
            p.allocate(3, &mut got);
            for b in [1, 2, 3] {
                assert!(p.cache_block(b, 10));
            }
            assert_eq!(p.lookup(10), Some(1));
            p.free_blocks(&order, &mut scratch);
            // The four never-cached blocks go first, then one duplicate per allocation.
            let mut more = Vec::new();
            p.allocate(4, &mut more);
            for want in firsts {
                p.allocate(1, &mut more);
                assert_eq!(p.lookup(10), want, "order {order:?}");
            }
            assert!(p.cache_block(5, 10));
            assert_eq!(p.lookup(10), Some(5));
        }
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
        p.free_blocks(&[1, 2, 3], &mut scratch); // queue: 4 5 3 2 1
                                                 // Hits on 2, many times over: each leaves a stale entry behind.
        for _ in 0..200 {
            p.touch(&[2]);
            p.free_blocks(&[2], &mut scratch);
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
