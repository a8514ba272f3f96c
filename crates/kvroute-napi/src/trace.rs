//! Replay traces: a Mooncake record's prompt tokens (`kvroute_core::mooncake`).

use napi::bindgen_prelude::Uint32ArraySlice;
use napi_derive::napi;

/// Fills `out` (the prompt: input_length tokens) from a Mooncake record's `hash_ids`.
#[napi]
pub fn expand_hash_ids_into(hash_ids: Vec<f64>, mut out: Uint32ArraySlice) {
    // SAFETY: synchronous call on the JS thread, which is blocked until it returns; the slice
    // does not outlive the call.
    let out = unsafe { out.as_mut() };
    kvroute_core::mooncake::expand_hash_ids(&hash_ids, out);
}
