/**
 * createGateway(): the OpenAI-compatible request handler, `(req, res) => void`, usable as a
 * node:http listener or inside Express / Fastify (docs/gateway.md). Routes:
 *
 * | route                         | what                                                      |
 * |-------------------------------|-----------------------------------------------------------|
 * | POST /v1/completions          | routed and forwarded (exchange.ts), stream or not         |
 * | POST /v1/chat/completions     | same                                                      |
 * | GET  /v1/models               | the models of the registry's workers                      |
 * | POST /v1/kvroute/route        | the routing decision only, nothing forwarded              |
 * | GET  /health                  | 200 while some worker is registered, else 503             |
 * | GET  /metrics                 | Prometheus text (metrics.ts)                              |
 *
 * Access: with `apiKeys` the OpenAI routes need one of them; /metrics and /v1/kvroute/route need
 * `adminApiKey` (off without one while `apiKeys` is set); /health is always open.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { defaultGatewayConfig, validateGatewayConfig, type GatewayConfig, type GatewayConfigInput } from "../config/schema.js";
import type { TokenIds } from "../core/block-hasher.js";
import type { Registry, RouteDecision, WorkerTarget } from "../router/types.js";
import { Admission } from "./admission.js";
import { chooseDisaggPath, routePrefillWorker } from "./disagg-route.js";
import { ApiKeys } from "./api-keys.js";
import { readBody, type ReadBody } from "./body.js";
import { FleetView, Suspects, type GatewayContext, type GatewayRouter, type PromptTokenizer } from "./context.js";
import {
  BadRequestError,
  ForbiddenError,
  GatewayError,
  MethodNotAllowedError,
  ModelNotFoundError,
  NoHealthyWorkerError,
  RouteNotFoundError,
  UnauthorizedError,
  UnsupportedMediaTypeError,
  toGatewayError,
} from "./errors.js";
import { fromNative } from "../errors.js";
import { readFast, type FastRead } from "./fast-request.js";
import { refuseBody } from "./linger.js";
import { ServedModels } from "./served-models.js";
import { Exchange, sendJsonError } from "./exchange.js";
import { GatewayMetrics } from "./metrics.js";
import { parseChatRequest, parseCompletionRequest, parseJsonObject, parseRouteRequest, type ParsedRequest } from "./openai-request.js";
import { embedsKey, hasPromptEmbeds } from "./prompt-embeds.js";
import { TokenizationCheck } from "./tokenization-check.js";
import { ModelTokenizers } from "./tokenizers.js";
import { UpstreamPool } from "./upstream.js";
import { FrontLink } from "./native-front.js";
import type { NativeFront } from "../../index.js";

export interface CreateGatewayOptions {
  router: GatewayRouter;
  registry: Registry;
  /**
   * Settings, filled with defaults and validated. Of `models` only the names are used (they are
   * served, with 503 until a worker registers); workers come from the registry.
   */
  config?: GatewayConfigInput | GatewayConfig;
  /**
   * Tokenizers given in code, per model; they win over `models[].tokenizer` folders and the
   * folders worker records name. Without any, a model's text and chat requests are routed by
   * load only.
   */
  tokenizers?: Readonly<Record<string, PromptTokenizer>>;
  /** A tokenizer for every model that has none of its own. */
  tokenizer?: PromptTokenizer;
  /** Default: a fresh GatewayMetrics (its registry is `gateway.metrics.registry`). */
  metrics?: GatewayMetrics;
  /** Where the gateway logs migrations, failed prefills... Default: stderr. null: nowhere. */
  log?: ((message: string) => void) | null;
  /**
   * Models served for good besides the configured ones (as `kvroute up` serves the model it
   * launches): with no worker registered they get 503 and retry-after, not 404.
   */
  servedModels?: readonly string[];
}

