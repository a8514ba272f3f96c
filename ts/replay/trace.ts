/**
 * Workload traces for `kvroute replay`: reading, validating and turning requests into prompts.
 *
 * Two formats, one JSON object a line (blank lines are skipped; the first record decides the
 * format and every other line must match it):
 * - **Mooncake** (kvcache-ai/Mooncake FAST25 traces): `{"timestamp": ms since start,
 *   "input_length": tokens, "output_length": tokens, "hash_ids": [..]}`, where `hash_ids` name the
 *   prompt's blocks of 512 tokens, in order. `expandHashIds` turns them into token ids: equal ids
 *   give equal runs of 512 tokens (a pure function of the id and the position), so two requests
 *   sharing their first k ids share their first k x 512 tokens; the last block is cut to
 *   `input_length`. Replayed as a completion of `output_length` tokens exactly (`ignore_eos`).
 * - **OpenAI**: a `/v1/completions` body (`prompt`) or a `/v1/chat/completions` body
 *   (`messages`), validated by the gateway's own parser, plus an optional `timestamp` (ms; absent:
 *   the previous request's). Prompts become tokens with the gateway's tokenizer, so the simulated
 *   engine sees exactly what a live one would.
 *
 * A malformed line stops the reading with a `TraceError` naming the file, the line and the reason.
 */
import { readFileSync } from "node:fs";
import { InvalidInputError } from "../errors.js";
import { native } from "../native.js";
import { parseChatRequest, parseCompletionRequest, type ParsedRequest } from "../gateway/openai-request.js";
import { applyChatTemplate, encode, FIRST_WORD_ID, WORD_END_ID } from "../mocker/toy-tokenizer.js";
import type { ChatMessage } from "../gateway/openai-request.js";

/** Tokens per Mooncake hash id. */
export const MOONCAKE_BLOCK_TOKENS = 512;

export type TraceFormat = "mooncake" | "openai";

/** One request of a trace, validated. */
export interface TraceRequest {
  /** 0-based position in the trace. */
  index: number;
  /** 1-based line in the file. */
  line: number;
  /** Arrival, ms since the trace's start (after `--rate` scaling). */
  timestampMs: number;
  /** Prompt tokens (Mooncake: `input_length`; OpenAI: after tokenizing). */
  inputLength: number;
  /** Output tokens: exact for Mooncake; for OpenAI the request's limit, null when it has none. */
  maxTokens: number | null;
  /** Mooncake: the prompt's 512-token block ids. */
  hashIds?: readonly number[];
  /** OpenAI: the request as the gateway parsed it (its body is what live replay sends). */
  openai?: ParsedRequest;
  /** OpenAI: its prompt tokens (kept: tokenizing twice would cost as much as replaying). */
  tokens?: Uint32Array;
}

export interface Trace {
  file: string;
  format: TraceFormat;
  requests: TraceRequest[];
}

/**
 * Turns an OpenAI trace's prompts into the tokens the replayed engines see. The replay's engines
 * are mockers, so the default is the mocker's own toy tokenizer and chat template.
 */
export interface TraceTokenizer {
  encode(text: string): number[];
  encodeChat(messages: readonly ChatMessage[]): number[];
}

export const toyTraceTokenizer: TraceTokenizer = {
  encode: (text) => encode(text),
  encodeChat: (messages) => encode(applyChatTemplate(messages.map((m) => ({ role: m.role, content: m.text })))),
};

export interface ReadTraceOptions {
  /** Only the first N requests. */
  limit?: number;
  /**
   * Requests per second: timestamps are scaled so the replayed part of the trace arrives at this
   * average rate (its shape, bursts and gaps kept).
   */
  rate?: number;
  tokenizer?: TraceTokenizer;
}

/** A trace line that cannot be replayed: `line` (1-based) and the `reason`. */
export class TraceError extends InvalidInputError {
  constructor(
    readonly file: string,
    readonly line: number,
    readonly reason: string,
  ) {
    super(`${file}:${line}: ${reason}`);
  }
}

