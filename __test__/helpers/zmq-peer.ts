/**
 * Drives __test__/helpers/zmq-peer.py: a real libzmq socket in a child process (Debian's
 * python3-zmq, installed by .ci/run), so the interop tests talk to libzmq and not to ourselves.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const SCRIPT = fileURLToPath(new URL("./zmq-peer.py", import.meta.url));

let python: string | undefined;

/** A Python 3 that can `import zmq` ($KVROUTE_PYTHON, the system one, or python3 on PATH). */
export function pythonWithZmq(): string {
  if (python) return python;
  const candidates = [process.env.KVROUTE_PYTHON, "/usr/bin/python3", "python3"].filter((c): c is string => !!c);
  for (const c of candidates) {
    const r = spawnSync(c, ["-c", "import zmq"], { stdio: "ignore" });
    if (r.status === 0) return (python = c);
  }
  throw new Error("no python3 with pyzmq found: install Debian's python3-zmq (apt-get install -y python3-zmq)");
}

export type PeerRole = "pub" | "xpub" | "sub" | "dealer" | "router" | "vllm";

interface PeerLine {
  event: string;
  endpoint?: string;
  replay_endpoint?: string | null;
  zmq?: string;
  frames?: string[];
  cmd?: string;
}

export class ZmqPeer {
  endpoint = "";
  replayEndpoint: string | null = null;
  zmqVersion = "";
  private readonly messages: Buffer[][] = [];
  private readonly waiters: ((line: PeerLine) => void)[] = [];
  private exited: Promise<void>;
  private stderr = "";

  private constructor(private readonly child: ChildProcess) {
    this.exited = new Promise((resolve) => child.once("exit", () => resolve()));
    child.stderr?.on("data", (d: Buffer) => {
      this.stderr += d.toString();
    });
    createInterface({ input: child.stdout! }).on("line", (text) => {
      const line = JSON.parse(text) as PeerLine;
      if (line.event === "message") this.messages.push((line.frames ?? []).map((h) => Buffer.from(h, "hex")));
      for (const w of this.waiters.splice(0)) w(line);
    });
  }

  /** Starts a peer and waits until its socket is bound or connecting. */
  static async start(role: PeerRole, mode: "bind" | "connect", endpoint: string, args: string[] = []): Promise<ZmqPeer> {
    const child = spawn(pythonWithZmq(), [SCRIPT, role, mode, endpoint, ...args], { stdio: ["pipe", "pipe", "pipe"] });
    const peer = new ZmqPeer(child);
    const ready = await peer.waitFor((l) => l.event === "ready", 10_000);
    peer.endpoint = ready.endpoint ?? "";
    peer.replayEndpoint = ready.replay_endpoint ?? null;
    peer.zmqVersion = ready.zmq ?? "";
    return peer;
  }

  /** Sends a command and waits for its acknowledgement. */
  async command(cmd: Record<string, unknown>): Promise<void> {
    const ack = this.waitFor((l) => l.event === "ok" && l.cmd === cmd.cmd, 10_000);
    this.child.stdin!.write(`${JSON.stringify(cmd)}\n`);
    await ack;
  }

  send(frames: (Buffer | string)[]): Promise<void> {
    return this.command({ cmd: "send", frames: frames.map((f) => Buffer.from(f).toString("hex")) });
  }

  /** Received messages so far (removed from the queue). */
  take(): Buffer[][] {
    return this.messages.splice(0);
  }

  /** Waits until `n` messages are queued, then returns them. */
  async messagesUntil(n: number, timeoutMs = 8000): Promise<Buffer[][]> {
    const deadline = Date.now() + timeoutMs;
    while (this.messages.length < n) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`peer got ${this.messages.length} of ${n} messages; stderr: ${this.stderr}`);
      await this.waitFor((l) => l.event === "message", left).catch(() => undefined);
    }
    return this.messages.splice(0, n);
  }

  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    await this.exited;
  }

  private waitFor(pred: (l: PeerLine) => boolean, timeoutMs: number): Promise<PeerLine> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`zmq peer: timed out; stderr: ${this.stderr}`)), timeoutMs);
      const onLine = (l: PeerLine) => {
        if (pred(l)) {
          clearTimeout(timer);
          resolve(l);
        } else {
          this.waiters.push(onLine);
        }
      };
      this.waiters.push(onLine);
      void this.exited.then(() => {
        clearTimeout(timer);
        reject(new Error(`zmq peer exited; stderr: ${this.stderr}`));
      });
    });
  }
}

/** Polls `cond`; the deadline only turns a hang into a clear message (the test timeout is 60 s). */
export async function waitUntil(cond: () => boolean, what: string, timeoutMs = 50_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** `n` consecutive free loopback TCP ports (vLLM's per-rank offsets need consecutive ones). */
export async function freePorts(n: number): Promise<number> {
  const { createServer } = await import("node:net");
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20000 + Math.floor(Math.random() * 40000);
    const servers = [];
    let ok = true;
    for (let i = 0; i < n && ok; i++) {
      const s = createServer();
      ok = await new Promise<boolean>((resolve) => {
        s.once("error", () => resolve(false));
        s.listen({ host: "127.0.0.1", port: base + i, exclusive: true }, () => resolve(true));
      });
      if (ok) servers.push(s);
    }
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
    if (ok) return base;
  }
  throw new Error("no free port range");
}
