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
import { REPLAY_DEFAULTS, runVirtualReplay, type FleetSettings, type ReplayProgress } from "./virtual-replay.js";

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

/** The settings a report lists, from the replay options. */
export function describeSettings(o: Omit<ReplayOptions, "trace" | "policies">): Record<string, string | number> {
  const s: Record<string, string | number> = {
    clock: o.clock ?? "virtual",
    workers: o.workers,
    "block size": o.blockSize ?? REPLAY_DEFAULTS.blockSize,
    "KV blocks per worker": o.numGpuBlocks ?? REPLAY_DEFAULTS.numGpuBlocks,
    "metrics scrape": `${o.metricsScrapeIntervalMs ?? REPLAY_DEFAULTS.metricsScrapeIntervalMs} ms`,
  };
  if ((o.clock ?? "virtual") === "virtual") {
    s["KV event delay"] = `${o.eventDelayMs ?? REPLAY_DEFAULTS.eventDelayMs} ms`;
    s["KV events dropped"] = `${((o.eventDropRate ?? 0) * 100).toFixed(1)}%`;
  } else {
    s["speedup"] = `${o.speedup ?? DEFAULT_SPEEDUP}x`;
  }
  if (o.router && Object.keys(o.router).length > 0) s["router options"] = JSON.stringify(o.router);
  s["timing model"] = "mocker defaults (Llama-3.1-8B on one H100)";
  if (o.engine?.timing) s["timing model"] = JSON.stringify(o.engine.timing);
  return s;
}
