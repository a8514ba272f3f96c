/**
 * `kvroute up --host 127.0.0.1` (issue 11, point 6): the gateway, the workers' HTTP and their
 * KV-event and replay sockets listen on 127.0.0.1 only (read from /proc/net/tcp{,6} for the
 * sockets of the up process and its children), and KV events still reach the router.
 */
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { kvroute, stopCliProcesses } from "./helpers/cli-process.js";
import { processTree } from "./helpers/proc.js";
import { post } from "./helpers/gateway-fleet.js";

afterEach(() => stopCliProcesses());

function socketInodes(pid: number): Set<string> {
  const inodes = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    }
  } catch {
    // exited meanwhile
  }
  return inodes;
}

/** Listening sockets (state 0A) among `inodes`, as "address:port" (hex, as the kernel prints them). */
function listening(inodes: Set<string>): { file: string; local: string }[] {
  const out: { file: string; local: string }[] = [];
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of readFileSync(file, "utf8").split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length > 9 && f[3] === "0A" && inodes.has(f[9]!)) out.push({ file, local: f[1]! });
    }
  }
  return out;
}

const LOOPBACK_V4 = "0100007F"; // 127.0.0.1, little-endian hex

describe("kvroute up --host", () => {
  it("127.0.0.1: no listening socket on another address, and KV events still flow", async () => {
    const up = kvroute(["up", "agg-router", "--workers", "2", "--host", "127.0.0.1", "--port", "0", "--speedup", "20", "--quiet", "--model", "toy"]);
    const ready = await up.readyPromise;
    expect(ready.url).toMatch(/^http:\/\/127\.0\.0\.1:/);
    const prompt = Array.from({ length: 64 }, (_, i) => 9000 + i);
    const first = await post(ready.url, "/v1/completions", { model: "toy", prompt, max_tokens: 1 });
    expect(first.status).toBe(200);
    // The workers' PUBs connect to the gateway's SUBs here: wait for their blocks to reach the router.
    for (;;) {
      const route = (await post(ready.url, "/v1/kvroute/route", { model: "toy", prompt })).json;
      if (route.overlapBlocks === 4) break;
      await new Promise((r) => setTimeout(r, 20)); // poll interval
    }
    const pids = processTree(up.child.pid!);
    expect(pids.length).toBeGreaterThanOrEqual(3); // up and two workers
    const sockets = listening(new Set(pids.flatMap((p) => [...socketInodes(p)])));
    // Gateway HTTP, 2 worker HTTP, 2 KV-event SUBs (bound by the gateway), 2 replay ROUTERs.
    expect(sockets.length).toBeGreaterThanOrEqual(7);
    for (const s of sockets) {
      expect(s, "a socket listening beyond 127.0.0.1").toMatchObject({ file: "/proc/net/tcp" });
      expect(s.local.split(":")[0]).toBe(LOOPBACK_V4);
    }
    up.child.kill("SIGTERM");
    expect(await up.exit).toBe(0);
  });
});
