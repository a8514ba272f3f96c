/**
 * DEALER: sends each message to one peer in turn (round robin over peers below their high-water
 * mark) and receives from all of them, frames as sent (no envelope). While no peer is connected,
 * up to `sndHwm` messages wait and go to the first peer that completes its handshake, as libzmq
 * queues on a connecting pipe; past that send() refuses.
 */
import type { ZmtpPipe } from "./pipe.js";
import { ZmtpReceivingSocket, type ZmtpSocketOptions } from "./socket.js";
import { encodeMessage } from "./wire.js";

export class DealerSocket extends ZmtpReceivingSocket {
  private waiting: Buffer[][] = [];
  private next = 0;

  constructor(options?: ZmtpSocketOptions) {
    super("DEALER", options);
  }

  /** Queues a message for one peer. Returns false (nothing sent) when every queue is full. */
  send(frames: readonly Buffer[]): boolean {
    this.assertOpen();
    const encoded = encodeMessage(frames);
    const peers = [...this.pipes];
    for (let i = 0; i < peers.length; i++) {
      const pipe = peers[(this.next + i) % peers.length] as ZmtpPipe;
      if (pipe.send(encoded)) {
        this.next = (this.next + i + 1) % peers.length;
        return true;
      }
    }
    if (peers.length > 0 || this.waiting.length >= this.pipeOptions.sndHwm) return false;
    this.waiting.push(encoded);
    return true;
  }

  protected attach(pipe: ZmtpPipe): boolean {
    const waiting = this.waiting;
    this.waiting = [];
    for (const encoded of waiting) pipe.send(encoded);
    return true;
  }

  protected detach(_pipe: ZmtpPipe): void {}

  protected onMessage(_pipe: ZmtpPipe, frames: Buffer[]): void {
    this.inbox.push(frames);
  }
}
