import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

/**
 * The gateway suites again with the native front (`front: "native"`): in-process gateways through
 * the alias below, `kvroute serve` children through KVROUTE_FRONT. Same behaviour, same tests.
 */
export default defineConfig({
  test: {
    include: [
      "__test__/gateway-*.test.ts",
      "__test__/tokenization-check.test.ts",
      "__test__/prompt-embeds-gateway.test.ts",
      "__test__/tokenizer-e2e.test.ts",
    ],
    // Already native throughout.
    exclude: ["__test__/gateway-native-front.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    env: { KVROUTE_FRONT: "native" },
  },
  resolve: {
    alias: [{ find: /^(\.\.\/)+ts\/gateway\/index\.js$/, replacement: fileURLToPath(new URL("./__test__/helpers/native-front-gateway.ts", import.meta.url)) }],
  },
});
