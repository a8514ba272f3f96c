/**
 * The JSON-lines commands (`kvroute hash`, `kvroute tokenize`): every non-blank stdin line is one
 * input and gives one output line. All or nothing: the first bad line is named on stderr
 * (`<command>: line N: reason`), the exit code is 2, and nothing is written to stdout.
 */
import { readStdin } from "./args.js";

/** Parses one line as a JSON object; throws with what is wrong (`expected` says what it should be). */
export function parseObjectLine(text: string, expected: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`invalid JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new Error(`expected ${expected}`);
  return value as Record<string, unknown>;
}

/** Maps every non-blank stdin line through `map` (which throws for a bad line); the exit code. */
export async function mapStdinLines(command: string, map: (text: string) => string): Promise<number> {
  const lines = (await readStdin()).split("\n");
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const text = lines[i]!.trim();
    if (text === "") continue;
    try {
      out.push(map(text));
    } catch (err) {
      console.error(`${command}: line ${i + 1}: ${err instanceof Error ? err.message : String(err)}`);
      return 2;
    }
  }
  if (out.length > 0) process.stdout.write(out.join("\n") + "\n");
  return 0;
}
