/**
 * How deeply a parsed JSON value nests, found without recursion: JSON.parse copes with any depth,
 * but every recursive walk after it (JSON.stringify when the body is re-serialized, error messages)
 * overflows the stack on a body of 20,000 nested arrays. Bodies deeper than the limit are refused
 * at the edge instead.
 */

/** Deepest nesting accepted in a request body (serde_json's limit, which the tokenizer applies too). */
export const MAX_JSON_DEPTH = 128;

/**
 * The top-level key under which `value` (an object) nests deeper than `maxDepth` levels (the body
 * itself is level 1), or null when it does not.
 */
export function tooDeepField(value: Record<string, unknown>, maxDepth = MAX_JSON_DEPTH): string | null {
  for (const [key, child] of Object.entries(value)) {
    if (exceeds(child, maxDepth - 1)) return key;
  }
  return null;
}

/** Whether `root` holds containers more than `levels` deep (a scalar is 0 deep). */
function exceeds(root: unknown, levels: number): boolean {
  if (typeof root !== "object" || root === null) return false;
  // An explicit stack of (container, depth); scalars are never pushed.
  const stack: { v: object; d: number }[] = [{ v: root, d: 1 }];
  while (stack.length > 0) {
    const { v, d } = stack.pop()!;
    if (d > levels) return true;
    const children = Array.isArray(v) ? v : Object.values(v);
    for (const c of children) if (typeof c === "object" && c !== null) stack.push({ v: c, d: d + 1 });
  }
  return false;
}
