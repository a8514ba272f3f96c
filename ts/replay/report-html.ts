/**
 * The replay's HTML report: one self-contained file (inline CSS and SVG drawn here, no script,
 * no network), readable in any browser and printable. Charts are `<svg data-chart="...">`:
 * `ttft-cdf` (TTFT CDF per policy), `hit-rate` (prefix-cache hit rate over time per policy),
 * `worker-load` (active requests per worker over time, one heatmap per policy) and
 * `worker-requests` (requests routed to each worker); each series is a `<path data-policy>` or
 * a group of `<rect>`s.
 */
import type { PolicyResult } from "./result.js";
import { ms, pct } from "./terminal.js";

export interface ReportInput {
  title?: string;
  /** The command line that produced it. */
  command?: string;
  trace: string;
  traceFormat: string;
  clock: string;
  workers: number;
  /** Requests in the trace (the replayed part). */
  requests: number;
  /** Notes printed under the header (settings). */
  settings: Record<string, string | number>;
  results: readonly PolicyResult[];
  generatedAt?: Date;
  partial?: boolean;
}

const COLORS: Record<string, string> = {
  kv: "#2563eb",
  "round-robin": "#ea580c",
  random: "#9333ea",
  "least-loaded": "#16a34a",
};
const color = (policy: string) => COLORS[policy] ?? "#475569";

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
const f1 = (x: number) => (Math.round(x * 10) / 10).toString();

interface Series {
  name: string;
  color: string;
  /** Points; a null y breaks the line. */
  points: [number, number | null][];
}

interface Axis {
  min: number;
  max: number;
  log?: boolean;
  label: string;
  format: (v: number) => string;
  ticks?: number[];
}

const W = 560;
const H = 300;
const M = { top: 16, right: 16, bottom: 44, left: 56 };

function scale(axis: Axis, size: number, invert: boolean): (v: number) => number {
  const lo = axis.log ? Math.log10(Math.max(axis.min, 1e-9)) : axis.min;
  const hi = axis.log ? Math.log10(Math.max(axis.max, axis.min * 10)) : axis.max;
  const span = hi - lo || 1;
  return (v) => {
    const x = axis.log ? Math.log10(Math.max(v, axis.min)) : v;
    const t = (x - lo) / span;
    return invert ? size * (1 - t) : size * t;
  };
}

