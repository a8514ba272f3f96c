/**
 * Server-sent events as vLLM frames them (`data: <json>\n\n`, then `data: [DONE]\n\n`), split
 * from arbitrary TCP chunks into whole events. The gateway forwards whole events only, so that
 * when a worker dies mid-event the client never holds half an event and a migrated stream can
 * continue cleanly.
 */

const DELIMITER = Buffer.from("\n\n");
const DATA_PREFIX = "data: ";

/** Accumulates chunks and hands back the bytes of every complete event (delimiters included). */
export class SseSplitter {
  private pending: Buffer | null = null;

  /** Bytes held that do not end an event yet. */
  get pendingBytes(): number {
    return this.pending?.length ?? 0;
  }

  /**
   * Appends `chunk`; returns the prefix of the stream that ends on an event boundary (possibly
   * empty), keeping the rest for the next call.
   */
  push(chunk: Buffer): Buffer | null {
    let buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    // Search only where a new delimiter can be: the last byte of what was pending onwards.
    const from = this.pending ? Math.max(0, this.pending.length - 1) : 0;
    const first = buf.indexOf(DELIMITER, from);
    if (first < 0) {
      this.pending = buf;
      return null;
    }
    const last = buf.lastIndexOf(DELIMITER);
    const end = last + 2;
    if (end === buf.length) {
      this.pending = null;
      return buf;
    }
    const out = buf.subarray(0, end);
    // Copy the remainder so the (possibly large) chunk it came from can be freed.
    this.pending = Buffer.from(buf.subarray(end));
    buf = out;
    return buf;
  }

  /** What is left that is not a whole event (a stream cut in the middle of one). */
  takeRest(): Buffer | null {
    const rest = this.pending;
    this.pending = null;
    return rest;
  }
}

/** Calls `fn` with the data payload of each event in `bytes` (whole events). */
export function forEachData(bytes: Buffer, fn: (data: string) => void): void {
  const text = bytes.toString("utf8");
  let pos = 0;
  while (pos < text.length) {
    let end = text.indexOf("\n\n", pos);
    if (end < 0) end = text.length;
    // An event may have several lines; vLLM sends one `data:` line per event.
    let line = pos;
    while (line < end) {
      let eol = text.indexOf("\n", line);
      if (eol < 0 || eol > end) eol = end;
      if (text.startsWith(DATA_PREFIX, line)) fn(text.slice(line + DATA_PREFIX.length, eol));
      else if (text.startsWith("data:", line)) fn(text.slice(line + 5, eol));
      line = eol + 1;
    }
    pos = end + 2;
  }
}

export const DONE_DATA = "[DONE]";

export function sseEvent(payload: string): string {
  return `${DATA_PREFIX}${payload}\n\n`;
}
