/**
 * One client request through the gateway, from admission to the last byte: routing, forwarding
 * (streaming or not), backpressure, cancellation, retries, migration, and disaggregated prefill.
 *
 * Attempts. Each try on a worker is an attempt with its own router request id and lifecycle
 * (`started` ... `finished`), and its own admission slot. Failures are classified:
 * - not started (connection refused, pool closed because the worker left): retried on another
 *   worker, up to `connectRetries`; nothing reached the worker.
 * - broken (reset, stream ended without `[DONE]`, silence past the idle timeout): re-issued on
 *   another worker up to `migrationLimit` times. A non-stream request is re-issued whole; a
 *   stream continues: the prompt becomes the engine's prompt token ids plus the ids already sent
 *   to the client, `max_tokens` shrinks by as many, and the new worker's chunks are rewritten
 *   into the first one's stream (same id, same object type, usage adding up), so the client
 *   sees one stream with no token missing or repeated.
 * - aborted by the engine (`finish_reason: "abort"` in a 200 answer; the gateway itself only ever
 *   aborts by closing the connection, so such an abort is someone else's: an engine shutting down,
 *   or before the ids below, a second request under the same id): handled as broken, never
 *   forwarded as a short answer that looks complete.
 * - timed out waiting for headers: 504, not retried.
 *
 * Request ids. The client's `x-request-id` is echoed back and logged, never sent to an engine:
 * vLLM refuses a second request under an id in use and aborts the first, so a client retry (or
 * anyone who learns an id) could cut another's answer. Each attempt goes to its engine under the
 * gateway's own id (`kvg-<random>-<n>~<attempt>`, also the router's id), unique per gateway; the
 * response's `x-kvroute-request-id` and the log lines map one to the other.
 *
 * Token ids for continuation come from vLLM's `return_token_ids` (the first chunk carries
 * `prompt_token_ids`, every chunk its `token_ids`); the gateway asks for them when migration is on
 * and strips them again unless the client asked too.
 *
 * Invariants: the client only ever receives whole SSE events; at most one attempt is live; every
 * `started` is matched by exactly one `finished` and every `take` by one `release`
 * (`closeAttempt`); after the client is gone nothing more is written and the live attempt is
 * aborted.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { randomBytes, randomUUID } from "node:crypto";
import type { Dispatcher } from "undici";
import type { RouteDecision, WorkerTarget } from "../router/types.js";
import type { WorkerRecord } from "../workers/config.js";
import type { TokenIds } from "../core/block-hasher.js";
import type { GatewayContext } from "./context.js";
import type { PromptKey } from "./gateway.js";
import { GatewayError, NoHealthyWorkerError, UpstreamFailedError, UpstreamTimeoutError, toGatewayError } from "./errors.js";
import type { ParsedRequest } from "./openai-request.js";
import { forEachData, SseSplitter, sseEvent } from "./sse.js";
import { scanTokenEvent } from "./sse-scan.js";
import { chooseDisaggPath, covers, routePrefillWorker, type DisaggDecision } from "./disagg-route.js";
import { decodeLegParams, prefillLegBody } from "./prefill-leg.js";

type Format = "completions" | "chat";

const PATHS: Record<Format, string> = { completions: "/v1/completions", chat: "/v1/chat/completions" };

/** Largest non-streamed response body accepted from a worker. */
const MAX_RESPONSE_BYTES = 64 * 1024 * 1024;
/** Largest single SSE event accepted from a worker. */
const MAX_EVENT_BYTES = 16 * 1024 * 1024;

/** Sampling fields carried from a chat request into its completions continuation. */
const CONTINUATION_FIELDS = [
  "temperature",
  "top_p",
  "top_k",
  "min_p",
  "seed",
  "stop",
  "stop_token_ids",
  "ignore_eos",
  "presence_penalty",
  "frequency_penalty",
  "repetition_penalty",
  "logit_bias",
  "include_stop_str_in_output",
  "skip_special_tokens",
  "spaces_between_special_tokens",
  "cache_salt",
  "priority",
  "bad_words",
  "allowed_token_ids",
  "user",
  "structured_outputs",
  "vllm_xargs",
];

/** Headers not copied from a worker's response. */
const HOP_HEADERS = new Set(["connection", "keep-alive", "transfer-encoding", "content-length", "date", "server", "upgrade", "proxy-connection", "te", "trailer"]);

type FailureKind = "not_started" | "broken" | "aborted" | "timeout";

let nextExchange = 0;
/** 64 random bits: gateways sharing workers do not collide on engine request ids. */
const ROUTER_ID_PREFIX = `kvg-${randomBytes(8).toString("hex")}-`;

interface Attempt {
  n: number;
  decision: RouteDecision;
  requestId: string;
  record: WorkerRecord | undefined;
  /** What the worker is asked and answers in. */
  format: Format;
  /** Rewrite events into the client's stream (continuation, or ids to strip). */
  rewrite: boolean;
  /** Tokens already sent to the client when this attempt began. */
  baseTokens: number;
  controller: Dispatcher.DispatchController | null;
  status: number;
  headers: Record<string, string | string[] | undefined> | null;
  splitter: SseSplitter;
  chunks: Buffer[];
  bytes: number;
  sawDone: boolean;
  errorEvent: boolean;
  tokens: number;
  firstToken: boolean;
  /** Lifecycle closed (finished + released). */
  closed: boolean;
  /** The request was aborted by us (cancellation). */
  aborted: boolean;
  /** The engine answered `finish_reason: "abort"`, which the gateway did not ask for. */
  engineAbort: boolean;
}

