/**
 * A worker's output, line by line: each complete line goes to the logger and into a small ring
 * of recent lines (for error messages). Bounded: a line longer than `maxLineBytes` is cut and
 * passed on in pieces, so a process that never prints a newline cannot grow memory.
 */
import { StringDecoder } from "node:string_decoder";
import type { Readable } from "node:stream";

export type WorkerLogStream = "stdout" | "stderr" | "supervisor";

/** Receives every line a worker prints, and the supervisor's own messages about it. */
export type WorkerLogger = (line: string, meta: { workerId: string; stream: WorkerLogStream }) => void;

/** The default logger: `[worker-id] line` on the parent's stderr. */
export const stderrLogger: WorkerLogger = (line, { workerId }) => {
  process.stderr.write(`[${workerId}] ${line}\n`);
};

export class RecentLines {
  private readonly lines: string[] = [];
  constructor(private readonly capacity: number) {}
  push(line: string): void {
    this.lines.push(line);
    if (this.lines.length > this.capacity) this.lines.shift();
  }
  last(n = this.capacity): string[] {
    return this.lines.slice(-n);
  }
}

/** Reads `stream` as UTF-8 lines until it ends, calling `onLine` for each (CRLF and a final partial line included). */
export function forEachLine(stream: Readable, onLine: (line: string) => void, maxLineBytes = 64 * 1024): void {
  const decoder = new StringDecoder("utf8");
  let partial = "";
  const emit = (line: string) => onLine(line.endsWith("\r") ? line.slice(0, -1) : line);
  stream.on("data", (chunk: Buffer) => {
    partial += decoder.write(chunk);
    let nl: number;
    while ((nl = partial.indexOf("\n")) >= 0) {
      emit(partial.slice(0, nl));
      partial = partial.slice(nl + 1);
    }
    while (partial.length > maxLineBytes) {
      emit(partial.slice(0, maxLineBytes));
      partial = partial.slice(maxLineBytes);
    }
  });
  stream.on("end", () => {
    partial += decoder.end();
    if (partial.length > 0) emit(partial);
    partial = "";
  });
  stream.on("error", () => {});
}
