//! [`ModelTokenizer`]: one model's tokenizer and chat template, encoding prompts into exactly the
//! token ids vLLM 0.33 computes: `/v1/completions` text with special tokens (BOS where the
//! tokenizer adds one), `/v1/chat/completions` rendered through the template and encoded without
//! them. Chat encoding goes through the segment cache (src/segments.rs) when the tokenizer allows
//! it, and is always equal to a full encode; so is text that reuses the ids of a prefix it shares
//! with an earlier text (src/text_prefix.rs).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use kvroute_core::Error;
use minijinja::value::Value;
use serde_json::value::RawValue;
use serde_json::{Map, Value as Json};
use tokenizers::Tokenizer;

use crate::chat_prefix::{ChatPrefixCache, Reuse};
use crate::conversation::{self, ContentFormat, TemplateInput};
use crate::fast_encoder::FastEncoder;
use crate::model_dir;
use crate::native_chat::{NativeTemplate, PlainMessage};
use crate::openai_fields::{self, Body, MaybeList, Prompt, RequestFields, TopLevel};
use crate::segments::{Piece, SegmentCache, Splitter};
use crate::template::ChatTemplate;
use crate::text_prefix::{self, Plan, TextPrefixCache};

/// Token ids the segment cache holds by default (~16 MiB of ids).
pub const DEFAULT_CACHE_TOKENS: usize = 4 << 20;

/// Bytes the conversation cache (src/chat_prefix.rs) holds by default: the last prompt and ids of
/// about 130 60k-token conversations (~0.5 MB each).
pub const DEFAULT_CONVERSATION_CACHE_BYTES: usize = 64 << 20;

/// Bytes the text prefix cache (src/text_prefix.rs) holds by default: about 1,600 completions
/// prompts of 1k tokens (text, ids and cuts, ~10 KB each).
pub const DEFAULT_TEXT_PREFIX_CACHE_BYTES: usize = 16 << 20;

struct LoadedTemplate {
    template: ChatTemplate,
    format: ContentFormat,
    developer_role: bool,
    /// The template's text names "content" (transformers requires it for continue_final_message).
    mentions_content: bool,
    /// A hand-written renderer of this very template (src/native_chat.rs), when there is one.
    native: Option<NativeTemplate>,
}

pub struct ModelTokenizer {
    inner: Tokenizer,
    special_tokens: Map<String, Json>,
    default_template: Option<LoadedTemplate>,
    tool_use_template: Option<LoadedTemplate>,
    splitter: Option<Splitter>,
    /// Present only with `splitter` (it encodes text free of added tokens).
    fast: Option<FastEncoder>,
    /// What `add_special_tokens` puts around a sequence (BOS for Llama 3), when that does not
    /// depend on the sequence.
    special_affixes: Option<(Vec<u32>, Vec<u32>)>,
    cache: Mutex<SegmentCache>,
    messages: Mutex<MessageCache>,
    conversations: Mutex<ChatPrefixCache>,
    /// Long texts reuse the ids of a prefix they share with an earlier text (src/text_prefix.rs);
    /// None where the tokenizer's shape is not one that module proves exact for.
    text_prefixes: Option<Mutex<TextPrefixCache>>,
}

/// Rewritten messages by their raw JSON text (and the template's content format).
#[derive(Default)]
struct MessageCache {
    entries: HashMap<u128, Arc<CachedMessage>>,
    /// About what `entries` holds, in bytes; never above MESSAGE_CACHE_BYTES.
    bytes: usize,
}

/// Shared, not cloned, per request: a long conversation's messages are each one refcount.
struct CachedMessage {
    json: Json,
    value: Value,
    /// The gateway's own rules accept it (openai_fields::valid_message).
    gateway_valid: bool,
    /// Its role is "developer" (rewritten for templates without that role). Kept here: looking
    /// the role up in every message's map on every turn was a cache miss per message.
    developer: bool,
    /// As a template port reads it (cached for templates with one, when it is plain enough).
    plain: Option<PlainMessage>,
}

const MESSAGE_CACHE_BYTES: usize = 32 << 20;

/// A body read by [`ModelTokenizer::read_request`]: its fields, and for text and chat the
/// prompt's ids or the tokenizer's refusal.
pub type ReadRequest = (RequestFields, Option<Result<Vec<u32>, Error>>);

