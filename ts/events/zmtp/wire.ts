/**
 * ZMTP 3.x bytes (https://rfc.zeromq.org/spec/23/ and /spec/37/): the 64-byte greeting, frames,
 * commands and the NULL mechanism's READY metadata. Pure functions and one incremental decoder;
 * nothing here touches a socket.
 *
 * Frame: `flags (1) | size (1, or 8 big-endian when LONG) | body`. Flags: MORE (another frame of
 * the same message follows), LONG, COMMAND (a command, never part of a message).
 */
import { ZmtpError } from "./errors.js";

export const FLAG_MORE = 0x01;
export const FLAG_LONG = 0x02;
export const FLAG_COMMAND = 0x04;

export const GREETING_SIZE = 64;

export interface Greeting {
  major: number;
  minor: number;
  mechanism: string;
  asServer: boolean;
}

/** Our greeting: signature, version 3.`minor`, mechanism NULL, as-server 0, filler. */
export function encodeGreeting(minor: number): Buffer {
  const b = Buffer.alloc(GREETING_SIZE);
  b[0] = 0xff;
  b[9] = 0x7f;
  b[10] = 3;
  b[11] = minor;
  b.write("NULL", 12, "latin1");
  return b;
}

export function decodeGreeting(b: Buffer): Greeting {
  if (b.length < GREETING_SIZE || b[0] !== 0xff || ((b[9] ?? 0) & 0x01) !== 0x01) {
    throw new ZmtpError("protocol", "peer did not send a ZMTP 3 greeting");
  }
  const major = b[10] ?? 0;
  const minor = b[11] ?? 0;
  if (major < 3) throw new ZmtpError("unsupported", `peer speaks ZMTP ${major}.${minor}; only 3.x is supported`);
  const end = b.indexOf(0, 12);
  const mechanism = b.toString("latin1", 12, end < 0 || end > 32 ? 32 : end);
  return { major, minor, mechanism, asServer: b[32] === 1 };
}

function frameHeader(flags: number, size: number): Buffer {
  if (size <= 0xff) return Buffer.from([flags, size]);
  const h = Buffer.allocUnsafe(9);
  h[0] = flags | FLAG_LONG;
  h.writeBigUInt64BE(BigInt(size), 1);
  return h;
}

/** Messages up to this many bytes are written as one contiguous buffer (one copy, one write). */
const COALESCE_LIMIT = 16 * 1024;

/**
 * A multipart message as the chunks to write, in order. Small messages become one buffer; large
 * ones keep their bodies uncopied, each behind its own header. Encode once, write to many peers.
 */
export function encodeMessage(frames: readonly Buffer[]): Buffer[] {
  if (frames.length === 0) throw new ZmtpError("protocol", "a message needs at least one frame");
  let total = 0;
  for (const f of frames) total += f.length + (f.length > 0xff ? 9 : 2);
  const last = frames.length - 1;
  if (total <= COALESCE_LIMIT) {
    const out = Buffer.allocUnsafe(total);
    let at = 0;
    frames.forEach((f, i) => {
      const flags = i < last ? FLAG_MORE : 0;
      if (f.length > 0xff) {
        out[at] = flags | FLAG_LONG;
        out.writeBigUInt64BE(BigInt(f.length), at + 1);
        at += 9;
      } else {
        out[at] = flags;
        out[at + 1] = f.length;
        at += 2;
      }
      at += f.copy(out, at);
    });
    return [out];
  }
  const chunks: Buffer[] = [];
  frames.forEach((f, i) => {
    chunks.push(frameHeader(i < last ? FLAG_MORE : 0, f.length));
    if (f.length > 0) chunks.push(f);
  });
  return chunks;
}

/** A command frame: `name-size | name | data`. */
export function encodeCommand(name: string, data: Buffer = Buffer.alloc(0)): Buffer {
  const nameBytes = Buffer.from(name, "latin1");
  const body = Buffer.concat([Buffer.from([nameBytes.length]), nameBytes, data]);
  return Buffer.concat([frameHeader(FLAG_COMMAND, body.length), body]);
}

export function decodeCommand(body: Buffer): { name: string; data: Buffer } {
  const size = body[0];
  if (size === undefined || body.length < 1 + size) throw new ZmtpError("protocol", "truncated command frame");
  return { name: body.toString("latin1", 1, 1 + size), data: body.subarray(1 + size) };
}

