/**
 * Planned replay (`kvroute replay --planner sla|load`): the virtual-clock replay with a fleet
 * whose size a planner sets every adjustment interval. Same engines (the mocker's EngineCore on
 * the simulated clock), same router and KV events as `runVirtualReplay`; what this adds:
 *
 * - workers start `coldStartS` after the planner asks for them (GPUs held meanwhile: they count
 *   in worker-seconds) and only then join the registry, so the router sees them;
 * - scale-down drains: the worker leaves the registry first (no new request reaches it), finishes
 *   what it holds, then stops; a worker still starting is simply cancelled. No request is lost;
 * - the planner sees what a gateway would: per interval, arrivals, prompt tokens, tokens the
 *   chosen worker held (the router's overlap), output tokens, TTFT p90 and mean ITL; and, for the
 *   load planner, each worker's waiting requests and KV usage at the last scrape;
 * - SLA accounting: a request is within target when its TTFT and its own mean ITL both are; an
 *   interval (by arrival) is within target when 90% of its requests are.
 *
 * Planners: "sla" (kvroute's sizing), "dynamo" (Dynamo's published formulas, same predictor: the
 * baseline), "load", "sla+load" (the load planner above the SLA floor), "fixed" (no planner).
 *
 * Topologies: "agg" (aggregated workers) or "disagg" (prefill and decode workers, each sized by
 * the planner: the fleet Dynamo's SLA planner is written for). Disaggregated requests go as in
 * `--topology disagg` (topology-replay.ts): a KV-aware prefill worker runs the prompt (max_tokens
 * 1, `do_remote_decode`), then the decode worker pulls the KV at the profile's transfer cost and
 * decodes. A draining prefill worker stops only once every decode worker has pulled its KV.
 */
import { setImmediate as yieldImmediate } from "node:timers/promises";
import type { CoreOutput } from "../mocker/engine-core.js";
import type { Family } from "../mocker/metrics.js";
import { MemoryRegistry } from "../registry/memory-registry.js";
import type { RouterEventSink } from "../router/kv-router.js";
import type { RouteDecision, RouterMode } from "../router/types.js";
import type { WorkerRecord, WorkerRole } from "../workers/config.js";
import { LoadPlanner } from "../planner/load-planner.js";
import type { PerfProfile } from "../planner/profile.js";
import type { Targets } from "../planner/replicas.js";
import { SlaPlanner, type IntervalObservation } from "../planner/sla-planner.js";
import type { GovernorOptions } from "../planner/governor.js";
import { InvalidConfigError } from "../errors.js";
import { EventQueue } from "./event-queue.js";
import { promptTokens, type Trace, type TraceRequest } from "./trace.js";
import { fleetEngine, generateRequest, REPLAY_DEFAULTS, replayRouter, type FleetSettings } from "./virtual-replay.js";
import { DirectBatch } from "./direct-batch.js";
import { VirtualWorker } from "./virtual-worker.js";

export const PLANNER_KINDS = ["sla", "dynamo", "load", "sla+load", "fixed"] as const;
export type PlannerKind = (typeof PLANNER_KINDS)[number];
export const PLANNED_TOPOLOGIES = ["agg", "disagg"] as const;
export type PlannedTopology = (typeof PLANNED_TOPOLOGIES)[number];

export interface PlannedReplayOptions extends Omit<FleetSettings, "workers"> {
  trace: Trace;
  planner: PlannerKind;
  /** The planner's performance profile (not needed for "load" and "fixed"). */
  perfProfile?: PerfProfile;
  targets: Targets;
  policy?: RouterMode;
  /** "agg" (default) or "disagg": prefill and decode workers. */
  topology?: PlannedTopology;
  /** Workers at the start (and all along for "fixed"); disagg: of each kind. Default: the governor's minimum. */
  initialWorkers?: number;
  /** disagg: decode workers at the start (default: `initialWorkers`). */
  initialDecodeWorkers?: number;
  adjustmentIntervalS?: number;
  coldStartS?: number;
  predictor?: string;
  /** Seasonal predictor: intervals per season. */
  seasonPeriod?: number;
  governor?: GovernorOptions;
  /** disagg: a kind's own minimum (Dynamo's prefill_min_endpoint / decode_min_endpoint). */
  minByKind?: { prefill?: number; decode?: number };
  gpuBudget?: number;
  /** SLA planner: share of servable requests its sizing lets past the TTFT target (default 0.05). */
  missBudget?: number;
  /** SLA planner: seconds of arrivals whose bursts set its floor (0: off; default 300). */
  burstWindowS?: number;
  /** SLA planner: size for at least the last interval's observed rate (default true). */
  observedRateFloor?: boolean;
  /** SLA planner: apply observed / profiled correction factors (default true). */
  corrections?: boolean;
  eventDelayMs?: number;
  seed?: number;
  signal?: AbortSignal;
  onDecision?: (line: string) => void;
  /** Each finished request (for analysis: which requests missed and why). */
  onRequest?: (r: PlannedRequestOutcome) => void;
}

