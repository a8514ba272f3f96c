//! `NativeTokenizer`: a model folder's tokenizer and chat template (kvroute-tokenizer), one call
//! per prompt. Chat requests cross as JSON text or the request body's bytes, so the gateway never
//! builds a JS object graph for Rust to walk.

use std::path::Path;
use std::sync::Arc;

use kvroute_tokenizer::{
    ModelTokenizer, DEFAULT_CACHE_TOKENS, DEFAULT_CONVERSATION_CACHE_BYTES,
    DEFAULT_TEXT_PREFIX_CACHE_BYTES,
};
use napi::bindgen_prelude::{Buffer, Uint32Array, Uint32ArraySlice};
use napi_derive::napi;

use crate::convert::{invalid_input, to_napi};
use crate::openai::OpenAiRequestFields;

#[napi(object)]
pub struct NativeTokenizerOptions {
    /// Token ids the chat segment cache holds at most (default 4,194,304).
    pub cache_tokens: Option<u32>,
    /// Bytes the conversation cache holds at most (default 64 MiB; 0 turns it off).
    pub conversation_cache_bytes: Option<f64>,
    /// Bytes the text prefix cache holds at most: long completions texts reuse the ids of a
    /// prefix shared with an earlier text (default 16 MiB; 0 turns it off).
    pub text_prefix_cache_bytes: Option<f64>,
}

#[napi(object)]
pub struct TokenizerCacheStats {
    pub hits: f64,
    pub misses: f64,
    pub pieces: u32,
    pub tokens: u32,
    /// Pieces dropped from the segment cache to stay within `cacheTokens`.
    pub evictions: f64,
    /// Chat prompts that reused the ids of their conversation's previous turn, and those that did not.
    pub conversation_hits: f64,
    pub conversation_misses: f64,
    /// Conversations dropped from the conversation cache to stay within its bytes.
    pub conversation_evictions: f64,
    pub conversation_bytes: f64,
    /// Texts of 1 KiB or more that reused the ids of a prefix shared with an earlier text, those
    /// that did not, and the ids so reused.
    pub text_prefix_hits: f64,
    pub text_prefix_misses: f64,
    pub text_prefix_reused_tokens: f64,
    /// Texts dropped from the text prefix cache to stay within its bytes.
    pub text_prefix_evictions: f64,
    pub text_prefix_bytes: f64,
}

#[napi]
pub struct NativeTokenizer {
    inner: Arc<ModelTokenizer>,
}

fn parse_request(bytes: &[u8]) -> napi::Result<serde_json::Value> {
    serde_json::from_slice(bytes)
        .map_err(|e| invalid_input(format!("chat request is not valid JSON: {e}")))
}

#[napi]
impl NativeTokenizer {
    #[napi(factory)]
    pub fn from_dir(dir: String, options: Option<NativeTokenizerOptions>) -> napi::Result<Self> {
        let cache = options
            .as_ref()
            .and_then(|o| o.cache_tokens)
            .map_or(DEFAULT_CACHE_TOKENS, |n| n as usize);
        let conversations = options
            .as_ref()
            .and_then(|o| o.conversation_cache_bytes)
            .map_or(DEFAULT_CONVERSATION_CACHE_BYTES, |n| n.max(0.0) as usize);
        let text_prefixes = options
            .and_then(|o| o.text_prefix_cache_bytes)
            .map_or(DEFAULT_TEXT_PREFIX_CACHE_BYTES, |n| n.max(0.0) as usize);
        let inner = ModelTokenizer::from_dir_with_cache(Path::new(&dir), cache)
            .map_err(to_napi)?
            .with_conversation_cache(conversations)
            .with_text_prefix_cache(text_prefixes);
        Ok(NativeTokenizer {
            inner: Arc::new(inner),
        })
    }

    #[napi(getter)]
    pub fn has_chat_template(&self) -> bool {
        self.inner.has_chat_template()
    }

