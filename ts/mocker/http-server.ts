/**
 * The mocker's OpenAI-compatible HTTP server (node:http, no framework), framed as vLLM 0.33's API
 * server frames it: `/v1/completions`, `/v1/chat/completions` (JSON or SSE: `data: {json}\n\n`
 * chunks, a usage chunk when `stream_options.include_usage`, then `data: [DONE]\n\n`),
 * `/v1/models`, `/health`, `/metrics`, `/version`, `POST /reset_prefix_cache`, plus the mocker's
 * `/debug/kv-cache` and `/debug/requests`.
 *
 * A client that disconnects before its response is complete aborts its engine requests, which
 * frees their KV blocks at once. Streams respect backpressure: while `res.write` says the socket
 * is full, new tokens of a choice are merged into one pending delta (vLLM's output collector does
 * the same), so memory per stream is bounded by its output, never by the number of chunks.
 */
import { createHash, randomBytes } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { InvalidInputError } from "../errors.js";
import type { CoreOutput } from "./engine-core.js";
import type { MockEngine } from "./mock-engine.js";
import { PROMETHEUS_CONTENT_TYPE } from "./metrics.js";
import {
  chatResponse,
  completionResponse,
  HttpError,
  parseChatRequest,
  parseCompletionRequest,
  parseJsonBody,
  perRequestMetrics,
  servingError,
  sse,
  SSE_DONE,
  usage,
  vllmValidationMessage,
  VLLM_VERSION,
  type ChoiceResult,
  type SamplingRequest,
} from "./openai-protocol.js";
import { modelTokenizerFor, type ModelTokenizer } from "./model-tokenizer.js";
import { embedsPrompts, wantsPromptEmbeds } from "./prompt-embeds.js";

export interface MockServerOptions {
  engine: MockEngine;
  /** Default "127.0.0.1". */
  host?: string;
  /** Default 8000; 0 picks a free port. */
  port?: number;
  /** `--enable-prompt-tokens-details`: usage.prompt_tokens_details.cached_tokens. */
  enablePromptTokensDetails?: boolean;
  /** `--enable-force-include-usage`: usage in every stream (and per chunk). */
  enableForceIncludeUsage?: boolean;
  /** `--enable-per-request-metrics`: a `metrics` object (simulated ms) on every response. */
  enablePerRequestMetrics?: boolean;
  /** Default `vllm-0.33.0[-dp<N>]-<hash8>`; null omits it. */
  systemFingerprint?: string | null;
  /** Largest accepted request body. Default 64 MiB. */
  maxBodyBytes?: number;
}

const JSON_TYPE = "application/json";
const SSE_TYPE = "text/event-stream; charset=utf-8";

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": JSON_TYPE, "content-length": Buffer.byteLength(text) });
  res.end(text);
}

// Request ids: 16 hex digits like vLLM's random_uuid(), drawn from a pooled random buffer.
let idPool = Buffer.alloc(0);
let idAt = 0;
function randomId(): string {
  if (idAt + 8 > idPool.length) {
    idPool = randomBytes(4096);
    idAt = 0;
  }
  idAt += 8;
  return idPool.toString("hex", idAt - 8, idAt);
}

/** One choice of a response being assembled (engine request -> choice index). */
interface Choice {
  index: number;
  promptIndex: number;
  engineId: string;
  prompt: Uint32Array;
  tokens: number[];
  text: string;
  finishReason: string | null;
  stopReason: string | number | null;
  cached: number;
  kv: Record<string, unknown> | null;
  timings: CoreOutput["timings"] | null;
  started: boolean;
}

/** A pending (merged) delta of one choice, written when the socket drains. */
interface Pending {
  choice: Choice;
  text: string;
  tokenIds: number[];
  final: boolean;
}

export class MockServer {
  readonly server: http.Server;
  private readonly fingerprint: string | null;
  private readonly maxBody: number;
  private readonly created = Math.floor(Date.now() / 1000);
  private readonly permIds = new Map<string, string>();
  private _port = 0;
  private readonly host: string;
  /** The engine's tokenizer (toy, or the real one of `--tokenizer`). */
  private readonly tokenizer: ModelTokenizer;
  /** Backpressure counters: times a stream's socket was full, deltas merged meanwhile. */
  readonly stats = { streamsBlocked: 0, mergedDeltas: 0, aborted: 0 };

