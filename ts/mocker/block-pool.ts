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
 * - P4: `cached` maps a hash to every block holding it, oldest first. As in vLLM, blocks are NOT
 *   de-duplicated: a block that becomes full with a hash some other block already holds is cached
 *   too (and `BlockStored` is emitted again); evicting either copy emits `BlockRemoved` for it.
 * - P5: a block holds at most one hash (`hashOf`), set when it is cached and cleared on eviction.
 */
import type { KvEvent } from "../events/codec.js";

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
  /** hash -> its block, or (duplicates, P4) the set of its blocks in insertion order. */
  private readonly cached = new Map<bigint, number | Set<number>>();
  /** Hashes held by more than one block (P4), for the debug view. */
  private duplicateCount = 0;
  /** Cumulative: blocks cached under a hash another block already held. */
  private duplicateStores = 0;
  /** Events since the last `takeEvents`, in the order they happened. */
  private events: KvEvent[] = [];

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
    this.hashed = new Uint8Array(numBlocks);
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
    const blocks = this.cached.get(hash);
    if (blocks === undefined) return -1;
    return typeof blocks === "number" ? blocks : (blocks.values().next().value as number);
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
    const out: number[] = new Array(n);
    for (let i = 0; i < n; i++) {
      const b = this.next[this.headSentinel]!;
      this.unlink(b);
      if (this.enableCaching) this.evict(b);
      this.refCnt[b] = 1;
      out[i] = b;
    }
    return out;
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
    if (this.hashed[block] === 1) return false;
    this.hashed[block] = 1;
    this.hashOf[block] = hash;
    const holders = this.cached.get(hash);
    if (holders === undefined) this.cached.set(hash, block);
    else {
      if (typeof holders === "number") {
        this.duplicateCount++;
        this.cached.set(hash, new Set([holders, block]));
      } else holders.add(block);
      this.duplicateStores++;
    }
    return true;
  }

  pushEvent(event: KvEvent): void {
    if (this.enableEvents) this.events.push(event);
  }

  takeEvents(): KvEvent[] {
    const ev = this.events;
    this.events = [];
    return ev;
  }

  /** vLLM's `reset_prefix_cache`: only when no block is in use; emits AllBlocksCleared. */
  resetPrefixCache(): boolean {
    if (this.numUsed !== 0) return false;
    this.cached.clear();
    this.hashed.fill(0);
    this.duplicateCount = 0;
    this.pushEvent({ type: "AllBlocksCleared" });
    return true;
  }

  /** Distinct hashes in the prefix cache. */
  cachedHashes(): bigint[] {
    return [...this.cached.keys()];
  }

  get numCachedBlocks(): number {
    let n = 0;
    for (const v of this.cached.values()) n += typeof v === "number" ? 1 : v.size;
    return n;
  }

  get numDuplicateHashes(): number {
    return this.duplicateCount;
  }

  get numDuplicateStores(): number {
    return this.duplicateStores;
  }

  private evict(block: number): void {
    if (this.hashed[block] === 0) return;
    const hash = this.hashOf[block]!;
    this.hashed[block] = 0;
    const holders = this.cached.get(hash);
    if (holders === undefined) return;
    if (typeof holders === "number") {
      if (holders !== block) return;
      this.cached.delete(hash);
    } else {
      if (!holders.delete(block)) return;
      if (holders.size === 1) {
        this.duplicateCount--;
        this.cached.set(hash, holders.values().next().value as number);
      }
    }
    this.pushEvent({ type: "BlockRemoved", blockHashes: [hash], medium: MEDIUM_GPU, groupIdx: 0 });
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
