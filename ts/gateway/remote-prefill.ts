/**
 * The disaggregated prefill of one request, before its decode attempt (exchange.ts): the
 * conditional choice (disagg-route.ts, disagg-policy.ts), the prefill leg on a prefill worker
 * (prefill-leg.ts), one replacement for a prefill worker that fails, and the fallback to
 * prefilling on the decode worker. Its result is the `kv_transfer_params` the decode leg sends.
 *
 * The state lives on the exchange (one object per request) and is passed in explicitly; being the
 * exchange itself, it shows `clientGone` live, so a client leaving mid-leg is seen after each await.
 */
import type { Dispatcher } from "undici";
import type { TokenIds } from "../core/block-hasher.js";
import type { RouteDecision, WorkerTarget } from "../router/types.js";
import type { GatewayContext } from "./context.js";
import type { PromptKey } from "./gateway.js";
import type { ParsedRequest } from "./openai-request.js";
import { chooseDisaggPath, routePrefillWorker, type DisaggDecision } from "./disagg-route.js";
import { decodeLegParams, prefillLegBody } from "./prefill-leg.js";
import { closeLifecycle, describe, MAX_RESPONSE_BYTES, PATHS, upstreamHeaders, type Outcome } from "./attempt.js";

/** What the prefill reads and sets of one exchange. */
export interface PrefillState {
  readonly ctx: GatewayContext;
  readonly model: string;
  readonly key: PromptKey;
  /** The prompt's token ids (the key's). */
  readonly tokens: TokenIds;
  readonly parsed: ParsedRequest;
  /** The prefix of the exchange's router and engine request ids. */
  readonly routerBase: string;
  readonly clientGone: boolean;
  /** The phase the request is in, for the cancellation metric. */
  phase: "queued" | "prefill" | "upstream";
  /** The live leg, aborted when the client goes away. */
  prefillController: Dispatcher.DispatchController | null;
  prefillWorker: string | null;
  /** The conditional-disaggregation choice (disaggregated models only), for headers and logs. */
  disagg: DisaggDecision | null;
  kvTransferParams: Record<string, unknown> | null;
}

/**
 * Decides (disagg-policy.ts) whether a prefill worker prefills, chosen KV-aware among the
 * prefill workers (overlap and prefill load); if so runs the prefill leg (prefill-leg.ts) and
 * keeps the `kv_transfer_params` it returns for the decode leg. A prefill worker that fails
 * (refused, reset, died) is replaced once by another prefill worker; then the decode worker
 * prefills itself.
 */
export async function remotePrefill(x: PrefillState, decode: RouteDecision): Promise<void> {
  // Untokenized prompts: about four characters a token, so long prompts still prefill remotely.
  const promptTokens = x.key.untokenized ? estimatedTokens(x.parsed) : x.tokens.length;
  const failed: WorkerTarget[] = [];
  for (let attempt = 0; attempt < 2; attempt++) {
    const pDecision = routePrefillWorker(x.ctx, {
      model: x.model,
      tokens: x.tokens,
      requestId: `${x.routerBase}~prefill${failed.length > 0 ? failed.length : ""}`,
      cacheSalt: x.parsed.cacheSalt,
      failed,
    });
    if (attempt === 0) {
      x.disagg = chooseDisaggPath(x.ctx, decode, pDecision, promptTokens, true);
      x.ctx.metrics.disaggDecisions.inc({ model: x.model, path: x.disagg.path, reason: x.disagg.reason });
      if (x.disagg.path === "local") {
        if (pDecision) x.ctx.router.finished(pDecision.requestId, "cancelled");
        x.ctx.metrics.remotePrefills.inc({ model: x.model, where: "local" });
        return;
      }
    }
    if (!pDecision) break;
    const result = await runPrefill(x, pDecision, decode);
    if (result === "ok" || result === "cancelled" || x.clientGone) return;
    if (result === "refused") break;
    failed.push(pDecision);
  }
  x.prefillWorker = null;
  x.ctx.metrics.remotePrefills.inc({ model: x.model, where: "local_fallback" });
}

/** One prefill leg: "ok" (params kept), "cancelled" (client gone), "refused" or "failed". */
async function runPrefill(x: PrefillState, pDecision: RouteDecision, decode: RouteDecision): Promise<"ok" | "cancelled" | "refused" | "failed"> {
  x.phase = "prefill";
  x.ctx.router.started(pDecision);
  x.ctx.admission.take(pDecision.workerId, pDecision.dpRank);
  x.prefillWorker = pDecision.workerId;
  const body = prefillLegBody(x.parsed.body, x.model);
  let outcome: Outcome = "error";
  try {
    const { status, text } = await collect(
      x,
      pDecision.url,
      PATHS[x.parsed.endpoint],
      Buffer.from(JSON.stringify(body)),
      (c) => (x.prefillController = c),
      pDecision.requestId,
      pDecision,
    );
    if (x.clientGone) {
      outcome = "cancelled";
      return "cancelled";
    }
    let params: Record<string, unknown> | null = null;
    if (status === 200) {
      try {
        params = decodeLegParams(JSON.parse(text));
      } catch {
        params = null;
      }
    }
    if (params) {
      x.kvTransferParams = params;
      outcome = "ok";
      x.ctx.metrics.remotePrefills.inc({ model: x.model, where: "remote" });
      return "ok";
    }
    x.ctx.log(`prefill on ${pDecision.workerId} answered ${status} without usable kv_transfer_params; prefilling on ${decode.workerId}`);
    x.prefillWorker = null;
    return "refused";
  } catch (err) {
    if (x.clientGone) {
      outcome = "cancelled";
      return "cancelled";
    }
    x.ctx.metrics.upstreamErrors.inc({ worker: pDecision.workerId, kind: "prefill" });
    x.ctx.suspects.mark(pDecision.workerId);
    x.ctx.log(`prefill on ${pDecision.workerId} failed (${describe(err)})`);
    x.prefillWorker = null;
    return "failed";
  } finally {
    x.prefillController = null;
    closeLifecycle(x.ctx, pDecision, outcome);
    x.phase = "upstream";
  }
}

/** A whole (non-streamed) upstream exchange, bounded in size. */
function collect(
  x: PrefillState,
  url: string,
  path: string,
  body: Buffer,
  onStart: (c: Dispatcher.DispatchController) => void,
  requestId: string,
  target: WorkerTarget,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    let status = 0;
    const chunks: Buffer[] = [];
    let size = 0;
    x.ctx.upstream.send(url, path, body, {
      onStart: (c) => {
        onStart(c);
        if (x.clientGone) c.abort(new Error("client disconnected"));
      },
      onHeaders: (s) => {
        status = s;
      },
      onData: (chunk) => {
        size += chunk.length;
        if (size > MAX_RESPONSE_BYTES) {
          x.prefillController?.abort(new Error("response too large"));
          return;
        }
        chunks.push(chunk);
      },
      onEnd: () => resolve({ status, text: Buffer.concat(chunks).toString("utf8") }),
      onError: reject,
    }, upstreamHeaders(requestId, target, x.ctx.fleet.record(target.workerId)));
  });
}

/** About how many tokens an untokenized prompt has (four characters a token). */
function estimatedTokens(parsed: ParsedRequest): number {
  let chars = parsed.promptText?.length ?? 0;
  for (const m of parsed.messages ?? []) chars += m.text.length;
  return Math.ceil(chars / 4);
}
