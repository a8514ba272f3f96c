/**
 * The agenda of the virtual-time replay: a binary min-heap of timed events, ties in insertion
 * order (so a run is a pure function of its inputs). Events are small records, not closures, so
 * the hot loop allocates one object per event and nothing else.
 *
 * Invariant: `heap[i]` is not later than its children `heap[2i+1]`, `heap[2i+2]` under (t, seq).
 */

import type { DirectBatch } from "./direct-batch.js";

export interface TimedEvent<K extends number = number> {
  t: number;
  seq: number;
  kind: K;
  /** The worker (index) the event concerns, or -1. */
  worker: number;
  payload: Buffer | DirectBatch | null;
}

export class EventQueue<K extends number = number> {
  private readonly heap: TimedEvent<K>[] = [];
  private seq = 0;

  get size(): number {
    return this.heap.length;
  }

  /** The time of the next event, or Infinity. */
  peekTime(): number {
    return this.heap.length === 0 ? Infinity : this.heap[0]!.t;
  }

  push(t: number, kind: K, worker = -1, payload: Buffer | DirectBatch | null = null): void {
    const h = this.heap;
    const e: TimedEvent<K> = { t, seq: this.seq++, kind, worker, payload };
    let i = h.length;
    h.push(e);
    while (i > 0) {
      const p = (i - 1) >> 1;
      const parent = h[p]!;
      if (parent.t < t || (parent.t === t && parent.seq < e.seq)) break;
      h[i] = parent;
      i = p;
    }
    h[i] = e;
  }

  pop(): TimedEvent<K> | undefined {
    const h = this.heap;
    const n = h.length;
    if (n === 0) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    if (n > 1) {
      const m = n - 1;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= m) break;
        const r = l + 1;
        let c = l;
        if (r < m && earlier(h[r]!, h[l]!)) c = r;
        if (!earlier(h[c]!, last)) break;
        h[i] = h[c]!;
        i = c;
      }
      h[i] = last;
    }
    return top;
  }
}

function earlier(a: TimedEvent, b: TimedEvent): boolean {
  return a.t < b.t || (a.t === b.t && a.seq < b.seq);
}
