/**
 * A server binary started for a test under a small `sh` watchdog that holds the write end of a
 * pipe from this process: if the test process dies without stopping it (a killed worker, a
 * timeout), the pipe closes and the watchdog SIGKILLs the server, so nothing outlives its test.
 * (The same device as nats-server.ts, for any binary.)
 */
import { spawn, type ChildProcess } from "node:child_process";

const WATCHDOG = ["exec 3<&0", '"$0" "$@" &', "p=$!", 'echo "watched-pid $p" >&2', "(read _ <&3; kill -9 $p 2>/dev/null) &", "wait $p"].join("\n");

export interface WatchedProcess {
  readonly name: string;
  /** stdout and stderr so far, the last 256 KiB (for failure messages). */
  output(): string;
  /** True until the process exits. */
  readonly running: boolean;
  readonly exited: Promise<void>;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

const OUTPUT_LIMIT = 256 * 1024;

export function startWatched(name: string, binary: string, args: string[], options: { env: NodeJS.ProcessEnv; cwd?: string }): WatchedProcess {
  const child: ChildProcess = spawn("sh", ["-c", WATCHDOG, binary, ...args], { env: options.env, cwd: options.cwd, stdio: ["pipe", "pipe", "pipe"] });
  let log = "";
  let pid: number | null = null;
  let running = true;
  const onData = (d: Buffer) => {
    log += d.toString();
    if (log.length > OUTPUT_LIMIT) log = log.slice(-OUTPUT_LIMIT);
    pid ??= Number(/watched-pid (\d+)/.exec(log)?.[1]) || null;
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  void exited.then(() => {
    running = false;
    child.stdin?.end();
  });
  return {
    name,
    output: () => log,
    get running() {
      return running;
    },
    exited,
    async stop(signal: NodeJS.Signals = "SIGTERM") {
      if (!running) return;
      if (pid !== null) {
        try {
          process.kill(pid, signal);
        } catch {
          // already gone
        }
      } else {
        child.stdin?.end(); // not started yet: the watchdog kills it
      }
      await exited;
    },
  };
}
