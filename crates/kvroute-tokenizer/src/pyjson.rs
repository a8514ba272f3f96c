//! Python's text forms of template values, byte for byte: `json.dumps` (what Hugging Face's
//! `tojson` filter calls, with `ensure_ascii=False`) and `str()`/`repr()` (what Jinja2 prints for
//! `{{ value }}`). Chat templates put both into prompts (tool schemas, tool-call arguments,
//! booleans), so a different space or quote changes the token ids.

use minijinja::value::{Value, ValueKind};

/// How `json.dumps` lays out its output.
pub struct JsonStyle<'a> {
    /// `indent`: None is one line; Some(n) puts each item on its own line, n spaces deeper.
    pub indent: Option<&'a str>,
    /// `separators` (item, key); Python's defaults are `(", ", ": ")`, or `(",", ": ")` with an
    /// indent.
    pub item_sep: &'a str,
    pub key_sep: &'a str,
    pub sort_keys: bool,
}

impl JsonStyle<'_> {
    pub const PYTHON_DEFAULT: JsonStyle<'static> = JsonStyle {
        indent: None,
        item_sep: ", ",
        key_sep: ": ",
        sort_keys: false,
    };
}

/// `json.dumps(value, ensure_ascii=False, ...)`.
pub fn dumps(value: &Value, style: &JsonStyle<'_>) -> Result<String, String> {
    let mut out = String::new();
    write_json(&mut out, value, style, 0)?;
    Ok(out)
}

fn newline_indent(out: &mut String, style: &JsonStyle<'_>, depth: usize) {
    if let Some(unit) = style.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(unit);
        }
    }
}

fn write_json(
    out: &mut String,
    value: &Value,
    style: &JsonStyle<'_>,
    depth: usize,
) -> Result<(), String> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value, true),
        ValueKind::String | ValueKind::Bytes => {
            write_json_string(out, value.as_str().unwrap_or_default())
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter().map_err(|e| e.to_string())?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(style.item_sep);
                }
                newline_indent(out, style, depth + 1);
                write_json(out, item, style, depth + 1)?;
            }
            newline_indent(out, style, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter().map_err(|e| e.to_string())?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if style.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(style.item_sep);
                }
                newline_indent(out, style, depth + 1);
                // JSON keys are strings; Python turns numbers, booleans and None into their JSON text.
                match key.kind() {
                    ValueKind::String => write_json_string(out, key.as_str().unwrap_or_default()),
                    _ => {
                        let mut k = String::new();
                        write_json(&mut k, key, style, depth + 1)?;
                        write_json_string(out, &k);
                    }
                }
                out.push_str(style.key_sep);
                let item = value.get_item(key).map_err(|e| e.to_string())?;
                write_json(out, &item, style, depth + 1)?;
            }
            newline_indent(out, style, depth);
            out.push('}');
        }
        other => return Err(format!("Object of type {other} is not JSON serializable")),
    }
    Ok(())
}

/// A number as Python writes it: integers plainly; floats with `repr(float)`
/// (shortest round-trip digits, always a `.0` or an exponent; `NaN`/`Infinity` in JSON).
fn write_number(out: &mut String, value: &Value, json: bool) {
    if value.is_integer() {
        out.push_str(&value.to_string());
        return;
    }
    match f64::try_from(value.clone()) {
        Ok(f) => out.push_str(&python_float(f, json)),
        Err(_) => out.push_str(&value.to_string()),
    }
}

/// `repr(float)` (and `json.dumps` of a float).
pub fn python_float(f: f64, json: bool) -> String {
    if f.is_nan() {
        return if json { "NaN" } else { "nan" }.into();
    }
    if f.is_infinite() {
        return match (json, f > 0.0) {
            (true, true) => "Infinity",
            (true, false) => "-Infinity",
            (false, true) => "inf",
            (false, false) => "-inf",
        }
        .into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits; lay them out as Python's repr does:
    // plain notation for exponents in [-5, 16), scientific (e+XX / e-XX) otherwise.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if negative { "-" } else { "" };
    if (-5..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp >= 0 {
            let int_len = exp + 1;
            if n <= int_len {
                format!("{}{}.0", digits, "0".repeat((int_len - n) as usize))
            } else {
                format!(
                    "{}.{}",
                    &digits[..int_len as usize],
                    &digits[int_len as usize..]
                )
            }
        } else {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

/// A JSON string with `ensure_ascii=False`: only `"`, `\` and control characters are escaped.
fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// What Jinja2 prints for `{{ value }}`: `str(value)`, so Python's `True`, `None`, `1.0`, and
/// `repr()` inside lists and dicts (`{'a': [1, 'b']}`).
pub fn python_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        _ => python_repr(value),
    }
}

fn python_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, value);
    out
}

fn write_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => write_number(out, value, false),
        ValueKind::String | ValueKind::Bytes => {
            write_repr_string(out, value.as_str().unwrap_or_default())
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(items) = value.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(out, &item);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = value.try_iter() {
                for (i, key) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(out, &key);
                    out.push_str(": ");
                    write_repr(out, &value.get_item(&key).unwrap_or_default());
                }
            }
            out.push('}');
        }
        _ => out.push_str(&value.to_string()),
    }
}

/// `repr(str)`: single quotes unless the text has `'` and no `"`; escapes as CPython does for
/// printable Unicode (`\n`, `\t`, `\\`, `\xNN` for other controls).
fn write_repr_string(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(json: &str) -> Value {
        Value::from_serialize(serde_json::from_str::<serde_json::Value>(json).unwrap())
    }

    #[test]
    fn dumps_matches_python_defaults() {
        let s = dumps(
            &v(r#"{"b": [1, 2.5, true, null], "a": "é\"\n<>&'"}"#),
            &JsonStyle::PYTHON_DEFAULT,
        )
        .unwrap();
        assert_eq!(
            s,
            r#"{"b": [1, 2.5, true, null], "a": "é\"\n<>&'"}"#.replace("\n", "\\n")
        );
    }

    #[test]
    fn dumps_indented() {
        let style = JsonStyle {
            indent: Some("    "),
            item_sep: ",",
            key_sep: ": ",
            sort_keys: false,
        };
        assert_eq!(
            dumps(&v(r#"{"a": [1], "b": {}}"#), &style).unwrap(),
            "{\n    \"a\": [\n        1\n    ],\n    \"b\": {}\n}"
        );
    }

    #[test]
    fn floats_as_python_repr() {
        assert_eq!(python_float(1.0, true), "1.0");
        assert_eq!(python_float(0.1, true), "0.1");
        assert_eq!(python_float(1e16, true), "1e+16");
        assert_eq!(python_float(1.5e-7, true), "1.5e-07");
        assert_eq!(python_float(123456.789, true), "123456.789");
        assert_eq!(python_float(-0.0001, true), "-0.0001");
    }

    #[test]
    fn str_and_repr() {
        assert_eq!(python_str(&v("true")), "True");
        assert_eq!(python_str(&v("null")), "None");
        assert_eq!(
            python_str(&v(r#"{"a": [1, "b'c", false]}"#)),
            r#"{'a': [1, "b'c", False]}"#
        );
        assert_eq!(python_str(&v(r#""plain""#)), "plain");
    }
}
