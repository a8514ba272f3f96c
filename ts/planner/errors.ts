/**
 * Planner errors. A profile that cannot be read or trusted (`KVR_INVALID_PROFILE`) and a target
 * no profile can meet (`KVR_UNREACHABLE_TARGET`) are refused when the planner starts, so a bad
 * configuration never turns into silent under- or over-provisioning later.
 */
import { KvrouteError } from "../errors.js";

/** A performance profile is malformed: the message names the file and the field. */
export class ProfileError extends KvrouteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("KVR_INVALID_PROFILE", message, options);
  }
}

/** A latency target is zero, negative, or below what the profile can ever deliver. */
export class UnreachableTargetError extends KvrouteError {
  constructor(message: string) {
    super("KVR_UNREACHABLE_TARGET", message);
  }
}
