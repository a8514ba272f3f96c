/**
 * The KV block pool of one engine, as vLLM v1's `BlockPool` + `FreeKVCacheBlockQueue`
 * (vllm/v1/core/block_pool.py, kv_cache_utils.py, 0.33), with blocks as indices into typed arrays.
 *
 * Invariants:
 * - P1: block 0 is the null block: never free, never allocated, never cached.
 * - P2: a block is in the free queue iff its ref count is 0 (block 0 aside); `numFree` counts them.
 * - P3: the free queue is LRU order, head first: allocation pops the head, and if the popped block
 *   is cached its hash leaves the prefix cache (one `BlockRemoved` per hash). Freed blocks with a
 *   hash go to the tail (evicted last), freed blocks without one to the head (reused first).
 * - P4: the cache index maps a hash to every block holding it, oldest first (an open-addressing
 *   table from the hash to its first block, then `nextSame` links). As in vLLM, blocks are NOT
 *   de-duplicated: a block that becomes full with a hash some other block already holds is cached
 *   too (and `BlockStored` is emitted again); evicting either copy emits `BlockRemoved` for it.
 * - P5: a block holds at most one hash (`hashOf`), set when it is cached and cleared on eviction.
 */
import type { BlockRemovedEvent, KvEvent } from "../events/codec.js";
import type { CpuOffloadTier } from "./cpu-offload.js";

export const MEDIUM_GPU = "GPU";

export class BlockPool {
  readonly numBlocks: number;
  private readonly refCnt: Int32Array;
  private readonly prev: Int32Array;
  private readonly next: Int32Array;
  /** The block's hash (valid when `hashed[id]`). */
  private readonly hashOf: BigUint64Array;
  private readonly hashed: Uint8Array;
  /** Sentinels of the doubly linked free list. */
  private readonly headSentinel: number;
  private readonly tailSentinel: number;
  private free = 0;
  /** `hashOf` as 32-bit halves (the table's keys), without allocating bigints. */
  private readonly hashHalves: Int32Array;
  /**
   * The cache index (P4): linear probing with backward-shift deletion, a power-of-two number of
   * slots >= 2 x blocks (a block holds at most one hash, P5). A slot holds a hash's halves and its
   * first block (-1: empty); the hash's other blocks follow through `nextSame`, oldest first.
   * Slot i is `table[4i .. 4i + 3]`: low half, high half, block, unused (one cache line holds all
   * of a slot: see `warm`).
   */
  private readonly table: Int32Array;
  private readonly nextSame: Int32Array;
  private readonly slotShift: number;
  private readonly slotMask: number;
  /** Blocks in the index. */
  private cachedCount = 0;
  private readonly scratch64 = new BigUint64Array(1);
  private readonly scratch32 = new Int32Array(this.scratch64.buffer);
  /** Hashes held by more than one block (P4), for the debug view. */
  private duplicateCount = 0;
  /** Cumulative: blocks cached under a hash another block already held. */
  private duplicateStores = 0;
  /** Events since the last `takeEvents`, in the order they happened. */
  private events: KvEvent[] = [];
  /**
   * Evictions extend a BlockRemoved that is the latest event instead of each sending its own (one
   * event listing the blocks in eviction order, as the virtual replay's batches carry them), saving
   * an event object per evicted block. Off by default: vLLM sends one event per block.
   */
  mergeRemovals = false;
  /** The latest event, when it is a BlockRemoved of evictions (`mergeRemovals`). */
  private openRemoval: BlockRemovedEvent | null = null;
  /** What the warming loads read (kept so that they are not optimized away). */
  private warmSink = 0;
  /** The CPU tier evicted blocks go to (OffloadingConnector), and its events' block size. */
  offload: CpuOffloadTier | null = null;
  offloadBlockSize = 16;

