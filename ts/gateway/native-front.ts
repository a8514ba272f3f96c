/**
 * The native front's JS half (config `front: "native"`; the Rust half is crates/kvroute-front).
 * The front owns the public port; it answers non-streamed completions and chat itself and hands
 * every other request to this gateway on a private Unix socket (front-handoff.ts). This link keeps
 * the two lanes one gateway:
 * - models: the front routes a model only while JS would route it the same way: a KvRouter model
 *   with serving workers, not disaggregated, whose tokenizer (if any) is a native `Tokenizer`, all
 *   of its workers at plain `http://` URLs, and no lifecycle observer (fleet mode keeps every
 *   request in JS). The same native core and tokenizer objects serve both lanes.
 * - admission: each lane's in-flight count per target counts toward the other's bound, and while
 *   JS's queue holds requests of a model, the front hands that model's requests to the queue.
 * - suspects: a worker JS marks is avoided by the front, and the other way round.
 * - metrics: what the front did is drained every DRAIN_MS and before each scrape into the same
 *   families and labels (requests, decisions, overlap, prefill tokens, upstream errors,
 *   cancellations, time to first token and between tokens, parity checks); a mismatching parity
 *   check is logged by TokenizationCheck.
 */
import type { NativeFront, FrontDrained } from "../../index.js";
import { KvRouter } from "../router/kv-router.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import type { GatewayContext } from "./context.js";
import type { ServedModels } from "./served-models.js";

const DRAIN_MS = 50;

const ROUTE_LABEL = { completions: "/v1/completions", chat: "/v1/chat/completions" } as const;

export class FrontLink {
  private readonly timer: NodeJS.Timeout;
  private readonly unwatch: () => void;
  private syncQueued = false;
  private closed = false;

  constructor(
    private readonly front: NativeFront,
    private readonly ctx: GatewayContext,
    private readonly served: ServedModels,
  ) {
    ctx.admission.setPeer({
      inflight: (w, d) => front.frontInflight(w, d),
      counted: (w, d, n) => front.setJsInflight(w, d, n),
      queued: (m, n) => front.setQueued(m, n),
    });
    ctx.suspects.onMark = (w, ms) => front.setSuspect(w, ms);
    // After the router and the fleet view have taken the change (they watch first).
    this.unwatch = ctx.registry.watch(() => this.scheduleSync());
    this.sync();
    this.timer = setInterval(() => this.drain(), DRAIN_MS);
    this.timer.unref();
    ctx.metrics.beforeScrape.push(this.drainNow);
  }

  /** Before a scrape: the counts, and each target's in-flight gauge with the front's share. */
  private readonly drainNow = (): void => {
    this.drain();
    for (const t of this.ctx.fleet.list()) for (const r of t.dpRanks) this.ctx.admission.refreshGauge(t.id, r);
  };

  private scheduleSync(): void {
    if (this.syncQueued) return;
    this.syncQueued = true;
    queueMicrotask(() => {
      this.syncQueued = false;
      if (!this.closed) this.sync();
    });
  }

  /** Tells the front which models it routes, with their targets. */
  sync(): void {
    const router = this.ctx.router;
    if (!(router instanceof KvRouter)) return;
    for (const name of router.modelNames()) {
      const ok = !router.observed && this.served.status(name) === "serving" && this.handOver(router, name);
      if (!ok) this.front.removeModel(name);
    }
  }

  private handOver(router: KvRouter, name: string): boolean {
    const fleet = this.ctx.fleet.of(name);
    const view = router.nativeView(name);
    if (!view || fleet.serving.length === 0 || fleet.disaggregated) return false;
    const tokenizer = this.ctx.tokenizers.for(name);
    if (tokenizer !== null && !(tokenizer instanceof Tokenizer)) return false;
    const serving = new Set(fleet.serving.map((t) => `${t.workerId}\u0000${t.dpRank}`));
    const targets = view.targets.map((t) => ({
      tid: t.tid,
      workerId: t.workerId,
      dpRank: t.dpRank,
      url: t.record.url,
      rankHeader: t.record.dpRanks.length > 1,
      serving: serving.has(`${t.workerId}\u0000${t.dpRank}`),
    }));
    return this.front.setModel(name, view.core, tokenizer?.nativeTokenizer ?? null, router.mode, targets);
  }

  /** Adds what the front did to the gateway's metrics. */
  drain(): void {
    if (this.closed) return;
    apply(this.ctx, this.front.drain(), this.ctx.router instanceof KvRouter ? this.ctx.router.mode : "kv");
  }

  /** Detaches and stops the front (in-flight requests there close as cancelled). */
  close(): void {
    if (this.closed) return;
    this.drain();
    this.closed = true;
    clearInterval(this.timer);
    this.unwatch();
    const i = this.ctx.metrics.beforeScrape.indexOf(this.drainNow);
    if (i >= 0) this.ctx.metrics.beforeScrape.splice(i, 1);
    this.ctx.admission.setPeer(null);
    this.ctx.suspects.onMark = null;
    this.front.close();
  }
}

/** Pairs of (value, how many times it was seen). */
function observePairs(h: { observe(v: number): void }, pairs: readonly number[]): void {
  for (let i = 0; i + 1 < pairs.length; i += 2) for (let k = 0; k < pairs[i + 1]!; k++) h.observe(pairs[i]!);
}

function apply(ctx: GatewayContext, d: FrontDrained, mode: string): void {
  const m = ctx.metrics;
  for (const r of d.requests) m.requests.inc({ route: ROUTE_LABEL[r.route], status: String(r.status) }, r.count);
  for (const c of d.models) {
    if (c.decisions > 0) {
      m.decisions.inc({ mode }, c.decisions);
      m.admissions.inc({ kind: "immediate" }, c.decisions);
      m.prefillTokens.inc({ model: c.model }, c.prefillTokens);
    }
    if (c.savedTokens > 0) m.prefillTokensSaved.inc({ model: c.model }, c.savedTokens);
    if (c.avoidableTokens > 0) m.prefillTokensAvoidable.inc({ model: c.model }, c.avoidableTokens);
    if (c.blind > 0) m.blindDecisions.inc({ mode }, c.blind);
    if (c.cancelledPrefill > 0) m.cancellations.inc({ model: c.model, phase: "prefill" }, c.cancelledPrefill);
    if (c.cancelledDecode > 0) m.cancellations.inc({ model: c.model, phase: "decode" }, c.cancelledDecode);
    observePairs(m.overlap.labels(mode), c.overlaps);
    if (c.ttft.length > 0) observePairs(m.ttft.labels(c.model), c.ttft);
    if (c.itl.length > 0) observePairs(m.itl.labels(c.model), c.itl);
  }
  for (const e of d.upstreamErrors) {
    m.upstreamErrors.inc({ worker: e.worker, kind: e.kind }, e.count);
    ctx.suspects.mark(e.worker);
  }
  for (const c of d.checksEqual) m.tokenizationChecks.inc({ model: c.model, worker: c.worker }, c.count);
  for (const x of d.mismatches) ctx.tokenizationCheck.compare(x.model, x.worker, x.ours, Array.from(x.engine), ctx.tokenizers.for(x.model));
  for (const c of d.mismatchesUncounted) {
    m.tokenizationChecks.inc({ model: c.model, worker: c.worker }, c.count);
    m.tokenizationMismatches.inc({ model: c.model, worker: c.worker }, c.count);
  }
  if (d.released > 0 && ctx.admission.waiting > 0) ctx.admission.pump();
}
