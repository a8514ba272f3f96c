//! Chat templates rendered by hand-written code when a model folder's template is, byte for
//! byte, one this module knows (Qwen3's, Llama 3's). The output is the text minijinja renders
//! (src/template.rs), without its VM: on a 60k-token conversation minijinja spends most of a
//! request's tokenizing time evaluating the template and copying each message 3-5 times through
//! string `+`. llama.cpp keeps hand-written formatters for known templates for the same reason.
//!
//! A port covers the common shape of its template's input and declines the rest (returns None:
//! minijinja renders): tools, tool calls, reasoning fields, content that is not a string (and for
//! Qwen3 an empty conversation, an error in Jinja). Variables its template does not read are
//! ignored: they cannot change the output. Exactness is checked by vLLM's golden cases
//! (tests/golden.rs renders through here) and by random conversations compared with minijinja
//! (tests/native_chat.rs); at run time by the gateway's tokenization parity check.

use serde_json::{Map, Value as Json};

use crate::tokenizer::python_strip;

/// A known template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeTemplate {
    /// Qwen3's chat template (Qwen3 0.6B to 235B, tokenizer_config.json of April 2025).
    Qwen3,
    /// Meta Llama 3's chat template (the one without tools).
    Llama3,
}

/// xxh3-128 of each known template's exact source.
const KNOWN: [(u128, NativeTemplate); 2] = [
    (0x4457e3d12b367a860283f874ff58d644, NativeTemplate::Qwen3),
    (0x09facc0e4aa943189799ad6e2dea0594, NativeTemplate::Llama3),
];

impl NativeTemplate {
    /// Its name in logs and the API ("qwen3", "llama3").
    pub fn name(self) -> &'static str {
        match self {
            NativeTemplate::Qwen3 => "qwen3",
            NativeTemplate::Llama3 => "llama3",
        }
    }

    /// The port for `source`, if it is one of the known templates byte for byte.
    pub fn recognize(source: &str) -> Option<Self> {
        let hash = xxhash_rust::xxh3::xxh3_128(source.as_bytes());
        KNOWN.iter().find(|(h, _)| *h == hash).map(|(_, t)| *t)
    }

    /// The rendered prompt, or None when the input is outside what the port covers. `kwargs`
    /// are the request's template variables, which win over `special_tokens` (bos_token...); a
    /// port reads only the variables its template reads, so any other cannot change the output.
    pub fn render(
        self,
        messages: &[&PlainMessage],
        kwargs: &Map<String, Json>,
        special_tokens: &Map<String, Json>,
    ) -> Option<String> {
        let var = |name: &str| kwargs.get(name).or_else(|| special_tokens.get(name));
        let add_generation_prompt = var("add_generation_prompt").is_some_and(truthy);
        match self {
            NativeTemplate::Qwen3 => {
                if var("tools").is_some_and(truthy) {
                    return None;
                }
                let no_thinking = var("enable_thinking") == Some(&Json::Bool(false));
                qwen3(messages, add_generation_prompt, no_thinking)
            }
            NativeTemplate::Llama3 => {
                let bos = var("bos_token")?.as_str()?;
                Some(llama3(messages, bos, add_generation_prompt))
            }
        }
    }
}

/// A message as the ports read it: string role and content, nothing they do not render. Made
/// once per message (the tokenizer's message cache keeps it across a conversation's turns), with
/// what the Qwen3 port would otherwise search every content for on every turn.
#[derive(Debug)]
pub struct PlainMessage {
    role: Box<str>,
    content: Box<str>,
    /// Byte offsets of the first and the last `</think>` in `content`.
    think_close: Option<(usize, usize)>,
}

impl PlainMessage {
    /// None: the message has what no port renders (non-string content, tool calls, a reasoning
    /// field).
    pub fn of(m: &Json) -> Option<Self> {
        let m = m.as_object()?;
        // Fields the Qwen3 template renders when set; no port renders them.
        for field in ["tool_calls", "reasoning_content"] {
            if m.get(field).is_some_and(|v| !v.is_null()) {
                return None;
            }
        }
        let content = m.get("content")?.as_str()?;
        let think_close = content
            .find(THINK_CLOSE)
            .map(|first| (first, content.rfind(THINK_CLOSE).unwrap_or(first)));
        Some(PlainMessage {
            role: m.get("role")?.as_str()?.into(),
            content: content.into(),
            think_close,
        })
    }
}