  constructor(
    numBlocks: number,
    readonly enableCaching: boolean,
    readonly enableEvents: boolean,
  ) {
    this.numBlocks = numBlocks;
    this.refCnt = new Int32Array(numBlocks);
    this.prev = new Int32Array(numBlocks + 2);
    this.next = new Int32Array(numBlocks + 2);
    this.hashOf = new BigUint64Array(numBlocks);
    this.hashHalves = new Int32Array(this.hashOf.buffer);
    this.hashed = new Uint8Array(numBlocks);
    const bits = Math.max(4, Math.ceil(Math.log2(2 * numBlocks)));
    this.slotShift = 32 - bits;
    this.slotMask = (1 << bits) - 1;
    this.table = new Int32Array(4 << bits).fill(-1);
    this.nextSame = new Int32Array(numBlocks).fill(-1);
    this.headSentinel = numBlocks;
    this.tailSentinel = numBlocks + 1;
    // All blocks free in id order, then the null block taken out (vLLM pops it first).
    let last = this.headSentinel;
    for (let id = 1; id < numBlocks; id++) {
      this.next[last] = id;
      this.prev[id] = last;
      last = id;
    }
    this.next[last] = this.tailSentinel;
    this.prev[this.tailSentinel] = last;
    this.free = numBlocks - 1;
  }

  get numFree(): number {
    return this.free;
  }

  /** Blocks held by requests (ref count > 0), the null block excluded. */
  get numUsed(): number {
    return this.numBlocks - 1 - this.free;
  }

  /** vLLM's `get_usage`: 1 - free / (blocks - null block). */
  usage(): number {
    const total = this.numBlocks - 1;
    return total === 0 ? 0 : 1 - this.free / total;
  }

  refCount(block: number): number {
    return this.refCnt[block]!;
  }

  /** The first block caching `hash`, or -1. */
  lookup(hash: bigint): number {
    this.scratch64[0] = hash;
    const slot = this.findSlot(this.scratch32[0]!, this.scratch32[1]!);
    return slot < 0 ? -1 : this.table[4 * slot + 2]!;
  }

  /**
   * `lookup(hashes[i])` where `halves` is a 32-bit view of `hashes` (`halvesOf`): no bigint is
   * made (a lookup per prompt block, at every admission).
   */
  lookupAt(halves: Int32Array, i: number): number {
    const slot = this.findSlot(halves[2 * i]!, halves[2 * i + 1]!);
    return slot < 0 ? -1 : this.table[4 * slot + 2]!;
  }

  /** Takes a reference on each block, removing free ones from the free queue (prefix hits). */
  touch(blocks: readonly number[]): void {
    for (const b of blocks) {
      if (this.refCnt[b] === 0) this.unlink(b);
      this.refCnt[b]!++;
    }
  }

  /**
   * Pops `n` blocks from the head of the free queue (the caller checked `numFree`); a popped block
   * that was cached is evicted from the prefix cache first (BlockRemoved).
   */
  allocate(n: number): number[] {
    if (n <= 0) return [];
    const out: number[] = new Array(n);
    // The queue's first n blocks leave it at once; then their index slots are read in one pass
    // (see `warm`) before they are evicted.
    let last = this.headSentinel;
    for (let i = 0; i < n; i++) out[i] = last = this.next[last]!;
    const rest = this.next[last]!;
    this.next[this.headSentinel] = rest;
    this.prev[rest] = this.headSentinel;
    this.free -= n;
    if (this.enableCaching) {
      let sink = 0;
      for (const b of out) {
        if (this.hashed[b] === 1) sink ^= this.nextSame[b]! ^ this.table[4 * this.home(this.hashHalves[2 * b]!, this.hashHalves[2 * b + 1]!) + 2]!;
      }
      this.warmSink = sink;
      const off = this.offload;
      if (off !== null) {
        // Offloaded before the GPU removals are published (see cpu-offload.ts).
        for (const b of out) if (this.hashed[b] === 1) off.offload(this.hashOf[b]!);
        off.flush(this.offloadBlockSize, (e) => this.pushEvent(e));
      }
      for (const b of out) this.evict(b);
    }
    for (const b of out) this.refCnt[b] = 1;
    return out;
  }

