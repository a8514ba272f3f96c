//! The fields of an OpenAI `/v1/completions` or `/v1/chat/completions` body that the gateway
//! routes and forwards by, read from the body's bytes in one pass, so a long prompt never becomes a
//! JavaScript object graph.
//!
//! The reading is narrower than the gateway's own validation (ts/gateway/openai-request.ts): a
//! body read here is one that code accepts, with the same values. Anything else returns None and
//! the gateway takes its general path, which answers the exact 400 or handles the rare form:
//! invalid JSON (serde_json is also stricter: lone surrogates, invalid UTF-8, numbers out of
//! range), nesting deeper than the gateway's 128 levels (ts/gateway/json-depth.ts), a field of an
//! unexpected type, an integer written as a float (`16.0`), a batched or `prompt_embeds` prompt.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A body's top-level fields, values unparsed. Duplicate keys: the last wins, as in `JSON.parse`.
pub type TopLevel<'a> = HashMap<Cow<'a, str>, &'a RawValue>;

/// A body's top level with, for chat, its `messages` list split out in the same pass (a long
/// conversation is scanned once, not once as a value and again as a list).
pub struct Body<'a> {
    /// Every field but a chat body's `messages`.
    pub fields: TopLevel<'a>,
    /// Chat: the `messages` field (absent: None).
    pub messages: Option<MaybeList<'a>>,
}

/// A value that should be a list: its items unparsed, or `Other` when it is not a list.
pub enum MaybeList<'a> {
    List(Vec<&'a RawValue>),
    Other,
}

/// Reads the top level of a body; a chat body's `messages` are split out. Errors: not JSON, or
/// not an object (serde_json's message, "expected a map").
pub fn read_body(body: &[u8], chat: bool) -> Result<Body<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let out = de.deserialize_map(BodyVisitor { chat })?;
    de.end()?;
    Ok(out)
}

/// The body's top-level fields, or None when it is not a JSON object.
pub fn top_level(body: &[u8], chat: bool) -> Option<Body<'_>> {
    read_body(body, chat).ok()
}

struct BodyVisitor {
    chat: bool,
}

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body<'de>, A::Error> {
        let mut fields = TopLevel::new();
        let mut messages = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if self.chat && key == "messages" {
                messages = Some(map.next_value::<MaybeList<'de>>()?);
            } else {
                let value = map.next_value::<&'de RawValue>()?;
                fields.insert(key, value);
            }
        }
        Ok(Body { fields, messages })
    }
}

impl<'de> Deserialize<'de> for MaybeList<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MaybeListVisitor)
    }
}

struct MaybeListVisitor;

