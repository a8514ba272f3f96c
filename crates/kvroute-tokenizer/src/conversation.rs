//! An OpenAI `/v1/chat/completions` body to the variables vLLM 0.33 gives the chat template,
//! rewritten as vLLM rewrites them (docs/tokenization.md lists each rule and its source):
//!
//! - content: a string, null (`""`) or a list of parts; the non-empty texts of `text` and
//!   `refusal` parts and bare strings are joined with "\n" when the template takes content as a
//!   string, or kept as `{"type": "text", "text"}` dicts when it loops over content ("openai"
//!   format); other part types are refused (media cannot be keyed by text).
//! - system messages lose a leading `x-anthropic-billing-header` line.
//! - assistant: `tool_calls` kept as `{id, function: {name, arguments}, type}` (an empty list
//!   dropped), each `arguments` string parsed into an object (`{}` when empty, invalid or not an
//!   object); `reasoning` (or its alias `reasoning_content`) copied to both keys, unless content is
//!   null. Keys a message type does not declare are dropped.
//! - tool: `tool_call_id` kept; `name` and `task` kept on any message when strings.
//! - developer: kept as `developer` (with its `tools`) when the template names that role, else
//!   turned into system messages merged into one at the front.
//! - kwargs: `add_generation_prompt` (default true), `documents`, `reasoning_effort` (and
//!   `enable_thinking` from it), `tools` re-dumped as vLLM's pydantic models dump them, and the
//!   request's `chat_template_kwargs` that the template reads (null and "auto" values dropped).

use std::borrow::Cow;

use serde_json::{Map, Value as Json};

/// How the template reads message content (vLLM's `--chat-template-content-format auto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentFormat {
    String,
    OpenAi,
}

/// Parameters of transformers' `apply_chat_template` (`PythonBackend.apply_chat_template`): vLLM
/// lets these through its kwargs filter, and transformers consumes them; of them only `tools`,
/// `documents` and `add_generation_prompt` reach the template.
const HF_APPLY_PARAMS: [&str; 14] = [
    "tools",
    "documents",
    "chat_template",
    "add_generation_prompt",
    "continue_final_message",
    "tokenize",
    "sanitize_control_tokens",
    "padding",
    "truncation",
    "max_length",
    "return_tensors",
    "return_dict",
    "return_assistant_tokens_mask",
    "tokenizer_kwargs",
];

/// The request as the template will see it.
pub struct TemplateInput {
    pub messages: Vec<Json>,
    /// The template's other variables: `tools`, `documents`, `add_generation_prompt` and the
    /// request's kwargs that survive vLLM's filter (they override the special tokens).
    pub kwargs: Map<String, Json>,
    pub continue_final_message: bool,
    /// The request's `add_special_tokens` (vLLM's default for chat: false).
    pub add_special_tokens: bool,
}

const BILLING_HEADER: &str = "x-anthropic-billing-header";

/// Builds the template's input from a chat request body. `template_vars` are the variables the
/// template reads; `developer_role` says whether it names the `developer` role.
pub fn from_request(
    request: &Json,
    format: ContentFormat,
    template_vars: &std::collections::BTreeSet<String>,
    developer_role: bool,
) -> Result<TemplateInput, String> {
    let obj = request
        .as_object()
        .ok_or("a chat request must be a JSON object")?;
    let raw_messages = obj
        .get("messages")
        .and_then(Json::as_array)
        .ok_or("'messages' must be a list of messages")?;
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (i, m) in raw_messages.iter().enumerate() {
        messages.push(message(m, format).map_err(|e| format!("messages[{i}]: {e}"))?);
    }
    if needs_developer_rewrite(&messages, developer_role) {
        messages = developer_as_system(messages);
    }
    let (kwargs, continue_final_message, add_special_tokens) = request_kwargs(obj, template_vars)?;
    Ok(TemplateInput {
        messages,
        kwargs,
        continue_final_message,
        add_special_tokens,
    })
}

/// Whether developer messages must become system messages (the template does not name the role).
pub fn needs_developer_rewrite(messages: &[Json], developer_role: bool) -> bool {
    !developer_role && messages.iter().any(|m| role_of(m) == "developer")
}