export function readTrace(file: string, options: ReadTraceOptions = {}): Trace {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new InvalidInputError(`cannot read trace ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  return parseTrace(text, file, options);
}

/** Parses trace text (see the file comment); `file` only names it in errors. */
export function parseTrace(text: string, file: string, options: ReadTraceOptions = {}): Trace {
  const limit = options.limit ?? Infinity;
  const tokenizer = options.tokenizer ?? toyTraceTokenizer;
  const requests: TraceRequest[] = [];
  let format: TraceFormat | null = null;
  let lineNo = 0;
  let lastTs = 0;
  let start = 0;
  while (start <= text.length && requests.length < limit) {
    let end = text.indexOf("\n", start);
    if (end < 0) end = text.length;
    const raw = text.slice(start, end).trim();
    start = end + 1;
    lineNo++;
    if (raw.length === 0) continue;
    const fail = (reason: string): never => {
      throw new TraceError(file, lineNo, reason);
    };
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (err) {
      fail(`not valid JSON (${err instanceof Error ? err.message : String(err)})`);
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) fail(`expected a JSON object, got ${describe(value)}`);
    const obj = value as Record<string, unknown>;
    const lineFormat: TraceFormat | null =
      "hash_ids" in obj || "input_length" in obj ? "mooncake" : "messages" in obj || "prompt" in obj ? "openai" : null;
    if (lineFormat === null) {
      fail(
        format === "openai"
          ? "expected an OpenAI request with 'prompt' or 'messages'"
          : "expected a Mooncake record (timestamp, input_length, output_length, hash_ids) or an OpenAI request (prompt or messages)",
      );
    }
    if (format === null) format = lineFormat;
    else if (lineFormat !== format) fail(`a ${lineFormat} record in a ${format} trace (the first record decides the format)`);
    const index = requests.length;
    if (format === "mooncake") {
      const r = mooncakeRecord(obj, fail);
      if (r.timestamp < lastTs) fail(`timestamp ${r.timestamp} goes back in time (previous: ${lastTs})`);
      lastTs = r.timestamp;
      requests.push({ index, line: lineNo, timestampMs: r.timestamp, inputLength: r.inputLength, maxTokens: r.outputLength, hashIds: r.hashIds });
    } else {
      const { timestamp, ...body } = obj;
      let ts = lastTs;
      if (timestamp !== undefined) {
        if (typeof timestamp !== "number" || !Number.isFinite(timestamp) || timestamp < 0) fail(`'timestamp' must be a number of ms >= 0: got ${describe(timestamp)}`);
        ts = timestamp as number;
        if (ts < lastTs) fail(`timestamp ${ts} goes back in time (previous: ${lastTs})`);
      }
      lastTs = ts;
      let parsed: ParsedRequest;
      try {
        parsed = "messages" in body ? parseChatRequest(body) : parseCompletionRequest(body);
      } catch (err) {
        return fail(err instanceof Error ? err.message : String(err));
      }
      if (parsed.batched || parsed.n !== 1) fail("replay takes one prompt and n = 1 per request");
      const ids = parsed.promptIds ?? (parsed.messages ? tokenizer.encodeChat(parsed.messages) : tokenizer.encode(parsed.promptText ?? ""));
      if (ids.length === 0) fail("the prompt is empty");
      const tokens = Uint32Array.from(ids);
      requests.push({ index, line: lineNo, timestampMs: ts, inputLength: tokens.length, maxTokens: parsed.maxTokens, openai: parsed, tokens });
    }
  }
  if (format === null || requests.length === 0) throw new InvalidInputError(`${file}: the trace has no requests`);
  if (options.rate !== undefined) scaleToRate(requests, options.rate);
  return { file, format, requests };
}

function mooncakeRecord(obj: Record<string, unknown>, fail: (reason: string) => never) {
  const int = (field: string, min: number): number => {
    const v = obj[field];
    if (v === undefined) fail(`missing '${field}'`);
    if (typeof v !== "number" || !Number.isInteger(v) || v < min) fail(`'${field}' must be an integer >= ${min}: got ${describe(v)}`);
    return v as number;
  };
  const ts = obj["timestamp"];
  if (ts === undefined) fail("missing 'timestamp'");
  if (typeof ts !== "number" || !Number.isFinite(ts) || ts < 0) fail(`'timestamp' must be a number of ms >= 0: got ${describe(ts)}`);
  const inputLength = int("input_length", 1);
  const outputLength = int("output_length", 1);
  const ids = obj["hash_ids"];
  if (ids === undefined) fail("missing 'hash_ids'");
  if (!Array.isArray(ids)) fail(`'hash_ids' must be an array: got ${describe(ids)}`);
  const hashIds = ids as unknown[];
  for (let i = 0; i < hashIds.length; i++) {
    const h = hashIds[i];
    if (typeof h !== "number" || !Number.isSafeInteger(h) || h < 0) fail(`hash_ids[${i}] must be an integer >= 0: got ${describe(h)}`);
  }
  const blocks = Math.ceil(inputLength / MOONCAKE_BLOCK_TOKENS);
  if (hashIds.length !== blocks) {
    fail(`input_length ${inputLength} needs ${blocks} hash_ids of ${MOONCAKE_BLOCK_TOKENS} tokens: got ${hashIds.length}`);
  }
  return { timestamp: ts as number, inputLength, outputLength, hashIds: hashIds as number[] };
}

function scaleToRate(requests: TraceRequest[], rate: number): void {
  if (!(rate > 0 && Number.isFinite(rate))) throw new InvalidInputError(`rate must be > 0: got ${rate}`);
  const first = requests[0]!.timestampMs;
  const span = requests[requests.length - 1]!.timestampMs - first;
  // n requests at `rate` per second span (n - 1) / rate seconds.
  const target = ((requests.length - 1) / rate) * 1000;
  const k = span > 0 ? target / span : 0;
  for (const r of requests) r.timestampMs = span > 0 ? (r.timestampMs - first) * k : (r.index / rate) * 1000;
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  if (typeof v === "object") return "an object";
  return String(v);
}

const WORDS = WORD_END_ID - FIRST_WORD_ID;
const WORD_SCALE = WORDS / 2 ** 24;

/**
 * The prompt of a Mooncake record: block `k` holds tokens `blockToken(hashIds[k], j)`, j < 512,
 * the last block cut to `inputLength`. Tokens are word ids of the toy tokenizer (never BOS/EOS).
 */
export function expandHashIds(hashIds: readonly number[], inputLength: number, out?: Uint32Array): Uint32Array {
  const tokens = out && out.length >= inputLength ? out.subarray(0, inputLength) : new Uint32Array(inputLength);
  // In Rust (kvroute_core::mooncake): the full Mooncake trace expands to 145M tokens.
  native.expandHashIdsInto(hashIds as number[], tokens);
  return tokens;
}

/** `expandHashIds` in JS: the reference the native one is tested against. */
export function expandHashIdsReference(hashIds: readonly number[], inputLength: number): Uint32Array {
  const tokens = new Uint32Array(inputLength);
  let at = 0;
  // A local copy: an imported binding may be read through a getter (CJS interop) 145M times.
  const first = FIRST_WORD_ID;
  for (let k = 0; k < hashIds.length && at < inputLength; k++) {
    const h = hashIds[k]!;
    // Two 32-bit halves of the id (ids up to 2^53), mixed once per block.
    // A distinct 32-bit seed per id (mix32 is a bijection); token j mixes seed + j x an odd
    // constant, mapped onto the word ids by its top 24 bits (a multiply, not a division: the full
    // Mooncake trace expands to 145M tokens).
    const seed = mix32((h >>> 0) ^ Math.imul(Math.floor(h / 0x1_0000_0000) + 0x632be5ab, 0x85ebca6b));
    const n = Math.min(MOONCAKE_BLOCK_TOKENS, inputLength - at);
    for (let j = 0; j < n; j++) tokens[at + j] = first + Math.floor((mix32((seed + Math.imul(j, 0x9e3779b9)) | 0) >>> 8) * WORD_SCALE);
    at += n;
  }
  return tokens;
}

/** murmur3's finalizer: a bijection of 32-bit integers with good avalanche. */
function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** The prompt tokens of a trace request. */
export function promptTokens(req: TraceRequest): Uint32Array {
  if (req.tokens) return req.tokens;
  return expandHashIds(req.hashIds!, req.inputLength);
}
