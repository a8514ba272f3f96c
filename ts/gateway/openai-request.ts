/**
 * Validation of OpenAI completion and chat-completion bodies at the edge: the fields the gateway
 * itself relies on (model, prompt or messages, stream, token limits, n, vLLM's extra keys for
 * caching) are checked here with a 400 naming the field; everything else is forwarded untouched
 * for the engine to judge (it answers its own vLLM-shaped 400s).
 */
import type { TokenIds } from "../core/block-hasher.js";
import { BadRequestError, clip } from "./errors.js";
import { MAX_JSON_DEPTH, tooDeepField } from "./json-depth.js";

export type Endpoint = "completions" | "chat";

export interface ChatMessage {
  role: string;
  /** The text of the message (string content, or its text parts joined). */
  text: string;
}

export interface ParsedRequest {
  endpoint: Endpoint;
  /** The client's body as parsed; forwarded as is, with the gateway's additions. */
  body: Record<string, unknown>;
  /** Null when the client left it out (the gateway then serves its only model, as vLLM does). */
  model: string | null;
  stream: boolean;
  /** `stream_options.include_usage`. */
  includeUsage: boolean;
  /** `max_tokens` / `max_completion_tokens`, when given. */
  maxTokens: number | null;
  /** `min_tokens` (vLLM), when given. */
  minTokens: number | null;
  /** Choices per prompt. */
  n: number;
  /** Completions: the prompt as token ids (single token-id prompt), or null for text. */
  promptIds: TokenIds | null;
  /** Completions: the text prompt (single text prompt), or null. */
  promptText: string | null;
  /** Completions: more than one prompt in the request (routed by the first; no migration). */
  batched: boolean;
  /** Chat: the messages. */
  messages: ChatMessage[] | null;
  /** The client asked for `return_token_ids` itself (then the ids stay in what it receives). */
  returnTokenIds: boolean;
  cacheSalt: string | null;
  /** `echo` (completions): the prompt is sent back first. */
  echo: boolean;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v;
}

/** Parses the raw bytes as a JSON object, or throws a 400. */
export function parseJsonObject(bytes: Buffer | unknown): Record<string, unknown> {
  let value: unknown = bytes;
  if (Buffer.isBuffer(bytes)) {
    if (bytes.length === 0) throw new BadRequestError("The request body is empty: expected a JSON object");
    try {
      value = JSON.parse(bytes.toString("utf8"));
    } catch (err) {
      throw new BadRequestError(`The request body is not valid JSON: ${clip(err instanceof Error ? err.message : String(err))}`);
    }
  }
  if (!isObject(value)) throw new BadRequestError(`The request body must be a JSON object: got ${typeName(value)}`);
  const deep = tooDeepField(value);
  if (deep !== null) throw new BadRequestError(`'${clip(deep, 64)}' is nested deeper than ${MAX_JSON_DEPTH} levels`, clip(deep, 64));
  return value;
}

function optionalBool(body: Record<string, unknown>, field: string): boolean | null {
  const v = body[field];
  if (v === undefined || v === null) return null;
  if (typeof v !== "boolean") throw new BadRequestError(`'${field}' must be a boolean: got ${typeName(v)}`, field);
  return v;
}

function optionalInt(body: Record<string, unknown>, field: string, min: number): number | null {
  const v = body[field];
  if (v === undefined || v === null) return null;
  if (typeof v !== "number" || !Number.isInteger(v)) throw new BadRequestError(`'${field}' must be an integer: got ${typeName(v) === "number" ? String(v) : typeName(v)}`, field);
  if (v < min) throw new BadRequestError(`'${field}' must be >= ${min}: got ${v}`, field);
  return v;
}

function optionalString(body: Record<string, unknown>, field: string): string | null {
  const v = body[field];
  if (v === undefined || v === null) return null;
  if (typeof v !== "string") throw new BadRequestError(`'${field}' must be a string: got ${typeName(v)}`, field);
  return v;
}

const MAX_TOKEN_ID = 0xffff_ffff;

/** A value as quoted in an error message: numbers and short strings whole, anything else by type. */
function shortValue(v: unknown): string {
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  if (typeof v === "string") return JSON.stringify(clip(v, 64));
  return typeName(v);
}

function tokenArray(v: unknown[], field: string): number[] {
  for (let i = 0; i < v.length; i++) {
    const t = v[i];
    if (typeof t !== "number" || !Number.isInteger(t) || t < 0 || t > MAX_TOKEN_ID) {
      throw new BadRequestError(`'${field}[${i}]' must be a token id (an integer in [0, 2^32)): got ${shortValue(t)}`, field);
    }
  }
  return v as number[];
}

function common(endpoint: Endpoint, body: Record<string, unknown>) {
  const model = optionalString(body, "model");
  if (model !== null && model.length === 0) throw new BadRequestError("'model' must not be empty", "model");
  const stream = optionalBool(body, "stream") ?? false;
  const so = body["stream_options"];
  let includeUsage = false;
  if (so !== undefined && so !== null) {
    if (!isObject(so)) throw new BadRequestError(`'stream_options' must be an object: got ${typeName(so)}`, "stream_options");
    const iu = so["include_usage"];
    if (iu !== undefined && iu !== null && typeof iu !== "boolean") {
      throw new BadRequestError(`'stream_options.include_usage' must be a boolean: got ${typeName(iu)}`, "stream_options.include_usage");
    }
    includeUsage = iu === true;
  }
  const maxTokens = optionalInt(body, "max_tokens", 1);
  const maxCompletion = endpoint === "chat" ? optionalInt(body, "max_completion_tokens", 1) : null;
  const minTokens = optionalInt(body, "min_tokens", 0);
  const n = optionalInt(body, "n", 1) ?? 1;
  const returnTokenIds = optionalBool(body, "return_token_ids") ?? false;
  const cacheSalt = optionalString(body, "cache_salt");
  return { model, stream, includeUsage, maxTokens: maxCompletion ?? maxTokens, minTokens, n, returnTokenIds, cacheSalt };
}