/// The template variables other than `messages`, from the request's other fields, with
/// `continue_final_message` and `add_special_tokens`.
pub fn request_kwargs(
    obj: &Map<String, Json>,
    template_vars: &std::collections::BTreeSet<String>,
) -> Result<(Map<String, Json>, bool, bool), String> {
    let flag = |name: &str, default: bool| match obj.get(name) {
        None | Some(Json::Null) => Ok(default),
        Some(Json::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("'{name}' must be a boolean")),
    };
    let add_generation_prompt = flag("add_generation_prompt", true)?;
    let continue_final_message = flag("continue_final_message", false)?;
    if add_generation_prompt && continue_final_message {
        return Err(
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True.".into(),
        );
    }
    let user_kwargs = match obj.get("chat_template_kwargs") {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(o)) => o.clone(),
        Some(_) => return Err("'chat_template_kwargs' must be an object".into()),
    };
    for reserved in ["chat_template", "tokenize"] {
        if user_kwargs.contains_key(reserved) {
            return Err(format!(
                "Found unexpected chat template kwargs from request: {{'{reserved}'}}"
            ));
        }
    }

    // vLLM's merge: the request's kwargs, then its own fields on top (a null or "auto" never
    // overrides), all over the defaults (tools), again without null or "auto" values.
    let mut merged = user_kwargs.clone();
    let mut set = |k: &str, v: Json| {
        if !unset(&v) {
            merged.insert(k.to_string(), v);
        }
    };
    set("add_generation_prompt", Json::Bool(add_generation_prompt));
    set("continue_final_message", Json::Bool(continue_final_message));
    set(
        "documents",
        obj.get("documents").cloned().unwrap_or(Json::Null),
    );
    let reasoning_effort = obj.get("reasoning_effort").cloned().unwrap_or(Json::Null);
    if !reasoning_effort.is_null() && !user_kwargs.contains_key("enable_thinking") {
        set(
            "enable_thinking",
            Json::Bool(reasoning_effort.as_str() != Some("none")),
        );
    }
    set("reasoning_effort", reasoning_effort);
    let mut kwargs = Map::new();
    if let Some(tools) = obj.get("tools").filter(|t| !t.is_null()) {
        kwargs.insert("tools".into(), tool_definitions(tools)?);
    }
    for (k, v) in merged {
        if !unset(&v) {
            kwargs.insert(k, v);
        }
    }
    kwargs.retain(|k, _| template_vars.contains(k) || HF_APPLY_PARAMS.contains(&k.as_str()));
    // Of its own parameters, transformers hands these three to the template.
    let tools = kwargs.remove("tools").unwrap_or(Json::Null);
    let documents = kwargs.remove("documents").unwrap_or(Json::Null);
    kwargs.retain(|k, _| !HF_APPLY_PARAMS.contains(&k.as_str()));
    kwargs.insert("tools".into(), tools);
    kwargs.insert("documents".into(), documents);
    kwargs.insert(
        "add_generation_prompt".into(),
        Json::Bool(add_generation_prompt),
    );
    Ok((
        kwargs,
        continue_final_message,
        flag("add_special_tokens", false)?,
    ))
}

/// merge_kwargs's unset values.
fn unset(v: &Json) -> bool {
    v.is_null() || v.as_str() == Some("auto")
}

/// `[tool.model_dump() for tool in request.tools]`: `{"type": "function", "function": {"name",
/// "description", "parameters"[, "strict"][, "defer_loading"]}}`, null description and parameters
/// kept, other keys dropped.
fn tool_definitions(tools: &Json) -> Result<Json, String> {
    let tools = tools.as_array().ok_or("'tools' must be a list")?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let err = |what: &str| format!("tools[{i}]: {what}");
        let t = tool.as_object().ok_or_else(|| err("must be an object"))?;
        if t.get("type")
            .is_some_and(|k| k.as_str() != Some("function"))
        {
            return Err(err("'type' must be \"function\""));
        }
        let f = t
            .get("function")
            .and_then(Json::as_object)
            .ok_or_else(|| err("'function' must be an object"))?;
        let name = f
            .get("name")
            .and_then(Json::as_str)
            .ok_or_else(|| err("'function.name' must be a string"))?;
        let present = |v: Option<&Json>| v.filter(|v| !v.is_null()).cloned();
        let mut function = Map::new();
        function.insert("name".into(), Json::String(name.into()));
        function.insert(
            "description".into(),
            present(f.get("description")).unwrap_or(Json::Null),
        );
        function.insert(
            "parameters".into(),
            present(f.get("parameters")).unwrap_or(Json::Null),
        );
        if let Some(strict) = present(f.get("strict")) {
            function.insert("strict".into(), strict);
        }
        let tool_defer = present(t.get("defer_loading"));
        if let Some(defer) = present(f.get("defer_loading")).or(tool_defer.clone()) {
            function.insert("defer_loading".into(), defer);
        }
        let mut tool = Map::new();
        tool.insert("type".into(), Json::String("function".into()));
        tool.insert("function".into(), Json::Object(function));
        if let Some(defer) = tool_defer {
            tool.insert("defer_loading".into(), defer);
        }
        out.push(Json::Object(tool));
    }
    Ok(Json::Array(out))
}

