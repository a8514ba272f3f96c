/**
 * Engine profiles: a model on its GPUs, as the mocker's timing model and KV cache size. A profile
 * sets defaults only; explicit timing fields and `numGpuBlocks` override it. The derivations are
 * in docs/mocker.md ("Profiles"); they are order-of-magnitude numbers for routing experiments.
 */
import { InvalidConfigError } from "../errors.js";
import type { TimingModel } from "./config.js";
import { DYNAMO_POLYNOMIAL } from "./step-timing.js";

export interface EngineProfile {
  /** One line: the model, its parallelism and GPUs. */
  description: string;
  timing: Readonly<TimingModel>;
  /** KV blocks of 16 tokens per rank, as vLLM would size them (`gpu_memory_utilization` 0.9). */
  numGpuBlocks: number;
  /** KV cache bytes per token per rank (2 x layers x KV heads / TP x head dim x 2 bytes). */
  kvBytesPerToken: number;
}

const PROFILES = {
  /** The mocker's default. */
  "llama-3.1-8b-h100": {
    description: "Llama-3.1-8B, bf16, one H100 SXM",
    timing: Object.freeze({
      stepBaseMs: 6.0,
      prefillPerTokenMs: 0.035,
      attentionPerTokenPairMs: 1.2e-6,
      decodePerSeqMs: 0.035,
      decodePerContextTokenMs: 5.0e-5,
      kvTransferBaseMs: 2.0,
      kvTransferPerTokenMs: 0.006,
      // 128 KiB a token over PCIe 5 x16 at ~40 GB/s effective.
      cpuLoadPerTokenMs: 0.0033,
    }),
    numGpuBlocks: 26_000,
    kvBytesPerToken: 131_072,
  },
  "llama-3.1-70b-h100-tp4": {
    description: "Llama-3.1-70B, bf16, four H100 SXM (tensor parallel 4)",
    timing: Object.freeze({
      stepBaseMs: 14.0,
      prefillPerTokenMs: 0.089,
      attentionPerTokenPairMs: 1.66e-6,
      decodePerSeqMs: 0.089,
      decodePerContextTokenMs: 2.9e-5,
      kvTransferBaseMs: 2.0,
      kvTransferPerTokenMs: 0.0037,
      // 80 KiB a token per rank, each GPU on its own PCIe 5 x16 link.
      cpuLoadPerTokenMs: 0.002,
    }),
    numGpuBlocks: 26_000,
    kvBytesPerToken: 81_920,
  },
  /**
   * Dynamo's mocker default timing (its polynomial: ./step-timing.ts), to compare routing with
   * Dynamo's replay at equal engine timing. The linear terms are the polynomial's first-order
   * part, for estimates only.
   */
  "dynamo-polynomial": {
    description: "Dynamo mocker's default timing (polynomial prefill and decode)",
    timing: Object.freeze({
      stepBaseMs: 16.50142,
      prefillPerTokenMs: 0.01518344,
      attentionPerTokenPairMs: 0,
      decodePerSeqMs: 0,
      decodePerContextTokenMs: 0,
      kvTransferBaseMs: 2.0,
      kvTransferPerTokenMs: 0.0037,
      // As the 8B profile: Dynamo's mocker has no CPU tier of its own.
      cpuLoadPerTokenMs: 0.0033,
      polynomial: DYNAMO_POLYNOMIAL,
    }),
    numGpuBlocks: 26_000,
    kvBytesPerToken: 131_072,
  },
  /**
   * Fitted to a measured PyTorch forward pass with Llama-3.1-8B shapes on one H200 (random bf16
   * weights, chunked prefill, decode in CUDA graphs): scripts/profile-gpu/, docs/mocker.md.
   */
  "llama-3.1-8b-h200": {
    description: "Llama-3.1-8B, bf16, one H200 (fitted to a measured PyTorch forward pass, not vLLM)",
    timing: Object.freeze({
      stepBaseMs: 8.09,
      prefillPerTokenMs: 0.0251,
      attentionPerTokenPairMs: 1.8e-6,
      decodePerSeqMs: 0.0153,
      decodePerContextTokenMs: 2.89e-5,
      kvTransferBaseMs: 2.0,
      kvTransferPerTokenMs: 0.006,
      // 128 KiB a token over the H200's PCIe 5 x16 at ~40 GB/s effective (not measured).
      cpuLoadPerTokenMs: 0.0033,
    }),
    numGpuBlocks: 53_689,
    kvBytesPerToken: 131_072,
  },
} satisfies Record<string, EngineProfile>;

export type EngineProfileName = keyof typeof PROFILES;

export const ENGINE_PROFILE_NAMES = Object.keys(PROFILES) as EngineProfileName[];
export const DEFAULT_ENGINE_PROFILE: EngineProfileName = "llama-3.1-8b-h100";

/** The named profile; a clear `KVR_INVALID_CONFIG` listing the names otherwise. */
export function engineProfile(name: string): EngineProfile {
  if (!Object.hasOwn(PROFILES, name)) {
    throw new InvalidConfigError(`unknown engine profile ${JSON.stringify(name)} (expected one of ${ENGINE_PROFILE_NAMES.join(", ")})`);
  }
  return PROFILES[name as EngineProfileName];
}
