//! A chat template compiled once and rendered as Hugging Face `transformers` renders it with
//! Jinja2: `trim_blocks` and `lstrip_blocks` on, loop controls, Python string and dict methods
//! (minijinja-contrib pycompat), Python's `str()` for printed values, `tojson` as
//! `json.dumps(x, ensure_ascii=False, ...)`, and the globals `raise_exception` and
//! `strftime_now`. The `{% generation %}` block of training templates renders its body.

use std::collections::BTreeSet;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};

use crate::clock::strftime_now;
use crate::pyjson::{dumps, python_str, JsonStyle};

const NAME: &str = "chat_template";

/// A compiled chat template. Invariant: `env` holds exactly one template, named [`NAME`].
pub struct ChatTemplate {
    env: Environment<'static>,
    variables: BTreeSet<String>,
}

impl ChatTemplate {
    /// Compiles `source`; the error says what is wrong and where (line), not which file: the
    /// caller knows that.
    pub fn compile(source: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(python_methods);
        env.add_filter("trim", |value: String, chars: Option<String>| {
            strip(&value, chars.as_deref(), true, true)
        });
        env.set_formatter(|out, _state, value| {
            // Strings (message text) are written as they are, without a copy.
            let written = match (value.kind(), value.as_str()) {
                (ValueKind::String, Some(s)) => out.write_str(s),
                _ => out.write_str(&python_str(value)),
            };
            written.map_err(JinjaError::from)
        });
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |format: String| strftime_now(&format));
        env.add_template_owned(NAME, without_generation_tags(source))
            .map_err(|e| describe(&e))?;
        let variables = env
            .get_template(NAME)
            .map_err(|e| describe(&e))?
            .undeclared_variables(false)
            .into_iter()
            .collect();
        Ok(ChatTemplate { env, variables })
    }

    /// The top-level variables the template reads (`messages`, `tools`, `enable_thinking`...):
    /// what vLLM keeps of a request's `chat_template_kwargs`.
    pub fn variables(&self) -> &BTreeSet<String> {
        &self.variables
    }

    /// Renders with `context` (a map of the template's variables). A `raise_exception` in the
    /// template becomes its message.
    pub fn render(&self, context: &Value) -> Result<String, String> {
        let template = self.env.get_template(NAME).map_err(|e| describe(&e))?;
        template.render(context).map_err(|e| describe(&e))
    }
}

/// The error's own text with its cause chain and the template line, without minijinja's
/// multi-line debug dump.
fn describe(err: &JinjaError) -> String {
    if err.kind() == ErrorKind::InvalidOperation {
        if let Some(detail) = err.detail() {
            if let Some(message) = detail.strip_prefix(RAISED) {
                return message.to_string();
            }
        }
    }
    let mut text = match (err.detail(), err.line()) {
        (Some(detail), Some(line)) => format!("{} (line {line}): {detail}", err.kind()),
        (Some(detail), None) => format!("{}: {detail}", err.kind()),
        (None, Some(line)) => format!("{} (line {line})", err.kind()),
        (None, None) => err.kind().to_string(),
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

const RAISED: &str = "raise_exception: ";

/// Python's `str.isspace`: Unicode White_Space plus the ASCII separators 0x1c-0x1f, which Rust's
/// `char::is_whitespace` leaves out.
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.strip/lstrip/rstrip(chars=None)`.
fn strip(s: &str, chars: Option<&str>, left: bool, right: bool) -> String {
    let remove = |c: char| match chars {
        Some(set) => set.contains(c),
        None => python_space(c),
    };
    let s = if left {
        s.trim_start_matches(remove)
    } else {
        s
    };
    let s = if right { s.trim_end_matches(remove) } else { s };
    s.to_string()
}

/// Python's string methods as pycompat provides them, with `strip`/`lstrip`/`rstrip` taking
/// Python's whitespace.
fn python_methods(
    state: &minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, JinjaError> {
    if let (Some(s), "strip" | "lstrip" | "rstrip") = (value.as_str(), method) {
        let chars = match args {
            [] => None,
            [v] if v.is_none() => None,
            [v] => Some(v.as_str().ok_or_else(|| {
                JinjaError::new(ErrorKind::InvalidOperation, "strip arg must be None or str")
            })?),
            _ => {
                return Err(JinjaError::new(
                    ErrorKind::TooManyArguments,
                    method.to_string(),
                ))
            }
        };
        return Ok(Value::from(strip(
            s,
            chars,
            method != "rstrip",
            method != "lstrip",
        )));
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

fn raise_exception(message: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{message}"),
    ))
}

/// `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)` as
/// transformers defines it (Jinja2's own would HTML-escape `<`, `>`, `&` and `'`).
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, JinjaError> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent_text = match &indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => Some(" ".repeat(v.as_i64().unwrap_or(0).max(0) as usize)),
        },
    };
    let (item_sep, key_sep) = match &separators {
        Some(v) if !v.is_none() => {
            let item = v.get_item(&Value::from(0))?;
            let key = v.get_item(&Value::from(1))?;
            (
                item.as_str().unwrap_or(",").to_string(),
                key.as_str().unwrap_or(": ").to_string(),
            )
        }
        _ if indent_text.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        indent: indent_text.as_deref(),
        item_sep: &item_sep,
        key_sep: &key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    dumps(&value, &style)
        .map(Value::from)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e))
}