export class Exchange {
  private readonly t0 = performance.now();
  /** The client's x-request-id, or a fresh UUID: echoed to the client and logged, never sent to engines. */
  private readonly baseId: string;
  /** Unique in this gateway: the prefix of the router's and the engines' request ids. */
  private readonly routerBase = `${ROUTER_ID_PREFIX}${(nextExchange++).toString(36)}`;
  private attempt: Attempt | null = null;
  private attempts = 0;
  private migrations = 0;
  private connectRetries = 0;
  private readonly failed: WorkerTarget[] = [];
  private done = false;
  private clientGone = false;
  private waitAbort: AbortController | null = null;
  /** The phase the request is in, for the cancellation metric. */
  private phase: "queued" | "prefill" | "upstream" = "queued";
  private prefillController: Dispatcher.DispatchController | null = null;
  private prefillWorker: string | null = null;
  /** The conditional-disaggregation choice (disaggregated models only), for headers and logs. */
  private disagg: DisaggDecision | null = null;
  private kvTransferParams: Record<string, unknown> | null = null;

  // The client's view of a stream.
  private headersSent = false;
  private streamId: string | null = null;
  private streamCreated: number | null = null;
  private roleSent = false;
  /** Token ids sent to the client (when the worker returns them). */
  private readonly sentIds: number[] = [];
  private sentTokens = 0;
  private idsComplete = true;
  private enginePromptIds: number[] | null = null;
  private lastTokenAt = 0;
  private firstTokenSeen = false;
  private waitingDrain = false;
  private wroteBody = false;
  /** Ask workers for token ids (migration on and the request can be continued). */
  private readonly trackIds: boolean;
  /** Compare the worker's prompt ids with the router's (the tokenization parity check); decided at the first send. */
  private checkIds: boolean | null = null;
  private checkedIds = false;
  private readonly tokens: TokenIds;

  constructor(
    private readonly ctx: GatewayContext,
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    private readonly parsed: ParsedRequest,
    private readonly model: string,
    private readonly key: PromptKey,
    /** The client's body bytes when they can be forwarded unchanged. */
    private readonly raw: Buffer | null,
  ) {
    const given = req.headers["x-request-id"];
    this.baseId = typeof given === "string" && given.length > 0 && given.length <= 128 ? given : randomUUID();
    this.trackIds = ctx.config.migrationLimit > 0 && parsed.stream && parsed.n === 1 && !parsed.batched && !parsed.echo;
    this.tokens = key.tokens;
    res.on("close", () => {
      if (!this.done) this.onClientGone();
    });
  }

  /** Runs the exchange; never throws (errors become responses). */
  async run(): Promise<void> {
    try {
      const fleet = this.ctx.fleet.of(this.model);
      const decision = await this.admit();
      if (this.clientGone) {
        this.closeLifecycle(decision, "cancelled");
        return;
      }
      if (fleet.disaggregated) await this.remotePrefill(decision);
      if (this.clientGone) {
        this.closeLifecycle(decision, "cancelled");
        return;
      }
      this.send(decision);
    } catch (err) {
      this.fail(toGatewayError(err));
    }
  }

  // ---- admission and routing ----

  private admit(): Promise<RouteDecision> | RouteDecision {
    const model = this.model;
    const targets = () => this.ctx.fleet.of(model).serving;
    return this.ctx.admission.admit(model, targets, (full) => this.route(full), () => this.waitSignal());
  }

  /** Aborted when the client goes away while the request waits for admission. */
  private waitSignal(): AbortSignal {
    return (this.waitAbort ??= new AbortController()).signal;
  }

  /** Routes among the serving targets not in `busy` or already failed; takes a slot. */
  private route(busy: readonly WorkerTarget[]): RouteDecision {
    const { serving, nonServing } = this.ctx.fleet.of(this.model);
    const others = this.key.exclude ? [...nonServing, ...this.key.exclude] : nonServing;
    const suspects = this.ctx.suspects.among(serving);
    let exclude: readonly WorkerTarget[] =
      busy.length === 0 && this.failed.length === 0 && suspects.length === 0 ? others : [...others, ...this.failed, ...busy, ...suspects];
    // Busy or suspect workers are still better than none; ones that failed this request are not.
    if (exclude.length > 0 && covers(exclude, serving)) exclude = [...others, ...this.failed, ...suspects];
    if (exclude.length > 0 && covers(exclude, serving)) exclude = [...others, ...this.failed];
    if (exclude.length > 0 && covers(exclude, serving)) throw new NoHealthyWorkerError(this.model, this.failed.length > 0 ? "every worker failed this request" : undefined);
    // Router ids are the gateway's own (clients may reuse an x-request-id); see upstreamId().
    const requestId = `${this.routerBase}~${this.attempts}`;
    const decision = this.ctx.router.route({
      model: this.model,
      tokens: this.tokens,
      requestId,
      exclude,
      ...(this.parsed.cacheSalt !== null ? { cacheSalt: this.parsed.cacheSalt } : {}),
      ...(this.parsed.maxTokens !== null ? { maxTokens: Math.max(1, this.parsed.maxTokens - this.sentTokens) } : {}),
      ...(this.key.promptEmbeds ? { promptEmbeds: this.key.promptEmbeds } : {}),
    });
    this.attempts++;
    const record = this.ctx.fleet.record(decision.workerId);
    this.ctx.metrics.decision(this.model, decision, record?.blockSize ?? 16, this.tokens.length);
    this.ctx.router.started(decision);
    this.ctx.admission.take(decision.workerId, decision.dpRank);
    return decision;
  }

