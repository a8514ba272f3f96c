//! `loadPromptEmbeds`: a `torch.save` payload checked and keyed as vLLM would
//! ([`kvroute_core::prompt_embeds`]).

use kvroute_core::prompt_embeds::{load, EmbedsDtype, EmbedsLimits};
use napi::bindgen_prelude::{Buffer, Uint8ArraySlice};
use napi_derive::napi;

use crate::convert::{invalid_config, invalid_input};

#[napi(object)]
pub struct PromptEmbedsInfo {
    pub rows: u32,
    pub hidden: u32,
    /// The dtype it was sent in (torch's name, e.g. "float32").
    pub sent_dtype: String,
    /// Per full block, the 32-byte sha256 vLLM keys it with, concatenated.
    pub digests: Buffer,
}

/// Reads `payload` (the decoded `torch.save` bytes) for a model running in `model_dtype`
/// (float32, float16, bfloat16). Errors: `KVR_INVALID_INPUT: ` + vLLM's text for the client.
#[napi]
pub fn load_prompt_embeds(
    payload: Uint8ArraySlice,
    model_dtype: String,
    block_size: u32,
    max_bytes: f64,
    hidden_size: Option<u32>,
) -> napi::Result<PromptEmbedsInfo> {
    let dtype = EmbedsDtype::parse(&model_dtype)
        .ok_or_else(|| invalid_config(format!("unsupported model dtype {model_dtype:?}")))?;
    if block_size == 0 {
        return Err(invalid_config("block size must be positive"));
    }
    let limits = EmbedsLimits {
        max_bytes: if max_bytes.is_finite() && max_bytes >= 0.0 {
            max_bytes as u64
        } else {
            u64::MAX
        },
        hidden_size: hidden_size.map(|h| h as usize),
    };
    let e = load(&payload, dtype, limits).map_err(invalid_input)?;
    let digests = e.block_digests(block_size as usize).concat();
    Ok(PromptEmbedsInfo {
        rows: u32::try_from(e.rows)
            .map_err(|_| invalid_input("`prompt_embeds` has too many rows"))?,
        hidden: e.hidden as u32,
        sent_dtype: e.sent_dtype.to_owned(),
        digests: digests.into(),
    })
}

/// Per-block digests from their concatenation (32 bytes each).
pub fn digests(concat: &[u8]) -> napi::Result<Vec<[u8; 32]>> {
    if !concat.len().is_multiple_of(32) {
        return Err(invalid_input("prompt-embeds digests must be 32 bytes each"));
    }
    Ok(concat
        .chunks_exact(32)
        .map(|c| c.try_into().unwrap())
        .collect())
}
