/**
 * The virtual replay's engines in Rust (`SimEngines`, crates/kvroute-core/src/sim_engine): vLLM
 * v1's scheduler step, the block pool keyed by router keys, the toy model's tokens and the step
 * timing, for the fleet at once, one native call per step per engine. They are the mocker's TS
 * engine core (`VirtualWorker` over `EngineCore`) step for step, for the configurations
 * `rustEngineProblem` accepts; `__test__/replay-rust-engine.test.ts` replays traces with both and
 * compares every request.
 *
 * What stays with the TS engine: CPU offload, remote KV, LoRA, cache salts, prompt embeddings,
 * stop strings (they need text), real tokenizers, and the wire and direct event forms.
 */
import { native } from "../native.js";
import type { ResolvedMockEngineConfig } from "../mocker/config.js";
import type { CoreRequestInit } from "../mocker/core-request.js";
import { DirectBatch, fillKeyedFrom } from "./direct-batch.js";
import type { Trace } from "./trace.js";

/** Which engine a virtual replay steps: the Rust one or the mocker's TS one. */
export type ReplayEngineImpl = "rust" | "ts";

/** Words per packed step output: handle, output tokens so far, finished (0/1), cached tokens. */
export const OUTPUT_WORDS = 4;
/** `stats` words: running and waiting (as last published), KV usage, prefix queries, hits, load, preemptions. */
const STATS_WORDS = 7;

/**
 * Why the Rust engines cannot replay `trace` on engines configured as `config` with the event
 * path `eventPath`, or null when they can.
 */
export function rustEngineProblem(config: ResolvedMockEngineConfig, trace: Trace, eventPath: string): string | null {
  if (eventPath !== "keyed") return `the ${eventPath} event path (the Rust engines publish keyed batches)`;
  if (!config.enablePrefixCaching) return "prefix caching off";
  if (config.numCpuBlocks > 0) return "a CPU offload tier";
  if (config.tokenizer !== null) return "a real tokenizer";
  if (config.kvTransfer !== null) return "a KV transfer connector";
  if (!config.kvEvents.enabled) return "KV events off";
  if (!config.zeroTime) return "an engine on wall time";
  for (const r of trace.requests) {
    const body = r.openai?.body;
    if (body === undefined) continue;
    const stop = body["stop"];
    if ((typeof stop === "string" && stop !== "") || (Array.isArray(stop) && stop.length > 0)) return "stop strings";
    if (r.openai!.cacheSalt) return "cache salts";
  }
  return null;
}

/** The fleet's engines; each request has a caller-chosen handle (a small integer). */
export class RustEngines {
  private readonly inner: InstanceType<typeof native.SimEngines>;
  /** Packed outputs of the latest `end`. */
  readonly out: Int32Array;
  private readonly stat = new Float64Array(STATS_WORDS);
  private readonly sizes = new Uint32Array(2);
  private readonly batch = new DirectBatch(0);

  constructor(
    readonly config: ResolvedMockEngineConfig,
    readonly count: number,
  ) {
    const t = config.timing;
    const p = t.polynomial;
    this.inner = new native.SimEngines({
      engines: count,
      blockSize: config.blockSize,
      numGpuBlocks: config.numGpuBlocks,
      maxModelLen: config.maxModelLen,
      maxNumSeqs: config.maxNumSeqs,
      maxNumBatchedTokens: config.maxNumBatchedTokens,
      eosAfterTokens: Math.min(config.eosAfterTokens, 0xffffffff),
      timing: {
        stepBaseMs: t.stepBaseMs,
        prefillPerTokenMs: t.prefillPerTokenMs,
        attentionPerTokenPairMs: t.attentionPerTokenPairMs,
        decodePerSeqMs: t.decodePerSeqMs,
        decodePerContextTokenMs: t.decodePerContextTokenMs,
        ...(p !== undefined ? { polynomial: { prefill: [...p.prefill], decode: [...p.decode], decodeFloorMs: p.decodeFloorMs } } : {}),
      },
    });
    // A step has at most maxNumSeqs outputs.
    this.out = new Int32Array(OUTPUT_WORDS * (config.maxNumSeqs + 1));
  }

  /** Queues a request (`init` from `coreRequestInit`: validated and clamped) on engine `w`. */
  add(w: number, handle: number, init: CoreRequestInit, promptKeys: BigUint64Array | undefined): void {
    const stops = init.stopTokenIds.length > 0 ? Uint32Array.from(init.stopTokenIds) : null;
    this.inner.add(w, handle, init.promptTokenIds, promptKeys ?? null, init.maxTokens, init.minTokens, init.ignoreEos, (this.config.seed ^ init.sampleSeed) | 0, stops);
  }

  /**
   * Schedules a step of engine `w` at `now`: its duration, or -1 - (KV event batches flushed)
   * when nothing is runnable (`takeBatch` them).
   */
  begin(w: number, now: number): number {
    return this.inner.beginStep(w, now);
  }

  /** Ends engine `w`'s step: outputs x 2 + batches flushed (0 or 1); the outputs are in `out`. */
  end(w: number): number {
    return this.inner.endStep(w, this.out);
  }

  /** Engine `w`'s oldest flushed KV event batch as a keyed batch (reused: apply it before the next call). */
  takeBatch(w: number): DirectBatch {
    const ok = fillKeyedFrom(this.batch, this.sizes, (ops, hashes, sizes) => this.inner.takeBatch(w, ops, hashes, sizes));
    if (!ok) throw new Error(`rust engines: engine ${w} has no KV event batch to deliver`);
    return this.batch;
  }

  /** Engine `w`'s `[running, waiting]` (as last published), KV usage, prefix queries, hits, load now, preemptions. */
  stats(w: number): Float64Array {
    this.inner.stats(w, this.stat);
    return this.stat;
  }
}
