/**
 * One simulated vLLM worker of the virtual-time replay: the mocker's `EngineCore` (vLLM's
 * scheduler, block pool with prefix caching and LRU eviction, timing model) stepped by the
 * replay's clock (`beginStep` / `endStep`) instead of its own loop, its vLLM metrics, and its KV
 * events encoded as the KVEventBatch bytes a live worker would publish (vLLM 0.33's form, written
 * by `writeKvEventBatch`).
 *
 * One difference from the live wire, for speed: a step's consecutive single-block BlockRemoved
 * events (vLLM sends one per evicted block) are merged into one BlockRemoved listing those blocks
 * (by the block pool, `BlockPool.mergeRemovals`). The router applies the same removals in the
 * same order; it just decodes fewer events.
 *
 * The form its batches take (`VirtualEventForm`): the wire's msgpack bytes; `direct`, the
 * in-process form (`DirectBatch`: typed arrays the router's native core reads as they are) when it
 * can; `keyed`, the engine keys its cache with the router's keyer and its batches list router
 * keys only (no tokens cross, nothing is hashed twice). The virtual replay's engines and router
 * share the process: only a live worker needs the wire.
 */
import { resolveMockEngineConfig, type MockEngineConfig, type ResolvedMockEngineConfig } from "../mocker/config.js";
import { EngineCore, type CoreOutput } from "../mocker/engine-core.js";
import { VllmMetrics } from "../mocker/metrics.js";
import { coreRequestInit, type GenerateRequest } from "../mocker/mock-engine.js";
import { DirectBatch, writeDirectBatch, writeKeyedBatch } from "./direct-batch.js";
import { writeKvEventBatch } from "./kv-batch-writer.js";

/** How a virtual worker hands over its KV event batches (see the class). */
export type VirtualEventForm = "wire" | "direct" | "keyed";

/** Bytes of a spare batch buffer (a large prefill's batch fits). */
const SPARE_BYTES = 1 << 17;
/** Spare batch buffers kept at most. */
const MAX_SPARES = 64;

/** The resolved configuration of a virtual worker's engine (on the replay's clock). */
export function virtualEngineConfig(config: MockEngineConfig): ResolvedMockEngineConfig {
  const resolved = resolveMockEngineConfig({ ...config, zeroTime: true });
  // As MockEngine.start: an unspecified max_model_len is fitted to the KV cache (vLLM 0.33).
  const capacity = (resolved.numGpuBlocks - 1) * resolved.blockSize;
  if (config.maxModelLen === undefined && resolved.maxModelLen > capacity) resolved.maxModelLen = capacity;
  return resolved;
}

export class VirtualWorker {
  readonly config: ResolvedMockEngineConfig;
  readonly metrics: VllmMetrics;
  readonly core: EngineCore;
  /** Buffers of batches handed back (`release`), to write later batches into. */
  private readonly spares: Buffer[] = [];

  /** Direct batches handed back (`release`), to write later batches into. */
  private readonly directSpares: DirectBatch[] = [];

  /**
   * `publish` gets each step's KV event batch when the step ends (see `release`): msgpack bytes,
   * or with `direct` a `DirectBatch` where the events allow it.
   */
  constructor(config: MockEngineConfig, publish: (payload: Buffer | DirectBatch) => void, events: VirtualEventForm = "wire") {
    const resolved = virtualEngineConfig(config);
    this.config = resolved;
    this.metrics = new VllmMetrics(resolved.maxModelLen);
    this.core = new EngineCore(resolved, 0, this.metrics.engine(resolved.servedModelNames[0]!, 0), (rank, batch) => {
      if (events === "keyed") {
        const k = writeKeyedBatch(rank, batch, this.directSpares.pop());
        // The keyed form carries every event a replay's engine without LoRA or CPU tier emits.
        if (k === null) throw new Error("virtual worker: a KV event the keyed form cannot carry (LoRA, extra keys or another medium)");
        return publish(k);
      }
      const d = events === "direct" ? writeDirectBatch(rank, batch, this.directSpares.pop()) : null;
      publish(d ?? writeKvEventBatch(0, rank, batch, this.spares.pop()));
    });
    if (events === "keyed") this.core.keyByRouter();
    this.core.pool.mergeRemovals = true;
  }

  /**
   * Takes back a batch `publish` got, once nothing reads it any more (applied or dropped): a spare
   * buffer (its own, if large enough) that a later batch is written into. Batches come at a high
   * rate (the prompts' token ids), and a fresh buffer for each costs allocations and garbage
   * collections (of memory outside the JS heap).
   */
  release(payload: Buffer | DirectBatch): void {
    if (payload instanceof DirectBatch) {
      if (this.directSpares.length < MAX_SPARES) this.directSpares.push(payload);
      return;
    }
    if (this.spares.length >= MAX_SPARES) return;
    // Only a whole buffer of its own (not a slice of a shared one) can be written over.
    const own = payload.byteOffset === 0 && payload.buffer.byteLength >= SPARE_BYTES;
    this.spares.push(own ? Buffer.from(payload.buffer) : Buffer.allocUnsafeSlow(SPARE_BYTES));
  }

  /**
   * Validates and queues a request as `MockEngine.submit` does (throws InvalidInputError as vLLM
   * would refuse it). `promptKeys`: see `EngineCore.add` (keyed engines).
   */
  submit(request: GenerateRequest & { requestId: string; promptTokenIds: Uint32Array; arrivalTime: number }, sink: (out: CoreOutput) => void, promptKeys?: BigUint64Array): void {
    this.core.add(coreRequestInit(this.config, request, null), sink, promptKeys);
  }
}
