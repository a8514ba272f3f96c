/**
 * PUB: sends every message to each subscriber whose subscriptions match its first frame (prefix
 * match, filtered here on the publisher side), never blocks, and DROPS a message for a
 * subscriber that already holds `sndHwm` unflushed messages: a slow subscriber costs bounded
 * memory and sees a gap, the others are unaffected (libzmq's PUB semantics).
 *
 * Subscriptions arrive as ZMTP 3.0 messages (`0x01` + prefix to subscribe, `0x00` + prefix to
 * cancel) or ZMTP 3.1 SUBSCRIBE / CANCEL commands; both are understood whatever the version.
 */
import { InvalidConfigError } from "../../errors.js";
import { ZmtpError } from "./errors.js";
import { FRAME_OVERHEAD, type ZmtpPipe } from "./pipe.js";
import { ZmtpSocket, type ZmtpSocketOptions } from "./socket.js";
import { encodeMessage, hasPrefix } from "./wire.js";

export interface PubSocketStats {
  /** Connected peers. */
  subscribers: number;
  /** Subscriptions (prefixes) held, summed over peers. */
  subscriptions: number;
  /** Messages written to at least one subscriber. */
  sent: number;
  /** (message, subscriber) pairs dropped because that subscriber was at its high-water mark. */
  dropped: number;
  /** Messages queued in node:net, summed over subscribers (never above subscribers x sndHwm). */
  queued: number;
  bufferedBytes: number;
}

/** A multiset of prefixes (libzmq counts duplicate subscriptions; CANCEL removes one). */
class Subscriptions {
  private readonly counts = new Map<string, { prefix: Buffer; count: number }>();
  /** Bytes held: prefixes plus FRAME_OVERHEAD each (bounded like a message). */
  bytes = 0;

  add(prefix: Buffer): void {
    const key = prefix.toString("latin1");
    const entry = this.counts.get(key);
    if (entry) entry.count++;
    else {
      this.counts.set(key, { prefix: Buffer.from(prefix), count: 1 });
      this.bytes += prefix.length + FRAME_OVERHEAD;
    }
  }

  remove(prefix: Buffer): void {
    const key = prefix.toString("latin1");
    const entry = this.counts.get(key);
    if (entry && --entry.count === 0) {
      this.counts.delete(key);
      this.bytes -= prefix.length + FRAME_OVERHEAD;
    }
  }

  get size(): number {
    return this.counts.size;
  }

  matches(topic: Buffer): boolean {
    for (const { prefix } of this.counts.values()) if (hasPrefix(topic, prefix)) return true;
    return false;
  }
}

export class PubSocket extends ZmtpSocket {
  private readonly subscriptions = new Map<ZmtpPipe, Subscriptions>();
  private sent = 0;
  private dropped = 0;
  private readonly maxSubscriptions: number;

  constructor(options?: ZmtpSocketOptions) {
    super("PUB", options);
    const max = options?.maxSubscriptions ?? 10_000;
    if (!Number.isInteger(max) || max < 1) throw new InvalidConfigError(`maxSubscriptions must be an integer >= 1, got ${max}`);
    this.maxSubscriptions = max;
  }

  /**
   * Publishes one message (frame 0 is the topic matched against subscriptions). Returns how many
   * subscribers it was queued for; drops count in stats().
   */
  send(frames: readonly Buffer[]): number {
    this.assertOpen();
    const topic = frames[0] ?? Buffer.alloc(0);
    let encoded: Buffer[] | undefined;
    let delivered = 0;
    for (const [pipe, subs] of this.subscriptions) {
      if (!subs.matches(topic)) continue;
      encoded ??= encodeMessage(frames);
      if (pipe.send(encoded)) delivered++;
      else this.dropped++;
    }
    if (delivered > 0) this.sent++;
    return delivered;
  }

  stats(): PubSocketStats {
    let queued = 0;
    let bufferedBytes = 0;
    let subscriptions = 0;
    for (const [pipe, subs] of this.subscriptions) {
      queued += pipe.queued;
      bufferedBytes += pipe.bufferedBytes;
      subscriptions += subs.size;
    }
    const { sent, dropped } = this;
    return { subscribers: this.subscriptions.size, subscriptions, sent, dropped, queued, bufferedBytes };
  }

  protected attach(pipe: ZmtpPipe): boolean {
    this.subscriptions.set(pipe, new Subscriptions());
    return true;
  }

  protected detach(pipe: ZmtpPipe): void {
    this.subscriptions.delete(pipe);
  }

  protected onMessage(pipe: ZmtpPipe, frames: Buffer[]): void {
    // ZMTP 3.0 subscriptions: single-frame messages whose first byte is 1 (subscribe) or 0 (cancel).
    const first = frames[0];
    if (frames.length !== 1 || !first || first.length === 0) return;
    if (first[0] === 1) this.subscribe(pipe, first.subarray(1));
    else if (first[0] === 0) this.subscriptions.get(pipe)?.remove(first.subarray(1));
  }

  protected override onCommand(pipe: ZmtpPipe, name: string, data: Buffer): void {
    if (name === "SUBSCRIBE") this.subscribe(pipe, data);
    else if (name === "CANCEL") this.subscriptions.get(pipe)?.remove(data);
  }

  /** A peer's subscriptions are bounded in count and bytes: past either, it is disconnected. */
  private subscribe(pipe: ZmtpPipe, prefix: Buffer): void {
    const subs = this.subscriptions.get(pipe);
    if (!subs) return;
    subs.add(prefix);
    if (subs.size > this.maxSubscriptions || subs.bytes > this.pipeOptions.maxMessageSize) {
      pipe.close(new ZmtpError("too-large", `peer holds more than ${this.maxSubscriptions} subscriptions or ${this.pipeOptions.maxMessageSize} bytes of them`));
    }
  }
}
