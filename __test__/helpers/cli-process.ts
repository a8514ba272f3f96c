/**
 * `kvroute` CLI processes as a user runs them (`node dist/cli.mjs ...`): started, read until they
 * print `ready {json}`, and killed after each test by `stopCliProcesses()`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { connect } from "node:net";
import { fileURLToPath } from "node:url";

export const CLI = fileURLToPath(new URL("../../dist/cli.mjs", import.meta.url));

export interface CliProcess {
  child: ChildProcess;
  stderr: () => string;
  exit: Promise<number | null>;
  /** The JSON the command prints after `ready`. */
  readyPromise: Promise<any>;
}

const running: CliProcess[] = [];

export function kvroute(args: string[], env: NodeJS.ProcessEnv = {}): CliProcess {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stderr!.on("data", (d) => (err += d));
  const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const readyPromise = new Promise<any>((resolve, reject) => {
    child.stdout!.on("data", (d) => {
      out += d;
      const m = /ready (\{.*\})\n/.exec(out);
      if (m) resolve(JSON.parse(m[1]!));
    });
    void exit.then((code) => reject(new Error(`exited ${code} before ready:\n${err}`)));
  });
  readyPromise.catch(() => {});
  const r = { child, stderr: () => err, exit, readyPromise };
  running.push(r);
  return r;
}

/** Kills every CLI process a test left running. */
export function stopCliProcesses(): void {
  for (const c of running.splice(0)) if (c.child.exitCode === null) c.child.kill("SIGKILL");
}

export function portOpen(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const s = connect({ host: hostname, port: Number(port) });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}
