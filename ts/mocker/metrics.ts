/**
 * The engine metrics vLLM 0.33 exports on `/metrics` (vllm/v1/metrics/loggers.py,
 * `PrometheusStatLogger`), with its names, help strings, types, label names (`model_name`,
 * `engine` = the DP rank, plus `reason`/`source`/`finished_reason` where vLLM has them), bucket
 * families (vllm/v1/metrics/buckets.py) and registration order, rendered byte for byte as
 * prometheus_client's text exposition renders them (counters as `<name>_total` plus a
 * `<name>_created` gauge; histograms as `_bucket`/`_count`/`_sum` plus `_created`; floats in
 * Python's repr, via prometheus_client's `floatToGoString`).
 *
 * Times are the engine's simulated seconds (docs/mocker.md, "Clocks").
 */

type Kind = "gauge" | "counter" | "histogram";

/** Python's `repr(float)`. */
export function pyFloatRepr(x: number): string {
  if (Number.isNaN(x)) return "nan";
  if (x === Infinity) return "inf";
  if (x === -Infinity) return "-inf";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const [mant, expText] = x.toExponential().split("e") as [string, string];
  const exp = Number(expText);
  if (exp < -4 || exp >= 16) {
    const sign = exp < 0 ? "-" : "+";
    const abs = Math.abs(exp);
    return `${mant}e${sign}${abs < 10 ? "0" : ""}${abs}`;
  }
  const s = String(x);
  return s.includes(".") || s.includes("e") ? s : `${s}.0`;
}

/** prometheus_client's `floatToGoString`. */
export function floatToGoString(d: number): string {
  if (d === Infinity) return "+Inf";
  if (d === -Infinity) return "-Inf";
  if (Number.isNaN(d)) return "NaN";
  const s = pyFloatRepr(d);
  const dot = s.indexOf(".");
  if (d > 0 && dot > 6) {
    const mantissa = `${s[0]}.${s.slice(1, dot)}${s.slice(dot + 1)}`.replace(/[0.]+$/, "");
    return `${mantissa}e+0${dot - 1}`;
  }
  return s;
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

export class Series {
  value = 0;
  sum = 0;
  readonly counts: Float64Array;
  readonly created = Date.now() / 1000;
  constructor(
    readonly labelText: string,
    buckets: number,
  ) {
    this.counts = new Float64Array(buckets);
  }
}

/** A metric family: one name, its series by label values. */
export class Family {
  readonly series = new Map<string, Series>();
  private readonly bucketText: string[];

  constructor(
    readonly name: string,
    readonly help: string,
    readonly kind: Kind,
    readonly labelNames: readonly string[],
    readonly buckets: readonly number[] = [],
  ) {
    this.bucketText = [...buckets.map(floatToGoString), "+Inf"];
  }

  /** The series for these label values (in `labelNames` order), created at 0 if new. */
  labels(...values: string[]): Series {
    const key = values.join("\u0000");
    let s = this.series.get(key);
    if (!s) {
      const text = this.labelNames.map((n, i) => `${n}="${escapeLabel(values[i] ?? "")}"`).join(",");
      s = new Series(text, this.kind === "histogram" ? this.buckets.length + 1 : 0);
      this.series.set(key, s);
    }
    return s;
  }

  render(out: string[]): void {
    const mname = this.kind === "counter" ? `${this.name}_total` : this.name;
    out.push(`# HELP ${mname} ${escapeHelp(this.help)}\n# TYPE ${mname} ${this.kind}\n`);
    const created: string[] = [];
    for (const s of this.series.values()) {
      const l = s.labelText;
      if (this.kind === "gauge") {
        out.push(`${this.name}{${l}} ${floatToGoString(s.value)}\n`);
        continue;
      }
      if (this.kind === "counter") {
        out.push(`${mname}{${l}} ${floatToGoString(s.value)}\n`);
      } else {
        let acc = 0;
        const sep = l ? "," : "";
        for (let i = 0; i < s.counts.length; i++) {
          acc += s.counts[i]!;
          out.push(`${this.name}_bucket{${l}${sep}le="${this.bucketText[i]}"} ${floatToGoString(acc)}\n`);
        }
        out.push(`${this.name}_count{${l}} ${floatToGoString(acc)}\n`);
        out.push(`${this.name}_sum{${l}} ${floatToGoString(s.sum)}\n`);
      }
      created.push(`${this.name}_created{${l}} ${floatToGoString(s.created)}\n`);
    }
    if (created.length > 0) {
      out.push(`# HELP ${this.name}_created ${escapeHelp(this.help)}\n# TYPE ${this.name}_created gauge\n`, ...created);
    }
  }
}

export function observe(family: Family, s: Series, v: number): void {
  s.sum += v;
  const b = family.buckets;
  let i = 0;
  while (i < b.length && v > b[i]!) i++;
  s.counts[i]!++;
}

// vllm/v1/metrics/buckets.py
const REQUEST_LATENCY = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0];
const TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0];
const ITL = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
const ITERATION_TOKENS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384];
const PARAMS_N = [1, 2, 5, 10, 20];
const NUM_PREEMPTIONS = [1, 2, 3, 4, 5, 10, 20];

