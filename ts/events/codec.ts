/**
 * vLLM KVEventBatch payloads (the msgpack third frame of each ZMQ message) to and from plain
 * objects, in the exact bytes of any vLLM release from 0.9.0 (docs/vllm-kv-events.md). The codec
 * runs in Rust (kvroute-core's `events` module); this file only types it.
 *
 * Field names are vLLM's in camelCase. Block hashes are bigints (64-bit int form; negative ones
 * are vLLM 0.9's signed ints), safe-integer numbers, or Buffers (the bytes form,
 * `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`). Decoded batches always use bigints and Buffers, give
 * absent fields as `null`, and can be passed back to `encodeKvEventBatch` unchanged.
 */
import { callNative } from "../errors.js";
import { native } from "../native.js";

/** A block hash as on the wire. */
export type WireBlockHash = bigint | number | Uint8Array;

/** One item of a block's extra keys (LoRA name, `[mmIdentifier, offset]`, cache salt, digest...). */
export type ExtraKeyItem = string | number | bigint | boolean | null | Uint8Array | ExtraKeyItem[];

export interface BlockStoredEvent {
  type: "BlockStored";
  blockHashes: WireBlockHash[];
  /** The hash of the block before the first stored one; null/absent for a request's first block. */
  parentBlockHash?: WireBlockHash | null;
  /** All tokens of the stored blocks (`blockSize` per block); empty for offload placeholders. */
  tokenIds: number[] | Uint32Array;
  blockSize: number;
  loraId?: number | bigint | null;
  /** vLLM 0.10.2+: "GPU", "CPU", ... */
  medium?: string | null;
  /** vLLM 0.14+. */
  loraName?: string | null;
  /** vLLM 0.17+: per block, null or its extra keys. */
  extraKeys?: (ExtraKeyItem[] | null)[] | null;
  /** vLLM 0.20+. */
  groupIdx?: number | bigint | null;
  /** vLLM 0.22+. */
  kvCacheSpecKind?: string | null;
  kvCacheSpecSlidingWindow?: number | bigint | null;
  /** vLLM 0.26+: "LOCAL" | "REMOTE". */
  locality?: string | null;
  /** vLLM 0.29+. */
  ownership?: string | null;
  /** vLLM 0.30+. */
  sessionId?: string | null;
  /** vLLM 0.33+: per block, the tokens past it that went into its hash. */
  lookaheadTokenIds?: (number[] | Uint32Array)[] | null;
}

export interface BlockRemovedEvent {
  type: "BlockRemoved";
  blockHashes: WireBlockHash[];
  medium?: string | null;
  groupIdx?: number | bigint | null;
  locality?: string | null;
  ownership?: string | null;
}

export interface AllBlocksClearedEvent {
  type: "AllBlocksCleared";
}

export type KvEvent = BlockStoredEvent | BlockRemovedEvent | AllBlocksClearedEvent;

export interface KvEventBatch {
  /** `time.time()` of the engine step. */
  ts: number;
  /** vLLM 0.9.1+ (its publisher always sets it); dropped by the 0.9.0 form. */
  dataParallelRank?: number | null;
  events: KvEvent[];
}

/** A block hash as decoded: the int form as a bigint, the bytes form as a Buffer. */
export type DecodedBlockHash = bigint | Buffer;

export interface DecodedBlockStored {
  type: "BlockStored";
  blockHashes: DecodedBlockHash[];
  parentBlockHash: DecodedBlockHash | null;
  tokenIds: number[];
  blockSize: number;
  loraId: number | null;
  medium: string | null;
  loraName: string | null;
  extraKeys: (ExtraKeyItem[] | null)[] | null;
  groupIdx: number | null;
  kvCacheSpecKind: string | null;
  kvCacheSpecSlidingWindow: number | null;
  locality: string | null;
  ownership: string | null;
  sessionId: string | null;
  lookaheadTokenIds: number[][] | null;
}

export interface DecodedBlockRemoved {
  type: "BlockRemoved";
  blockHashes: DecodedBlockHash[];
  medium: string | null;
  groupIdx: number | null;
  locality: string | null;
  ownership: string | null;
}

export type DecodedKvEvent = DecodedBlockStored | DecodedBlockRemoved | AllBlocksClearedEvent;

/** An event the decoder left out of an otherwise good batch (unknown type, wrong field types). */
export interface SkippedKvEvent {
  index: number;
  reason: string;
  tag: string | null;
}

export interface DecodedKvEventBatch {
  ts: number;
  dataParallelRank: number | null;
  events: DecodedKvEvent[];
  skipped: SkippedKvEvent[];
}

/**
 * A wire form: a vLLM version (`"0.22.0"`: the form that release publishes), `"current"` (the
 * newest known, the default) or `"legacy"` (vLLM 0.9.0).
 */
export type KvEventFormat = "current" | "legacy" | (string & {});

/**
 * Encodes a batch exactly as vLLM's publisher of the given release does (array-form events up to
 * 0.23, map-form with defaults omitted from 0.24). Fields the release does not have are dropped.
 * Throws `InvalidInputError` for a malformed batch, `InvalidConfigError` for an unknown format.
 */
export function encodeKvEventBatch(batch: KvEventBatch, format?: KvEventFormat): Buffer {
  return callNative(() => native.encodeKvEventBatch(batch, format));
}

/**
 * Decodes one payload of any released form. Throws `InvalidInputError` when the payload is not a
 * KVEventBatch at all; single unreadable events are listed in `skipped` instead.
 */
export function decodeKvEventBatch(payload: Uint8Array): DecodedKvEventBatch {
  return callNative(() => native.decodeKvEventBatch(payload) as DecodedKvEventBatch);
}
