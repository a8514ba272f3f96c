/**
 * The mocker's toy model vocabulary: a deterministic, reversible byte-level tokenizer (NOT any real
 * model's tokenizer), a fixed chat template, and the "sampling" of output tokens.
 *
 * Vocabulary (128,256 ids, Llama 3's size):
 * - 0..255: one UTF-8 byte each;
 * - 256..127,999: words, `" " + three consonant-vowel syllables` (`" bakilo"`), a bijection;
 * - 128,000 `<|begin_of_text|>`, 128,001 `<|end_of_text|>` (EOS); specials decode to "".
 *
 * `encode` turns a space followed by exactly one such six-letter word into the word's id and
 * every other byte into its byte id, so `encode(decode(ids)) == ids` for generated text (word
 * tokens) and a multi-turn conversation re-tokenizes the assistant's earlier answers to the very
 * tokens the engine generated, which keeps their KV blocks reusable, as with a real tokenizer.
 *
 * Output tokens are words chosen by a hash of the context (the last CONTEXT_WINDOW tokens before
 * them, and the sampling seed), as a real model's greedy decoding is a function of the tokens so
 * far: the same request always produces the same text, and a request continued elsewhere from
 * its prompt plus the tokens already generated (migration) produces what the unbroken run would.
 */

export const VOCAB_SIZE = 128_256;
export const FIRST_WORD_ID = 256;
export const WORD_END_ID = 128_000;
export const BOS_TOKEN_ID = 128_000;
export const EOS_TOKEN_ID = 128_001;
const WORD_COUNT = WORD_END_ID - FIRST_WORD_ID;

const CONSONANTS = "bcdfghjklmnprstv"; // 16
const VOWELS = "aeiou"; // 5
const SYLLABLES = CONSONANTS.length * VOWELS.length; // 80; 80^3 = 512,000 >= WORD_COUNT

// Byte -> consonant index / vowel index, or -1.
const CONS_INDEX = new Int8Array(256).fill(-1);
const VOWEL_INDEX = new Int8Array(256).fill(-1);
for (let i = 0; i < CONSONANTS.length; i++) CONS_INDEX[CONSONANTS.charCodeAt(i)] = i;
for (let i = 0; i < VOWELS.length; i++) VOWEL_INDEX[VOWELS.charCodeAt(i)] = i;

const wordCache: string[] = new Array(WORD_COUNT);

function syllable(s: number): string {
  return CONSONANTS[s % CONSONANTS.length]! + VOWELS[Math.floor(s / CONSONANTS.length)]!;
}

/** The text of one token id: a byte's character is only meaningful inside `decode`. */
export function tokenText(id: number): string {
  if (id >= FIRST_WORD_ID && id < WORD_END_ID) {
    const n = id - FIRST_WORD_ID;
    let w = wordCache[n];
    if (w === undefined) {
      w = ` ${syllable(Math.floor(n / (SYLLABLES * SYLLABLES)))}${syllable(Math.floor(n / SYLLABLES) % SYLLABLES)}${syllable(n % SYLLABLES)}`;
      wordCache[n] = w;
    }
    return w;
  }
  if (id < 256) return String.fromCharCode(id);
  return "";
}

function isLowerLetter(b: number | undefined): boolean {
  return b !== undefined && b >= 0x61 && b <= 0x7a;
}

/** Text -> token ids (see the file comment). */
export function encode(text: string): number[] {
  const bytes = Buffer.from(text, "utf8");
  const out: number[] = [];
  const n = bytes.length;
  for (let i = 0; i < n; i++) {
    const b = bytes[i]!;
    if (b === 0x20 && i + 7 <= n && !isLowerLetter(bytes[i + 7])) {
      const c0 = CONS_INDEX[bytes[i + 1]!]!;
      const v0 = VOWEL_INDEX[bytes[i + 2]!]!;
      const c1 = CONS_INDEX[bytes[i + 3]!]!;
      const v1 = VOWEL_INDEX[bytes[i + 4]!]!;
      const c2 = CONS_INDEX[bytes[i + 5]!]!;
      const v2 = VOWEL_INDEX[bytes[i + 6]!]!;
      if ((c0 | v0 | c1 | v1 | c2 | v2) >= 0) {
        const s0 = c0 + v0 * 16;
        const s1 = c1 + v1 * 16;
        const s2 = c2 + v2 * 16;
        const w = (s0 * SYLLABLES + s1) * SYLLABLES + s2;
        if (w < WORD_COUNT) {
          out.push(FIRST_WORD_ID + w);
          i += 6;
          continue;
        }
      }
    }
    out.push(b);
  }
  return out;
}

/** Token ids -> text; special tokens are skipped (`skip_special_tokens`). */
export function decode(ids: ArrayLike<number>): string {
  let text = "";
  let pending: number[] | null = null;
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (id < 256) {
      (pending ??= []).push(id);
      continue;
    }
    if (pending) {
      text += Buffer.from(pending).toString("utf8");
      pending = null;
    }
    text += tokenText(id);
  }
  if (pending) text += Buffer.from(pending).toString("utf8");
  return text;
}

export interface ChatMessageLike {
  role: string;
  content: string;
}

/**
 * The toy chat template: `<|role|>\n{content}\n` per message, then `<|assistant|>\n` when
 * `addGenerationPrompt` (the default), as text (then `encode`).
 */
export function applyChatTemplate(messages: readonly ChatMessageLike[], addGenerationPrompt = true): string {
  let text = "";
  for (const m of messages) text += `<|${m.role}|>\n${m.content}\n`;
  if (addGenerationPrompt) text += "<|assistant|>\n";
  return text;
}

/** Tokens before a position that the simulated model's next token depends on. */
export const CONTEXT_WINDOW = 8;

/**
 * A 32-bit fingerprint of the context of position `end` in `tokens` (its last CONTEXT_WINDOW
 * tokens, fewer at the start) and the sampling seed: what the token at `end` derives from.
 */
export function contextFingerprint(tokens: ArrayLike<number>, end: number, seed: number): number {
  let h = 0x811c9dc5 ^ Math.imul(seed | 0, 0x9e3779b1);
  for (let i = Math.max(0, end - CONTEXT_WINDOW); i < end; i++) {
    h = Math.imul(h ^ tokens[i]!, 0x01000193);
    h ^= h >>> 15;
  }
  return h >>> 0;
}

/** The word token the toy model samples at output position `index`. */
export function sampleToken(fingerprint: number, index: number): number {
  let x = (fingerprint ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  x = (x ^ (x >>> 16)) >>> 0;
  return FIRST_WORD_ID + (x % WORD_COUNT);
}
