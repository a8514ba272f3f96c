/**
 * The NixlConnector's request-level protocol (vLLM 0.33, pull mode) as an engine core speaks it:
 * which `kv_transfer_params` make a request a remote prefill (decode side), the params a
 * prefill-only request hands back (prefill side), and the engine id they name. The bytes
 * themselves move in ./nixl-kv.ts (through `KvTransferHooks`), or are priced by the timing model.
 */
import type { ResolvedMockEngineConfig } from "./config.js";
import type { CoreRequest } from "./core-request.js";

/** Moves a disaggregated request's KV for real (ts/mocker/nixl-kv.ts implements it). */
export interface KvTransferHooks {
  /** Prefill side: a prefill-only request finished; its blocks hold its KV. */
  produced(blocks: readonly number[], tokens: Uint32Array, promptLen: number, blockSize: number): void;
  /** Decode side: pulls the remote blocks from `firstBlock` on into `localBlocks`; false: it failed. */
  pull(params: Record<string, unknown> | null, localBlocks: readonly number[], firstBlock: number, tokens: Uint32Array, promptLen: number, blockSize: number): Promise<boolean>;
}

/** The engine id a rank's params name: the configured one, per rank under data parallelism. */
export function nixlEngineId(config: ResolvedMockEngineConfig, rank: number): string | null {
  const kt = config.kvTransfer;
  return kt ? (config.dataParallelSize > 1 ? `${kt.engineId}_dp${rank}` : kt.engineId) : null;
}

/** Decode side: the params of a request whose prompt KV is pulled from a prefill engine, or null. */
export function remotePrefillParams(config: ResolvedMockEngineConfig, kt: Record<string, unknown> | null): Record<string, unknown> | null {
  if (config.kvTransfer && kt?.do_remote_prefill === true) {
    const ids = kt.remote_block_ids;
    const complete = ["remote_engine_id", "remote_request_id", "remote_host", "remote_port"].every((k) => k in kt);
    if (Array.isArray(ids) && ids.flat().length > 0 && complete) return kt;
  }
  return null;
}

/** Prefill side: the producer's `kv_transfer_params` (NixlConnector pull mode, vLLM 0.33). */
export function producerTransferParams(req: CoreRequest, config: ResolvedMockEngineConfig, engineId: string | null, rank: number): Record<string, unknown> {
  const kt = config.kvTransfer!;
  return {
    do_remote_prefill: true,
    do_remote_decode: false,
    remote_block_ids: [req.blocks.slice()],
    remote_engine_id: engineId ?? kt.engineId,
    remote_request_id: req.id,
    remote_host: config.nixlSideChannelHost,
    remote_port: config.nixlSideChannelPort + rank,
    tp_size: 1,
    dcp_size: 1,
    pp_size: 1,
    remote_num_tokens: req.numComputed,
    remote_blocks_expiry_time: null,
    remote_registration_generation: 0,
    transfer_mode: "pull",
  };
}