fn role_of(m: &Json) -> &str {
    m.get("role").and_then(Json::as_str).unwrap_or("")
}

/// One message rewritten as vLLM rewrites it (see the module comment).
pub fn message(m: &Json, format: ContentFormat) -> Result<Json, String> {
    let obj = m.as_object().ok_or("a message must be an object")?;
    let role = obj
        .get("role")
        .and_then(Json::as_str)
        .ok_or("'role' must be a string")?;
    let content = obj.get("content");
    // Borrowed unless a system message loses its billing header: one copy of the text in all.
    let parts: Cow<[Json]> = match content {
        None | Some(Json::Null) => Cow::Owned(Vec::new()),
        Some(s @ Json::String(_)) => Cow::Borrowed(std::slice::from_ref(s)),
        Some(Json::Array(parts)) => Cow::Borrowed(parts.as_slice()),
        Some(_) => return Err("'content' must be a string, a list of parts or null".into()),
    };
    let parts = if role == "system" && has_billing_header(&parts) {
        Cow::Owned(without_billing_header(parts.into_owned()))
    } else {
        parts
    };
    let mut texts: Vec<&str> = Vec::new();
    for part in parts.iter() {
        let text = match part {
            Json::String(s) => Some(s.as_str()),
            Json::Object(p) => {
                let kind = p.get("type").and_then(Json::as_str).unwrap_or("");
                let field = match kind {
                    "text" => "text",
                    "refusal" => "refusal",
                    "tool_reference" => "name",
                    _ => {
                        return Err(format!(
                            "content part of type '{kind}' is not supported here (text-only models take 'text' parts)"
                        ))
                    }
                };
                match p.get(field) {
                    None | Some(Json::Null) => None,
                    Some(Json::String(s)) => Some(s.as_str()),
                    Some(_) => {
                        return Err(format!("content part '{kind}': '{field}' must be a string"))
                    }
                }
            }
            _ => return Err("a content part must be a string or an object".into()),
        };
        // Empty texts are dropped (vLLM skips falsy parts); each kept text becomes a line.
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            texts.push(text);
        }
    }
    let mut out = Map::new();
    out.insert("role".into(), Json::String(role.to_string()));
    let content_value = match format {
        // Tool results become one string in both formats, as most templates expect.
        ContentFormat::String => Json::String(texts.join("\n")),
        ContentFormat::OpenAi if role == "tool" => Json::String(texts.join("\n")),
        ContentFormat::OpenAi => Json::Array(
            texts
                .into_iter()
                .map(|t| {
                    let mut d = Map::new();
                    d.insert("type".into(), Json::String("text".into()));
                    d.insert("text".into(), Json::String(t.to_string()));
                    Json::Object(d)
                })
                .collect(),
        ),
    };
    out.insert("content".into(), content_value);
    match role {
        "assistant" => {
            if let Some(calls) = obj.get("tool_calls").filter(|c| !c.is_null()) {
                let calls = calls.as_array().ok_or("'tool_calls' must be a list")?;
                if !calls.is_empty() {
                    let parsed: Result<Vec<Json>, String> = calls.iter().map(tool_call).collect();
                    out.insert("tool_calls".into(), Json::Array(parsed?));
                }
            }
            // `reasoning_content` is an alias of `reasoning`; request validation drops both from an
            // assistant message whose content is null (only OpenAI's own type takes null content).
            let reasoning = match obj.get("reasoning") {
                Some(r) if !r.is_null() => Some(r),
                _ => obj.get("reasoning_content").filter(|r| !r.is_null()),
            };
            if let Some(reasoning) = reasoning.filter(|_| !matches!(content, Some(Json::Null))) {
                out.insert("reasoning".into(), reasoning.clone());
                out.insert("reasoning_content".into(), reasoning.clone());
            }
        }
        "tool" => {
            if let Some(id) = obj.get("tool_call_id") {
                out.insert("tool_call_id".into(), id.clone());
            }
        }
        _ => {}
    }
    for key in ["name", "task"] {
        if let Some(Json::String(s)) = obj.get(key) {
            out.insert(key.into(), Json::String(s.clone()));
        }
    }
    if role == "developer" {
        out.insert(
            "tools".into(),
            obj.get("tools").cloned().unwrap_or(Json::Null),
        );
    }
    Ok(Json::Object(out))
}

