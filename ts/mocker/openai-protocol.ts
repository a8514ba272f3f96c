/**
 * vLLM 0.33's OpenAI-compatible protocol, as far as the mocker speaks it: request validation with
 * vLLM's error bodies, and response / SSE chunk bodies with vLLM's field sets and key order
 * (vllm/entrypoints/openai/{completion,chat_completion}/protocol.py and serving.py,
 * vllm/entrypoints/serve/exception_handling/).
 *
 * Errors are `{"error": {"message", "type", "param", "code"}}`. Schema failures imitate FastAPI +
 * pydantic v2 (lax mode) as vLLM's `validation_exception_handler` renders them: type
 * "Bad Request", `param` the cleaned location (`body.max_tokens`), the message
 * `N validation error(s):\n  {'type': ..., 'loc': ..., 'msg': ..., 'input': ...}`. Errors raised
 * while serving (unknown model, prompt too long, max_tokens < 1) use `create_error_response`:
 * types "NotFoundError" / "BadRequestError".
 */

export const VLLM_VERSION = "0.33.0";

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: number };
}

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: ErrorBody | { detail: string },
  ) {
    super("error" in body ? body.error.message : body.detail);
  }
}

/** `create_error_response`: a vLLM error raised while serving. */
export function servingError(status: number, type: string, message: string, param: string | null): HttpError {
  return new HttpError(status, { error: { message, type, param, code: status } });
}

/** `VLLMValidationError.__str__`: the message, then `(parameter=..., value=...)`. */
export function vllmValidationMessage(message: string, parameter?: string | null, value?: unknown): string {
  const extras: string[] = [];
  if (parameter != null) extras.push(`parameter=${parameter}`);
  if (value !== undefined && value !== null) extras.push(`value=${pyStr(value)}`);
  return extras.length > 0 ? `${message} (${extras.join(", ")})` : message;
}

// ------------------------------------------------------------------------------------------------
// Python reprs, for messages shaped like vLLM's

function pyStr(v: unknown): string {
  if (v === null || v === undefined) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(v);
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

/** Python's `repr(str)`. */
export function pyRepr(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === "\\") out += "\\\\";
    else if (ch === quote) out += `\\${quote}`;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (c < 0x20 || c === 0x7f) out += `\\x${c.toString(16).padStart(2, "0")}`;
    else out += ch;
  }
  return out + quote;
}

/** vLLM's `_summarize_error_input`, as a string. */
function summarizeInput(v: unknown): string {
  if (Array.isArray(v)) return `<list of ${v.length} items>`;
  if (v !== null && typeof v === "object") return `<dict of ${Object.keys(v).length} items>`;
  const text = pyStr(v);
  return text.length > 200 ? `${text.slice(0, 200)}...[truncated]` : text;
}

interface PydanticError {
  type: string;
  loc: string;
  msg: string;
  input: unknown;
  ctx?: string;
}

/** A RequestValidationError as vLLM's handler renders it (400, "Bad Request"). */
export function validationError(errors: (PydanticError | string)[], param?: string | null): HttpError {
  const count = errors.length;
  const label = count === 1 ? "error" : "errors";
  const shown = errors.slice(0, 10).map((e) => {
    if (typeof e === "string") return `  ${e}\n`;
    const ctx = e.ctx === undefined ? "" : `, 'ctx': {'error': ${e.ctx}}`;
    let text = `{'type': ${pyRepr(e.type)}, 'loc': ${pyRepr(e.loc)}, 'msg': ${pyRepr(e.msg)}, 'input': ${pyRepr(summarizeInput(e.input))}${ctx}}`;
    if (text.length > 1000) text = `${text.slice(0, 1000)}...[truncated]`;
    return `  ${text}\n`;
  });
  let message = `${count} validation ${label}:\n${shown.join("")}`;
  if (count > 10) message += `  ...and ${count - 10} more ${label}\n`;
  message = message.trimEnd();
  const first = errors[0];
  const p = param !== undefined ? param : typeof first === "string" || first === undefined ? null : first.loc;
  return new HttpError(400, { error: { message, type: "Bad Request", param: p, code: 400 } });
}

