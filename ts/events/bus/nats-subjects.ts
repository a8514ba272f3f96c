/**
 * Names on NATS: the stream of a namespace, the subject of a (model, worker), the headers of a
 * record message. Pure functions, so docs/event-bus.md, the bus and tests agree on one scheme.
 *
 *   stream   KVROUTE_EVENTS_<namespace>
 *   subjects <prefix>.<namespace>.>                    (prefix: "kvroute.events")
 *   subject  <prefix>.<namespace>.<model>.<worker>
 *
 * Subject tokens and stream names keep `[A-Za-z0-9_-]` and turn every other character into `_`
 * (NATS forbids `.`, `*`, `>` and whitespace in a token; `/` and `\` in a stream name). Two names
 * may therefore share a subject; that is harmless, because the exact worker and model travel in
 * the headers and subscribers filter on them.
 */
import { InvalidConfigError } from "../../errors.js";

export const DEFAULT_SUBJECT_PREFIX = "kvroute.events";

/** Header names of a record message (the body is the vLLM payload; empty for a clear). */
export const HEADERS = {
  msgId: "Nats-Msg-Id",
  kind: "Kvr-Kind",
  worker: "Kvr-Worker",
  model: "Kvr-Model",
  dpRank: "Kvr-Dp-Rank",
  epoch: "Kvr-Epoch",
  seq: "Kvr-Seq",
  count: "Kvr-Count",
  reason: "Kvr-Reason",
} as const;

/** A name as one subject token (or stream-name part): `[A-Za-z0-9_-]+`. */
export function subjectToken(name: string): string {
  const token = name.replace(/[^A-Za-z0-9_-]/g, "_");
  return token.length > 0 ? token : "_";
}

/** `KVROUTE_EVENTS_<namespace>`. */
export function streamName(namespace: string): string {
  return `KVROUTE_EVENTS_${subjectToken(namespace)}`;
}

/** `<prefix>.<namespace>`: every subject of the namespace is below it. */
export function namespaceSubject(namespace: string, prefix = DEFAULT_SUBJECT_PREFIX): string {
  return `${checkPrefix(prefix)}.${subjectToken(namespace)}`;
}

/** `<prefix>.<namespace>.<model>.<worker>`. */
export function recordSubject(namespace: string, model: string, workerId: string, prefix = DEFAULT_SUBJECT_PREFIX): string {
  return `${namespaceSubject(namespace, prefix)}.${subjectToken(model)}.${subjectToken(workerId)}`;
}

/** Header values may not hold CR or LF: names are percent-encoded (`encodeURIComponent`). */
export function headerValue(name: string): string {
  return encodeURIComponent(name);
}

export function fromHeaderValue(value: string): string {
  return decodeURIComponent(value);
}

function checkPrefix(prefix: string): string {
  if (!/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/.test(prefix)) {
    throw new InvalidConfigError(`subject prefix must be dot-separated tokens of [A-Za-z0-9_-], got "${prefix}"`);
  }
  return prefix;
}
