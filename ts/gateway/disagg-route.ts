/**
 * The disaggregation decision of one request, from the gateway's state: the best prefill worker
 * (KV-aware: overlap and prefill load, `role: "prefill"`) and the conditional policy's path
 * (disagg-policy.ts) from the exact uncached tokens on the chosen decode worker and the requests
 * in flight. Used by the exchange (booking) and by explain (dry run).
 */
import type { TokenIds } from "../core/block-hasher.js";
import type { RouteDecision, WorkerTarget } from "../router/types.js";
import type { GatewayContext } from "./context.js";
import { decideDisagg, disaggPolicyConfig, type DisaggChoice } from "./disagg-policy.js";

/** Whether `exclude` names every one of `targets`. */
export function covers(exclude: readonly WorkerTarget[], targets: readonly WorkerTarget[]): boolean {
  for (const t of targets) {
    if (!exclude.some((e) => e.workerId === t.workerId && e.dpRank === t.dpRank)) return false;
  }
  return true;
}

export interface PrefillRouteRequest {
  model: string;
  tokens: TokenIds;
  requestId?: string;
  cacheSalt?: string | null;
  /** Prefill workers that failed this request already. */
  failed?: readonly WorkerTarget[];
  /** Explain: decide without booking. */
  dryRun?: boolean;
}

/**
 * The best prefill worker, avoiding full, suspect and failed ones (full or suspect ones only if no
 * other is left); null when there is none. Booked in the router unless `dryRun`.
 */
export function routePrefillWorker(ctx: GatewayContext, r: PrefillRouteRequest): RouteDecision | null {
  const failed = r.failed ?? [];
  const prefillTargets = ctx.fleet.of(r.model).prefill;
  const busy = [...ctx.admission.full(prefillTargets), ...ctx.suspects.among(prefillTargets)];
  let exclude: readonly WorkerTarget[] = [...failed, ...busy];
  if (covers(exclude, prefillTargets)) exclude = failed;
  if (exclude.length > 0 && covers(exclude, prefillTargets)) return null;
  try {
    return ctx.router.route({
      model: r.model,
      tokens: r.tokens,
      role: "prefill",
      maxTokens: 1,
      ...(r.requestId !== undefined ? { requestId: r.requestId } : {}),
      ...(exclude.length > 0 ? { exclude } : {}),
      ...(r.cacheSalt != null ? { cacheSalt: r.cacheSalt } : {}),
      ...(r.dryRun ? { dryRun: true } : {}),
    });
  } catch (err) {
    ctx.log(`no prefill worker for ${r.model} (${err instanceof Error ? err.message : String(err)})`);
    return null;
  }
}

export interface DisaggDecision extends DisaggChoice {
  promptTokens: number;
  uncachedTokens: number;
  prefillActive: number | null;
  decodeActive: number;
}

/**
 * The policy's path for a request routed to `decode`, with `prefill` the best prefill worker (or
 * null). `holdsDecodeSlot`: the request already took one of the decode worker's admission slots.
 */
export function chooseDisaggPath(
  ctx: GatewayContext,
  decode: RouteDecision,
  prefill: RouteDecision | null,
  promptTokens: number,
  holdsDecodeSlot: boolean,
): DisaggDecision {
  const blockSize = ctx.fleet.record(decode.workerId)?.blockSize ?? 16;
  const uncachedTokens = Math.max(0, promptTokens - decode.overlapBlocks * blockSize);
  const prefillActive = prefill ? ctx.admission.active(prefill.workerId, prefill.dpRank) : null;
  const decodeActive = Math.max(0, ctx.admission.active(decode.workerId, decode.dpRank) - (holdsDecodeSlot ? 1 : 0));
  const choice = decideDisagg(disaggPolicyConfig(ctx.config.disagg), { promptTokens, uncachedTokens, prefillActive, decodeActive });
  return { ...choice, promptTokens, uncachedTokens, prefillActive, decodeActive };
}