  /**
   * Reads the index slots where hashes `[from..to)` go (`halves`: their 32-bit view, `halvesOf`), before they are cached: the index is
   * megabytes per engine and each access misses the CPU caches; in a loop of independent loads
   * the misses overlap instead of coming one after the other.
   */
  warm(halves: Int32Array, from: number, to: number): void {
    let sink = 0;
    for (let i = from; i < to; i++) sink ^= this.table[4 * this.home(halves[2 * i]!, halves[2 * i + 1]!) + 2]!;
    this.warmSink = sink;
  }

  /**
   * Drops one reference per block; `ordered` is in eviction priority (first evicted first), as
   * vLLM's `free_blocks` (the manager passes a request's blocks tail first).
   */
  freeBlocks(ordered: readonly number[]): void {
    const first: number[] = [];
    for (const b of ordered) {
      if (b === 0) continue;
      if (--this.refCnt[b]! === 0) {
        if (!this.enableCaching || this.hashed[b] === 0) first.push(b);
        else this.append(b);
      }
    }
    // prepend_n: first[0] ends up at the head.
    for (let i = first.length - 1; i >= 0; i--) this.prepend(first[i]!);
  }

  /** Caches `block` under `hash` (P4, P5); returns false when it already was. */
  cacheBlock(block: number, hash: bigint): boolean {
    this.scratch64[0] = hash;
    return this.cacheBlockAt(block, this.scratch32, 0);
  }

  /** `cacheBlock(block, hashes[i])`, `halves` a 32-bit view of `hashes` (`halvesOf`): no bigint is made. */
  cacheBlockAt(block: number, halves: Int32Array, i: number): boolean {
    if (this.hashed[block] === 1) return false;
    this.hashed[block] = 1;
    const lo = halves[2 * i]!;
    const hi = halves[2 * i + 1]!;
    this.hashHalves[2 * block] = lo;
    this.hashHalves[2 * block + 1] = hi;
    this.cachedCount++;
    const slot = this.findSlot(lo, hi);
    this.nextSame[block] = -1;
    if (slot < 0) {
      const at = 4 * ~slot;
      this.table[at] = lo;
      this.table[at + 1] = hi;
      this.table[at + 2] = block;
      return true;
    }
    // Another block holds it already (P4): this one goes last.
    let last = this.table[4 * slot + 2]!;
    if (this.nextSame[last] === -1) this.duplicateCount++;
    while (this.nextSame[last] !== -1) last = this.nextSame[last]!;
    this.nextSame[last] = block;
    this.duplicateStores++;
    return true;
  }

  pushEvent(event: KvEvent): void {
    if (!this.enableEvents) return;
    this.events.push(event);
    this.openRemoval = null;
  }

  takeEvents(): KvEvent[] {
    const ev = this.events;
    this.events = [];
    this.openRemoval = null;
    return ev;
  }

  /** vLLM's `reset_prefix_cache`: only when no block is in use; emits AllBlocksCleared. */
  resetPrefixCache(): boolean {
    if (this.numUsed !== 0) return false;
    this.table.fill(-1);
    this.nextSame.fill(-1);
    this.cachedCount = 0;
    this.hashed.fill(0);
    this.duplicateCount = 0;
    this.offload?.clear();
    this.pushEvent({ type: "AllBlocksCleared" });
    return true;
  }

  /** Distinct hashes in the prefix cache. */
  cachedHashes(): bigint[] {
    const out: bigint[] = [];
    for (let i = 2; i < this.table.length; i += 4) {
      const b = this.table[i]!;
      if (b >= 0) out.push(this.hashOf[b]!);
    }
    return out;
  }

  get numCachedBlocks(): number {
    return this.cachedCount;
  }

  get numDuplicateHashes(): number {
    return this.duplicateCount;
  }

  get numDuplicateStores(): number {
    return this.duplicateStores;
  }

