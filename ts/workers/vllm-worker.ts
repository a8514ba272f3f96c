/**
 * VllmWorker: one supervised `vllm serve` process (or a mocker taking the same flags).
 *
 * State machine (`state`; `acceptingRequests` is true only in `healthy`):
 *
 * ```
 *   idle/stopped/failed --start()--> starting --GET /health 200, registered--> healthy
 *   starting --exit | timeout | spawn error--> failed          (start() rejects: WorkerStartError)
 *   healthy --crash (exit) | liveness probes failing--> restarting   (deregistered)
 *   restarting --backoff, respawn, /health 200, registered--> healthy
 *   restarting --more than maxRestarts consecutive attempts--> failed    ('failed': WorkerFailedError)
 *   healthy | starting | restarting --drain()--> draining      (deregistered; waits for in-flight)
 *   draining --process exits--> stopped
 *   any but idle/stopped/failed --stop()--> stopping --group gone--> stopped
 * ```
 *
 * Invariants: at most one process group per worker at a time (`run`); the registry holds the
 * record exactly while the state is `healthy`; a start or restart attempt that does not reach
 * `healthy` leaves no process behind; stop() leaves no process of the group behind (SIGTERM to
 * the group, SIGKILL after the grace period, then SIGKILL to whatever is left of the group).
 * The consecutive-restart count is reset once the worker has stayed healthy `stableAfterMs`.
 */
import { EventEmitter } from "node:events";
import { connect } from "node:net";
import { InvalidConfigError } from "../errors.js";
import { buildCommandLine, formatHost, resolveWorkerConfig, workerRecordFor, type CommandLine, type ResolvedWorkerConfig } from "./command-line.js";
import type { VllmWorkerConfig, WorkerRecord, WorkerRegistryHook } from "./config.js";
import { cacheConfigInfo, fetchMetrics, inFlightRequests, probeHealth } from "./engine-http.js";
import { describeExit, WorkerFailedError, WorkerStartError, type WorkerStartFailure } from "./errors.js";
import { forEachLine, RecentLines, stderrLogger, type WorkerLogger, type WorkerLogStream } from "./log-lines.js";
import { signalGroup, spawnGroup, type SpawnedGroup } from "./process-group.js";

export type WorkerState = "idle" | "starting" | "healthy" | "restarting" | "draining" | "stopping" | "stopped" | "failed";

export interface SupervisionOptions {
  /** Where output lines and supervisor messages go. Default: `[id] line` on stderr; null: nowhere. */
  logger?: WorkerLogger | null;
  /** Told when the worker becomes healthy and when it leaves (crash, drain, stop). */
  registry?: WorkerRegistryHook | null;
  /** How long a (re)start may take to answer /health 200. Default 600000 (vLLM loads weights, compiles graphs). */
  startTimeoutMs?: number;
  /** Interval between /health polls while starting. Default 200. */
  healthPollMs?: number;
  /** Consecutive restarts tried after a crash before giving up (`failed`). Default 5; 0 never restarts. */
  maxRestarts?: number;
  /** Delay before the first restart; doubles each consecutive attempt. Default 1000. */
  restartBackoffMs?: number;
  /** Upper bound of the restart delay. Default 30000. */
  maxRestartBackoffMs?: number;
  /** Healthy this long resets the consecutive-restart count. Default 60000. */
  stableAfterMs?: number;
  /** /health probe interval while healthy; 0 disables liveness probing. Default 5000. */
  livenessIntervalMs?: number;
  /** Consecutive failed liveness probes after which the worker is killed and restarted. Default 3. */
  livenessFailures?: number;
  /** Default grace period of stop() between SIGTERM and SIGKILL. Default 10000. */
  stopGraceMs?: number;
  /** Output lines kept for error messages. Default 40. */
  logLines?: number;
}

export interface DrainOptions {
  /** Give up waiting after this long. Default 30000. */
  deadlineMs?: number;
  /** Interval between /metrics polls. Default 100. */
  pollMs?: number;
}

