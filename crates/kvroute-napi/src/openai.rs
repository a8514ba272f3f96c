//! `readOpenaiRequest`: the routing fields of an OpenAI completions or chat body, read from its
//! bytes (kvroute-tokenizer's openai_fields), so the gateway never parses a long prompt into a
//! JS object graph. `NativeTokenizer.readRequest` does the same and tokenizes in the same call.

use kvroute_tokenizer::openai_fields::{self, Prompt, RequestFields};
use napi::bindgen_prelude::{Buffer, Uint32Array};
use napi_derive::napi;

/// The fields the gateway reads; absent when the body needs its general path.
#[napi(object)]
pub struct OpenAiRequestFields {
    pub model: Option<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// `max_completion_tokens` (chat) or else `max_tokens`.
    pub max_tokens: Option<f64>,
    pub min_tokens: Option<f64>,
    pub n: f64,
    pub return_token_ids: bool,
    pub cache_salt: Option<String>,
    pub echo: bool,
    /// Completions: false only when the body says `"add_special_tokens": false`.
    pub add_special_tokens: bool,
    /// A single text prompt (completions), unless a tokenizer read it (then `tokens` is set).
    pub prompt_text: Option<String>,
    /// A single token-id prompt (completions).
    pub prompt_ids: Option<Uint32Array>,
    /// Text or chat read by a tokenizer: the prompt's token ids.
    pub tokens: Option<Uint32Array>,
    /// Text or chat the tokenizer refused: its error (`KVR_*: ...`).
    pub token_error: Option<String>,
}

pub fn to_js(
    fields: RequestFields,
    tokens: Option<Result<Vec<u32>, kvroute_core::Error>>,
) -> OpenAiRequestFields {
    // A text prompt the tokenizer read does not cross back as a string (the gateway reads it
    // from the body in the rare case it needs it).
    let (prompt_text, prompt_ids) = match fields.prompt {
        Prompt::Chat => (None, None),
        Prompt::Text(_) if tokens.is_some() => (None, None),
        Prompt::Text(t) => (Some(t), None),
        Prompt::Ids(ids) => (None, Some(Uint32Array::new(ids))),
    };
    let (tokens, token_error) = match tokens {
        None => (None, None),
        Some(Ok(ids)) => (Some(Uint32Array::new(ids)), None),
        Some(Err(e)) => (None, Some(e.to_string())),
    };
    OpenAiRequestFields {
        model: fields.model,
        stream: fields.stream,
        include_usage: fields.include_usage,
        max_tokens: fields.max_tokens.map(|v| v as f64),
        min_tokens: fields.min_tokens.map(|v| v as f64),
        n: fields.n as f64,
        return_token_ids: fields.return_token_ids,
        cache_salt: fields.cache_salt,
        echo: fields.echo,
        add_special_tokens: fields.add_special_tokens,
        prompt_text,
        prompt_ids,
        tokens,
        token_error,
    }
}

/// The routing fields of a completions (`chat` false) or chat body, without tokenizing; chat
/// messages are checked against the gateway's rules. Undefined: take the general path.
#[napi]
pub fn read_openai_request(body: Buffer, chat: bool) -> Option<OpenAiRequestFields> {
    let top = openai_fields::top_level(&body, chat)?;
    let fields = openai_fields::read_fields(&top, chat)?;
    if chat {
        let messages = openai_fields::message_list(&top)?;
        if !messages.iter().all(|m| openai_fields::valid_message(m)) {
            return None;
        }
    }
    Some(to_js(fields, None))
}