/** READY / INITIATE metadata: `name-size(1) | name | value-size(4, BE) | value`, repeated. */
export function encodeProperties(props: Readonly<Record<string, Buffer | string>>): Buffer {
  const parts: Buffer[] = [];
  for (const [name, value] of Object.entries(props)) {
    const n = Buffer.from(name, "latin1");
    const v = typeof value === "string" ? Buffer.from(value, "latin1") : value;
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(v.length);
    parts.push(Buffer.from([n.length]), n, len, v);
  }
  return Buffer.concat(parts);
}

/** Property names are case-insensitive; the map is keyed by the lower-cased name. */
export function decodeProperties(data: Buffer): Map<string, Buffer> {
  const props = new Map<string, Buffer>();
  let at = 0;
  while (at < data.length) {
    const nameSize = data[at] ?? 0;
    if (at + 1 + nameSize + 4 > data.length) throw new ZmtpError("protocol", "truncated metadata property");
    const name = data.toString("latin1", at + 1, at + 1 + nameSize).toLowerCase();
    at += 1 + nameSize;
    const valueSize = data.readUInt32BE(at);
    at += 4;
    if (at + valueSize > data.length) throw new ZmtpError("protocol", "truncated metadata value");
    props.set(name, data.subarray(at, at + valueSize));
    at += valueSize;
  }
  return props;
}

/** ZeroMQ topic matching: does the message's first frame start with the subscribed prefix? */
export function hasPrefix(topic: Buffer, prefix: Buffer): boolean {
  return prefix.length <= topic.length && topic.compare(prefix, 0, prefix.length, 0, prefix.length) === 0;
}

export interface Frame {
  flags: number;
  body: Buffer;
}

/**
 * Incremental decoder: push socket chunks, pull whole greetings and frames. Buffers at most one
 * frame beyond what was pulled (plus the chunk it arrived in); bodies inside a single chunk are
 * zero-copy views of it.
 */
export class FrameDecoder {
  /** Unread bytes: chunks[first..] with the first `head` bytes of chunks[first] already read. */
  private chunks: Buffer[] = [];
  private first = 0;
  private head = 0;
  private size = 0;

  constructor(private readonly maxFrameSize: number) {}

  /** Bytes received and not yet pulled. */
  get buffered(): number {
    return this.size;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.size += chunk.length;
  }

  /** The greeting, once 64 bytes have arrived. */
  nextGreeting(): Greeting | null {
    return this.size < GREETING_SIZE ? null : decodeGreeting(this.take(GREETING_SIZE));
  }

  /** The next complete frame, or null until more bytes arrive. */
  nextFrame(): Frame | null {
    if (this.size < 2) return null;
    const flags = this.byteAt(0);
    let headerSize = 2;
    let bodySize: number;
    if (flags & FLAG_LONG) {
      if (this.size < 9) return null;
      headerSize = 9;
      let n = 0n;
      for (let i = 1; i < 9; i++) n = (n << 8n) | BigInt(this.byteAt(i));
      if (n > BigInt(this.maxFrameSize)) {
        throw new ZmtpError("too-large", `frame of ${n} bytes exceeds maxMessageSize ${this.maxFrameSize}`);
      }
      bodySize = Number(n);
    } else {
      bodySize = this.byteAt(1);
    }
    if (this.size < headerSize + bodySize) return null;
    this.skip(headerSize);
    return { flags, body: this.take(bodySize) };
  }

  private byteAt(i: number): number {
    let at = this.head + i;
    for (let c = this.first; c < this.chunks.length; c++) {
      const chunk = this.chunks[c] as Buffer;
      if (at < chunk.length) return chunk[at] ?? 0;
      at -= chunk.length;
    }
    return 0;
  }

  private skip(n: number): void {
    this.size -= n;
    while (n > 0) {
      const left = (this.chunks[this.first] as Buffer).length - this.head;
      if (n < left) {
        this.head += n;
        return;
      }
      n -= left;
      this.first++;
      this.head = 0;
    }
    if (this.first === this.chunks.length) {
      this.chunks = [];
      this.first = 0;
    } else if (this.first > 64 && this.first * 2 > this.chunks.length) {
      this.chunks = this.chunks.slice(this.first);
      this.first = 0;
    }
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[this.first] as Buffer;
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.skip(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[this.first] as Buffer;
      const copied = c.copy(out, at, this.head, Math.min(c.length, this.head + (n - at)));
      at += copied;
      this.skip(copied);
    }
    return out;
  }
}