/** `/v1/completions`: prompt is a string, a list of strings, a token-id list, or a list of those. */
export function parseCompletionRequest(body: Record<string, unknown>): ParsedRequest {
  const c = common("completions", body);
  const prompt = body["prompt"];
  let promptIds: number[] | null = null;
  let promptText: string | null = null;
  let batched = false;
  const embeds = body["prompt_embeds"] !== undefined && body["prompt_embeds"] !== null;
  if ((prompt === undefined || prompt === null) && !embeds) throw new BadRequestError("'prompt' is required", "prompt");
  if (prompt === undefined || prompt === null) {
    // prompt_embeds only: keyed by gateway/prompt-embeds.ts.
  } else if (typeof prompt === "string") {
    promptText = prompt;
  } else if (Array.isArray(prompt)) {
    if (prompt.length === 0) throw new BadRequestError("'prompt' must not be empty", "prompt");
    const first = prompt[0];
    if (typeof first === "number") {
      promptIds = tokenArray(prompt, "prompt");
    } else if (typeof first === "string") {
      prompt.forEach((p, i) => {
        if (typeof p !== "string") throw new BadRequestError(`'prompt[${i}]' must be a string: got ${typeName(p)}`, "prompt");
      });
      promptText = first;
      batched = prompt.length > 1;
    } else if (Array.isArray(first)) {
      prompt.forEach((p, i) => {
        if (!Array.isArray(p) || p.length === 0) throw new BadRequestError(`'prompt[${i}]' must be a non-empty array of token ids`, "prompt");
        tokenArray(p, `prompt[${i}]`);
      });
      promptIds = first as number[];
      batched = prompt.length > 1;
    } else {
      throw new BadRequestError(`'prompt' must be a string, an array of strings or an array of token ids: got an array of ${typeName(first)}`, "prompt");
    }
  } else {
    throw new BadRequestError(`'prompt' must be a string, an array of strings or an array of token ids: got ${typeName(prompt)}`, "prompt");
  }
  const echo = optionalBool(body, "echo") ?? false;
  return { endpoint: "completions", body, ...c, promptIds, promptText, batched, messages: null, echo };
}

/** `/v1/chat/completions`: messages with string content or text parts. */
export function parseChatRequest(body: Record<string, unknown>): ParsedRequest {
  const c = common("chat", body);
  const raw = body["messages"];
  if (raw === undefined || raw === null) throw new BadRequestError("'messages' is required", "messages");
  if (!Array.isArray(raw)) throw new BadRequestError(`'messages' must be an array: got ${typeName(raw)}`, "messages");
  if (raw.length === 0) throw new BadRequestError("'messages' must not be empty", "messages");
  const messages = raw.map((m, i): ChatMessage => {
    const field = `messages[${i}]`;
    if (!isObject(m)) throw new BadRequestError(`'${field}' must be an object: got ${typeName(m)}`, "messages");
    const role = m["role"];
    if (typeof role !== "string" || role.length === 0) throw new BadRequestError(`'${field}.role' must be a non-empty string`, "messages");
    const content = m["content"];
    let text: string;
    if (content === undefined || content === null) text = "";
    else if (typeof content === "string") text = content;
    else if (Array.isArray(content)) {
      text = "";
      content.forEach((part, k) => {
        if (!isObject(part) || typeof part["type"] !== "string") {
          throw new BadRequestError(`'${field}.content[${k}]' must be an object with a 'type'`, "messages");
        }
        if (part["type"] === "text") {
          if (typeof part["text"] !== "string") throw new BadRequestError(`'${field}.content[${k}].text' must be a string`, "messages");
          text += part["text"];
        }
      });
    } else {
      throw new BadRequestError(`'${field}.content' must be a string or an array of content parts: got ${typeName(content)}`, "messages");
    }
    return { role, text };
  });
  return { endpoint: "chat", body, ...c, promptIds: null, promptText: null, batched: false, messages, echo: false };
}

/** `/v1/kvroute/route`: `{ model, prompt: token ids | text, explain? }`. */
export function parseRouteRequest(body: Record<string, unknown>): { model: string | null; promptIds: number[] | null; promptText: string | null; messages: ChatMessage[] | null; explain: boolean } {
  const model = optionalString(body, "model");
  const explain = optionalBool(body, "explain") ?? false;
  if (body["messages"] !== undefined) {
    const chat = parseChatRequest(body);
    return { model, promptIds: null, promptText: null, messages: chat.messages, explain };
  }
  const prompt = body["prompt"];
  if (prompt === undefined || prompt === null) throw new BadRequestError("'prompt' is required (token ids or text)", "prompt");
  if (typeof prompt === "string") return { model, promptIds: null, promptText: prompt, messages: null, explain };
  if (Array.isArray(prompt)) return { model, promptIds: tokenArray(prompt, "prompt"), promptText: null, messages: null, explain };
  throw new BadRequestError(`'prompt' must be an array of token ids or a string: got ${typeName(prompt)}`, "prompt");
}
