import { describe, expect, it } from "vitest";
import { native } from "../ts/index.js";
import pkg from "../package.json" with { type: "json" };

describe("native addon", () => {
  it("loads and reports the crate version matching package.json", () => {
    expect(native.nativeVersion()).toBe(pkg.version);
  });
});
