//! Reading a Hugging Face model folder: which files hold the tokenizer, its special tokens and its
//! chat template, in the precedence transformers gives them. Every failure names the file and
//! the cause (`KVR_TOKENIZER_LOAD`).
//!
//! - `tokenizer.json`: the fast tokenizer (required).
//! - `tokenizer_config.json`: `bos_token`/`eos_token`/..., `chat_template` (a string, or a list of
//!   `{name, template}` where `default` is used and `tool_use` when the request has tools).
//! - `chat_template.jinja`: wins over the config's template, as in transformers ≥ 4.43; the older
//!   `chat_template.json` (`{"chat_template": ...}`) is read when neither exists.
//! - `special_tokens_map.json`: special tokens the config does not name.

use std::fs;
use std::path::{Path, PathBuf};

use kvroute_core::Error;
use serde_json::Value as Json;

/// What the folder says, before anything is compiled.
pub struct ModelFiles {
    pub dir: PathBuf,
    pub tokenizer_json: PathBuf,
    /// Special tokens by name (`bos_token`, `eos_token`, `unk_token`, `pad_token`...), as text.
    pub special_tokens: Vec<(String, String)>,
    /// The default chat template and the file it came from.
    pub chat_template: Option<(String, PathBuf)>,
    /// A `tool_use` template, where the config names one.
    pub tool_use_template: Option<(String, PathBuf)>,
}

const SPECIAL_TOKEN_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

pub fn read(dir: &Path) -> Result<ModelFiles, Error> {
    if !dir.is_dir() {
        return Err(Error::tokenizer_load(format!(
            "{}: not a directory",
            dir.display()
        )));
    }
    let tokenizer_json = dir.join("tokenizer.json");
    if !tokenizer_json.is_file() {
        return Err(Error::tokenizer_load(format!(
            "{}: missing (a Hugging Face fast tokenizer folder has tokenizer.json)",
            tokenizer_json.display()
        )));
    }
    let config_path = dir.join("tokenizer_config.json");
    let config = read_json_if_present(&config_path)?.unwrap_or(Json::Null);
    let special_map =
        read_json_if_present(&dir.join("special_tokens_map.json"))?.unwrap_or(Json::Null);

    let mut special_tokens = Vec::new();
    for name in SPECIAL_TOKEN_NAMES {
        let text = token_text(config.get(name)).or_else(|| token_text(special_map.get(name)));
        if let Some(text) = text {
            special_tokens.push((name.to_string(), text));
        }
    }

    let (mut chat_template, tool_use_template) = config_templates(&config, &config_path)?;
    let jinja_path = dir.join("chat_template.jinja");
    if jinja_path.is_file() {
        let source = fs::read_to_string(&jinja_path)
            .map_err(|e| Error::tokenizer_load(format!("{}: {e}", jinja_path.display())))?;
        chat_template = Some((source, jinja_path));
    } else if chat_template.is_none() {
        let legacy = dir.join("chat_template.json");
        if let Some(json) = read_json_if_present(&legacy)? {
            match json.get("chat_template") {
                Some(Json::String(s)) => chat_template = Some((s.clone(), legacy)),
                _ => {
                    return Err(Error::tokenizer_load(format!(
                        "{}: has no \"chat_template\" string",
                        legacy.display()
                    )))
                }
            }
        }
    }
    Ok(ModelFiles {
        dir: dir.to_path_buf(),
        tokenizer_json,
        special_tokens,
        chat_template,
        tool_use_template,
    })
}

fn read_json_if_present(path: &Path) -> Result<Option<Json>, Error> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::tokenizer_load(format!("{}: not valid JSON: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::tokenizer_load(format!("{}: {e}", path.display()))),
    }
}

/// A special token is written as its text or as an AddedToken object (`{"content": ...}`).
fn token_text(value: Option<&Json>) -> Option<String> {
    match value? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

type Template = Option<(String, PathBuf)>;

fn config_templates(config: &Json, path: &Path) -> Result<(Template, Template), Error> {
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok((None, None)),
        Some(Json::String(s)) => Ok((Some((s.clone(), path.to_path_buf())), None)),
        Some(Json::Array(named)) => {
            let mut default = None;
            let mut tool_use = None;
            for entry in named {
                let (Some(name), Some(template)) = (
                    entry.get("name").and_then(Json::as_str),
                    entry.get("template").and_then(Json::as_str),
                ) else {
                    return Err(Error::tokenizer_load(format!(
                        "{}: chat_template entries must be {{\"name\", \"template\"}} objects",
                        path.display()
                    )));
                };
                match name {
                    "default" => default = Some((template.to_string(), path.to_path_buf())),
                    "tool_use" => tool_use = Some((template.to_string(), path.to_path_buf())),
                    _ => {}
                }
            }
            Ok((default, tool_use))
        }
        Some(_) => Err(Error::tokenizer_load(format!(
            "{}: chat_template must be a string or a list of named templates",
            path.display()
        ))),
    }
}
