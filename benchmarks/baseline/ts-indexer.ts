/**
 * A straightforward pure-TypeScript KV indexer with the same semantics as the Rust one
 * (contiguous-prefix overlap per worker), written as a competent Node developer would: a Map from
 * block key to the set of holders. It exists to be measured against in the same benchmark run.
 */
export class TsKvIndexer {
  private readonly holders = new Map<bigint, Set<string>>();

  applyStored(worker: string, hashes: BigUint64Array): void {
    for (const h of hashes) {
      let set = this.holders.get(h);
      if (!set) {
        set = new Set();
        this.holders.set(h, set);
      }
      set.add(worker);
    }
  }

  applyRemoved(worker: string, hashes: BigUint64Array): void {
    for (const h of hashes) {
      const set = this.holders.get(h);
      if (!set) continue;
      set.delete(worker);
      if (set.size === 0) this.holders.delete(h);
    }
  }

  /** For each worker holding the first block: how many leading blocks of the query it holds. */
  findMatches(hashes: BigUint64Array): Map<string, number> {
    const result = new Map<string, number>();
    let active: Set<string> | undefined;
    for (let i = 0; i < hashes.length; i++) {
      const set = this.holders.get(hashes[i]!);
      if (!set) break;
      if (active === undefined) {
        active = new Set(set);
      } else {
        for (const w of active) if (!set.has(w)) active.delete(w);
      }
      if (active.size === 0) break;
      for (const w of active) result.set(w, i + 1);
    }
    return result;
  }
}
