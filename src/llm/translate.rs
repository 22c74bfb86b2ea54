//! Translation between OpenAI Chat Completions and Anthropic Messages:
//! requests (messages, system prompt, tools and tool choice, sampling
//! parameters), complete responses (content, tool calls, stop reasons,
//! usage) and error bodies. Streamed deltas are in `stream.rs`.
//!
//! Everything works on `serde_json::Value`, so fields one format has and the
//! other lacks are dropped deliberately here rather than by a type.

use serde_json::{json, Map, Value};

use super::usage::Usage;

/// A request that cannot be expressed in the target format.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TranslateError(pub String);

fn invalid(msg: impl Into<String>) -> TranslateError {
    TranslateError(msg.into())
}

/// The text of OpenAI content (a string or parts) or Anthropic content (a
/// string or blocks), text parts joined.
pub fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// OpenAI `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Anthropic `stop_reason` for an OpenAI `finish_reason`.
pub fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Seconds since the epoch, for `created`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// OpenAI request → Anthropic request
// ---------------------------------------------------------------------------

/// Translates an OpenAI chat request into an Anthropic messages request for
/// `model`. Anthropic requires `max_tokens`; `default_max_tokens` fills it.
pub fn chat_to_messages(
    req: &Value,
    model: &str,
    default_max_tokens: u64,
) -> Result<Value, TranslateError> {
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`messages` must be an array"))?;
    if req.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(invalid(
            "`n` above 1 is not supported by this model's provider",
        ));
    }
    let mut system = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => system.push(text_of(content)),
            "user" => push_turn(&mut out, "user", user_blocks(content)?),
            "assistant" => {
                let blocks = assistant_blocks(m)?;
                if !blocks.is_empty() {
                    push_turn(&mut out, "assistant", blocks);
                }
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("a `tool` message needs `tool_call_id`"))?;
                push_turn(
                    &mut out,
                    "user",
                    vec![
                        json!({"type": "tool_result", "tool_use_id": id, "content": text_of(content)}),
                    ],
                );
            }
            other => return Err(invalid(format!("unsupported message role `{other}`"))),
        }
    }
    let max_tokens = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(default_max_tokens);
    let mut a = Map::new();
    a.insert("model".into(), json!(model));
    a.insert("max_tokens".into(), json!(max_tokens));
    a.insert("messages".into(), Value::Array(out));
    let system = system.join("\n\n");
    if !system.is_empty() {
        a.insert("system".into(), json!(system));
    }
    if let Some(t) = req.get("temperature").and_then(Value::as_f64) {
        // OpenAI allows 0..2, Anthropic 0..1.
        a.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    copy(req, &mut a, "top_p", "top_p");
    match req.get("stop") {
        Some(Value::String(s)) => {
            a.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(s)) if !s.is_empty() => {
            a.insert("stop_sequences".into(), Value::Array(s.clone()));
        }
        _ => {}
    }
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        a.insert("stream".into(), json!(true));
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = t
                    .get("function")
                    .ok_or_else(|| invalid("only `function` tools are supported"))?;
                let mut tool = json!({
                    "name": f.get("name").cloned().unwrap_or(json!("")),
                    "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object"})),
                });
                if let Some(d) = f.get("description") {
                    tool["description"] = d.clone();
                }
                Ok(tool)
            })
            .collect::<Result<_, TranslateError>>()?;
        if !tools.is_empty() {
            a.insert("tools".into(), Value::Array(tools));
        }
    }
    let mut choice = match req.get("tool_choice") {
        Some(Value::String(s)) => match s.as_str() {
            "none" => Some(json!({"type": "none"})),
            "required" => Some(json!({"type": "any"})),
            _ => Some(json!({"type": "auto"})),
        },
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .map(|n| json!({"type": "tool", "name": n})),
        _ => None,
    };
    if req.get("parallel_tool_calls") == Some(&json!(false)) && a.contains_key("tools") {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        c["disable_parallel_tool_use"] = json!(true);
    }
    if let (Some(c), true) = (choice, a.contains_key("tools")) {
        a.insert("tool_choice".into(), c);
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        a.insert("metadata".into(), json!({"user_id": user}));
    }
    Ok(Value::Object(a))
}

