/**
 * NIXL bindings against the real library (the nixl-cu12 wheel's libnixl_capi.so + UCX), between
 * two processes: 64 MiB DRAM READ and WRITE verified byte for byte, notifications both ways,
 * metadata exchanged as bytes; and a missing library is a typed error, never a crash.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvalidInputError, NixlAgent, NixlUnavailableError } from "../ts/index.js";
import { nixlLibDir, nixlTestsRun, startNixlPeer, type NixlPeer } from "./helpers/nixl.js";
import { startMocker } from "./helpers/mocker-process.js";
import { freePorts } from "./helpers/zmq-peer.js";
// @ts-expect-error plain ESM helper without types
import { pattern } from "./helpers/nixl-pattern.mjs";

const SIZE = 64 << 20;
const emptyDir = mkdtempSync(join(tmpdir(), "kvroute-no-nixl-"));
afterAll(() => rmSync(emptyDir, { recursive: true, force: true }));

describe("NixlAgent without the library", () => {
  it("an empty library folder is KVR_NIXL_UNAVAILABLE, in process", () => {
    expect(NixlAgent.availability(emptyDir)).toMatchObject({ available: false, reason: expect.stringContaining("NIXL not available") });
    let caught: unknown;
    try {
      NixlAgent.create("nobody", { libDir: emptyDir });
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(NixlUnavailableError);
    expect((caught as NixlUnavailableError).code).toBe("KVR_NIXL_UNAVAILABLE");
    expect((caught as Error).message).toMatch(/^NIXL not available: no libnixl_capi\.so in /);
  });

  it("KVROUTE_NIXL_LIB_DIR at an empty folder: the process gets the typed error and exits normally", async () => {
    const peer = await startNixlPeer("nobody", 4096, 1, { KVROUTE_NIXL_LIB_DIR: emptyDir });
    expect(peer).toMatchObject({ error: { code: "KVR_NIXL_UNAVAILABLE" } });
    const script = `import("${join(process.cwd(), "dist/index.mjs")}").then(({ NixlAgent }) => {
      try { NixlAgent.create("x"); } catch (e) { console.log(e.code); }
    })`;
    const run = spawnSync(process.execPath, ["-e", script], { env: { ...process.env, KVROUTE_NIXL_LIB_DIR: emptyDir }, encoding: "utf8" });
    expect(run.status).toBe(0);
    expect(run.signal).toBeNull();
    expect(run.stdout.trim()).toBe("KVR_NIXL_UNAVAILABLE");
  });
});

describe.runIf(nixlTestsRun())("NixlAgent between two processes (real NIXL, UCX)", () => {
  const libDir = nixlLibDir()!;
  let agent: NixlAgent;
  let peer: NixlPeer;
  let local: Buffer;

  beforeAll(async () => {
    agent = NixlAgent.create(`test-${process.pid}`, { libDir });
    const started = await startNixlPeer(`peer-${process.pid}`, SIZE, 1, { KVROUTE_NIXL_LIB_DIR: libDir });
    if ("error" in started) throw new Error(started.error.message);
    peer = started;
  });
  afterAll(async () => {
    await peer?.stop();
    agent?.close();
  });

  it("loads the peer's metadata from bytes and reads 64 MiB, byte for byte, with a notification", async () => {
    expect(peer.metadata.length).toBeGreaterThan(0);
    expect(agent.loadRemoteMetadata(peer.metadata)).toBe(peer.name);
    local = Buffer.alloc(SIZE);
    const reg = agent.registerBuffer(local);
    // The event loop keeps turning while the transfer is awaited (polling runs on the libuv pool).
    let turns = 0;
    let spinning = true;
    const spin = () => {
      turns++;
      if (spinning) setImmediate(spin);
    };
    setImmediate(spin);
    const result = await agent.read(reg.descList(), { mem: "DRAM", regions: [{ addr: peer.addr, length: SIZE }] }, peer.name, {
      notification: "read-done",
    });
    spinning = false;
    expect(turns).toBeGreaterThan(1);
    expect(result.bytes).toBe(SIZE);
    expect(local.equals(pattern(SIZE, 1))).toBe(true);
    expect(await peer.ask({ cmd: "notification", message: "read-done" })).toEqual({ notification: { agent: agent.name, message: "read-done" } });
  });

  it("writes 64 MiB into the peer, which finds them byte for byte, with a notification", async () => {
    pattern(SIZE, 2).copy(local);
    const reg = agent.registerBuffer(local.subarray(0, SIZE));
    await agent.write(reg.descList(), { mem: "DRAM", regions: [{ addr: peer.addr, length: SIZE }] }, peer.name, { notification: "write-done" });
    expect(await peer.ask({ cmd: "notification", message: "write-done" })).toMatchObject({ notification: { message: "write-done" } });
    expect(await peer.ask({ cmd: "verify", seed: 2 })).toEqual({ verified: true });
    expect(await peer.ask({ cmd: "verify", seed: 1 })).toEqual({ verified: false });
    agent.deregister(reg);
  });

  it("moves many small regions in one transfer (one descriptor per block)", async () => {
    const block = 16 << 10;
    const blocks = [3, 0, 7, 1];
    local.fill(0);
    const reg = agent.registerBuffer(local);
    await agent.read(
      { mem: "DRAM", regions: blocks.map((_, i) => reg.region(i * block, block)) },
      { mem: "DRAM", regions: blocks.map((b) => ({ addr: peer.addr + BigInt(b * block), length: block })) },
      peer.name,
    );
    const expected = pattern(SIZE, 2);
    blocks.forEach((b, i) => expect(local.subarray(i * block, (i + 1) * block).equals(expected.subarray(b * block, (b + 1) * block))).toBe(true));
  });

  it("receives a notification the peer sends once it has this agent's metadata (bytes over a pipe)", async () => {
    expect(await peer.ask({ cmd: "load", metadata: agent.localMetadata().toString("base64") })).toEqual({ loaded: agent.name });
    expect(await peer.ask({ cmd: "notify", to: agent.name, message: "hello from the peer" })).toEqual({ notified: true });
    const { notification } = await agent.waitForNotification((n) => n.message.toString() === "hello from the peer", { timeoutMs: 30_000 });
    expect(notification.agent).toBe(peer.name);
  });

  it("rejects bad metadata, unknown peers and mismatched regions with typed errors", async () => {
    expect(() => agent.loadRemoteMetadata(Buffer.from("not nixl metadata"))).toThrow(InvalidInputError);
    expect(() => agent.loadRemoteMetadata(Buffer.alloc(0))).toThrow(InvalidInputError);
    const reg = agent.registerBuffer(Buffer.alloc(4096));
    await expect(agent.read(reg.descList(), { mem: "DRAM", regions: [{ addr: peer.addr, length: 4096 }] }, "no-such-agent")).rejects.toThrow(InvalidInputError);
    await expect(agent.read(reg.descList(), { mem: "DRAM", regions: [{ addr: peer.addr, length: 8192 }] }, peer.name)).rejects.toThrow(/differs/);
    expect(() => reg.region(4000, 200)).toThrow(InvalidInputError);
    expect(() => agent.deregister(987654)).toThrow(InvalidInputError);
  });
});

describe("the mocker's KV transfers", () => {
  const kv = ["--kv-transfer-config", JSON.stringify({ kv_connector: "NixlConnector", kv_role: "kv_both", engine_id: "e0" })];

  it("without NIXL, says once that the timing model prices transfers, and serves", async () => {
    const m = await startMocker(["mock-8b", "--host", "127.0.0.1", "--port", "0", ...kv], { KVROUTE_NIXL_LIB_DIR: emptyDir });
    try {
      const lines = m.stderr().split("\n").filter((l) => l.includes("KV transfers use the timing model"));
      expect(lines).toEqual([`kvroute mock: NIXL not available: no libnixl_capi.so in ${emptyDir}; KV transfers use the timing model`]);
      const res = await fetch(`${m.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: [1, 2, 3], max_tokens: 1, kv_transfer_params: { do_remote_decode: true } }) });
      expect((await res.json()).kv_transfer_params).toMatchObject({ do_remote_prefill: true, remote_engine_id: "e0" });
    } finally {
      await m.stop();
    }
  });

  it.runIf(nixlTestsRun())("with NIXL, registers its KV pool and says so", async () => {
    const port = await freePorts(1);
    const m = await startMocker(["mock-8b", "--host", "127.0.0.1", "--port", "0", "--num-gpu-blocks-override", "2000", "--nixl-block-bytes", "4096", ...kv], {
      KVROUTE_NIXL_LIB_DIR: nixlLibDir()!,
      VLLM_NIXL_SIDE_CHANNEL_PORT: String(port),
    });
    try {
      expect(m.stderr()).toContain("kvroute mock: KV transfers over NIXL (1 pool(s) of 2000 x 4096 bytes)");
    } finally {
      await m.stop();
    }
  });
});
