// The golden tokenization cases (fixtures/golden/tokenization.json, made with vLLM 0.33's own
// code by scripts/golden/make-tokenization.sh) and the tokenizer folders they name.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

export interface TextCase {
  name: string;
  tokenizer: string;
  kind: "text";
  prompt: string;
  add_special_tokens: boolean;
  ids: number[];
}

export interface ChatCase {
  name: string;
  tokenizer: string;
  kind: "chat";
  request: Record<string, unknown> & { messages: unknown[] };
  rendered: string;
  ids: number[];
}

export interface TokenizationGolden {
  generator: Record<string, string>;
  tokenizers: Record<string, string>;
  cases: (TextCase | ChatCase)[];
}

export function loadTokenizationGolden(): TokenizationGolden {
  return JSON.parse(readFileSync(join(repoRoot, "fixtures/golden/tokenization.json"), "utf8")) as TokenizationGolden;
}

/** Absolute folder of a tokenizer named in the fixture (`qwen3`, `llama3_1`). */
export function tokenizerDir(golden: TokenizationGolden, name: string): string {
  const rel = golden.tokenizers[name];
  if (!rel) throw new Error(`no tokenizer ${name} in the fixture`);
  return join(repoRoot, rel);
}
