/**
 * Block keys for token sequences: the router's own chained XXH3-64 keys (`algorithm: "router"`,
 * the default, used with `keying: "tokens"`), or vLLM's exact prefix-cache hashes (`sha256`,
 * `sha256_cbor`, `xxhash`, `xxhash_cbor`) whose 64-bit external form is what vLLM's KV events carry.
 * All the work happens in Rust, one native call per sequence.
 */
import { callNative, InvalidInputError } from "../errors.js";
import { native } from "../native.js";

export type EngineHashAlgorithm = "sha256" | "sha256_cbor" | "xxhash" | "xxhash_cbor";
export type HashAlgorithm = "router" | EngineHashAlgorithm;
export const ENGINE_HASH_ALGORITHMS: readonly EngineHashAlgorithm[] = [
  "sha256",
  "sha256_cbor",
  "xxhash",
  "xxhash_cbor",
];

export interface BlockHasherOptions {
  /** Tokens per KV block; must equal the engine's `--block-size`. */
  blockSize: number;
  /** Default `"router"`. The others reproduce vLLM's `--prefix-caching-hash-algo`. */
  algorithm?: HashAlgorithm;
  /**
   * The engine's PYTHONHASHSEED, as a string. Only used by vLLM-exact algorithms; `undefined`
   * means "unset" (see docs/hashing.md for what vLLM does then and what kvroute does).
   */
  seed?: string;
}

/** A multimodal placeholder: the content hash and the token range it occupies. */
export interface MmFeature {
  hash: string;
  offset: number;
  length: number;
}

/** Per-request extra keys that vLLM mixes into block hashes. */
export interface ExtraKeys {
  loraName?: string;
  /** vLLM >= 0.33 hashes the adapter's path next to its name (engine keying only). */
  loraPath?: string;
  /** Applies to the first block only, as in vLLM. */
  cacheSalt?: string;
  mm?: MmFeature[];
  /** Prompt embeddings: per full block its 32-byte digest, concatenated (`loadPromptEmbeds`). */
  promptEmbeds?: Buffer;
}

export type TokenIds = Uint32Array | readonly number[];

/** Validates token ids and returns them as a Uint32Array (zero-copy when already one). */
export function toTokenArray(tokens: TokenIds, what = "tokens"): Uint32Array {
  if (tokens instanceof Uint32Array) return tokens;
  if (!Array.isArray(tokens)) throw new InvalidInputError(`${what} must be an array of token ids`);
  const out = new Uint32Array(tokens.length);
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    if (typeof t !== "number" || !Number.isInteger(t) || t < 0 || t > 0xffff_ffff) {
      throw new InvalidInputError(`${what}[${i}] must be an integer in [0, 2^32): got ${JSON.stringify(t)}`);
    }
    out[i] = t;
  }
  return out;
}

export class BlockHasher {
  readonly blockSize: number;
  readonly algorithm: HashAlgorithm;
  readonly seed: string | undefined;
  private readonly inner: InstanceType<typeof native.BlockHasher>;

  constructor(options: BlockHasherOptions) {
    this.blockSize = options.blockSize;
    this.algorithm = options.algorithm ?? "router";
    this.seed = options.seed;
    this.inner = callNative(
      () => new native.BlockHasher({ blockSize: options.blockSize, algorithm: this.algorithm, seed: options.seed }),
    );
  }

  /** Bytes per digest: 8 for router keys, 32 for sha256 variants, 16 for xxhash variants. */
  get digestLength(): number {
    return this.inner.digestLength;
  }

  /** 64-bit keys of the full blocks of `tokens` (a trailing partial block has none). */
  hash(tokens: TokenIds, extra?: ExtraKeys): BigUint64Array {
    const ids = toTokenArray(tokens);
    return callNative(() => this.inner.hash(ids, extra));
  }

  /**
   * `hash(tokens)` for router keys without extra keys, when `known` holds the keys of the first
   * `known.length` full blocks of `tokens` already: only the blocks after them are hashed.
   */
  extend(known: BigUint64Array, tokens: Uint32Array): BigUint64Array {
    return callNative(() => this.inner.extend(known, tokens));
  }

  /** Full digests of the full blocks, one Buffer (a view, no copy) per block. */
  digests(tokens: TokenIds, extra?: ExtraKeys): Buffer[] {
    const ids = toTokenArray(tokens);
    const all = callNative(() => this.inner.digests(ids, extra));
    const n = this.digestLength;
    const out: Buffer[] = [];
    for (let off = 0; off < all.length; off += n) out.push(all.subarray(off, off + n));
    return out;
  }
}
