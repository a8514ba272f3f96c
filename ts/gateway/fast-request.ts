/**
 * The gateway's fast path for reading a completions or chat request: one native call reads the
 * fields it routes and forwards by from the body's bytes and, given the model's tokenizer,
 * tokenizes the prompt in the same call (crates/kvroute-tokenizer/src/openai_fields.rs), so a
 * long prompt never becomes a JavaScript object graph. The body as an object is parsed only when
 * something needs it (a stream's continuation on another worker, a disaggregated prefill leg).
 *
 * The native reader takes only bodies the general path (openai-request.ts) accepts, with the same
 * values; it leaves everything else (invalid JSON, a field of the wrong type, batched prompts,
 * prompt embeddings...) to that path, which answers the exact 400 or handles the rare form.
 */
import type { OpenAiRequestFields } from "../../index.js";
import type { TokenIds } from "../core/block-hasher.js";
import { native } from "../native.js";
import type { PromptTokenizer } from "./context.js";
import { parseChatRequest, parseJsonObject, type ChatMessage, type Endpoint, type ParsedRequest } from "./openai-request.js";

/** A tokenizer that reads and tokenizes a body in one call (`Tokenizer` does). */
export interface RequestReadingTokenizer extends PromptTokenizer {
  readRequest(body: Uint8Array, chat: boolean): OpenAiRequestFields | undefined;
}

function readsRequests(t: PromptTokenizer | null): t is RequestReadingTokenizer {
  return t !== null && typeof (t as Partial<RequestReadingTokenizer>).readRequest === "function";
}

/** What the fast path read. */
export interface FastRead {
  parsed: ParsedRequest;
  /** Completions: `add_special_tokens` unless the body says false. */
  addSpecialTokens: boolean;
  /** The tokenizer that read the prompt (null: nobody tokenized it yet). */
  tokenizer: PromptTokenizer | null;
  /** Its ids (text and chat), or why it refused the prompt. */
  tokens: TokenIds | null;
  tokenError: string | null;
}

/**
 * Reads `raw` on the fast path, tokenizing with `tokenizer` when it can (the caller checks it is
 * the model's). Null: the general path takes the body.
 */
export function readFast(raw: Buffer, endpoint: Endpoint, tokenizer: PromptTokenizer | null): FastRead | null {
  const chat = endpoint === "chat";
  const reader = readsRequests(tokenizer) ? tokenizer : null;
  const f = reader ? reader.readRequest(raw, chat) : native.readOpenaiRequest(raw, chat);
  if (!f) return null;
  return {
    parsed: new FastParsedRequest(endpoint, raw, f),
    addSpecialTokens: f.addSpecialTokens,
    tokenizer: reader && (f.tokens !== undefined || f.tokenError !== undefined) ? reader : null,
    tokens: f.tokens ?? null,
    tokenError: f.tokenError ?? null,
  };
}

/** A request read natively; `body` and `messages` are parsed from the bytes on first use. */
class FastParsedRequest implements ParsedRequest {
  readonly model: string | null;
  readonly stream: boolean;
  readonly includeUsage: boolean;
  readonly maxTokens: number | null;
  readonly minTokens: number | null;
  readonly n: number;
  readonly promptIds: TokenIds | null;
  /** The text prompt when it crossed as a string (no tokenizer read it). */
  private readonly text: string | null;
  readonly batched = false;
  readonly returnTokenIds: boolean;
  readonly cacheSalt: string | null;
  readonly echo: boolean;
  private object: Record<string, unknown> | null = null;
  private chatMessages: ChatMessage[] | null = null;

  constructor(
    readonly endpoint: Endpoint,
    private readonly raw: Buffer,
    f: OpenAiRequestFields,
  ) {
    this.model = f.model ?? null;
    this.stream = f.stream;
    this.includeUsage = f.includeUsage;
    this.maxTokens = f.maxTokens ?? null;
    this.minTokens = f.minTokens ?? null;
    this.n = f.n;
    this.promptIds = f.promptIds ?? null;
    this.text = f.promptText ?? null;
    this.returnTokenIds = f.returnTokenIds;
    this.cacheSalt = f.cacheSalt ?? null;
    this.echo = f.echo;
  }

  /** Completions: the single text prompt (read from the body when it did not cross). */
  get promptText(): string | null {
    if (this.endpoint !== "completions" || this.promptIds !== null) return null;
    return this.text ?? (this.body["prompt"] as string);
  }

  get body(): Record<string, unknown> {
    return (this.object ??= parseJsonObject(this.raw));
  }

  get messages(): ChatMessage[] | null {
    if (this.endpoint !== "chat") return null;
    return (this.chatMessages ??= parseChatRequest(this.body).messages);
  }
}
