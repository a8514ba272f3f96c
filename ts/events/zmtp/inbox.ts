/**
 * The receive queue of a socket: messages wait here until the application takes them.
 *
 * Bounded: when it holds `capacity` messages it asks its owner to stop reading from the network
 * (`onPressure(true)`; TCP then pushes back on the sender, and a PUB drops), and to read again once
 * it has drained to half (`onPressure(false)`). A chunk already read may still add a few messages
 * past capacity, never more than one socket read's worth.
 */
import { ZmtpError } from "./errors.js";

export interface ReceiveOptions {
  /** Resolve with null when nothing arrived within this many ms. */
  timeoutMs?: number;
}

type Waiter<T> = { resolve: (value: T | null) => void; reject: (err: Error) => void; timer?: NodeJS.Timeout };

export class Inbox<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private head = 0;
  private waiters: Waiter<T>[] = [];
  private paused = false;
  private closed = false;

  constructor(
    private readonly capacity: number,
    private readonly onPressure: (paused: boolean) => void,
  ) {}

  get size(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    if (this.closed) return;
    const waiter = this.waiters.shift();
    if (waiter) {
      clearTimeout(waiter.timer);
      waiter.resolve(item);
      return;
    }
    this.items.push(item);
    if (!this.paused && this.size >= this.capacity) {
      this.paused = true;
      this.onPressure(true);
    }
  }

  /** The next message; null on timeout; rejects with ZmtpError("closed") once closed. */
  receive(options: ReceiveOptions = {}): Promise<T | null> {
    if (this.size > 0) return Promise.resolve(this.shift());
    if (this.closed) return Promise.reject(new ZmtpError("closed", "socket closed"));
    return new Promise<T | null>((resolve, reject) => {
      const waiter: Waiter<T> = { resolve, reject };
      if (options.timeoutMs !== undefined) {
        waiter.timer = setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          resolve(null);
        }, Math.max(0, options.timeoutMs));
      }
      this.waiters.push(waiter);
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.items = [];
    this.head = 0;
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.reject(new ZmtpError("closed", "socket closed"));
    }
    this.waiters = [];
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      let item: T | null;
      try {
        item = await this.receive();
      } catch (err) {
        if (err instanceof ZmtpError && err.reason === "closed") return;
        throw err;
      }
      if (item !== null) yield item;
    }
  }

  private shift(): T {
    const item = this.items[this.head] as T;
    this.items[this.head] = undefined as T;
    this.head++;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    if (this.paused && this.size <= this.capacity >> 1) {
      this.paused = false;
      this.onPressure(false);
    }
    return item;
  }
}
