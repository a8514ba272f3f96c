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
 *
 * When nobody asked the engine for ids (no migration, no parity check, no client asking), its
 * events carry text only, and `scanTextEvent` counts their one token the same way.
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

/** The keys `scanTextEvent` looks at, with the first character of their value. */
const TEXT_KEYS = /[{,]\s*"(text|content|token_ids|index)"\s*:\s*(.)/g;

/**
 * Counts the tokens of an event without ids (`token_ids` absent or null, as vLLM sends them) as
 * the full parse does: one for a choice with non-empty `text` or `delta.content`, none otherwise.
 * Null when it needs the full parse: the markers above, logprobs, ids, several choices (or tool
 * calls: more than one `index`), or more than one text field.
 */
export function scanTextEvent(data: string): number | null {
  if (data.charCodeAt(0) !== 0x7b /* { */) return null;
  for (const mark of NEEDS_PARSE) if (data.includes(mark)) return null;
  if (data.includes('"logprobs":{')) return null;
  let index = 0;
  let texts = 0;
  let tokens = 0;
  for (const m of data.matchAll(TEXT_KEYS)) {
    const key = m[1];
    if (key === "token_ids") {
      if (m[2] !== "n") return null; // ids: the other scan's case; vLLM sends `null` otherwise
    } else if (key === "index") index++;
    else {
      texts++;
      // A string value that is not empty: its first character is not the closing quote.
      if (m[2] === '"' && data.charCodeAt(m.index + m[0].length) !== 0x22) tokens = 1;
    }
  }
  return index === 1 && texts <= 1 ? tokens : null;
}