  private closeLifecycle(decision: RouteDecision, outcome: "ok" | "error" | "cancelled"): void {
    this.ctx.router.finished(decision.requestId, outcome);
    this.ctx.admission.release(decision.workerId, decision.dpRank);
  }

  // ---- disaggregation ----

  /**
   * Decides (disagg-policy.ts) whether a prefill worker prefills, chosen KV-aware among the
   * prefill workers (overlap and prefill load); if so runs the prefill leg (prefill-leg.ts) and
   * keeps the `kv_transfer_params` it returns for the decode leg. A prefill worker that fails
   * (refused, reset, died) is replaced once by another prefill worker; then the decode worker
   * prefills itself.
   */
  private async remotePrefill(decode: RouteDecision): Promise<void> {
    // Untokenized prompts: about four characters a token, so long prompts still prefill remotely.
    const promptTokens = this.key.untokenized ? estimatedTokens(this.parsed) : this.tokens.length;
    const failed: WorkerTarget[] = [];
    for (let attempt = 0; attempt < 2; attempt++) {
      const pDecision = routePrefillWorker(this.ctx, {
        model: this.model,
        tokens: this.tokens,
        requestId: `${this.routerBase}~prefill${failed.length > 0 ? failed.length : ""}`,
        cacheSalt: this.parsed.cacheSalt,
        failed,
      });
      if (attempt === 0) {
        this.disagg = chooseDisaggPath(this.ctx, decode, pDecision, promptTokens, true);
        this.ctx.metrics.disaggDecisions.inc({ model: this.model, path: this.disagg.path, reason: this.disagg.reason });
        if (this.disagg.path === "local") {
          if (pDecision) this.ctx.router.finished(pDecision.requestId, "cancelled");
          this.ctx.metrics.remotePrefills.inc({ model: this.model, where: "local" });
          return;
        }
      }
      if (!pDecision) break;
      const result = await this.runPrefill(pDecision, decode);
      if (result === "ok" || result === "cancelled" || this.clientGone) return;
      if (result === "refused") break;
      failed.push(pDecision);
    }
    this.prefillWorker = null;
    this.ctx.metrics.remotePrefills.inc({ model: this.model, where: "local_fallback" });
  }

  /** One prefill leg: "ok" (params kept), "cancelled" (client gone), "refused" or "failed". */
  private async runPrefill(pDecision: RouteDecision, decode: RouteDecision): Promise<"ok" | "cancelled" | "refused" | "failed"> {
    this.phase = "prefill";
    this.ctx.router.started(pDecision);
    this.ctx.admission.take(pDecision.workerId, pDecision.dpRank);
    this.prefillWorker = pDecision.workerId;
    const body = prefillLegBody(this.parsed.body, this.model);
    let outcome: "ok" | "error" | "cancelled" = "error";
    try {
      const { status, text } = await this.collect(
        pDecision.url,
        PATHS[this.parsed.endpoint],
        Buffer.from(JSON.stringify(body)),
        (c) => (this.prefillController = c),
        pDecision.requestId,
        pDecision,
      );
      if (this.clientGone) {
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
        this.kvTransferParams = params;
        outcome = "ok";
        this.ctx.metrics.remotePrefills.inc({ model: this.model, where: "remote" });
        return "ok";
      }
      this.ctx.log(`prefill on ${pDecision.workerId} answered ${status} without usable kv_transfer_params; prefilling on ${decode.workerId}`);
      this.prefillWorker = null;
      return "refused";
    } catch (err) {
      if (this.clientGone) {
        outcome = "cancelled";
        return "cancelled";
      }
      this.ctx.metrics.upstreamErrors.inc({ worker: pDecision.workerId, kind: "prefill" });
      this.ctx.suspects.mark(pDecision.workerId);
      this.ctx.log(`prefill on ${pDecision.workerId} failed (${describe(err)})`);
      this.prefillWorker = null;
      return "failed";
    } finally {
      this.prefillController = null;
      this.closeLifecycle(pDecision, outcome);
      this.phase = "upstream";
    }
  }