fn copy(from: &Value, to: &mut Map<String, Value>, key: &str, as_key: &str) {
    if let Some(v) = from.get(key) {
        if !v.is_null() {
            to.insert(as_key.into(), v.clone());
        }
    }
}

/// Appends blocks as a turn, merging with the previous turn of the same
/// role (Anthropic expects alternating turns; OpenAI sends one message per
/// tool result).
fn push_turn(out: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if let Some(last) = out.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some(role) {
            if let Some(existing) = last.get_mut("content").and_then(Value::as_array_mut) {
                existing.extend(blocks);
                return;
            }
        }
    }
    out.push(json!({"role": role, "content": blocks}));
}

fn user_blocks(content: &Value) -> Result<Vec<Value>, TranslateError> {
    match content {
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts.iter().map(user_part).collect(),
        Value::Null => Ok(Vec::new()),
        _ => Err(invalid("message `content` must be a string or an array")),
    }
}

fn user_part(part: &Value) -> Result<Value, TranslateError> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => {
            Ok(json!({"type": "text", "text": part.get("text").cloned().unwrap_or(json!(""))}))
        }
        Some("image_url") => {
            let url = part
                .pointer("/image_url/url")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("`image_url` needs a `url`"))?;
            Ok(image_block(url))
        }
        Some(other) => Err(invalid(format!(
            "content part `{other}` is not supported by this model's provider"
        ))),
        None => Err(invalid("content part without `type`")),
    }
}

fn image_block(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:") {
        if let Some((media, data)) = rest.split_once(";base64,") {
            return json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}});
        }
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

fn assistant_blocks(m: &Value) -> Result<Vec<Value>, TranslateError> {
    let mut blocks = Vec::new();
    let text = m.get("content").map(text_of).unwrap_or_default();
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    for call in m
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let args = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        let input: Value = if args.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(args)
                .map_err(|_| invalid("tool call `arguments` is not valid JSON"))?
        };
        blocks.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(json!("")),
            "name": call.pointer("/function/name").cloned().unwrap_or(json!("")),
            "input": input,
        }));
    }
    Ok(blocks)
}

// ---------------------------------------------------------------------------
// Anthropic request → OpenAI request
// ---------------------------------------------------------------------------

/// Translates an Anthropic messages request into an OpenAI chat request for
/// `model`. A streamed request asks for usage in the final chunk.
pub fn messages_to_chat(req: &Value, model: &str) -> Result<Value, TranslateError> {
    let messages = req
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`messages` must be an array"))?;
    let mut out = Vec::new();
    if let Some(system) = req.get("system") {
        let text = text_of(system);
        if !text.is_empty() {
            out.push(json!({"role": "system", "content": text}));
        }
    }
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").unwrap_or(&Value::Null);
        match (role, content) {
            ("user" | "assistant", Value::String(s)) => {
                out.push(json!({"role": role, "content": s}));
            }
            ("user", Value::Array(blocks)) => user_messages(blocks, &mut out)?,
            ("assistant", Value::Array(blocks)) => out.push(assistant_message(blocks)),
            _ => return Err(invalid(format!("unsupported message with role `{role}`"))),
        }
    }
    let mut o = Map::new();
    o.insert("model".into(), json!(model));
    o.insert("messages".into(), Value::Array(out));
    copy(req, &mut o, "max_tokens", "max_tokens");
    copy(req, &mut o, "temperature", "temperature");
    copy(req, &mut o, "top_p", "top_p");
    copy(req, &mut o, "stop_sequences", "stop");
    if req.get("stream").and_then(Value::as_bool) == Some(true) {
        o.insert("stream".into(), json!(true));
        o.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                if t.get("type").and_then(Value::as_str).is_some_and(|k| k != "custom") {
                    return Err(invalid("server tools are not supported by this model's provider"));
                }
                let mut f = json!({
                    "name": t.get("name").cloned().unwrap_or(json!("")),
                    "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"})),
                });
                if let Some(d) = t.get("description") {
                    f["description"] = d.clone();
                }
                Ok(json!({"type": "function", "function": f}))
            })
            .collect::<Result<_, TranslateError>>()?;
        if !tools.is_empty() {
            o.insert("tools".into(), Value::Array(tools));
        }
    }
    if let (Some(choice), true) = (req.get("tool_choice"), o.contains_key("tools")) {
        let mapped = match choice.get("type").and_then(Value::as_str) {
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(json!(""))}})
            }
            _ => json!("auto"),
        };
        o.insert("tool_choice".into(), mapped);
        if choice.get("disable_parallel_tool_use") == Some(&json!(true)) {
            o.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    if let Some(user) = req.pointer("/metadata/user_id") {
        o.insert("user".into(), user.clone());
    }
    Ok(Value::Object(o))
}

