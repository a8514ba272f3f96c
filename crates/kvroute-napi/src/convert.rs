//! Conversions between JS-facing option objects and core types, and error mapping.

use kvroute_core::extra_keys::{ExtraKeys, MmFeature};
use napi_derive::napi;

/// Maps a core error to a JS error whose message starts with its stable code.
pub fn to_napi(err: kvroute_core::Error) -> napi::Error {
    napi::Error::new(napi::Status::InvalidArg, err.to_string())
}

pub fn invalid_input(message: impl std::fmt::Display) -> napi::Error {
    napi::Error::new(
        napi::Status::InvalidArg,
        format!("KVR_INVALID_INPUT: {message}"),
    )
}

pub fn invalid_config(message: impl std::fmt::Display) -> napi::Error {
    napi::Error::new(
        napi::Status::InvalidArg,
        format!("KVR_INVALID_CONFIG: {message}"),
    )
}

#[napi(object)]
pub struct MmFeatureInput {
    pub hash: String,
    pub offset: u32,
    pub length: u32,
}

/// Per-request extra keys mixed into block hashes.
#[napi(object)]
pub struct ExtraKeysInput {
    pub lora_name: Option<String>,
    /// vLLM >= 0.33 hashes the adapter path next to its name (engine keying only).
    pub lora_path: Option<String>,
    /// First block only.
    pub cache_salt: Option<String>,
    pub mm: Option<Vec<MmFeatureInput>>,
    /// Prompt embeddings: per full block its 32-byte digest, concatenated (`loadPromptEmbeds`).
    pub prompt_embeds: Option<napi::bindgen_prelude::Buffer>,
}

pub fn extra_keys(input: Option<ExtraKeysInput>) -> napi::Result<ExtraKeys> {
    let Some(input) = input else {
        return Ok(ExtraKeys::default());
    };
    Ok(ExtraKeys {
        prompt_embeds: match &input.prompt_embeds {
            Some(b) => crate::embeds::digests(b)?,
            None => Vec::new(),
        },
        lora_name: input.lora_name,
        lora_path: input.lora_path,
        cache_salt: input.cache_salt,
        mm: input
            .mm
            .unwrap_or_default()
            .into_iter()
            .map(|f| MmFeature::new(f.hash, f.offset as usize, f.length as usize))
            .collect(),
    })
}