function niceTicks(min: number, max: number, count = 5): number[] {
  const span = max - min;
  if (!(span > 0)) return [min];
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((k) => k * mag).find((s) => span / s <= count) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function logTicks(min: number, max: number): number[] {
  const out: number[] = [];
  for (let e = Math.floor(Math.log10(Math.max(min, 1e-9))); 10 ** e <= max * 1.0001; e++) {
    for (const k of [1, 2, 5]) {
      const v = k * 10 ** e;
      if (v >= min * 0.9999 && v <= max * 1.0001) out.push(v);
    }
  }
  return out;
}

function lineChart(id: string, x: Axis, y: Axis, series: Series[], extraAttrs = ""): string {
  const iw = W - M.left - M.right;
  const ih = H - M.top - M.bottom;
  const sx = scale(x, iw, false);
  const sy = scale(y, ih, true);
  const parts: string[] = [];
  parts.push(`<svg class="chart" data-chart="${id}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(id)}"${extraAttrs}>`);
  parts.push(`<g transform="translate(${M.left},${M.top})">`);
  const yt = y.ticks ?? niceTicks(y.min, y.max);
  for (const v of yt) {
    const py = f1(sy(v));
    parts.push(`<line class="grid" x1="0" x2="${iw}" y1="${py}" y2="${py}"/><text class="tick" x="-8" y="${py}" dy="0.32em" text-anchor="end">${esc(y.format(v))}</text>`);
  }
  const xt = x.ticks ?? (x.log ? logTicks(x.min, x.max) : niceTicks(x.min, x.max, 6));
  for (const v of xt) {
    const px = f1(sx(v));
    parts.push(`<line class="grid" x1="${px}" x2="${px}" y1="0" y2="${ih}"/><text class="tick" x="${px}" y="${ih + 16}" text-anchor="middle">${esc(x.format(v))}</text>`);
  }
  parts.push(`<line class="axis" x1="0" x2="${iw}" y1="${ih}" y2="${ih}"/><line class="axis" x1="0" x2="0" y1="0" y2="${ih}"/>`);
  parts.push(`<text class="label" x="${iw / 2}" y="${ih + 36}" text-anchor="middle">${esc(x.label)}</text>`);
  parts.push(`<text class="label" transform="translate(-44,${ih / 2}) rotate(-90)" text-anchor="middle">${esc(y.label)}</text>`);
  for (const s of series) {
    let d = "";
    let pen = false;
    for (const [px, py] of s.points) {
      if (py === null || !Number.isFinite(py)) {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${f1(sx(px))},${f1(sy(Math.min(Math.max(py, y.min), y.max)))}`;
      pen = true;
    }
    parts.push(`<path class="series" data-policy="${esc(s.name)}" d="${d}" stroke="${s.color}"/>`);
  }
  parts.push(`</g></svg>`);
  return parts.join("");
}

function legend(results: readonly PolicyResult[]): string {
  return `<div class="legend">${results.map((r) => `<span><i style="background:${color(r.policy)}"></i>${esc(r.policy)}</span>`).join("")}</div>`;
}

function ttftCdfChart(results: readonly PolicyResult[]): string {
  let lo = Infinity;
  let hi = 0;
  for (const r of results) {
    for (const [v] of r.ttftCdf) {
      if (v > 0) lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
  }
  if (!Number.isFinite(lo)) lo = 1;
  lo = 10 ** Math.floor(Math.log10(lo));
  hi = Math.max(hi, lo * 10);
  const series: Series[] = results.map((r) => ({
    name: r.policy,
    color: color(r.policy),
    // A step function: each point holds until the next value.
    points: r.ttftCdf.flatMap(([v, p], i, all): [number, number][] => (i === 0 ? [[Math.max(v, lo), 0], [Math.max(v, lo), p]] : [[Math.max(v, lo), all[i - 1]![1]], [Math.max(v, lo), p]])),
  }));
  return lineChart(
    "ttft-cdf",
    { min: lo, max: hi, log: true, label: "time to first token (simulated ms, log scale)", format: (v) => (v >= 1000 ? `${v / 1000}s` : `${v}`) },
    { min: 0, max: 1, label: "fraction of requests", format: (v) => `${Math.round(v * 100)}%`, ticks: [0, 0.25, 0.5, 0.75, 1] },
    series,
  );
}

function smooth(values: (number | null)[], window: number): (number | null)[] {
  return values.map((_, i) => {
    let sum = 0;
    let n = 0;
    for (let k = Math.max(0, i - window + 1); k <= i; k++) {
      const v = values[k];
      if (v !== null && v !== undefined) {
        sum += v;
        n++;
      }
    }
    return n > 0 ? sum / n : null;
  });
}

function hitRateChart(results: readonly PolicyResult[]): string {
  let tMax = 0;
  let yMax = 0;
  for (const r of results) tMax = Math.max(tMax, r.timeline.tMs[r.timeline.tMs.length - 1] ?? 0);
  const minutes = tMax > 3 * 60_000;
  const unit = minutes ? 60_000 : 1000;
  const series: Series[] = results.map((r) => {
    const window = Math.max(1, Math.round(r.timeline.tMs.length / 60));
    const ys = smooth(r.timeline.hitRate, window);
    for (const v of ys) if (v !== null) yMax = Math.max(yMax, v);
    return { name: r.policy, color: color(r.policy), points: r.timeline.tMs.map((t, i) => [t / unit, ys[i] ?? null]) };
  });
  const top = Math.min(1, Math.max(0.1, Math.ceil(yMax * 10) / 10));
  return lineChart(
    "hit-rate",
    { min: 0, max: Math.max(tMax / unit, 1e-3), label: `simulated time (${minutes ? "min" : "s"})`, format: (v) => `${v}` },
    { min: 0, max: top, label: "prefix-cache hit rate", format: (v) => `${Math.round(v * 100)}%` },
    series,
  );
}

/** Active requests per worker over time: rows are workers, columns time, darker is busier. */
function workerLoadHeatmap(r: PolicyResult, vmax: number): string {
  const rows = r.timeline.active;
  const n = rows.length;
  const samples = rows[0]?.length ?? 0;
  const cols = Math.min(samples, 240);
  const iw = W - M.left - M.right;
  const rowH = Math.max(8, Math.min(22, 220 / Math.max(n, 1)));
  const ih = rowH * n;
  const h = ih + 44;
  const cw = cols > 0 ? iw / cols : iw;
  const c = color(r.policy);
  const parts: string[] = [`<svg class="chart heat" data-chart="worker-load" data-policy="${esc(r.policy)}" viewBox="0 0 ${W} ${h}" role="img" aria-label="worker load ${esc(r.policy)}">`];
  parts.push(`<g transform="translate(${M.left},8)">`);
  for (let w = 0; w < n; w++) {
    const row = rows[w]!;
    parts.push(`<g data-worker="${esc(r.perWorker[w]?.id ?? String(w))}">`);
    for (let k = 0; k < cols; k++) {
      const from = Math.floor((k * samples) / cols);
      const to = Math.max(from + 1, Math.floor(((k + 1) * samples) / cols));
      let sum = 0;
      for (let i = from; i < to; i++) sum += row[i] ?? 0;
      const v = sum / (to - from);
      const op = vmax > 0 ? Math.min(1, v / vmax) : 0;
      if (op < 0.02) continue;
      parts.push(`<rect x="${f1(k * cw)}" y="${f1(w * rowH)}" width="${f1(cw + 0.4)}" height="${f1(rowH - 1)}" fill="${c}" fill-opacity="${op.toFixed(2)}"/>`);
    }
    parts.push(`</g><text class="tick" x="-8" y="${f1(w * rowH + rowH / 2)}" dy="0.32em" text-anchor="end">${esc(r.perWorker[w]?.id.replace("worker-", "w") ?? String(w))}</text>`);
  }
  parts.push(`<rect class="frame" x="0" y="0" width="${iw}" height="${f1(ih)}"/>`);
  const tMax = r.timeline.tMs[r.timeline.tMs.length - 1] ?? 0;
  const minutes = tMax > 3 * 60_000;
  const unit = minutes ? 60_000 : 1000;
  for (const v of niceTicks(0, tMax / unit, 6)) {
    const px = f1((v / Math.max(tMax / unit, 1e-9)) * iw);
    parts.push(`<text class="tick" x="${px}" y="${f1(ih + 16)}" text-anchor="middle">${v}</text>`);
  }
  parts.push(`<text class="label" x="${iw / 2}" y="${f1(ih + 34)}" text-anchor="middle">simulated time (${minutes ? "min" : "s"}) · ${esc(r.policy)} · darker = more active requests (max ${f1(vmax)})</text>`);
  parts.push(`</g></svg>`);
  return parts.join("");
}

function workerRequestsChart(results: readonly PolicyResult[]): string {
  const n = Math.max(...results.map((r) => r.perWorker.length), 1);
  const iw = W - M.left - M.right;
  const ih = H - M.top - M.bottom;
  let max = 0;
  for (const r of results) for (const w of r.perWorker) max = Math.max(max, w.requests);
  const yt = niceTicks(0, max || 1);
  const top = yt[yt.length - 1]! < max ? max : yt[yt.length - 1]!;
  const group = iw / n;
  const bw = (group * 0.8) / results.length;
  const parts: string[] = [`<svg class="chart" data-chart="worker-requests" viewBox="0 0 ${W} ${H}" role="img" aria-label="requests per worker">`];
  parts.push(`<g transform="translate(${M.left},${M.top})">`);
  for (const v of yt) {
    const py = f1(ih * (1 - v / (top || 1)));
    parts.push(`<line class="grid" x1="0" x2="${iw}" y1="${py}" y2="${py}"/><text class="tick" x="-8" y="${py}" dy="0.32em" text-anchor="end">${v.toLocaleString("en-US")}</text>`);
  }
  results.forEach((r, p) => {
    parts.push(`<g data-policy="${esc(r.policy)}" fill="${color(r.policy)}">`);
    r.perWorker.forEach((w, i) => {
      const hgt = ih * (w.requests / (top || 1));
      parts.push(`<rect x="${f1(i * group + group * 0.1 + p * bw)}" y="${f1(ih - hgt)}" width="${f1(bw)}" height="${f1(hgt)}"><title>${esc(r.policy)} ${esc(w.id)}: ${w.requests} requests, hit rate ${pct(w.hitRate)}, mean active ${w.meanActive}</title></rect>`);
    });
    parts.push(`</g>`);
  });
  for (let i = 0; i < n; i++) parts.push(`<text class="tick" x="${f1(i * group + group / 2)}" y="${ih + 16}" text-anchor="middle">w${i}</text>`);
  parts.push(`<line class="axis" x1="0" x2="${iw}" y1="${ih}" y2="${ih}"/>`);
  parts.push(`<text class="label" x="${iw / 2}" y="${ih + 36}" text-anchor="middle">worker</text>`);
  parts.push(`<text class="label" transform="translate(-44,${ih / 2}) rotate(-90)" text-anchor="middle">requests routed</text>`);
  parts.push(`</g></svg>`);
  return parts.join("");
}

function summaryTable(results: readonly PolicyResult[]): string {
  const head = ["policy", "hit rate", "TTFT p50", "TTFT p90", "TTFT p99", "E2E p50", "E2E p90", "E2E p99", "output tok/s", "imbalance", "router µs/req", "completed"];
  const rows = results.map((r) =>
    [
      `<span class="dot" style="background:${color(r.policy)}"></span>${esc(r.policy)}${r.partial ? " <em>(partial)</em>" : ""}`,
      pct(r.hitRate),
      ms(r.ttftMs.p50),
      ms(r.ttftMs.p90),
      ms(r.ttftMs.p99),
      ms(r.e2eMs.p50),
      ms(r.e2eMs.p90),
      ms(r.e2eMs.p99),
      Math.round(r.throughput).toLocaleString("en-US"),
      r.imbalance.toFixed(2),
      r.routerCpuUsPerRequest.toFixed(1),
      `${r.completed.toLocaleString("en-US")}${r.failed > 0 ? ` (${r.failed} failed)` : ""}`,
    ].map((c) => `<td>${c}</td>`),
  );
  return `<table class="summary"><thead><tr>${head.map((h) => `<th>${h}</th>`).join("")}</tr></thead><tbody>${rows.map((r) => `<tr>${r.join("")}</tr>`).join("")}</tbody></table>`;
}

function cards(results: readonly PolicyResult[]): string {
  const kv = results.find((r) => r.policy === "kv");
  return results
    .map((r) => {
      let delta = "";
      if (kv && r !== kv && r.ttftMs.p50 > 0) {
        delta = `<p class="delta">kv: ${r.hitRate > 0 ? `${(kv.hitRate / r.hitRate).toFixed(1)}× the hit rate, ` : ""}${Math.round((1 - kv.ttftMs.p50 / r.ttftMs.p50) * 100)}% lower TTFT p50</p>`;
      }
      return `<div class="card" style="border-top-color:${color(r.policy)}"><h3>${esc(r.policy)}</h3><div class="big"><div><b>${pct(r.hitRate)}</b><span>prefix-cache hit rate</span></div><div><b>${ms(r.ttftMs.p50)}</b><span>TTFT p50</span></div><div><b>${ms(r.ttftMs.p99)}</b><span>TTFT p99</span></div></div>${delta}</div>`;
    })
    .join("");
}

const CSS = `
:root{--fg:#0f172a;--muted:#64748b;--line:#e2e8f0;--bg:#f8fafc}
*{box-sizing:border-box}body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1200px;margin:0 auto;padding:28px 24px 40px}
header h1{margin:0;font-size:24px}header p{margin:4px 0;color:var(--muted)}
code{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#eef2f7;padding:2px 6px;border-radius:4px;word-break:break-all}
h2{font-size:16px;margin:28px 0 10px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:14px;margin-top:18px}
.card{background:#fff;border:1px solid var(--line);border-top:4px solid;border-radius:8px;padding:12px 16px}
.card h3{margin:0 0 6px;font-size:15px}.big{display:flex;gap:22px}.big b{display:block;font-size:22px}.big span{color:var(--muted);font-size:12px}
.delta{margin:8px 0 0;color:var(--muted);font-size:12px}
table.summary{width:100%;border-collapse:collapse;background:#fff;border:1px solid var(--line);border-radius:8px;overflow:hidden}
.summary th,.summary td{padding:7px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
.summary th:first-child,.summary td:first-child{text-align:left}.summary th{background:#f1f5f9;font-weight:600;font-size:12px;color:#334155}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:6px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:16px}
figure{margin:0;background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 14px}
figcaption{font-weight:600;margin-bottom:2px}figcaption small{display:block;font-weight:400;color:var(--muted)}
svg.chart{width:100%;height:auto;display:block}
.chart .grid{stroke:#eef2f7}.chart .axis{stroke:#94a3b8}.chart .tick{font-size:11px;fill:#64748b}.chart .label{font-size:11.5px;fill:#334155}
.chart .series{fill:none;stroke-width:2.2;stroke-linejoin:round}.chart .frame{fill:none;stroke:#cbd5e1}
.legend{display:flex;gap:16px;margin:4px 0 2px;font-size:12px;color:#334155}.legend i{display:inline-block;width:14px;height:3px;margin-right:6px;vertical-align:middle}
dl.settings{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:12px;color:#334155;margin:10px 0 0}dl.settings dt{color:var(--muted)}dl.settings dd{margin:0}
footer{margin-top:28px;color:var(--muted);font-size:12px}
.partial{background:#fef3c7;border:1px solid #f59e0b;border-radius:6px;padding:8px 12px;margin-top:12px}
`;

export function renderReport(input: ReportInput): string {
  const { results } = input;
  const when = (input.generatedAt ?? new Date()).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  let vmax = 0;
  for (const r of results) for (const row of r.timeline.active) for (const v of row) vmax = Math.max(vmax, v);
  const title = input.title ?? "kvroute replay";
  const traceName = input.trace.split(/[\\/]/).pop() ?? input.trace;
  const settings = Object.entries(input.settings)
    .map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(String(v))}</dd>`)
    .join("");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>${esc(title)} — ${esc(traceName)}</title><style>${CSS}</style></head>
<body><main>
<header><h1>${esc(title)}</h1>
<p>${esc(traceName)} (${esc(input.traceFormat)}) · ${input.requests.toLocaleString("en-US")} requests · ${input.workers} workers · ${esc(input.clock)} clock · ${esc(when)}</p>
${input.command ? `<p><code>${esc(input.command)}</code></p>` : ""}
${input.partial ? `<p class="partial">Stopped early: the numbers cover the requests that completed.</p>` : ""}
</header>
<section class="cards">${cards(results)}</section>
<h2>Summary</h2>
${summaryTable(results)}
<dl class="settings">${settings}</dl>
<h2>Latency and cache</h2>
<div class="grid2">
<figure><figcaption>Time to first token, CDF<small>Arrival to first token, simulated time. Further left is faster.</small></figcaption>${legend(results)}${ttftCdfChart(results)}</figure>
<figure><figcaption>Prefix-cache hit rate over time<small>Cached prompt tokens / prompt tokens per interval, from the workers' own vllm:prefix_cache_* counters (smoothed).</small></figcaption>${legend(results)}${hitRateChart(results)}</figure>
</div>
<h2>Per-worker load</h2>
<div class="grid2">
${results.map((r) => `<figure><figcaption>Active requests per worker — ${esc(r.policy)}<small>Running + waiting requests on each worker (its own gauges); imbalance (max / mean) ${r.imbalance.toFixed(2)}.</small></figcaption>${workerLoadHeatmap(r, vmax)}</figure>`).join("\n")}
<figure><figcaption>Requests routed to each worker</figcaption>${legend(results)}${workerRequestsChart(results)}</figure>
</div>
<footer>Generated by kvroute replay (docs/replay.md). Latencies and throughput are the simulated engines' clock (the mocker's timing model); router µs/req is the time spent in the router per request on the machine that ran the replay.</footer>
</main></body></html>
`;
}