/// A user turn's blocks: tool results become `tool` messages (which must
/// directly follow the assistant's tool calls), the rest one user message.
fn user_messages(blocks: &[Value], out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let mut parts = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("tool_result") => {
                let mut text = b.get("content").map(text_of).unwrap_or_default();
                if b.get("is_error") == Some(&json!(true)) && !text.starts_with("Error") {
                    text = format!("Error: {text}");
                }
                out.push(json!({
                    "role": "tool",
                    "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(json!("")),
                    "content": text,
                }));
            }
            Some("text") => parts
                .push(json!({"type": "text", "text": b.get("text").cloned().unwrap_or(json!(""))})),
            Some("image") => {
                let src = b.get("source").unwrap_or(&Value::Null);
                let url = match src.get("type").and_then(Value::as_str) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        src.get("media_type")
                            .and_then(Value::as_str)
                            .unwrap_or("image/png"),
                        src.get("data").and_then(Value::as_str).unwrap_or("")
                    ),
                    _ => src
                        .get("url")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some(other) => {
                return Err(invalid(format!(
                    "content block `{other}` is not supported by this model's provider"
                )))
            }
            None => return Err(invalid("content block without `type`")),
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    // Plain text as a string: several OpenAI-compatible servers accept only that.
    let content = if parts.iter().all(|p| p["type"] == "text") {
        json!(text_of(&Value::Array(parts)))
    } else {
        Value::Array(parts)
    };
    out.push(json!({"role": "user", "content": content}));
    Ok(())
}

fn assistant_message(blocks: &[Value]) -> Value {
    let text = text_of(&Value::Array(blocks.to_vec()));
    let calls: Vec<Value> = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .map(|b| {
            json!({
                "id": b.get("id").cloned().unwrap_or(json!("")),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or(json!("")),
                    "arguments": b.get("input").cloned().unwrap_or(json!({})).to_string(),
                }
            })
        })
        .collect();
    let mut m = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        m["tool_calls"] = Value::Array(calls);
    }
    m
}

// ---------------------------------------------------------------------------
// Complete responses
// ---------------------------------------------------------------------------

/// An Anthropic message as an OpenAI chat completion.
pub fn message_to_completion(msg: &Value) -> Value {
    let blocks = msg
        .get("content")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut message = assistant_message(&blocks);
    message["refusal"] = Value::Null;
    let finish = msg
        .get("stop_reason")
        .and_then(Value::as_str)
        .map(finish_reason);
    let usage = msg
        .get("usage")
        .map(Usage::from_anthropic)
        .unwrap_or_default();
    json!({
        "id": msg.get("id").cloned().unwrap_or(json!("")),
        "object": "chat.completion",
        "created": unix_now(),
        "model": msg.get("model").cloned().unwrap_or(json!("")),
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": usage.to_openai(),
    })
}

