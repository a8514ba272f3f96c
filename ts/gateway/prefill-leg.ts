/**
 * The prefill leg of a disaggregated request at vLLM 0.33's NixlConnector protocol (what vLLM's
 * disaggregated proxy sends): the client's request with `kv_transfer_params` asking for a remote
 * decode, one output token, not streamed. The prefill worker answers with the
 * `kv_transfer_params` the decode leg passes on unchanged: `do_remote_prefill: true`,
 * `do_remote_decode: false`, `remote_block_ids`, `remote_engine_id`, `remote_request_id`,
 * `remote_host`, `remote_port`, `tp_size` (NixlConnectorScheduler.request_finished).
 */

/** The fields the decode worker's connector needs (update_state_after_alloc checks these). */
export const REQUIRED_DECODE_PARAMS = ["remote_block_ids", "remote_engine_id", "remote_request_id", "remote_host", "remote_port"] as const;

export function prefillLegBody(clientBody: Record<string, unknown>, model: string): Record<string, unknown> {
  const body: Record<string, unknown> = {
    ...clientBody,
    model,
    stream: false,
    max_tokens: 1,
    kv_transfer_params: {
      do_remote_decode: true,
      do_remote_prefill: false,
      remote_engine_id: null,
      remote_block_ids: null,
      remote_host: null,
      remote_port: null,
      remote_request_id: null,
    },
  };
  if ("max_completion_tokens" in body) body["max_completion_tokens"] = 1;
  delete body["stream_options"];
  // One output token: n > 1 or best_of would prefill once and sample several times for nothing.
  if ("n" in body) body["n"] = 1;
  return body;
}

/**
 * The `kv_transfer_params` of a prefill answer, when complete enough for the decode worker to
 * pull the blocks; null otherwise (the decode worker then prefills itself).
 */
export function decodeLegParams(answer: unknown): Record<string, unknown> | null {
  if (typeof answer !== "object" || answer === null) return null;
  const params = (answer as { kv_transfer_params?: unknown }).kv_transfer_params;
  if (typeof params !== "object" || params === null || Array.isArray(params)) return null;
  const p = params as Record<string, unknown>;
  if (!REQUIRED_DECODE_PARAMS.every((k) => k in p)) return null;
  return p;
}
