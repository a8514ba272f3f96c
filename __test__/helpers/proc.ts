/** Linux /proc readings of a process and its descendants, for tests that look past a CLI's pid. */
import { readdirSync, readFileSync } from "node:fs";

/** pid -> its child pids, for every process now running. */
function childrenByParent(): Map<number, number[]> {
  const children = new Map<number, number[]>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      // pid (comm) state ppid ...: comm may hold spaces, so read after its closing parenthesis.
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(name)]);
    } catch {
      // exited meanwhile
    }
  }
  return children;
}

/** Processes whose parent is `pid`. */
export function childPids(pid: number): number[] {
  return childrenByParent().get(pid) ?? [];
}

/** `pid` and every process below it. */
export function processTree(pid: number): number[] {
  const children = childrenByParent();
  const out: number[] = [];
  const walk = (p: number) => {
    out.push(p);
    for (const c of children.get(p) ?? []) walk(c);
  };
  walk(pid);
  return out;
}

/**
 * Resident memory of `pid` and its descendants, in bytes. `kvroute serve` runs the gateway in a
 * child of the process it was started as (ts/cli/heap-respawn.ts), so the gateway's RSS is there.
 */
export function treeRssBytes(pid: number): number {
  let kb = 0;
  for (const p of processTree(pid)) {
    try {
      kb += Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, "utf8"))?.[1] ?? 0);
    } catch {
      // exited meanwhile
    }
  }
  return kb * 1024;
}
