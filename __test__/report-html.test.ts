/**
 * The replay's HTML report renders in a real browser (Debian's `chromium`, driven headless by
 * playwright-core; no browser is downloaded) and its charts are there: a TTFT CDF and a hit-rate
 * line per policy, a worker-load heatmap per policy, the per-worker request bars.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { renderReport } from "../ts/replay/report-html.js";
import type { PolicyResult } from "../ts/replay/result.js";
import { runVirtualReplay } from "../ts/replay/virtual-replay.js";
import { chatWorkload } from "../ts/replay/workload.js";

const CHROMIUM = process.env.KVROUTE_CHROMIUM ?? "/usr/bin/chromium";
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) console.warn(`report-html.test: ${CHROMIUM} not found (apt-get install chromium): skipped`);

describe.skipIf(!haveChromium)("HTML report in headless Chromium", () => {
  let browser: Browser;
  let dir: string;
  let results: PolicyResult[];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "kvroute-report-"));
    const trace = chatWorkload({ conversations: 40, horizonS: 60 });
    results = [];
    for (const policy of ["kv", "round-robin"] as const) results.push(await runVirtualReplay({ trace, policy, workers: 4, numGpuBlocks: 8000 }));
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      // playwright-core gives each launch a fresh temporary profile (--user-data-dir).
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
  });

  afterAll(async () => {
    await browser?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("loads without errors or requests and shows every chart", async () => {
    const file = join(dir, "report.html");
    writeFileSync(
      file,
      renderReport({
        command: "kvroute replay --trace chat.jsonl --workers 4",
        trace: "chat.jsonl",
        traceFormat: "mooncake",
        clock: "virtual",
        workers: 4,
        requests: results[0]!.requests,
        settings: { workers: 4 },
        results,
      }),
    );
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const problems: string[] = [];
    const requests: string[] = [];
    page.on("console", (m) => {
      if (m.type() === "error" || m.type() === "warning") problems.push(m.text());
    });
    page.on("pageerror", (e) => problems.push(e.message));
    page.on("request", (r) => requests.push(r.url()));
    await page.goto(`file://${file}`, { waitUntil: "load" });

    // Self-contained: the file itself is the only request.
    expect(requests).toEqual([`file://${file}`]);
    expect(problems).toEqual([]);
    expect(await page.title()).toContain("kvroute replay");

    const charts = await page.$$eval("svg[data-chart]", (svgs) =>
      svgs.map((svg) => {
        const box = svg.getBoundingClientRect();
        return {
          chart: svg.getAttribute("data-chart"),
          policy: svg.getAttribute("data-policy"),
          width: box.width,
          height: box.height,
          paths: [...svg.querySelectorAll("path[data-policy]")].map((p) => ({
            policy: p.getAttribute("data-policy"),
            length: (p as SVGPathElement).getTotalLength(),
            points: (p.getAttribute("d") ?? "").split(/[ML]/).filter(Boolean).length,
          })),
          rects: svg.querySelectorAll("rect").length,
        };
      }),
    );
    const byName = (name: string) => charts.filter((c) => c.chart === name);
    for (const c of charts) {
      expect(c.width, `${c.chart} width`).toBeGreaterThan(200);
      expect(c.height, `${c.chart} height`).toBeGreaterThan(100);
    }
    for (const name of ["ttft-cdf", "hit-rate"]) {
      const [chart] = byName(name);
      expect(chart, name).toBeDefined();
      expect(chart!.paths.map((p) => p.policy)).toEqual(["kv", "round-robin"]);
      for (const p of chart!.paths) {
        expect(p.points, `${name} ${p.policy}`).toBeGreaterThan(10);
        expect(p.length, `${name} ${p.policy}`).toBeGreaterThan(100);
      }
    }
    const heatmaps = byName("worker-load");
    expect(heatmaps.map((c) => c.policy)).toEqual(["kv", "round-robin"]);
    for (const h of heatmaps) expect(h.rects).toBeGreaterThan(20);
    const [bars] = byName("worker-requests");
    expect(bars!.rects).toBe(2 * 4);

    // The summary table: one row per policy, the hit rates as computed.
    const rows = await page.$$eval("table.summary tbody tr", (trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent?.trim())));
    expect(rows.map((r) => r[0])).toEqual(["kv", "round-robin"]);
    expect(rows[0]![1]).toBe(`${(results[0]!.hitRate * 100).toFixed(1)}%`);
    await page.close();
  });
});
