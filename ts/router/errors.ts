/** Errors of the router. */
import { KvrouteError, type KvrouteErrorCode } from "../errors.js";

const NO_WORKER: KvrouteErrorCode = "KVR_NO_WORKER";

/**
 * Why no worker could be chosen: the model is not known (no worker ever registered for it and no
 * `models` entry: a gateway answers 404), it has no worker now, or every worker it has was
 * excluded or has another role (503).
 */
export type NoWorkerReason = "unknown_model" | "no_workers" | "all_excluded";

/** `KVR_NO_WORKER`: `route()` had no candidate. */
export class NoWorkerError extends KvrouteError {
  readonly model: string;
  readonly reason: NoWorkerReason;
  constructor(model: string, reason: NoWorkerReason) {
    const why =
      reason === "unknown_model"
        ? "is not served by any registered worker"
        : reason === "no_workers"
          ? "has no registered worker"
          : "has no worker left after exclusions and role filtering";
    super(NO_WORKER, `model ${JSON.stringify(model)} ${why}`);
    this.model = model;
    this.reason = reason;
  }
}