/** A `VLLMValidationError` raised by a model validator: pydantic's `value_error` at `body`. */
function valueError(body: unknown, message: string, parameter: string): HttpError {
  const full = vllmValidationMessage(message, parameter);
  return validationError(
    [{ type: "value_error", loc: "body", msg: `Value error, ${full}`, input: body, ctx: `VLLMValidationError(${pyRepr(message)})` }],
    parameter,
  );
}

// ------------------------------------------------------------------------------------------------
// Field checks (pydantic v2 lax mode)

type Body = Record<string, unknown>;

class Checker {
  readonly errors: PydanticError[] = [];
  constructor(private readonly body: Body) {}

  private err(field: string, type: string, msg: string, input: unknown): void {
    this.errors.push({ type, loc: `body.${field}`, msg, input });
  }

  has(field: string): boolean {
    return this.body[field] !== undefined;
  }

  /** int | None (or int with a default). */
  int(field: string, nullable = true): number | null | undefined {
    const v = this.body[field];
    if (v === undefined) return undefined;
    if (v === null) {
      if (nullable) return null;
      this.err(field, "int_type", "Input should be a valid integer", v);
      return undefined;
    }
    if (typeof v === "boolean") return v ? 1 : 0;
    if (typeof v === "number") {
      if (Number.isInteger(v)) return v;
      this.err(field, "int_from_float", "Input should be a valid integer, got a number with a fractional part", v);
      return undefined;
    }
    if (typeof v === "string") {
      const t = v.trim();
      if (/^[+-]?\d+$/.test(t)) return Number(t);
      this.err(field, "int_parsing", "Input should be a valid integer, unable to parse string as an integer", v);
      return undefined;
    }
    this.err(field, "int_type", "Input should be a valid integer", v);
    return undefined;
  }

  float(field: string): number | null | undefined {
    const v = this.body[field];
    if (v === undefined || v === null) return v as null | undefined;
    if (typeof v === "number") return v;
    if (typeof v === "boolean") return v ? 1 : 0;
    if (typeof v === "string") {
      const n = Number(v.trim());
      if (v.trim() !== "" && !Number.isNaN(n)) return n;
      this.err(field, "float_parsing", "Input should be a valid number, unable to parse string as a number", v);
      return undefined;
    }
    this.err(field, "float_type", "Input should be a valid number", v);
    return undefined;
  }

  bool(field: string): boolean | null | undefined {
    const v = this.body[field];
    if (v === undefined || v === null) return v as null | undefined;
    if (typeof v === "boolean") return v;
    if (v === 0 || v === 1) return v === 1;
    if (typeof v === "string") {
      const t = v.trim().toLowerCase();
      if (["true", "t", "yes", "y", "on", "1"].includes(t)) return true;
      if (["false", "f", "no", "n", "off", "0"].includes(t)) return false;
    }
    if (typeof v === "string" || typeof v === "number") {
      this.err(field, "bool_parsing", "Input should be a valid boolean, unable to interpret input", v);
    } else this.err(field, "bool_type", "Input should be a valid boolean", v);
    return undefined;
  }

  str(field: string): string | null | undefined {
    const v = this.body[field];
    if (v === undefined || v === null || typeof v === "string") return v as string | null | undefined;
    this.err(field, "string_type", "Input should be a valid string", v);
    return undefined;
  }

  dict(field: string): Record<string, unknown> | null | undefined {
    const v = this.body[field];
    if (v === undefined || v === null) return v as null | undefined;
    if (typeof v === "object" && !Array.isArray(v)) return v as Record<string, unknown>;
    this.err(field, "dict_type", "Input should be a valid dictionary", v);
    return undefined;
  }

