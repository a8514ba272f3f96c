/**
 * A real `etcd` (Debian's etcd-server package, installed by .ci/run; override with $ETCD_BIN) for
 * the fleet tests: free loopback client and peer ports, a temp data directory, started and waited
 * for ("ready to serve client requests"), stopped with SIGTERM or SIGKILL and restarted on the same
 * ports and data (leases and keys survive, as in production). Runs under nats-server.ts's watchdog,
 * so no etcd outlives its test process. Optional TLS (server cert, client-cert auth).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, killQuietly, WATCHDOG } from "./nats-server.js";

let binary: string | undefined;

export function etcdBinary(): string {
  if (binary) return binary;
  for (const c of [process.env.ETCD_BIN, "etcd", "/usr/bin/etcd"]) {
    if (!c || (c.includes("/") && !existsSync(c))) continue;
    if (spawnSync(c, ["--version"], { stdio: "ignore" }).status === 0) return (binary = c);
  }
  throw new Error("etcd not found: install Debian's etcd-server (apt-get install -y etcd-server) or set ETCD_BIN");
}

export interface EtcdTlsFiles {
  ca: string;
  cert: string;
  key: string;
  /** Require client certificates signed by `ca`. */
  clientCertAuth?: boolean;
}

export interface EtcdServerOptions {
  tls?: EtcdTlsFiles;
  readyTimeoutMs?: number;
}

export class EtcdServer {
  private child: ChildProcess | null = null;
  private serverPid: number | null = null;
  private log = "";

  private constructor(
    readonly port: number,
    readonly peerPort: number,
    readonly dataDir: string,
    private readonly options: EtcdServerOptions,
  ) {}

  static async start(options: EtcdServerOptions = {}): Promise<EtcdServer> {
    const server = new EtcdServer(await freePort(), await freePort(), mkdtempSync(join(tmpdir(), "kvroute-etcd-")), options);
    await server.restart();
    return server;
  }

  /** `etcd://127.0.0.1:port` (`etcds://` with TLS), as `--registry` takes it. */
  get url(): string {
    return `${this.options.tls ? "etcds" : "etcd"}://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.child !== null;
  }

  get output(): string {
    return this.log;
  }

  async restart(): Promise<void> {
    if (this.child) return;
    const deadline = Date.now() + (this.options.readyTimeoutMs ?? 30_000);
    for (;;) {
      try {
        await this.spawnOnce(deadline);
        return;
      } catch (err) {
        if (Date.now() >= deadline) throw err;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  private spawnOnce(deadline: number): Promise<void> {
    const scheme = this.options.tls ? "https" : "http";
    const client = `${scheme}://127.0.0.1:${this.port}`;
    const peer = `http://127.0.0.1:${this.peerPort}`;
    const args = [
      "--name", "kvroute-test",
      "--data-dir", this.dataDir,
      "--listen-client-urls", client,
      "--advertise-client-urls", client,
      "--listen-peer-urls", peer,
      "--initial-advertise-peer-urls", peer,
      "--initial-cluster", `kvroute-test=${peer}`,
      "--log-level", "info",
    ];
    const tls = this.options.tls;
    if (tls) {
      args.push("--cert-file", tls.cert, "--key-file", tls.key, "--trusted-ca-file", tls.ca);
      if (tls.clientCertAuth) args.push("--client-cert-auth");
    }
    const child = spawn("sh", ["-c", WATCHDOG, etcdBinary(), ...args], { stdio: ["pipe", "pipe", "pipe"] });
    this.log = "";
    let pid: number | null = null;
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => fail(new Error(`etcd not ready in time:\n${this.log.slice(-4000)}`)), Math.max(0, deadline - Date.now()));
      const onData = (d: Buffer) => {
        if (this.log.length < 1_000_000) this.log += d.toString();
        pid ??= Number(/nats-server-pid (\d+)/.exec(this.log)?.[1]) || null;
        if (!settled && pid !== null && /ready to serve client requests|serving client requests on|serving insecure client requests/i.test(this.log)) {
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
        child.stdin?.end();
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
        fail(new Error(`etcd exited (${signal ?? code}) before it was ready:\n${this.log.slice(-4000)}`));
      });
    });
  }

  async stop(signal: "SIGTERM" | "SIGKILL" = "SIGTERM"): Promise<void> {
    const child = this.child;
    if (!child) return;
    const exited = new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.once("exit", () => resolve());
    });
    if (this.serverPid !== null) killQuietly(this.serverPid, signal);
    await exited;
    child.stdin?.end();
    this.child = null;
    this.serverPid = null;
  }

  async dispose(): Promise<void> {
    await this.stop("SIGKILL");
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
