/**
 * A real `nats-server -js` for the event-bus tests and the NATS benchmark: a free loopback port,
 * a temp store directory, started and waited for ("Server is ready" on its log), stopped with
 * SIGTERM or SIGKILL, and restarted on the same port with the same store (JetStream recovers its
 * streams from it). Debian's nats-server package, installed by .ci/run; override with
 * $NATS_SERVER_BIN.
 *
 * The server runs under a small `sh` watchdog that holds the write end of a pipe from this
 * process: if this process dies without stopping the server (a killed test worker, a timeout),
 * the pipe closes and the watchdog SIGKILLs the server, so no nats-server outlives its test.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

let binary: string | undefined;

/**
 * `sh -c WATCHDOG nats-server args...`: starts the server, prints its pid, waits for it; a
 * background reader of our stdin (fd 3: an async list's own stdin is /dev/null) kills it at EOF.
 */
export const WATCHDOG = [
  "exec 3<&0",
  '"$0" "$@" &',
  "p=$!",
  'echo "nats-server-pid $p"',
  "(read _ <&3; kill -9 $p 2>/dev/null) &",
  "wait $p",
].join("\n");

/** The nats-server executable ($NATS_SERVER_BIN, on PATH, or Debian's /usr/sbin/nats-server). */
export function natsServerBinary(): string {
  if (binary) return binary;
  const candidates = [process.env.NATS_SERVER_BIN, "nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"];
  for (const c of candidates) {
    if (!c) continue;
    if (c.includes("/") && !existsSync(c)) continue;
    const r = spawnSync(c, ["--version"], { stdio: "ignore" });
    if (r.status === 0) return (binary = c);
  }
  throw new Error("nats-server not found: install Debian's nats-server (apt-get install -y nats-server) or set NATS_SERVER_BIN");
}

/** A TCP port that was free on 127.0.0.1 a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface NatsServerOptions {
  /** Default: a free port. */
  port?: number;
  /** JetStream store directory. Default: a new temp directory, removed by `dispose()`. */
  storeDir?: string;
  /** How long to wait for "Server is ready". Default 20 s. */
  readyTimeoutMs?: number;
  /** More server flags, e.g. `["--auth", "token"]` or `["--user", "u", "--pass", "p"]`. */
  extraArgs?: string[];
}

export class NatsServer {
  /** The watchdog shell; it exits when the server does. */
  private child: ChildProcess | null = null;
  private serverPid: number | null = null;
  private log = "";
  private readonly ownsStore: boolean;

  private constructor(
    readonly port: number,
    readonly storeDir: string,
    ownsStore: boolean,
    private readonly readyTimeoutMs: number,
    private readonly extraArgs: string[] = [],
  ) {
    this.ownsStore = ownsStore;
  }

  /** Starts a server and waits until it accepts clients with JetStream enabled. */
  static async start(options: NatsServerOptions = {}): Promise<NatsServer> {
    const port = options.port ?? (await freePort());
    const storeDir = options.storeDir ?? mkdtempSync(join(tmpdir(), "kvroute-nats-"));
    const server = new NatsServer(port, storeDir, options.storeDir === undefined, options.readyTimeoutMs ?? 20_000, options.extraArgs ?? []);
    await server.restart();
    return server;
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.child !== null;
  }

  /** What the server logged so far (for failure messages). */
  get output(): string {
    return this.log;
  }

  /** (Re)starts the server on the same port and store. A no-op when it is running. */
  async restart(): Promise<void> {
    if (this.child) return;
    const deadline = Date.now() + this.readyTimeoutMs;
    // After a SIGKILL the port may take a moment to be free again: retry until the deadline.
    for (;;) {
      try {
        await this.spawnOnce(deadline);
        return;
      } catch (err) {
        if (Date.now() >= deadline) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  private spawnOnce(deadline: number): Promise<void> {
    const args = ["-js", "-a", "127.0.0.1", "-p", String(this.port), "-sd", this.storeDir, "-n", `kvroute-test-${this.port}`, ...this.extraArgs];
    const child = spawn("sh", ["-c", WATCHDOG, natsServerBinary(), ...args], { stdio: ["pipe", "pipe", "pipe"] });
    this.log = "";
    let pid: number | null = null;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => fail(new Error(`nats-server not ready in time:\n${this.log}`)), Math.max(0, deadline - Date.now()));
      const onData = (d: Buffer) => {
        this.log += d.toString();
        pid ??= Number(/nats-server-pid (\d+)/.exec(this.log)?.[1]) || null;
        if (!settled && pid !== null && this.log.includes("Server is ready")) {
          settled = true;
          clearTimeout(timer);
          this.child = child;
          this.serverPid = pid;
          resolve();
        }
      };
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (pid !== null) killQuietly(pid, "SIGKILL");
        child.stdin?.end(); // the watchdog kills the server if it has not printed its pid yet
        reject(err);
      };
      child.stdout?.on("data", onData);
      child.stderr?.on("data", onData);
      child.once("error", fail);
      child.once("exit", (code, signal) => {
        if (this.child === child) {
          this.child = null;
          this.serverPid = null;
        }
        child.stdin?.end();
        fail(new Error(`nats-server exited (${signal ?? code}) before it was ready:\n${this.log}`));
      });
    });
  }

  /** Stops the server (SIGTERM: clean shutdown; SIGKILL: a crash) and waits for it to exit. */
  async stop(signal: "SIGTERM" | "SIGKILL" = "SIGTERM"): Promise<void> {
    const child = this.child;
    if (!child) return;
    const exited = new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.once("exit", () => resolve());
    });
    if (this.serverPid !== null) killQuietly(this.serverPid, signal);
    await exited; // the watchdog's `wait` returns when the server is gone
    child.stdin?.end();
    this.child = null;
    this.serverPid = null;
  }

  /** Stops the server and removes the store directory it created. */
  async dispose(): Promise<void> {
    await this.stop("SIGKILL");
    if (this.ownsStore) rmSync(this.storeDir, { recursive: true, force: true });
  }
}

export function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}
