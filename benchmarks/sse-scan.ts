/**
 * `npm run bench:sse-scan`: the gateway's per-event cost of a streamed token event, in process.
 * Events are 4,096 distinct vLLM 0.33 completion chunks sliced from one decoded buffer, as the
 * gateway holds them. Baseline in the same run: what the gateway did before `scanTextEvent` for
 * an event without ids (vLLM's `"token_ids":null`): the id scan, which fails on the null, then a
 * full `JSON.parse`. Medians of 5 rounds of 400,000 events.
 */
import { scanTextEvent, scanTokenEvent } from "../ts/gateway/sse-scan.js";
import { machine, printTable, type Row } from "./lib/table.js";

const chunk = (i: number, ids: string) =>
  `{"id":"cmpl-a2b41731774f5768","object":"text_completion","created":1796399181,"model":"toy","choices":[{"index":0,"text":" word${i}","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":${ids},"weight_versions":null}],"kv_transfer_params":null}`;

/** Event payloads as `forEachData` hands them: slices of one decoded buffer. */
function events(ids: (i: number) => string): string[] {
  const text = Buffer.from(Array.from({ length: 4096 }, (_, i) => `data: ${chunk(i, ids(i))}\n\n`).join("")).toString("utf8");
  const out: string[] = [];
  for (let pos = 0; pos < text.length; ) {
    const end = text.indexOf("\n\n", pos);
    out.push(text.slice(pos + 6, end));
    pos = end + 2;
  }
  return out;
}

function nsPerEvent(evs: string[], f: (d: string) => number): number {
  const N = 400_000;
  const rounds: number[] = [];
  let sink = 0;
  for (let r = 0; r < 5; r++) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < N; i++) sink += f(evs[i & 4095]!);
    rounds.push(Number(process.hrtime.bigint() - t) / N);
  }
  if (sink < 0) console.log(sink);
  return rounds.sort((a, b) => a - b)[2]!;
}

const plain = events(() => "null");
const withIds = events((i) => `[${1000 + i}]`);
const parseAfterIdScan = (d: string) => {
  const s = scanTokenEvent(d, false);
  if (s) return s.tokenIds.length;
  const o = JSON.parse(d) as { choices: { text: string }[] };
  return o.choices[0]!.text.length > 0 ? 1 : 0;
};
console.log(`kvroute bench:sse-scan — ${machine()}`);
const base = nsPerEvent(plain, parseAfterIdScan);
const text = nsPerEvent(plain, (d) => scanTextEvent(d) ?? -1);
const ids = nsPerEvent(withIds, (d) => scanTokenEvent(d, false)?.tokenIds.length ?? -1);
const rows: Row[] = [
  { name: "event without ids: id scan + JSON.parse (before)", value: base, unit: "ns/event", baseline: "baseline" },
  { name: "event without ids: scanTextEvent", value: text, unit: "ns/event", baseline: `${((1 - text / base) * 100).toFixed(0)}% less` },
  { name: "event with ids: scanTokenEvent (for reference)", value: ids, unit: "ns/event", baseline: "" },
];
printTable("stream event scan", rows);
