/**
 * ListWatch: a live copy of one Kubernetes collection (the informer pattern without the
 * machinery): list, then watch from the list's resourceVersion, so no change between the two is
 * missed. A watch the server ends (its timeout) resumes from the last resourceVersion seen
 * (bookmarks keep it fresh); a 410 Gone (that version was compacted away) lists again. There is no
 * polling: between watches only a failed connection waits, with backoff.
 *
 * Consumers see changes only: a relist is diffed against the copy and reported as the ADDED,
 * MODIFIED and DELETED events it amounts to.
 *
 * Invariant: `objects` is the collection as of `resourceVersion` (keyed by name).
 */
import { KubeApiError, type KubeClient, type KubeObject, type WatchEvent } from "./kube-client.js";

export type ChangeType = "ADDED" | "MODIFIED" | "DELETED";

export interface ListWatchOptions<T extends KubeObject> {
  client: KubeClient;
  /** The collection, e.g. `/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices`. */
  path: string;
  labelSelector?: string;
  onChange(type: ChangeType, object: T): void;
  log?: (message: string) => void;
  /** Backoff after a failed list or watch: doubles from min to max. Default 200 ms .. 5 s. */
  retryMinMs?: number;
  retryMaxMs?: number;
}

export interface ListWatchStats {
  lists: number;
  /** Watches opened (the first one included). */
  watches: number;
  /** 410 Gone answers (each one relists). */
  gone: number;
  /** Failed lists or watches (connection refused, 5xx, a malformed event...). */
  errors: number;
}

export class ListWatch<T extends KubeObject> {
  readonly objects = new Map<string, T>();
  resourceVersion = "";
  readonly stats: ListWatchStats = { lists: 0, watches: 0, gone: 0, errors: 0 };
  private readonly abort = new AbortController();
  private loop: Promise<void> | null = null;

  constructor(private readonly options: ListWatchOptions<T>) {}

  /** Lists (rejects if the first list fails: wrong credentials, no such namespace...), then watches. */
  async start(): Promise<this> {
    await this.relist();
    this.loop = this.run();
    return this;
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.loop;
  }

  private get selector(): Record<string, string> {
    return this.options.labelSelector ? { labelSelector: this.options.labelSelector } : {};
  }

  private async relist(): Promise<void> {
    const list = await this.options.client.list<T>(this.options.path, this.selector);
    this.stats.lists++;
    const seen = new Set<string>();
    for (const item of list.items) {
      const name = item.metadata.name;
      seen.add(name);
      const old = this.objects.get(name);
      this.objects.set(name, item);
      if (!old) this.options.onChange("ADDED", item);
      else if (old.metadata.resourceVersion !== item.metadata.resourceVersion) this.options.onChange("MODIFIED", item);
    }
    for (const [name, old] of [...this.objects]) {
      if (seen.has(name)) continue;
      this.objects.delete(name);
      this.options.onChange("DELETED", old);
    }
    this.resourceVersion = list.metadata.resourceVersion;
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal;
    let delay = this.options.retryMinMs ?? 200;
    let mustList = false;
    while (!signal.aborted) {
      try {
        if (mustList) {
          await this.relist();
          mustList = false;
        }
        this.stats.watches++;
        // Servers end a watch after timeoutSeconds; spread the reconnections of many replicas.
        const timeoutSeconds = 240 + Math.floor(Math.random() * 120);
        const events = this.options.client.watch<T>(this.options.path, { ...this.selector, resourceVersion: this.resourceVersion, timeoutSeconds }, signal);
        const opened = Date.now();
        let received = 0;
        for await (const event of events) {
          received++;
          if (this.apply(event) === "gone") {
            mustList = true;
            break;
          }
          delay = this.options.retryMinMs ?? 200;
        }
        // A watch that ends at once with nothing (a proxy closing it) must not spin.
        if (!mustList && received === 0 && Date.now() - opened < 1000) {
          await sleep(delay, signal);
          delay = Math.min(delay * 2, this.options.retryMaxMs ?? 5000);
        }
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof KubeApiError && err.status === 410) {
          this.stats.gone++;
          mustList = true;
          continue;
        }
        this.stats.errors++;
        this.options.log?.(`kubernetes watch ${this.options.path}: ${err instanceof Error ? err.message : String(err)}; retrying in ${delay} ms`);
        await sleep(delay, signal);
        delay = Math.min(delay * 2, this.options.retryMaxMs ?? 5000);
      }
    }
  }

  private apply(event: WatchEvent<T>): "ok" | "gone" {
    if (event.type === "ERROR") {
      const status = event.object as unknown as { code?: number; message?: string };
      if (status.code === 410) {
        this.stats.gone++;
        return "gone";
      }
      throw new KubeApiError(status.code ?? 0, "WatchError", `watch ${this.options.path}: ${status.message ?? "error event"}`);
    }
    const object = event.object;
    const rv = object?.metadata?.resourceVersion;
    if (typeof rv !== "string") throw new KubeApiError(0, "MalformedEvent", `watch ${this.options.path}: an event without metadata.resourceVersion`);
    this.resourceVersion = rv;
    if (event.type === "BOOKMARK") return "ok";
    const name = object.metadata.name;
    if (event.type === "DELETED") {
      if (this.objects.delete(name)) this.options.onChange("DELETED", object);
    } else if (event.type === "ADDED" || event.type === "MODIFIED") {
      const existed = this.objects.has(name);
      this.objects.set(name, object);
      this.options.onChange(existed ? "MODIFIED" : "ADDED", object);
    }
    return "ok";
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}
