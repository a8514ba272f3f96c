/**
 * Migration checked end to end (issue 11, point 9): the mocker's greedy output is a function of
 * the tokens so far, as a real model's is, so a stream whose worker is killed with SIGKILL and
 * continued on another must equal, token by token, the same request run unbroken.
 */
import http from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { decode } from "../ts/mocker/toy-tokenizer.js";
import { get, metricValue, MODEL, startFleet, type Fleet } from "./helpers/gateway-fleet.js";

let fleet: Fleet | null = null;
afterEach(async () => {
  await fleet?.stop();
  fleet = null;
});

/** Streams a completion; `onIds(ids)` sees the token ids as they arrive. Resolves with all of them and the text. */
function streamIds(url: string, body: unknown, onIds: (ids: number[]) => void = () => {}): Promise<{ ids: number[]; text: string; finish: string[] }> {
  return new Promise((resolve, reject) => {
    const u = new URL(`${url}/v1/completions`);
    const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: "POST", headers: { "content-type": "application/json" } }, (res) => {
      let buf = "";
      const ids: number[] = [];
      const finish: string[] = [];
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        buf += chunk;
        let end: number;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const ev = buf.slice(0, end);
          buf = buf.slice(end + 2);
          if (!ev.startsWith("data: ") || ev === "data: [DONE]") continue;
          for (const c of JSON.parse(ev.slice(6)).choices ?? []) {
            ids.push(...(c.token_ids ?? []));
            text += c.text ?? "";
            if (c.finish_reason) finish.push(c.finish_reason);
          }
        }
        onIds(ids);
      });
      res.on("end", () => resolve({ ids, text, finish }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

describe("migration continuity", () => {
  it("a stream migrated after a SIGKILL equals the unbroken run token by token", async () => {
    fleet = await startFleet(2, { migrationLimit: 1 }, { speedup: 2 });
    const f = fleet;
    const body = { model: MODEL, prompt: Array.from({ length: 40 }, (_, i) => 500 + i), max_tokens: 120, stream: true, return_token_ids: true, seed: 7 };
    let victim: string | null = null;
    const migrated = await streamIds(f.gateway.url, body, (ids) => {
      if (victim === null && ids.length >= 30) {
        victim = "";
        // Kill whichever worker runs the request now, mid-stream.
        void f.gateway.gateway.metrics.activeRequests.get().then((m) => {
          victim = (m.values.find((v) => v.value > 0)?.labels.worker as string | undefined) ?? "";
          const w = f.workers.find((x) => x.id === victim);
          if (w) process.kill(w.pid!, "SIGKILL");
        });
      }
    });
    expect(victim).toMatch(/^w[01]$/);
    expect(metricValue((await get(f.gateway.url, "/metrics")).text, "kvroute_migrations_total")).toBe(1);
    const survivor = f.workers.find((w) => w.id !== victim)!;
    const unbroken = await streamIds(survivor.url, body);
    expect(unbroken.ids).toHaveLength(120);
    expect(migrated.ids).toEqual(unbroken.ids);
    expect(migrated.text).toBe(unbroken.text);
    expect(migrated.text).toBe(decode(unbroken.ids));
    expect(migrated.finish).toEqual(["length"]);
  });
});
