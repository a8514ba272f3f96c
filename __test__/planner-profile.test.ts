/**
 * Planner profiles: our JSON and Dynamo's raw_data.npz (written by NumPy itself, see
 * scripts/golden/make-dynamo-npz.sh) load to the same numbers; interpolation between points is
 * checked by hand; bad profiles and unreachable, zero or negative targets are refused up front
 * with a clear typed error.
 */
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ProfileError, UnreachableTargetError } from "../ts/planner/errors.js";
import { ProfileModel } from "../ts/planner/interpolate.js";
import { readNpz } from "../ts/planner/npz.js";
import { loadProfile, parseProfile, profileToJson } from "../ts/planner/profile.js";
import { validateTargets } from "../ts/planner/targets.js";

const GOLDEN = "fixtures/golden/planner";
const expected = JSON.parse(readFileSync(join(GOLDEN, "expected.json"), "utf8")) as Record<string, number[]> & { dtypes: Record<string, number[]> };

/** A small profile whose interpolated values are easy to compute by hand. */
export const HAND_PROFILE = {
  prefill_isl: [1000, 2000],
  prefill_ttft: [100, 200],
  prefill_thpt_per_gpu: [10000, 10000],
  x_kv_usage: [0, 0.5, 1, 0, 0.5, 1],
  y_context_length: [1000, 1000, 1000, 3000, 3000, 3000],
  z_itl: [10, 20, 40, 20, 40, 80],
  z_thpt_per_gpu: [100, 1000, 1500, 50, 500, 750],
  max_kv_tokens: 100000,
};

function tmpFile(name: string, text: string | Buffer): string {
  const dir = mkdtempSync(join(tmpdir(), "kvr-profile-"));
  const f = join(dir, name);
  writeFileSync(f, text);
  return f;
}

describe("Dynamo's raw_data.npz", () => {
  it("reads NumPy's compressed and stored archives, every field exact", () => {
    const p = readNpz(readFileSync(join(GOLDEN, "selected_prefill_interpolation/raw_data.npz")));
    expect(Array.from(p.get("prefill_isl")!.data)).toEqual(expected["prefill_isl"]);
    expect(Array.from(p.get("prefill_ttft")!.data)).toEqual(expected["prefill_ttft"]);
    const d = readNpz(readFileSync(join(GOLDEN, "selected_decode_interpolation/raw_data.npz")));
    expect(Array.from(d.get("z_itl")!.data)).toEqual(expected["z_itl"]);
    expect(Array.from(d.get("max_kv_tokens")!.data)).toEqual(expected["max_kv_tokens"]);
  });

  it("reads float32, int32, big-endian and Fortran-ordered arrays", () => {
    const a = readNpz(readFileSync(join(GOLDEN, "dtypes.npz")));
    for (const k of ["f32", "i32", "be64", "fortran"]) expect(Array.from(a.get(k)!.data)).toEqual(expected.dtypes[k]);
    expect(a.get("fortran")!.shape).toEqual([2, 3]);
  });

  it("loads a Dynamo results folder as a profile", () => {
    const p = loadProfile(GOLDEN);
    expect(p.prefill.isl).toEqual(expected["prefill_isl"]);
    expect(p.decode.kvUsage).toEqual(expected["x_kv_usage"]);
    expect(p.maxKvTokens).toBe(859038);
    expect(p.gpusPerWorker).toBe(1);
  });

  it("a truncated or foreign file is a ProfileError, not a crash", () => {
    const buf = readFileSync(join(GOLDEN, "selected_decode_interpolation/raw_data.npz"));
    expect(() => readNpz(buf.subarray(0, 200), "cut.npz")).toThrow(ProfileError);
    expect(() => readNpz(Buffer.from("hello world, not a zip at all"), "x.npz")).toThrow(/not a readable .npz/);
    const f = tmpFile("bad.npz", buf.subarray(0, buf.length - 30));
    expect(() => loadProfile(f)).toThrow(ProfileError);
  });
});

