// Loads this platform's `.node` binary: the prebuilt package `kvroute-<platform>` that npm installs
// as an optional dependency (npm/<platform>/ in the repository) when its binary is there, else the
// napi-generated loader (index.js at the package root), which finds the one built in a checkout
// (`kvroute.<platform>.node`, `npm run build:native`). The same relative path works from ts/ (tests) and dist/
// (the built package). When no binary loads, one KvrouteError (KVR_NATIVE_LOAD) names the platform
// and what to do; the loader's own errors stay in its `cause`.
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, dirname, join } from "node:path";
import type * as Native from "../index.js";
import { KvrouteError } from "./errors.js";

const requireFromHere = createRequire(import.meta.url);

export const native: typeof Native = loadNative();

function loadNative(): typeof Native {
  // The platform package first (what an install from the registry has), then the generated
  // loader, which finds a binary built in this checkout.
  const pkg = `kvroute-${platformName()}`;
  if (installedBinary(pkg)) {
    try {
      return requireFromHere(pkg) as typeof Native;
    } catch (err) {
      throw new KvrouteError("KVR_NATIVE_LOAD", nativeLoadMessage(err), { cause: err });
    }
  }
  try {
    return requireFromHere("../index.js") as typeof Native;
  } catch (err) {
    throw new KvrouteError("KVR_NATIVE_LOAD", nativeLoadMessage(err), { cause: err });
  }
}

function nativeLoadMessage(err: unknown): string {
  const platform = platformName();
  const pkg = `kvroute-${platform}`;
  const prebuilt = prebuiltPlatforms();
  const installedMain = installedBinary(pkg);
  if (installedMain) {
    return (
      `kvroute: the native binary for ${platform} (${installedMain}) failed to load: ` +
      loadFailure(err, basename(installedMain))
    );
  }
  const fromSource = "or build it from source in a kvroute checkout (`npm run build`, needs Rust)";
  if (prebuilt.includes(platform)) {
    return (
      `kvroute: no native binary for ${platform}: the optional package ${pkg} is not installed. ` +
      `Reinstall kvroute without omitting optional dependencies (no --omit=optional, --no-optional ` +
      `or --ignore-optional), ${fromSource}.`
    );
  }
  return (
    `kvroute: no native binary for ${platform}: kvroute ships prebuilt binaries for ` +
    `${prebuilt.join(", ") || "no platform"}; ${fromSource.replace(/^or /, "")}.`
  );
}

/** napi-rs's name for this platform: linux-x64-gnu, darwin-arm64, win32-x64-msvc... */
function platformName(): string {
  const { platform, arch } = process;
  if (platform === "linux") return `linux-${arch}-${isMusl() ? "musl" : "gnu"}`;
  if (platform === "win32") return `win32-${arch}-msvc`;
  return `${platform}-${arch}`;
}

function isMusl(): boolean {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return report !== undefined && !report.header?.glibcVersionRuntime;
}

/** The platforms of the `kvroute-<platform>` optional dependencies in this package's package.json. */
function prebuiltPlatforms(): string[] {
  try {
    const pkg = JSON.parse(readFileSync(requireFromHere.resolve("../package.json"), "utf8")) as {
      optionalDependencies?: Record<string, string>;
    };
    return Object.keys(pkg.optionalDependencies ?? {})
      .filter((name) => name.startsWith("kvroute-"))
      .map((name) => name.slice("kvroute-".length));
  } catch {
    return [];
  }
}

/** The path of the platform package's binary when the package and its binary are both there. */
function installedBinary(pkg: string): string | undefined {
  try {
    const manifest = requireFromHere.resolve(`${pkg}/package.json`);
    const main = (JSON.parse(readFileSync(manifest, "utf8")) as { main?: string }).main;
    const binary = main ? join(dirname(manifest), main) : undefined;
    return binary && existsSync(binary) ? binary : undefined;
  } catch {
    return undefined;
  }
}

/** The message, in the loader's chain of errors, about `file` (the dlopen error), else the first. */
function loadFailure(err: unknown, file: string): string {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    if (e.message.includes(file)) return e.message;
  }
  return err instanceof Error ? err.message : String(err);
}
