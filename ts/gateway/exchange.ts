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
 *
 * This file is the exchange's control flow: admission, routing, forwarding, backpressure, retry
 * and migration decisions, cancellation, endings. An attempt's state, lifecycle and failure
 * classes are in attempt.ts; the client's stream, its continuation and the chunk rewriting in
 * stream-continuation.ts; the disaggregated prefill leg in remote-prefill.ts.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { randomBytes, randomUUID } from "node:crypto";
import type { Dispatcher } from "undici";
import type { RouteDecision, WorkerTarget } from "../router/types.js";
import type { TokenIds } from "../core/block-hasher.js";
import type { GatewayContext } from "./context.js";
import type { PromptKey } from "./gateway.js";
import { GatewayError, NoHealthyWorkerError, UpstreamFailedError, UpstreamTimeoutError, toGatewayError } from "./errors.js";
import type { ParsedRequest } from "./openai-request.js";
import { forEachData, sseEvent } from "./sse.js";
import { scanTextEvent, scanTokenEvent } from "./sse-scan.js";
import { covers, type DisaggDecision } from "./disagg-route.js";
import {
  abortAttempt,
  closeAttempt,
  closeLifecycle,
  describe,
  failureKind,
  isAbortedResponse,
  MAX_RESPONSE_BYTES,
  newAttempt,
  PATHS,
  upstreamHeaders,
  type Attempt,
  type FailureKind,
  type Format,
  type StreamChunk,
} from "./attempt.js";
import { canContinue, continuationBody, firstEvents, inspectEvent, noteIds, rewriteEvent, type ClientStream } from "./stream-continuation.js";
import { remotePrefill, type PrefillState } from "./remote-prefill.js";
import { frontCheckOf, frontFailureOf } from "./front-handoff.js";

/** Largest single SSE event accepted from a worker. */
const MAX_EVENT_BYTES = 16 * 1024 * 1024;

/** Headers not copied from a worker's response. */
const HOP_HEADERS = new Set(["connection", "keep-alive", "transfer-encoding", "content-length", "date", "server", "upgrade", "proxy-connection", "te", "trailer"]);

let nextExchange = 0;
/** 64 random bits: gateways sharing workers do not collide on engine request ids. */
const ROUTER_ID_PREFIX = `kvg-${randomBytes(8).toString("hex")}-`;

/**
 * Members without `private` are the state this exchange hands, as itself, to
 * stream-continuation.ts (ClientStream) and remote-prefill.ts (PrefillState): no copy, no
 * per-request object beyond the exchange.
 */
export class Exchange implements ClientStream, PrefillState {
  private readonly t0 = performance.now();
  /** The client's x-request-id, or a fresh UUID: echoed to the client and logged, never sent to engines. */
  private readonly baseId: string;
  /** Unique in this gateway: the prefix of the router's and the engines' request ids. */
  readonly routerBase = `${ROUTER_ID_PREFIX}${(nextExchange++).toString(36)}`;
  private attempt: Attempt | null = null;
  private attempts = 0;
  private migrations = 0;
  private connectRetries = 0;
  private readonly failed: WorkerTarget[] = [];
  private done = false;
  clientGone = false;
  private waitAbort: AbortController | null = null;
  /** The phase the request is in, for the cancellation metric. */
  phase: "queued" | "prefill" | "upstream" = "queued";
  prefillController: Dispatcher.DispatchController | null = null;
  prefillWorker: string | null = null;
  /** The conditional-disaggregation choice (disaggregated models only), for headers and logs. */
  disagg: DisaggDecision | null = null;
  kvTransferParams: Record<string, unknown> | null = null;

