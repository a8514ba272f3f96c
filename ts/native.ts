// Loads the napi-generated loader (index.js at the package root), which picks the per-platform
// `.node` binary. The same relative path works from ts/ (tests) and dist/ (the built package).
import { createRequire } from "node:module";
import type * as Native from "../index.js";

const requireFromHere = createRequire(import.meta.url);
export const native: typeof Native = requireFromHere("../index.js");
