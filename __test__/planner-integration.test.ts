/**
 * The SLA planner driving real mocker processes behind a real gateway: a replayed load whose rate
 * steps up 4x and back down. The planner (LocalConnector: VllmWorker + the gateway's registry)
 * adds workers before TTFT p90 has been over its target for more than one interval, drains and
 * stops them after the drop, and no request is lost; the same load on a fixed fleet sized for the
 * low rate misses the target. Wall time is kept short: 1 s adjustment intervals, ~20 s of load.
 *
 * Units: mockers run at --speedup 1 (simulated ms = wall ms), so the profile swept from the same
 * engine settings (sweepMockEngine) is in the gateway's units. TTFT is measured by the client.
 */
import { afterEach, describe, expect, it } from "vitest";
import { startGateway, type RunningGateway } from "../ts/gateway/index.js";
import { DryRunConnector } from "../ts/planner/connector.js";
import { GatewayMetricsSource } from "../ts/planner/gateway-source.js";
import { LocalConnector } from "../ts/planner/local-connector.js";
import { sweepMockEngine } from "../ts/planner/mock-profiler.js";
import { PlannerLoop } from "../ts/planner/planner-loop.js";
import { PlannerMetrics } from "../ts/planner/planner-metrics.js";
import { SlaPlanner } from "../ts/planner/sla-planner.js";
import { findFreePortRange, mockerCommand, type VllmWorkerConfig } from "../ts/workers/index.js";
import { agent, MODEL, startMockWorker } from "./helpers/gateway-fleet.js";
import { request } from "undici";

const BLOCKS = 4000;
const PROMPT = 6000;
const OUTPUT = 16;
const TARGETS = { ttftMs: 900, itlMs: 60 };
/** Requests per second in each phase: low, 4x, low. */
const PHASES: [number, number][] = [
  [1.5, 4],
  [6, 9],
  [1.5, 9],
];

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

let salt = 1;
/** A prompt of distinct token ids (no prefix shared with any other request). */
function prompt(): number[] {
  const base = (salt++ * 104729) % 20000;
  return Array.from({ length: PROMPT }, (_, i) => 100 + ((base + i * 7) % 25000));
}

interface Outcome {
  sentAt: number;
  ttftMs: number;
  ok: boolean;
  /** What went wrong, for the failure message. */
  detail?: string;
}

/** One streaming completion; ok when the stream ends with a finish_reason and [DONE]. */
async function send(url: string, t0: number): Promise<Outcome> {
  const sentAt = performance.now() - t0;
  const start = performance.now();
  let first = -1;
  try {
    const res = await request(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, prompt: prompt(), max_tokens: OUTPUT, ignore_eos: true, stream: true }),
      dispatcher: agent,
    });
    let text = "";
    for await (const chunk of res.body) {
      if (first < 0) first = performance.now() - start;
      text += chunk.toString();
    }
    const ok = res.statusCode === 200 && text.includes('"finish_reason":"length"') && text.includes("[DONE]");
    return { sentAt, ttftMs: first, ok, ...(ok ? {} : { detail: `${res.statusCode} ${text.slice(-300)}` }) };
  } catch (err) {
    return { sentAt, ttftMs: first, ok: false, detail: String(err) };
  }
}

/** Sends the phases' requests at their rates (evenly spaced); resolves with every outcome. */
async function replay(url: string): Promise<{ outcomes: Outcome[]; phaseEnds: number[] }> {
  const t0 = performance.now();
  const pending: Promise<Outcome>[] = [];
  const phaseEnds: number[] = [];
  let at = 0;
  for (const [rate, seconds] of PHASES) {
    const n = Math.round(rate * seconds);
    for (let i = 0; i < n; i++) {
      const due = at + (i * 1000) / rate;
      const wait = due - (performance.now() - t0);
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      pending.push(send(url, t0));
    }
    at += seconds * 1000;
    phaseEnds.push(at);
  }
  return { outcomes: await Promise.all(pending), phaseEnds };
}

function p90(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(0.9 * s.length))]!;
}

async function gatewayAndConfig(): Promise<{ gateway: RunningGateway; config: (n: number) => Promise<VllmWorkerConfig> }> {
  const gateway = await startGateway({ host: "127.0.0.1", port: 0, metricsScrapeIntervalMs: 200 }, { log: null });
  cleanup.push(() => gateway.close());
  const config = async (n: number): Promise<VllmWorkerConfig> => {
    const base = await findFreePortRange(3);
    return {
      id: `planned-${n}-${base}`,
      model: MODEL,
      port: base,
      command: mockerCommand(),
      pythonHashSeed: "0",
      numGpuBlocksOverride: BLOCKS,
      blockSize: 16,
      kvEvents: { endpoint: `tcp://*:${base + 1}`, replayEndpoint: `tcp://*:${base + 2}` },
      extraArgs: ["--speedup", "1"],
    };
  };
  return { gateway, config };
}

