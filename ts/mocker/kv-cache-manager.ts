/**
 * vLLM's KV cache manager (vllm/v1/core/kv_cache_manager.py) for one engine core, over its
 * `BlockPool`: the prefix-cache lookup, allocate_slots, cache_full_blocks (and the BlockStored
 * event it publishes), freeing a request's blocks, and the block hashes a request's tokens key
 * them by. The scheduler in ./engine-core.ts decides who gets blocks; this decides which blocks.
 */
import { BlockHasher } from "../core/block-hasher.js";
import type { BlockStoredEvent } from "../events/codec.js";
import { halvesOf, MEDIUM_GPU, type BlockPool } from "./block-pool.js";
import type { ResolvedMockEngineConfig } from "./config.js";
import { HASH_AHEAD, modelToken, type CoreRequest } from "./core-request.js";
import type { ModelTokenizer } from "./model-tokenizer.js";
import { embedsDigest } from "./prompt-embeds.js";

export class KvCacheManager {
  /** null: prefix caching is off (no hashes, no lookups, no cached blocks). */
  private hasher: BlockHasher | null;
  /** `keyByRouter` was called: router keys chain on from known ones (`BlockHasher.extend`). */
  private routerKeyed = false;

  constructor(
    readonly pool: BlockPool,
    private readonly config: ResolvedMockEngineConfig,
    /** What the simulated model emits: the hashes run ahead over its next tokens. */
    private readonly vocab: ModelTokenizer,
  ) {
    this.hasher = config.enablePrefixCaching
      ? new BlockHasher({ blockSize: config.blockSize, algorithm: config.hashAlgorithm, seed: config.hashSeed })
      : null;
  }

  /** Prefix caching is on: requests are hashed, looked up and cached. */
  get caching(): boolean {
    return this.hasher !== null;
  }

  /** Hashes with the router's own block keys from now on (`EngineCore.keyByRouter`). */
  keyByRouter(): void {
    if (this.hasher) this.hasher = new BlockHasher({ blockSize: this.config.blockSize, algorithm: "router" });
    this.routerKeyed = this.hasher !== null;
  }

  /**
   * A new request's hashes: `promptKeys` (the caller's router keys of its full prompt blocks) when
   * they fit, then the prompt and the first output tokens in one go (see ensureHashes): the
   * request's first output blocks then do not hash its whole prompt again.
   */
  hashPrompt(req: CoreRequest, promptKeys: BigUint64Array | undefined): void {
    if (this.routerKeyed && promptKeys !== undefined && req.extraKeys === undefined && promptKeys.length === Math.floor(req.promptLen / this.config.blockSize)) {
      req.hashes = promptKeys;
      req.hashHalves = halvesOf(promptKeys);
    }
    if (this.hasher) this.hashAhead(req, Math.max(req.promptLen, Math.min(this.hashLimit(req), req.promptLen + HASH_AHEAD)));
  }

  /** Longest cached prefix, at most numTokens - 1 tokens (the last one is always recomputed). */
  findCacheHit(req: CoreRequest): [number[], number] {
    if (!this.hasher) return [[], 0];
    const B = this.config.blockSize;
    const maxBlocks = Math.floor((req.numTokens - 1) / B);
    this.ensureHashes(req, maxBlocks);
    const blocks: number[] = [];
    const halves = req.hashHalves;
    for (let i = 0; i < maxBlocks; i++) {
      const b = this.pool.lookupAt(halves, i);
      if (b < 0) break;
      blocks.push(b);
    }
    return [blocks, blocks.length * B];
  }

  /**
   * vLLM's allocate_slots: room for `numNew` more tokens after the computed ones (and the new
   * prefix hits), or false without side effects; on success the blocks that are now full (or will
   * be once this step computes them) are cached, unless `delayCache` (remote KV still to come).
   */
  allocateSlots(req: CoreRequest, numNew: number, hitBlocks: number[] = [], hitTokens = 0, delayCache = false): boolean {
    const B = this.config.blockSize;
    const totalComputed = req.numComputed + hitTokens;
    const required = Math.ceil((totalComputed + numNew) / B);
    const newBlocks = required - req.blocks.length - hitBlocks.length;
    let evictable = 0;
    for (const b of hitBlocks) if (this.pool.refCount(b) === 0) evictable++;
    if (Math.max(newBlocks, 0) + evictable > this.pool.numFree) return false;
    if (hitTokens > 0) {
      this.pool.touch(hitBlocks);
      for (const b of hitBlocks) req.blocks.push(b);
      req.numCachedBlocks = req.blocks.length;
      req.numComputed = totalComputed;
    }
    if (newBlocks > 0) for (const b of this.pool.allocate(newBlocks)) req.blocks.push(b);
    if (!delayCache) this.cacheFullBlocks(req, Math.floor(Math.min(totalComputed + numNew, req.numTokens) / B));
    return true;
  }