  private constructor(private readonly options: MockServerOptions) {
    const { engine } = options;
    const cfg = engine.config;
    const hash8 = createHash("sha256")
      .update(JSON.stringify([cfg.model, cfg.blockSize, cfg.numGpuBlocks, cfg.maxModelLen, cfg.hashAlgorithm]))
      .digest("hex")
      .slice(0, 8);
    this.fingerprint =
      options.systemFingerprint !== undefined
        ? options.systemFingerprint
        : `vllm-${VLLM_VERSION}${cfg.dataParallelSize > 1 ? `-dp${cfg.dataParallelSize}` : ""}-${hash8}`;
    this.maxBody = options.maxBodyBytes ?? 64 * 2 ** 20;
    this.host = options.host ?? "127.0.0.1";
    this.tokenizer = modelTokenizerFor(cfg.tokenizer);
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.server.keepAliveTimeout = 65_000;
  }

  static async start(options: MockServerOptions): Promise<MockServer> {
    const s = new MockServer(options);
    await new Promise<void>((resolve, reject) => {
      s.server.once("error", reject);
      s.server.listen(options.port ?? 8000, s.host, () => {
        s.server.off("error", reject);
        resolve();
      });
    });
    s._port = (s.server.address() as AddressInfo).port;
    return s;
  }

  get port(): number {
    return this._port;
  }

