/**
 * One simulated vLLM worker of the virtual-time replay: the mocker's `EngineCore` (vLLM's
 * scheduler, block pool with prefix caching and LRU eviction, timing model) stepped by the
 * replay's clock (`beginStep` / `endStep`) instead of its own loop, its vLLM metrics, and its KV
 * events encoded as the KVEventBatch bytes a live worker would publish (vLLM 0.33's form, written
 * by `writeKvEventBatch`).
 *
 * One difference from the live wire, for speed: a step's consecutive single-block BlockRemoved
 * events (vLLM sends one per evicted block) are merged into one BlockRemoved listing those blocks.
 * The router applies the same removals in the same order; it just decodes fewer events.
 */
import type { BlockRemovedEvent, KvEvent } from "../events/codec.js";
import { resolveMockEngineConfig, type MockEngineConfig, type ResolvedMockEngineConfig } from "../mocker/config.js";
import { EngineCore, type CoreOutput } from "../mocker/engine-core.js";
import { VllmMetrics } from "../mocker/metrics.js";
import { coreRequestInit, type GenerateRequest } from "../mocker/mock-engine.js";
import { writeKvEventBatch } from "./kv-batch-writer.js";

export class VirtualWorker {
  readonly config: ResolvedMockEngineConfig;
  readonly metrics: VllmMetrics;
  readonly core: EngineCore;

  /** `publish` gets each step's KV event batch (msgpack bytes), when the step ends. */
  constructor(config: MockEngineConfig, publish: (payload: Buffer) => void) {
    const resolved = resolveMockEngineConfig({ ...config, zeroTime: true });
    // As MockEngine.start: an unspecified max_model_len is fitted to the KV cache (vLLM 0.33).
    const capacity = (resolved.numGpuBlocks - 1) * resolved.blockSize;
    if (config.maxModelLen === undefined && resolved.maxModelLen > capacity) resolved.maxModelLen = capacity;
    this.config = resolved;
    this.metrics = new VllmMetrics(resolved.maxModelLen);
    this.core = new EngineCore(resolved, 0, this.metrics.engine(resolved.servedModelNames[0]!, 0), (rank, events) =>
      publish(writeKvEventBatch(0, rank, mergeRemovals(events))),
    );
  }

  /** Validates and queues a request as `MockEngine.submit` does (throws InvalidInputError as vLLM would refuse it). */
  submit(request: GenerateRequest & { requestId: string; promptTokenIds: Uint32Array; arrivalTime: number }, sink: (out: CoreOutput) => void): void {
    this.core.add(coreRequestInit(this.config, request, null), sink);
  }
}

/** Merges runs of BlockRemoved events (same medium and group) into one event each. */
export function mergeRemovals(events: KvEvent[]): KvEvent[] {
  let out: KvEvent[] | null = null;
  let run: BlockRemovedEvent | null = null;
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    if (e.type === "BlockRemoved" && run !== null && run.medium === e.medium && run.groupIdx === e.groupIdx) {
      if (out === null) out = events.slice(0, i);
      run.blockHashes.push(...e.blockHashes);
      continue;
    }
    if (e.type === "BlockRemoved") {
      run = { ...e, blockHashes: [...e.blockHashes] };
      if (out === null) out = events.slice(0, i);
      out.push(run);
      continue;
    }
    run = null;
    out?.push(e);
  }
  return out ?? events;
}