export interface DrainResult {
  /** Nothing was in flight when drain() returned. */
  drained: boolean;
  /** Requests still running or waiting; null when /metrics could not be read. */
  inFlight: number | null;
  waitedMs: number;
}

export interface StopOptions {
  /** Between SIGTERM and SIGKILL. Default: `stopGraceMs`. */
  graceMs?: number;
}

export interface VllmWorkerEvents {
  state: [{ from: WorkerState; to: WorkerState }];
  /** A process was spawned; `attempt` 0 is the first start, n the n-th consecutive restart. */
  started: [{ pid: number; attempt: number }];
  healthy: [WorkerRecord];
  /** The process exited; `expected` when we stopped it. */
  exit: [{ pid: number | undefined; code: number | null; signal: NodeJS.Signals | null; expected: boolean }];
  /** Liveness probes failed `failures` times in a row; the worker is killed and restarted. */
  unhealthy: [{ failures: number; detail: string }];
  restarting: [{ attempt: number; delayMs: number; reason: string }];
  /** The worker gave up: a start that failed, or too many restarts. */
  failed: [WorkerStartError | WorkerFailedError];
  draining: [];
  stopped: [];
  /** The registry hook threw on deregister (a failing register fails the start attempt instead). */
  registryError: [{ op: "register" | "deregister"; error: unknown }];
}

interface Run {
  group: SpawnedGroup;
  pid: number | undefined;
  /** Set before we signal it, so its exit is not taken for a crash. */
  expectedExit: boolean;
  exit: { code: number | null; signal: NodeJS.Signals | null; error?: Error } | null;
}

const DEFAULTS = {
  startTimeoutMs: 600_000,
  healthPollMs: 200,
  maxRestarts: 5,
  restartBackoffMs: 1000,
  maxRestartBackoffMs: 30_000,
  stableAfterMs: 60_000,
  livenessIntervalMs: 5000,
  livenessFailures: 3,
  stopGraceMs: 10_000,
  logLines: 40,
};

/** A failed start attempt is torn down with this grace (the process was never serving). */
const FAILED_ATTEMPT_GRACE_MS = 2000;

export class VllmWorker extends EventEmitter<VllmWorkerEvents> {
  readonly id: string;
  readonly config: ResolvedWorkerConfig;
  /** `http://host:port`, what /health, /metrics and the router use. */
  readonly url: string;
  private readonly options: typeof DEFAULTS;
  private readonly logger: WorkerLogger | null;
  private readonly registry: WorkerRegistryHook | null;
  private readonly recent: RecentLines;

  private currentState: WorkerState = "idle";
  private run: Run | null = null;
  /** Aborts the start or restart attempt in progress (backoff sleep, health wait). */
  private attemptAbort: AbortController | null = null;
  private startPromise: Promise<WorkerRecord> | null = null;
  private drainPromise: Promise<DrainResult> | null = null;
  private stopPromise: Promise<void> | null = null;
  private consecutiveRestarts = 0;
  private totalRestarts = 0;
  private healthySince = 0;
  private livenessTimer: NodeJS.Timeout | null = null;
  private lastRecord: WorkerRecord | null = null;
  private failure: WorkerStartError | WorkerFailedError | null = null;

  constructor(config: VllmWorkerConfig, options: SupervisionOptions = {}) {
    super();
    this.config = resolveWorkerConfig(config);
    this.id = this.config.id;
    this.url = `http://${formatHost(this.config.advertiseHost)}:${this.config.port}`;
    const numbers = { ...DEFAULTS };
    for (const key of Object.keys(DEFAULTS) as (keyof typeof DEFAULTS)[]) {
      const v = options[key];
      if (v === undefined) continue;
      if (typeof v !== "number" || !Number.isFinite(v) || v < 0) throw new InvalidConfigError(`supervision option '${key}' must be a number >= 0: got ${String(v)}`);
      numbers[key] = v;
    }
    this.options = numbers;
    this.logger = options.logger === undefined ? stderrLogger : options.logger;
    this.registry = options.registry ?? null;
    this.recent = new RecentLines(Math.max(1, this.options.logLines));
  }