  /** A whole (non-streamed) upstream exchange, bounded in size. */
  private collect(
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
      this.ctx.upstream.send(url, path, body, {
        onStart: (c) => {
          onStart(c);
          if (this.clientGone) c.abort(new Error("client disconnected"));
        },
        onHeaders: (s) => {
          status = s;
        },
        onData: (chunk) => {
          size += chunk.length;
          if (size > MAX_RESPONSE_BYTES) {
            this.prefillController?.abort(new Error("response too large"));
            return;
          }
          chunks.push(chunk);
        },
        onEnd: () => resolve({ status, text: Buffer.concat(chunks).toString("utf8") }),
        onError: reject,
      }, upstreamHeaders(requestId, target, this.ctx.fleet.record(target.workerId)));
    });
  }

  // ---- forwarding ----

  private send(decision: RouteDecision): void {
    if (this.clientGone) {
      this.closeLifecycle(decision, "cancelled");
      return;
    }
    this.phase = "upstream";
    this.checkIds ??= this.key.tokenizer !== null && !this.parsed.batched && !this.parsed.echo && this.ctx.tokenizationCheck.sample(decision.workerId);
    const continuing = this.headersSent && this.parsed.stream;
    const canContinueIds = continuing && this.sentTokens > 0;
    const format: Format = canContinueIds ? "completions" : this.parsed.endpoint;
    const attempt: Attempt = {
      n: this.attempts - 1,
      decision,
      requestId: decision.requestId,
      record: this.ctx.fleet.record(decision.workerId),
      format,
      rewrite: continuing || (this.asksIds && !this.parsed.returnTokenIds),
      baseTokens: this.sentTokens,
      controller: null,
      status: 0,
      headers: null,
      splitter: new SseSplitter(),
      chunks: [],
      bytes: 0,
      sawDone: false,
      errorEvent: false,
      tokens: 0,
      firstToken: false,
      closed: false,
      aborted: false,
      engineAbort: false,
    };
    this.attempt = attempt;
    const body = canContinueIds ? this.continuationBody() : this.wholeBody();
    this.ctx.upstream.send(decision.url, PATHS[format], body, {
      onStart: (c) => {
        attempt.controller = c;
        if (this.clientGone) this.abortAttempt(attempt);
      },
      onHeaders: (status, headers) => this.onHeaders(attempt, status, headers),
      onData: (chunk) => this.onData(attempt, chunk),
      onEnd: () => this.onEnd(attempt),
      onError: (err) => this.onError(attempt, err),
    }, upstreamHeaders(attempt.requestId, decision, attempt.record));
  }

  /** The request as the client sent it, with what the gateway adds (model, token ids, KV params). */
  private wholeBody(): Buffer {
    const changes: Record<string, unknown> = {};
    if (this.parsed.model === null) changes["model"] = this.model;
    if (this.asksIds && !this.parsed.returnTokenIds) changes["return_token_ids"] = true;
    if (this.kvTransferParams) changes["kv_transfer_params"] = this.kvTransferParams;
    if (this.raw) return withFields(this.raw, changes);
    return Buffer.from(JSON.stringify({ ...this.parsed.body, ...changes }));
  }

  /** The gateway asks workers for token ids (migration or the parity check needs them). */
  private get asksIds(): boolean {
    return this.trackIds || this.checkIds === true;
  }

  /** The parity check, once per request, on the first prompt ids a worker reports. */
  private checkPromptIds(attempt: Attempt, ids: readonly number[]): void {
    if (!this.checkIds || this.checkedIds) return;
    this.checkedIds = true;
    this.ctx.tokenizationCheck.compare(this.model, attempt.decision.workerId, this.tokens, ids, this.key.tokenizer);
  }

  /**
   * A whole (non-streamed) response of a checked request: compares its prompt ids, and drops the
   * ids the client did not ask for (they read null, as the engine would have sent them).
   */
  private checkWholeResponse(attempt: Attempt, body: Buffer): Buffer {
    let obj: StreamChunk;
    try {
      obj = JSON.parse(body.toString("utf8")) as StreamChunk;
    } catch {
      return body;
    }
    const ids = obj.prompt_token_ids ?? obj.choices?.[0]?.prompt_token_ids;
    if (Array.isArray(ids)) this.checkPromptIds(attempt, ids);
    if (this.parsed.returnTokenIds) return body;
    if (obj.prompt_token_ids !== undefined) obj.prompt_token_ids = null;
    for (const c of obj.choices ?? []) {
      if (c.prompt_token_ids !== undefined) c.prompt_token_ids = null;
      if (c.token_ids !== undefined) c.token_ids = null;
    }
    return Buffer.from(JSON.stringify(obj));
  }

  /** A completions request continuing the stream: prompt = engine prompt ids + ids sent so far. */
  private continuationBody(): Buffer {
    const src = this.parsed.body;
    const body: Record<string, unknown> = {};
    if (this.parsed.endpoint === "completions") {
      Object.assign(body, src);
      delete body["prompt_logprobs"];
      delete body["kv_transfer_params"];
    } else {
      for (const f of CONTINUATION_FIELDS) if (src[f] !== undefined) body[f] = src[f];
    }
    body["model"] = this.model;
    body["prompt"] = [...this.enginePromptIds!, ...this.sentIds];
    body["stream"] = true;
    body["echo"] = false;
    body["return_token_ids"] = true;
    delete body["max_completion_tokens"];
    if (this.parsed.maxTokens !== null) body["max_tokens"] = Math.max(1, this.parsed.maxTokens - this.sentTokens);
    else delete body["max_tokens"];
    if (this.parsed.minTokens !== null) body["min_tokens"] = Math.max(0, this.parsed.minTokens - this.sentTokens);
    if (this.parsed.includeUsage) body["stream_options"] = { include_usage: true };
    else delete body["stream_options"];
    return Buffer.from(JSON.stringify(body));
  }

  private kvrouteHeaders(attempt: Attempt): Record<string, string> {
    const h: Record<string, string> = {
      "x-kvroute-worker": attempt.decision.workerId,
      "x-kvroute-dp-rank": String(attempt.decision.dpRank),
      "x-kvroute-overlap-blocks": String(attempt.decision.overlapBlocks),
      "x-request-id": this.baseId,
      "x-kvroute-request-id": attempt.requestId,
    };
    if (this.prefillWorker) h["x-kvroute-prefill-worker"] = this.prefillWorker;
    if (this.disagg) h["x-kvroute-disagg"] = `${this.disagg.path}; reason=${this.disagg.reason}; uncached=${this.disagg.uncachedTokens}`;
    return h;
  }

  private onHeaders(attempt: Attempt, status: number, headers: Record<string, string | string[] | undefined>): void {
    attempt.status = status;
    attempt.headers = headers;
    if (this.clientGone || this.attempt !== attempt) return;
    if (status === 200 && this.parsed.stream && !this.headersSent) {
      const out: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(headers)) if (v !== undefined && !HOP_HEADERS.has(k)) out[k] = v;
      out["content-type"] ??= "text/event-stream; charset=utf-8";
      out["cache-control"] = "no-cache";
      Object.assign(out, this.kvrouteHeaders(attempt));
      this.res.writeHead(200, out);
      this.headersSent = true;
      // The headers go out with the first event when it is already here (one write instead of
      // two); otherwise (a long prefill) on their own right after.
      setImmediate(() => {
        if (!this.res.writableEnded && !this.res.destroyed && this.res.writableLength === 0 && !this.wroteBody) this.res.flushHeaders();
      });
    }
  }

  private onData(attempt: Attempt, chunk: Buffer): void {
    if (this.attempt !== attempt || this.clientGone) return;
    if (!(attempt.status === 200 && this.parsed.stream)) {
      attempt.bytes += chunk.length;
      if (attempt.bytes > MAX_RESPONSE_BYTES) {
        attempt.controller?.abort(new Error(`response larger than ${MAX_RESPONSE_BYTES} bytes`));
        return;
      }
      attempt.chunks.push(chunk);
      return;
    }
    const whole = attempt.splitter.push(chunk);
    if (attempt.splitter.pendingBytes > MAX_EVENT_BYTES) {
      attempt.controller?.abort(new Error(`an event larger than ${MAX_EVENT_BYTES} bytes`));
      return;
    }
    if (!whole) return;
    let out: string | Buffer = "";
    let tokens = 0;
    // Events after an engine abort (the abort's own chunk, [DONE]) are not the client's.
    let kept = 0;
    if (attempt.rewrite) {
      const fast = this.fastPathOpen(attempt);
      forEachData(whole, (data) => {
        if (attempt.engineAbort) return;
        const scanned = fast ? scanTokenEvent(data, !this.parsed.returnTokenIds) : null;
        if (scanned) {
          tokens += this.noteIds(scanned.tokenIds);
          out += sseEvent(scanned.data);
          return;
        }
        const r = this.rewriteEvent(attempt, data);
        if (attempt.engineAbort) return;
        tokens += r.tokens;
        if (r.text !== null) out += r.text;
      });
    } else {
      const fast = this.fastPathOpen(attempt);
      forEachData(whole, (data) => {
        if (attempt.engineAbort) return;
        const scanned = fast ? scanTokenEvent(data, false) : null;
        const n = scanned ? this.noteIds(scanned.tokenIds) : this.inspectEvent(attempt, data);
        if (attempt.engineAbort) return;
        tokens += n;
        kept++;
      });
      out = attempt.engineAbort ? firstEvents(whole, kept) : whole;
    }
    if (tokens > 0) this.onTokens(attempt, tokens);
    if (attempt.engineAbort) {
      if (out.length > 0) this.write(attempt, out);
      return this.onEngineAbort(attempt);
    }
    if (attempt.sawDone && !attempt.errorEvent && this.attempt === attempt) {
      // The stream is complete: the last events and the end of the response in one write.
      this.done = true;
      this.wroteBody = true;
      this.res.end(out);
      return;
    }
    if (out.length > 0) this.write(attempt, out);
  }

  /**
   * Whether this attempt's token events may take the scan (sse-scan.ts) instead of a full parse:
   * the stream's identity and prompt ids are known (the first event was parsed), it is not a
   * continuation (whose events are rewritten), and it has one choice.
   */
  private fastPathOpen(attempt: Attempt): boolean {
    return (
      attempt.baseTokens === 0 &&
      attempt.n === 0 &&
      attempt.format === this.parsed.endpoint &&
      this.parsed.n === 1 &&
      !this.parsed.batched &&
      this.streamId !== null &&
      (this.enginePromptIds !== null || !this.asksIds)
    );
  }

  /** A scanned token event: its ids counted and, for migration, remembered. */
  private noteIds(ids: number[]): number {
    if (this.trackIds) for (const id of ids) this.sentIds.push(id);
    return ids.length;
  }

  /** Passthrough: counts tokens and notes ids, ids of the prompt and the stream's identity. */
  private inspectEvent(attempt: Attempt, data: string): number {
    if (data === "[DONE]") {
      attempt.sawDone = true;
      return 0;
    }
    let obj: StreamChunk;
    try {
      obj = JSON.parse(data) as StreamChunk;
    } catch {
      return 0;
    }
    return this.noteChunk(attempt, obj);
  }

  private noteChunk(attempt: Attempt, obj: StreamChunk): number {
    if (obj.error !== undefined) {
      attempt.errorEvent = true;
      return 0;
    }
    if (isEngineAbort(obj)) {
      attempt.engineAbort = true;
      return 0;
    }
    if (this.streamId === null && typeof obj.id === "string") {
      this.streamId = obj.id;
      this.streamCreated = typeof obj.created === "number" ? obj.created : null;
    }
    if (this.enginePromptIds === null) {
      const p = obj.prompt_token_ids ?? obj.choices?.[0]?.prompt_token_ids;
      if (Array.isArray(p)) {
        this.enginePromptIds = p;
        this.checkPromptIds(attempt, p);
      }
    }
    let tokens = 0;
    const choices = obj.choices;
    if (Array.isArray(choices)) {
      for (const c of choices) {
        const ids = c.token_ids;
        if (Array.isArray(ids)) {
          tokens += ids.length;
          if (this.trackIds && c.index === 0) for (const id of ids) this.sentIds.push(id);
        } else if ((typeof c.text === "string" && c.text.length > 0) || (typeof c.delta?.content === "string" && c.delta.content.length > 0)) {
          tokens += 1;
          if (this.trackIds) this.idsComplete = false;
        }
        if (c.delta?.role !== undefined) this.roleSent = true;
      }
    }
    return tokens;
  }

  /** Rewrites one event into the client's stream; returns the text to send (null: drop). */
  private rewriteEvent(attempt: Attempt, data: string): { text: string | null; tokens: number } {
    if (data === "[DONE]") {
      attempt.sawDone = true;
      return { text: sseEvent("[DONE]"), tokens: 0 };
    }
    let obj: StreamChunk;
    try {
      obj = JSON.parse(data) as StreamChunk;
    } catch {
      return { text: sseEvent(data), tokens: 0 };
    }
    if (obj.error !== undefined) {
      attempt.errorEvent = true;
      return { text: sseEvent(data), tokens: 0 };
    }
    if (isEngineAbort(obj)) {
      attempt.engineAbort = true;
      return { text: null, tokens: 0 };
    }
    const continuing = attempt.baseTokens > 0 || attempt.n > 0;
    const hadRole = this.roleSent;
    const tokens = this.noteChunk(attempt, obj);
    const keepIds = this.parsed.returnTokenIds;
    if (continuing && this.streamId !== null) {
      obj.id = this.streamId;
      if (this.streamCreated !== null) obj.created = this.streamCreated;
    }
    if (attempt.format === "completions" && this.parsed.endpoint === "chat") {
      // A chat stream continued through /v1/completions: back to chat chunks.
      const chat: StreamChunk = {
        id: obj.id,
        object: "chat.completion.chunk",
        created: obj.created,
        model: obj.model,
        choices: (obj.choices ?? []).map((c) => {
          // vLLM's chat chunk: stop_reason only on the final one; token_ids null unless asked for.
          const choice: StreamChoice = { index: c.index, delta: c.text ? { content: c.text } : {}, logprobs: null, finish_reason: c.finish_reason ?? null };
          if (c.finish_reason) choice.stop_reason = c.stop_reason ?? null;
          choice.token_ids = keepIds ? (c.token_ids ?? null) : null;
          return choice;
        }),
      };
      if (obj.usage) chat.usage = obj.usage;
      obj = chat;
    } else if (continuing && hadRole) {
      // A chat stream re-issued whole after its role chunk was sent: do not send it twice.
      const choices = obj.choices ?? [];
      for (const c of choices) if (c.delta?.role !== undefined) delete c.delta.role;
      if (choices.length > 0 && choices.every((c) => c.delta && Object.keys(c.delta).length === 0 && !c.finish_reason) && !obj.usage) {
        return { text: null, tokens };
      }
    }
    // Ids the client did not ask for read null, as the engine would have sent them.
    if (obj.prompt_token_ids !== undefined && (continuing || !keepIds)) obj.prompt_token_ids = null;
    for (const c of obj.choices ?? []) {
      if (c.prompt_token_ids !== undefined && (continuing || !keepIds)) c.prompt_token_ids = null;
      if (c.token_ids !== undefined && !keepIds) c.token_ids = null;
    }
    if (obj.usage && continuing) {
      const prompt = this.enginePromptIds?.length ?? obj.usage.prompt_tokens - attempt.baseTokens;
      const completion = attempt.baseTokens + (obj.usage.completion_tokens ?? 0);
      obj.usage = { ...obj.usage, prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
    }
    return { text: sseEvent(JSON.stringify(obj)), tokens };
  }

  private onTokens(attempt: Attempt, n: number): void {
    const now = performance.now();
    if (!attempt.firstToken) {
      attempt.firstToken = true;
      this.ctx.router.firstToken(attempt.requestId);
    }
    if (!this.firstTokenSeen) {
      this.firstTokenSeen = true;
      this.ctx.metrics.firstToken(this.model, (now - this.t0) / 1000);
    } else {
      const gap = (now - this.lastTokenAt) / 1000;
      this.ctx.metrics.interToken(this.model, gap / n);
    }
    this.lastTokenAt = now;
    attempt.tokens += n;
    this.sentTokens += n;
    this.ctx.router.tokens(attempt.requestId, attempt.tokens);
  }

  /** Writes to the client; when its socket is full, pauses the worker until it drains. */
  private write(attempt: Attempt, data: string | Buffer): void {
    this.wroteBody = true;
    if (this.res.write(data)) return;
    if (this.waitingDrain) {
      attempt.controller?.pause();
      return;
    }
    this.waitingDrain = true;
    attempt.controller?.pause();
    this.res.once("drain", () => {
      this.waitingDrain = false;
      const live = this.attempt;
      if (live && !live.closed && live.controller?.paused) live.controller.resume();
    });
  }

  private onEnd(attempt: Attempt): void {
    if (this.attempt !== attempt || attempt.closed) return;
    if (this.clientGone) return this.closeAttempt(attempt, "cancelled");
    if (attempt.status === 200 && this.parsed.stream) {
      if (attempt.sawDone) {
        this.closeAttempt(attempt, attempt.errorEvent ? "error" : "ok");
        this.complete();
        return;
      }
      return this.onFailure(attempt, "broken", new Error("the stream ended without [DONE]"));
    }
    let body = attempt.chunks.length === 1 ? attempt.chunks[0]! : Buffer.concat(attempt.chunks);
    attempt.chunks = [];
    if (attempt.status === 200 && this.checkIds && !this.checkedIds && !this.headersSent) body = this.checkWholeResponse(attempt, body);
    if (attempt.status === 502 || attempt.status === 503) {
      // The worker is shutting down or overloaded: nothing was done, try another one.
      if (!this.headersSent) return this.onFailure(attempt, "not_started", new Error(`HTTP ${attempt.status}`));
    }
    if (attempt.status === 200 && !this.headersSent && isAbortedResponse(body)) {
      return this.onFailure(attempt, "aborted", new Error('the engine aborted the request (finish_reason "abort")'));
    }
    if (attempt.status === 200) {
      const completion = usageCompletionTokens(body);
      if (completion !== null) this.ctx.router.tokens(attempt.requestId, completion);
    }
    this.closeAttempt(attempt, attempt.status === 200 ? "ok" : "error");
    if (this.headersSent) {
      // A continuation answered with an error (e.g. the prompt grew past the context): end the stream.
      this.streamError(new UpstreamFailedError(attempt.decision.workerId, `HTTP ${attempt.status}: ${body.toString("utf8").slice(0, 500)}`));
      return;
    }
    const out: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(attempt.headers ?? {})) if (v !== undefined && !HOP_HEADERS.has(k)) out[k] = v;
    out["content-length"] = String(body.length);
    Object.assign(out, this.kvrouteHeaders(attempt));
    this.res.writeHead(attempt.status, out);
    this.headersSent = true;
    this.res.end(body);
    this.complete();
  }

  private onError(attempt: Attempt, err: Error): void {
    if (this.attempt !== attempt || attempt.closed) return;
    if (attempt.sawDone) return this.closeAttempt(attempt, attempt.errorEvent ? "error" : "ok");
    if (this.clientGone || attempt.aborted) return this.closeAttempt(attempt, "cancelled");
    const code = (err as { code?: string }).code ?? "";
    let kind: FailureKind;
    if (code === "UND_ERR_HEADERS_TIMEOUT") kind = "timeout";
    else if (attempt.status === 0 && NOT_STARTED.has(code)) kind = "not_started";
    else kind = "broken";
    this.onFailure(attempt, kind, err);
  }

  /** A stream the engine aborted: a failure like a broken stream; the rest of it is not read. */
  private onEngineAbort(attempt: Attempt): void {
    if (this.attempt !== attempt || attempt.closed) return;
    this.onFailure(attempt, "aborted", new Error('the engine aborted the request (finish_reason "abort")'));
    attempt.controller?.abort(new Error("aborted by the engine"));
  }

  private onFailure(attempt: Attempt, kind: FailureKind, err: Error): void {
    const worker = attempt.decision.workerId;
    this.ctx.metrics.upstreamErrors.inc({ worker, kind });
    this.ctx.suspects.mark(worker);
    this.closeAttempt(attempt, "error");
    if (kind === "timeout") {
      const timeout = new UpstreamTimeoutError(worker, this.ctx.config.upstreamTimeoutMs);
      return this.headersSent ? this.streamError(timeout) : this.fail(timeout);
    }
    this.failed.push({ workerId: worker, dpRank: attempt.decision.dpRank });
    const streaming = this.headersSent && this.parsed.stream;
    let retry = false;
    if (kind === "not_started" && !streaming && this.connectRetries < this.ctx.config.connectRetries) {
      this.connectRetries++;
      retry = true;
    } else if (this.migrations < this.ctx.config.migrationLimit && this.canContinue()) {
      this.migrations++;
      this.ctx.metrics.migrations.inc({ model: this.model });
      retry = true;
    }
    const failure = new UpstreamFailedError(worker, `${describe(err)}`, err);
    if (!retry) return streaming ? this.streamError(failure) : this.fail(failure);
    let decision: RouteDecision;
    try {
      decision = this.route(this.ctx.admission.full(this.ctx.fleet.of(this.model).serving));
    } catch (e) {
      const ge = toGatewayError(e);
      return streaming ? this.streamError(ge) : this.fail(ge);
    }
    this.ctx.log(
      `${kind === "not_started" ? "retrying" : "migrating"} request ${this.baseId} (engine id ${attempt.requestId}) from ${worker} (${describe(err)})` +
        (streaming ? ` after ${this.sentTokens} token(s)` : "") +
        ` to ${decision.workerId} as ${decision.requestId}`,
    );
    // The KV blocks a prefill worker sent belong to the failed decode worker.
    this.kvTransferParams = null;
    this.prefillWorker = null;
    this.send(decision);
  }

  /** Whether what was sent so far can be continued on another worker. */
  private canContinue(): boolean {
    if (!(this.headersSent && this.parsed.stream)) return true;
    if (this.sentTokens === 0) return true;
    return this.trackIds && this.idsComplete && this.enginePromptIds !== null && this.sentIds.length === this.sentTokens;
  }

  private closeAttempt(attempt: Attempt, outcome: "ok" | "error" | "cancelled"): void {
    if (attempt.closed) return;
    attempt.closed = true;
    this.closeLifecycle(attempt.decision, outcome);
  }

  private abortAttempt(attempt: Attempt): void {
    attempt.aborted = true;
    attempt.controller?.abort(new Error("client disconnected"));
  }

  // ---- endings ----

  private onClientGone(): void {
    if (this.clientGone || this.done) return;
    this.clientGone = true;
    this.done = true;
    const phase = this.phase === "upstream" && this.firstTokenSeen ? "decode" : this.phase === "queued" ? "queued" : "prefill";
    this.ctx.metrics.cancellations.inc({ model: this.model, phase });
    this.waitAbort?.abort(new Error("client disconnected"));
    this.prefillController?.abort(new Error("client disconnected"));
    const a = this.attempt;
    if (a && !a.closed) {
      this.abortAttempt(a);
      this.closeAttempt(a, "cancelled");
    }
  }

  private complete(): void {
    this.done = true;
    if (this.parsed.stream && !this.res.writableEnded) this.res.end();
  }

  /** An error after the stream started: vLLM's in-stream error event, then [DONE]. */
  private streamError(err: GatewayError): void {
    this.done = true;
    if (this.clientGone || this.res.writableEnded) return;
    this.res.end(sseEvent(JSON.stringify(err.toJSON())) + sseEvent("[DONE]"));
  }

  /** An error before anything was sent: the OpenAI-shaped JSON with its status. */
  private fail(err: GatewayError): void {
    if (this.headersSent) return this.streamError(err);
    this.done = true;
    if (this.clientGone || this.res.writableEnded) return;
    sendJsonError(this.res, err);
  }
}

