/**
 * The in-process form of a KV event batch, for the virtual-time replay, where the engines and the
 * router share one process: three flat typed arrays the router's native core reads as they are
 * (`KvRouterCore.applyDirectBatchInto`; layout in `crates/kvroute-core/src/events/direct.rs`),
 * instead of msgpack bytes written here and decoded there. The router ends in the same state as
 * with the wire bytes (`__test__/replay-direct-events.test.ts` replays a trace both ways).
 *
 * Only the fields the replay's engines set are carried: a batch with LoRA, extra keys or another
 * medium is not written (`writeDirectBatch` returns null) and goes by the wire form.
 */
import type { BlockRemovedEvent, BlockStoredEvent, KvEvent } from "../events/codec.js";

const STORED = 0;
const REMOVED = 1;
const CLEARED = 2;

/** One batch; its arrays are views of buffers that `writeDirectBatch` may reuse once it is applied. */
export class DirectBatch {
  /**
   * The hashes are router keys (`writeKeyedBatch`: engines that key their caches with the router's
   * keyer): `ops` per event `[kind, n, medium]` or `[2]`, no parents, no tokens
   * (`kvroute_core::event_applier::decode_keyed`).
   */
  keyed = false;
  ops: Uint32Array;
  hashes: BigUint64Array;
  tokens: Uint32Array;
  private opsBuf: Uint32Array;
  private hashBuf: BigUint64Array;
  private tokenBuf: Uint32Array;

  constructor(
    public rank = 0,
    opsCap = 64,
    hashCap = 256,
    tokenCap = 4096,
  ) {
    this.opsBuf = new Uint32Array(opsCap);
    this.hashBuf = new BigUint64Array(hashCap);
    this.tokenBuf = new Uint32Array(tokenCap);
    this.ops = this.opsBuf.subarray(0, 0);
    this.hashes = this.hashBuf.subarray(0, 0);
    this.tokens = this.tokenBuf.subarray(0, 0);
  }

  /** Makes room for the sizes given (content is not kept). */
  reserve(ops: number, hashes: number, tokens: number): void {
    if (this.opsBuf.length < ops) this.opsBuf = new Uint32Array(Math.max(ops, 2 * this.opsBuf.length));
    if (this.hashBuf.length < hashes) this.hashBuf = new BigUint64Array(Math.max(hashes, 2 * this.hashBuf.length));
    if (this.tokenBuf.length < tokens) this.tokenBuf = new Uint32Array(Math.max(tokens, 2 * this.tokenBuf.length));
  }

  /** Fills the batch from `events` (sizes reserved); false, leaving it unusable, if one cannot be carried. */
  fill(events: readonly KvEvent[], nOps: number, nHashes: number, nTokens: number): boolean {
    const ops = this.opsBuf;
    const hashes = this.hashBuf;
    const tokens = this.tokenBuf;
    let o = 0;
    let h = 0;
    let t = 0;
    for (const e of events) {
      if (e.type === "AllBlocksCleared") {
        ops[o++] = CLEARED;
        continue;
      }
      const medium = mediumCode(e.medium);
      if (medium < 0) return false;
      const bh = e.blockHashes;
      if (e.type === "BlockRemoved") {
        ops[o++] = REMOVED;
        ops[o++] = bh.length;
        ops[o++] = medium;
      } else {
        const p = e.parentBlockHash;
        ops[o++] = STORED;
        ops[o++] = bh.length;
        ops[o++] = p == null ? 0 : 1;
        ops[o++] = e.tokenIds.length;
        ops[o++] = e.blockSize;
        ops[o++] = medium;
        if (p != null) {
          if (typeof p !== "bigint") return false;
          hashes[h++] = p;
        }
        tokens.set(e.tokenIds as Uint32Array, t);
        t += e.tokenIds.length;
      }
      for (let i = 0; i < bh.length; i++) {
        const x = bh[i];
        if (typeof x !== "bigint") return false;
        hashes[h++] = x;
      }
    }
    if (o !== nOps || h !== nHashes || t !== nTokens) return false;
    this.keyed = false;
    this.ops = ops.subarray(0, o);
    this.hashes = hashes.subarray(0, h);
    this.tokens = tokens.subarray(0, t);
    return true;
  }