/// An assistant tool call as validated (`{id, function: {name, arguments}, type}`, other keys
/// dropped), with `arguments` parsed from its JSON string into an object (`{}` when empty,
/// invalid or not an object): the template re-serialises it.
fn tool_call(call: &Json) -> Result<Json, String> {
    let obj = call
        .as_object()
        .ok_or("assistant tool_calls entries must be objects.")?;
    let kind = obj.get("type").and_then(Json::as_str).unwrap_or("function");
    let function = match obj.get("function") {
        Some(Json::Object(f)) if kind == "function" => f,
        _ => {
            return Err(
                "chat completions only support assistant tool_calls of type 'function'.".into(),
            )
        }
    };
    let name = function
        .get("name")
        .and_then(Json::as_str)
        .ok_or("tool call 'function.name' must be a string")?;
    let arguments = match function.get("arguments") {
        Some(Json::String(s)) => match serde_json::from_str::<Json>(s) {
            Ok(Json::Object(o)) => Json::Object(o),
            _ => Json::Object(Map::new()),
        },
        _ => return Err("tool call 'function.arguments' must be a string".into()),
    };
    let mut f = Map::new();
    f.insert("name".into(), Json::String(name.into()));
    f.insert("arguments".into(), arguments);
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "id" | "type" => {
                out.insert(k.clone(), v.clone());
            }
            "function" => {
                out.insert(k.clone(), Json::Object(f.clone()));
            }
            _ => {}
        }
    }
    Ok(Json::Object(out))
}

fn has_billing_header(parts: &[Json]) -> bool {
    parts.iter().any(|part| {
        let text = match part {
            Json::String(s) => Some(s.as_str()),
            Json::Object(p) => p.get("text").and_then(Json::as_str),
            _ => None,
        };
        text.is_some_and(|t| t.starts_with(BILLING_HEADER))
    })
}

fn without_billing_header(parts: Vec<Json>) -> Vec<Json> {
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        let text = match &part {
            Json::String(s) => Some(s.as_str()),
            Json::Object(p) if p.get("type").and_then(Json::as_str) == Some("text") => {
                p.get("text").and_then(Json::as_str)
            }
            _ => None,
        };
        let Some(text) = text.filter(|t| t.starts_with(BILLING_HEADER)) else {
            out.push(part);
            continue;
        };
        let rest = text
            .split_once('\n')
            .map(|(_, r)| r)
            .unwrap_or("")
            .to_string();
        if rest.is_empty() {
            continue;
        }
        out.push(match part {
            Json::Object(mut p) => {
                p.insert("text".into(), Json::String(rest));
                Json::Object(p)
            }
            _ => Json::String(rest),
        });
    }
    out
}

/// vLLM's `_convert_developer_to_system` + `_consolidate_system_messages`.
pub fn developer_as_system(messages: Vec<Json>) -> Vec<Json> {
    let mut system_texts: Vec<String> = Vec::new();
    let mut rest = Vec::new();
    let mut needs_merge = false;
    let mut converted = Vec::with_capacity(messages.len());
    for mut m in messages {
        if role_of(&m) == "developer" {
            if let Json::Object(o) = &mut m {
                o.insert("role".into(), Json::String("system".into()));
                o.remove("tools");
            }
        }
        converted.push(m);
    }
    for (i, m) in converted.iter().enumerate() {
        if role_of(m) == "system" {
            if i > 0 || !system_texts.is_empty() {
                needs_merge = true;
            }
            let text = match m.get("content") {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| match p {
                        Json::String(s) => Some(s.clone()),
                        Json::Object(o) => o.get("text").and_then(Json::as_str).map(str::to_string),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => String::new(),
            };
            if !text.is_empty() {
                system_texts.push(text);
            }
        } else {
            rest.push(m.clone());
        }
    }
    if !needs_merge {
        return converted;
    }
    let mut merged = Map::new();
    merged.insert("role".into(), Json::String("system".into()));
    merged.insert("content".into(), Json::String(system_texts.join("\n\n")));
    let mut out = vec![Json::Object(merged)];
    out.extend(rest);
    out
}

/// vLLM's content-format detection, read from the template text: "openai" when the template
/// loops over a message's `content` (`{% for part in message['content'] %}`), else "string".
pub fn detect_content_format(template: &str) -> ContentFormat {
    let mut rest = template;
    while let Some(at) = rest.find("{%") {
        let tag = &rest[at + 2..];
        let end = tag.find("%}").unwrap_or(tag.len());
        let inner = tag[..end].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        if let Some(for_body) = inner.strip_prefix("for ") {
            if let Some((_, iterable)) = for_body.split_once(" in ") {
                let iterable = iterable.trim();
                if iterable.ends_with(".content")
                    || iterable.ends_with("['content']")
                    || iterable.ends_with("[\"content\"]")
                {
                    return ContentFormat::OpenAi;
                }
            }
        }
        rest = &tag[end.min(tag.len())..];
    }
    ContentFormat::String
}

/// Whether the template names the `developer` role (vLLM's `_detect_developer_role_support`).
pub fn supports_developer_role(template: &str) -> bool {
    template.contains("\"developer\"") || template.contains("'developer'")
}
