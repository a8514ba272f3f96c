/**
 * runReplay(): a trace replayed once per routing policy, on the virtual clock (virtual-replay.ts)
 * or the real one (live-replay.ts), and the reports (`--json`, `--html`) of the results.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import type { RouterMode } from "../router/types.js";
import { DEFAULT_SPEEDUP, runLiveReplay } from "./live-replay.js";
import { renderReport } from "./report-html.js";
import type { PolicyResult, ReplayClock, RequestRecord } from "./result.js";
import type { Trace } from "./trace.js";
import { engineProfile } from "../mocker/profiles.js";
import type { ReplayEngineImpl } from "./rust-engines.js";
import { fleetEngine, REPLAY_DEFAULTS, runVirtualReplay, type FleetSettings, type ReplayProgress } from "./virtual-replay.js";

export interface ReplayOptions extends FleetSettings {
  trace: Trace;
  policies: readonly RouterMode[];
  /** Default "virtual". */
  clock?: ReplayClock;
  /** Real clock: simulated / wall time. Default 5. */
  speedup?: number;
  /** Virtual clock: KV event delay, simulated ms. Default 5. */
  eventDelayMs?: number;
  /** Virtual clock: fraction of KV event batches lost. Default 0. */
  eventDropRate?: number;
  /** Virtual clock: which engine steps the workers (`runVirtualReplay`'s `engineImpl`). */
  engineImpl?: ReplayEngineImpl;
  seed?: number;
  signal?: AbortSignal;
  onProgress?: (progress: ReplayProgress) => void;
  /** Each completed request. */
  onRequest?: (record: RequestRecord) => void;
  /** Called as each policy finishes. */
  onResult?: (result: PolicyResult) => void;
  /** Real clock: worker output lines. */
  workerLog?: ((line: string) => void) | null;
}

/** Replays the trace for each policy in turn (each on a fresh fleet); stops early on abort. */
export async function runReplay(options: ReplayOptions): Promise<PolicyResult[]> {
  const results: PolicyResult[] = [];
  for (const policy of options.policies) {
    if (options.signal?.aborted) break;
    const common = { ...options, policy };
    const result = options.clock === "real" ? await runLiveReplay(common) : await runVirtualReplay(common);
    results.push(result);
    options.onResult?.(result);
  }
  return results;
}

export interface ReportMeta {
  command?: string;
  trace: Trace;
  clock: ReplayClock;
  workers: number;
  settings: Record<string, string | number>;
  title?: string;
}

/** Writes `--json` (an array, one object per policy) and/or `--html`; returns the absolute paths. */
export function writeReports(results: readonly PolicyResult[], meta: ReportMeta, files: { json?: string; html?: string }): { json?: string; html?: string } {
  const out: { json?: string; html?: string } = {};
  if (files.json) {
    out.json = resolve(files.json);
    mkdirSync(dirname(out.json), { recursive: true });
    writeFileSync(out.json, `${JSON.stringify(results, null, 2)}\n`);
  }
  if (files.html) {
    out.html = resolve(files.html);
    mkdirSync(dirname(out.html), { recursive: true });
    writeFileSync(
      out.html,
      renderReport({
        title: meta.title,
        command: meta.command,
        trace: meta.trace.file,
        traceFormat: meta.trace.format,
        clock: meta.clock,
        workers: meta.workers,
        requests: meta.trace.requests.length,
        settings: meta.settings,
        results,
        partial: results.some((r) => r.partial),
      }),
    );
  }
  return out;
}

/**
 * The share of the fleet's time the trace's prompts would take to prefill with no cache hit
 * (the timing model's prefill and attention terms, over the arrival span): how loaded the fleet
 * is, before caching. Null for a trace without a time span.
 */
export function prefillLoad(trace: Trace, o: FleetSettings): number | null {
  const reqs = trace.requests;
  if (reqs.length < 2) return null;
  const span = reqs[reqs.length - 1]!.timestampMs - reqs[0]!.timestampMs;
  if (!(span > 0)) return null;
  const t = { ...engineProfile(fleetEngine(o).profile).timing, ...o.engine?.timing };
  let busyMs = 0;
  for (const r of reqs) busyMs += r.inputLength * t.prefillPerTokenMs + (t.attentionPerTokenPairMs * r.inputLength * r.inputLength) / 2;
  return busyMs / (span * o.workers);
}

/** One line on the fleet a replay runs: workers, their profile and cache, the load before caching. */
export function describeFleet(o: FleetSettings, trace: Trace): string {
  const fleet = fleetEngine(o);
  const load = prefillLoad(trace, o);
  const blocks = `${fleet.numGpuBlocks.toLocaleString("en-US")} KV blocks of ${o.blockSize ?? REPLAY_DEFAULTS.blockSize} tokens each`;
  const loadText = load === null ? "" : `; the prompts' prefill without cache hits takes ${(load * 100).toFixed(0)}% of the fleet's time`;
  return `fleet: ${o.workers} x ${fleet.profile} (${engineProfile(fleet.profile).description}), ${blocks}${loadText}`;
}

/** The settings a report lists, from the replay options (and the trace, for the load). */
export function describeSettings(o: Omit<ReplayOptions, "trace" | "policies">, trace?: Trace): Record<string, string | number> {
  const fleet = fleetEngine(o);
  const s: Record<string, string | number> = {
    clock: o.clock ?? "virtual",
    workers: o.workers,
    "block size": o.blockSize ?? REPLAY_DEFAULTS.blockSize,
    "engine profile": `${fleet.profile} (${engineProfile(fleet.profile).description})`,
    "KV blocks per worker": fleet.numGpuBlocks,
  };
  const load = trace ? prefillLoad(trace, o) : null;
  if (load !== null) s["prefill load, no cache hits"] = `${(load * 100).toFixed(0)}% of the fleet's time`;
  s["metrics scrape"] = `${o.metricsScrapeIntervalMs ?? REPLAY_DEFAULTS.metricsScrapeIntervalMs} ms`;
  if ((o.clock ?? "virtual") === "virtual") {
    s["KV event delay"] = `${o.eventDelayMs ?? REPLAY_DEFAULTS.eventDelayMs} ms`;
    s["KV events dropped"] = `${((o.eventDropRate ?? 0) * 100).toFixed(1)}%`;
  } else {
    s["speedup"] = `${o.speedup ?? DEFAULT_SPEEDUP}x`;
  }
  if (o.router && Object.keys(o.router).length > 0) s["router options"] = JSON.stringify(o.router);
  if (o.engine?.timing) s["timing model"] = JSON.stringify(o.engine.timing);
  return s;
}
