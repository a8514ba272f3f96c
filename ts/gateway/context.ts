/**
 * What every part of the gateway shares: the router it asks, the registry it reads workers from,
 * the validated config, metrics, connections, admission and the models' tokenizers. Built once by
 * createGateway().
 */
import type { GatewayConfig } from "../config/schema.js";
import type { Registry, RequestLifecycle, RouteDecision, RouteRequest, WorkerTarget } from "../router/types.js";
import type { WorkerRecord, WorkerRole } from "../workers/config.js";
import type { Admission } from "./admission.js";
import type { GatewayMetrics } from "./metrics.js";
import type { TokenIds } from "../core/block-hasher.js";
import type { ChatRequest } from "../tokenizer/tokenizer.js";
import type { TokenizationCheck } from "./tokenization-check.js";
import type { ModelTokenizers } from "./tokenizers.js";
import type { UpstreamPool } from "./upstream.js";

/**
 * The router as the gateway uses it: a synchronous decision (scoring is one native call) and the
 * request lifecycle. `KvRouter` implements it.
 */
export interface GatewayRouter extends RequestLifecycle {
  route(request: RouteRequest): RouteDecision;
  /** Settles once the `finished` of the requests that just ended is known where it must be (fleet mode); the gateway ends their responses after it. */
  lifecycleDelivered?(): Promise<void> | null;
}

/**
 * Text and chat requests to the token ids the engine will compute, so routing keys match the
 * engine's blocks. `Tokenizer` (a model folder, vLLM-exact) implements it.
 */
export interface PromptTokenizer {
  /** A `/v1/completions` text prompt; `addSpecialTokens` defaults to true, as vLLM's. */
  encode(text: string, options?: { addSpecialTokens?: boolean }): TokenIds;
  /** A `/v1/chat/completions` body, as an object or its bytes. */
  encodeChat(request: ChatRequest | Uint8Array): TokenIds;
  /** Ids to text, for the parity check's log line. */
  decode?(ids: readonly number[]): string;
}

/** What the gateway needs to know about one model's workers, derived from the registry. */
export interface ModelFleet {
  records: WorkerRecord[];
  /** Targets that serve requests end to end or decode them. */
  serving: WorkerTarget[];
  /** Every other target (prefill workers): excluded when routing a request to serve. */
  nonServing: WorkerTarget[];
  prefill: WorkerTarget[];
  /** Prefill and decode workers both present: requests are disaggregated. */
  disaggregated: boolean;
}

/**
 * Per-model views of the registry, computed once and dropped on every registry change, so a
 * request does not rescan the registry. Invariant: a cached view equals what `registry.list`
 * returned after the last change.
 */
export class FleetView {
  private readonly cache = new Map<string, ModelFleet>();
  private readonly byId = new Map<string, WorkerRecord>();
  private all: WorkerRecord[] | null = null;
  private readonly unwatch: () => void;

  constructor(private readonly registry: Registry) {
    this.unwatch = registry.watch(() => {
      this.cache.clear();
      this.byId.clear();
      this.all = null;
    });
  }

  of(model: string): ModelFleet {
    let f = this.cache.get(model);
    if (!f) {
      const records = this.registry.list(model);
      const prefill = targetsOf(records, ["prefill"]);
      f = {
        records,
        serving: targetsOf(records, SERVING_ROLES),
        nonServing: targetsNotIn(records, SERVING_ROLES),
        prefill,
        disaggregated: prefill.length > 0 && records.some((r) => r.role === "decode"),
      };
      this.cache.set(model, f);
    }
    return f;
  }

  record(id: string): WorkerRecord | undefined {
    let r = this.byId.get(id);
    if (r === undefined) {
      r = this.registry.get(id);
      if (r) this.byId.set(id, r);
    }
    return r;
  }

  list(): WorkerRecord[] {
    return (this.all ??= this.registry.list());
  }

  close(): void {
    this.unwatch();
  }
}

/**
 * Workers that just failed a request, avoided until their cool-down passes (passive health
 * checking). Invariant: an entry is dropped when it expires or the worker registers again.
 */
export class Suspects {
  private readonly until = new Map<string, number>();
  /** Told of every mark (the native front avoids the worker too). */
  onMark: ((workerId: string, cooldownMs: number) => void) | null = null;

  constructor(private readonly cooldownMs: number) {}

  mark(workerId: string): void {
    if (this.cooldownMs <= 0) return;
    this.until.set(workerId, performance.now() + this.cooldownMs);
    this.onMark?.(workerId, this.cooldownMs);
  }

  forgive(workerId: string): void {
    this.until.delete(workerId);
  }

  /** The targets among `targets` to avoid now. */
  among(targets: readonly WorkerTarget[]): WorkerTarget[] {
    if (this.until.size === 0) return [];
    const now = performance.now();
    for (const [id, t] of this.until) if (t <= now) this.until.delete(id);
    if (this.until.size === 0) return [];
    return targets.filter((t) => this.until.has(t.workerId));
  }
}

export interface GatewayContext {
  router: GatewayRouter;
  registry: Registry;
  fleet: FleetView;
  suspects: Suspects;
  config: GatewayConfig;
  metrics: GatewayMetrics;
  upstream: UpstreamPool;
  admission: Admission;
  tokenizers: ModelTokenizers;
  tokenizationCheck: TokenizationCheck;
  log: (message: string) => void;
}

/** Roles that serve a request end to end (aggregated) or its decode phase. */
export const SERVING_ROLES: readonly WorkerRole[] = ["aggregated", "decode"];

/** The (worker, DP rank) targets of a model's workers with one of `roles`. */
export function targetsOf(records: readonly WorkerRecord[], roles: readonly WorkerRole[]): WorkerTarget[] {
  const out: WorkerTarget[] = [];
  for (const r of records) {
    if (!roles.includes(r.role)) continue;
    for (const dpRank of r.dpRanks) out.push({ workerId: r.id, dpRank });
  }
  return out;
}

/** Every target of `records` whose role is not in `roles` (to keep the router off them). */
export function targetsNotIn(records: readonly WorkerRecord[], roles: readonly WorkerRole[]): WorkerTarget[] {
  const out: WorkerTarget[] = [];
  for (const r of records) {
    if (roles.includes(r.role)) continue;
    for (const dpRank of r.dpRanks) out.push({ workerId: r.id, dpRank });
  }
  return out;
}