/** The handler, with what an embedding application may want to reach. */
export interface Gateway {
  (req: IncomingMessage, res: ServerResponse): void;
  readonly metrics: GatewayMetrics;
  readonly config: GatewayConfig;
  /** Which tokenizer keys each model's text and chat requests. */
  readonly tokenizers: ModelTokenizers;
  /** Requests waiting for a worker. */
  readonly queued: number;
  /**
   * Puts a started native front (crates/kvroute-front) in front of this handler: it routes the
   * models this gateway hands over and sends the rest here (native-front.ts). Closed with the
   * gateway.
   */
  attachFront(front: NativeFront): void;
  /** Closes worker connections and rejects queued requests. */
  close(): Promise<void>;
}

type Route = "completions" | "chat" | "models" | "route" | "health" | "metrics";

/** Who may call a route: anyone, holders of an API key, holders of the admin key. */
type Access = "open" | "api" | "admin";

const ROUTES: Record<string, { route: Route; method: "GET" | "POST"; access: Access }> = {
  "/v1/completions": { route: "completions", method: "POST", access: "api" },
  "/v1/chat/completions": { route: "chat", method: "POST", access: "api" },
  "/v1/models": { route: "models", method: "GET", access: "api" },
  "/v1/kvroute/route": { route: "route", method: "POST", access: "admin" },
  "/health": { route: "health", method: "GET", access: "open" },
  "/metrics": { route: "metrics", method: "GET", access: "admin" },
};

export function createGateway(options: CreateGatewayOptions): Gateway {
  const config = validateGatewayConfig({ ...stripModels(options.config ?? {}) });
  const metrics = options.metrics ?? new GatewayMetrics();
  const upstream = new UpstreamPool({
    connectionsPerWorker: config.connectionsPerWorker,
    headersTimeoutMs: config.upstreamTimeoutMs,
    bodyTimeoutMs: config.upstreamIdleTimeoutMs,
  });
  const admission = new Admission(
    { maxActivePerWorker: config.queue.maxActivePerWorker, maxQueue: config.queue.maxSize, timeoutMs: config.queue.timeoutMs },
    metrics,
  );
  const log = options.log === undefined ? (m: string) => process.stderr.write(`kvroute gateway: ${m}\n`) : (options.log ?? (() => {}));
  const fleet = new FleetView(options.registry);
  // Models from the config (and up's) are served even while they have no worker (503, not 404).
  const permanent = [...(options.config?.models ?? []).map((m) => m.name), ...(options.servedModels ?? [])];
  const served = new ServedModels(options.registry, fleet, permanent, config.modelGraceMs);
  const apiKeys = new ApiKeys(config.apiKeys);
  const adminKeys = new ApiKeys(config.adminApiKey ? [config.adminApiKey] : []);
  const suspects = new Suspects(config.failureCooldownMs);
  const configuredTokenizers = new Map<string, string>();
  for (const m of options.config?.models ?? []) if (m.tokenizer) configuredTokenizers.set(m.name, m.tokenizer);
  const tokenizers = new ModelTokenizers({
    byModel: options.tokenizers,
    ...(options.tokenizer ? { all: options.tokenizer } : {}),
    configured: configuredTokenizers,
    fleet,
    log,
  });
  metrics.observeTokenizerCaches(() => tokenizers.cacheStats());
  const ctx: GatewayContext = {
    router: options.router,
    registry: options.registry,
    fleet,
    suspects,
    config,
    metrics,
    upstream,
    admission,
    tokenizers,
    tokenizationCheck: new TokenizationCheck(config.tokenizationCheckEvery, metrics, log),
    log,
  };
  const unwatch = options.registry.watch((change) => {
    if (change.type === "added") suspects.forgive(change.record.id);
    tokenizers.invalidate();
    if (change.type === "removed") {
      upstream.forget(change.record.url);
      metrics.forgetWorker(change.record.id, change.record.dpRanks);
    }
    admission.pump();
  });

  const handler = ((req: IncomingMessage, res: ServerResponse) => {
    const path = pathOf(req.url);
    const entry = ROUTES[path];
    const label = entry ? path : "other";
    res.once("close", () => metrics.request(label, res.headersSent ? res.statusCode : 499));
    if (!entry) return sendJsonError(res, new RouteNotFoundError(req.method ?? "?", path));
    if (req.method !== entry.method && !(entry.method === "GET" && req.method === "HEAD")) {
      return sendJsonError(res, new MethodNotAllowedError(req.method ?? "?", path, entry.method));
    }
    const denied = accessError(entry.access, path, req, apiKeys, adminKeys);
    if (denied) return refuse(ctx, req, res, denied);
    switch (entry.route) {
      case "completions":
      case "chat":
        return void handleGenerate(ctx, served, entry.route, req, res);
      case "route":
        return void handleRoute(ctx, served, req, res);
      case "models":
        return handleModels(ctx, res);
      case "health":
        return handleHealth(ctx, res);
      case "metrics":
        return void handleMetrics(ctx, res);
    }
  }) as Gateway;
  let frontLink: FrontLink | null = null;
  Object.defineProperties(handler, {
    attachFront: {
      value: (front: NativeFront) => {
        frontLink?.close();
        frontLink = new FrontLink(front, ctx, served);
      },
    },
    metrics: { value: metrics },
    tokenizers: { value: tokenizers },
    config: { value: config },
    queued: { get: () => admission.waiting },
    close: {
      value: async () => {
        frontLink?.close();
        unwatch();
        served.close();
        fleet.close();
        admission.close(new NoHealthyWorkerError("*", "the gateway is shutting down"));
        await upstream.close();
      },
    },
  });
  return handler;
}

