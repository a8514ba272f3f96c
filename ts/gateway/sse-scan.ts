/**
 * The streaming fast path: most events of a vLLM stream are one choice's next token, and all the
 * gateway needs from them is that token's ids (to count them and, for migration, remember them)
 * and, when the client did not ask for ids, the same event with them nulled. A scan of the event
 * text does both without a JSON parse and re-serialisation per event.
 *
 * Exactness: in valid JSON a quote inside a string is escaped, so `,"token_ids":` (a comma or
 * brace, optional spaces, then the unescaped quote) can only be a key. Anything the scan is not
 * sure of (errors, aborts, the role chunk, usage, several choices, the prompt's ids, text
 * without ids) returns null and takes the full parse. A false "not sure" only costs time.
 */

/** A `token_ids`/`prompt_token_ids` key with its array (or null) value. */
const IDS = /([{,]\s*)"(prompt_token_ids|token_ids)"\s*:\s*(null|\[[0-9,\s]*\])/g;

/** Substrings that send an event to the full parse. */
const NEEDS_PARSE = ['"error"', '"abort"', '"role"', '"usage":{', '"prompt_token_ids":['];

export interface ScannedEvent {
  /** The event's data, ids nulled when asked to. */
  data: string;
  /** The one choice's new token ids. */
  tokenIds: number[];
}

/** Scans one event's data; null when it needs the full parse. */
export function scanTokenEvent(data: string, stripIds: boolean): ScannedEvent | null {
  if (data.charCodeAt(0) !== 0x7b /* { */) return null;
  for (const mark of NEEDS_PARSE) if (data.includes(mark)) return null;
  const seen: { count: number; ids: number[] | null } = { count: 0, ids: null };
  const out = data.replace(IDS, (whole: string, lead: string, name: string, value: string) => {
    if (name === "token_ids") {
      seen.count++;
      if (value !== "null") seen.ids = parseIdList(value);
    }
    return stripIds && value !== "null" ? `${lead}"${name}":null` : whole;
  });
  if (seen.count !== 1 || seen.ids === null) return null;
  return { data: out, tokenIds: seen.ids };
}

function parseIdList(list: string): number[] {
  const out: number[] = [];
  let n = -1;
  for (let i = 1; i < list.length; i++) {
    const c = list.charCodeAt(i);
    if (c >= 0x30 && c <= 0x39) n = (n < 0 ? 0 : n * 10) + (c - 0x30);
    else if (n >= 0) {
      out.push(n);
      n = -1;
    }
  }
  return out;
}
