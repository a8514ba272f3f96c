//! The fast path for byte-level BPE tokenizers of the GPT-4 family (Llama 3.x, Qwen 2/2.5/3):
//! the pre-tokenizer regex as a hand-written scanner (src/pretokenize.rs), and a word cache in
//! front of the tokenizer's own BPE model, so a repeated word costs one hash lookup. What it
//! produces is what `Tokenizer::encode` produces for text without added tokens (the caller splits
//! those off first); tests/fast_encoder.rs holds the two equal on random text.
//!
//! [`FastEncoder::for_tokenizer`] accepts only the exact shape it implements: normalizer none or
//! NFC, pre-tokenizer `Split(one of the known regexes, Isolated)` then `ByteLevel` without its own
//! regex or prefix space, a BPE model without dropout. Anything else keeps the general path.

use std::sync::Mutex;

use serde_json::Value as Json;
use tokenizers::{Model, Tokenizer};
use unicode_normalization::{is_nfc_quick, IsNormalized};

use crate::pretokenize::Pattern;
use crate::word_cache::WordCache;

/// Words kept before the cache is emptied (~10 MiB at typical word lengths).
const WORD_CACHE_LIMIT: usize = 200_000;

pub struct FastEncoder {
    pattern: Pattern,
    nfc: bool,
    byte_chars: [char; 256],
    words: Mutex<WordCache>,
}

impl FastEncoder {
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Option<FastEncoder> {
        let nfc = match tokenizer.get_normalizer().map(serde_json::to_value) {
            None => false,
            Some(Ok(n)) if n.get("type").and_then(Json::as_str) == Some("NFC") => true,
            _ => return None,
        };
        let pre = serde_json::to_value(tokenizer.get_pre_tokenizer()?).ok()?;
        let pattern = known_pre_tokenizer(&pre)?;
        let model = serde_json::to_value(tokenizer.get_model()).ok()?;
        if model.get("type").and_then(Json::as_str) != Some("BPE")
            || !model.get("dropout").is_none_or(Json::is_null)
        {
            return None;
        }
        Some(FastEncoder {
            pattern,
            nfc,
            byte_chars: byte_level_alphabet(),
            words: Mutex::new(WordCache::new(WORD_CACHE_LIMIT)),
        })
    }

    /// Appends the ids of `text` (which holds no added token) to `out`.
    pub fn encode_piece(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<(), String> {
        if self.nfc && !text.is_ascii() && is_nfc_quick(text.chars()) != IsNormalized::Yes {
            // Text that NFC would change: the tokenizer's own path normalizes it.
            let encoding = tokenizer
                .encode_fast(text, false)
                .map_err(|e| e.to_string())?;
            out.extend_from_slice(encoding.get_ids());
            return Ok(());
        }
        let mut words = self
            .words
            .lock()
            .map_err(|_| "word cache poisoned".to_string())?;
        let mut failure = None;
        let mut mapped = String::new();
        self.pattern.split(text, |word| {
            if failure.is_some() {
                return;
            }
            let start = word.as_ptr() as usize - text.as_ptr() as usize;
            if words.extend_if_cached(text, start, start + word.len(), out) {
                return;
            }
            mapped.clear();
            for &b in word.as_bytes() {
                mapped.push(self.byte_chars[b as usize]);
            }
            match tokenizer.get_model().tokenize(&mapped) {
                Ok(tokens) => {
                    let start = out.len();
                    out.extend(tokens.iter().map(|t| t.id));
                    words.insert(word, &out[start..]);
                }
                Err(e) => failure = Some(e.to_string()),
            }
        });
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// `Sequence[Split(known regex, Isolated, not inverted), ByteLevel(no prefix space, no regex)]`.
fn known_pre_tokenizer(pre: &Json) -> Option<Pattern> {
    if pre.get("type")?.as_str()? != "Sequence" {
        return None;
    }
    let steps = pre.get("pretokenizers")?.as_array()?;
    let [split, byte_level] = steps.as_slice() else {
        return None;
    };
    if split.get("type")?.as_str()? != "Split"
        || split.get("behavior")?.as_str()? != "Isolated"
        || split.get("invert")?.as_bool()?
    {
        return None;
    }
    let pattern = Pattern::recognize(split.get("pattern")?.get("Regex")?.as_str()?)?;
    if byte_level.get("type")?.as_str()? != "ByteLevel"
        || byte_level.get("add_prefix_space")?.as_bool()?
        || byte_level.get("use_regex")?.as_bool()?
    {
        return None;
    }
    Some(pattern)
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the other 68
/// bytes for U+0100 onwards, in byte order.
fn byte_level_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).unwrap_or('\0');
            next += 1;
            c
        };
    }
    map
}