  /** `fill` for the keyed form (sizes reserved). */
  fillKeyed(events: readonly KvEvent[], nOps: number, nHashes: number): boolean {
    const ops = this.opsBuf;
    const hashes = this.hashBuf;
    let o = 0;
    let h = 0;
    for (const e of events) {
      if (e.type === "AllBlocksCleared") {
        ops[o++] = CLEARED;
        continue;
      }
      const medium = mediumCode(e.medium);
      if (medium < 0) return false;
      ops[o++] = e.type === "BlockRemoved" ? REMOVED : STORED;
      const bh = e.blockHashes;
      ops[o++] = bh.length;
      ops[o++] = medium;
      for (let i = 0; i < bh.length; i++) {
        const x = bh[i];
        if (typeof x !== "bigint") return false;
        hashes[h++] = x;
      }
    }
    if (o !== nOps || h !== nHashes) return false;
    this.keyed = true;
    this.ops = ops.subarray(0, o);
    this.hashes = hashes.subarray(0, h);
    this.tokens = this.tokenBuf.subarray(0, 0);
    return true;
  }
}

function mediumCode(m: string | null | undefined): number {
  if (m == null) return 0;
  if (m === "GPU") return 1;
  if (m === "CPU") return 2;
  return -1;
}

/**
 * Whether a stored event carries only what the direct form holds (fields read by name, not
 * enumerated: the engine's events share one shape, and a loop over keys would be megamorphic).
 */
function plainStored(e: BlockStoredEvent): boolean {
  if (e.loraId != null || e.loraName != null || !(e.tokenIds instanceof Uint32Array)) return false;
  if (e.locality != null || e.ownership != null || e.sessionId != null || e.lookaheadTokenIds != null) return false;
  if (e.kvCacheSpecKind != null || e.kvCacheSpecSlidingWindow != null) return false;
  const ek = e.extraKeys;
  if (ek != null) for (let i = 0; i < ek.length; i++) if (ek[i] !== null) return false;
  return true;
}

function plainRemoved(e: BlockRemovedEvent): boolean {
  return e.locality == null && e.ownership == null;
}

/**
 * `events` (one engine step's, DP rank `rank`) as a direct batch, written into `into` when given;
 * null when an event needs the wire form. `groupIdx` is dropped: the router does not read it.
 */
export function writeDirectBatch(rank: number, events: readonly KvEvent[], into?: DirectBatch): DirectBatch | null {
  let nOps = 0;
  let nHashes = 0;
  let nTokens = 0;
  for (const e of events) {
    if (e.type === "AllBlocksCleared") nOps += 1;
    else if (e.type === "BlockRemoved") {
      if (!plainRemoved(e)) return null;
      nOps += 3;
      nHashes += e.blockHashes.length;
    } else {
      if (!plainStored(e)) return null;
      nOps += 6;
      nHashes += e.blockHashes.length + (e.parentBlockHash == null ? 0 : 1);
      nTokens += e.tokenIds.length;
    }
  }
  const b = into ?? new DirectBatch(rank, nOps, nHashes, nTokens);
  b.rank = rank;
  b.reserve(nOps, nHashes, nTokens);
  return b.fill(events, nOps, nHashes, nTokens) ? b : null;
}

/**
 * `events` of an engine whose block hashes are the router's keys (`EngineCore.keyByRouter`) as a
 * keyed batch: the router indexes the keys as they are, no tokens cross, nothing is hashed again.
 * Null when an event needs more than keys (LoRA, extra keys, another medium).
 */
export function writeKeyedBatch(rank: number, events: readonly KvEvent[], into?: DirectBatch): DirectBatch | null {
  let nOps = 0;
  let nHashes = 0;
  for (const e of events) {
    if (e.type === "AllBlocksCleared") nOps += 1;
    else {
      if (e.type === "BlockRemoved" ? !plainRemoved(e) : !plainStored(e)) return null;
      nOps += 3;
      nHashes += e.blockHashes.length;
    }
  }
  const b = into ?? new DirectBatch(rank, nOps, nHashes, 0);
  b.rank = rank;
  b.reserve(nOps, nHashes, 0);
  return b.fillKeyed(events, nOps, nHashes) ? b : null;
}
