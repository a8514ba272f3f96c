/**
 * Just enough of the Prometheus text format for the planner: sample values by family name (summed
 * over label sets, or filtered by one label), and a histogram's cumulative buckets.
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parseSamples(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line.length === 0 || line.startsWith("#")) continue;
    const m = LINE.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    if (m[3]) for (const l of m[3].matchAll(LABEL)) labels[l[1]!] = l[2]!;
    const value = Number(m[4]);
    if (Number.isNaN(value) && m[4] !== "NaN") continue;
    out.push({ name: m[1]!, labels, value });
  }
  return out;
}

/** The sum of a family's samples (optionally only those whose labels match `where`). */
export function sum(samples: readonly Sample[], name: string, where: Record<string, string> = {}): number {
  let v = 0;
  for (const s of samples) {
    if (s.name !== name) continue;
    if (Object.entries(where).some(([k, want]) => s.labels[k] !== want)) continue;
    v += s.value;
  }
  return v;
}

/** Cumulative bucket counts by upper bound (summed over other labels), sorted by bound. */
export function buckets(samples: readonly Sample[], histogram: string): [number, number][] {
  const by = new Map<number, number>();
  for (const s of samples) {
    if (s.name !== `${histogram}_bucket`) continue;
    const le = s.labels["le"] === "+Inf" ? Infinity : Number(s.labels["le"]);
    by.set(le, (by.get(le) ?? 0) + s.value);
  }
  return [...by.entries()].sort((a, b) => a[0] - b[0]);
}

/** The q-quantile of the observations between two cumulative snapshots (linear within a bucket). */
export function quantileBetween(before: [number, number][], after: [number, number][], q: number): number | null {
  const prev = new Map(before);
  const delta = after.map(([le, c]) => [le, c - (prev.get(le) ?? 0)] as [number, number]);
  const total = delta.length > 0 ? delta[delta.length - 1]![1] : 0;
  if (!(total > 0)) return null;
  const rank = q * total;
  let lo = 0;
  let below = 0;
  for (const [le, c] of delta) {
    if (c >= rank) {
      if (le === Infinity) return lo;
      const inBucket = c - below;
      return inBucket > 0 ? lo + ((rank - below) / inBucket) * (le - lo) : le;
    }
    lo = le;
    below = c;
  }
  return lo;
}
