/**
 * A model's tokenizer, exactly as vLLM 0.33 tokenizes: a Hugging Face model folder
 * (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`...) loaded by the Rust core
 * (crates/kvroute-tokenizer). Text is encoded as `/v1/completions` does (special tokens added by
 * default), chat requests are rewritten, rendered and encoded as `/v1/chat/completions` does
 * (docs/tokenization.md). One native call per prompt.
 */
import { callNative } from "../errors.js";
import { native } from "../native.js";
import type { NativeTokenizer, OpenAiRequestFields, TokenizerCacheStats } from "../../index.js";

export interface TokenizerOptions {
  /** Token ids the chat segment cache holds at most (default 4,194,304 ≈ 16 MiB). */
  cacheTokens?: number;
  /**
   * Bytes the conversation cache holds at most: each conversation's last chat prompt and its ids,
   * so the next turn reuses the ids of the text they share (default 64 MiB; 0 turns it off).
   */
  conversationCacheBytes?: number;
  /**
   * Bytes the text prefix cache holds at most: completions texts of 1 KiB or more reuse the ids of
   * the prefix they share with an earlier text (a shared document, a few-shot header), exactly
   * (default 16 MiB; 0 turns it off).
   */
  textPrefixCacheBytes?: number;
}

export interface EncodeOptions {
  /** vLLM's `add_special_tokens`; default true, as `/v1/completions` does. */
  addSpecialTokens?: boolean;
}

/** An OpenAI chat message as clients send it (content: a string, null or a list of parts). */
export interface ChatRequestMessage {
  role: string;
  content?: string | null | readonly unknown[];
  [field: string]: unknown;
}

/** The fields of a `/v1/chat/completions` body that decide the prompt. */
export interface ChatTemplateOptions {
  /** Default true (vLLM's default; Hugging Face's is false). */
  add_generation_prompt?: boolean;
  continue_final_message?: boolean;
  tools?: readonly unknown[] | null;
  documents?: readonly unknown[] | null;
  chat_template_kwargs?: Record<string, unknown> | null;
  reasoning_effort?: string | null;
  /** Default false for chat, as vLLM. */
  add_special_tokens?: boolean;
}

export interface ChatRequest extends ChatTemplateOptions {
  messages: readonly ChatRequestMessage[];
  [field: string]: unknown;
}

export type { TokenizerCacheStats };

export class Tokenizer {
  private constructor(
    private readonly inner: NativeTokenizer,
    /** The folder it was loaded from. */
    readonly dir: string,
  ) {}

  /** Loads a model folder; a bad folder throws `TokenizerLoadError` naming the file and cause. */
  static fromDir(dir: string, options: TokenizerOptions = {}): Tokenizer {
    const inner = callNative(() => native.NativeTokenizer.fromDir(dir, { cacheTokens: options.cacheTokens, conversationCacheBytes: options.conversationCacheBytes, textPrefixCacheBytes: options.textPrefixCacheBytes }));
    return new Tokenizer(inner, dir);
  }

  get hasChatTemplate(): boolean {
    return this.inner.hasChatTemplate;
  }

  /** The native object, shared with the gateway's native front (the same caches serve both). */
  get nativeTokenizer(): NativeTokenizer {
    return this.inner;
  }

  /** Whether the fast byte-level BPE path encodes this model's text. */
  get fastPath(): boolean {
    return this.inner.fastPath;
  }

  /**
   * The hand-written renderer of the chat template when the folder's template is byte for byte
   * one kvroute knows (`"qwen3"`, `"llama3"`), or null: minijinja renders it (docs/tokenization.md).
   */
  get nativeTemplate(): string | null {
    return this.inner.nativeTemplate ?? null;
  }

  /** `text` as `/v1/completions` encodes it (special tokens added unless told otherwise). */
  encode(text: string, options: EncodeOptions = {}): Uint32Array {
    return callNative(() => this.inner.encode(text, options.addSpecialTokens ?? true));
  }

  /** The token ids vLLM computes for `messages` rendered with `options` (a chat request). */
  applyChatTemplate(messages: readonly ChatRequestMessage[], options: ChatTemplateOptions = {}): Uint32Array {
    return this.encodeChat({ ...options, messages });
  }

  /** The prompt text vLLM renders for a chat request. */
  renderChat(request: ChatRequest | string): string {
    const json = typeof request === "string" ? request : JSON.stringify(request);
    return callNative(() => this.inner.renderChat(json));
  }

  /**
   * A `/v1/chat/completions` body (an object, its JSON text or its bytes) to its prompt's token
   * ids. Conversations that repeat earlier turns only encode what is new (segment cache).
   */
  encodeChat(request: ChatRequest | string | Uint8Array): Uint32Array {
    const arg =
      typeof request === "string"
        ? request
        : request instanceof Uint8Array
          ? Buffer.from(request.buffer, request.byteOffset, request.byteLength)
          : JSON.stringify(request);
    return callNative(() => this.inner.encodeChat(arg));
  }

  /**
   * The gateway's one call per request: a completions (`chat` false) or chat body's routing
   * fields and its prompt's token ids (or the tokenizer's refusal in `tokenError`). Undefined when
   * the body needs the gateway's general path (ts/gateway/fast-request.ts).
   */
  readRequest(body: Uint8Array, chat: boolean): OpenAiRequestFields | undefined {
    const bytes = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    return this.inner.readRequest(bytes, chat) ?? undefined;
  }

  /** Token ids back to text, special tokens kept. */
  decode(ids: Uint32Array | readonly number[]): string {
    const arr = ids instanceof Uint32Array ? ids : Uint32Array.from(ids);
    return callNative(() => this.inner.decode(arr));
  }

  cacheStats(): TokenizerCacheStats {
    return this.inner.cacheStats();
  }

  /** Forgets the chat segment, conversation and text prefix caches (cold measurements). */
  clearCache(): void {
    this.inner.clearCache();
  }
}
