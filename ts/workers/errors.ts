/**
 * Errors of worker control. Both carry the worker id and the last lines the process logged, so a
 * failed start or a crash loop explains itself without digging through logs.
 */
import { KvrouteError } from "../errors.js";

/**
 * `KVR_WORKER_START`: the worker did not become healthy (timeout, early exit, spawn failure, or
 * stopped while starting). `KVR_WORKER_FAILED`: a running worker crashed more often than
 * `maxRestarts` allows.
 */
export type WorkerErrorCode = "KVR_WORKER_START" | "KVR_WORKER_FAILED";


export type WorkerStartFailure =
  /** /health did not answer 200 within the timeout. */
  | "timeout"
  /** The process exited before /health answered 200. */
  | "exited"
  /** The binary could not be spawned (not found, not executable...). */
  | "spawn"
  /** stop() or drain() was called while the worker was starting. */
  | "aborted"
  /** The registry hook rejected the record. */
  | "register";

export class WorkerStartError extends KvrouteError {
  readonly workerId: string;
  readonly reason: WorkerStartFailure;
  /** The health URL that was polled. */
  readonly url: string;
  readonly timeoutMs: number;
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly lastLogLines: readonly string[];
  constructor(init: {
    workerId: string;
    reason: WorkerStartFailure;
    url: string;
    timeoutMs: number;
    exitCode?: number | null;
    signal?: NodeJS.Signals | null;
    detail?: string;
    lastLogLines: readonly string[];
    cause?: unknown;
  }) {
    const what = {
      timeout: `did not become healthy at ${init.url} within ${init.timeoutMs} ms`,
      exited: `exited (${describeExit(init.exitCode ?? null, init.signal ?? null)}) before becoming healthy at ${init.url}`,
      spawn: `could not be started`,
      aborted: `was stopped before becoming healthy at ${init.url}`,
      register: `became healthy at ${init.url} but could not be registered`,
    }[init.reason];
    super("KVR_WORKER_START", formatMessage(`worker '${init.workerId}' ${what}`, init.detail, init.lastLogLines), {
      cause: init.cause,
    });
    this.workerId = init.workerId;
    this.reason = init.reason;
    this.url = init.url;
    this.timeoutMs = init.timeoutMs;
    this.exitCode = init.exitCode ?? null;
    this.signal = init.signal ?? null;
    this.lastLogLines = init.lastLogLines;
  }
}

/** A worker that kept crashing: `restarts` restarts were tried and the last one failed too. */
export class WorkerFailedError extends KvrouteError {
  readonly workerId: string;
  readonly restarts: number;
  readonly lastLogLines: readonly string[];
  constructor(init: { workerId: string; restarts: number; detail: string; lastLogLines: readonly string[]; cause?: unknown }) {
    super(
      "KVR_WORKER_FAILED",
      formatMessage(`worker '${init.workerId}' failed after ${init.restarts} restart(s)`, init.detail, init.lastLogLines),
      { cause: init.cause },
    );
    this.workerId = init.workerId;
    this.restarts = init.restarts;
    this.lastLogLines = init.lastLogLines;
  }
}

export function describeExit(code: number | null, signal: NodeJS.Signals | null): string {
  if (signal) return `signal ${signal}`;
  if (code !== null) return `exit code ${code}`;
  return "no exit status";
}

function formatMessage(head: string, detail: string | undefined, lines: readonly string[]): string {
  let message = detail ? `${head}: ${detail}` : head;
  if (lines.length > 0) message += `\nlast ${lines.length} log line(s):\n  ${lines.join("\n  ")}`;
  else message += " (it logged nothing)";
  return message;
}