  intList(field: string): number[] | null | undefined {
    const v = this.body[field];
    if (v === undefined || v === null) return v as null | undefined;
    if (!Array.isArray(v)) {
      this.err(field, "list_type", "Input should be a valid list", v);
      return undefined;
    }
    const out: number[] = [];
    v.forEach((x, i) => {
      if (typeof x === "number" && Number.isInteger(x)) out.push(x);
      else this.errors.push({ type: "int_type", loc: `body.${field}.${i}`, msg: "Input should be a valid integer", input: x });
    });
    return out;
  }

  /** StopParam: str | list[str] | None. */
  stop(field: string): string[] | undefined {
    const v = this.body[field];
    if (v === undefined || v === null) return undefined;
    if (typeof v === "string") return [v];
    if (Array.isArray(v) && v.every((s) => typeof s === "string")) return v as string[];
    this.err(field, "string_type", "Input should be a valid string", v);
    this.err(field, "list_type", "Input should be a valid list", v);
    return undefined;
  }

  /** The union `prompt` type: list[int] | list[list[int]] | str | list[str]. */
  prompts(field: string): (string | number[])[] | undefined {
    const v = this.body[field];
    const isIds = (a: unknown): a is number[] =>
      Array.isArray(a) && a.every((t) => typeof t === "number" && Number.isInteger(t) && t >= 0 && t < 2 ** 32);
    if (typeof v === "string") return [v];
    if (Array.isArray(v)) {
      if (isIds(v)) return [v];
      if (v.every(isIds)) return v as number[][];
      if (v.every((s) => typeof s === "string")) return v as string[];
    }
    for (const [type, msg] of [
      ["list_type", "Input should be a valid list"],
      ["list_type", "Input should be a valid list"],
      ["string_type", "Input should be a valid string"],
      ["list_type", "Input should be a valid list"],
    ] as const) {
      this.err(field, Array.isArray(v) ? "int_type" : type, Array.isArray(v) ? "Input should be a valid integer" : msg, v);
    }
    return undefined;
  }

  missing(field: string): void {
    this.errors.push({ type: "missing", loc: `body.${field}`, msg: "Field required", input: this.body });
  }

  throwIfAny(): void {
    if (this.errors.length > 0) throw validationError(this.errors);
  }
}

// ------------------------------------------------------------------------------------------------
// Requests

export interface StreamOptions {
  includeUsage: boolean;
  continuousUsageStats: boolean;
}

/** What both endpoints share after validation. */
export interface SamplingRequest {
  model: string | null;
  maxTokens: number | null;
  n: number;
  stream: boolean;
  streamOptions: StreamOptions | null;
  stop: string[];
  stopTokenIds: number[];
  includeStopStrInOutput: boolean;
  ignoreEos: boolean;
  minTokens: number;
  seed: number | null;
  cacheSalt: string | null;
  /** Per prompt, its embeddings' block digests (`prompt_embeds` completions; prompt-embeds.ts). */
  promptEmbeds?: Buffer[];
  kvTransferParams: Record<string, unknown> | null;
  requestId: string | null;
  returnTokenIds: boolean;
  temperature: number | null;
  topP: number | null;
}

export interface CompletionRequest extends SamplingRequest {
  /** Text or token ids, one entry per prompt. */
  prompts: (string | number[])[];
  echo: boolean;
  /** For text prompts; default true, as vLLM's `/v1/completions`. */
  addSpecialTokens: boolean;
}

export interface ChatMessage {
  role: string;
  content: string;
}

export interface ChatRequest extends SamplingRequest {
  messages: ChatMessage[];
  addGenerationPrompt: boolean;
  echo: boolean;
}

/** FastAPI's body handling: a JSON object, else a validation error. */
export function parseJsonBody(raw: Buffer, contentType: string | undefined): Body {
  const media = (contentType ?? "").toLowerCase().split(";", 1)[0]!.trim();
  if (media !== "application/json") {
    throw validationError(["Unsupported Media Type: Only 'application/json' is allowed"]);
  }
  let body: unknown;
  try {
    body = JSON.parse(raw.toString("utf8"));
  } catch (err) {
    const pos = /position (\d+)/.exec(String((err as Error).message))?.[1] ?? "0";
    throw validationError([{ type: "json_invalid", loc: `body.${pos}`, msg: "JSON decode error", input: {}, ctx: "'Expecting value'" }]);
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw validationError([
      { type: "model_attributes_type", loc: "body", msg: "Input should be a valid dictionary or object to extract fields from", input: body },
    ]);
  }
  return body as Body;
}