/// `{% generation %}`/`{% endgeneration %}` (transformers' AssistantTracker extension, which only
/// marks spans) become a block that always renders, keeping the tags' whitespace control.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (open_ctl, body) = split_control(inner, true);
        let (body, close_ctl) = split_control(body, false);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => out.push_str(&format!("{{%{open_ctl} {r} {close_ctl}%}}")),
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Splits a leading (or trailing) `-`/`+` whitespace-control mark off a tag's inside.
fn split_control(inner: &str, leading: bool) -> (&str, &str) {
    let marks = ['-', '+'];
    if leading {
        match inner.chars().next() {
            Some(c) if marks.contains(&c) => (&inner[..1], &inner[1..]),
            _ => ("", inner),
        }
    } else {
        match inner.chars().last() {
            Some(c) if marks.contains(&c) => (&inner[..inner.len() - 1], &inner[inner.len() - 1..]),
            _ => (inner, ""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, ctx: serde_json::Value) -> Result<String, String> {
        ChatTemplate::compile(source)?.render(&Value::from_serialize(ctx))
    }

    #[test]
    fn python_printing_and_tojson() {
        let out = render(
            "{{ flag }} {{ nothing }} {{ items }} {{ obj | tojson }} {{ obj | tojson(indent=2) }}",
            serde_json::json!({"flag": true, "nothing": null, "items": [1, "a"], "obj": {"b": "<é>", "a": [1.0]}}),
        )
        .unwrap();
        assert_eq!(out, "True None [1, 'a'] {\"b\": \"<é>\", \"a\": [1.0]} {\n  \"b\": \"<é>\",\n  \"a\": [\n    1.0\n  ]\n}");
    }

    #[test]
    fn trim_and_lstrip_blocks_and_python_methods() {
        let out = render(
            "{% for m in messages %}\n    {% if m.startswith('a') %}\n{{ m.upper() }}|{% endif %}\n{% endfor %}",
            serde_json::json!({"messages": ["ab", "cd", "ae"]}),
        )
        .unwrap();
        assert_eq!(out, "AB|AE|");
    }

    #[test]
    fn strip_and_trim_use_python_whitespace() {
        let out = render(
            "[{{ s | trim }}][{{ s.strip() }}][{{ s.lstrip() }}][{{ 'xxaxx'.strip('x') }}]",
            serde_json::json!({"s": "\u{1c} a \u{3000}\u{1f}"}),
        )
        .unwrap();
        assert_eq!(out, "[a][a][a \u{3000}\u{1f}][a]");
    }

    #[test]
    fn raise_exception_carries_its_message() {
        let err = render(
            "{{ raise_exception('roles must alternate') }}",
            serde_json::json!({}),
        )
        .unwrap_err();
        assert_eq!(err, "roles must alternate");
    }

    #[test]
    fn generation_block_renders_its_body() {
        let out = render(
            "a{%- generation -%} b {%- endgeneration %}c",
            serde_json::json!({}),
        )
        .unwrap();
        assert_eq!(out, "abc");
    }

    #[test]
    fn variables_are_the_undeclared_ones() {
        let t = ChatTemplate::compile(
            "{% set x = 1 %}{{ messages }}{% if enable_thinking %}{{ x }}{% endif %}",
        )
        .map_err(|e| e.to_string())
        .unwrap();
        assert!(t.variables().contains("messages") && t.variables().contains("enable_thinking"));
        assert!(!t.variables().contains("x"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let Err(err) = ChatTemplate::compile("ok\n{% if %}") else {
            panic!("compiled")
        };
        assert!(err.contains("line 2"), "{err}");
    }
}