  private evict(block: number): void {
    if (this.hashed[block] === 0) return;
    this.hashed[block] = 0;
    const slot = this.findSlot(this.hashHalves[2 * block]!, this.hashHalves[2 * block + 1]!);
    if (slot < 0) return;
    const first = this.table[4 * slot + 2]!;
    if (first === block) {
      const next = this.nextSame[block]!;
      if (next === -1) this.deleteSlot(slot);
      else {
        this.table[4 * slot + 2] = next;
        if (this.nextSame[next] === -1) this.duplicateCount--;
      }
    } else {
      let prev = first;
      while (this.nextSame[prev] !== -1 && this.nextSame[prev] !== block) prev = this.nextSame[prev]!;
      if (this.nextSame[prev] !== block) return;
      this.nextSame[prev] = this.nextSame[block]!;
      if (this.table[4 * slot + 2] === prev && this.nextSame[prev] === -1) this.duplicateCount--;
    }
    this.nextSame[block] = -1;
    this.cachedCount--;
    if (this.openRemoval !== null) this.openRemoval.blockHashes.push(this.hashOf[block]!);
    else {
      const removed: BlockRemovedEvent = { type: "BlockRemoved", blockHashes: [this.hashOf[block]!], medium: MEDIUM_GPU, groupIdx: 0 };
      this.pushEvent(removed);
      if (this.mergeRemovals && this.enableEvents) this.openRemoval = removed;
    }
  }

  /** The hash's home slot: its halves mixed, top bits (Fibonacci hashing). */
  private home(lo: number, hi: number): number {
    return (Math.imul(lo ^ Math.imul(hi, 0x85ebca6b), 0x9e3779b1) >>> this.slotShift) & this.slotMask;
  }

  /** The slot holding the hash, or ~(the empty slot where it would go). */
  private findSlot(lo: number, hi: number): number {
    const mask = this.slotMask;
    const t = this.table;
    for (let i = this.home(lo, hi); ; i = (i + 1) & mask) {
      const at = 4 * i;
      if (t[at + 2] === -1) return ~i;
      if (t[at] === lo && t[at + 1] === hi) return i;
    }
  }

  /** Empties a slot, shifting later entries of its probe run back (no tombstones). */
  private deleteSlot(slot: number): void {
    const mask = this.slotMask;
    const t = this.table;
    let i = slot;
    for (let j = (slot + 1) & mask; t[4 * j + 2] !== -1; j = (j + 1) & mask) {
      const k = this.home(t[4 * j]!, t[4 * j + 1]!);
      // The entry at j may move to i unless its home lies cyclically in (i, j].
      if (i <= j ? i < k && k <= j : i < k || k <= j) continue;
      t[4 * i] = t[4 * j]!;
      t[4 * i + 1] = t[4 * j + 1]!;
      t[4 * i + 2] = t[4 * j + 2]!;
      i = j;
    }
    t[4 * i + 2] = -1;
  }

  private unlink(b: number): void {
    const p = this.prev[b]!;
    const n = this.next[b]!;
    this.next[p] = n;
    this.prev[n] = p;
    this.free--;
  }

  private append(b: number): void {
    const last = this.prev[this.tailSentinel]!;
    this.next[last] = b;
    this.prev[b] = last;
    this.next[b] = this.tailSentinel;
    this.prev[this.tailSentinel] = b;
    this.free++;
  }

  private prepend(b: number): void {
    const first = this.next[this.headSentinel]!;
    this.next[this.headSentinel] = b;
    this.prev[b] = this.headSentinel;
    this.next[b] = first;
    this.prev[first] = b;
    this.free++;
  }
}

/** The 32-bit halves of u64 hashes, in the layout `lookupAt` and `cacheBlockAt` read (a view, no copy). */
export function halvesOf(hashes: BigUint64Array): Int32Array {
  return new Int32Array(hashes.buffer, hashes.byteOffset, 2 * hashes.length);
}