const CACHE_SALT_FORBIDDEN = ["@", "/", "\\", "\0"];

/**
 * The request models' `mode="before"` validators shared by both endpoints; pydantic runs them
 * before any field validation, the last defined first (stream options, then the cache salt).
 */
function beforeValidators(body: Body): void {
  if (body.stream_options && !body.stream) {
    throw valueError(body, "Stream options can only be defined when `stream=True`.", "stream_options");
  }
  const salt = body.cache_salt;
  if (salt !== undefined && salt !== null) {
    if (typeof salt !== "string" || salt === "") {
      throw valueError(body, "Parameter 'cache_salt' must be a non-empty string if provided.", "cache_salt");
    }
    if (salt.length > 128 || CACHE_SALT_FORBIDDEN.some((ch) => salt.includes(ch))) {
      throw valueError(body, "Parameter 'cache_salt' must be at most 128 characters and must not contain '@', '/', '\\\\', or NUL.", "cache_salt");
    }
  }
}

function sampling(c: Checker, defaultMaxTokens: number | null, maxTokensField = "max_tokens"): SamplingRequest {
  const model = c.str("model") ?? null;
  let maxTokens = c.int(maxTokensField);
  if (maxTokens === null || maxTokens === undefined) maxTokens = defaultMaxTokens;
  const n = c.int("n", false) ?? 1;
  const stream = c.bool("stream") ?? false;
  const so = c.dict("stream_options");
  let streamOptions: StreamOptions | null = null;
  if (so) {
    const inner = new Checker(so);
    const includeUsage = inner.bool("include_usage") ?? false;
    const continuous = inner.bool("continuous_usage_stats") ?? false;
    for (const e of inner.errors) c.errors.push({ ...e, loc: e.loc.replace(/^body\./, "body.stream_options.") });
    streamOptions = { includeUsage, continuousUsageStats: continuous };
  }
  const stop = c.stop("stop") ?? [];
  const stopTokenIds = c.intList("stop_token_ids") ?? [];
  const includeStop = c.bool("include_stop_str_in_output") ?? false;
  const ignoreEos = c.bool("ignore_eos") ?? false;
  const minTokens = c.int("min_tokens", false) ?? 0;
  const seed = c.int("seed") ?? null;
  const temperature = c.float("temperature") ?? null;
  const topP = c.float("top_p") ?? null;
  c.float("frequency_penalty");
  c.float("presence_penalty");
  c.int("top_k");
  const cacheSalt = c.str("cache_salt") ?? null;
  const kv = c.dict("kv_transfer_params") ?? null;
  const requestId = c.str("request_id") ?? null;
  const returnTokenIds = c.bool("return_token_ids") ?? false;
  c.throwIfAny();
  return {
    model,
    maxTokens,
    n,
    stream,
    streamOptions,
    stop,
    stopTokenIds,
    includeStopStrInOutput: includeStop,
    ignoreEos,
    minTokens,
    seed,
    cacheSalt,
    kvTransferParams: kv,
    requestId,
    returnTokenIds,
    temperature,
    topP,
  };
}