    /// Whether the fast byte-level BPE path encodes this model's text.
    #[napi(getter)]
    pub fn fast_path(&self) -> bool {
        self.inner.fast_path()
    }

    /// The hand-written renderer of the chat template ("qwen3", "llama3"), or null: minijinja
    /// renders it.
    #[napi(getter)]
    pub fn native_template(&self) -> Option<&'static str> {
        self.inner.native_template().map(|t| t.name())
    }

    /// Whether chat prompts are encoded incrementally through the segment cache.
    #[napi(getter)]
    pub fn incremental(&self) -> bool {
        self.inner.incremental()
    }

    #[napi]
    pub fn encode(&self, text: String, add_special_tokens: bool) -> napi::Result<Uint32Array> {
        let ids = self
            .inner
            .encode(&text, add_special_tokens)
            .map_err(to_napi)?;
        Ok(Uint32Array::new(ids))
    }

    /// The `tokenizers` crate's own path, without the fast encoder (benchmarks, parity checks).
    #[napi]
    pub fn encode_general(
        &self,
        text: String,
        add_special_tokens: bool,
    ) -> napi::Result<Uint32Array> {
        let ids = self
            .inner
            .encode_general(&text, add_special_tokens)
            .map_err(to_napi)?;
        Ok(Uint32Array::new(ids))
    }

    /// A chat request (JSON text of an OpenAI `/v1/chat/completions` body) to its prompt text.
    #[napi]
    pub fn render_chat(&self, request_json: String) -> napi::Result<String> {
        let request = parse_request(request_json.as_bytes())?;
        Ok(self.inner.render_chat(&request).map_err(to_napi)?.0)
    }

    /// A chat request (JSON text, or the body's bytes) to the token ids vLLM computes for it.
    #[napi]
    pub fn encode_chat(&self, request: napi::Either<String, Buffer>) -> napi::Result<Uint32Array> {
        let bytes: &[u8] = match &request {
            napi::Either::A(text) => text.as_bytes(),
            napi::Either::B(bytes) => bytes,
        };
        let ids = self.inner.encode_chat_bytes(bytes).map_err(to_napi)?;
        Ok(Uint32Array::new(ids))
    }

    /// A completions (`chat` false) or chat body's routing fields and its prompt's token ids, in
    /// one call (see `readOpenaiRequest`). Undefined: the gateway's general path takes the body.
    #[napi]
    pub fn read_request(&self, body: Buffer, chat: bool) -> Option<OpenAiRequestFields> {
        let (fields, tokens) = self.inner.read_request(&body, chat)?;
        Some(crate::openai::to_js(fields, tokens))
    }

    /// Token ids back to text, special tokens kept.
    #[napi]
    pub fn decode(&self, ids: Uint32ArraySlice) -> String {
        self.inner.decode(&ids)
    }

    #[napi]
    pub fn cache_stats(&self) -> TokenizerCacheStats {
        let s = self.inner.cache_stats();
        TokenizerCacheStats {
            hits: s.hits as f64,
            misses: s.misses as f64,
            pieces: s.pieces as u32,
            tokens: s.tokens as u32,
            evictions: s.evictions as f64,
            conversation_hits: s.conversation_hits as f64,
            conversation_misses: s.conversation_misses as f64,
            conversation_evictions: s.conversation_evictions as f64,
            conversation_bytes: s.conversation_bytes as f64,
            text_prefix_hits: s.text_prefix_hits as f64,
            text_prefix_misses: s.text_prefix_misses as f64,
            text_prefix_reused_tokens: s.text_prefix_reused_tokens as f64,
            text_prefix_evictions: s.text_prefix_evictions as f64,
            text_prefix_bytes: s.text_prefix_bytes as f64,
        }
    }

    #[napi]
    pub fn clear_cache(&self) {
        self.inner.clear_cache();
    }
}

impl NativeTokenizer {
    /// The tokenizer itself, for the native front.
    pub fn shared(&self) -> Arc<ModelTokenizer> {
        self.inner.clone()
    }
}
