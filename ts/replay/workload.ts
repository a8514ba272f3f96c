/**
 * A generated multi-turn chat workload in the Mooncake trace's shape (512-token blocks named by
 * ids), for `kvroute demo`: nothing to download, the same every run. The defaults are an
 * assistant with long sessions (6-14 turns, each adding 1-2k tokens of messages and tool output,
 * histories up to ~30k tokens, short answers): ~3,000 requests over ~8 simulated minutes.
 *
 * Conversations start at random times; each belongs to one of a few applications whose system
 * prompt it shares. Every turn's prompt is the whole conversation so far (system prompt, earlier
 * turns) plus the new turn's blocks, so a worker that served the previous turn still holds most
 * of the next prompt — if nothing evicted it. A follow-up comes some seconds after the previous
 * turn, as a user reads and types.
 */
import type { Trace, TraceRequest } from "./trace.js";
import { MOONCAKE_BLOCK_TOKENS } from "./trace.js";
import { mulberry32 } from "../util/prng.js";

export interface ChatWorkloadOptions {
  /** Conversations. Default 300. */
  conversations?: number;
  /** Conversations start uniformly over this many simulated seconds. Default 400. */
  horizonS?: number;
  /** Turns per conversation, inclusive range. Default [6, 14]. */
  turns?: [number, number];
  /** Applications (distinct system prompts). Default 16. */
  apps?: number;
  /** System prompt blocks (512 tokens each), inclusive range. Default [2, 4]. */
  systemBlocks?: [number, number];
  /** New blocks per turn (the user's message, tool output, the previous answer), inclusive range. Default [2, 4]. */
  turnBlocks?: [number, number];
  /** Output tokens, inclusive range. Default [20, 100]. */
  outputTokens?: [number, number];
  /** Seconds between a turn and the next one, inclusive range. Default [3, 12]. */
  thinkS?: [number, number];
  seed?: number;
}

export function chatWorkload(options: ChatWorkloadOptions = {}): Trace {
  const rand = mulberry32(options.seed ?? 7);
  const between = ([a, b]: [number, number]) => a + Math.floor(rand() * (b - a + 1));
  const conversations = options.conversations ?? 300;
  const horizon = (options.horizonS ?? 400) * 1000;
  const apps = options.apps ?? 16;
  let nextId = 0;
  const systems: number[][] = Array.from({ length: apps }, () => Array.from({ length: between(options.systemBlocks ?? [2, 4]) }, () => nextId++));
  const all: Omit<TraceRequest, "index" | "line">[] = [];
  for (let c = 0; c < conversations; c++) {
    // A few popular applications take most conversations.
    const app = Math.min(apps - 1, Math.floor(apps * rand() ** 2));
    const blocks = [...systems[app]!];
    let t = rand() * horizon;
    const turns = between(options.turns ?? [6, 14]);
    for (let k = 0; k < turns; k++) {
      const added = between(options.turnBlocks ?? [2, 4]);
      for (let b = 0; b < added; b++) blocks.push(nextId++);
      // The prompt ends inside its last block.
      const inputLength = blocks.length * MOONCAKE_BLOCK_TOKENS - Math.floor(rand() * (MOONCAKE_BLOCK_TOKENS - 1));
      const output = between(options.outputTokens ?? [20, 100]);
      all.push({ timestampMs: Math.round(t), inputLength, maxTokens: output, hashIds: blocks.slice() });
      t += between(options.thinkS ?? [3, 12]) * 1000 + output * 10;
    }
  }
  all.sort((a, b) => a.timestampMs - b.timestampMs);
  const requests: TraceRequest[] = all.map((r, i) => ({ ...r, index: i, line: i + 1 }));
  return { file: "generated multi-turn chat", format: "mooncake", requests };
}