export function sendJsonError(res: ServerResponse, err: GatewayError, close = false): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const body = JSON.stringify(err.toJSON());
  const headers: Record<string, string> = { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) };
  if (close) headers["connection"] = "close";
  if (err.status === 405 && "allow" in err) headers["allow"] = String((err as { allow: string }).allow);
  if (err.status === 503) headers["retry-after"] = "1";
  res.writeHead(err.status, headers);
  res.end(body);
}

/**
 * Headers of a request to a worker: its request id (vLLM's `X-Request-Id`) and, when the process
 * hosts several DP ranks behind one port, the rank the router chose (vLLM's
 * `X-data-parallel-rank`; a process running one external rank takes no rank header).
 */
function upstreamHeaders(requestId: string, target: WorkerTarget, record: WorkerRecord | undefined): Record<string, string> {
  const h: Record<string, string> = { "x-request-id": requestId };
  if (record && record.dpRanks.length > 1) h["x-data-parallel-rank"] = String(target.dpRank);
  return h;
}

const ABORT_MARK = Buffer.from('"finish_reason":"abort"');

/** A chunk or response some choice of which the engine aborted. */
function isEngineAbort(obj: StreamChunk): boolean {
  const choices = obj.choices;
  if (!Array.isArray(choices)) return false;
  for (const c of choices) if (c && c.finish_reason === "abort") return true;
  return false;
}

