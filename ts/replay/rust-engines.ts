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
import type { Trace } from "./trace.js";

/** Which engine a virtual replay steps: the Rust one or the mocker's TS one. */
export type ReplayEngineImpl = "rust" | "ts";

/** Words per packed output: engine, handle, output tokens so far, finished (0/1), cached tokens. */
export const OUTPUT_WORDS = 5;
/** `stats` words: running and waiting (as last published), KV usage, prefix queries, hits, load, preemptions. */
const STATS_WORDS = 7;

/**
 * Why the Rust engines cannot replay `trace` on engines configured as `config` with the event
 * path `eventPath` and KV events `eventDelayMs` late, or null when they can.
 */
export function rustEngineProblem(config: ResolvedMockEngineConfig, trace: Trace, eventPath: string, eventDelayMs: number): string | null {
  if (eventPath !== "keyed") return `the ${eventPath} event path (the Rust engines publish keyed batches)`;
  if (!config.enablePrefixCaching) return "prefix caching off";
  if (config.numCpuBlocks > 0) return "a CPU offload tier";
  if (config.tokenizer !== null) return "a real tokenizer";
  if (config.kvTransfer !== null) return "a KV transfer connector";
  if (!config.kvEvents.enabled) return "KV events off";
  if (!config.zeroTime) return "an engine on wall time";
  if (!(eventDelayMs > 0)) return "no KV event delay (a batch applied mid-step)";
  for (const r of trace.requests) {
    const body = r.openai?.body;
    if (body === undefined) continue;
    const stop = body["stop"];
    if ((typeof stop === "string" && stop !== "") || (Array.isArray(stop) && stop.length > 0)) return "stop strings";
    if (r.openai!.cacheSalt) return "cache salts";
  }
  return null;
}

/** Why `RustEngines.run` returned (else: the kind of one of the caller's events, >= 2). */
export const RUN_UNTIL = 0;
export const RUN_OUTPUTS = 1;

type NativeRouterCore = Parameters<InstanceType<typeof native.SimEngines>["run"]>[1];

/**
 * The fleet's engines and their agenda (steps, KV event deliveries, and the caller's own timed
 * events, in one queue ordered as `EventQueue` orders them). Each request has a caller-chosen
 * handle (a small integer).
 */
export class RustEngines {
  private readonly inner: InstanceType<typeof native.SimEngines>;
  /** Packed outputs of the latest `run` that returned `RUN_OUTPUTS` (`OUTPUT_WORDS` each). */
  readonly out: Int32Array;
  /** `[now, engines stepping, outputs]` after the latest `run`. */
  readonly state = new Float64Array(3);
  private readonly stat = new Float64Array(STATS_WORDS);

  constructor(
    readonly config: ResolvedMockEngineConfig,
    workerIds: readonly string[],
    eventDelayMs: number,
  ) {
    const t = config.timing;
    const p = t.polynomial;
    this.inner = new native.SimEngines({
      engines: workerIds.length,
      workerIds: [...workerIds],
      eventDelayMs,
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

  /**
   * Queues a request (`init` from `coreRequestInit`: validated and clamped) on engine `w`;
   * `handle`: a small integer unique among live requests.
   */
  add(w: number, handle: number, init: CoreRequestInit, promptKeys: BigUint64Array | undefined): void {
    const stops = init.stopTokenIds.length > 0 ? Uint32Array.from(init.stopTokenIds) : null;
    this.inner.add(w, handle, init.requestId, init.promptTokenIds, promptKeys ?? null, init.maxTokens, init.minTokens, init.ignoreEos, (this.config.seed ^ init.sampleSeed) | 0, stops);
  }

  /** Starts a step of engine `w` at `now` unless it is stepping; returns the engines stepping. */
  kick(w: number, now: number): number {
    return this.inner.kick(w, now);
  }

  /** Schedules one of the caller's events (`kind` >= 2) at `t`. */
  push(t: number, kind: number): void {
    this.inner.push(t, kind);
  }

  /**
   * Runs the agenda up to `until` (inclusive), KV event batches applied to `router` (the
   * router's native core: `KvRouter.keyedEventCore`), and the progress of a step with no first
   * token and no finish told to it there (`tokens`): `RUN_UNTIL`, `RUN_OUTPUTS` (see `out`: a
   * step with a first token or a finish, all its outputs the router hears about), or the kind of
   * the caller's event now due. `state` tells the time and the engines stepping.
   */
  run(until: number, router: NativeRouterCore): number {
    return this.inner.run(until, router, this.out, this.state);
  }

  /** Milliseconds `run` spent in the router (KV event batches, progress). */
  get routerMs(): number {
    return this.inner.routerMs;
  }

  /** Engine `w`'s `[running, waiting]` (as last published), KV usage, prefix queries, hits, load now, preemptions. */
  stats(w: number): Float64Array {
    this.inner.stats(w, this.stat);
    return this.stat;
  }
}
