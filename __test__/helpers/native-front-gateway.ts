/**
 * `ts/gateway/index.js` as the gateway suites see it under vitest.native-front.config.ts: the
 * same exports, with `startGateway` defaulting to `front: "native"`, so every gateway test also
 * runs with the native front owning the port (crates/kvroute-front) and the JS gateway behind it.
 */
import * as gateway from "../../ts/gateway/index.ts";

export * from "../../ts/gateway/index.ts";

export const startGateway: typeof gateway.startGateway = (input, options) =>
  gateway.startGateway({ front: "native", ...(input as object) } as Parameters<typeof gateway.startGateway>[0], options);
