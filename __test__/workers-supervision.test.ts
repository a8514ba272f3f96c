// Supervision against a deliberately misbehaving engine (helpers/fake-engine.mjs): start
// failures, crash restarts, crash loops, liveness, drain, SIGTERM/SIGKILL and orphans.
// The same paths against the real mocker are in workers-mocker.test.ts.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import {
  findFreePortRange,
  groupAlive,
  isAlive,
  VllmWorker,
  WorkerFailedError,
  WorkerGroup,
  WorkerStartError,
  type SupervisionOptions,
  type VllmWorkerConfig,
  type WorkerRecord,
  type WorkerRegistryHook,
} from "../ts/workers/index.js";

const FAKE = fileURLToPath(new URL("./helpers/fake-engine.mjs", import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), "kvroute-workers-"));
const workers: VllmWorker[] = [];

afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.stop({ graceMs: 200 })));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function logs(): { lines: string[]; options: SupervisionOptions } {
  const lines: string[] = [];
  return { lines, options: { logger: (line, { workerId }) => lines.push(`[${workerId}] ${line}`) } };
}

async function fakeWorker(env: Record<string, string>, options: SupervisionOptions = {}, extra: Partial<VllmWorkerConfig> = {}) {
  const port = await findFreePortRange(1);
  const worker = new VllmWorker(
    { id: `fake-${port}`, model: "fake-model", port, command: [process.execPath, FAKE], env, ...extra },
    { logger: null, healthPollMs: 50, restartBackoffMs: 50, ...options },
  );
  workers.push(worker);
  return worker;
}

/** Waits until the fake engine's /metrics shows `n` open /slow requests. */
async function engineRunning(url: string, n: number): Promise<void> {
  for (;;) {
    const text = await (await fetch(`${url}/metrics`)).text();
    if (new RegExp(`vllm:num_requests_running\\{[^}]*\\} ${n}\\.0`).test(text)) return;
    await new Promise((r) => setTimeout(r, 20)); // poll interval
  }
}

/** Polls `predicate`; the deadline only names a hang (the test timeout is 60 s). */
async function waitFor(predicate: () => boolean, timeoutMs = 50_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}

function grandchildPid(lines: string[]): number {
  const line = lines.find((l) => / grandchild \d+$/.test(l));
  if (!line) throw new Error(`no grandchild line in ${lines.join("\n")}`);
  return Number(line.split(" ").pop());
}

class RecordingRegistry implements WorkerRegistryHook {
  readonly calls: string[] = [];
  readonly records = new Map<string, WorkerRecord>();
  async register(record: WorkerRecord) {
    this.calls.push(`register ${record.id}`);
    this.records.set(record.id, record);
  }
  async deregister(id: string) {
    this.calls.push(`deregister ${id}`);
    this.records.delete(id);
  }
}