function stripModels(config: GatewayConfigInput | GatewayConfig): GatewayConfigInput {
  const { models: _models, ...rest } = config;
  return rest;
}

function pathOf(url: string | undefined): string {
  if (!url) return "/";
  const q = url.indexOf("?");
  return q < 0 ? url : url.slice(0, q);
}

/** Why the request may not use a route of `access`, or null when it may. */
function accessError(access: Access, path: string, req: IncomingMessage, apiKeys: ApiKeys, adminKeys: ApiKeys): GatewayError | null {
  if (access === "open") return null;
  if (access === "api") return !apiKeys.enabled || apiKeys.allows(req) ? null : new UnauthorizedError();
  if (adminKeys.enabled) return adminKeys.allows(req) ? null : new UnauthorizedError("Missing or invalid admin API key: send 'Authorization: Bearer <adminApiKey>'");
  return apiKeys.enabled ? new ForbiddenError(`${path} is off: API keys are on and no adminApiKey is configured`) : null;
}

/** An error answer to a request whose body may still be arriving. */
function refuse(ctx: GatewayContext, req: IncomingMessage, res: ServerResponse, err: GatewayError): void {
  if (err.status === 401) res.setHeader("www-authenticate", "Bearer");
  refuseBody(req, res, err, lingerLimits(ctx));
}

/** How much of a refused body is read after the answer, so the client can read it (linger.ts). */
function lingerLimits(ctx: GatewayContext): { maxBytes: number; maxMs: number } {
  return { maxBytes: Math.max(2 * ctx.config.maxBodyBytes, 32 * 1024 * 1024), maxMs: Math.min(ctx.config.clientTimeoutMs, 10_000) };
}

function checkJson(req: IncomingMessage): void {
  const type = req.headers["content-type"];
  if (type === undefined) return;
  const base = type.split(";")[0]!.trim().toLowerCase();
  if (base !== "application/json" && !base.endsWith("+json")) throw new UnsupportedMediaTypeError(type);
}

/** Reads the body's bytes (or what a framework read); on failure answers and returns null. */
async function readRaw(ctx: GatewayContext, req: IncomingMessage, res: ServerResponse): Promise<ReadBody | null> {
  try {
    checkJson(req);
    return await readBody(req, ctx.config.maxBodyBytes, ctx.config.clientTimeoutMs);
  } catch (err) {
    answerReadError(ctx, req, res, err);
    return null;
  }
}

