/** Starts `kvroute mock` as a real process (node dist/cli.mjs mock ...) and waits for its ready line. */
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";

export const kvrouteCli = fileURLToPath(new URL("../../dist/cli.mjs", import.meta.url));

export interface MockerReady {
  url: string;
  port: number;
  kvEvents: { dpRank: number; endpoint: string; replayEndpoint: string | null }[];
}

export interface MockerProcess extends MockerReady {
  child: ChildProcess;
  /** SIGTERM and wait for the exit (a no-op once exited). */
  stop(): Promise<void>;
  /** What the process wrote to stderr so far. */
  stderr(): string;
}

export function startMocker(args: string[], env: Record<string, string> = {}): Promise<MockerProcess> {
  const child = spawn(process.execPath, [kvrouteCli, "mock", ...args], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
  };
  let out = "";
  let err = "";
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /kvroute mock: ready (\{.*\})\n/.exec(out);
      if (m) resolve({ child, stop, stderr: () => err, ...(JSON.parse(m[1]!) as MockerReady) });
    });
    child.once("exit", (code) => reject(new Error(`mock exited with ${code}: ${err}`)));
  });
}

/** A sample's value in Prometheus text (the first series of `name`). */
export function metric(text: string, name: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
  return line === undefined ? NaN : Number(line.slice(line.lastIndexOf(" ") + 1));
}