  get state(): WorkerState {
    return this.currentState;
  }

  /** Whether a router may send this worker new requests (state `healthy`). */
  get acceptingRequests(): boolean {
    return this.currentState === "healthy";
  }

  /** The pid (= process group id) of the current process, if any. */
  get pid(): number | undefined {
    return this.run?.pid;
  }

  /** The record registered when the worker last became healthy, or null before that. */
  get record(): WorkerRecord | null {
    return this.lastRecord;
  }

  /** Restarts since the worker was created. */
  get restarts(): number {
    return this.totalRestarts;
  }

  /** Why the worker is `failed`, if it is. */
  get error(): WorkerStartError | WorkerFailedError | null {
    return this.failure;
  }

  /** The command line this worker runs. */
  commandLine(): CommandLine {
    return buildCommandLine(this.config);
  }

  /** The last output lines of the engine (stdout and stderr interleaved). */
  lastLogLines(n?: number): string[] {
    return this.recent.last(n);
  }

  /**
   * Spawns the worker and resolves with its record once `GET /health` answers 200 (and the
   * registry accepted the record). Rejects with WorkerStartError, leaving no process behind,
   * when the process exits first, the timeout passes, it cannot be spawned, or stop() is called.
   */
  start(): Promise<WorkerRecord> {
    if (this.currentState === "starting" && this.startPromise) return this.startPromise;
    if (this.currentState === "healthy" && this.lastRecord) return Promise.resolve(this.lastRecord);
    if (!["idle", "stopped", "failed"].includes(this.currentState)) {
      return Promise.reject(new InvalidConfigError(`worker '${this.id}' cannot start while ${this.currentState}`));
    }
    this.failure = null;
    this.stopPromise = null;
    this.drainPromise = null;
    this.consecutiveRestarts = 0;
    this.setState("starting");
    const abort = new AbortController();
    this.attemptAbort = abort;
    this.startPromise = this.launch(0, abort.signal).catch((err: unknown) => {
      if (this.currentState === "starting") {
        this.failure = err as WorkerStartError;
        this.setState("failed");
        this.emit("failed", err as WorkerStartError);
      }
      throw err;
    });
    this.startPromise.catch(() => {});
    return this.startPromise;
  }

  /**
   * Stops taking new requests (state `draining`, deregistered, `acceptingRequests` false) and
   * waits until the engine reports nothing running or waiting, or the deadline passes. The
   * process keeps running; call stop() next.
   */
  drain(options: DrainOptions = {}): Promise<DrainResult> {
    if (this.drainPromise) return this.drainPromise;
    const state = this.currentState;
    if (state === "idle" || state === "stopped" || state === "failed" || state === "stopping") {
      return Promise.resolve({ drained: true, inFlight: 0, waitedMs: 0 });
    }
    this.stopLiveness();
    const wasServing = state === "healthy";
    this.attemptAbort?.abort();
    this.setState("draining");
    this.emit("draining");
    this.drainPromise = (async () => {
      const started = Date.now();
      await this.deregister();
      if (!wasServing) return { drained: true, inFlight: 0, waitedMs: Date.now() - started };
      const deadline = started + (options.deadlineMs ?? 30_000);
      const pollMs = options.pollMs ?? 100;
      let inFlight: number | null = null;
      for (;;) {
        if (this.currentState !== "draining" || !this.run || this.run.exit) {
          return { drained: true, inFlight: 0, waitedMs: Date.now() - started };
        }
        inFlight = await this.inFlight().catch(() => null);
        if (inFlight === 0) return { drained: true, inFlight, waitedMs: Date.now() - started };
        const left = deadline - Date.now();
        if (left <= 0) {
          this.log(`drain deadline passed with ${inFlight ?? "an unknown number of"} request(s) in flight`);
          return { drained: false, inFlight, waitedMs: Date.now() - started };
        }
        await sleep(Math.min(pollMs, left));
      }
    })();
    return this.drainPromise;
  }