describe("VllmWorker start", () => {
  it("fails with a clear error, within its timeout, when /health never answers 200", async () => {
    const { lines, options } = logs();
    const worker = await fakeWorker({ FAKE_ENGINE_MODE: "never-healthy", FAKE_ENGINE_GRANDCHILD: "1" }, { ...options, startTimeoutMs: 1500 });
    const failed: unknown[] = [];
    worker.on("failed", (e) => failed.push(e));
    const t0 = Date.now();
    const err = (await worker.start().catch((e: unknown) => e)) as WorkerStartError;
    const elapsed = Date.now() - t0;
    expect(err).toBeInstanceOf(WorkerStartError);
    expect(err.code).toBe("KVR_WORKER_START");
    expect(err.reason).toBe("timeout");
    expect(err.message).toContain(`worker '${worker.id}' did not become healthy at ${worker.url}/health within 1500 ms`);
    expect(err.message).toContain("last health check: HTTP 503");
    expect(err.message).toMatch(/fake-engine listening on/);
    expect(err.lastLogLines.some((l) => l.includes("fake-engine listening"))).toBe(true);
    // A timer's lower bound holds on any machine; no upper bound (a loaded machine is slow).
    expect(elapsed).toBeGreaterThanOrEqual(1400);
    expect(worker.state).toBe("failed");
    expect(failed).toEqual([err]);
    // Nothing left behind: not the engine, not what it forked.
    const child = grandchildPid(lines);
    await waitFor(() => !isAlive(child));
    expect(worker.pid).toBeUndefined();
  });

  it("keeps the engine's last answer in the error when the deadline cuts the last health check short", async () => {
    const worker = await fakeWorker({ FAKE_ENGINE_MODE: "503-then-hang" }, { startTimeoutMs: 1500 });
    const err = (await worker.start().catch((e: unknown) => e)) as WorkerStartError;
    expect(err).toBeInstanceOf(WorkerStartError);
    expect(err.reason).toBe("timeout");
    // Every probe's own timeout is capped by the 1.5 s deadline, so the hanging one is cut short.
    expect(err.message).toContain("last health check: HTTP 503");
    expect(worker.state).toBe("failed");
  });

  it("fails at once with the exit status and the engine's last words when it exits early", async () => {
    const worker = await fakeWorker({ FAKE_ENGINE_MODE: "exit-early" }, { startTimeoutMs: 20_000 });
    const err = (await worker.start().catch((e: unknown) => e)) as WorkerStartError;
    expect(err).toBeInstanceOf(WorkerStartError);
    expect(err.reason).toBe("exited");
    expect(err.exitCode).toBe(3);
    expect(err.message).toContain("exited (exit code 3) before becoming healthy");
    expect(err.message).toContain("RuntimeError: CUDA out of memory (fake)");
    // "At once" is the reason: the exit, not the 20 s start timeout (no wall-clock bound).
  });

  it("a start killed by a signal reports the signal and the engine's last words, read to the end", async () => {
    const worker = await fakeWorker({ FAKE_ENGINE_MODE: "segfault" }, { startTimeoutMs: 20_000 });
    const err = (await worker.start().catch((e: unknown) => e)) as WorkerStartError;
    expect(err).toBeInstanceOf(WorkerStartError);
    expect(err.reason).toBe("exited");
    expect(err.signal).toBe("SIGSEGV");
    expect(err.message).toContain("Caught signal 11 (Segmentation fault, fake)");
  });

  it("names the binary when it cannot be spawned", async () => {
    const worker = await fakeWorker({}, {}, { command: ["/nonexistent/vllm", "serve"] });
    const err = (await worker.start().catch((e: unknown) => e)) as WorkerStartError;
    expect(err.reason).toBe("spawn");
    expect(err.message).toMatch(/\/nonexistent\/vllm: spawn \/nonexistent\/vllm ENOENT/);
  });

  it("refuses a port that another process already serves (its /health would lie)", async () => {
    const server = createServer().listen(0, "127.0.0.1");
    await new Promise((r) => server.once("listening", r));
    const port = (server.address() as { port: number }).port;
    try {
      const worker = new VllmWorker({ model: "m", port, command: [process.execPath, FAKE] }, { logger: null });
      const err = (await worker.start().catch((e: unknown) => e)) as WorkerStartError;
      expect(err.reason).toBe("spawn");
      expect(err.message).toContain(`port ${port} on 127.0.0.1 is already in use`);
    } finally {
      server.close();
    }
  });

  it("passes the command line and PYTHONHASHSEED, and builds the record from the engine's metrics", async () => {
    const { lines, options } = logs();
    const worker = await fakeWorker({}, options, { pythonHashSeed: 1234, kvEvents: { endpoint: "tcp://*:5557" } });
    const record = await worker.start();
    expect(record).toMatchObject({
      id: worker.id,
      url: worker.url,
      blockSize: 32,
      numGpuBlocks: 777,
      hashAlgorithm: "xxhash",
      hashSeed: "1234",
      kvEvents: { endpoints: ["tcp://127.0.0.1:5557"] },
    });
    expect(worker.state).toBe("healthy");
    expect(worker.acceptingRequests).toBe(true);
    expect(lines).toContain(`[${worker.id}] PYTHONHASHSEED=1234`);
    expect(lines.some((l) => l.startsWith(`[${worker.id}] kvroute: starting `) && l.includes("--kv-events-config"))).toBe(true);
  });
});