/** `build_1_2_5_buckets(max)`. */
export function buckets125(max: number): number[] {
  const out: number[] = [];
  for (let e = 0; ; e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v > max) return out;
      out.push(v);
    }
  }
}

export const FINISH_REASONS = ["stop", "length", "abort", "error", "repetition"] as const;
export type FinishReasonLabel = (typeof FINISH_REASONS)[number];
const CACHE_HIT_SOURCES = ["device", "host", "p2p", "disk", "external_unspecified"];

/** Everything an engine rank reports when a request finishes. */
export interface FinishedRequestStats {
  finishReason: FinishReasonLabel;
  e2eLatency: number;
  queuedTime: number;
  prefillTime: number;
  inferenceTime: number;
  decodeTime: number;
  meanTimePerOutputToken: number;
  numPromptTokens: number;
  numGenerationTokens: number;
  numCachedTokens: number;
  numPreemptions: number;
  maxTokensParam: number | null;
}

/** One engine rank's series of every family, resolved once (the hot path does no lookups). */
export class EngineMetrics {
  private readonly running: Series;
  private readonly waiting: Series;
  private readonly waitingCapacity: Series;
  private readonly waitingDeferred: Series;
  private readonly kvUsage: Series;
  private readonly prefixQueries: Series;
  private readonly prefixHits: Series;
  private readonly cachedDevice: Series;
  private readonly cachedHost: Series;
  private readonly preemptions: Series;
  private readonly promptTokens: Series;
  private readonly promptLocalCompute: Series;
  private readonly promptLocalHit: Series;
  private readonly promptExternal: Series;
  private readonly promptCached: Series;
  private readonly generationTokens: Series;
  private readonly success: Map<string, Series>;
  private readonly hist = new Map<Family, Series>();
  /** The histograms observed every token or step, without the map lookup. */
  private readonly itlSeries: Series;
  private readonly iterationSeries: Series;

  constructor(
    private readonly m: VllmMetrics,
    readonly labels: [string, string],
  ) {
    // prometheus_client creates every labelled child up front (create_metric_per_engine).
    for (const f of m.families) {
      if (f.labelNames.length === 2) {
        const s = f.labels(...labels);
        if (f.kind === "histogram") this.hist.set(f, s);
      }
    }
    this.itlSeries = this.hist.get(m.itl)!;
    this.iterationSeries = this.hist.get(m.iterationTokens)!;
    this.waitingCapacity = m.waitingByReason.labels(...labels, "capacity");
    this.waitingDeferred = m.waitingByReason.labels(...labels, "deferred");
    m.sleepState.labels(...labels, "awake").value = 1;
    m.sleepState.labels(...labels, "weights_offloaded");
    m.sleepState.labels(...labels, "discard_all");
    this.promptLocalCompute = m.promptTokensBySource.labels(...labels, "local_compute");
    this.promptLocalHit = m.promptTokensBySource.labels(...labels, "local_cache_hit");
    this.promptExternal = m.promptTokensBySource.labels(...labels, "external_kv_transfer");
    this.cachedDevice = m.promptTokensCachedBySource.labels(...labels, "device");
    this.cachedHost = m.promptTokensCachedBySource.labels(...labels, "host");
    for (const s of CACHE_HIT_SOURCES) m.promptTokensCachedBySource.labels(...labels, s);
    this.success = new Map(FINISH_REASONS.map((r) => [r, m.requestSuccess.labels(...labels, r)]));
    this.running = m.running.labels(...labels);
    this.waiting = m.waiting.labels(...labels);
    this.kvUsage = m.kvUsage.labels(...labels);
    this.prefixQueries = m.prefixQueries.labels(...labels);
    this.prefixHits = m.prefixHits.labels(...labels);
    this.preemptions = m.preemptions.labels(...labels);
    this.promptTokens = m.promptTokens.labels(...labels);
    this.promptCached = m.promptTokensCached.labels(...labels);
    this.generationTokens = m.generationTokens.labels(...labels);
  }

