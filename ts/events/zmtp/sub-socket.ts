/**
 * SUB: receives the messages of every PUB it is connected to (or that connected to it) whose
 * first frame starts with one of its subscriptions. Subscriptions are sent to each peer when it
 * connects and whenever they change: as a SUBSCRIBE/CANCEL command to ZMTP 3.1 peers, as a
 * `0x01`/`0x00` + prefix message to 3.0 peers. Messages are filtered again on arrival, as libzmq
 * does, since a publisher need not filter.
 */
import type { ZmtpPipe } from "./pipe.js";
import { ZmtpReceivingSocket, type ZmtpSocketOptions } from "./socket.js";
import { encodeMessage, hasPrefix } from "./wire.js";

export class SubSocket extends ZmtpReceivingSocket {
  /** prefix (latin1) -> the prefix and how many times it was subscribed. */
  private readonly topics = new Map<string, { prefix: Buffer; count: number }>();

  constructor(options?: ZmtpSocketOptions) {
    super("SUB", options);
  }

  /** Receive messages whose first frame starts with `prefix` ("" = everything). */
  subscribe(prefix: Buffer | string = ""): void {
    const bytes = Buffer.from(prefix);
    const key = bytes.toString("latin1");
    const entry = this.topics.get(key);
    if (entry) {
      entry.count++;
      return;
    }
    this.topics.set(key, { prefix: bytes, count: 1 });
    for (const pipe of this.pipes) this.sendSubscription(pipe, bytes, true);
  }

  unsubscribe(prefix: Buffer | string = ""): void {
    const key = Buffer.from(prefix).toString("latin1");
    const entry = this.topics.get(key);
    if (!entry || --entry.count > 0) return;
    this.topics.delete(key);
    for (const pipe of this.pipes) this.sendSubscription(pipe, entry.prefix, false);
  }

  protected attach(pipe: ZmtpPipe): boolean {
    // Added to this.pipes right after; send the subscriptions directly to this one.
    for (const { prefix } of this.topics.values()) this.sendSubscription(pipe, prefix, true);
    return true;
  }

  protected detach(_pipe: ZmtpPipe): void {}

  protected onMessage(_pipe: ZmtpPipe, frames: Buffer[]): void {
    const topic = frames[0] as Buffer;
    for (const { prefix } of this.topics.values()) {
      if (hasPrefix(topic, prefix)) {
        this.inbox.push(frames);
        return;
      }
    }
  }

  private sendSubscription(pipe: ZmtpPipe, prefix: Buffer, subscribe: boolean): void {
    if (pipe.minor >= 1) {
      pipe.sendCommand(subscribe ? "SUBSCRIBE" : "CANCEL", prefix);
    } else {
      // A subscription is control traffic: it must not be lost to the high-water mark.
      pipe.sendControl(encodeMessage([Buffer.concat([Buffer.from([subscribe ? 1 : 0]), prefix])]));
    }
  }
}
