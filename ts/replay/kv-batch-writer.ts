/**
 * A fast path for the virtual-time replay: msgpack bytes of the KV event batches the mocker's
 * engine core produces, written in JS straight into a Buffer, byte for byte what
 * `encodeKvEventBatch(batch, "current")` (vLLM 0.33's publisher) writes for them
 * (`__test__/replay-virtual.test.ts` checks it on real engine batches). The native encoder reads a
 * JS object graph through N-API, property by property and element by element; for a replay that
 * encodes hundreds of thousands of batches, writing the few shapes the engine emits directly is
 * several times cheaper. Anything else (other fields, other forms) goes to the native encoder.
 *
 * Layout (docs/vllm-kv-events.md, map form with 0.33's map16 header for BlockStored):
 * `[ts: float64, [events...], dp_rank]`; events are maps with the tag first, fields in declaration
 * order, defaulted fields only when set.
 */
import { encodeKvEventBatch, type KvEvent } from "../events/codec.js";

const STORED_KNOWN = new Set(["type", "blockHashes", "parentBlockHash", "tokenIds", "blockSize", "loraId", "medium", "loraName", "extraKeys", "groupIdx"]);
const REMOVED_KNOWN = new Set(["type", "blockHashes", "medium", "groupIdx"]);

class Writer {
  buf: Buffer;
  at = 0;
  /** Writes into `into` when it holds `size` bytes. */
  constructor(size: number, into?: Buffer) {
    this.buf = into !== undefined && into.length >= size ? into : Buffer.allocUnsafe(size);
  }
  ensure(n: number): void {
    if (this.at + n <= this.buf.length) return;
    const grown = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.at + n));
    this.buf.copy(grown, 0, 0, this.at);
    this.buf = grown;
  }
  byte(b: number): void {
    this.ensure(1);
    this.buf[this.at++] = b;
  }
  /** A non-negative integer below 2^32, smallest form. */
  uint(v: number): void {
    this.ensure(5);
    const b = this.buf;
    let at = this.at;
    if (v < 0x80) b[at++] = v;
    else if (v < 0x100) {
      b[at++] = 0xcc;
      b[at++] = v;
    } else if (v < 0x10000) {
      b[at++] = 0xcd;
      b[at++] = v >>> 8;
      b[at++] = v & 0xff;
    } else {
      b[at++] = 0xce;
      b[at++] = v >>> 24;
      b[at++] = (v >>> 16) & 0xff;
      b[at++] = (v >>> 8) & 0xff;
      b[at++] = v & 0xff;
    }
    this.at = at;
  }
  /**
   * Each of `v` as `uint` writes it, in one loop: token ids are most of a batch's bytes, and a
   * word id is a uint16 or a uint32 at random, so that choice is made without a branch.
   */
  uints(v: Uint32Array): void {
    this.ensure(5 * v.length);
    const b = this.buf;
    let at = this.at;
    for (let i = 0; i < v.length; i++) {
      const x = v[i]!;
      if (x < 0x100) {
        if (x >= 0x80) b[at++] = 0xcc;
        b[at++] = x;
        continue;
      }
      // wide: 1 for a uint32 (x >= 2^16), 0 for a uint16. Four value bytes are written either
      // way (`ensure` left room); a uint16's last two are overwritten by what follows.
      const wide = ((x >>> 16) + 0xffff) >>> 16;
      const shift = wide << 4;
      b[at] = 0xcd + wide;
      b[at + 1] = x >>> (8 + shift);
      b[at + 2] = x >>> shift;
      b[at + 3] = x >>> 8;
      b[at + 4] = x;
      at += 3 + 2 * wide;
    }
    this.at = at;
  }
  /** A u64 (bigint), smallest form; its halves come through a typed-array view, no bigint math. */
  u64(v: bigint): void {
    U64[0] = v;
    const hi = U32[HI]!;
    const lo = U32[LO]!;
    if (hi === 0) return this.uint(lo);
    this.ensure(9);
    const b = this.buf;
    let at = this.at;
    b[at++] = 0xcf;
    b[at++] = hi >>> 24;
    b[at++] = (hi >>> 16) & 0xff;
    b[at++] = (hi >>> 8) & 0xff;
    b[at++] = hi & 0xff;
    b[at++] = lo >>> 24;
    b[at++] = (lo >>> 16) & 0xff;
    b[at++] = (lo >>> 8) & 0xff;
    b[at++] = lo & 0xff;
    this.at = at;
  }
  arrayHeader(n: number): void {
    this.ensure(5);
    const b = this.buf;
    if (n < 16) b[this.at++] = 0x90 | n;
    else if (n < 0x10000) {
      b[this.at++] = 0xdc;
      b.writeUInt16BE(n, this.at);
      this.at += 2;
    } else {
      b[this.at++] = 0xdd;
      b.writeUInt32BE(n, this.at);
      this.at += 4;
    }
  }
  str(s: string): void {
    const len = Buffer.byteLength(s);
    this.ensure(len + 5);
    const b = this.buf;
    if (len < 32) b[this.at++] = 0xa0 | len;
    else if (len < 0x100) {
      b[this.at++] = 0xd9;
      b[this.at++] = len;
    } else if (len < 0x10000) {
      b[this.at++] = 0xda;
      b.writeUInt16BE(len, this.at);
      this.at += 2;
    } else {
      b[this.at++] = 0xdb;
      b.writeUInt32BE(len, this.at);
      this.at += 4;
    }
    this.at += b.write(s, this.at, "utf8");
  }
  nil(): void {
    this.byte(0xc0);
  }
  raw(bytes: Uint8Array): void {
    this.ensure(bytes.length);
    this.buf.set(bytes, this.at);
    this.at += bytes.length;
  }
}