/// An OpenAI chat completion as an Anthropic message.
pub fn completion_to_message(c: &Value) -> Value {
    let choice = c.pointer("/choices/0").cloned().unwrap_or(Value::Null);
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    let text = msg.get("content").map(text_of).unwrap_or_default();
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let args = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(json!("")),
            "name": call.pointer("/function/name").cloned().unwrap_or(json!("")),
            "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({})),
        }));
    }
    let usage = c
        .get("usage")
        .and_then(Usage::from_openai)
        .unwrap_or_default();
    json!({
        "id": c.get("id").cloned().unwrap_or(json!("")),
        "type": "message",
        "role": "assistant",
        "model": c.get("model").cloned().unwrap_or(json!("")),
        "content": content,
        "stop_reason": choice.get("finish_reason").and_then(Value::as_str).map(stop_reason),
        "stop_sequence": null,
        "usage": usage.to_anthropic(),
    })
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

fn error_type(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error body in OpenAI's format.
pub fn openai_error(status: u16, message: &str) -> Value {
    json!({"error": {"message": message, "type": error_type(status), "param": null, "code": null}})
}

/// An error body in Anthropic's format.
pub fn anthropic_error(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

/// The message of a provider's error body in either format.
pub fn error_message(body: &Value) -> Option<String> {
    body.pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_request_becomes_anthropic_request() {
        let req = json!({
            "model": "smart",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Rain"},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "temperature": 1.5,
            "stop": "END",
            "max_completion_tokens": 77,
            "stream": true,
            "user": "u1",
        });
        let got = chat_to_messages(&req, "claude-x", 4096).unwrap();
        assert_eq!(
            got,
            json!({
                "model": "claude-x",
                "max_tokens": 77,
                "system": "Be brief.",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "Rain"}]},
                ],
                "temperature": 1.0,
                "stop_sequences": ["END"],
                "stream": true,
                "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "metadata": {"user_id": "u1"},
            })
        );
    }

    #[test]
    fn anthropic_request_becomes_openai_request() {
        let req = json!({
            "model": "smart",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Rain"}]},
                    {"type": "text", "text": "Thanks"}]},
            ],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "stop_sequences": ["END"],
            "stream": true,
        });
        let got = messages_to_chat(&req, "gpt-x").unwrap();
        assert_eq!(
            got,
            json!({
                "model": "gpt-x",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Weather?"},
                    {"role": "assistant", "content": "Checking.", "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                    {"role": "tool", "tool_call_id": "toolu_1", "content": "Rain"},
                    {"role": "user", "content": "Thanks"},
                ],
                "max_tokens": 100,
                "stop": ["END"],
                "stream": true,
                "stream_options": {"include_usage": true},
                "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            })
        );
    }

    #[test]
    fn responses_translate_both_ways_with_tool_calls_and_usage() {
        let msg = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 7},
        });
        let c = message_to_completion(&msg);
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["choices"][0]["message"]["content"], "Let me check.");
        assert_eq!(
            c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Oslo\"}"
        );
        assert_eq!(c["usage"]["prompt_tokens"], 15);
        assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
        let back = completion_to_message(&c);
        assert_eq!(back["content"], msg["content"]);
        assert_eq!(back["stop_reason"], "tool_use");
        assert_eq!(back["usage"]["input_tokens"], 10);
        assert_eq!(back["usage"]["cache_read_input_tokens"], 5);
        assert_eq!(back["usage"]["output_tokens"], 7);
    }

    #[test]
    fn stop_reasons_map_both_ways() {
        for (a, o) in [
            ("end_turn", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
        ] {
            assert_eq!(finish_reason(a), o);
            assert_eq!(stop_reason(o), a);
        }
    }

    #[test]
    fn unsupported_inputs_are_errors_not_silent_drops() {
        let req = json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]});
        assert!(chat_to_messages(&req, "m", 1).is_err());
        let req = json!({"messages": [{"role": "user", "content": "x"}], "n": 2});
        assert!(chat_to_messages(&req, "m", 1).is_err());
    }
}
