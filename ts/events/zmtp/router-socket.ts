/**
 * ROUTER: every peer has a routing id — the Identity it announced in READY, or else one made up
 * here (a zero byte then a 32-bit counter, libzmq's form). Received messages get the sender's id
 * prepended as frame 0; a sent message's frame 0 names the peer to send the rest to. Messages to
 * an unknown peer, or to one at its high-water mark, are dropped (libzmq's default ROUTER).
 * A second peer announcing an id already in use is refused.
 */
import type { ZmtpPipe } from "./pipe.js";
import { ZmtpReceivingSocket, type ZmtpSocketOptions } from "./socket.js";
import { encodeMessage } from "./wire.js";

export class RouterSocket extends ZmtpReceivingSocket {
  private readonly byId = new Map<string, ZmtpPipe>();
  private readonly idOf = new Map<ZmtpPipe, Buffer>();
  private nextId = (Math.random() * 0x1_0000_0000) >>> 0;
  private dropped = 0;

  constructor(options?: ZmtpSocketOptions) {
    super("ROUTER", options);
  }

  /** Messages dropped because their peer was unknown or at its high-water mark. */
  get droppedCount(): number {
    return this.dropped;
  }

  /** Sends frames[1..] to the peer whose routing id is frames[0]; false when dropped. */
  send(frames: readonly Buffer[]): boolean {
    this.assertOpen();
    const pipe = frames[0] && this.byId.get(frames[0].toString("latin1"));
    if (!pipe || frames.length < 2 || !pipe.send(encodeMessage(frames.slice(1)))) {
      this.dropped++;
      return false;
    }
    return true;
  }

  protected attach(pipe: ZmtpPipe): boolean {
    let id = pipe.peerIdentity;
    if (id.length === 0) {
      do {
        id = Buffer.alloc(5);
        id.writeUInt32BE(this.nextId, 1);
        this.nextId = (this.nextId + 1) >>> 0;
      } while (this.byId.has(id.toString("latin1")));
    } else if (this.byId.has(id.toString("latin1"))) {
      return false;
    }
    this.byId.set(id.toString("latin1"), pipe);
    this.idOf.set(pipe, id);
    return true;
  }

  protected detach(pipe: ZmtpPipe): void {
    const id = this.idOf.get(pipe);
    this.idOf.delete(pipe);
    if (id) this.byId.delete(id.toString("latin1"));
  }

  protected onMessage(pipe: ZmtpPipe, frames: Buffer[]): void {
    const id = this.idOf.get(pipe);
    if (id) this.inbox.push([id, ...frames]);
  }
}
