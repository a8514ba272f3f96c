/**
 * The client's view of a streamed answer, and its continuation on another worker when the first
 * one breaks (exchange.ts decides when). Every event read notes the stream's identity, the
 * engine's prompt token ids and the token ids sent to the client (vLLM's `return_token_ids`).
 * A continuation is a completions request whose prompt is those prompt ids plus the ids already
 * sent, `max_tokens` shrunk by as many; its chunks are rewritten into the first stream (same id,
 * same object type, no second role chunk, usage adding up), so the client sees one stream with no
 * token missing or repeated. Ids the client did not ask for are stripped again here.
 *
 * The state lives on the exchange (one object per request) and is passed in explicitly.
 */
import type { ParsedRequest } from "./openai-request.js";
import { forEachData, sseEvent } from "./sse.js";
import { isEngineAbort, type Attempt, type StreamChoice, type StreamChunk } from "./attempt.js";

/** What this module reads and keeps of one request's stream (the exchange holds it). */
export interface ClientStream {
  readonly parsed: ParsedRequest;
  /** Ask workers for token ids (migration on and the request can be continued). */
  readonly trackIds: boolean;
  /** The response's headers went to the client. */
  readonly headersSent: boolean;
  streamId: string | null;
  streamCreated: number | null;
  roleSent: boolean;
  /** Token ids sent to the client (when the worker returns them). */
  readonly sentIds: number[];
  sentTokens: number;
  idsComplete: boolean;
  enginePromptIds: number[] | null;
  /** The tokenization parity check, on the first prompt ids a worker reports. */
  checkPromptIds(attempt: Attempt, ids: readonly number[]): void;
}

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

/** A completions request continuing the stream: prompt = engine prompt ids + ids sent so far. */
export function continuationBody(s: ClientStream, model: string): Buffer {
  const src = s.parsed.body;
  const body: Record<string, unknown> = {};
  if (s.parsed.endpoint === "completions") {
    Object.assign(body, src);
    delete body["prompt_logprobs"];
    delete body["kv_transfer_params"];
  } else {
    for (const f of CONTINUATION_FIELDS) if (src[f] !== undefined) body[f] = src[f];
  }
  body["model"] = model;
  body["prompt"] = [...s.enginePromptIds!, ...s.sentIds];
  body["stream"] = true;
  body["echo"] = false;
  body["return_token_ids"] = true;
  delete body["max_completion_tokens"];
  if (s.parsed.maxTokens !== null) body["max_tokens"] = Math.max(1, s.parsed.maxTokens - s.sentTokens);
  else delete body["max_tokens"];
  if (s.parsed.minTokens !== null) body["min_tokens"] = Math.max(0, s.parsed.minTokens - s.sentTokens);
  if (s.parsed.includeUsage) body["stream_options"] = { include_usage: true };
  else delete body["stream_options"];
  return Buffer.from(JSON.stringify(body));
}

/** Whether what was sent so far can be continued on another worker. */
export function canContinue(s: ClientStream): boolean {
  if (!(s.headersSent && s.parsed.stream)) return true;
  if (s.sentTokens === 0) return true;
  return s.trackIds && s.idsComplete && s.enginePromptIds !== null && s.sentIds.length === s.sentTokens;
}

/** A scanned token event: its ids counted and, for migration, remembered. */
export function noteIds(s: ClientStream, ids: number[]): number {
  if (s.trackIds) for (const id of ids) s.sentIds.push(id);
  return ids.length;
}

/** Passthrough: counts tokens and notes ids, ids of the prompt and the stream's identity. */
export function inspectEvent(s: ClientStream, attempt: Attempt, data: string): number {
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
  return noteChunk(s, attempt, obj);
}

function noteChunk(s: ClientStream, attempt: Attempt, obj: StreamChunk): number {
  if (obj.error !== undefined) {
    attempt.errorEvent = true;
    return 0;
  }
  if (isEngineAbort(obj)) {
    attempt.engineAbort = true;
    return 0;
  }
  if (s.streamId === null && typeof obj.id === "string") {
    s.streamId = obj.id;
    s.streamCreated = typeof obj.created === "number" ? obj.created : null;
  }
  if (s.enginePromptIds === null) {
    const p = obj.prompt_token_ids ?? obj.choices?.[0]?.prompt_token_ids;
    if (Array.isArray(p)) {
      s.enginePromptIds = p;
      s.checkPromptIds(attempt, p);
    }
  }
  let tokens = 0;
  const choices = obj.choices;
  if (Array.isArray(choices)) {
    for (const c of choices) {
      const ids = c.token_ids;
      if (Array.isArray(ids)) {
        tokens += ids.length;
        if (s.trackIds && c.index === 0) for (const id of ids) s.sentIds.push(id);
      } else if ((typeof c.text === "string" && c.text.length > 0) || (typeof c.delta?.content === "string" && c.delta.content.length > 0)) {
        tokens += 1;
        if (s.trackIds) s.idsComplete = false;
      }
      if (c.delta?.role !== undefined) s.roleSent = true;
    }
  }
  return tokens;
}

/** Rewrites one event into the client's stream; returns the text to send (null: drop). */
export function rewriteEvent(s: ClientStream, attempt: Attempt, data: string): { text: string | null; tokens: number } {
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
  const hadRole = s.roleSent;
  const tokens = noteChunk(s, attempt, obj);
  const keepIds = s.parsed.returnTokenIds;
  if (continuing && s.streamId !== null) {
    obj.id = s.streamId;
    if (s.streamCreated !== null) obj.created = s.streamCreated;
  }
  if (attempt.format === "completions" && s.parsed.endpoint === "chat") {
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
    const prompt = s.enginePromptIds?.length ?? obj.usage.prompt_tokens - attempt.baseTokens;
    const completion = attempt.baseTokens + (obj.usage.completion_tokens ?? 0);
    obj.usage = { ...obj.usage, prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
  }
  return { text: sseEvent(JSON.stringify(obj)), tokens };
}

/** The first `count` events of `whole` (vLLM's one `data:` line per event), re-framed. */
export function firstEvents(whole: Buffer, count: number): string {
  let out = "";
  let i = 0;
  forEachData(whole, (data) => {
    if (i++ < count) out += sseEvent(data);
  });
  return out;
}
