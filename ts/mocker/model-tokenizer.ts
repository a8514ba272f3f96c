/**
 * The tokenizer of the mocker's simulated model: how prompts become ids (HTTP layer) and which ids
 * and text the model emits (engine core). Two kinds:
 *
 * - the toy tokenizer (`toy-tokenizer.ts`), the default;
 * - a real model folder (`--tokenizer DIR`): prompts are tokenized exactly as vLLM 0.33 does
 *   (`Tokenizer`); the model still "samples" by hash, but ids drawn from the real vocabulary's
 *   regular tokens, so every generated id is valid for the model and its text is the tokenizer's.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Tokenizer } from "../tokenizer/tokenizer.js";
import * as toy from "./toy-tokenizer.js";

export interface ModelTokenizer {
  /** The id the model ends a sequence with (`--eos-after-tokens`); null: it never emits one. */
  readonly eosTokenId: number | null;
  /** A `/v1/completions` text prompt. */
  encodeText(prompt: string, addSpecialTokens: boolean): Uint32Array;
  /**
   * A `/v1/chat/completions` request: its parsed body, its raw bytes, and the toy's reading of
   * its messages (the real tokenizer reads the body itself).
   */
  encodeChat(body: Record<string, unknown>, raw: Uint8Array, messages: readonly toy.ChatMessageLike[], addGenerationPrompt: boolean): Uint32Array;
  decode(ids: ArrayLike<number>): string;
  /** The token the model emits for a context's fingerprint (`index` varies it further; never EOS). */
  sampleToken(fingerprint: number, index: number): number;
  /** The text a generated token adds to the output ("" for EOS). */
  tokenText(id: number): string;
}

export const TOY_MODEL_TOKENIZER: ModelTokenizer = {
  eosTokenId: toy.EOS_TOKEN_ID,
  encodeText: (prompt) => Uint32Array.from(toy.encode(prompt)),
  encodeChat: (_body, _raw, messages, addGenerationPrompt) => Uint32Array.from(toy.encode(toy.applyChatTemplate(messages, addGenerationPrompt))),
  decode: toy.decode,
  sampleToken: toy.sampleToken,
  tokenText: toy.tokenText,
};

/** Ids at and above this are never sampled: below the added tokens of Qwen3 (151,643) and Llama 3 (128,000). */
const SAMPLE_LIMIT = 100_000;
/** Rehashes of a sampled id whose text is unusable before falling back to a known good id. */
const MAX_PROBES = 64;

/** The special tokens a folder's `tokenizer_config.json` names: its EOS text and the added special ids. */
function configSpecials(dir: string): { eos: string | null; specialIds: number[] } {
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8")) as Record<string, unknown>;
  } catch {
    // The tokenizer loaded, so the file is absent or optional here: no EOS, no known specials.
    return { eos: null, specialIds: [] };
  }
  const eosField = config["eos_token"];
  const eos =
    typeof eosField === "string"
      ? eosField
      : eosField !== null && typeof eosField === "object" && typeof (eosField as { content?: unknown }).content === "string"
        ? (eosField as { content: string }).content
        : null;
  const decoder = config["added_tokens_decoder"];
  const specialIds: number[] = [];
  if (decoder !== null && typeof decoder === "object") {
    for (const [id, token] of Object.entries(decoder as Record<string, { special?: unknown }>)) {
      if (token?.special === true && /^\d+$/.test(id)) specialIds.push(Number(id));
    }
  }
  return { eos, specialIds };
}

function mix(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

class RealModelTokenizer implements ModelTokenizer {
  readonly eosTokenId: number | null;
  private readonly limit: number;
  /** Per id below `limit`: its text once decoded; null: unusable alone (empty, or a partial UTF-8 character). */
  private readonly texts: (string | null | undefined)[];
  private fallback = -1;

  constructor(private readonly tokenizer: Tokenizer) {
    const { eos, specialIds } = configSpecials(tokenizer.dir);
    const eosIds = eos === null ? null : tokenizer.encode(eos, { addSpecialTokens: false });
    this.eosTokenId = eosIds !== null && eosIds.length === 1 ? eosIds[0]! : null;
    this.limit = Math.min(SAMPLE_LIMIT, ...specialIds, ...(this.eosTokenId === null ? [] : [this.eosTokenId]));
    this.texts = new Array(this.limit);
  }

  encodeText(prompt: string, addSpecialTokens: boolean): Uint32Array {
    return this.tokenizer.encode(prompt, { addSpecialTokens });
  }

  encodeChat(_body: Record<string, unknown>, raw: Uint8Array): Uint32Array {
    // The raw body: the native side parses it once, no re-serialisation here.
    return this.tokenizer.encodeChat(raw);
  }

  decode(ids: ArrayLike<number>): string {
    return this.tokenizer.decode(Array.from(ids));
  }

  sampleToken(fingerprint: number, index: number): number {
    let x = mix((fingerprint ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0);
    // Only ids whose text stands alone: the output text is then exactly decode(output ids).
    for (let probe = 0; probe < MAX_PROBES; probe++) {
      const id = x % this.limit;
      if (this.usable(id)) return id;
      x = mix((x + 0x9e3779b9) >>> 0);
    }
    return this.fallbackId();
  }

  tokenText(id: number): string {
    if (id === this.eosTokenId) return "";
    if (id < this.limit && this.usable(id)) return this.texts[id]!;
    return this.tokenizer.decode([id]);
  }

  private usable(id: number): boolean {
    let text = this.texts[id];
    if (text === undefined) {
      const decoded = this.tokenizer.decode([id]);
      text = decoded === "" || decoded.includes("\uFFFD") ? null : decoded;
      this.texts[id] = text;
    }
    return text !== null;
  }

  private fallbackId(): number {
    if (this.fallback < 0) {
      let id = 0;
      while (id < this.limit - 1 && !this.usable(id)) id++;
      this.fallback = id;
    }
    return this.fallback;
  }
}

const cache = new WeakMap<Tokenizer, ModelTokenizer>();

/** The model tokenizer of an engine: the toy one, or one per real `Tokenizer` (its text cache shared). */
export function modelTokenizerFor(tokenizer: Tokenizer | null): ModelTokenizer {
  if (tokenizer === null) return TOY_MODEL_TOKENIZER;
  let model = cache.get(tokenizer);
  if (!model) cache.set(tokenizer, (model = new RealModelTokenizer(tokenizer)));
  return model;
}