/** Constant strings (keys, tags) as msgpack fixstr bytes. */
const K = Object.fromEntries(
  ["type", "BlockStored", "BlockRemoved", "AllBlocksCleared", "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name", "extra_keys", "group_idx", "GPU"].map((k) => {
    const w = new Writer(64);
    w.str(k);
    return [k, Uint8Array.from(w.buf.subarray(0, w.at))];
  }),
) as Record<string, Uint8Array>;

/** A u64 bigint's halves, through one scratch 8-byte buffer (host byte order). */
const U64 = new BigUint64Array(1);
const U32 = new Uint32Array(U64.buffer);
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const LO = LITTLE_ENDIAN ? 0 : 1;
const HI = LITTLE_ENDIAN ? 1 : 0;

const U64_END = 1n << 64n;
const isU64 = (v: unknown): v is bigint => typeof v === "bigint" && v >= 0n && v < U64_END;
/** `hashes.every(isU64)`, in a plain loop (half the cost: a batch can list thousands of hashes). */
function allU64(hashes: readonly unknown[]): boolean {
  for (let i = 0; i < hashes.length; i++) if (!isU64(hashes[i])) return false;
  return true;
}
const isU32 = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v >= 0 && v < 2 ** 32;

/** Whether `writeKvEventBatch` writes this event itself (else the native encoder does the batch). */
function writable(e: KvEvent): boolean {
  if (e.type === "AllBlocksCleared") return true;
  const known = e.type === "BlockStored" ? STORED_KNOWN : REMOVED_KNOWN;
  for (const k in e) if (!known.has(k) && (e as unknown as Record<string, unknown>)[k] != null) return false;
  if (!Array.isArray(e.blockHashes) || !allU64(e.blockHashes)) return false;
  if (e.medium != null && typeof e.medium !== "string") return false;
  if (e.groupIdx != null && !isU32(e.groupIdx)) return false;
  if (e.type === "BlockRemoved") return true;
  if (e.parentBlockHash != null && !isU64(e.parentBlockHash)) return false;
  if (!(e.tokenIds instanceof Uint32Array)) return false;
  if (!isU32(e.blockSize)) return false;
  if (e.loraId != null && !isU32(e.loraId)) return false;
  if (e.loraName != null && typeof e.loraName !== "string") return false;
  if (e.extraKeys != null) {
    for (const k of e.extraKeys) if (k !== null && !(Array.isArray(k) && k.every((x) => typeof x === "string"))) return false;
  }
  return true;
}

