/**
 * Contracts of the router layer (issue: KV-aware router and OpenAI gateway). The gateway, the
 * replay tool and embedding applications program against these; `KvRouter` implements them.
 */
import type { TokenIds } from "../core/block-hasher.js";
import type { WorkerRecord, WorkerRole } from "../workers/config.js";

export type RouterMode = "kv" | "round-robin" | "random" | "least-loaded";

/** A routing target: one data-parallel rank of one worker. */
export interface WorkerTarget {
  workerId: string;
  dpRank: number;
}

export interface RouteRequest {
  model: string;
  /** Prompt token ids (the gateway makes them from text and chat with the model's `Tokenizer`). */
  tokens: TokenIds;
  loraName?: string;
  cacheSalt?: string;
  /** Prompt embeddings: per full block its 32-byte digest, concatenated (`loadPromptEmbeds`); `tokens` are then 0s, one per row. */
  promptEmbeds?: Uint8Array;
  /** Defaults to a fresh id; the same id must be used for the lifecycle calls below. */
  requestId?: string;
  /** Include every candidate's cost breakdown. */
  explain?: boolean;
  /** Workers not to choose (e.g. ones that already failed this request during migration). */
  exclude?: readonly WorkerTarget[];
  /** Expected output tokens, when known (improves the predicted decode load). */
  maxTokens?: number;
  /** Only workers of this role (default: every worker of the model). */
  role?: WorkerRole;
  /**
   * Decide only (e.g. `POST /v1/kvroute/route`): no load is booked and no speculative blocks are
   * credited, so the decision changes nothing.
   */
  dryRun?: boolean;
}

export interface CandidateScore extends WorkerTarget {
  overlapBlocks: number;
  /** Prefill blocks still to compute on this worker (prompt blocks - overlap). */
  prefillBlocks: number;
  /** Decode blocks the router predicts are active there (own bookkeeping, corrected by metrics). */
  decodeBlocks: number;
  /** overlapWeight x prefillBlocks + decodeBlocks (+ penalties); lower is better. */
  cost: number;
  /** Skipped for being over the busy threshold. */
  busy: boolean;
  /** The part of `overlapBlocks` owed to speculative entries (overlap = max of the two). */
  speculativeBlocks?: number;
  /** Prefill blocks of the router's requests there that have no first token yet. */
  queuedPrefillBlocks?: number;
  /** The metrics correction: load the router did not place itself (docs/router.md). */
  penalty?: number;
  /** Whether the router has a KV view of this worker (events seen). */
  kvView?: boolean;
  /** Context blocks of its requests with this one added, shared prefixes counted per request. */
  contextBlocks?: number;
  /** The indexed overlap by the best KV cache tier holding each block, e.g. `{ GPU: 4, CPU: 30 }`. */
  tiers?: Record<string, number>;
  /** Time to load the overlap from its tiers, in prefill blocks (priced in `cost` as prefill). */
  loadBlocks?: number;
}

export interface RouteDecision extends WorkerTarget {
  requestId: string;
  /** The worker's HTTP base URL (from the registry). */
  url: string;
  overlapBlocks: number;
  promptBlocks: number;
  /** The best overlap any worker had (for the "avoidable prefill" metric). */
  bestOverlapBlocks: number;
  /** True when some candidate had no KV view (no event source attached, or stale). */
  blind: boolean;
  mode: RouterMode;
  /** Present with `explain: true`, sorted by cost. */
  candidates?: CandidateScore[];
  /** Every candidate was over the busy threshold (the choice ignored it): a gateway may queue. */
  allBusy?: boolean;
  /** The chosen candidate's cost. */
  cost?: number;
  /** Max output tokens of the request, kept for `started` (expected decode load). */
  maxTokens?: number;
}

/** The router's request lifecycle: keeps its predicted load per worker exact. */
export interface RequestLifecycle {
  /** The request was sent to the decision's worker. */
  started(decision: RouteDecision): void;
  /** The first output token arrived (prefill done: its prefill load goes away). */
  firstToken(requestId: string): void;
  /** Output tokens so far (decode load grows with context). */
  tokens(requestId: string, generated: number): void;
  /** Finished, failed or cancelled: all its load goes away. */
  finished(requestId: string, outcome: "ok" | "error" | "cancelled"): void;
}

/** Where workers come from. MemoryRegistry (embedded default); EtcdRegistry (fleet issue). */
export interface Registry {
  list(model?: string): WorkerRecord[];
  get(id: string): WorkerRecord | undefined;
  register(record: WorkerRecord): Promise<void>;
  deregister(id: string): Promise<void>;
  /** Called on every add/remove; returns an unsubscribe function. */
  watch(listener: (change: { type: "added" | "removed"; record: WorkerRecord }) => void): () => void;
}
