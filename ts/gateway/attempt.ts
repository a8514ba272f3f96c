/**
 * One try of a request on one worker (exchange.ts runs them): its state, its lifecycle (every
 * `started` matched by one `finished`, every admission `take` by one `release`), its headers to
 * the worker, and the classes of its failures, which decide whether the exchange retries,
 * migrates or answers with an error:
 * - not started: the request never reached the worker (connection refused, pool closed);
 * - broken: reset, stream ended without `[DONE]`, silence past the idle timeout;
 * - aborted: the engine answered `finish_reason: "abort"`, which the gateway never asks for;
 * - timeout: no headers within the upstream timeout.
 */
import type { Dispatcher } from "undici";
import type { RouteDecision, WorkerTarget } from "../router/types.js";
import type { WorkerRecord } from "../workers/config.js";
import type { GatewayContext } from "./context.js";
import { SseSplitter } from "./sse.js";

/** The OpenAI API a worker is asked and answers in. */
export type Format = "completions" | "chat";

export const PATHS: Record<Format, string> = { completions: "/v1/completions", chat: "/v1/chat/completions" };

/** Largest non-streamed response body accepted from a worker. */
export const MAX_RESPONSE_BYTES = 64 * 1024 * 1024;

export type FailureKind = "not_started" | "broken" | "aborted" | "timeout";

export type Outcome = "ok" | "error" | "cancelled";

export interface Attempt {
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

export function newAttempt(n: number, decision: RouteDecision, record: WorkerRecord | undefined, format: Format, rewrite: boolean, baseTokens: number): Attempt {
  return {
    n,
    decision,
    requestId: decision.requestId,
    record,
    format,
    rewrite,
    baseTokens,
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
}

/** Ends a booking: the router's `finished` and the admission slot's `release`. */
export function closeLifecycle(ctx: GatewayContext, decision: RouteDecision, outcome: Outcome): void {
  ctx.router.finished(decision.requestId, outcome);
  ctx.admission.release(decision.workerId, decision.dpRank);
}

export function closeAttempt(ctx: GatewayContext, attempt: Attempt, outcome: Outcome): void {
  if (attempt.closed) return;
  attempt.closed = true;
  closeLifecycle(ctx, attempt.decision, outcome);
}

export function abortAttempt(attempt: Attempt): void {
  attempt.aborted = true;
  attempt.controller?.abort(new Error("client disconnected"));
}

/**
 * Headers of a request to a worker: its request id (vLLM's `X-Request-Id`) and, when the process
 * hosts several DP ranks behind one port, the rank the router chose (vLLM's
 * `X-data-parallel-rank`; a process running one external rank takes no rank header).
 */
export function upstreamHeaders(requestId: string, target: WorkerTarget, record: WorkerRecord | undefined): Record<string, string> {
  const h: Record<string, string> = { "x-request-id": requestId };
  if (record && record.dpRanks.length > 1) h["x-data-parallel-rank"] = String(target.dpRank);
  return h;
}

/** Errors that prove the request never reached the worker. */
const NOT_STARTED = new Set(["ECONNREFUSED", "ENOTFOUND", "EHOSTUNREACH", "ENETUNREACH", "EAI_AGAIN", "UND_ERR_CONNECT_TIMEOUT", "UND_ERR_CLOSED", "UND_ERR_DESTROYED"]);

/** The class of a transport error (an engine abort is found in the answer instead). */
export function failureKind(attempt: Attempt, err: Error): FailureKind {
  const code = (err as { code?: string }).code ?? "";
  if (code === "UND_ERR_HEADERS_TIMEOUT") return "timeout";
  if (attempt.status === 0 && NOT_STARTED.has(code)) return "not_started";
  return "broken";
}

const ABORT_MARK = Buffer.from('"finish_reason":"abort"');

/** A chunk or response some choice of which the engine aborted. */
export function isEngineAbort(obj: StreamChunk): boolean {
  const choices = obj.choices;
  if (!Array.isArray(choices)) return false;
  for (const c of choices) if (c && c.finish_reason === "abort") return true;
  return false;
}

/**
 * A whole 200 response with `finish_reason: "abort"`. The byte match is exact on vLLM's compact
 * JSON (that sequence cannot occur inside a JSON string, whose quotes are escaped); it only
 * decides whether to parse.
 */
export function isAbortedResponse(body: Buffer): boolean {
  if (body.indexOf(ABORT_MARK) < 0) return false;
  try {
    return isEngineAbort(JSON.parse(body.toString("utf8")) as StreamChunk);
  } catch {
    return false;
  }
}

export function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const code = (err as { code?: string }).code;
  return code ? `${code}: ${err.message}` : err.message;
}

/** A choice of a vLLM response or stream chunk, as far as the gateway reads or rewrites it. */
export interface StreamChoice {
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

/** A vLLM response or stream chunk. */
export interface StreamChunk {
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