  /**
   * Stops the worker: deregisters it, SIGTERMs its process group, SIGKILLs the group after
   * `graceMs`, and resolves once the leader has exited and the group was reaped. Aborts a start
   * or restart in progress. Idempotent.
   */
  stop(options: StopOptions = {}): Promise<void> {
    if (this.stopPromise) return this.stopPromise;
    const state = this.currentState;
    if (state === "idle" || ((state === "stopped" || state === "failed") && !this.run)) return Promise.resolve();
    this.stopLiveness();
    this.attemptAbort?.abort();
    this.setState("stopping");
    const graceMs = options.graceMs ?? this.options.stopGraceMs;
    this.stopPromise = (async () => {
      await this.deregister();
      const run = this.run;
      if (run) await this.terminate(run, graceMs);
      // A start attempt that was spawning when we aborted it tears its own run down; wait for it.
      await this.startPromise?.catch(() => {});
      this.setState("stopped");
      this.emit("stopped");
    })();
    return this.stopPromise;
  }

  /** Requests running + waiting on the engine (vLLM's metrics), or null if it does not say. */
  async inFlight(): Promise<number | null> {
    return inFlightRequests(await fetchMetrics(this.url, 2000));
  }

  // ---- internals ----

  /** One start attempt: spawn, wait for health, register. Throws WorkerStartError; leaves nothing running then. */
  private async launch(attempt: number, signal: AbortSignal): Promise<WorkerRecord> {
    const timeoutMs = this.options.startTimeoutMs;
    const fail = (reason: WorkerStartFailure, extra: { detail?: string; exitCode?: number | null; signal?: NodeJS.Signals | null; cause?: unknown } = {}) =>
      new WorkerStartError({
        workerId: this.id,
        reason,
        url: `${this.url}/health`,
        timeoutMs,
        lastLogLines: this.recent.last(20),
        ...extra,
      });
    if (signal.aborted) throw fail("aborted");
    if (await portInUse(this.config.advertiseHost, this.config.port)) {
      throw fail("spawn", { detail: `port ${this.config.port} on ${this.config.advertiseHost} is already in use by another process` });
    }
    if (signal.aborted) throw fail("aborted");

    const cl = buildCommandLine(this.config);
    const env: NodeJS.ProcessEnv = { ...process.env, ...cl.env };
    this.log(`${attempt === 0 ? "starting" : `restart ${attempt}:`} ${[cl.command, ...cl.args].map(shellQuote).join(" ")}`);
    const group = spawnGroup(cl.command, cl.args, { env, cwd: this.config.cwd });
    const run: Run = { group, pid: group.pid, expectedExit: false, exit: null };
    this.run = run;
    this.pipeOutput(group.child.stdout, "stdout");
    this.pipeOutput(group.child.stderr, "stderr");
    void group.exited.then((exit) => this.onExit(run, exit));

    if (run.pid === undefined) {
      const exit = await group.exited;
      if (this.run === run) this.run = null;
      throw fail("spawn", { detail: `${cl.command}: ${exit.error?.message ?? "spawn failed"}`, cause: exit.error });
    }
    this.emit("started", { pid: run.pid, attempt });

    const deadline = Date.now() + timeoutMs;
    let lastDetail = "no answer yet";
    for (;;) {
      if (signal.aborted) {
        await this.terminate(run, FAILED_ATTEMPT_GRACE_MS);
        throw fail("aborted");
      }
      if (run.exit) {
        throw fail("exited", { exitCode: run.exit.code, signal: run.exit.signal });
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        this.log(`not healthy after ${timeoutMs} ms (last health check: ${lastDetail}); stopping it`);
        await this.terminate(run, FAILED_ATTEMPT_GRACE_MS);
        throw fail("timeout", { detail: `last health check: ${lastDetail}` });
      }
      const cutByDeadline = left < 2000;
      const probe = await probeHealth(this.url, Math.min(2000, left));
      // Yield once so that an exit that raced the probe is seen (another server may own the port).
      await new Promise<void>((r) => setImmediate(r));
      if (probe.ok && !run.exit && !signal.aborted) break;
      // A probe the start deadline cut short says nothing about the engine: the error keeps the
      // last answer it gave (e.g. HTTP 503) rather than "timeout".
      const answered = lastDetail !== "no answer yet";
      if (!probe.ok && !(cutByDeadline && probe.detail === "timeout" && answered)) lastDetail = probe.detail ?? "not ok";
      await Promise.race([sleep(this.options.healthPollMs), group.exited, abortPromise(signal)]);
    }

    let engine: ReturnType<typeof cacheConfigInfo> = {};
    try {
      engine = cacheConfigInfo(await fetchMetrics(this.url, 2000));
    } catch {
      // Not every engine serves /metrics; the config's values stand.
    }
    const record = workerRecordFor(this.config, { inheritedHashSeed: env["PYTHONHASHSEED"] ?? null, engine });
    if (this.registry) {
      try {
        await this.registry.register(record);
      } catch (err) {
        await this.terminate(run, FAILED_ATTEMPT_GRACE_MS);
        throw fail("register", { detail: err instanceof Error ? err.message : String(err), cause: err });
      }
    }
    if (signal.aborted || run.exit) {
      // stop() or drain() won the race while we registered: take the record back.
      await this.deregister();
      if (signal.aborted) {
        await this.terminate(run, FAILED_ATTEMPT_GRACE_MS);
        throw fail("aborted");
      }
      throw fail("exited", { exitCode: run.exit!.code, signal: run.exit!.signal });
    }
    this.lastRecord = record;
    this.healthySince = Date.now();
    this.attemptAbort = null;
    this.setState("healthy");
    this.log(`healthy at ${this.url} (pid ${run.pid})`);
    this.startLiveness(run);
    this.emit("healthy", record);
    return record;
  }

