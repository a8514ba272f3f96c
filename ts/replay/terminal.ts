/** The replay's terminal output: the results table and a one-line progress bar. */
import type { PolicyResult } from "./result.js";

/** Simulated milliseconds as the tables show them: "413 ms", "14.4 s" from 10 s on. */
export const ms = (x: number) => (x >= 10_000 ? `${(x / 1000).toFixed(1)} s` : `${Math.round(x)} ms`);
/** A fraction as a percentage with one decimal. */
export const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

/** The results as an aligned text table, one row per policy. */
export function resultsTable(results: readonly PolicyResult[]): string {
  const tiers = results.some((r) => (r.prefixCacheHostHits ?? 0) > 0);
  const header = ["policy", tiers ? "hit rate GPU / all tiers" : "hit rate", "TTFT p50", "TTFT p90", "TTFT p99", "E2E p50", "E2E p99", "output tok/s", "imbalance", "router µs/req"];
  const rows = results.map((r) => [
    r.policy + (r.partial ? " (partial)" : ""),
    tiers ? `${pct(r.hitRate)} / ${pct(r.hitRateAllTiers ?? r.hitRate)}` : pct(r.hitRate),
    ms(r.ttftMs.p50),
    ms(r.ttftMs.p90),
    ms(r.ttftMs.p99),
    ms(r.e2eMs.p50),
    ms(r.e2eMs.p99),
    Math.round(r.throughput).toLocaleString("en-US"),
    r.imbalance.toFixed(2),
    r.routerCpuUsPerRequest.toFixed(1),
  ]);
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((row) => row[c]!.length)));
  const line = (cells: string[]) => cells.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join("  ");
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n");
}

/** "kv vs round-robin: hit rate 2.9x, TTFT p50 -63%" lines comparing each policy with the first. */
export function comparison(results: readonly PolicyResult[]): string[] {
  if (results.length < 2) return [];
  const [base, ...others] = results;
  const kv = results.find((r) => r.policy === "kv");
  const ref = kv ?? base!;
  const out: string[] = [];
  for (const r of kv ? results.filter((x) => x !== kv) : others) {
    const hit = r.hitRate > 0 ? `${(ref.hitRate / r.hitRate).toFixed(1)}x the hit rate` : `hit rate ${pct(ref.hitRate)} vs 0`;
    const ttft = r.ttftMs.p50 > 0 ? `${Math.round((1 - ref.ttftMs.p50 / r.ttftMs.p50) * 100)}% lower TTFT p50` : "";
    out.push(`${ref.policy} vs ${r.policy}: ${hit}, ${ttft}`.replace(/, $/, ""));
  }
  return out;
}

/** Between two plain progress lines on a stream that is not a terminal. */
const PLAIN_INTERVAL_MS = 5000;

/** A progress line redrawn in place on a TTY stream (a plain line now and then on others). */
export class ProgressBar {
  private last = 0;
  private drawn = false;

  constructor(private readonly stream: NodeJS.WriteStream) {}

  get enabled(): boolean {
    return this.stream.isTTY === true;
  }

  update(label: string, done: number, total: number, detail: string, force = false): void {
    const now = performance.now();
    if (!this.enabled) {
      // Not a terminal (CI logs, pipes): a plain line now and then, the first once something
      // completed, so a long run shows signs of life (and a caller can wait for progress).
      if (done === 0 || (!force && this.last > 0 && now - this.last < PLAIN_INTERVAL_MS)) return;
      this.last = now;
      this.stream.write(`${label}: ${done.toLocaleString("en-US")}/${total.toLocaleString("en-US")} done  ${detail}\n`);
      return;
    }
    if (!force && now - this.last < 100) return;
    this.last = now;
    const width = 28;
    const frac = total > 0 ? Math.min(1, done / total) : 0;
    const full = Math.round(frac * width);
    const bar = "█".repeat(full) + "░".repeat(width - full);
    const text = `${label.padEnd(12)} ${bar} ${String(Math.round(frac * 100)).padStart(3)}%  ${done.toLocaleString("en-US")}/${total.toLocaleString("en-US")}  ${detail}`;
    const cols = this.stream.columns ?? 100;
    this.stream.write(`\r${text.slice(0, cols - 1)}\x1b[K`);
    this.drawn = true;
  }

  /** Clears the line (before other output). */
  clear(): void {
    if (this.drawn && this.enabled) this.stream.write("\r\x1b[K");
    this.drawn = false;
  }
}

export function formatSimTime(ms: number): string {
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}` : `${m}:${String(sec).padStart(2, "0")}`;
}