/// Counters of the segment cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub pieces: usize,
    pub tokens: usize,
    /// Pieces dropped from the segment cache.
    pub evictions: u64,
    /// Chat prompts that reused an earlier turn's ids (src/chat_prefix.rs), and those that did not.
    pub conversation_hits: u64,
    pub conversation_misses: u64,
    /// Conversations dropped from the conversation cache.
    pub conversation_evictions: u64,
    pub conversation_bytes: usize,
    /// Texts of 1 KiB or more that reused the ids of a prefix shared with an earlier text
    /// (src/text_prefix.rs), those that did not, and the ids so reused.
    pub text_prefix_hits: u64,
    pub text_prefix_misses: u64,
    pub text_prefix_reused_tokens: u64,
    /// Texts dropped from the text prefix cache to stay within its bytes.
    pub text_prefix_evictions: u64,
    pub text_prefix_bytes: usize,
}

impl ModelTokenizer {
    /// Loads a Hugging Face model folder; see src/model_dir.rs for the files read.
    pub fn from_dir(dir: &Path) -> Result<Self, Error> {
        Self::from_dir_with_cache(dir, DEFAULT_CACHE_TOKENS)
    }

    pub fn from_dir_with_cache(dir: &Path, cache_tokens: usize) -> Result<Self, Error> {
        let files = model_dir::read(dir)?;
        let mut inner = Tokenizer::from_file(&files.tokenizer_json).map_err(|e| {
            Error::tokenizer_load(format!("{}: {e}", files.tokenizer_json.display()))
        })?;
        // transformers resets the file's truncation and padding on every call; so does vLLM's
        // encode (it truncates, if at all, by its own parameters).
        inner
            .with_truncation(None)
            .map_err(|e| Error::tokenizer_load(e.to_string()))?;
        inner.with_padding(None);
        let load =
            |t: &Option<(String, std::path::PathBuf)>| -> Result<Option<LoadedTemplate>, Error> {
                let Some((source, path)) = t else {
                    return Ok(None);
                };
                let template = ChatTemplate::compile(source).map_err(|e| {
                    Error::tokenizer_load(format!("{}: chat template: {e}", path.display()))
                })?;
                Ok(Some(LoadedTemplate {
                    template,
                    format: conversation::detect_content_format(source),
                    developer_role: conversation::supports_developer_role(source),
                    mentions_content: source.contains("content"),
                    native: NativeTemplate::recognize(source),
                }))
            };
        let default_template = load(&files.chat_template)?;
        let tool_use_template = load(&files.tool_use_template)?;
        let mut special_tokens = Map::new();
        for (name, text) in files.special_tokens {
            special_tokens.insert(name, Json::String(text));
        }
        let splitter = Splitter::for_tokenizer(&inner);
        let fast = splitter
            .as_ref()
            .and_then(|_| FastEncoder::for_tokenizer(&inner));
        let special_affixes = special_affixes(&inner);
        let text_prefixes = (fast.is_some()
            && text_prefix::cuts_are_safe(
                inner
                    .get_added_tokens_decoder()
                    .values()
                    .map(|t| t.content.as_str()),
            ))
        .then(|| Mutex::new(TextPrefixCache::new(DEFAULT_TEXT_PREFIX_CACHE_BYTES)));
        Ok(ModelTokenizer {
            inner,
            special_tokens,
            default_template,
            tool_use_template,
            splitter,
            fast,
            special_affixes,
            cache: Mutex::new(SegmentCache::new(cache_tokens)),
            messages: Mutex::new(MessageCache::default()),
            conversations: Mutex::new(ChatPrefixCache::new(DEFAULT_CONVERSATION_CACHE_BYTES)),
            text_prefixes,
        })
    }

    /// Sets the conversation cache's budget in bytes (0: every chat prompt is split in full).
    pub fn with_conversation_cache(self, bytes: usize) -> Self {
        ModelTokenizer {
            conversations: Mutex::new(ChatPrefixCache::new(bytes)),
            ..self
        }
    }

    /// Sets the text prefix cache's budget in bytes (0: every text is encoded in full). Texts of
    /// at least 1 KiB that `encode` takes the fast path for reuse the ids of the longest prefix
    /// they share with a kept text, up to a cut where that is exact (src/text_prefix.rs).
    pub fn with_text_prefix_cache(self, bytes: usize) -> Self {
        let text_prefixes = self
            .text_prefixes
            .map(|_| Mutex::new(TextPrefixCache::new(bytes)));
        ModelTokenizer {
            text_prefixes,
            ..self
        }
    }