const CLOSE_BRACE = 0x7d;
const OPEN_BRACE = 0x7b;

function isJsonSpace(b: number): boolean {
  return b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
}

/**
 * The client's JSON object with `fields` set, as bytes: the client's bytes unchanged and the fields
 * appended before the closing brace. A field the client also sent appears twice; the later one
 * wins in every JSON parser an engine uses (Python's json, JSON.parse), so this equals re-serialising
 * the merged object at a fraction of the cost for a long prompt.
 */
export function withFields(raw: Buffer, fields: Record<string, unknown>): Buffer {
  const keys = Object.keys(fields);
  if (keys.length === 0) return raw;
  let end = raw.length - 1;
  while (end >= 0 && isJsonSpace(raw[end]!)) end--;
  let before = end - 1;
  while (before >= 0 && isJsonSpace(raw[before]!)) before--;
  if (end < 1 || raw[end] !== CLOSE_BRACE) return Buffer.from(JSON.stringify({ ...(JSON.parse(raw.toString("utf8")) as object), ...fields }));
  let added = raw[before] === OPEN_BRACE ? "" : ",";
  keys.forEach((k, i) => (added += `${i > 0 ? "," : ""}${JSON.stringify(k)}:${JSON.stringify(fields[k])}`));
  const tail = Buffer.from(added);
  return Buffer.concat([raw.subarray(0, end), tail, raw.subarray(end)], raw.length + tail.length);
}