describe("our JSON", () => {
  it("round-trips through profileToJson, flat or nested", () => {
    const p = parseProfile(HAND_PROFILE, "hand");
    const again = loadProfile(tmpFile("p.json", JSON.stringify(profileToJson(p))));
    expect(again.prefill).toEqual(p.prefill);
    expect(again.decode).toEqual(p.decode);
    const nested = { prefill: { prefill_isl: [1000], prefill_ttft: [50], prefill_thpt_per_gpu: [20000] }, decode: { x_kv_usage: [0.5], y_context_length: [1000], z_itl: [9], z_thpt_per_gpu: [900] }, max_kv_tokens: [5000] };
    const n = loadProfile(tmpFile("n.json", JSON.stringify(nested)));
    expect(n.prefill.ttftMs).toEqual([50]);
    expect(n.maxKvTokens).toBe(5000);
  });

  it.each([
    [{ prefill_isl: undefined }, /missing prefill_isl/],
    [{ prefill_ttft: [100] }, /same length/],
    [{ prefill_ttft: [100, -5] }, /prefill_ttft\[1\] must be > 0/],
    [{ prefill_thpt_per_gpu: [10000, "fast"] }, /prefill_thpt_per_gpu\[1\] is not a finite number/],
    [{ prefill_isl: [1000, 1000] }, /lists 1000 twice/],
    [{ x_kv_usage: [0, 0.5, 1, 0, 0.5, 7] }, /x_kv_usage\[5\] must be in \[0, 1\]/],
    [{ z_itl: [10, 0, 40, 20, 40, 80] }, /z_itl\[1\] must be > 0/],
    [{ max_kv_tokens: 0 }, /max_kv_tokens must be a positive integer/],
    [{ gpus_per_worker: 1.5 }, /gpus_per_worker/],
  ])("refuses a bad field %#", (patch, message) => {
    const f = tmpFile("bad.json", JSON.stringify({ ...HAND_PROFILE, ...patch }));
    expect(() => loadProfile(f)).toThrow(ProfileError);
    expect(() => loadProfile(f)).toThrow(message);
  });

  it("refuses what is not a profile", () => {
    expect(() => loadProfile("/nonexistent/profile.json")).toThrow(/no such file/);
    expect(() => loadProfile(tmpFile("x.json", "{not json"))).toThrow(/not JSON/);
    expect(() => loadProfile(tmpFile("x.json", "[1,2]"))).toThrow(/JSON object/);
    expect(() => loadProfile(mkdtempSync(join(tmpdir(), "kvr-empty-")))).toThrow(/profile folder holds/);
  });
});

describe("interpolation (hand-computed)", () => {
  const m = new ProfileModel(parseProfile(HAND_PROFILE, "hand"));

  it("prefill: linear between points, clamped below, TTFT proportional above", () => {
    expect(m.prefill.ttftMs(1500)).toBeCloseTo(150, 9);
    expect(m.prefill.ttftMs(500)).toBe(100);
    expect(m.prefill.ttftMs(4000)).toBeCloseTo(400, 9);
    expect(m.prefill.thptPerGpu(1234)).toBe(10000);
  });

  it("decode: linear in KV usage, then between context lengths", () => {
    // context 2100 lies 0.55 of the way from 1000 to 3000.
    expect(m.decode.itlMs(0, 2100)).toBeCloseTo(0.45 * 10 + 0.55 * 20, 9);
    expect(m.decode.itlMs(0.75, 2100)).toBeCloseTo(0.45 * 30 + 0.55 * 60, 9);
    expect(m.decode.thptPerGpu(0.25, 1000)).toBeCloseTo(550, 9);
    expect(m.decode.itlMs(0.5, 99999)).toBe(40);
  });

  it("best decode throughput under an ITL budget", () => {
    // ITL at 2100: 15.5 + 31 kv (kv <= 0.5), 31 + 62 (kv - 0.5) above: <= 35 up to kv 0.5645; the scan's step is 0.005.
    const best = m.decode.bestThroughput(35, 2100);
    expect(best.kvUsage).toBeCloseTo(0.56, 9);
    expect(best.thptPerGpu).toBeCloseTo(0.45 * 1060 + 0.55 * 530, 6);
    expect(m.decode.bestThroughput(5, 2100).thptPerGpu).toBe(0);
  });
});

describe("targets", () => {
  const m = new ProfileModel(parseProfile(HAND_PROFILE, "hand.json"));
  it("accepts reachable targets", () => {
    expect(validateTargets(m, { ttftMs: 500, itlMs: 35 })).toEqual({ ttftMs: 500, itlMs: 35 });
  });
  it.each([
    [{ ttftMs: 0, itlMs: 35 }, /TTFT target must be a number of milliseconds > 0/],
    [{ ttftMs: -3, itlMs: 35 }, /TTFT target must be/],
    [{ ttftMs: 500, itlMs: 0 }, /ITL target must be/],
    [{ ttftMs: 500, itlMs: Number.NaN }, /ITL target must be/],
    [{ ttftMs: 500 }, /ITL target is required/],
    [{ ttftMs: 80, itlMs: 35 }, /TTFT target 80 ms is out of reach: the fastest prefill in hand.json takes 100.0 ms/],
    [{ ttftMs: 500, itlMs: 9 }, /ITL target 9 ms is out of reach: the fastest decode step in hand.json takes 10.00 ms/],
  ])("refuses %j", (t, message) => {
    expect(() => validateTargets(m, t)).toThrow(UnreachableTargetError);
    expect(() => validateTargets(m, t)).toThrow(message);
    try {
      validateTargets(m, t);
    } catch (err) {
      expect((err as UnreachableTargetError).code).toBe("KVR_UNREACHABLE_TARGET");
    }
  });
});
