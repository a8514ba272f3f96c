//! vLLM-exact prompt tokenization for kvroute: a Hugging Face model folder's tokenizer and chat
//! template, applied as vLLM 0.33's OpenAI server applies them, so the router keys a request by
//! the very token ids the engine will hash (docs/tokenization.md).
//!
//! - [`model_dir`]: which files of the folder say what (tokenizer, special tokens, templates).
//! - [`template`]: the chat template, rendered as transformers' Jinja2 environment does.
//! - [`native_chat`]: known templates (Qwen3's, Llama 3's) rendered by hand-written code.
//! - [`pyjson`]: Python's `json.dumps` and `str()` forms of template values.
//! - [`conversation`]: the request body rewritten as vLLM rewrites it before rendering.
//! - [`pretokenize`], `fast_encoder` and `word_cache`: the fast path for GPT-4-style byte-level BPE.
//! - [`segments`]: incremental encoding of rendered chats, piece by piece through a bounded LRU.
//! - [`chat_prefix`]: a conversation's next turn reuses the ids of the text it shares with the last.
//! - [`text_prefix`]: a long completions text reuses the ids of a prefix shared with an earlier one.
//! - [`tokenizer`]: [`ModelTokenizer`], which ties them together.

pub mod chat_prefix;
mod clock;
pub mod conversation;
mod fast_encoder;
pub mod model_dir;
pub mod native_chat;
pub mod openai_fields;
pub mod pretokenize;
pub mod pyjson;
pub mod segments;
pub mod template;
pub mod text_prefix;
pub mod tokenizer;
mod word_cache;

pub use tokenizer::{
    CacheStats, ModelTokenizer, DEFAULT_CACHE_TOKENS, DEFAULT_CONVERSATION_CACHE_BYTES,
    DEFAULT_TEXT_PREFIX_CACHE_BYTES,
};