/**
 * A whole 200 response with `finish_reason: "abort"`. The byte match is exact on vLLM's compact
 * JSON (that sequence cannot occur inside a JSON string, whose quotes are escaped); it only
 * decides whether to parse.
 */
function isAbortedResponse(body: Buffer): boolean {
  if (body.indexOf(ABORT_MARK) < 0) return false;
  try {
    return isEngineAbort(JSON.parse(body.toString("utf8")) as StreamChunk);
  } catch {
    return false;
  }
}

/** The first `count` events of `whole` (vLLM's one `data:` line per event), re-framed. */
function firstEvents(whole: Buffer, count: number): string {
  let out = "";
  let i = 0;
  forEachData(whole, (data) => {
    if (i++ < count) out += sseEvent(data);
  });
  return out;
}

/** Errors that prove the request never reached the worker. */
const NOT_STARTED = new Set(["ECONNREFUSED", "ENOTFOUND", "EHOSTUNREACH", "ENETUNREACH", "EAI_AGAIN", "UND_ERR_CONNECT_TIMEOUT", "UND_ERR_CLOSED", "UND_ERR_DESTROYED"]);

function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const code = (err as { code?: string }).code;
  return code ? `${code}: ${err.message}` : err.message;
}

/** About how many tokens an untokenized prompt has (four characters a token). */
function estimatedTokens(parsed: ParsedRequest): number {
  let chars = parsed.promptText?.length ?? 0;
  for (const m of parsed.messages ?? []) chars += m.text.length;
  return Math.ceil(chars / 4);
}

/** `usage.completion_tokens` of a non-streamed response, without parsing the whole body. */
function usageCompletionTokens(body: Buffer): number | null {
  const tail = body.subarray(Math.max(0, body.length - 512)).toString("latin1");
  const m = /"completion_tokens":\s*(\d+)/.exec(tail);
  return m ? Number(m[1]) : null;
}

interface StreamChoice {
  index: number;
  text?: string;
  delta?: { role?: string; content?: string | null; [k: string]: unknown };
  logprobs?: unknown;
  finish_reason?: string | null;
  stop_reason?: unknown;
  token_ids?: number[] | null;
  prompt_token_ids?: number[] | null;
  [k: string]: unknown;
}

interface StreamChunk {
  id?: string;
  object?: string;
  created?: number;
  model?: string;
  choices?: StreamChoice[];
  usage?: { prompt_tokens: number; completion_tokens?: number; total_tokens?: number; [k: string]: unknown } | null;
  prompt_token_ids?: number[] | null;
  error?: unknown;
  [k: string]: unknown;
}