export function parseCompletionRequest(body: Body): CompletionRequest {
  const prompt = body.prompt;
  const emptyPrompt = prompt === undefined || prompt === null || prompt === "";
  if (emptyPrompt) {
    const embeds = body.prompt_embeds;
    if (embeds === undefined || embeds === null || (Array.isArray(embeds) && embeds.length === 0)) {
      throw valueError(body, "Either prompt or prompt_embeds must be provided and non-empty.", "prompt");
    }
  }
  // VLLM_MAX_COMPLETION_PROMPTS (default 1024).
  if (Array.isArray(prompt) && prompt.length > 1024 && !prompt.every((t) => typeof t === "number")) {
    throw valueError(
      body,
      `prompt list length ${prompt.length} exceeds the maximum allowed count of 1024. To increase this limit, set the VLLM_MAX_COMPLETION_PROMPTS environment variable.`,
      "prompt",
    );
  }
  beforeValidators(body);
  const c = new Checker(body);
  const prompts = emptyPrompt ? undefined : c.prompts("prompt");
  const echo = c.bool("echo") ?? false;
  const addSpecialTokens = c.bool("add_special_tokens") ?? true;
  // CompletionRequest.max_tokens defaults to 16 (null is normalized to the default too).
  const s = sampling(c, 16);
  if (emptyPrompt) throw servingError(400, "BadRequestError", "You must set --enable-prompt-embeds to input prompt_embeds.", null);
  if (prompts!.some((p) => p.length === 0)) {
    throw servingError(400, "BadRequestError", "The decoder prompt cannot be empty", null);
  }
  return { ...s, prompts: prompts!, echo, addSpecialTokens };
}

/**
 * `checkMessages: false` leaves the messages' content to a real tokenizer (which validates and
 * renders them as vLLM does); `messages` then holds what could be read of them (for `echo`).
 */
export function parseChatRequest(body: Body, options: { checkMessages?: boolean } = {}): ChatRequest {
  beforeValidators(body);
  const c = new Checker(body);
  const checkMessages = options.checkMessages ?? true;
  const messageError = (e: PydanticError) => {
    if (checkMessages) c.errors.push(e);
  };
  const messages: ChatMessage[] = [];
  const raw = body.messages;
  if (raw === undefined) c.missing("messages");
  else if (!Array.isArray(raw)) c.errors.push({ type: "list_type", loc: "body.messages", msg: "Input should be a valid list", input: raw });
  else {
    raw.forEach((m, i) => {
      const at = `body.messages.${i}`;
      if (m === null || typeof m !== "object" || Array.isArray(m)) {
        messageError({ type: "dict_type", loc: at, msg: "Input should be a valid dictionary", input: m });
        return;
      }
      const msg = m as Record<string, unknown>;
      if (typeof msg.role !== "string") {
        if (msg.role === undefined) messageError({ type: "missing", loc: `${at}.role`, msg: "Field required", input: m });
        else messageError({ type: "string_type", loc: `${at}.role`, msg: "Input should be a valid string", input: msg.role });
        return;
      }
      let content = "";
      const ct = msg.content;
      if (typeof ct === "string") content = ct;
      else if (Array.isArray(ct)) {
        for (const [j, part] of ct.entries()) {
          const p = part as Record<string, unknown> | null;
          if (p && typeof p === "object" && p.type === "text" && typeof p.text === "string") content += p.text;
          else if (typeof part === "string") content += part;
          else messageError({ type: "union_tag_invalid", loc: `${at}.content.${j}`, msg: "Input tag does not match any of the expected tags", input: part });
        }
      } else if (ct !== null && ct !== undefined) {
        messageError({ type: "string_type", loc: `${at}.content`, msg: "Input should be a valid string", input: ct });
      }
      messages.push({ role: msg.role, content });
    });
  }
  const echo = c.bool("echo") ?? false;
  const addGenerationPrompt = c.bool("add_generation_prompt") ?? true;
  // max_completion_tokens wins over the deprecated max_tokens; neither: up to the context.
  const field = body.max_completion_tokens !== undefined && body.max_completion_tokens !== null ? "max_completion_tokens" : "max_tokens";
  const s = sampling(c, null, field);
  return { ...s, messages, addGenerationPrompt, echo };
}

// ------------------------------------------------------------------------------------------------
// Responses (key order as vLLM's pydantic models declare their fields)

export interface Usage {
  prompt_tokens: number;
  total_tokens: number;
  completion_tokens: number;
  prompt_tokens_details?: { cached_tokens: number; created_cache_tokens?: null; multimodal_tokens?: null } | null;
  completion_tokens_details?: null;
}