export interface PlannedRequestOutcome {
  id: string;
  /** Arrival, ms since the replay's start. */
  arrivalMs: number;
  ttftMs: number;
  /** The request's own mean ITL (ms); 0 with one output token. */
  itlMs: number;
  promptTokens: number;
  /** Prompt tokens the chosen worker already held. */
  cachedTokens: number;
  outputTokens: number;
  worker: string;
  withinTarget: boolean;
}

export interface PlannedInterval {
  startS: number;
  requests: number;
  withinTarget: number;
  ttftP90Ms: number | null;
  itlMeanMs: number | null;
  workersRunning: number;
  workersWanted: number;
}

export interface PlannedWorkerSeconds {
  aggregated: number;
  prefill: number;
  decode: number;
}

export interface PlannedReplayResult {
  planner: PlannerKind;
  requests: number;
  completed: number;
  failed: number;
  /** Share of completed requests within both targets. */
  requestAttainment: number;
  /** Share of intervals (with requests) whose 90% met both targets. */
  intervalAttainment: number;
  topology: PlannedTopology;
  workerSeconds: number;
  /** Worker-seconds by kind (disagg: prefill and decode). */
  workerSecondsByKind: PlannedWorkerSeconds;
  peakWorkers: number;
  meanWorkers: number;
  ttftP90Ms: number;
  itlP90Ms: number;
  decisions: number;
  scaleUps: number;
  scaleDowns: number;
  intervals: PlannedInterval[];
  simSeconds: number;
  wallMs: number;
}

const enum Kind {
  StepEnd = 0,
  Deliver = 1,
  Scrape = 2,
  Plan = 3,
  Ready = 4,
  Wake = 5,
}

type State = "starting" | "ready" | "draining" | "stopped";

interface Slot {
  id: string;
  role: WorkerRole;
  engine: VirtualWorker;
  state: State;
  startedAt: number;
  stoppedAt: number;
  busy: boolean;
  inflight: number;
  /** Prefill worker: prefills done whose KV a decode worker has not pulled yet. */
  pulls: number;
  last: { waiting: number; running: number; kvUsage: number };
}

interface Flight {
  id: string;
  slot: Slot;
  /** disagg: the prefill worker whose KV this request's decode pulls, until it has. */
  prefillSlot: Slot | null;
  arrival: number;
  first: number;
  generated: number;
  bucket: number;
  promptTokens: number;
  cached: number;
}

function total(f: Family): number {
  let v = 0;
  for (const s of f.series.values()) v += s.value;
  return v;
}

function p90(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(0.9 * s.length))]!;
}

