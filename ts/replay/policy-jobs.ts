/**
 * Policies replayed side by side: a virtual replay is one busy thread, so with several policies
 * and cores the CLI runs each policy in a child process of itself (`fork` of the kvroute CLI with
 * the same flags and one `--policy`), which reports progress and its result over IPC. The results
 * are the same as in one process (each policy replays on its own fresh fleet, with the same seed).
 *
 * Ctrl-C reaches the children (the terminal signals the whole process group; `runPolicyJobs`
 * forwards an abort too): each stops and sends its partial result.
 */
import { fork, type ChildProcess } from "node:child_process";
import { KvrouteError } from "../errors.js";
import type { RouterMode } from "../router/types.js";
import { kvrouteCliPath } from "../workers/command-line.js";
import type { PolicyResult } from "./result.js";
import type { ReplayProgress } from "./virtual-replay.js";

/**
 * A policy's replay process ended without a result (its own stderr says why). `refused`: every
 * failed process exited 2, i.e. refused a setting (the CLI then exits 2 as well).
 */
export class ReplayJobError extends KvrouteError {
  constructor(
    message: string,
    readonly refused: boolean,
  ) {
    super("KVR_REPLAY_JOB", message);
  }
}

/** Set in the environment of a policy's child process. */
export const CHILD_ENV = "KVROUTE_REPLAY_CHILD";

export type ChildMessage = { type: "progress"; progress: ReplayProgress } | { type: "result"; result: PolicyResult };

export function isPolicyChild(): boolean {
  return process.env[CHILD_ENV] === "1" && typeof process.send === "function";
}

/** In a child: sends a message to the parent (ignored when the channel is gone). */
export function sendToParent(message: ChildMessage): Promise<void> {
  return new Promise((resolve) => {
    try {
      process.send!(message, undefined, {}, () => resolve());
    } catch {
      resolve(); // the parent is gone
    }
  });
}

export interface PolicyJobsOptions {
  policies: readonly RouterMode[];
  /** Children at once. */
  jobs: number;
  /** The CLI arguments of the child replaying `policy` (the command first). */
  argvFor(policy: RouterMode): string[];
  signal?: AbortSignal;
  onProgress?(progress: ReplayProgress): void;
  onResult?(result: PolicyResult): void;
}

/** Replays each policy in a child process, `jobs` at a time; results in `policies` order. */
export async function runPolicyJobs(o: PolicyJobsOptions): Promise<PolicyResult[]> {
  const results = new Map<RouterMode, PolicyResult>();
  const running = new Set<ChildProcess>();
  const failures: string[] = [];
  let refused = true;
  let next = 0;
  const onAbort = () => {
    for (const child of running) child.kill("SIGINT");
  };
  o.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    await new Promise<void>((resolve) => {
      const launch = () => {
        while (running.size < o.jobs && next < o.policies.length && !o.signal?.aborted) {
          const policy = o.policies[next++]!;
          const child = fork(kvrouteCliPath(), o.argvFor(policy), {
            stdio: ["ignore", "ignore", "inherit", "ipc"],
            env: { ...process.env, [CHILD_ENV]: "1" },
          });
          running.add(child);
          child.on("message", (m: ChildMessage) => {
            if (m.type === "progress") o.onProgress?.(m.progress);
            else if (m.type === "result") {
              results.set(policy, m.result);
              o.onResult?.(m.result);
            }
          });
          // "close", not "exit": it comes after the last IPC message.
          child.on("close", (code, signal) => {
            running.delete(child);
            if (!results.has(policy) && !o.signal?.aborted) {
              failures.push(`${policy}: the replay process exited (${signal ?? `code ${code}`}) without a result`);
              if (code !== 2) refused = false;
            }
            launch();
            if (running.size === 0) resolve();
          });
        }
        if (running.size === 0) resolve();
      };
      launch();
    });
  } finally {
    o.signal?.removeEventListener("abort", onAbort);
  }
  if (failures.length > 0) throw new ReplayJobError(failures.join("; "), refused);
  return o.policies.filter((p) => results.has(p)).map((p) => results.get(p)!);
}

/** `argv` without the given flags (`--flag value`, `--flag=value`, or boolean `--flag`). */
export function withoutFlags(argv: readonly string[], valued: readonly string[], booleans: readonly string[] = []): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const name = a.startsWith("--") ? a.slice(2).split("=")[0]! : null;
    if (name !== null && valued.includes(name)) {
      if (!a.includes("=")) i++;
      continue;
    }
    if (name !== null && booleans.includes(name)) continue;
    out.push(a);
  }
  return out;
}