export function usage(prompt: number, completion: number, cachedTokens: number | null, full: boolean): Usage {
  const u: Usage = { prompt_tokens: prompt, total_tokens: prompt + completion, completion_tokens: completion };
  if (full) {
    u.prompt_tokens_details = cachedTokens === null ? null : { cached_tokens: cachedTokens, created_cache_tokens: null, multimodal_tokens: null };
    u.completion_tokens_details = null;
  } else if (cachedTokens !== null) {
    u.prompt_tokens_details = { cached_tokens: cachedTokens };
  }
  return u;
}

/** `PerRequestMetrics` from simulated timings (ms), as `build_per_request_timing_metrics`. */
export function perRequestMetrics(
  t: { arrival: number; scheduled: number | null; firstToken: number | null; lastToken: number | null },
  generated: number,
): Record<string, number | null> {
  const ttft = t.scheduled !== null && t.firstToken !== null ? t.firstToken - t.scheduled : null;
  const gen = t.firstToken !== null && t.lastToken !== null ? t.lastToken - t.firstToken : null;
  const queue = t.scheduled !== null ? t.scheduled - t.arrival : null;
  const itl = gen !== null && generated > 1 ? gen / (generated - 1) : null;
  const inference = t.scheduled !== null && t.lastToken !== null ? t.lastToken - t.scheduled : null;
  return {
    time_to_first_token_ms: ttft,
    generation_time_ms: gen,
    queue_time_ms: queue,
    mean_itl_ms: itl,
    tokens_per_second: inference !== null && inference > 0 ? (generated / inference) * 1000 : null,
    speculative_decoding: null,
  };
}

export interface ChoiceResult {
  index: number;
  text: string;
  tokenIds: number[];
  promptTokenIds: number[];
  finishReason: string | null;
  stopReason: string | number | null;
}

export function completionResponse(
  id: string,
  created: number,
  model: string,
  choices: ChoiceResult[],
  u: Usage,
  fingerprint: string,
  returnTokenIds: boolean,
  kvTransferParams: Record<string, unknown> | null,
  metrics: Record<string, number | null> | null,
): unknown {
  return {
    id,
    object: "text_completion",
    created,
    model,
    choices: choices.map((c) => ({
      index: c.index,
      text: c.text,
      logprobs: null,
      finish_reason: c.finishReason,
      stop_reason: c.stopReason,
      token_ids: returnTokenIds ? c.tokenIds : null,
      prompt_logprobs: null,
      prompt_token_ids: returnTokenIds ? c.promptTokenIds : null,
      routed_experts: null,
      weight_versions: null,
    })),
    service_tier: null,
    system_fingerprint: fingerprint,
    usage: u,
    kv_transfer_params: kvTransferParams,
    ec_transfer_params: null,
    metrics,
  };
}

export function chatResponse(
  id: string,
  created: number,
  model: string,
  choices: ChoiceResult[],
  u: Usage,
  fingerprint: string,
  returnTokenIds: boolean,
  promptTokenIds: number[] | null,
  kvTransferParams: Record<string, unknown> | null,
  metrics: Record<string, number | null> | null,
): unknown {
  return {
    id,
    object: "chat.completion",
    created,
    model,
    choices: choices.map((c) => ({
      index: c.index,
      message: { role: "assistant", content: c.text, refusal: null, annotations: null, audio: null, function_call: null, reasoning: null },
      logprobs: null,
      finish_reason: c.finishReason,
      stop_reason: c.stopReason,
      token_ids: returnTokenIds ? c.tokenIds : null,
      routed_experts: null,
      weight_versions: null,
    })),
    service_tier: null,
    system_fingerprint: fingerprint,
    usage: u,
    prompt_logprobs: null,
    prompt_token_ids: returnTokenIds ? promptTokenIds : null,
    prompt_text: null,
    kv_transfer_params: kvTransferParams,
    ec_transfer_params: null,
    metrics,
  };
}

/** One SSE frame. */
export function sse(obj: unknown): string {
  return `data: ${JSON.stringify(obj)}\n\n`;
}

export const SSE_DONE = "data: [DONE]\n\n";