export async function runPlannedReplay(o: PlannedReplayOptions): Promise<PlannedReplayResult> {
  const wall0 = performance.now();
  const trace = o.trace;
  const reqs = trace.requests;
  const topology = o.topology ?? "agg";
  const disagg = topology === "disagg";
  const model = o.model ?? REPLAY_DEFAULTS.model;
  const blockSize = o.blockSize ?? REPLAY_DEFAULTS.blockSize;
  const { profile, numGpuBlocks } = fleetEngine({ ...o, workers: 1 });
  const intervalMs = (o.adjustmentIntervalS ?? 30) * 1000;
  const coldMs = (o.coldStartS ?? 30) * 1000;
  const eventDelay = o.eventDelayMs ?? REPLAY_DEFAULTS.eventDelayMs;
  const scrapeEvery = o.metricsScrapeIntervalMs ?? REPLAY_DEFAULTS.metricsScrapeIntervalMs;
  const log = o.onDecision ?? (() => {});

  const needsProfile = o.planner === "sla" || o.planner === "dynamo" || o.planner === "sla+load";
  if (needsProfile && !o.perfProfile) throw new Error(`planner ${o.planner} needs a performance profile`);
  if (disagg && (o.planner === "load" || o.planner === "sla+load")) throw new InvalidConfigError(`planner ${o.planner}: the virtual replay runs the load planner on aggregated workers only (--topology agg)`);
  const sla = needsProfile
    ? new SlaPlanner({
        profile: o.perfProfile!,
        targets: o.targets,
        mode: disagg ? "disaggregated" : "aggregated",
        formula: o.planner === "dynamo" ? "dynamo" : "kvroute",
        adjustmentIntervalS: intervalMs / 1000,
        predictor: o.predictor ?? "constant",
        predictorOptions: o.seasonPeriod !== undefined ? { period: o.seasonPeriod } : {},
        governor: o.governor,
        ...(o.minByKind ? { minByKind: o.minByKind } : {}),
        gpuBudget: o.gpuBudget,
        // kvroute's planner looks as far ahead as a new worker takes to serve; Dynamo's does not.
        ...(o.planner === "dynamo" ? {} : { coldStartS: coldMs / 1000 }),
        ...(o.missBudget !== undefined ? { missBudget: o.missBudget } : {}),
        ...(o.corrections !== undefined ? { corrections: o.corrections } : {}),
        ...(o.burstWindowS !== undefined ? { burstWindowS: o.burstWindowS } : {}),
        ...(o.observedRateFloor !== undefined ? { observedRateFloor: o.observedRateFloor } : {}),
      })
    : null;
  const load = o.planner === "load" || o.planner === "sla+load" ? new LoadPlanner({ targets: o.targets, governor: o.governor }) : null;
  const minWorkers = o.governor?.min ?? 1;
  const initial = o.initialWorkers ?? (disagg ? Math.max(minWorkers, o.minByKind?.prefill ?? 0) : minWorkers);
  const initialDecode = o.initialDecodeWorkers ?? o.initialWorkers ?? Math.max(minWorkers, o.minByKind?.decode ?? 0);
  const kinds: WorkerRole[] = disagg ? ["prefill", "decode"] : ["aggregated"];

  let now = reqs.length > 0 ? reqs[0]!.timestampMs : 0;
  const t0 = now;
  const registry = new MemoryRegistry();
  const router = replayRouter({ ...o, workers: 1 }, o.policy ?? "kv", registry, () => now);
  const queue = new EventQueue<Kind>();
  const slots: Slot[] = [];
  let sink: RouterEventSink | null = null;
  const engineConfig = (id: string, role: WorkerRole) => ({
    ...o.engine,
    profile,
    model,
    blockSize,
    numGpuBlocks,
    hashAlgorithm: o.hashAlgorithm ?? REPLAY_DEFAULTS.hashAlgorithm,
    hashSeed: REPLAY_DEFAULTS.hashSeed,
    kvEventsConfig: { enableKvCacheEvents: true },
    ...(role === "aggregated" ? {} : { kvTransferConfig: { kvConnector: "NixlConnector", kvRole: "kv_both" as const, engineId: id }, nixl: false }),
  });
  let nextId = 0;
  const addWorker = async (role: WorkerRole, immediately: boolean) => {
    const w = slots.length;
    const id = `${role === "aggregated" ? "worker" : role}-${nextId++}`;
    const engine = new VirtualWorker(engineConfig(id, role), (payload) => {
      if (eventDelay > 0) queue.push(now + eventDelay, Kind.Deliver, w, payload);
      else deliver(w, payload);
    }, "direct");
    const slot: Slot = { id, role, engine, state: "starting", startedAt: now, stoppedAt: -1, busy: false, inflight: 0, pulls: 0, last: { waiting: 0, running: 0, kvUsage: 0 } };
    slots.push(slot);
    if (immediately) await makeReady(slot);
    else queue.push(now + coldMs, Kind.Ready, w);
  };
  const makeReady = async (s: Slot) => {
    if (s.state !== "starting") return;
    s.state = "ready";
    await registry.register(record(s.id, s.role, model, blockSize, s.engine));
  };
  const deliver = (w: number, payload: Buffer | DirectBatch) => {
    const s = slots[w]!;
    if (s.state === "ready" && sink) {
      if (payload instanceof DirectBatch) sink.applyDirectBatch(s.id, payload);
      else sink.applyEventBatch(s.id, payload, 0);
    }
    s.engine.release(payload);
  };
  const stop = (s: Slot) => {
    s.state = "stopped";
    s.stoppedAt = now;
  };
  const idle = (s: Slot) => !s.busy && s.inflight === 0 && s.pulls === 0;
  const drain = async (s: Slot) => {
    if (s.state === "starting") return stop(s);
    s.state = "draining";
    await registry.deregister(s.id);
    if (idle(s)) stop(s);
  };
  const active = (role: WorkerRole) => slots.filter((s) => s.role === role && (s.state === "starting" || s.state === "ready"));
  const setWorkers = async (role: WorkerRole, n: number) => {
    let cur = active(role);
    for (let k = cur.length; k < n; k++) await addWorker(role, false);
    cur = active(role);
    if (cur.length > n) {
      // Cancel workers still starting first, then drain the least loaded.
      const order = [...cur].sort((a, b) => (a.state === b.state ? a.engine.core.load() - b.engine.core.load() : a.state === "starting" ? -1 : 1));
      for (const s of order.slice(0, cur.length - n)) await drain(s);
    }
  };
  if (disagg) {
    for (let k = 0; k < initial; k++) await addWorker("prefill", true);
    for (let k = 0; k < initialDecode; k++) await addWorker("decode", true);
  } else for (let k = 0; k < initial; k++) await addWorker("aggregated", true);
  sink = router.eventSink(model);

  const kick = (s: Slot) => {
    const w = slots.indexOf(s);
    const d = s.engine.core.beginStep(now);
    s.busy = d !== null;
    if (d !== null) queue.push(now + d, Kind.StepEnd, w);
    else {
      // Only a remote-KV transfer left (disagg decode): begin a step when it lands. The worker
      // counts as busy until then, so a request reaching it meanwhile starts at that step (a
      // delay of at most one transfer, as for every fleet the benchmark compares).
      const t = s.engine.core.nextTransferTime();
      if (t !== null) {
        s.busy = true;
        queue.push(Math.max(t, now), Kind.Wake, w);
      } else if (s.state === "draining" && idle(s)) stop(s);
    }
  };
  const settle = (s: Slot) => {
    if (s.state === "draining" && idle(s)) stop(s);
  };

  // Per-interval accounting.
  const buckets: { requests: number; within: number; ttfts: number[]; itlSum: number; itlN: number }[] = [];
  const bucketOf = (t: number) => Math.floor((t - t0) / intervalMs);
  const bucket = (b: number) => (buckets[b] ??= { requests: 0, within: 0, ttfts: [], itlSum: 0, itlN: 0 });
  const freshObs = () => ({ lastArrival: -1, gapSum: 0, gapSq: 0, gaps: 0, requests: 0, inputTokens: 0, cachedTokens: 0, uncached: [] as number[], arrivals: [] as number[], firstTtfts: [] as number[], outTokens: 0, finished: 0, itls: [] as number[], itlSum: 0, itlN: 0, durationSum: 0 });
  let obs = freshObs();
  const allTtft: number[] = [];
  const allItl: number[] = [];
  let completed = 0;
  let failed = 0;
  let within = 0;
  let inflight = 0;

  const releasePull = (f: Flight) => {
    const p = f.prefillSlot;
    if (!p) return;
    f.prefillSlot = null;
    p.pulls--;
    settle(p);
  };
  const sinkFor = (f: Flight) => (out: CoreOutput) => {
    const k = out.tokenIds.length;
    if (k > 0) {
      if (f.first < 0) {
        f.first = now;
        router.firstToken(f.id);
        obs.firstTtfts.push(now - f.arrival);
        releasePull(f);
      }
      const before = f.generated;
      f.generated += k;
      if (Math.floor(f.generated / blockSize) !== Math.floor(before / blockSize)) router.tokens(f.id, f.generated);
    }
    if (out.finishReason === null) return;
    inflight--;
    f.slot.inflight--;
    releasePull(f);
    settle(f.slot);
    if (out.finishReason === "abort") {
      failed++;
      router.finished(f.id, "cancelled");
      return;
    }
    router.finished(f.id, "ok");
    completed++;
    const ttft = (f.first < 0 ? now : f.first) - f.arrival;
    const itl = f.generated > 1 ? (now - f.first) / (f.generated - 1) : 0;
    allTtft.push(ttft);
    if (f.generated > 1) allItl.push(itl);
    const ok = ttft <= o.targets.ttftMs && itl <= o.targets.itlMs;
    if (ok) within++;
    o.onRequest?.({ id: f.id, arrivalMs: f.arrival - t0, ttftMs: ttft, itlMs: itl, promptTokens: f.promptTokens, cachedTokens: f.cached, outputTokens: f.generated, worker: f.slot.id, withinTarget: ok });
    const b = bucket(f.bucket);
    b.requests++;
    if (ok) b.within++;
    b.ttfts.push(ttft);
    if (f.generated > 1) {
      b.itlSum += itl;
      b.itlN++;
      obs.itlSum += itl;
      obs.itlN++;
      obs.itls.push(itl);
    }
    obs.outTokens += f.generated;
    obs.finished++;
    obs.durationSum += now - f.arrival;
  };

  const submit = (s: Slot, req: TraceRequest, id: string, tokens: Uint32Array, maxTokens: number | undefined, kv: Record<string, unknown> | null, out: (c: CoreOutput) => void) => {
    const g = generateRequest(req, id, tokens, now);
    s.engine.submit({ ...g, maxTokens, ...(kv ? { kvTransferParams: kv } : {}) }, out);
    if (!s.busy) kick(s);
  };

  const readySlot = (d: RouteDecision) => slots.find((s) => s.id === d.workerId && s.state === "ready");
  const arrive = (req: TraceRequest) => {
    const tokens = promptTokens(req);
    const id = `r${req.index}`;
    const maxTokens = req.maxTokens ?? undefined;
    let decision: RouteDecision;
    let prefill: RouteDecision | null = null;
    try {
      decision = router.route({ model, tokens, requestId: id, ...(disagg ? { role: "decode" as const } : {}), ...(maxTokens !== undefined ? { maxTokens } : {}) });
      if (disagg) prefill = router.route({ model, tokens, requestId: `${id}~p`, role: "prefill", maxTokens: 1 });
    } catch {
      failed++;
      return;
    }
    const slot = readySlot(decision);
    const pslot = prefill ? readySlot(prefill) : null;
    if (!slot || (disagg && !pslot)) {
      failed++;
      return;
    }
    router.started(decision);
    const cachedBlocks = prefill ? prefill.overlapBlocks : decision.overlapBlocks;
    const cached = Math.min(tokens.length, cachedBlocks * blockSize);
    obs.requests++;
    if (obs.lastArrival >= 0) {
      const gap = now - obs.lastArrival;
      obs.gapSum += gap;
      obs.gapSq += gap * gap;
      obs.gaps++;
    }
    obs.lastArrival = now;
    obs.inputTokens += tokens.length;
    obs.cachedTokens += cached;
    obs.uncached.push(tokens.length - cached);
    obs.arrivals.push(now - t0);
    const f: Flight = { id, slot, prefillSlot: null, arrival: now, first: -1, generated: 0, bucket: bucketOf(now), promptTokens: tokens.length, cached };
    inflight++;
    slot.inflight++;
    try {
      if (!pslot || !prefill) return submit(slot, req, id, tokens, maxTokens, null, sinkFor(f));
      router.started(prefill);
      pslot.inflight++;
      const kvAsk = { do_remote_decode: true, do_remote_prefill: false, remote_engine_id: null, remote_block_ids: null, remote_host: null, remote_port: null, remote_request_id: null };
      submit(pslot, req, `${id}~p`, tokens, 1, kvAsk, (out) => {
        if (out.finishReason === null) return;
        pslot.inflight--;
        router.finished(prefill.requestId, out.finishReason === "abort" ? "cancelled" : "ok");
        const kv = out.finishReason === "abort" ? null : (out.kvTransferParams ?? null);
        // The prefill worker keeps this KV until the decode worker has pulled it (first token).
        if (kv) {
          pslot.pulls++;
          f.prefillSlot = pslot;
        }
        settle(pslot);
        // The decode leg: the KV arrives at the profile's transfer cost (or, refused, local prefill).
        try {
          submit(slot, req, id, tokens, maxTokens, kv, sinkFor(f));
        } catch {
          failed++;
          inflight--;
          slot.inflight--;
          releasePull(f);
          router.finished(id, "error");
        }
      });
    } catch {
      failed++;
      inflight--;
      slot.inflight--;
      if (pslot && prefill) pslot.inflight = Math.max(0, pslot.inflight - 1);
      router.finished(id, "error");
    }
  };

  const scrape = () => {
    for (const s of slots) {
      if (s.state === "stopped" || s.state === "starting") continue;
      const m = s.engine.metrics;
      s.last = { waiting: total(m.waiting), running: total(m.running), kvUsage: total(m.kvUsage) };
      if (s.state === "ready") router.updateMetrics(s.id, { numRequestsWaiting: s.last.waiting, numRequestsRunning: s.last.running, kvCacheUsagePerc: s.last.kvUsage });
    }
  };

  let decisions = 0;
  let ups = 0;
  let downs = 0;
  const timeline: { t: number; running: number; wanted: number }[] = [];
  const plan = async () => {
    const running: Partial<Record<WorkerRole, number>> = {};
    for (const k of kinds) running[k] = active(k).length;
    const runningAll = kinds.reduce((a, k) => a + running[k]!, 0);
    const ttft = p90(obs.firstTtfts);
    const itl = obs.itlN > 0 ? obs.itlSum / obs.itlN : null;
    const osl = obs.finished > 0 ? obs.outTokens / obs.finished : 0;
    const observation: IntervalObservation = {
      intervalS: intervalMs / 1000,
      requests: obs.requests,
      inputTokens: obs.inputTokens,
      cachedTokens: obs.cachedTokens,
      outputTokens: osl * obs.requests,
      ttftMs: ttft,
      itlMs: itl,
      itlP90Ms: p90(obs.itls),
      ttftMeanMs: obs.firstTtfts.length > 0 ? obs.firstTtfts.reduce((a, b) => a + b, 0) / obs.firstTtfts.length : null,
      durationMs: obs.finished > 0 ? obs.durationSum / obs.finished : null,
      uncachedTokens: obs.uncached,
      arrivalsMs: obs.arrivals,
      arrivalCv2: obs.gaps > 1 && obs.gapSum > 0 ? (obs.gapSq / obs.gaps - (obs.gapSum / obs.gaps) ** 2) / (obs.gapSum / obs.gaps) ** 2 : null,
    };
    const target: Partial<Record<WorkerRole, number>> = { ...running };
    const lines: string[] = [];
    if (sla) {
      const d = sla.decide(observation, running);
      for (const k of kinds) target[k] = d.target[k]!;
      lines.push(...d.reasons);
    }
    if (load) {
      const ready = slots.filter((s) => s.state === "ready");
      const d = load.decide({ workers: ready.map((s) => s.last), ttftMs: ttft, itlMs: itl }, running.aggregated!, sla ? target.aggregated! : 0);
      target.aggregated = Math.max(target.aggregated!, d.target);
      lines.push(...d.reasons);
    }
    const wantedAll = kinds.reduce((a, k) => a + target[k]!, 0);
    decisions++;
    if (kinds.some((k) => target[k]! > running[k]!)) ups++;
    if (kinds.some((k) => target[k]! < running[k]!)) downs++;
    timeline.push({ t: now, running: runningAll, wanted: wantedAll });
    const counts = (r: Partial<Record<WorkerRole, number>>) => (disagg ? `${r.prefill}P+${r.decode}D` : String(r.aggregated));
    log(`[${((now - t0) / 1000).toFixed(0)}s] ${o.planner}: ${counts(running)} -> ${counts(target)}; ${lines.join("; ")}`);
    for (const k of kinds) if (target[k] !== running[k]) await setWorkers(k, target[k]!);
    obs = freshObs();
  };

  queue.push(now + scrapeEvery, Kind.Scrape);
  if (o.planner !== "fixed") queue.push(now + intervalMs, Kind.Plan);
  let next = 0;
  let tick = 0;
  let sliceEnd = performance.now() + 50;
  for (;;) {
    if (o.signal?.aborted) break;
    const tArrival = next < reqs.length ? reqs[next]!.timestampMs : Infinity;
    if (tArrival === Infinity && inflight === 0) break;
    if (tArrival === Infinity && !slots.some((s) => s.busy)) {
      failed += inflight; // never expected: work that no engine will schedule
      break;
    }
    if (queue.peekTime() <= tArrival) {
      const e = queue.pop()!;
      now = e.t;
      switch (e.kind) {
        case Kind.StepEnd: {
          const s = slots[e.worker]!;
          s.engine.core.endStep();
          kick(s);
          break;
        }
        case Kind.Wake: {
          const s = slots[e.worker]!;
          s.busy = false;
          kick(s);
          break;
        }
        case Kind.Deliver:
          deliver(e.worker, e.payload!);
          break;
        case Kind.Scrape:
          scrape();
          queue.push(now + scrapeEvery, Kind.Scrape);
          break;
        case Kind.Plan:
          await plan();
          if (next < reqs.length || inflight > 0) queue.push(now + intervalMs, Kind.Plan);
          break;
        case Kind.Ready:
          await makeReady(slots[e.worker]!);
          break;
      }
    } else {
      now = tArrival;
      arrive(reqs[next++]!);
    }
    if ((++tick & 1023) === 0 && performance.now() > sliceEnd) {
      await yieldImmediate();
      sliceEnd = performance.now() + 50;
    }
  }
  router.close();
  const end = now;
  const byKind: PlannedWorkerSeconds = { aggregated: 0, prefill: 0, decode: 0 };
  for (const s of slots) byKind[s.role] += ((s.stoppedAt >= 0 ? s.stoppedAt : end) - s.startedAt) / 1000;
  const workerMs = (byKind.aggregated + byKind.prefill + byKind.decode) * 1000;
  const initialAll = disagg ? initial + initialDecode : initial;
  const span = Math.max(1, end - t0);
  const intervals: PlannedInterval[] = buckets.map((b, i) => {
    const tl = [...timeline].reverse().find((x) => x.t <= t0 + (i + 1) * intervalMs);
    return {
      startS: (i * intervalMs) / 1000,
      requests: b?.requests ?? 0,
      withinTarget: b?.within ?? 0,
      ttftP90Ms: b ? p90(b.ttfts) : null,
      itlMeanMs: b && b.itlN > 0 ? b.itlSum / b.itlN : null,
      workersRunning: tl?.running ?? initialAll,
      workersWanted: tl?.wanted ?? initialAll,
    };
  });
  const counted = intervals.filter((x) => x.requests > 0);
  let peak = initialAll;
  for (const t of timeline) peak = Math.max(peak, t.wanted, t.running);
  return {
    planner: o.planner,
    topology,
    requests: reqs.length,
    completed,
    failed,
    requestAttainment: completed > 0 ? within / completed : 0,
    intervalAttainment: counted.length > 0 ? counted.filter((x) => x.withinTarget >= 0.9 * x.requests).length / counted.length : 0,
    workerSeconds: workerMs / 1000,
    workerSecondsByKind: byKind,
    peakWorkers: peak,
    meanWorkers: workerMs / span,
    ttftP90Ms: p90(allTtft) ?? 0,
    itlP90Ms: p90(allItl) ?? 0,
    decisions,
    scaleUps: ups,
    scaleDowns: downs,
    intervals,
    simSeconds: span / 1000,
    wallMs: performance.now() - wall0,
  };
}

function record(id: string, role: WorkerRole, model: string, blockSize: number, engine: VirtualWorker): WorkerRecord {
  return {
    id,
    model,
    role,
    url: `http://${id}.virtual`,
    kvEvents: null,
    blockSize,
    hashAlgorithm: engine.config.hashAlgorithm,
    hashSeed: engine.config.hashSeed ?? null,
    numGpuBlocks: engine.config.numGpuBlocks,
    dataParallelSize: 1,
    dpRanks: [0],
  };
}