/** The body as a JSON object (throws a 400), with its bytes when it came as bytes. */
function parseRead(read: ReadBody): { body: Record<string, unknown>; raw: Buffer | null } {
  if (read.kind === "raw") return { body: parseJsonObject(read.bytes), raw: read.bytes };
  return { body: parseJsonObject(read.value), raw: null };
}

/** Reads and parses the JSON body; on failure answers and returns null. */
async function readJson(ctx: GatewayContext, req: IncomingMessage, res: ServerResponse): Promise<{ body: Record<string, unknown>; raw: Buffer | null } | null> {
  const read = await readRaw(ctx, req, res);
  if (!read) return null;
  try {
    return parseRead(read);
  } catch (err) {
    answerReadError(ctx, req, res, err);
    return null;
  }
}

/** Answers a body that could not be read or parsed. */
function answerReadError(ctx: GatewayContext, req: IncomingMessage, res: ServerResponse, err: unknown): void {
  const ge = err instanceof GatewayError ? err : new BadRequestError(err instanceof Error ? err.message : String(err));
  if (ge.status === 408) {
    // A slow client: not waited for any longer.
    if (!res.writableEnded && !res.destroyed) sendJsonError(res, ge, true);
    res.once("finish", () => req.socket?.destroySoon?.());
  } else if (ge.status === 413 || !req.readableEnded) {
    // The rest of the body was not read: answer, drain a bounded amount, close.
    refuseBody(req, res, ge, lingerLimits(ctx));
  } else if (!res.writableEnded && !res.destroyed) {
    sendJsonError(res, ge);
  }
}

/**
 * The model a request names (or the only one served), or throws 400, 404 (never served) or 503
 * (served, but no worker now: SDKs retry a 503 with retry-after, not a 404).
 */
function resolveModel(served: ServedModels, name: string | null): string {
  if (name !== null) {
    const status = served.status(name);
    if (status === "serving") return name;
    if (status === "unavailable") throw new NoHealthyWorkerError(name, "no worker is registered right now");
    throw new ModelNotFoundError(name);
  }
  const names = served.names();
  if (names.size === 1) {
    const only = [...names][0]!;
    if (served.status(only) !== "serving") throw new NoHealthyWorkerError(only, "no worker is registered right now");
    return only;
  }
  throw new BadRequestError("'model' is required (this gateway serves several models)", "model");
}

/** A request's prompt as the router keys it. */
export interface PromptKey {
  tokens: TokenIds;
  /** The tokenizer that made `tokens` from text or chat (null: the client sent token ids, or none). */
  tokenizer: PromptTokenizer | null;
  /** Text or chat that no tokenizer keyed: routed by load only. */
  untokenized: boolean;
  /** Prompt embeddings: the per-block digests the request is keyed with (prompt-embeds.ts). */
  promptEmbeds?: Uint8Array;
  /** Serving workers that must not get this request (no `--enable-prompt-embeds`). */
  exclude?: readonly WorkerTarget[];
}

const NO_TOKENS: TokenIds = new Uint32Array(0);

/** A request's prompt as the tokenizer takes it. */
interface PromptSource {
  /** The client's own token ids. */
  ids: TokenIds | null;
  text: string | null;
  chat: boolean;
  /** Completions: vLLM's `add_special_tokens` (default true). */
  addSpecialTokens: boolean;
  /** The body's bytes (chat is tokenized from them), when the body came as bytes. */
  raw: Buffer | null;
  body: () => Record<string, unknown>;
}

function sourceOf(p: Pick<ParsedRequest, "promptIds" | "promptText" | "messages" | "body">, raw: Buffer | null): PromptSource {
  return {
    ids: p.promptIds,
    text: p.promptText,
    chat: p.messages !== null,
    addSpecialTokens: p.body["add_special_tokens"] !== false,
    raw,
    body: () => p.body,
  };
}

/**
 * Token ids as the engine will compute them: the client's own ids unchanged; text and chat through
 * the model's tokenizer (vLLM's flags: completions add special tokens unless the body says
 * otherwise, chat does not). Without a tokenizer, or when it refuses the prompt (a media part, a
 * template that raises), nothing is keyed: the request is routed by load and the worker answers.
 */