  private onExit(run: Run, exit: { code: number | null; signal: NodeJS.Signals | null; error?: Error }): void {
    run.exit = exit;
    if (this.run === run) this.run = null;
    if (run.pid !== undefined) {
      this.log(`process ${run.pid} exited (${describeExit(exit.code, exit.signal)})${run.expectedExit ? "" : " unexpectedly"}`);
      this.emit("exit", { pid: run.pid, code: exit.code, signal: exit.signal, expected: run.expectedExit });
    }
    if (run.expectedExit) return;
    if (this.currentState === "healthy") {
      this.stopLiveness();
      void this.recover(`exited (${describeExit(exit.code, exit.signal)})`);
    } else if (this.currentState === "draining") {
      this.setState("stopped");
      this.emit("stopped");
    }
    // starting / restarting: the attempt in progress sees run.exit and fails itself.
  }

  /** After a crash: deregister, then restart with backoff until healthy, aborted, or out of attempts. */
  private async recover(reason: string): Promise<void> {
    this.setState("restarting");
    await this.deregister();
    if (Date.now() - this.healthySince >= this.options.stableAfterMs) this.consecutiveRestarts = 0;
    let lastError: unknown = null;
    for (;;) {
      if (this.currentState !== "restarting") return;
      if (this.consecutiveRestarts >= this.options.maxRestarts) {
        const error = new WorkerFailedError({
          workerId: this.id,
          restarts: this.consecutiveRestarts,
          detail: this.consecutiveRestarts === 0 ? `${reason}, and restarts are disabled (maxRestarts 0)` : `last attempt: ${firstLine(lastError) ?? reason}`,
          lastLogLines: this.recent.last(20),
          cause: lastError ?? undefined,
        });
        this.failure = error;
        this.log(error.message.split("\n")[0]!);
        this.setState("failed");
        this.emit("failed", error);
        return;
      }
      this.consecutiveRestarts++;
      this.totalRestarts++;
      const attempt = this.consecutiveRestarts;
      const delayMs = Math.min(this.options.restartBackoffMs * 2 ** (attempt - 1), this.options.maxRestartBackoffMs);
      this.log(`${reason}; restart ${attempt}/${this.options.maxRestarts} in ${delayMs} ms`);
      this.emit("restarting", { attempt, delayMs, reason });
      const abort = new AbortController();
      this.attemptAbort = abort;
      await Promise.race([sleep(delayMs), abortPromise(abort.signal)]);
      if (abort.signal.aborted || this.currentState !== "restarting") return;
      try {
        await this.launch(attempt, abort.signal);
        return;
      } catch (err) {
        if (abort.signal.aborted || this.currentState !== "restarting") return;
        lastError = err;
        reason = `restart ${attempt} failed (${firstLine(err)})`;
      }
    }
  }