  // The client's view of a stream.
  headersSent = false;
  streamId: string | null = null;
  streamCreated: number | null = null;
  roleSent = false;
  /** Token ids sent to the client (when the worker returns them). */
  readonly sentIds: number[] = [];
  sentTokens = 0;
  idsComplete = true;
  enginePromptIds: number[] | null = null;
  private lastTokenAt = 0;
  private firstTokenSeen = false;
  private waitingDrain = false;
  private wroteBody = false;
  /** Ask workers for token ids (migration on and the request can be continued). */
  readonly trackIds: boolean;
  /** Compare the worker's prompt ids with the router's (the tokenization parity check); decided at the first send. */
  private checkIds: boolean | null = null;
  private checkedIds = false;
  readonly tokens: TokenIds;

  constructor(
    readonly ctx: GatewayContext,
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    readonly parsed: ParsedRequest,
    readonly model: string,
    readonly key: PromptKey,
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
      const refused = this.takeFrontFailure();
      if (refused) return this.fail(refused);
      const fleet = this.ctx.fleet.of(this.model);
      const decision = await this.admit();
      if (this.clientGone) {
        closeLifecycle(this.ctx, decision, "cancelled");
        return;
      }
      if (fleet.disaggregated) await remotePrefill(this, decision);
      if (this.clientGone) {
        closeLifecycle(this.ctx, decision, "cancelled");
        return;
      }
      this.send(decision);
    } catch (err) {
      this.fail(toGatewayError(err));
    }
  }

  /**
   * A request the native front tried first (native-front.ts): its failed attempt becomes this
   * exchange's first, so the retry and migration limits and the failed worker's exclusion hold as
   * if JS had made it (the front already counted the failure in the metrics). Returns the error
   * to answer when no retry is left.
   */
  private takeFrontFailure(): GatewayError | null {
    const f = frontFailureOf(this.req);
    if (!f) return null;
    this.ctx.suspects.mark(f.worker);
    this.failed.push({ workerId: f.worker, dpRank: f.dpRank });
    this.attempts = 1;
    if (!this.takeRetry(f.kind, false)) return new UpstreamFailedError(f.worker, f.detail);
    this.ctx.log(`${f.kind === "not_started" ? "retrying" : "migrating"} request ${this.baseId} from ${f.worker} (${f.detail}), the native front's attempt`);
    return null;
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

  // ---- forwarding ----

  private send(decision: RouteDecision): void {
    if (this.clientGone) {
      closeLifecycle(this.ctx, decision, "cancelled");
      return;
    }
    this.phase = "upstream";
    this.checkIds ??= this.key.tokenizer !== null && !this.parsed.batched && !this.parsed.echo && (frontCheckOf(this.req) || this.ctx.tokenizationCheck.sample(decision.workerId));
    const continuing = this.headersSent && this.parsed.stream;
    const canContinueIds = continuing && this.sentTokens > 0;
    const format: Format = canContinueIds ? "completions" : this.parsed.endpoint;
    const rewrite = continuing || (this.asksIds && !this.parsed.returnTokenIds);
    const attempt = newAttempt(this.attempts - 1, decision, this.ctx.fleet.record(decision.workerId), format, rewrite, this.sentTokens);
    this.attempt = attempt;
    const body = canContinueIds ? continuationBody(this, this.model) : this.wholeBody();
    this.ctx.upstream.send(decision.url, PATHS[format], body, {
      onStart: (c) => {
        attempt.controller = c;
        if (this.clientGone) abortAttempt(attempt);
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
  checkPromptIds(attempt: Attempt, ids: readonly number[]): void {
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
          tokens += noteIds(this, scanned.tokenIds);
          out += sseEvent(scanned.data);
          return;
        }
        const r = rewriteEvent(this, attempt, data);
        if (attempt.engineAbort) return;
        tokens += r.tokens;
        if (r.text !== null) out += r.text;
      });
    } else {
      const fast = this.fastPathOpen(attempt);
      // Events carry ids only when someone asked the engine for them.
      const withIds = this.asksIds || this.parsed.returnTokenIds;
      forEachData(whole, (data) => {
        if (attempt.engineAbort) return;
        let n: number | null = null;
        if (fast && withIds) {
          const scanned = scanTokenEvent(data, false);
          if (scanned) n = noteIds(this, scanned.tokenIds);
        } else if (fast) n = scanTextEvent(data);
        n ??= inspectEvent(this, attempt, data);
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
      // The stream is complete: its booking ends now, and the last events and the end of the
      // response go in one write (in fleet mode the end waits for the bus, as a whole answer does).
      this.done = true;
      this.wroteBody = true;
      closeAttempt(this.ctx, attempt, "ok");
      this.afterLifecycle(() => this.res.writableEnded || this.res.end(out));
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
    if (this.clientGone) return closeAttempt(this.ctx, attempt, "cancelled");
    if (attempt.status === 200 && this.parsed.stream) {
      if (attempt.sawDone) {
        closeAttempt(this.ctx, attempt, attempt.errorEvent ? "error" : "ok");
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
    closeAttempt(this.ctx, attempt, attempt.status === 200 ? "ok" : "error");
    if (this.headersSent) {
      // A continuation answered with an error (e.g. the prompt grew past the context): end the stream.
      this.streamError(new UpstreamFailedError(attempt.decision.workerId, `HTTP ${attempt.status}: ${body.toString("utf8").slice(0, 500)}`));
      return;
    }
    const out: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(attempt.headers ?? {})) if (v !== undefined && !HOP_HEADERS.has(k)) out[k] = v;
    out["content-length"] = String(body.length);
    Object.assign(out, this.kvrouteHeaders(attempt));
    this.headersSent = true;
    this.done = true;
    this.afterLifecycle(() => {
      this.res.writeHead(attempt.status, out);
      this.res.end(body);
    });
  }

  private onError(attempt: Attempt, err: Error): void {
    if (this.attempt !== attempt || attempt.closed) return;
    if (attempt.sawDone) return closeAttempt(this.ctx, attempt, attempt.errorEvent ? "error" : "ok");
    if (this.clientGone || attempt.aborted) return closeAttempt(this.ctx, attempt, "cancelled");
    this.onFailure(attempt, failureKind(attempt, err), err);
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
    closeAttempt(this.ctx, attempt, "error");
    if (kind === "timeout") {
      const timeout = new UpstreamTimeoutError(worker, this.ctx.config.upstreamTimeoutMs);
      return this.headersSent ? this.streamError(timeout) : this.fail(timeout);
    }
    this.failed.push({ workerId: worker, dpRank: attempt.decision.dpRank });
    const streaming = this.headersSent && this.parsed.stream;
    const retry = this.takeRetry(kind, streaming);
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

  /**
   * Whether a failed attempt may be tried again: another worker after a connection that never
   * started (up to `connectRetries`, not once a stream is under way), else a migration (up to
   * `migrationLimit`, when the request can be continued). Counts the try it allows.
   */
  private takeRetry(kind: FailureKind, streaming: boolean): boolean {
    if (kind === "not_started" && !streaming && this.connectRetries < this.ctx.config.connectRetries) {
      this.connectRetries++;
      return true;
    }
    if (this.migrations < this.ctx.config.migrationLimit && canContinue(this)) {
      this.migrations++;
      this.ctx.metrics.migrations.inc({ model: this.model });
      return true;
    }
    return false;
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
      abortAttempt(a);
      closeAttempt(this.ctx, a, "cancelled");
    }
  }

  private complete(): void {
    this.done = true;
    if (this.parsed.stream) this.afterLifecycle(() => this.res.writableEnded || this.res.end());
  }

  /** Runs `end` once the router's lifecycle steps are delivered (fleet mode), at once otherwise. */
  private afterLifecycle(end: () => void): void {
    const delivered = this.ctx.router.lifecycleDelivered?.();
    if (delivered) void delivered.then(end);
    else end();
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

/** `usage.completion_tokens` of a non-streamed response, without parsing the whole body. */
function usageCompletionTokens(body: Buffer): number | null {
  const tail = body.subarray(Math.max(0, body.length - 512)).toString("latin1");
  const m = /"completion_tokens":\s*(\d+)/.exec(tail);
  return m ? Number(m[1]) : null;
}