function promptKey(ctx: GatewayContext, model: string, p: PromptSource): PromptKey {
  if (p.ids) return { tokens: p.ids, tokenizer: null, untokenized: false };
  const tokenizer = ctx.tokenizers.for(model);
  if (!tokenizer) {
    ctx.metrics.untokenizedRequest(model, "no_tokenizer");
    return { tokens: NO_TOKENS, tokenizer: null, untokenized: true };
  }
  try {
    if (p.chat) return { tokens: tokenizer.encodeChat(p.raw ?? (p.body() as never)), tokenizer, untokenized: false };
    return { tokens: tokenizer.encode(p.text ?? "", { addSpecialTokens: p.addSpecialTokens }), tokenizer, untokenized: false };
  } catch (err) {
    return refusedKey(ctx, model, err as Error);
  }
}

function refusedKey(ctx: GatewayContext, model: string, err: Error): PromptKey {
  ctx.metrics.untokenizedRequest(model, "refused");
  ctx.tokenizers.refused(model, err);
  return { tokens: NO_TOKENS, tokenizer: null, untokenized: true };
}

/** The key of a request read on the fast path: its tokens when the model's tokenizer read it. */
function fastKey(ctx: GatewayContext, model: string, fast: FastRead, raw: Buffer): PromptKey {
  const p = fast.parsed;
  if (!p.promptIds && fast.tokenizer !== null && ctx.tokenizers.for(model) === fast.tokenizer) {
    if (fast.tokens) return { tokens: fast.tokens, tokenizer: fast.tokenizer, untokenized: false };
    return refusedKey(ctx, model, fromNative(new Error(fast.tokenError ?? "the tokenizer refused the prompt")));
  }
  return promptKey(ctx, model, { ids: p.promptIds, text: p.promptText, chat: p.endpoint === "chat", addSpecialTokens: fast.addSpecialTokens, raw, body: () => p.body });
}

async function handleGenerate(ctx: GatewayContext, served: ServedModels, route: "completions" | "chat", req: IncomingMessage, res: ServerResponse): Promise<void> {
  const read = await readRaw(ctx, req, res);
  if (!read) return;
  const raw = read.kind === "raw" ? read.bytes : null;
  const fast = raw ? readFast(raw, route, ctx.tokenizers.guess()) : null;
  let parsed: ParsedRequest;
  let model: string;
  let key: PromptKey;
  if (fast) {
    try {
      parsed = fast.parsed;
      model = resolveModel(served, parsed.model);
      key = fastKey(ctx, model, fast, raw!);
    } catch (err) {
      if (err instanceof NoHealthyWorkerError) ctx.metrics.rejections.inc({ reason: "no_worker" });
      return sendJsonError(res, toGatewayError(err));
    }
  } else {
    let body: Record<string, unknown>;
    try {
      body = parseRead(read).body;
    } catch (err) {
      return answerReadError(ctx, req, res, err);
    }
    try {
      parsed = route === "chat" ? parseChatRequest(body) : parseCompletionRequest(body);
      model = resolveModel(served, parsed.model);
      key = route === "completions" && hasPromptEmbeds(body) ? embedsKey(ctx, model, body) : promptKey(ctx, model, sourceOf(parsed, raw));
    } catch (err) {
      if (err instanceof NoHealthyWorkerError) ctx.metrics.rejections.inc({ reason: "no_worker" });
      return sendJsonError(res, toGatewayError(err));
    }
  }
  if (res.destroyed || res.writableEnded) return;
  await new Exchange(ctx, req, res, parsed, model, key, raw).run();
}