  get url(): string {
    const h = this.host.includes(":") ? `[${this.host}]` : this.host;
    return `http://${h === "0.0.0.0" ? "127.0.0.1" : h}:${this._port}`;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // ---------------------------------------------------------------------------------------------

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    const path = q < 0 ? url : url.slice(0, q);
    const method = req.method ?? "GET";
    const route = ROUTES[path];
    if (!route) return sendJson(res, 404, { detail: "Not Found" });
    if (route !== method && !(route === "GET" && method === "HEAD")) return sendJson(res, 405, { detail: "Method Not Allowed" });
    if (method !== "POST") return this.handleGet(path, q < 0 ? "" : url.slice(q + 1), res);

    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size <= this.maxBody) chunks.push(c);
    });
    req.on("end", () => {
      if (size > this.maxBody) return sendJson(res, 413, { detail: "Request Entity Too Large" });
      const raw = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
      try {
        if (path === "/reset_prefix_cache") {
          this.options.engine.resetPrefixCache();
          res.writeHead(200, { "content-length": 0 });
          res.end();
          return;
        }
        const body = parseJsonBody(raw, req.headers["content-type"]);
        if (path === "/v1/completions") this.completion(req, res, body);
        else this.chat(req, res, body, raw);
      } catch (err) {
        this.fail(res, err);
      }
    });
  }

  private handleGet(path: string, query: string, res: http.ServerResponse): void {
    const { engine } = this.options;
    switch (path) {
      case "/health":
        res.writeHead(200, { "content-length": 0 });
        res.end();
        return;
      case "/version":
        return sendJson(res, 200, { version: VLLM_VERSION });
      case "/metrics": {
        const text = engine.renderMetrics();
        res.writeHead(200, { "content-type": PROMETHEUS_CONTENT_TYPE, "content-length": Buffer.byteLength(text) });
        res.end(text);
        return;
      }
      case "/v1/models":
        return sendJson(res, 200, this.models());
      case "/debug/requests":
        return sendJson(res, 200, { ranks: engine.debugRequests() });
      case "/debug/kv-cache": {
        const rank = new URLSearchParams(query).get("dp_rank");
        try {
          return sendJson(res, 200, engine.debugKvCache(rank === null ? undefined : Number(rank)));
        } catch (err) {
          return sendJson(res, 404, { detail: (err as Error).message });
        }
      }
    }
  }

  private fail(res: http.ServerResponse, err: unknown): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    if (err instanceof HttpError) return sendJson(res, err.status, err.body);
    if (err instanceof InvalidInputError) return sendJson(res, 400, servingError(400, "BadRequestError", err.message, null).body);
    const message = err instanceof Error ? err.message : String(err);
    sendJson(res, 500, servingError(500, "InternalServerError", message, null).body);
  }

  private models(): unknown {
    const { engine } = this.options;
    const cfg = engine.config;
    const perm = (id: string) => {
      let p = this.permIds.get(id);
      if (!p) this.permIds.set(id, (p = `modelperm-${randomId()}`));
      return {
        id: p,
        object: "model_permission",
        created: this.created,
        allow_create_engine: false,
        allow_sampling: true,
        allow_logprobs: true,
        allow_search_indices: false,
        allow_view: true,
        allow_fine_tuning: false,
        organization: "*",
        group: null,
        is_blocking: false,
      };
    };
    const card = (id: string, root: string, parent: string | null, maxModelLen: number | null) => ({
      id,
      object: "model",
      created: this.created,
      owned_by: "vllm",
      root,
      parent,
      max_model_len: maxModelLen,
      permission: [perm(id)],
    });
    return {
      object: "list",
      data: [
        ...cfg.servedModelNames.map((n) => card(n, cfg.model, null, cfg.maxModelLen)),
        ...engine.loraModules().map((l) => card(l.name, l.path, cfg.servedModelNames[0]!, null)),
      ],
    };
  }

  /** Checks shared by both endpoints (vLLM's order: model, prompt length, max_tokens). */
  private prepare(req: http.IncomingMessage, r: SamplingRequest, prompts: Uint32Array[]): { maxTokens: number[]; rank: number | undefined } {
    const { engine } = this.options;
    if (!engine.resolveModel(r.model).ok) {
      throw servingError(
        404,
        "NotFoundError",
        `The model \`${r.model}\` does not exist. Valid aliases: ${engine.config.servedModelNames.join(", ")}.`,
        "model",
      );
    }
    const max = engine.config.maxModelLen;
    const maxTokens: number[] = [];
    const bad = (message: string, param: string | null = null, value?: unknown) =>
      servingError(400, "BadRequestError", param === null ? message : vllmValidationMessage(message, param, value), param);
    for (const p of prompts) {
      if (p.length === 0) throw bad("The decoder prompt cannot be empty");
      if (p.length > max) {
        const qualifier = p.length === max + 1 ? "at least " : "";
        throw bad(
          `This model's maximum context length is ${max} tokens. However, your prompt contains ${qualifier}${p.length} input tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input prompt.`,
          "input_tokens",
          p.length,
        );
      }
    }
    // SamplingParams._verify_args, in vLLM's order.
    if (r.n < 1) throw bad(`n must be at least 1, got ${r.n}.`);
    if (r.n > 16_384) {
      throw bad(`n must be at most 16384, got ${r.n}. To increase this limit, set the VLLM_MAX_N_SEQUENCES environment variable.`);
    }
    if (r.temperature !== null) {
      const t = r.temperature;
      if (!Number.isFinite(t)) throw bad(`temperature must be a finite number, got ${t}.`, "temperature", t);
      if (t < 0) throw bad(`temperature must be non-negative, got ${t}.`, "temperature", t);
      if (t > 2) throw bad(`temperature must be in [0, 2], got ${t}.`, "temperature", t);
    }
    if (r.topP !== null && !(r.topP > 0 && r.topP <= 1)) throw bad(`top_p must be in (0, 1], got ${r.topP}.`, "top_p", r.topP);
    for (const p of prompts) {
      const m = Math.min(max - p.length, r.maxTokens ?? Infinity);
      if (m < 1) throw bad(`max_tokens must be at least 1, got ${m}.`, "max_tokens", m);
      if (r.minTokens < 0) throw bad(`min_tokens must be greater than or equal to 0, got ${r.minTokens}.`);
      if (r.minTokens > m) throw bad(`min_tokens must be less than or equal to max_tokens=${m}, got ${r.minTokens}.`);
      maxTokens.push(m);
    }
    const header = req.headers["x-data-parallel-rank"];
    let rank: number | undefined;
    if (typeof header === "string" && /^-?\d+$/.test(header.trim())) {
      rank = Number(header.trim());
      if (!engine.core(rank)) {
        throw servingError(400, "BadRequestError", `data_parallel_rank ${rank} is out of range [0, ${engine.config.dataParallelSize}).`, null);
      }
    }
    return { maxTokens, rank };
  }

  /** Starts one engine request per (prompt, n); `onOutput` gets each output with its choice. */
  private launch(
    baseId: string,
    r: SamplingRequest,
    prompts: Uint32Array[],
    maxTokens: number[],
    rank: number | undefined,
    onOutput: (choice: Choice, out: CoreOutput) => void,
  ): Choice[] {
    const { engine } = this.options;
    const choices: Choice[] = [];
    prompts.forEach((prompt, p) => {
      for (let j = 0; j < r.n; j++) {
        const item = `${baseId}-${p}`;
        const engineId = r.n > 1 ? `${j}_${item}` : item;
        choices.push({
          index: p * r.n + j,
          promptIndex: p,
          engineId,
          prompt,
          tokens: [],
          text: "",
          finishReason: null,
          stopReason: null,
          cached: 0,
          kv: null,
          timings: null,
          started: false,
        });
      }
    });
    try {
      for (const c of choices) {
        engine.submit(
          {
            requestId: c.engineId,
            promptTokenIds: c.prompt,
            maxTokens: maxTokens[c.promptIndex]!,
            minTokens: r.minTokens,
            ignoreEos: r.ignoreEos,
            stopTokenIds: r.stopTokenIds,
            stop: r.stop,
            includeStopStrInOutput: r.includeStopStrInOutput,
            seed: (r.seed ?? 0) + c.index - c.promptIndex * r.n,
            model: r.model ?? undefined,
            cacheSalt: r.cacheSalt,
            promptEmbeds: r.promptEmbeds?.[c.promptIndex] ?? null,
            kvTransferParams: r.kvTransferParams,
            dataParallelRank: rank,
            n: r.n,
          },
          (out) => {
            c.cached = out.numCachedTokens;
            c.timings = out.timings;
            if (out.finishReason) {
              c.finishReason = out.finishReason;
              c.stopReason = out.stopReason;
              c.kv = out.kvTransferParams;
            }
            onOutput(c, out);
          },
        );
      }
    } catch (err) {
      for (const c of choices) engine.abort(c.engineId);
      throw err;
    }
    return choices;
  }

  private requestId(req: http.IncomingMessage, r: SamplingRequest): string {
    const header = req.headers["x-request-id"];
    return typeof header === "string" ? header : r.requestId ?? randomId();
  }

  // ---------------------------------------------------------------------------------------------
  // /v1/completions

  private completion(req: http.IncomingMessage, res: http.ServerResponse, body: Record<string, unknown>): void {
    const cfg = this.options.engine.config;
    // prompt_embeds: 0s as the prompt's tokens (vLLM's placeholders), the rest parsed as usual.
    const embeds = wantsPromptEmbeds(body) ? embedsPrompts(body, { enabled: cfg.enablePromptEmbeds, dtype: cfg.dtype, blockSize: cfg.blockSize }) : null;
    const r = parseCompletionRequest(embeds ? { ...body, prompt: embeds.prompts.map(() => [0]) } : body);
    if (embeds) r.promptEmbeds = embeds.digests;
    // Token-id prompts are used verbatim (no tokenizing, no BOS), as vLLM does.
    const prompts = embeds
      ? embeds.prompts
      : r.prompts.map((p) => (typeof p === "string" ? this.tokenizer.encodeText(p, r.addSpecialTokens) : Uint32Array.from(p)));
    const { maxTokens, rank } = this.prepare(req, r, prompts);
    const id = `cmpl-${this.requestId(req, r)}`;
    const created = Math.floor(Date.now() / 1000);
    const model = this.responseModel(r.model);
    const promptTexts = r.prompts.map((p) => (typeof p === "string" ? p : this.tokenizer.decode(p)));
    const details = this.options.enablePromptTokensDetails === true;
    const perMetrics = this.options.enablePerRequestMetrics === true;

    if (r.stream) {
      const includeUsage = this.options.enableForceIncludeUsage === true || r.streamOptions?.includeUsage === true;
      const continuous = this.options.enableForceIncludeUsage === true || (includeUsage && r.streamOptions?.continuousUsageStats === true);
      const render = (p: Pending): string => {
        const c = p.choice;
        let text = p.text;
        let promptIds: number[] | null = null;
        if (!c.started) {
          c.started = true;
          if (r.echo) text = promptTexts[c.promptIndex]! + text;
          if (r.returnTokenIds || r.echo) promptIds = r.returnTokenIds ? Array.from(c.prompt) : null;
        }
        const chunk: Record<string, unknown> = {
          id,
          object: "text_completion",
          created,
          model,
          choices: [
            {
              index: c.index,
              text,
              logprobs: null,
              finish_reason: p.final ? c.finishReason : null,
              stop_reason: p.final ? c.stopReason : null,
              prompt_token_ids: promptIds,
              token_ids: r.returnTokenIds ? p.tokenIds : null,
              weight_versions: null,
            },
          ],
        };
        if (continuous) chunk.usage = usage(c.prompt.length, c.tokens.length, null, false);
        if (p.final && !includeUsage && this.fingerprint !== null) chunk.system_fingerprint = this.fingerprint;
        chunk.kv_transfer_params = p.final ? c.kv : null;
        return sse(chunk);
      };
      const tail = (choices: Choice[]): string => {
        let out = "";
        if (includeUsage) {
          const promptTokens = r.prompts.reduce<number>((s, _p, i) => s + prompts[i]!.length, 0);
          const completionTokens = choices.reduce((s, c) => s + c.tokens.length, 0);
          const chunk: Record<string, unknown> = {
            id,
            object: "text_completion",
            created,
            model,
            choices: [],
            usage: usage(promptTokens, completionTokens, details ? (choices[choices.length - 1]?.cached ?? 0) : null, false),
          };
          if (this.fingerprint !== null) chunk.system_fingerprint = this.fingerprint;
          if (perMetrics && choices.length === 1) chunk.metrics = stripNull(perRequestMetrics(choices[0]!.timings!, choices[0]!.tokens.length));
          out += sse(chunk);
        }
        return out + SSE_DONE;
      };
      this.stream(req, res, r, prompts, maxTokens, rank, id, render, tail);
      return;
    }

    this.collect(req, res, r, prompts, maxTokens, rank, id, (choices) => {
      const promptTokens = prompts.reduce((s, p) => s + p.length, 0);
      const completionTokens = choices.reduce((s, c) => s + c.tokens.length, 0);
      const results: ChoiceResult[] = choices.map((c) => ({
        index: c.index,
        text: r.echo ? promptTexts[c.promptIndex]! + c.text : c.text,
        tokenIds: r.echo ? [...c.prompt, ...c.tokens] : c.tokens,
        promptTokenIds: Array.from(c.prompt),
        finishReason: c.finishReason,
        stopReason: c.stopReason,
      }));
      const last = choices[choices.length - 1]!;
      return completionResponse(
        id,
        created,
        model,
        results,
        usage(promptTokens, completionTokens, details ? last.cached : null, true),
        this.fingerprint ?? (null as unknown as string),
        r.returnTokenIds,
        choices[0]!.kv,
        perMetrics && choices.length === 1 ? perRequestMetrics(last.timings!, last.tokens.length) : null,
      );
    });
  }

  // ---------------------------------------------------------------------------------------------
  // /v1/chat/completions

  private chat(req: http.IncomingMessage, res: http.ServerResponse, body: Record<string, unknown>, raw: Buffer): void {
    // A real tokenizer validates and renders the messages itself (its refusals: 400).
    const r = parseChatRequest(body, { checkMessages: this.options.engine.config.tokenizer === null });
    const prompt = this.tokenizer.encodeChat(body, raw, r.messages, r.addGenerationPrompt);
    const { maxTokens, rank } = this.prepare(req, r, [prompt]);
    const id = `chatcmpl-${this.requestId(req, r)}`;
    const created = Math.floor(Date.now() / 1000);
    const model = this.responseModel(r.model);
    const details = this.options.enablePromptTokensDetails === true;
    const perMetrics = this.options.enablePerRequestMetrics === true;

    if (r.stream) {
      const includeUsage = this.options.enableForceIncludeUsage === true || r.streamOptions?.includeUsage === true;
      const continuous = this.options.enableForceIncludeUsage === true || (includeUsage && r.streamOptions?.continuousUsageStats === true);
      const base = { id, object: "chat.completion.chunk", created, model };
      const render = (p: Pending): string => {
        const c = p.choice;
        let out = "";
        if (!c.started) {
          c.started = true;
          const first: Record<string, unknown> = {
            ...base,
            choices: [{ index: c.index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }],
          };
          if (continuous) first.usage = usage(prompt.length, 0, null, false);
          first.prompt_token_ids = r.returnTokenIds ? Array.from(prompt) : null;
          first.prompt_text = null;
          out += sse(first);
          const lastUser = r.messages[r.messages.length - 1];
          if (r.echo && lastUser?.role === "assistant" && lastUser.content) {
            out += sse({ ...base, choices: [{ index: c.index, delta: { content: lastUser.content }, logprobs: null, finish_reason: null }] });
          }
        }
        if (!p.text && !p.final && !r.returnTokenIds) return out;
        const delta = p.text ? { content: p.text } : {};
        const choice: Record<string, unknown> = p.final
          ? {
              index: c.index,
              delta,
              logprobs: null,
              finish_reason: c.finishReason,
              stop_reason: c.stopReason,
              token_ids: r.returnTokenIds ? p.tokenIds : null,
              weight_versions: null,
            }
          : { index: c.index, delta, logprobs: null, finish_reason: null, token_ids: r.returnTokenIds ? p.tokenIds : null };
        const chunk: Record<string, unknown> = { ...base, choices: [choice] };
        if (continuous) chunk.usage = usage(prompt.length, c.tokens.length, null, false);
        if (p.final && !includeUsage && this.fingerprint !== null) chunk.system_fingerprint = this.fingerprint;
        chunk.kv_transfer_params = p.final ? c.kv : null;
        return out + sse(chunk);
      };
      const tail = (choices: Choice[]): string => {
        let out = "";
        if (includeUsage) {
          const completionTokens = choices.reduce((s, c) => s + c.tokens.length, 0);
          const chunk: Record<string, unknown> = {
            ...base,
            choices: [],
            usage: usage(prompt.length, completionTokens, details ? (choices[0]?.cached ?? 0) : null, false),
          };
          if (this.fingerprint !== null) chunk.system_fingerprint = this.fingerprint;
          if (perMetrics && choices.length === 1) chunk.metrics = stripNull(perRequestMetrics(choices[0]!.timings!, choices[0]!.tokens.length));
          out += sse(chunk);
        }
        return out + SSE_DONE;
      };
      this.stream(req, res, r, [prompt], maxTokens, rank, id, render, tail);
      return;
    }

    this.collect(req, res, r, [prompt], maxTokens, rank, id, (choices) => {
      const completionTokens = choices.reduce((s, c) => s + c.tokens.length, 0);
      const results: ChoiceResult[] = choices.map((c) => ({
        index: c.index,
        text: c.text,
        tokenIds: c.tokens,
        promptTokenIds: Array.from(prompt),
        finishReason: c.finishReason,
        stopReason: c.stopReason,
      }));
      const first = choices[0]!;
      return chatResponse(
        id,
        created,
        model,
        results,
        usage(prompt.length, completionTokens, details ? first.cached : null, true),
        this.fingerprint ?? (null as unknown as string),
        r.returnTokenIds,
        Array.from(prompt),
        first.kv,
        perMetrics && choices.length === 1 ? perRequestMetrics(first.timings!, first.tokens.length) : null,
      );
    });
  }

  private responseModel(requested: string | null): string {
    // vLLM reports the LoRA name for LoRA requests, else the first served name.
    const { engine } = this.options;
    if (requested && engine.loraModules().some((l) => l.name === requested)) return requested;
    return engine.config.servedModelNames[0]!;
  }

  // ---------------------------------------------------------------------------------------------
  // Delivery

  /** Non-streaming: waits for every choice, then one JSON body. Disconnect → abort. */
  private collect(
    _req: http.IncomingMessage,
    res: http.ServerResponse,
    r: SamplingRequest,
    prompts: Uint32Array[],
    maxTokens: number[],
    rank: number | undefined,
    id: string,
    build: (choices: Choice[]) => unknown,
  ): void {
    let remaining = prompts.length * r.n;
    let done = false;
    const choices = this.launch(id, r, prompts, maxTokens, rank, (c, out) => {
      for (const t of out.tokenIds) c.tokens.push(t);
      c.text += out.text;
      if (out.finishReason && --remaining === 0 && !done) {
        done = true;
        // Aborted by someone else than this client (engine shutdown, MockEngine.abort): vLLM
        // answers with finish_reason "abort".
        if (res.destroyed) return;
        try {
          sendJson(res, 200, build(choices));
        } catch (err) {
          this.fail(res, err);
        }
      }
    });
    res.on("close", () => {
      if (!done) {
        done = true;
        this.stats.aborted++;
        for (const c of choices) this.options.engine.abort(c.engineId);
      }
    });
  }

  /** Streaming: SSE chunks as tokens come, merged while the socket is full. */
  private stream(
    _req: http.IncomingMessage,
    res: http.ServerResponse,
    r: SamplingRequest,
    prompts: Uint32Array[],
    maxTokens: number[],
    rank: number | undefined,
    id: string,
    render: (p: Pending) => string,
    tail: (choices: Choice[]) => string,
  ): void {
    let remaining = prompts.length * r.n;
    let blocked = false;
    let finished = false;
    const pending: Pending[] = [];
    let choices: Choice[] = [];

    const write = (text: string): void => {
      if (text && !res.write(text)) {
        blocked = true;
        this.stats.streamsBlocked++;
        res.once("drain", () => {
          blocked = false;
          flush();
        });
      }
    };
    const flush = (): void => {
      while (!blocked && pending.length > 0) write(render(pending.shift()!));
      if (!blocked && pending.length === 0 && remaining === 0 && !finished) {
        finished = true;
        res.end(tail(choices));
      }
    };
    const deliver = (c: Choice, out: CoreOutput): void => {
      if (finished || res.destroyed) return;
      for (const t of out.tokenIds) c.tokens.push(t);
      c.text += out.text;
      const final = out.finishReason !== null;
      if (final) remaining--;
      if (blocked || pending.length > 0) {
        const mine = pending.find((p) => p.choice === c);
        if (mine) {
          this.stats.mergedDeltas++;
          mine.text += out.text;
          for (const t of out.tokenIds) mine.tokenIds.push(t);
          mine.final ||= final;
        } else pending.push({ choice: c, text: out.text, tokenIds: out.tokenIds.slice(), final });
        return;
      }
      write(render({ choice: c, text: out.text, tokenIds: out.tokenIds, final }));
      if (remaining === 0) flush();
    };

    // Launch first (it throws for requests the engine refuses), then commit to a 200 stream.
    choices = this.launch(id, r, prompts, maxTokens, rank, deliver);
    res.writeHead(200, { "content-type": SSE_TYPE, "cache-control": "no-cache" });
    res.on("close", () => {
      if (!finished) {
        finished = true;
        this.stats.aborted++;
        for (const c of choices) this.options.engine.abort(c.engineId);
      }
    });
  }
}

function stripNull(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== null));
}

const ROUTES: Record<string, string> = {
  "/v1/completions": "POST",
  "/v1/chat/completions": "POST",
  "/reset_prefix_cache": "POST",
  "/v1/models": "GET",
  "/health": "GET",
  "/version": "GET",
  "/metrics": "GET",
  "/debug/kv-cache": "GET",
  "/debug/requests": "GET",
};