  /**
   * Makes `req.hashes` cover at least `numBlocks` blocks. Block hashes chain from the first block,
   * so extending them means hashing from the start: to keep that from happening at every output
   * block (prompt x output / blockSize work), the hashes run ahead over the tokens the model will
   * generate next (`modelToken`: the simulated model's output is a function of the prompt), up to 1,024
   * tokens or as many as generated so far beyond what exists (from the request's arrival on). A
   * hash is used only once its block is full of real tokens, which are those predicted ones.
   */
  ensureHashes(req: CoreRequest, numBlocks: number): void {
    if (!this.hasher || req.hashes.length >= numBlocks) return;
    const B = this.config.blockSize;
    const full = Math.floor(req.numTokens / B);
    const want = Math.max(numBlocks, full) * B;
    const end = req.numOutput > 0 ? Math.max(want, Math.min(this.hashLimit(req), req.numTokens + Math.max(HASH_AHEAD, req.numOutput))) : want;
    this.hashAhead(req, end);
  }

  /** The most tokens `req` can have. */
  private hashLimit(req: CoreRequest): number {
    return Math.min(this.config.maxModelLen, req.promptLen + req.maxTokens);
  }

  /**
   * Sets `req.hashes` to the hashes of its first `end` tokens: its own, then the simulated model's next
   * ones, written past its tokens (where sampling appends the very same ones: no copy).
   */
  private hashAhead(req: CoreRequest, end: number): void {
    req.reserve(end);
    for (let i = req.numTokens, k = req.numOutput; i < end; i++, k++) req.tokens[i] = modelToken(req, k, this.vocab, this.config);
    const tokens = req.tokens.subarray(0, end);
    // Router keys chain: the known ones stay, only the blocks after them are hashed.
    req.hashes =
      this.routerKeyed && req.extraKeys === undefined && req.hashes.length > 0 ? this.hasher!.extend(req.hashes, tokens) : this.hasher!.hash(tokens, req.extraKeys);
    req.hashHalves = halvesOf(req.hashes);
  }

  /** vLLM's cache_full_blocks: caches blocks [numCachedBlocks, numFull), one BlockStored. */
  cacheFullBlocks(req: CoreRequest, numFull: number): void {
    if (!this.hasher || numFull <= req.numCachedBlocks) return;
    this.ensureHashes(req, numFull);
    const B = this.config.blockSize;
    const start = req.numCachedBlocks;
    const stored: bigint[] = [];
    this.pool.warm(req.hashHalves, start, numFull);
    const halves = req.hashHalves;
    for (let i = start; i < numFull; i++) {
      if (this.pool.cacheBlockAt(req.blocks[i]!, halves, i)) stored.push(req.hashes[i]!);
    }
    req.numCachedBlocks = numFull;
    if (stored.length === 0 || !this.pool.enableEvents) return;
    const lora = req.init.lora;
    const salt = req.init.cacheSalt;
    const embeds = req.init.promptEmbeds;
    const extraKeys: ((string | Uint8Array)[] | null)[] = [];
    for (let i = start; i < numFull; i++) {
      const salted = i === 0 && salt;
      // Most blocks have no extra keys: no array for them.
      if (!lora && !salted && !embeds) {
        extraKeys.push(null);
        continue;
      }
      const keys: (string | Uint8Array)[] = [];
      if (lora) keys.push(lora.name);
      if (salted) keys.push(salt);
      if (embeds) keys.push(embedsDigest(embeds, i));
      extraKeys.push(keys);
    }
    const event: BlockStoredEvent = {
      type: "BlockStored",
      blockHashes: stored,
      parentBlockHash: start === 0 ? null : req.hashes[start - 1]!,
      // A view, not a copy: tokens below `numTokens` never change (a grown array keeps the old one).
      tokenIds: req.tokens.subarray(start * B, numFull * B),
      blockSize: B,
      loraId: lora ? lora.id : null,
      medium: MEDIUM_GPU,
      loraName: lora ? lora.name : null,
      extraKeys,
      groupIdx: 0,
    };
    this.pool.pushEvent(event);
  }

  /** Releases all of `req`'s blocks (finish, abort, preemption). */
  freeBlocks(req: CoreRequest): void {
    // vLLM frees a request's blocks tail first, so its last blocks are evicted first.
    this.pool.freeBlocks(req.blocks.slice().reverse());
    req.blocks = [];
    req.numCachedBlocks = 0;
  }
}