/**
 * `encodeKvEventBatch({ ts, dataParallelRank, events }, "current")`, faster for the engine's events.
 * With `into`, the bytes go there if they fit (the result is a view of it), else to a new buffer.
 */
export function writeKvEventBatch(ts: number, dataParallelRank: number, events: KvEvent[], into?: Buffer): Buffer {
  for (const e of events) if (!writable(e)) return encodeKvEventBatch({ ts, dataParallelRank, events }, "current");
  let size = 32;
  for (const e of events) {
    if (e.type === "AllBlocksCleared") size += 32;
    else size += 64 + 9 * e.blockHashes.length + (e.type === "BlockStored" ? 5 * e.tokenIds.length + 2 * (e.extraKeys?.length ?? 0) + 64 : 0);
  }
  const w = new Writer(size, into);
  w.byte(0x93);
  w.ensure(9);
  w.buf[w.at++] = 0xcb;
  w.buf.writeDoubleBE(ts, w.at);
  w.at += 8;
  w.arrayHeader(events.length);
  for (const e of events) {
    if (e.type === "AllBlocksCleared") {
      w.byte(0x81);
      w.raw(K["type"]!);
      w.raw(K["AllBlocksCleared"]!);
      continue;
    }
    if (e.type === "BlockRemoved") {
      const entries = 3 + (e.groupIdx != null ? 1 : 0);
      w.byte(0x80 | entries);
      w.raw(K["type"]!);
      w.raw(K["BlockRemoved"]!);
      w.raw(K["block_hashes"]!);
      w.arrayHeader(e.blockHashes.length);
      for (const h of e.blockHashes) w.u64(h as bigint);
      w.raw(K["medium"]!);
      if (e.medium != null) w.str(e.medium);
      else w.nil();
      if (e.groupIdx != null) {
        w.raw(K["group_idx"]!);
        w.uint(e.groupIdx as number);
      }
      continue;
    }
    // BlockStored: 0.33's struct can write 16 entries, so msgspec gives it a map16 header.
    const entries = 8 + (e.extraKeys != null ? 1 : 0) + (e.groupIdx != null ? 1 : 0);
    w.ensure(3);
    w.buf[w.at++] = 0xde;
    w.buf.writeUInt16BE(entries, w.at);
    w.at += 2;
    w.raw(K["type"]!);
    w.raw(K["BlockStored"]!);
    w.raw(K["block_hashes"]!);
    w.arrayHeader(e.blockHashes.length);
    for (const h of e.blockHashes) w.u64(h as bigint);
    w.raw(K["parent_block_hash"]!);
    if (e.parentBlockHash != null) w.u64(e.parentBlockHash as bigint);
    else w.nil();
    w.raw(K["token_ids"]!);
    const tokens = e.tokenIds as Uint32Array;
    w.arrayHeader(tokens.length);
    w.uints(tokens);
    w.raw(K["block_size"]!);
    w.uint(e.blockSize);
    w.raw(K["lora_id"]!);
    if (e.loraId != null) w.uint(e.loraId as number);
    else w.nil();
    w.raw(K["medium"]!);
    if (e.medium != null) w.str(e.medium);
    else w.nil();
    w.raw(K["lora_name"]!);
    if (e.loraName != null) w.str(e.loraName);
    else w.nil();
    if (e.extraKeys != null) {
      w.raw(K["extra_keys"]!);
      w.arrayHeader(e.extraKeys.length);
      for (const k of e.extraKeys) {
        if (k === null) w.nil();
        else {
          w.arrayHeader(k.length);
          for (const x of k) w.str(x as string);
        }
      }
    }
    if (e.groupIdx != null) {
      w.raw(K["group_idx"]!);
      w.uint(e.groupIdx as number);
    }
  }
  w.uint(dataParallelRank);
  return w.buf.subarray(0, w.at);
}