  private observe(family: Family, v: number): void {
    observe(family, this.hist.get(family)!, v);
  }

  /** Scheduler stats after a step. */
  scheduler(running: number, waiting: number, deferred: number, usage: number): void {
    this.running.value = running;
    this.waiting.value = waiting + deferred;
    this.waitingCapacity.value = waiting;
    this.waitingDeferred.value = deferred;
    this.kvUsage.value = usage;
  }

  /** A request admitted with a prefix cache lookup (not counted for resumed preempted ones). */
  prefixCache(queries: number, hits: number): void {
    this.prefixQueries.value += queries;
    this.prefixHits.value += hits;
    this.cachedDevice.value += hits;
  }

  /** Prompt tokens a request loads from the CPU offload tier (OffloadingConnector hits). */
  hostCacheHits(tokens: number): void {
    this.cachedHost.value += tokens;
  }

  preemption(): void {
    this.preemptions.value++;
  }

  /** A request's first token: its prompt counted by source, and its TTFT (from arrival). */
  firstToken(promptTokens: number, localCached: number, externalCached: number, ttft: number): void {
    this.promptTokens.value += promptTokens;
    this.promptLocalCompute.value += promptTokens - localCached - externalCached;
    this.promptLocalHit.value += localCached;
    this.promptExternal.value += externalCached;
    this.promptCached.value += localCached + externalCached;
    this.observe(this.m.ttft, ttft);
  }

  interTokenLatency(itl: number): void {
    observe(this.m.itl, this.itlSeries, itl);
  }

  /** One engine step: tokens computed (prefill) + generated. */
  iteration(promptComputed: number, generated: number): void {
    this.generationTokens.value += generated;
    observe(this.m.iterationTokens, this.iterationSeries, promptComputed + generated);
  }

  requestParams(n: number, maxTokens: number | null): void {
    this.observe(this.m.paramsN, n);
    if (maxTokens !== null) this.observe(this.m.maxNumGenerationTokens, maxTokens);
  }

  finished(f: FinishedRequestStats): void {
    const { m } = this;
    this.success.get(f.finishReason)!.value++;
    this.observe(m.e2e, f.e2eLatency);
    this.observe(m.queueTime, f.queuedTime);
    this.observe(m.prefillTime, f.prefillTime);
    this.observe(m.inferenceTime, f.inferenceTime);
    this.observe(m.decodeTime, f.decodeTime);
    this.observe(m.numPreemptionsHist, f.numPreemptions);
    this.observe(m.prefillKvComputed, f.numPromptTokens - Math.max(f.numCachedTokens, 0));
    this.observe(m.requestPromptTokens, f.numPromptTokens);
    this.observe(m.requestGenerationTokens, f.numGenerationTokens);
    this.observe(m.timePerOutputToken, f.meanTimePerOutputToken);
    if (f.maxTokensParam) this.observe(m.paramsMaxTokens, f.maxTokensParam);
  }
}

/** The registry: vLLM's families in vLLM's registration order. */
export class VllmMetrics {
  readonly families: Family[] = [];
  readonly running: Family;
  readonly waiting: Family;
  readonly waitingByReason: Family;
  readonly sleepState: Family;
  readonly kvUsage: Family;
  readonly prefixQueries: Family;
  readonly prefixHits: Family;
  readonly preemptions: Family;
  readonly promptTokens: Family;
  readonly promptTokensBySource: Family;
  readonly promptTokensCached: Family;
  readonly promptTokensCachedBySource: Family;
  readonly generationTokens: Family;
  readonly requestSuccess: Family;
  readonly requestPromptTokens: Family;
  readonly requestGenerationTokens: Family;
  readonly iterationTokens: Family;
  readonly maxNumGenerationTokens: Family;
  readonly paramsN: Family;
  readonly paramsMaxTokens: Family;
  readonly ttft: Family;
  readonly itl: Family;
  readonly timePerOutputToken: Family;
  readonly e2e: Family;
  readonly queueTime: Family;
  readonly inferenceTime: Family;
  readonly prefillTime: Family;
  readonly decodeTime: Family;
  readonly numPreemptionsHist: Family;
  readonly prefillKvComputed: Family;