impl<'de> Visitor<'de> for MaybeListVisitor {
    type Value = MaybeList<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(16));
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            items.push(item);
        }
        Ok(MaybeList::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(MaybeList::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(MaybeList::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(MaybeList::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(MaybeList::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(MaybeList::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(MaybeList::Other)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(MaybeList::Other)
    }
}

/// A completion's prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Chat: the prompt is the messages.
    Chat,
    Text(String),
    Ids(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestFields {
    pub model: Option<String>,
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// `max_completion_tokens` (chat) or else `max_tokens`.
    pub max_tokens: Option<i64>,
    pub min_tokens: Option<i64>,
    pub n: i64,
    pub return_token_ids: bool,
    pub cache_salt: Option<String>,
    /// Completions only (false for chat, as the gateway reads it).
    pub echo: bool,
    /// Completions: `add_special_tokens` unless the body says `false`.
    pub add_special_tokens: bool,
    pub prompt: Prompt,
}

/// Deepest nesting the gateway accepts; the body itself is level 1 (ts/gateway/json-depth.ts).
const MAX_DEPTH: usize = 128;

/// Whether `raw` (one valid JSON value) nests at most `max` containers deep. serde_json checks
/// no depth in values it skips (`RawValue`), so this does.
pub fn within_depth(raw: &str, max: usize) -> bool {
    let b = raw.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    true
}

/// Integers beyond this are not exact in JavaScript: left to the general path.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// The field's raw text, None when absent or null.
fn present<'a>(top: &'a TopLevel<'_>, key: &str) -> Option<&'a str> {
    top.get(key).map(|r| r.get()).filter(|t| *t != "null")
}

/// Outer None: not what the gateway accepts (take the general path).
fn opt_bool(top: &TopLevel<'_>, key: &str) -> Option<Option<bool>> {
    match present(top, key) {
        None => Some(None),
        Some("true") => Some(Some(true)),
        Some("false") => Some(Some(false)),
        Some(_) => None,
    }
}

fn opt_int(top: &TopLevel<'_>, key: &str, min: i64) -> Option<Option<i64>> {
    match present(top, key) {
        None => Some(None),
        Some(text) => {
            let v: i64 = serde_json::from_str(text).ok()?;
            (min..=MAX_SAFE_INTEGER).contains(&v).then_some(Some(v))
        }
    }
}

fn opt_string(top: &TopLevel<'_>, key: &str) -> Option<Option<String>> {
    match present(top, key) {
        None => Some(None),
        Some(text) if text.starts_with('"') => Some(Some(serde_json::from_str(text).ok()?)),
        Some(_) => None,
    }
}

/// Reads the fields of a completions (`chat: false`) or chat body; None: the general path.
/// Chat messages are checked by [`valid_message`] separately (the tokenizer caches that).
pub fn read_fields(body: &Body<'_>, chat: bool) -> Option<RequestFields> {
    let top = &body.fields;
    // Every field but the prompt (read below, or per message with its verdict cached) is held to
    // the gateway's depth limit: a top-level value may nest 127 levels.
    if !top
        .iter()
        .all(|(k, v)| (!chat && k == "prompt") || within_depth(v.get(), MAX_DEPTH - 1))
    {
        return None;
    }
    let model = opt_string(top, "model")?;
    if model.as_deref() == Some("") {
        return None;
    }
    let stream = opt_bool(top, "stream")?.unwrap_or(false);
    let include_usage = match present(top, "stream_options") {
        None => false,
        Some(text) if text.starts_with('{') => {
            let so: TopLevel<'_> = serde_json::from_str(text).ok()?;
            opt_bool(&so, "include_usage")?.unwrap_or(false)
        }
        Some(_) => return None,
    };
    let max_tokens = opt_int(top, "max_tokens", 1)?;
    let max_completion = if chat {
        opt_int(top, "max_completion_tokens", 1)?
    } else {
        None
    };
    let min_tokens = opt_int(top, "min_tokens", 0)?;
    let n = opt_int(top, "n", 1)?.unwrap_or(1);
    let return_token_ids = opt_bool(top, "return_token_ids")?.unwrap_or(false);
    let cache_salt = opt_string(top, "cache_salt")?;
    let (prompt, echo, add_special_tokens) = if chat {
        message_list(body)?;
        (Prompt::Chat, false, false)
    } else {
        if present(top, "prompt_embeds").is_some() {
            return None;
        }
        let text = present(top, "prompt")?;
        let prompt = if text.starts_with('"') {
            Prompt::Text(json_string(text)?)
        } else if text.starts_with('[') {
            // Token ids only; a list of strings or of id lists (batched) is the general path's.
            let ids = token_ids(text)?;
            if ids.is_empty() {
                return None;
            }
            Prompt::Ids(ids)
        } else {
            return None;
        };
        let echo = opt_bool(top, "echo")?.unwrap_or(false);
        let add_special = present(top, "add_special_tokens") != Some("false");
        (prompt, echo, add_special)
    };
    Some(RequestFields {
        model,
        stream,
        include_usage,
        max_tokens: max_completion.or(max_tokens),
        min_tokens,
        n,
        return_token_ids,
        cache_salt,
        echo,
        add_special_tokens,
        prompt,
    })
}

/// A JSON string value (as the top-level parse validated it: quoted, UTF-8, control characters
/// escaped) as its text: without escapes, the bytes between the quotes, which is what serde's
/// parse would return after scanning them again; with any, serde's parse.
fn json_string(raw: &str) -> Option<String> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(inner.to_owned());
    }
    serde_json::from_str(raw).ok()
}

/// A JSON list of token ids (u32), as `serde_json::from_str::<Vec<u32>>` reads it. Plain lists
/// (digits, commas, JSON whitespace) are read here in one pass, several times faster than
/// serde's visitor on a long prompt; anything else (signs, fractions, exponents, leading zeros,
/// other values) is left to serde_json, so the answer is always serde's.
pub fn token_ids(text: &str) -> Option<Vec<u32>> {
    plain_token_ids(text.as_bytes()).or_else(|| serde_json::from_str(text).ok())
}

fn plain_token_ids(b: &[u8]) -> Option<Vec<u32>> {
    let ws = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    let mut i = 0;
    let skip = |i: &mut usize| {
        while *i < b.len() && ws(b[*i]) {
            *i += 1;
        }
    };
    skip(&mut i);
    if b.get(i) != Some(&b'[') {
        return None;
    }
    i += 1;
    let mut ids = Vec::with_capacity(b.len() / 6 + 1);
    skip(&mut i);
    if b.get(i) == Some(&b']') {
        i += 1;
    } else {
        loop {
            let start = i;
            let mut v: u64 = 0;
            while i < b.len() && b[i].is_ascii_digit() && i - start < 10 {
                v = v * 10 + (b[i] - b'0') as u64;
                i += 1;
            }
            let digits = i - start;
            // No digits, a leading zero, or more than fits: serde's to judge.
            if digits == 0 || (digits > 1 && b[start] == b'0') || v > u32::MAX as u64 {
                return None;
            }
            ids.push(v as u32);
            skip(&mut i);
            match b.get(i) {
                Some(b',') => {
                    i += 1;
                    skip(&mut i);
                }
                Some(b']') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    skip(&mut i);
    (i == b.len()).then_some(ids)
}

/// The messages list of a chat body, None when it is not a non-empty list.
pub fn message_list<'b, 'a>(body: &'b Body<'a>) -> Option<&'b [&'a RawValue]> {
    match &body.messages {
        Some(MaybeList::List(list)) if !list.is_empty() => Some(list),
        _ => None,
    }
}

/// Whether the gateway's own rules accept this message: an object with a non-empty string
/// `role`, and `content` absent, null, a string, or a list of objects with a string `type`
/// whose `text` parts have a string `text`.
pub fn valid_message(raw: &RawValue) -> bool {
    // Body, messages, message: the message may nest 126 levels.
    if !within_depth(raw.get(), MAX_DEPTH - 2) {
        return false;
    }
    let Ok(m) = serde_json::from_str::<TopLevel<'_>>(raw.get()) else {
        return false;
    };
    let role = match present(&m, "role") {
        Some(text) if text.starts_with('"') => serde_json::from_str::<Cow<str>>(text).ok(),
        _ => None,
    };
    if role.is_none_or(|r| r.is_empty()) {
        return false;
    }
    match present(&m, "content") {
        None => true,
        Some(text) if text.starts_with('"') => true,
        Some(text) if text.starts_with('[') => {
            let Ok(parts) = serde_json::from_str::<Vec<&RawValue>>(text) else {
                return false;
            };
            parts.iter().all(|p| valid_part(p))
        }
        Some(_) => false,
    }
}

fn valid_part(raw: &RawValue) -> bool {
    let Ok(part) = serde_json::from_str::<TopLevel<'_>>(raw.get()) else {
        return false;
    };
    let kind = match part.get("type").map(|r| r.get()) {
        Some(text) if text.starts_with('"') => serde_json::from_str::<Cow<str>>(text).ok(),
        _ => None,
    };
    match kind.as_deref() {
        None => false,
        Some("text") => part.get("text").is_some_and(|t| t.get().starts_with('"')),
        Some(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str, chat: bool) -> Option<RequestFields> {
        read_fields(&top_level(body.as_bytes(), chat)?, chat)
    }

    #[test]
    fn text_prompts_read_as_serde_reads_them() {
        // Each as it stands between the quotes of the body (JSON escapes included).
        let texts = [
            "",
            "plain words",
            "é ü 漢字 🙂",
            r#"a\"b"#,
            r"tab\there",
            r"\u00e9\n",
            r"\\",
            r#"ends \\\""#,
        ];
        for text in texts {
            let body = format!(r#"{{"prompt":"{text}"}}"#);
            let expected: String = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(
                read(&body, false).unwrap().prompt,
                Prompt::Text(expected),
                "{text}"
            );
        }
    }

    #[test]
    fn reads_a_token_id_completion() {
        let f = read(
            r#"{"model":"m","prompt":[1,2,4294967295],"max_tokens":16,"stream":true,"stream_options":{"include_usage":true},"n":null}"#,
            false,
        )
        .unwrap();
        assert_eq!(f.prompt, Prompt::Ids(vec![1, 2, u32::MAX]));
        assert_eq!(f.model.as_deref(), Some("m"));
        assert!(f.stream && f.include_usage && f.add_special_tokens);
        assert_eq!((f.max_tokens, f.n), (Some(16), 1));
    }

    #[test]
    fn reads_text_and_chat_fields() {
        let f = read(
            r#"{"prompt":"a\u00e9","add_special_tokens":false,"echo":true}"#,
            false,
        )
        .unwrap();
        assert_eq!(f.prompt, Prompt::Text("aé".into()));
        assert!(!f.add_special_tokens && f.echo && f.model.is_none());
        let c = read(
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"max_completion_tokens":7,"echo":true}"#,
            true,
        )
        .unwrap();
        assert_eq!(
            (c.prompt, c.max_tokens, c.echo),
            (Prompt::Chat, Some(7), false)
        );
    }

    #[test]
    fn leaves_everything_unusual_to_the_general_path() {
        for body in [
            "not json",
            "[1]",
            r#"{"prompt":[1.0]}"#,
            r#"{"prompt":[-1]}"#,
            r#"{"prompt":[4294967296]}"#,
            r#"{"prompt":[]}"#,
            r#"{"prompt":["a","b"]}"#,
            r#"{"prompt":[[1],[2]]}"#,
            r#"{"prompt":"a","max_tokens":16.0}"#,
            r#"{"prompt":"a","max_tokens":0}"#,
            r#"{"prompt":"a","n":9007199254740993}"#,
            r#"{"prompt":"a","stream":"yes"}"#,
            r#"{"prompt":"a","model":""}"#,
            r#"{"prompt":"a","model":5}"#,
            r#"{"prompt":"a","stream_options":[]}"#,
            r#"{"prompt":"a","stream_options":{"include_usage":1}}"#,
            r#"{"prompt":"a","prompt_embeds":"AAAA"}"#,
            r#"{"prompt":"\ud800"}"#,
            r#"{"max_tokens":3}"#,
        ] {
            assert_eq!(read(body, false), None, "{body}");
        }
        assert_eq!(read(r#"{"messages":"hi"}"#, true), None);
        assert_eq!(read(r#"{"prompt":"a"}"#, true), None);
    }

    #[test]
    fn message_rules_match_the_gateway() {
        let ok = |m: &str| valid_message(serde_json::from_str::<&RawValue>(m).unwrap());
        assert!(ok(r#"{"role":"user","content":"x"}"#));
        assert!(ok(r#"{"role":"assistant","content":null,"tool_calls":[]}"#));
        assert!(ok(r#"{"role":"user"}"#));
        assert!(ok(
            r#"{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{}}]}"#
        ));
        assert!(!ok(r#"{"role":"","content":"x"}"#));
        assert!(!ok(r#"{"content":"x"}"#));
        assert!(!ok(r#"{"role":"user","content":5}"#));
        assert!(!ok(r#"{"role":"user","content":[{"text":"a"}]}"#));
        assert!(!ok(
            r#"{"role":"user","content":[{"type":"text","text":5}]}"#
        ));
        assert!(!ok(r#"{"role":"user","content":["a"]}"#));
        assert!(!ok(r#""user""#));
        let deep = |n: usize| {
            format!(
                r#"{{"role":"user","x":{}{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(ok(&deep(125)) && !ok(&deep(126)));
    }

    #[test]
    fn token_ids_are_what_serde_reads() {
        let serde = |t: &str| serde_json::from_str::<Vec<u32>>(t).ok();
        let cases = [
            "[1,2,3]",
            " [ 0 , 7 ,\n\t42\r] ",
            "[]",
            "[ ]",
            "[4294967295]",
            "[4294967296]",
            "[12345678901]",
            "[01]",
            "[0]",
            "[-1]",
            "[1.0]",
            "[1e3]",
            "[1,]",
            "[,1]",
            "[1 2]",
            "[1]]",
            "[[1]]",
            "[\"1\"]",
            "[1",
            "1",
            "[1] x",
            "[null]",
        ];
        for c in cases {
            assert_eq!(token_ids(c), serde(c), "{c:?}");
        }
        // Random lists with random spacing.
        let mut x: u64 = 0x1234_5678;
        for _ in 0..500 {
            let mut t = String::from("[");
            for k in 0..(x % 20) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if k > 0 {
                    t.push_str([",", " ,", ", ", ",\n"][(x >> 60) as usize % 4]);
                }
                t.push_str(
                    &((x >> 20) % [10, 1000, 5_000_000_000][(x >> 40) as usize % 3]).to_string(),
                );
            }
            t.push(']');
            assert_eq!(token_ids(&t), serde(&t), "{t:?}");
        }
    }

    #[test]
    fn depth_is_the_gateways() {
        assert!(within_depth(r#"[{"a":"[[[\"["}]"#, 2));
        assert!(!within_depth("[[[]]]", 2));
        let body = |n: usize| format!(r#"{{"prompt":"a","x":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        assert!(read(&body(127), false).is_some());
        assert!(read(&body(128), false).is_none());
    }
}
