/**
 * What the supervisor asks a running engine over HTTP: `GET /health` (200 when ready, as vLLM's
 * API server answers), and `GET /metrics` (Prometheus text) for the in-flight request count
 * (`vllm:num_requests_running` + `vllm:num_requests_waiting`, summed over label sets such as DP
 * engines) and the cache configuration (`vllm:cache_config_info` labels).
 */

export interface ProbeResult {
  ok: boolean;
  /** `HTTP 503`, `ECONNREFUSED`, `timeout`... when not ok. */
  detail?: string;
}

export async function probeHealth(baseUrl: string, timeoutMs: number): Promise<ProbeResult> {
  try {
    const res = await fetch(`${baseUrl}/health`, { signal: AbortSignal.timeout(timeoutMs) });
    await res.arrayBuffer().catch(() => undefined);
    return res.status === 200 ? { ok: true } : { ok: false, detail: `HTTP ${res.status}` };
  } catch (err) {
    return { ok: false, detail: describeFetchError(err) };
  }
}

export async function fetchMetrics(baseUrl: string, timeoutMs: number): Promise<string> {
  const res = await fetch(`${baseUrl}/metrics`, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`GET ${baseUrl}/metrics: HTTP ${res.status}`);
  return text;
}

export interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * Parses the Prometheus text exposition format (samples only; comments and bad lines skipped).
 * With `only`, lines of other metrics are skipped before their labels are parsed: a vLLM /metrics
 * page holds hundreds of histogram lines and the router reads three gauges of it on every scrape.
 */
export function parsePrometheus(text: string, only?: ReadonlySet<string>): PromSample[] {
  const out: PromSample[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.length === 0 || line.startsWith("#")) continue;
    const brace = line.indexOf("{");
    const space = line.indexOf(" ");
    if (only !== undefined) {
      const end = brace >= 0 && (space < 0 || brace < space) ? brace : space;
      if (end < 0 || !only.has(line.slice(0, end))) continue;
    }
    let name: string;
    let labels: Record<string, string> = {};
    let rest: string;
    if (brace >= 0 && (space < 0 || brace < space)) {
      name = line.slice(0, brace);
      const close = findLabelsEnd(line, brace + 1);
      if (close < 0) continue;
      labels = parseLabels(line.slice(brace + 1, close));
      rest = line.slice(close + 1).trim();
    } else {
      if (space < 0) continue;
      name = line.slice(0, space);
      rest = line.slice(space + 1).trim();
    }
    const valueText = rest.split(/\s+/)[0] ?? "";
    const value = valueText === "+Inf" ? Infinity : valueText === "-Inf" ? -Infinity : Number(valueText);
    if (valueText === "" || Number.isNaN(value)) continue;
    out.push({ name, labels, value });
  }
  return out;
}

function findLabelsEnd(line: string, from: number): number {
  let inString = false;
  for (let i = from; i < line.length; i++) {
    const ch = line[i];
    if (inString) {
      if (ch === "\\") i++;
      else if (ch === '"') inString = false;
    } else if (ch === '"') inString = true;
    else if (ch === "}") return i;
  }
  return -1;
}

function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  const re = /\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?/g;
  let m: RegExpExecArray | null;
  while ((m = re.exec(text)) !== null) {
    labels[m[1]!] = m[2]!.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
  }
  return labels;
}

const IN_FLIGHT_METRICS: ReadonlySet<string> = new Set(["vllm:num_requests_running", "vllm:num_requests_waiting"]);

/** Running + waiting requests, summed over every label set; null when neither metric is present. */
export function inFlightRequests(metricsText: string): number | null {
  let total = 0;
  let seen = false;
  for (const s of parsePrometheus(metricsText, IN_FLIGHT_METRICS)) {
    if (s.name === "vllm:num_requests_running" || s.name === "vllm:num_requests_waiting") {
      total += s.value;
      seen = true;
    }
  }
  return seen ? total : null;
}

/** What `vllm:cache_config_info` says (vLLM exports CacheConfig as labels of this gauge). */
export function cacheConfigInfo(metricsText: string): { blockSize?: number; numGpuBlocks?: number; hashAlgorithm?: string } {
  const sample = parsePrometheus(metricsText).find((s) => s.name === "vllm:cache_config_info");
  if (!sample) return {};
  const int = (v: string | undefined) => (v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined);
  const out: { blockSize?: number; numGpuBlocks?: number; hashAlgorithm?: string } = {};
  const blockSize = int(sample.labels["block_size"]);
  const numGpuBlocks = int(sample.labels["num_gpu_blocks"]);
  const algo = sample.labels["prefix_caching_hash_algo"];
  if (blockSize !== undefined) out.blockSize = blockSize;
  if (numGpuBlocks !== undefined) out.numGpuBlocks = numGpuBlocks;
  if (algo) out.hashAlgorithm = algo;
  return out;
}

function describeFetchError(err: unknown): string {
  if (err instanceof Error) {
    if (err.name === "TimeoutError" || err.name === "AbortError") return "timeout";
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    if (cause?.code) return cause.code;
    if (cause?.message) return cause.message;
    return err.message;
  }
  return String(err);
}