describe("SLA planner with real mocker processes", () => {
  it("scales up on a 4x step before TTFT p90 misses for more than one interval, drains on the way down, loses nothing; a fixed low-rate fleet misses", async () => {
    const profile = sweepMockEngine({ engine: { numGpuBlocks: BLOCKS }, isl: [1024, 2048, 4096, 6144, 8192], contexts: [2048, 6144], kvUsages: [0.05, 0.2, 0.5, 0.8] });

    // 1. The fixed fleet sized for the low rate: one worker, no planner.
    {
      const { gateway, config } = await gatewayAndConfig();
      const fixed = new LocalConnector({ registry: gateway.registry, workerConfig: (_k, n) => config(n), supervision: { logger: null, stopGraceMs: 2000, livenessIntervalMs: 0 }, log: () => {} });
      cleanup.push(() => fixed.close());
      await fixed.scale("aggregated", 1, "fixed fleet");
      await waitFor(() => gateway.registry.list().length === 1);
      const { outcomes, phaseEnds } = await replay(gateway.url);
      expect(outcomes.every((o) => o.ok)).toBe(true);
      const high = outcomes.filter((o) => o.sentAt >= phaseEnds[0]! && o.sentAt < phaseEnds[1]!);
      expect(p90(high.map((o) => o.ttftMs))).toBeGreaterThan(TARGETS.ttftMs);
      await fixed.close();
    }

    // 2. The same load with the SLA planner.
    const { gateway, config } = await gatewayAndConfig();
    const lines: string[] = [];
    const connector = new LocalConnector({
      registry: gateway.registry,
      workerConfig: (_k, n) => config(n),
      supervision: { logger: null, stopGraceMs: 2000, livenessIntervalMs: 0, startTimeoutMs: 30_000 },
      log: (l) => lines.push(l),
      inFlight: async (id) => {
        const m = await gateway.gateway.metrics.activeRequests.get();
        return m.values.filter((v) => v.labels["worker"] === id).reduce((a, v) => a + v.value, 0);
      },
    });
    cleanup.push(() => connector.close());
    await connector.scale("aggregated", 1, "initial");
    await waitFor(() => gateway.registry.list().length === 1);
    const sla = new SlaPlanner({ profile, targets: TARGETS, adjustmentIntervalS: 1, predictor: "constant", governor: { min: 1, max: 6, downCooldownIntervals: 2, downStableIntervals: 2 } });
    const metrics = new PlannerMetrics();
    const loop = new PlannerLoop({ kinds: ["aggregated"], intervalMs: 1000, source: new GatewayMetricsSource(() => gateway.gateway.metrics.text()), connector, sla, metrics, log: (l) => lines.push(l) });
    await loop.start();
    cleanup.push(() => loop.stop());
    const { outcomes } = await replay(gateway.url);
    // After the drop the planner shrinks the fleet again (decisions keep coming every second).
    await waitFor(() => connector.running("aggregated") === 1 && connector.owned("aggregated").length === 1, 30_000);
    await connector.settled();
    await loop.stop();

    // No request lost: every stream completed.
    expect(outcomes.filter((o) => !o.ok), lines.join("\n")).toEqual([]);
    const records = loop.decisions;
    const firstUp = records.findIndex((r) => (r.applied.aggregated ?? 0) > (r.decision.running.aggregated ?? 0));
    expect(firstUp).toBeGreaterThanOrEqual(0);
    // Intervals whose observed TTFT p90 exceeded the target before the first scale-up: at most one.
    const missedBefore = records.slice(0, firstUp).filter((r) => (r.decision.observed?.ttftMs ?? 0) > TARGETS.ttftMs).length;
    expect(missedBefore).toBeLessThanOrEqual(1);
    expect(Math.max(...records.map((r) => r.applied.aggregated ?? 0))).toBeGreaterThanOrEqual(2);
    // Removed by draining: each removed worker was drained, then stopped.
    expect(lines.some((l) => l.startsWith("draining "))).toBe(true);
    expect(lines.some((l) => / drained \(nothing in flight/.test(l))).toBe(true);
    const text = await metrics.text();
    expect(text).toMatch(/kvroute_planner_decisions_total\{kind="aggregated",action="up"\} [1-9]/);
    expect(text).toMatch(/kvroute_planner_decisions_total\{kind="aggregated",action="down"\} [1-9]/);
    expect(text).toMatch(/kvroute_planner_replicas_running\{kind="aggregated"\}/);
  }, 180_000);

  it("with no traffic the planner holds its minimum and says so (dry run)", async () => {
    const { gateway } = await gatewayAndConfig();
    const profile = sweepMockEngine({ engine: { numGpuBlocks: BLOCKS }, isl: [1024, 4096], contexts: [2048], kvUsages: [0.1, 0.5] });
    const connector = new DryRunConnector({ aggregated: 2 });
    const sla = new SlaPlanner({ profile, targets: TARGETS, adjustmentIntervalS: 1, governor: { min: 2 } });
    const loop = new PlannerLoop({ kinds: ["aggregated"], intervalMs: 60_000, source: new GatewayMetricsSource(() => gateway.gateway.metrics.text()), connector, sla, log: () => {} });
    await loop.start();
    const r = await loop.tick();
    await loop.stop();
    expect(r.applied).toEqual({ aggregated: 2 });
    expect(r.decision.reasons.join("\n")).toMatch(/no traffic observed yet: holding the configured minimum/);
    expect(connector.calls).toEqual([]);
  });
});

async function waitFor(cond: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 50));
  }
}

void startMockWorker;
