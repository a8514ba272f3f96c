/**
 * `npm run bench:prompt-embeds`: what the gateway does with a `prompt_embeds` completion before
 * routing it — base64 decode, read the `torch.save` archive, cast to the model's dtype, sha256 per
 * block (`loadPromptEmbeds`, Rust via N-API) — beside its floor measured in the same run: base64
 * decode plus Node's sha256 over the same tensor bytes (no reading, no cast). Payloads are the
 * golden ones (vLLM's `torch.save` output, fixtures/golden/prompt_embeds.json).
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { decodeEmbedsBase64, loadPromptEmbeds } from "../ts/index.js";
import { machine, printTable, rate, type Row } from "./lib/table.js";

console.log(`kvroute bench:prompt-embeds — ${machine()}`);
const golden = JSON.parse(readFileSync(new URL("../fixtures/golden/prompt_embeds.json", import.meta.url), "utf8")) as {
  cases: { name: string; prompt_embeds: string; model_dtype: string }[];
};
const rows: Row[] = [];
for (const name of ["f32-40-as-bf16", "f32-40-as-f32", "bf16-37-as-bf16", "f32-slice-as-bf16"]) {
  const c = golden.cases.find((x) => x.name === name)!;
  const bytes = decodeEmbedsBase64(c.prompt_embeds);
  const mb = bytes.length / 1e6;
  rows.push({
    name: `${name}: decode + load + cast + digest (${bytes.length} B)`,
    value: rate(mb, 0.5, () => loadPromptEmbeds(decodeEmbedsBase64(c.prompt_embeds), { dtype: c.model_dtype, blockSize: 16 })),
    unit: "MB/s",
  });
  rows.push({
    name: `${name}: baseline, decode + sha256 of the bytes`,
    value: rate(mb, 0.5, () => createHash("sha256").update(Buffer.from(c.prompt_embeds, "base64")).digest()),
    unit: "MB/s",
  });
}
printTable("prompt_embeds, one thread", rows);