describe("VllmWorker supervision", () => {
  it("restarts a worker killed with SIGKILL, re-registering it once healthy", async () => {
    const registry = new RecordingRegistry();
    const { lines, options } = logs();
    const worker = await fakeWorker({ FAKE_ENGINE_GRANDCHILD: "1" }, { ...options, registry });
    const events: string[] = [];
    worker.on("state", ({ to }) => events.push(to));
    worker.on("restarting", ({ attempt }) => events.push(`restarting#${attempt}`));
    await worker.start();
    const firstPid = worker.pid!;
    const firstChild = grandchildPid(lines);
    process.kill(firstPid, "SIGKILL");
    await new Promise((r) => worker.once("healthy", r));
    expect(worker.pid).not.toBe(firstPid);
    expect(worker.restarts).toBe(1);
    expect(events).toEqual(["starting", "healthy", "restarting", "restarting#1", "healthy"]);
    expect(registry.calls).toEqual([`register ${worker.id}`, `deregister ${worker.id}`, `register ${worker.id}`]);
    // The crashed process's group went with it.
    await waitFor(() => !isAlive(firstChild) && !groupAlive(firstPid));
  });

  it("gives up after maxRestarts consecutive failed restarts, with the engine's output", async () => {
    const failFile = join(tmp, "fail-now");
    const registry = new RecordingRegistry();
    const worker = await fakeWorker({ FAKE_ENGINE_FAIL_IF_EXISTS: failFile }, { maxRestarts: 2, registry });
    const attempts: number[] = [];
    worker.on("restarting", ({ attempt, delayMs }) => attempts.push(attempt, delayMs));
    await worker.start();
    writeFileSync(failFile, "");
    try {
      process.kill(worker.pid!, "SIGKILL");
      const error = await new Promise<unknown>((r) => worker.once("failed", r));
      expect(error).toBeInstanceOf(WorkerFailedError);
      expect((error as WorkerFailedError).code).toBe("KVR_WORKER_FAILED");
      expect((error as WorkerFailedError).message).toContain(`worker '${worker.id}' failed after 2 restart(s)`);
      expect((error as WorkerFailedError).message).toContain("CUDA out of memory (fake)");
      expect(attempts).toEqual([1, 50, 2, 100]); // exponential backoff
      expect(worker.state).toBe("failed");
      expect(worker.error).toBe(error);
      expect(registry.records.size).toBe(0);
      expect(worker.pid).toBeUndefined();
    } finally {
      rmSync(failFile, { force: true });
    }
  });

  it("kills and restarts a worker whose /health keeps failing (liveness)", async () => {
    const sick = join(tmp, "sick");
    const worker = await fakeWorker({ FAKE_ENGINE_UNHEALTHY_IF_EXISTS: sick }, { livenessIntervalMs: 100, livenessFailures: 2 });
    await worker.start();
    const firstPid = worker.pid!;
    writeFileSync(sick, "");
    const unhealthy = await new Promise<{ failures: number; detail: string }>((r) => worker.once("unhealthy", r));
    rmSync(sick);
    expect(unhealthy).toEqual({ failures: 2, detail: "HTTP 503" });
    await new Promise((r) => worker.once("healthy", r));
    expect(worker.pid).not.toBe(firstPid);
    expect(isAlive(firstPid)).toBe(false);
  });

  it("drain stops taking requests, deregisters, and waits for the in-flight request", async () => {
    const registry = new RecordingRegistry();
    const worker = await fakeWorker({}, { registry });
    await worker.start();
    const request = fetch(`${worker.url}/slow?ms=800`).then((r) => r.text());
    await engineRunning(worker.url, 1); // the request reached the engine
    const t0 = Date.now();
    const result = await worker.drain({ deadlineMs: 5000, pollMs: 50 });
    expect(result.drained).toBe(true);
    expect(result.inFlight).toBe(0);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
    expect(await request).toBe("done");
    expect(worker.state).toBe("draining");
    expect(worker.acceptingRequests).toBe(false);
    expect(registry.records.size).toBe(0);
    await worker.stop();
  });

  it("drain returns at the deadline with the count still in flight", async () => {
    const worker = await fakeWorker({});
    await worker.start();
    const request = fetch(`${worker.url}/slow?ms=1500`).then((r) => r.text()).catch(() => "cut");
    await engineRunning(worker.url, 1);
    const result = await worker.drain({ deadlineMs: 300, pollMs: 50 });
    expect(result).toMatchObject({ drained: false, inFlight: 1 });
    await worker.stop({ graceMs: 200 });
    expect(await request).toBe("cut"); // stop() does not wait for requests; drain() does
  });

  it("stop SIGKILLs an engine that ignores SIGTERM after the grace period, and its whole group", async () => {
    const { lines, options } = logs();
    const worker = await fakeWorker({ FAKE_ENGINE_IGNORE_SIGTERM: "1", FAKE_ENGINE_GRANDCHILD: "1" }, options);
    const exits: unknown[] = [];
    worker.on("exit", (e) => exits.push(e));
    await worker.start();
    const pid = worker.pid!;
    const child = grandchildPid(lines);
    const t0 = Date.now();
    await worker.stop({ graceMs: 400 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(380);
    expect(worker.state).toBe("stopped");
    expect(exits).toEqual([{ pid, code: null, signal: "SIGKILL", expected: true }]);
    expect(lines).toContain(`[${worker.id}] fake-engine ignoring SIGTERM`);
    expect(isAlive(pid)).toBe(false);
    await waitFor(() => !isAlive(child) && !groupAlive(pid));
  });

  it("stop during start aborts it and leaves nothing behind", async () => {
    const worker = await fakeWorker({ FAKE_ENGINE_MODE: "never-healthy" }, { startTimeoutMs: 30_000 });
    const starting = worker.start().catch((e: unknown) => e);
    await new Promise((r) => worker.once("started", r));
    const pid = worker.pid!;
    await worker.stop();
    const err = (await starting) as WorkerStartError;
    expect(err.reason).toBe("aborted");
    expect(worker.state).toBe("stopped");
    expect(isAlive(pid)).toBe(false);
  });

  it("kills its workers' process groups when the parent process exits", async () => {
    const port = await findFreePortRange(1);
    const script = `
      import { VllmWorker } from ${JSON.stringify(fileURLToPath(new URL("../ts/workers/index.ts", import.meta.url)))};
      const w = new VllmWorker({ model: "m", port: ${port}, command: [process.execPath, ${JSON.stringify(FAKE)}], env: { FAKE_ENGINE_GRANDCHILD: "1" } }, { logger: (l) => console.log(l) });
      await w.start();
      console.log("PID " + w.pid);
      process.exit(0);
    `;
    const tsx = fileURLToPath(new URL("../node_modules/tsx/dist/cli.mjs", import.meta.url));
    const file = join(tmp, "parent.mts");
    writeFileSync(file, script);
    const parent = spawn(process.execPath, [tsx, file], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    parent.stdout.on("data", (d: Buffer) => (out += d.toString()));
    const code = await new Promise((r) => parent.on("exit", r));
    expect(code).toBe(0);
    const pid = Number(/PID (\d+)/.exec(out)?.[1]);
    const child = Number(/grandchild (\d+)/.exec(out)?.[1]);
    expect(pid).toBeGreaterThan(0);
    await waitFor(() => !isAlive(pid) && !isAlive(child));
  });
});

describe("WorkerGroup", () => {
  it("stops every member, at once, when one never becomes healthy", async () => {
    const base = await findFreePortRange(3);
    const ok = (i: number): VllmWorkerConfig => ({ id: `ok-${i}`, model: "m", port: base + i, command: [process.execPath, FAKE] });
    const group = new WorkerGroup(
      [ok(0), ok(1), { id: "bad", model: "m", port: base + 2, command: [process.execPath, FAKE], env: { FAKE_ENGINE_MODE: "exit-early" } }],
      { logger: null, healthPollMs: 50, startTimeoutMs: 20_000 },
    );
    const err = (await group.start().catch((e: unknown) => e)) as WorkerStartError;
    expect(err).toBeInstanceOf(WorkerStartError);
    expect(err.workerId).toBe("bad");
    for (const w of group.workers) expect(["stopped", "failed"]).toContain(w.state);
    for (const w of group.workers) expect(w.pid).toBeUndefined();
    expect(group.records).toEqual([]);
  });

  it("rejects duplicate ids and ports", () => {
    const c = { model: "m", port: 9999, command: [process.execPath, FAKE] };
    expect(() => new WorkerGroup([c, { ...c, id: "other" }])).toThrow(/two workers on 127.0.0.1:9999/);
    expect(() => new WorkerGroup([{ ...c, id: "x" }, { ...c, id: "x", port: 9998 }])).toThrow(/duplicate worker id 'x'/);
  });
});
