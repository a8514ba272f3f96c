/**
 * Spawning a worker as the leader of its own process group, and killing the whole group.
 *
 * vLLM forks engine-core and worker processes; killing only the pid we spawned would orphan them
 * (and their GPU memory). So every worker is spawned `detached` (setsid: a new session and process
 * group whose id is the child's pid) and signalled with `kill(-pgid)`. Invariant: a pgid is in
 * `liveGroups` from spawn until the group was SIGKILLed after its leader exited, and a best-effort
 * `process.on("exit")` hook SIGKILLs every group still listed, so a parent that exits normally
 * leaves nothing behind. (A parent killed with SIGKILL cannot clean up; nothing can.)
 * On Windows there are no process groups: the child alone is signalled.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

const liveGroups = new Set<number>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const pgid of liveGroups) signalGroup(pgid, "SIGKILL");
  });
}

export interface SpawnedGroup {
  child: ChildProcess;
  /** Also the process group id (POSIX). Undefined when the spawn failed. */
  pid: number | undefined;
  /** Resolves once, when the leader exited or could not be spawned. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>;
}

/** How long a leader's exit waits for its pipes to drain. */
const STDIO_DRAIN_MS = 250;

export function spawnGroup(
  command: string,
  args: readonly string[],
  options: { env: NodeJS.ProcessEnv; cwd?: string },
): SpawnedGroup {
  installExitHook();
  const child = spawn(command, args, {
    env: options.env,
    cwd: options.cwd,
    detached: process.platform !== "win32",
    stdio: ["ignore", "pipe", "pipe"],
    windowsHide: true,
  });
  const pid = child.pid;
  if (pid !== undefined) liveGroups.add(pid);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>((resolve) => {
    child.once("exit", (code, signal) => {
      // 'exit' can come before the last of the pipes is read (a crash's last words among it):
      // wait for 'close', bounded, since a forked engine process may hold the pipes open.
      const done = () => {
        clearTimeout(timer);
        resolve({ code, signal });
      };
      const timer = setTimeout(done, STDIO_DRAIN_MS);
      child.once("close", done);
    });
    // A spawn failure (ENOENT, EACCES) emits 'error' and no 'exit'.
    child.once("error", (error) => {
      if (child.pid === undefined || child.exitCode !== null) resolve({ code: null, signal: null, error });
    });
  });
  if (pid !== undefined) {
    // Whatever the leader's fate, reap the rest of its group (engine processes it forked).
    void exited.then(() => {
      signalGroup(pid, "SIGKILL");
      liveGroups.delete(pid);
    });
  }
  return { child, pid, exited };
}

/** Signals the whole group; false when it no longer exists. */
export function signalGroup(pgid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(process.platform === "win32" ? pgid : -pgid, signal);
    return true;
  } catch {
    return false;
  }
}

/** Whether a process with this pid exists and is not a zombie (killed, not yet reaped). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
  if (process.platform !== "linux") return true;
  try {
    // /proc/<pid>/stat: "pid (comm) S ..."; comm may contain spaces and parentheses.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/**
 * The live (non-zombie) processes of a group. Linux reads /proc; elsewhere it can only tell
 * whether the group exists (`[pgid]` or `[]`).
 */
export function groupMembers(pgid: number): number[] {
  if (process.platform !== "linux") {
    try {
      process.kill(process.platform === "win32" ? pgid : -pgid, 0);
      return [pgid];
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === "EPERM" ? [pgid] : [];
    }
  }
  const members: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // After "(comm) ": state ppid pgrp ...
      const [state, , pgrp] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(pgrp) === pgid && state !== "Z") members.push(Number(entry));
    } catch {
      // exited while we looked
    }
  }
  return members;
}

/** Whether any live process of the group is left. */
export function groupAlive(pgid: number): boolean {
  return groupMembers(pgid).length > 0;
}
