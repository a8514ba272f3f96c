//! Per-request extra keys (LoRA name, cache salt, multimodal features) and the per-block extra
//! keys derived from them, with the same rules as vLLM's `generate_block_hash_extra_keys`.
//! STUB: to be filled in (owner: hashing work).

/// A multimodal input placeholder: its content hash and where it sits in the token sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmFeature {
    pub hash: String,
    pub offset: usize,
    pub length: usize,
}

/// Extra keys of a whole request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraKeys {
    pub lora_name: Option<String>,
    pub cache_salt: Option<String>,
    pub mm: Vec<MmFeature>,
}