async function handleRoute(ctx: GatewayContext, served: ServedModels, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const read = await readJson(ctx, req, res);
  if (!read) return;
  try {
    const r = parseRouteRequest(read.body);
    const model = resolveModel(served, r.model);
    const fleet = ctx.fleet.of(model);
    if (fleet.serving.length === 0) throw new NoHealthyWorkerError(model);
    const key = promptKey(ctx, model, sourceOf({ ...r, body: read.body }, read.raw));
    const tokens = key.tokens;
    const decision: RouteDecision = ctx.router.route({ model, tokens, explain: true, dryRun: true, exclude: fleet.nonServing });
    const candidates = (decision.candidates ?? []).map((c) => {
      const base: Record<string, unknown> = { worker: c.workerId, dpRank: c.dpRank, overlapBlocks: c.overlapBlocks, cost: c.cost };
      if (r.explain) Object.assign(base, { prefillBlocks: c.prefillBlocks, decodeBlocks: c.decodeBlocks, busy: c.busy, tiers: c.tiers ?? {}, loadBlocks: c.loadBlocks ?? 0 });
      return base;
    });
    const out: Record<string, unknown> = { worker: decision.workerId, dpRank: decision.dpRank, overlapBlocks: decision.overlapBlocks, candidates };
    if (r.explain) {
      Object.assign(out, {
        promptBlocks: decision.promptBlocks,
        bestOverlapBlocks: decision.bestOverlapBlocks,
        blind: decision.blind,
        mode: decision.mode,
        promptTokens: tokens.length,
        tokenized: !key.untokenized,
      });
      if (fleet.disaggregated) out["disagg"] = explainDisagg(ctx, model, tokens, decision);
    }
    sendJson(res, 200, out, { "x-kvroute-worker": decision.workerId, "x-kvroute-overlap-blocks": String(decision.overlapBlocks) });
  } catch (err) {
    sendJsonError(res, toGatewayError(err));
  }
}

/** What the conditional-disaggregation policy would decide for this prompt now (no booking). */
function explainDisagg(ctx: GatewayContext, model: string, tokens: TokenIds, decode: RouteDecision): Record<string, unknown> {
  const prefill = routePrefillWorker(ctx, { model, tokens, dryRun: true });
  const d = chooseDisaggPath(ctx, decode, prefill, tokens.length, false);
  return {
    policy: ctx.config.disagg.policy,
    path: d.path,
    reason: d.reason,
    promptTokens: d.promptTokens,
    uncachedTokens: d.uncachedTokens,
    decodeWorker: decode.workerId,
    decodeActive: d.decodeActive,
    prefillWorker: prefill?.workerId ?? null,
    prefillOverlapBlocks: prefill?.overlapBlocks ?? null,
    prefillActive: d.prefillActive,
  };
}

function handleModels(ctx: GatewayContext, res: ServerResponse): void {
  const byModel = new Map<string, number>();
  for (const r of ctx.registry.list()) byModel.set(r.model, (byModel.get(r.model) ?? 0) + 1);
  const created = Math.floor(Date.now() / 1000);
  const data = [...byModel.keys()].sort().map((id) => ({ id, object: "model", created, owned_by: "kvroute", root: id, parent: null, permission: [] }));
  sendJson(res, 200, { object: "list", data });
}

function handleHealth(ctx: GatewayContext, res: ServerResponse): void {
  const records = ctx.registry.list();
  const models: Record<string, number> = {};
  for (const r of records) models[r.model] = (models[r.model] ?? 0) + 1;
  sendJson(res, records.length > 0 ? 200 : 503, { status: records.length > 0 ? "ok" : "no workers", workers: records.length, models, queued: ctx.admission.waiting });
}

async function handleMetrics(ctx: GatewayContext, res: ServerResponse): Promise<void> {
  try {
    const text = await ctx.metrics.text();
    res.writeHead(200, { "content-type": ctx.metrics.contentType, "content-length": String(Buffer.byteLength(text)) });
    res.end(text);
  } catch (err) {
    sendJsonError(res, toGatewayError(err));
  }
}

function sendJson(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  const body = JSON.stringify(value);
  res.writeHead(status, { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)), ...headers });
  res.end(body);
}

/** Used by startGateway to build the full config; exported for embedding. */
export { defaultGatewayConfig };
