/**
 * The gateway's Prometheus metrics (prom-client), in a registry of its own so that several
 * gateways in one process (tests, embedding) do not collide. Names are `kvroute_*`; what each
 * counts is in its help string and in docs/gateway.md.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { RouteDecision } from "../router/types.js";

/** Latency buckets (seconds) for TTFT: 1 ms .. 60 s. */
const TTFT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 60];
/** Inter-token latency buckets (seconds): 0.1 ms .. 2.5 s. */
const ITL_BUCKETS = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5];
/** Overlap in blocks: powers of two up to 8192 blocks (128k tokens at block size 16). */
const OVERLAP_BUCKETS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192];

export type AdmissionKind = "immediate" | "queued";
export type RejectionReason = "queue_full" | "queue_timeout" | "no_worker";

export class GatewayMetrics {
  readonly registry: Registry;
  readonly requests: Counter<"route" | "status">;
  readonly decisions: Counter<"mode">;
  readonly overlap: Histogram<"mode">;
  readonly ttft: Histogram<"model">;
  readonly itl: Histogram<"model">;
  readonly migrations: Counter<"model">;
  readonly cancellations: Counter<"model" | "phase">;
  readonly activeRequests: Gauge<"worker" | "dp_rank">;
  readonly prefillTokensSaved: Counter<"model">;
  readonly prefillTokensAvoidable: Counter<"model">;
  readonly prefillTokens: Counter<"model">;
  readonly blindDecisions: Counter<"mode">;
  readonly admissions: Counter<"kind">;
  readonly rejections: Counter<"reason">;
  readonly queueDepth: Gauge<"model">;
  readonly upstreamErrors: Counter<"worker" | "kind">;
  readonly remotePrefills: Counter<"model" | "where">;
  readonly disaggDecisions: Counter<"model" | "path" | "reason">;
  readonly untokenized: Counter<"model" | "reason">;
  readonly tokenizationChecks: Counter<"model" | "worker">;
  readonly tokenizationMismatches: Counter<"model" | "worker">;

  constructor(options: { defaultMetrics?: boolean } = {}) {
    const registry = (this.registry = new Registry());
    if (options.defaultMetrics) collectDefaultMetrics({ register: registry, prefix: "kvroute_process_" });
    const r = [registry];
    this.requests = new Counter({ name: "kvroute_requests_total", help: "HTTP requests answered, by route and status code", labelNames: ["route", "status"], registers: r });
    this.decisions = new Counter({ name: "kvroute_routing_decisions_total", help: "Routing decisions, by router mode", labelNames: ["mode"], registers: r });
    this.overlap = new Histogram({ name: "kvroute_overlap_blocks", help: "Prompt blocks the chosen worker already held", labelNames: ["mode"], buckets: OVERLAP_BUCKETS, registers: r });
    this.ttft = new Histogram({ name: "kvroute_time_to_first_token_seconds", help: "From the request's arrival to its first token (streaming)", labelNames: ["model"], buckets: TTFT_BUCKETS, registers: r });
    this.itl = new Histogram({ name: "kvroute_inter_token_latency_seconds", help: "Between consecutive token chunks of a stream", labelNames: ["model"], buckets: ITL_BUCKETS, registers: r });
    this.migrations = new Counter({ name: "kvroute_migrations_total", help: "Requests re-issued on another worker after theirs failed", labelNames: ["model"], registers: r });
    this.cancellations = new Counter({
      name: "kvroute_cancellations_total",
      help: "Requests whose client went away; phase: queued, prefill (no token yet) or decode",
      labelNames: ["model", "phase"],
      registers: r,
    });
    this.activeRequests = new Gauge({ name: "kvroute_worker_active_requests", help: "Requests the gateway has in flight on each worker DP rank", labelNames: ["worker", "dp_rank"], registers: r });
    this.prefillTokens = new Counter({ name: "kvroute_prefill_tokens_total", help: "Prompt tokens routed", labelNames: ["model"], registers: r });
    this.prefillTokensSaved = new Counter({
      name: "kvroute_prefill_tokens_saved_total",
      help: "Prompt tokens the chosen worker already held in its KV cache",
      labelNames: ["model"],
      registers: r,
    });
    this.prefillTokensAvoidable = new Counter({
      name: "kvroute_prefill_tokens_avoidable_total",
      help: "Prompt tokens the best-placed worker held (the most that could have been saved)",
      labelNames: ["model"],
      registers: r,
    });
    this.blindDecisions = new Counter({
      name: "kvroute_blind_decisions_total",
      help: "Decisions made while some candidate worker had no KV view (no event source, or stale)",
      labelNames: ["mode"],
      registers: r,
    });
    this.admissions = new Counter({ name: "kvroute_queue_admissions_total", help: "Requests admitted, at once or after waiting in the queue", labelNames: ["kind"], registers: r });
    this.rejections = new Counter({
      name: "kvroute_queue_rejections_total",
      help: "Requests refused with 503: queue full, queue deadline passed, or no healthy worker",
      labelNames: ["reason"],
      registers: r,
    });
    this.queueDepth = new Gauge({ name: "kvroute_queue_depth", help: "Requests waiting for a worker", labelNames: ["model"], registers: r });
    this.upstreamErrors = new Counter({
      name: "kvroute_upstream_errors_total",
      help: "Worker failures seen while forwarding (connect, reset, timeout, broken stream)",
      labelNames: ["worker", "kind"],
      registers: r,
    });
    this.remotePrefills = new Counter({
      name: "kvroute_disagg_prefills_total",
      help: "Disaggregated requests by where their prefill ran (remote, local)",
      labelNames: ["model", "where"],
      registers: r,
    });
    this.disaggDecisions = new Counter({
      name: "kvroute_disagg_decisions_total",
      help: "Conditional disaggregation decisions by path (remote, local) and reason (policy rule, decode_busy_veto, no_prefill_worker)",
      labelNames: ["model", "path", "reason"],
      registers: r,
    });
    this.untokenized = new Counter({
      name: "kvroute_requests_untokenized_total",
      help: "Text or chat requests routed by load only: no tokenizer for the model (reason no_tokenizer), or it refused the prompt (reason refused)",
      labelNames: ["model", "reason"],
      registers: r,
    });
    this.tokenizationChecks = new Counter({
      name: "kvroute_tokenization_checks_total",
      help: "Responses whose prompt_token_ids were compared with the router's own tokens",
      labelNames: ["model", "worker"],
      registers: r,
    });
    this.tokenizationMismatches = new Counter({
      name: "kvroute_tokenization_mismatch_total",
      help: "Compared responses whose prompt_token_ids differ from the router's tokens (wrong tokenizer folder, template or special-token flags)",
      labelNames: ["model", "worker"],
      registers: r,
    });
  }

