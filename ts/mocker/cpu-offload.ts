/**
 * The CPU offload tier behind a rank's GPU block pool, as vLLM's OffloadingConnector with its CPU
 * backend and LRU policy behaves for routing (vllm/v1/kv_offload/cpu, lru policy):
 *
 * - Blocks evicted from the GPU pool are kept here, up to `capacity` blocks; a block already here
 *   is refreshed (most recently used). When full, the least recently used block leaves.
 * - A request's prefix continues past its GPU hits through blocks held here: those are loaded
 *   host-to-device (PCIe) instead of being prefilled, and cached on the GPU again (the copy here
 *   stays, refreshed).
 * - Events carry `medium: "CPU"`: a `BlockStored` (token-less, as the connector's placeholder
 *   events: the router resolves the hashes it saw on the GPU) for blocks offloaded, a
 *   `BlockRemoved` for blocks leaving. Within one GPU eviction round the CPU events come before the
 *   GPU removals, so a router still knows each hash when its CPU store arrives.
 */
import type { KvEvent } from "../events/codec.js";

export const MEDIUM_CPU = "CPU";

export class CpuOffloadTier {
  /**
   * The LRU: slots in a doubly linked list, least recently used at the head (typed arrays, O(1)
   * per operation; a `Map`'s insertion order is not used: V8 skips its deleted entries from the
   * start on every `keys().next()`, which makes eviction quadratic).
   */
  private readonly slotOf = new Map<bigint, number>();
  private readonly hashAt: BigUint64Array;
  private readonly prev: Int32Array;
  private readonly next: Int32Array;
  /** Sentinel index (= capacity). */
  private readonly head: number;
  private used = 0;
  /** The round in progress (between `offload` calls and `flush`). */
  private readonly stored: bigint[] = [];
  private readonly storedSet = new Set<bigint>();
  private readonly removed: bigint[] = [];
  /** Cumulative counters (debug view, tests). */
  offloads = 0;
  evictions = 0;
  hits = 0;

  constructor(readonly capacity: number) {
    const n = Math.max(0, capacity);
    this.hashAt = new BigUint64Array(n);
    this.prev = new Int32Array(n + 1);
    this.next = new Int32Array(n + 1);
    this.head = n;
    this.prev[n] = n;
    this.next[n] = n;
  }

  get size(): number {
    return this.slotOf.size;
  }

  has(hash: bigint): boolean {
    return this.slotOf.has(hash);
  }

  /** Refreshes a block a request loads from here. */
  touch(hash: bigint): void {
    const s = this.slotOf.get(hash);
    if (s !== undefined) this.toTail(s);
    this.hits++;
  }

  /** Keeps a block the GPU evicts (part of the current round). */
  offload(hash: bigint): void {
    if (this.capacity <= 0) return;
    const s = this.slotOf.get(hash);
    if (s !== undefined) {
      this.toTail(s);
      return;
    }
    let slot: number;
    if (this.used < this.capacity) slot = this.used++;
    else {
      slot = this.next[this.head]!;
      const victim = this.hashAt[slot]!;
      this.unlink(slot);
      this.slotOf.delete(victim);
      this.evictions++;
      // Stored and evicted within the round: the router never needs to hear of it.
      if (this.storedSet.delete(victim)) {
        const i = this.stored.lastIndexOf(victim);
        if (i >= 0) this.stored.splice(i, 1);
      } else this.removed.push(victim);
    }
    this.hashAt[slot] = hash;
    this.slotOf.set(hash, slot);
    this.linkTail(slot);
    this.stored.push(hash);
    this.storedSet.add(hash);
    this.offloads++;
  }

  private unlink(s: number): void {
    const p = this.prev[s]!;
    const n = this.next[s]!;
    this.next[p] = n;
    this.prev[n] = p;
  }

  private linkTail(s: number): void {
    const last = this.prev[this.head]!;
    this.next[last] = s;
    this.prev[s] = last;
    this.next[s] = this.head;
    this.prev[this.head] = s;
  }

  private toTail(s: number): void {
    this.unlink(s);
    this.linkTail(s);
  }

  /** The round's events (removals first), to be published before the GPU removals. */
  flush(blockSize: number, out: (e: KvEvent) => void): void {
    if (this.removed.length > 0) {
      out({ type: "BlockRemoved", blockHashes: this.removed.splice(0), medium: MEDIUM_CPU, groupIdx: 0 });
    }
    if (this.stored.length > 0) {
      out({
        type: "BlockStored",
        blockHashes: this.stored.splice(0),
        parentBlockHash: null,
        tokenIds: [],
        blockSize,
        loraId: null,
        medium: MEDIUM_CPU,
        loraName: null,
        groupIdx: 0,
      });
    }
    this.storedSet.clear();
  }

  /** vLLM's reset_prefix_cache: the offloaded blocks go too (the router clears the worker). */
  clear(): void {
    this.slotOf.clear();
    this.used = 0;
    this.prev[this.head] = this.head;
    this.next[this.head] = this.head;
    this.stored.length = 0;
    this.storedSet.clear();
    this.removed.length = 0;
  }
}

/**
 * How many of `hashes[from..max)` the tier holds in a row from `from` (0 without a tier); they are
 * refreshed, as the connector's lookup does.
 */
export function cpuHitRun(tier: CpuOffloadTier | null, hashes: BigUint64Array, from: number, max: number): number {
  if (tier === null || tier.size === 0) return 0;
  let n = 0;
  for (let i = from; i < max && i < hashes.length && tier.has(hashes[i]!); i++) n++;
  for (let i = from; i < from + n; i++) tier.touch(hashes[i]!);
  return n;
}