const THINK_CLOSE: &str = "</think>";

/// Jinja's truth of a value.
fn truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64() != Some(0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
    }
}

fn with_capacity(messages: &[&PlainMessage]) -> String {
    String::with_capacity(messages.iter().map(|m| m.content.len() + 48).sum::<usize>() + 64)
}

/// Qwen3's template without tools. The Python string methods it calls are spelled out:
/// `split(sep)[-1]` is the text after the last `sep`, `split(sep)[0]` before the first.
fn qwen3(
    messages: &[&PlainMessage],
    add_generation_prompt: bool,
    no_thinking: bool,
) -> Option<String> {
    // `messages[0].role` of an empty list is an error in Jinja: minijinja says which.
    let first = messages.first()?;
    let mut out = with_capacity(messages);
    if &*first.role == "system" {
        push_all(
            &mut out,
            &["<|im_start|>system\n", &first.content, "<|im_end|>\n"],
        );
    }
    // The last user turn that is not a tool response wrapped as a user message.
    let last_query = messages
        .iter()
        .rposition(|m| {
            &*m.role == "user"
                && !(m.content.starts_with("<tool_response>")
                    && m.content.ends_with("</tool_response>"))
        })
        .unwrap_or(messages.len() - 1);
    let last = messages.len() - 1;
    for (i, m) in messages.iter().enumerate() {
        match &*m.role {
            "user" => push_all(
                &mut out,
                &["<|im_start|>user\n", &m.content, "<|im_end|>\n"],
            ),
            "system" if i > 0 => push_all(
                &mut out,
                &["<|im_start|>system\n", &m.content, "<|im_end|>\n"],
            ),
            "assistant" => {
                let (content, reasoning) = match m.think_close {
                    Some((first_close, last_close)) => {
                        let after =
                            m.content[last_close + THINK_CLOSE.len()..].trim_start_matches('\n');
                        let before = m.content[..first_close].trim_end_matches('\n');
                        let thought = match before.rfind("<think>") {
                            Some(at) => &before[at + "<think>".len()..],
                            None => before,
                        };
                        (after, thought.trim_start_matches('\n'))
                    }
                    None => (&*m.content, ""),
                };
                if i > last_query && (i == last || !reasoning.is_empty()) {
                    push_all(
                        &mut out,
                        &[
                            "<|im_start|>assistant\n<think>\n",
                            reasoning.trim_matches('\n'),
                            "\n</think>\n\n",
                            content.trim_start_matches('\n'),
                        ],
                    );
                } else {
                    push_all(&mut out, &["<|im_start|>assistant\n", content]);
                }
                out.push_str("<|im_end|>\n");
            }
            "tool" => {
                if i == 0 || &*messages[i - 1].role != "tool" {
                    out.push_str("<|im_start|>user");
                }
                push_all(
                    &mut out,
                    &["\n<tool_response>\n", &m.content, "\n</tool_response>"],
                );
                if i == last || &*messages[i + 1].role != "tool" {
                    out.push_str("<|im_end|>\n");
                }
            }
            // A first system message is rendered above; other roles render nothing.
            _ => {}
        }
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
        if no_thinking {
            out.push_str("<think>\n\n</think>\n\n");
        }
    }
    Some(out)
}

/// Llama 3's template: each message's content stripped (Python's `str.strip()`, the `trim` filter
/// of src/template.rs), `bos_token` before the first.
fn llama3(messages: &[&PlainMessage], bos: &str, add_generation_prompt: bool) -> String {
    let mut out = with_capacity(messages);
    out.push_str(if messages.is_empty() { "" } else { bos });
    for m in messages {
        push_all(
            &mut out,
            &[
                "<|start_header_id|>",
                &m.role,
                "<|end_header_id|>\n\n",
                python_strip(&m.content),
                "<|eot_id|>",
            ],
        );
    }
    if add_generation_prompt {
        out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
    }
    out
}

fn push_all(out: &mut String, parts: &[&str]) {
    for p in parts {
        out.push_str(p);
    }
}