  /**
   * Counts, at each scrape, what the tokenizers' bounded caches dropped to stay within their
   * budgets (`cache`: segments, conversations or text_prefixes), from `source`'s counters.
   */
  observeTokenizerCaches(source: () => readonly { evictions: number; conversationEvictions: number; textPrefixEvictions: number }[]): void {
    new Counter({
      name: "kvroute_tokenizer_cache_evictions_total",
      help: "Entries the tokenizers' bounded caches dropped to stay within their budgets: chat segments (cache segments), conversations' last prompts (cache conversations) or completions texts kept for their prefixes (cache text_prefixes)",
      labelNames: ["cache"],
      registers: [this.registry],
      collect() {
        let segments = 0;
        let conversations = 0;
        let textPrefixes = 0;
        for (const s of source()) {
          segments += s.evictions;
          conversations += s.conversationEvictions;
          textPrefixes += s.textPrefixEvictions;
        }
        this.reset();
        this.inc({ cache: "segments" }, segments);
        this.inc({ cache: "conversations" }, conversations);
        this.inc({ cache: "text_prefixes" }, textPrefixes);
      },
    });
  }

  // Label lookups hash their label object on every call: the per-request series are cached.
  private readonly children = new Map<string, unknown>();

  private child<T>(key: string, make: () => T): T {
    let c = this.children.get(key) as T | undefined;
    if (c === undefined) {
      c = make();
      this.children.set(key, c);
    }
    return c;
  }

  /** The gauge of a worker rank's in-flight requests. */
  active(workerId: string, dpRank: number): { set(v: number): void } {
    return this.child(`a\0${workerId}\0${dpRank}`, () => this.activeRequests.labels(workerId, String(dpRank)));
  }

  /** One admission, at once or after queueing. */
  admitted(kind: AdmissionKind): void {
    this.child(`q\0${kind}`, () => this.admissions.labels(kind)).inc();
  }

  /** One answered request. */
  request(route: string, status: number): void {
    this.child(`r\0${route}\0${status}`, () => this.requests.labels(route, String(status))).inc();
  }

  /** Forgets a worker's series (it left the registry). */
  forgetWorker(workerId: string, dpRanks: readonly number[]): void {
    for (const r of dpRanks) {
      this.activeRequests.remove(workerId, String(r));
      this.children.delete(`a\0${workerId}\0${r}`);
    }
  }

  /** One routing decision: mode, overlap, saved/avoidable prefill, blindness. */
  decision(model: string, decision: RouteDecision, blockSize: number, promptTokens: number): void {
    const m = decision.mode;
    this.child(`d\0${m}`, () => this.decisions.labels(m)).inc();
    this.child(`o\0${m}`, () => this.overlap.labels(m)).observe(decision.overlapBlocks);
    this.child(`p\0${model}`, () => this.prefillTokens.labels(model)).inc(promptTokens);
    if (decision.overlapBlocks > 0) {
      this.child(`s\0${model}`, () => this.prefillTokensSaved.labels(model)).inc(Math.min(promptTokens, decision.overlapBlocks * blockSize));
    }
    if (decision.bestOverlapBlocks > 0) {
      this.child(`v\0${model}`, () => this.prefillTokensAvoidable.labels(model)).inc(Math.min(promptTokens, decision.bestOverlapBlocks * blockSize));
    }
    if (decision.blind) this.child(`b\0${m}`, () => this.blindDecisions.labels(m)).inc();
  }

  /** A text or chat request no tokenizer keyed (routed by load). */
  untokenizedRequest(model: string, reason: "no_tokenizer" | "refused"): void {
    this.child(`u\0${model}\0${reason}`, () => this.untokenized.labels(model, reason)).inc();
  }

  /** One tokenization parity check of a response, and whether its ids differed. */
  tokenizationChecked(model: string, worker: string, mismatch: boolean): void {
    this.child(`k\0${model}\0${worker}`, () => this.tokenizationChecks.labels(model, worker)).inc();
    if (mismatch) this.child(`x\0${model}\0${worker}`, () => this.tokenizationMismatches.labels(model, worker)).inc();
  }

  /** Time to first token of a stream, and the gap per token after that. */
  firstToken(model: string, seconds: number): void {
    this.child(`t\0${model}`, () => this.ttft.labels(model)).observe(seconds);
  }

  interToken(model: string, seconds: number): void {
    this.child(`i\0${model}`, () => this.itl.labels(model)).observe(seconds);
  }

  /** Run before each scrape (the native front's counts are drained into these metrics). */
  readonly beforeScrape: (() => void)[] = [];

  text(): Promise<string> {
    for (const f of this.beforeScrape) f();
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