  constructor(maxModelLen: number) {
    const L = ["model_name", "engine"];
    const add = (name: string, help: string, kind: Kind, labels = L, buckets: number[] = []) => {
      const f = new Family(name, help, kind, labels, buckets);
      this.families.push(f);
      return f;
    };
    const tokens = buckets125(maxModelLen);
    this.running = add("vllm:num_requests_running", "Number of requests in model execution batches.", "gauge");
    this.waiting = add("vllm:num_requests_waiting", "Number of requests waiting to be processed.", "gauge");
    this.waitingByReason = add(
      "vllm:num_requests_waiting_by_reason",
      "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
      "gauge",
      [...L, "reason"],
    );
    this.sleepState = add(
      "vllm:engine_sleep_state",
      "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
      "gauge",
      [...L, "sleep_state"],
    );
    this.kvUsage = add("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", "gauge");
    this.prefixQueries = add("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", "counter");
    this.prefixHits = add("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", "counter");
    this.preemptions = add("vllm:num_preemptions", "Cumulative number of preemption from the engine.", "counter");
    this.promptTokens = add("vllm:prompt_tokens", "Number of prefill tokens processed.", "counter");
    this.promptTokensBySource = add("vllm:prompt_tokens_by_source", "Number of prompt tokens by source.", "counter", [...L, "source"]);
    this.promptTokensCached = add("vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external).", "counter");
    this.promptTokensCachedBySource = add(
      "vllm:prompt_tokens_cached_by_source",
      "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host (offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.",
      "counter",
      [...L, "source"],
    );
    this.generationTokens = add("vllm:generation_tokens", "Number of generation tokens processed.", "counter");
    this.requestSuccess = add("vllm:request_success", "Count of successfully processed requests.", "counter", [...L, "finished_reason"]);
    this.requestPromptTokens = add("vllm:request_prompt_tokens", "Number of prefill tokens processed.", "histogram", L, tokens);
    this.requestGenerationTokens = add("vllm:request_generation_tokens", "Number of generation tokens processed.", "histogram", L, tokens);
    this.iterationTokens = add("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", "histogram", L, ITERATION_TOKENS);
    this.maxNumGenerationTokens = add(
      "vllm:request_max_num_generation_tokens",
      "Histogram of maximum number of requested generation tokens.",
      "histogram",
      L,
      tokens,
    );
    this.paramsN = add("vllm:request_params_n", "Histogram of the n request parameter.", "histogram", L, PARAMS_N);
    this.paramsMaxTokens = add("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", "histogram", L, tokens);
    this.ttft = add("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", "histogram", L, TTFT);
    this.itl = add("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", "histogram", L, ITL);
    this.timePerOutputToken = add(
      "vllm:request_time_per_output_token_seconds",
      "Histogram of time_per_output_token_seconds per request.",
      "histogram",
      L,
      ITL,
    );
    this.e2e = add("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", "histogram", L, REQUEST_LATENCY);
    this.queueTime = add("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", "histogram", L, REQUEST_LATENCY);
    this.inferenceTime = add("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.", "histogram", L, REQUEST_LATENCY);
    this.prefillTime = add("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", "histogram", L, REQUEST_LATENCY);
    this.decodeTime = add("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", "histogram", L, REQUEST_LATENCY);
    this.numPreemptionsHist = add(
      "vllm:request_num_preemptions",
      "Histogram of the number of times a request was preempted.",
      "histogram",
      L,
      NUM_PREEMPTIONS,
    );
    this.prefillKvComputed = add(
      "vllm:request_prefill_kv_computed_tokens",
      "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
      "histogram",
      L,
      tokens,
    );
  }

  /** The per-rank handle (engine label = the DP rank, as vLLM's engine index). */
  engine(modelName: string, rank: number): EngineMetrics {
    return new EngineMetrics(this, [modelName, String(rank)]);
  }

  /** The text exposition (Content-Type `text/plain; version=0.0.4; charset=utf-8`). */
  render(): string {
    const out: string[] = [];
    for (const f of this.families) f.render(out);
    return out.join("");
  }
}

export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";