  /** SIGTERM the group, SIGKILL after graceMs, resolve when the leader exited. */
  private async terminate(run: Run, graceMs: number): Promise<void> {
    run.expectedExit = true;
    if (run.pid === undefined || run.exit) {
      await run.group.exited;
      return;
    }
    signalGroup(run.pid, "SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const inTime = await Promise.race([
      run.group.exited.then(() => true),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(false), graceMs))),
    ]);
    clearTimeout(timer);
    if (!inTime) {
      this.log(`still running ${graceMs} ms after SIGTERM; sending SIGKILL to process group ${run.pid}`);
      signalGroup(run.pid, "SIGKILL");
      await run.group.exited;
    }
    // process-group.ts SIGKILLs what is left of the group once the leader is gone.
    signalGroup(run.pid, "SIGKILL");
  }

  private startLiveness(run: Run): void {
    this.stopLiveness();
    if (this.options.livenessIntervalMs <= 0) return;
    let failures = 0;
    let probing = false;
    this.livenessTimer = setInterval(() => {
      if (probing || this.run !== run || this.currentState !== "healthy") return;
      probing = true;
      void probeHealth(this.url, Math.max(1000, this.options.livenessIntervalMs)).then((probe) => {
        probing = false;
        if (this.run !== run || this.currentState !== "healthy") return;
        if (probe.ok) {
          failures = 0;
          return;
        }
        failures++;
        if (failures < this.options.livenessFailures) return;
        this.stopLiveness();
        const detail = probe.detail ?? "not ok";
        this.log(`${failures} liveness probes failed (${detail}); killing process group ${run.pid} to restart it`);
        this.emit("unhealthy", { failures, detail });
        if (run.pid !== undefined) signalGroup(run.pid, "SIGKILL");
      });
    }, this.options.livenessIntervalMs);
    this.livenessTimer.unref();
  }

  private stopLiveness(): void {
    if (this.livenessTimer) clearInterval(this.livenessTimer);
    this.livenessTimer = null;
  }

  private async deregister(): Promise<void> {
    if (!this.registry) return;
    try {
      await this.registry.deregister(this.id);
    } catch (error) {
      this.log(`registry deregister failed: ${error instanceof Error ? error.message : String(error)}`);
      this.emit("registryError", { op: "deregister", error });
    }
  }

  private pipeOutput(stream: NodeJS.ReadableStream | null, name: WorkerLogStream): void {
    if (!stream) return;
    forEachLine(stream as import("node:stream").Readable, (line) => {
      this.recent.push(line);
      this.logger?.(line, { workerId: this.id, stream: name });
    });
  }

  private log(message: string): void {
    this.logger?.(`kvroute: ${message}`, { workerId: this.id, stream: "supervisor" });
  }

  private setState(to: WorkerState): void {
    const from = this.currentState;
    if (from === to) return;
    this.currentState = to;
    this.emit("state", { from, to });
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function abortPromise(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
}

function firstLine(err: unknown): string | undefined {
  if (err === null || err === undefined) return undefined;
  return (err instanceof Error ? err.message : String(err)).split("\n")[0];
}

/** Whether something already accepts connections on host:port (then the health check would lie). */
function portInUse(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (inUse: boolean) => {
      socket.destroy();
      resolve(inUse);
    };
    socket.setTimeout(500, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}