    /// Whether long texts go through the text prefix cache (the tokenizer's shape allows it and
    /// its budget is not 0).
    pub fn text_prefix_cache(&self) -> bool {
        self.text_prefixes
            .as_ref()
            .and_then(|c| c.lock().ok().map(|c| c.capacity() > 0))
            .unwrap_or(false)
    }

    pub fn has_chat_template(&self) -> bool {
        self.default_template.is_some() || self.tool_use_template.is_some()
    }

    /// Whether chat prompts are encoded piece by piece through the cache.
    pub fn incremental(&self) -> bool {
        self.splitter.is_some()
    }

    /// Whether the fast byte-level BPE path (src/fast_encoder.rs) encodes this model's text.
    pub fn fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// The hand-written renderer of the default chat template (src/native_chat.rs), if any.
    pub fn native_template(&self) -> Option<NativeTemplate> {
        self.default_template.as_ref().and_then(|t| t.native)
    }

    /// `text` as `tokenizer.encode(text, add_special_tokens=...)`. On the fast path, texts of
    /// 1 KiB or more go through the text prefix cache (the ids it holds are without the affixes,
    /// so both values of `add_special_tokens` share them).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, Error> {
        let affixes = if add_special_tokens {
            self.special_affixes.as_ref()
        } else {
            Some(&NO_AFFIXES)
        };
        let (Some(fast), Some(splitter), Some((prefix, suffix))) =
            (&self.fast, &self.splitter, affixes)
        else {
            return self.encode_general(text, add_special_tokens);
        };
        let mut ids = Vec::with_capacity(text.len() / 3 + prefix.len() + suffix.len());
        ids.extend_from_slice(prefix);
        match &self.text_prefixes {
            Some(cache) if text.len() >= text_prefix::MIN_TEXT_BYTES => {
                self.encode_reusing_prefix(cache, fast, splitter, text, &mut ids)?
            }
            _ => self.encode_fast_text(fast, splitter, text, &mut ids)?,
        }
        ids.extend_from_slice(suffix);
        Ok(ids)
    }

    /// Appends `encode(text, false)` by the fast path.
    fn encode_fast_text(
        &self,
        fast: &FastEncoder,
        splitter: &Splitter,
        text: &str,
        ids: &mut Vec<u32>,
    ) -> Result<(), Error> {
        for piece in splitter.split(text) {
            match piece {
                Piece::Added(id) => ids.push(id),
                Piece::Text(t) => fast
                    .encode_piece(&self.inner, t, ids)
                    .map_err(tokenizer_error)?,
            }
        }
        Ok(())
    }

    /// Appends `encode(text, false)`: the ids of the prefix `text` shares with a kept text, up to
    /// a cut, then the rest encoded. A text the cache admits is encoded chunk by chunk between its
    /// cuts (each equal to the whole's ids there: src/text_prefix.rs) and kept. The lock is held
    /// for the lookup and the insert only.
    fn encode_reusing_prefix(
        &self,
        cache: &Mutex<TextPrefixCache>,
        fast: &FastEncoder,
        splitter: &Splitter,
        text: &str,
        ids: &mut Vec<u32>,
    ) -> Result<(), Error> {
        if text.len() > u32::MAX as usize {
            return self.encode_fast_text(fast, splitter, text, ids);
        }
        let plan = Plan::of(text);
        let lookup = match cache.lock() {
            Ok(mut c) if c.capacity() > 0 => c.find(&plan),
            _ => return self.encode_fast_text(fast, splitter, text, ids),
        };
        let base = ids.len();
        let mut cuts = Vec::new();
        let mut from = 0;
        if let Some((entry, reuse)) = lookup
            .entry
            .as_ref()
            .and_then(|e| Some((e, e.reuse(text)?)))
        {
            ids.extend_from_slice(&entry.ids()[..reuse.ids]);
            if lookup.keep {
                cuts.extend_from_slice(&entry.cuts()[..reuse.cuts]);
            }
            from = reuse.from;
        }
        let reused = ids.len() - base;
        // A text reused whole (the same again, or a prefix of a kept one) adds nothing.
        let keep = lookup.keep && from < text.len();
        if keep {
            self.encode_between_cuts(fast, splitter, text, from, &plan.cuts, base, ids, &mut cuts)?;
        } else {
            self.encode_fast_text(fast, splitter, &text[from..], ids)?;
        }
        if let Ok(mut c) = cache.lock() {
            c.record(reused);
            if keep {
                c.store(text, &ids[base..], cuts, plan);
            }
        }
        Ok(())
    }

    /// Appends `encode(text[from..], false)` (`from` is a cut), split at its added tokens once,
    /// its plain text encoded a chunk at a time between the cuts after `from`, and pushes each of
    /// those cuts and the end of the text with the ids before it (counted from `base`).
    #[allow(clippy::too_many_arguments)]
    fn encode_between_cuts(
        &self,
        fast: &FastEncoder,
        splitter: &Splitter,
        text: &str,
        from: usize,
        all_cuts: &[u32],
        base: usize,
        ids: &mut Vec<u32>,
        cuts: &mut Vec<(u32, u32)>,
    ) -> Result<(), Error> {
        let rest = &all_cuts[all_cuts.partition_point(|&c| c as usize <= from)..];
        cuts.reserve(rest.len() + 1);
        let mut next = 0;
        splitter.each_piece(&text[from..], |piece, end| {
            let end = from + end;
            match piece {
                Piece::Added(id) => {
                    // (No cut lies inside an added token: src/text_prefix.rs.)
                    while next < rest.len() && (rest[next] as usize) < end {
                        cuts.push((rest[next], (ids.len() - base) as u32));
                        next += 1;
                    }
                    ids.push(id);
                }
                Piece::Text(t) => {
                    let mut at = end - t.len();
                    while next < rest.len() && (rest[next] as usize) < end {
                        let cut = rest[next] as usize;
                        if cut > at {
                            fast.encode_piece(&self.inner, &text[at..cut], ids)
                                .map_err(tokenizer_error)?;
                            at = cut;
                        }
                        cuts.push((rest[next], (ids.len() - base) as u32));
                        next += 1;
                    }
                    fast.encode_piece(&self.inner, &text[at..end], ids)
                        .map_err(tokenizer_error)?;
                }
            }
            Ok::<(), Error>(())
        })?;
        for &cut in &rest[next..] {
            cuts.push((cut, (ids.len() - base) as u32));
        }
        cuts.push((text.len() as u32, (ids.len() - base) as u32));
        Ok(())
    }

    /// The `tokenizers` crate's own encode (the reference the fast path is tested against).
    pub fn encode_general(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, Error> {
        self.inner
            .encode_fast(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(tokenizer_error)
    }

    /// Ids of text free of added tokens (one piece of a rendered chat).
    fn encode_piece(&self, text: &str) -> Result<Vec<u32>, Error> {
        match &self.fast {
            Some(fast) => {
                let mut ids = Vec::with_capacity(text.len() / 3);
                fast.encode_piece(&self.inner, text, &mut ids)
                    .map_err(tokenizer_error)?;
                Ok(ids)
            }
            None => self.encode_general(text, false),
        }
    }

    /// The prompt text vLLM renders for a chat request body (an OpenAI `/v1/chat/completions`
    /// JSON object), with the request's `add_special_tokens`.
    pub fn render_chat(&self, request: &Json) -> Result<(String, bool), Error> {
        let loaded = self.template_for(request.get("tools"))?;
        let input = conversation::from_request(
            request,
            loaded.format,
            loaded.template.variables(),
            loaded.developer_role,
        )
        .map_err(Error::input)?;
        let add_special_tokens = input.add_special_tokens;
        Ok((self.render(loaded, input)?, add_special_tokens))
    }

    /// The template for a request: `tool_use` when it has tools and the folder names one.
    fn template_for(&self, tools: Option<&Json>) -> Result<&LoadedTemplate, Error> {
        let has_tools = matches!(tools, Some(Json::Array(t)) if !t.is_empty());
        match (&self.tool_use_template, &self.default_template, has_tools) {
            (Some(t), _, true) => Ok(t),
            (_, Some(t), _) => Ok(t),
            (Some(t), None, false) => Ok(t),
            (None, None, _) => Err(Error::input(
                "this model's tokenizer folder has no chat template (chat_template.jinja or tokenizer_config.json's chat_template)",
            )),
        }
    }

    /// A chat request's token ids from its JSON bytes (what the gateway has). The same ids as
    /// [`Self::encode_chat`]; a conversation's earlier messages are parsed, rewritten and
    /// converted for the template once, then found by their raw JSON text.
    pub fn encode_chat_bytes(&self, body: &[u8]) -> Result<Vec<u32>, Error> {
        let top = openai_fields::read_body(body, true).map_err(not_json)?;
        let Some(MaybeList::List(raw_messages)) = &top.messages else {
            return Err(Error::input("'messages' must be a list of messages"));
        };
        let rest = rest_of(&top.fields)?;
        let loaded = self.template_for(rest.get("tools"))?;
        let messages = self
            .cached_messages(raw_messages, loaded)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        self.encode_messages(loaded, &rest, &messages)
    }

    /// The gateway's one call per request: the body's routing fields
    /// ([`openai_fields::read_fields`]) and, for text and chat, the prompt's token ids (or why the
    /// tokenizer refused it). None: the body is not one the fast path reads (the gateway's general
    /// path answers it); chat messages are held to the gateway's rules here too, a message's
    /// verdict cached with it.
    pub fn read_request(&self, body: &[u8], chat: bool) -> Option<ReadRequest> {
        let top = openai_fields::top_level(body, chat)?;
        let fields = openai_fields::read_fields(&top, chat)?;
        let tokens = match &fields.prompt {
            Prompt::Ids(_) => None,
            Prompt::Text(text) => Some(self.encode(text, fields.add_special_tokens)),
            Prompt::Chat => Some(self.read_chat(&top)?),
        };
        Some((fields, tokens))
    }

    /// A chat body's ids, or None when a message breaks the gateway's rules.
    fn read_chat(&self, top: &Body<'_>) -> Option<Result<Vec<u32>, Error>> {
        let raw_messages = openai_fields::message_list(top)?;
        let prepared = rest_of(&top.fields).and_then(|rest| {
            let loaded = self.template_for(rest.get("tools"))?;
            Ok((rest, loaded))
        });
        let (rest, loaded) = match prepared {
            Ok(p) => p,
            Err(e) => {
                return raw_messages
                    .iter()
                    .all(|m| openai_fields::valid_message(m))
                    .then_some(Err(e))
            }
        };
        let mut messages = Vec::with_capacity(raw_messages.len());
        let mut refused = None;
        let cached = self.cached_messages(raw_messages, loaded);
        for (raw, message) in raw_messages.iter().zip(cached) {
            match message {
                Ok(m) if m.gateway_valid => messages.push(m),
                Ok(_) => return None,
                Err(e) => {
                    if !openai_fields::valid_message(raw) {
                        return None;
                    }
                    refused.get_or_insert(e);
                }
            }
        }
        Some(match refused {
            Some(e) => Err(e),
            None => self.encode_messages(loaded, &rest, &messages),
        })
    }

    /// Renders converted messages with the request's other fields and encodes the prompt.
    fn encode_messages(
        &self,
        loaded: &LoadedTemplate,
        rest: &Map<String, Json>,
        messages: &[Arc<CachedMessage>],
    ) -> Result<Vec<u32>, Error> {
        let (kwargs, continue_final_message, add_special_tokens) =
            conversation::request_kwargs(rest, loaded.template.variables())
                .map_err(Error::input)?;
        let jsons = || messages.iter().map(|m| m.json.clone()).collect::<Vec<_>>();
        // (Each cached message knows its role: no map lookup per message per turn.)
        let developer_rewrite = !loaded.developer_role && messages.iter().any(|m| m.developer);
        let rewrite_across = continue_final_message || developer_rewrite;
        let rendered = if rewrite_across {
            // Rewrites across messages: the general path.
            let mut all = jsons();
            if developer_rewrite {
                all = conversation::developer_as_system(all);
            }
            let input = TemplateInput {
                messages: all,
                kwargs,
                continue_final_message,
                add_special_tokens,
            };
            self.render(loaded, input)?
        } else if let Some(rendered) = loaded.native.and_then(|native| {
            let plain: Vec<&PlainMessage> = messages
                .iter()
                .map(|m| m.plain.as_ref())
                .collect::<Option<_>>()?;
            native.render(&plain, &kwargs, &self.special_tokens)
        }) {
            rendered
        } else {
            let mut context: Vec<(String, Value)> =
                Vec::with_capacity(self.special_tokens.len() + kwargs.len() + 1);
            for (k, v) in self
                .special_tokens
                .iter()
                .filter(|(k, _)| !kwargs.contains_key(*k))
            {
                context.push((k.clone(), Value::from_serialize(v)));
            }
            for (k, v) in &kwargs {
                context.push((k.clone(), Value::from_serialize(v)));
            }
            context.push((
                "messages".into(),
                Value::from(messages.iter().map(|m| m.value.clone()).collect::<Vec<_>>()),
            ));
            loaded
                .template
                .render(&Value::from_iter(context))
                .map_err(|e| Error::input(format!("chat template: {e}")))?
        };
        if add_special_tokens {
            return self.encode(&rendered, true);
        }
        self.encode_turn(rendered)
    }

    /// `encode(prompt, false)` for a rendered chat prompt, reusing the ids of the text it shares
    /// with its conversation's last prompt (src/chat_prefix.rs), the rest piece by piece.
    fn encode_turn(&self, prompt: String) -> Result<Vec<u32>, Error> {
        let Some(splitter) = &self.splitter else {
            return self.encode(&prompt, false);
        };
        let key = ChatPrefixCache::key(&prompt, splitter.token_ends(&prompt), 0);
        let reused = self
            .conversations
            .lock()
            .ok()
            .and_then(|mut c| c.reuse(key, &prompt, splitter.longest()));
        let Reuse {
            mut ids,
            mut cuts,
            from,
        } = reused.unwrap_or_else(|| Reuse {
            ids: Vec::with_capacity(prompt.len() / 3),
            cuts: Vec::new(),
            from: 0,
        });
        self.extend_pieces(splitter, &prompt, from, &mut ids, &mut cuts)?;
        if let Ok(mut c) = self.conversations.lock() {
            if c.capacity() > 0 {
                c.store(key, prompt, &ids, cuts);
            }
        }
        Ok(ids)
    }

    /// Appends the ids of `text[from..]` (`from` is 0 or just past an added token), piece by
    /// piece through the segment cache, and a cut after each added token.
    fn extend_pieces(
        &self,
        splitter: &crate::segments::Splitter,
        text: &str,
        from: usize,
        ids: &mut Vec<u32>,
        cuts: &mut Vec<(usize, usize)>,
    ) -> Result<(), Error> {
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| Error::input("segment cache poisoned"))?;
        splitter.each_piece(&text[from..], |piece, end| {
            match piece {
                Piece::Added(id) => {
                    ids.push(id);
                    cuts.push((from + end, ids.len()));
                }
                Piece::Text(t) => {
                    let key = SegmentCache::key(t);
                    match cache.get(key) {
                        Some(p) => ids.extend_from_slice(&p),
                        None => {
                            let p: Arc<[u32]> = Arc::from(self.encode_piece(t)?);
                            ids.extend_from_slice(&p);
                            cache.insert(key, p);
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// A body's messages, rewritten and converted for `loaded`, through the message cache: one
    /// lock for the hits (nearly all of a long conversation's messages), then each miss converted
    /// and cached.
    fn cached_messages(
        &self,
        raws: &[&RawValue],
        loaded: &LoadedTemplate,
    ) -> Vec<Result<Arc<CachedMessage>, Error>> {
        let native = loaded.native.is_some();
        let seed = loaded.format as u64 | (native as u64) << 8;
        let keys: Vec<u128> = raws
            .iter()
            .map(|r| xxhash_rust::xxh3::xxh3_128_with_seed(r.get().as_bytes(), seed))
            .collect();
        let hits: Vec<Option<Arc<CachedMessage>>> = match self.messages.lock() {
            Ok(cache) => keys.iter().map(|k| cache.entries.get(k).cloned()).collect(),
            Err(_) => vec![None; raws.len()],
        };
        hits.into_iter()
            .zip(raws.iter().zip(keys))
            .enumerate()
            .map(|(i, (hit, (raw, key)))| match hit {
                Some(m) => Ok(m),
                None => self.convert_message(raw, loaded, key, i),
            })
            .collect()
    }

    /// One message the cache did not have, converted and cached under `key`.
    fn convert_message(
        &self,
        raw: &RawValue,
        loaded: &LoadedTemplate,
        key: u128,
        index: usize,
    ) -> Result<Arc<CachedMessage>, Error> {
        let json: Json = serde_json::from_str(raw.get())
            .map_err(|e| Error::input(format!("messages[{index}]: {e}")))?;
        let rewritten = conversation::message(&json, loaded.format)
            .map_err(|e| Error::input(format!("messages[{index}]: {e}")))?;
        let entry = Arc::new(CachedMessage {
            value: Value::from_serialize(&rewritten),
            plain: loaded.native.and_then(|_| PlainMessage::of(&rewritten)),
            developer: rewritten.get("role").and_then(Json::as_str) == Some("developer"),
            json: rewritten,
            gateway_valid: openai_fields::valid_message(raw),
        });
        if let Ok(mut cache) = self.messages.lock() {
            // Bounded: roughly three copies of each message's text are held, four with `plain`.
            let bytes = (3 + entry.plain.is_some() as usize) * raw.get().len();
            cache.bytes += bytes;
            if cache.bytes > MESSAGE_CACHE_BYTES {
                cache.entries.clear();
                cache.bytes = bytes;
            }
            cache.entries.insert(key, entry.clone());
        }
        Ok(entry)
    }

    fn render(&self, loaded: &LoadedTemplate, input: TemplateInput) -> Result<String, Error> {
        let mut context = self.special_tokens.clone();
        context.extend(input.kwargs);
        let mut messages = input.messages;
        // continue_final_message needs the final message as it was, before its tag.
        let final_message = input
            .continue_final_message
            .then(|| messages.last().cloned());
        if input.continue_final_message {
            mark_final_message(&mut messages, loaded.mentions_content)?;
        }
        context.insert("messages".into(), Json::Array(messages));
        let rendered = loaded
            .template
            .render(&Value::from_serialize(&context))
            .map_err(|e| Error::input(format!("chat template: {e}")))?;
        match final_message {
            Some(last) => cut_at_final_mark(rendered, last.as_ref()),
            None => Ok(rendered),
        }
    }

    /// A chat request's token ids, as vLLM computes them.
    pub fn encode_chat(&self, request: &Json) -> Result<Vec<u32>, Error> {
        let (rendered, add_special_tokens) = self.render_chat(request)?;
        if add_special_tokens {
            return self.encode(&rendered, true);
        }
        self.encode_turn(rendered)
    }

    /// `encode(text, false)`, piece by piece through the cache where that is exact.
    pub fn encode_pieces(&self, text: &str) -> Result<Vec<u32>, Error> {
        let Some(splitter) = &self.splitter else {
            return self.encode(text, false);
        };
        let mut ids = Vec::with_capacity(text.len() / 3);
        self.extend_pieces(splitter, text, 0, &mut ids, &mut Vec::new())?;
        Ok(ids)
    }

    pub fn cache_stats(&self) -> CacheStats {
        let mut stats = match self.cache.lock() {
            Ok(c) => CacheStats {
                hits: c.hits,
                misses: c.misses,
                pieces: c.len(),
                tokens: c.held(),
                evictions: c.evictions,
                ..CacheStats::default()
            },
            Err(_) => CacheStats::default(),
        };
        if let Ok(c) = self.conversations.lock() {
            let s = c.stats();
            stats.conversation_hits = s.hits;
            stats.conversation_misses = s.misses;
            stats.conversation_evictions = s.evictions;
            stats.conversation_bytes = s.bytes;
        }
        if let Some(Ok(c)) = self.text_prefixes.as_ref().map(|c| c.lock()) {
            let s = c.stats();
            stats.text_prefix_hits = s.hits;
            stats.text_prefix_misses = s.misses;
            stats.text_prefix_reused_tokens = s.reused_tokens;
            stats.text_prefix_evictions = s.evictions;
            stats.text_prefix_bytes = s.bytes;
        }
        stats
    }

    /// Forgets every cached piece (benchmarks measure cold encodes with it).
    pub fn clear_cache(&self) {
        if let Ok(mut c) = self.cache.lock() {
            let capacity = c.capacity();
            *c = SegmentCache::new(capacity);
        }
        if let Ok(mut m) = self.messages.lock() {
            *m = MessageCache::default();
        }
        if let Ok(mut c) = self.conversations.lock() {
            let capacity = c.capacity();
            *c = ChatPrefixCache::new(capacity);
        }
        if let Some(Ok(mut c)) = self.text_prefixes.as_ref().map(|c| c.lock()) {
            let capacity = c.capacity();
            *c = TextPrefixCache::new(capacity);
        }
    }

    /// The id of a token's text, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids back to text, special tokens kept (for the parity check's log lines).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }
}

fn not_json(e: serde_json::Error) -> Error {
    Error::input(format!("chat request is not valid JSON: {e}"))
}

/// The body's fields other than `messages` (which `fields` does not hold), parsed.
fn rest_of(fields: &TopLevel<'_>) -> Result<Map<String, Json>, Error> {
    let mut rest = Map::new();
    for (key, raw) in fields {
        rest.insert(
            key.to_string(),
            serde_json::from_str(raw.get()).map_err(not_json)?,
        );
    }
    Ok(rest)
}

static NO_AFFIXES: (Vec<u32>, Vec<u32>) = (Vec::new(), Vec::new());

fn tokenizer_error(e: impl std::fmt::Display) -> Error {
    Error::input(format!("tokenizer: {e}"))
}

/// The ids the post-processor adds around a sequence with `add_special_tokens`, found by encoding
/// two probes both ways; None when they differ between the probes (content-dependent).
fn special_affixes(tokenizer: &Tokenizer) -> Option<(Vec<u32>, Vec<u32>)> {
    let mut found: Option<(Vec<u32>, Vec<u32>)> = None;
    for probe in ["a", "Hello world 42"] {
        let with = tokenizer.encode_fast(probe, true).ok()?.get_ids().to_vec();
        let without = tokenizer.encode_fast(probe, false).ok()?.get_ids().to_vec();
        let at = (0..=with.len().checked_sub(without.len())?)
            .find(|&i| with[i..i + without.len()] == without[..])?;
        let affixes = (with[..at].to_vec(), with[at + without.len()..].to_vec());
        match &found {
            Some(f) if *f != affixes => return None,
            _ => found = Some(affixes),
        }
    }
    found
}

/// transformers' `continue_final_message`: a tag is appended to the final message's text (its
/// last text part when content is a list), the template rendered, and the prompt cut at the tag,
/// so the model continues that message.
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

fn mark_final_message(messages: &mut [Json], template_mentions_content: bool) -> Result<(), Error> {
    let final_message = messages.last_mut().and_then(|m| m.get_mut("content"));
    let Some(content) = final_message.filter(|c| !c.is_null()) else {
        return Err(Error::input(
            "continue_final_message is set but the final message has no \"content\" to continue!",
        ));
    };
    if !template_mentions_content {
        return Err(Error::input(
            "continue_final_message is set to \"content\" but this is not an accepted field in the chat_template",
        ));
    }
    match content {
        Json::String(s) => s.push_str(CONTINUE_TAG),
        Json::Array(parts) => {
            let text = parts
                .iter_mut()
                .rev()
                .find_map(|p| match p.get_mut("text") {
                    Some(Json::String(t)) => Some(t),
                    _ => None,
                });
            match text {
                Some(t) => t.push_str(CONTINUE_TAG),
                None => {
                    return Err(Error::input(
                        "continue_final_message is set but we could not find any text to continue in the final message!",
                    ))
                }
            }
        }
        _ => {
            return Err(Error::input(
                "continue_final_message: the final message's content is not text",
            ))
        }
    }
    Ok(())
}

fn cut_at_final_mark(rendered: String, last: Option<&Json>) -> Result<String, Error> {
    let final_text = match last.and_then(|m| m.get("content")) {
        Some(Json::String(s)) => s.as_str(),
        Some(Json::Array(parts)) => parts
            .iter()
            .rev()
            .find_map(|p| p.get("text").and_then(Json::as_str))
            .unwrap_or(""),
        _ => "",
    };
    let tag = CONTINUE_TAG.trim_end();
    if !rendered.contains(python_strip(final_text)) || !rendered.contains(tag) {
        return Err(Error::input(
            "continue_final_message is set but the final message does not appear in the chat after applying the chat template! This can happen if the chat template deletes portions of the final message. Please verify the chat template and final message in your chat to ensure they are compatible.",
        ));
    }
    let at = rendered.rfind(tag).unwrap_or(rendered.len());
    if rendered[at..].starts_with(CONTINUE_TAG) {
        Ok(rendered[..at].to_string())
    } else {
        // The template trimmed the tag's space: trailing whitespace of the message is gone too.
        Ok(python_rstrip(&rendered[..at]).to_string())
    }
}

/// Python's `str.isspace` (Unicode White_Space plus the ASCII separators 0x1c-0x1f).
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub fn python_strip(s: &str) -> &str {
    s.trim_matches(python_space)
}

fn python_rstrip(s: &str) -> &str {
    s.trim_end_matches(python_space)
}
