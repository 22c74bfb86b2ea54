//! MCP sampling served by the model router: an upstream MCP server's
//! `sampling/createMessage` becomes an Anthropic-format request to the
//! configured alias (MCP's sampling messages are close to Anthropic's), and
//! the answer becomes the MCP result. It runs through [`Llm::handle`], so
//! routing, fallback, admission (policy, token limits) and accounting are
//! exactly those of `/v1/messages`.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{Api, Llm, LlmRequest, ResponseBody};
use crate::auth::Identity;
use crate::config::{SamplingConfig, SamplingMode};

/// Serves sampling requests with one alias.
pub struct Sampler {
    llm: Arc<Llm>,
    alias: String,
    mode: SamplingMode,
}

/// Sampling through the router failed.
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    /// The request has content the router cannot send to a model.
    #[error("invalid sampling request: {0}")]
    Invalid(String),
    /// The model request failed.
    #[error("model `{alias}` failed: {message}")]
    Model {
        /// The alias.
        alias: String,
        /// The router's error message.
        message: String,
    },
}

impl Sampler {
    /// A sampler for the config's `sampling` section, if any.
    pub fn new(llm: Arc<Llm>, config: Option<&SamplingConfig>) -> Option<Arc<Sampler>> {
        let c = config?;
        llm.has_alias(&c.model).then(|| {
            Arc::new(Sampler {
                llm,
                alias: c.model.clone(),
                mode: c.mode,
            })
        })
    }

    /// Whether the router, rather than the calling client, answers: always
    /// in `always` mode, else when the client cannot sample.
    pub fn serves(&self, client_can_sample: bool) -> bool {
        self.mode == SamplingMode::Always || !client_can_sample
    }

    /// Serves one `sampling/createMessage` (its params and result as MCP
    /// JSON) for `identity`.
    pub async fn create_message(
        &self,
        params: Value,
        identity: Arc<Identity>,
    ) -> Result<Value, SamplingError> {
        let body = to_messages_request(&params, &self.alias)?;
        let resp = self
            .llm
            .handle(LlmRequest {
                api: Api::Messages,
                body: body.to_string().into(),
                target_hint: None,
                identity,
                traceparent: None,
                anthropic_beta: None,
            })
            .await;
        let ResponseBody::Json(bytes) = resp.body else {
            return Err(self.failed("unexpected stream".into()));
        };
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| self.failed(e.to_string()))?;
        if resp.status != 200 {
            let message = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_owned();
            return Err(self.failed(message));
        }
        Ok(from_message(&value))
    }

    fn failed(&self, message: String) -> SamplingError {
        SamplingError::Model {
            alias: self.alias.clone(),
            message,
        }
    }
}

/// MCP `CreateMessageRequestParams` (JSON) as an Anthropic request.
pub fn to_messages_request(p: &Value, alias: &str) -> Result<Value, SamplingError> {
    let invalid = |m: &str| SamplingError::Invalid(m.to_owned());
    let messages = p
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`messages` must be an array"))?;
    let messages = messages
        .iter()
        .map(|m| {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
            let content = match m.get("content") {
                Some(Value::Array(items)) => {
                    items.iter().map(block).collect::<Result<Vec<_>, _>>()?
                }
                Some(item) => vec![block(item)?],
                None => Vec::new(),
            };
            Ok(json!({"role": role, "content": content}))
        })
        .collect::<Result<Vec<_>, SamplingError>>()?;
    let mut a = Map::new();
    a.insert("model".into(), json!(alias));
    a.insert(
        "max_tokens".into(),
        p.get("maxTokens").cloned().unwrap_or(json!(1024)),
    );
    a.insert("messages".into(), Value::Array(messages));
    if let Some(s) = p.get("systemPrompt").and_then(Value::as_str) {
        a.insert("system".into(), json!(s));
    }
    if let Some(t) = p.get("temperature").filter(|t| !t.is_null()) {
        a.insert("temperature".into(), t.clone());
    }
    if let Some(s) = p.get("stopSequences").filter(|s| !s.is_null()) {
        a.insert("stop_sequences".into(), s.clone());
    }
    if let Some(tools) = p.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({
                    "name": t.get("name"),
                    "description": t.get("description").cloned().unwrap_or(json!("")),
                    "input_schema": t.get("inputSchema").cloned().unwrap_or(json!({"type": "object"})),
                })
            })
            .collect();
        a.insert("tools".into(), Value::Array(tools));
        if let Some(mode) = p.pointer("/toolChoice/mode").and_then(Value::as_str) {
            let kind = match mode {
                "required" => "any",
                "none" => "none",
                _ => "auto",
            };
            a.insert("tool_choice".into(), json!({"type": kind}));
        }
    }
    Ok(Value::Object(a))
}

fn block(c: &Value) -> Result<Value, SamplingError> {
    match c.get("type").and_then(Value::as_str) {
        Some("text") => {
            Ok(json!({"type": "text", "text": c.get("text").cloned().unwrap_or(json!(""))}))
        }
        Some("image") => Ok(json!({"type": "image", "source": {
            "type": "base64",
            "media_type": c.get("mimeType").cloned().unwrap_or(json!("image/png")),
            "data": c.get("data").cloned().unwrap_or(json!("")),
        }})),
        Some("tool_use") => Ok(
            json!({"type": "tool_use", "id": c.get("id"), "name": c.get("name"),
            "input": c.get("input").cloned().unwrap_or(json!({}))}),
        ),
        Some("tool_result") => {
            let text = c
                .get("content")
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            Ok(
                json!({"type": "tool_result", "tool_use_id": c.get("toolUseId"), "content": text,
                "is_error": c.get("isError").cloned().unwrap_or(json!(false))}),
            )
        }
        Some(other) => Err(SamplingError::Invalid(format!(
            "`{other}` content cannot be sent to a model through the router"
        ))),
        None => Err(SamplingError::Invalid("content without `type`".into())),
    }
}

/// An Anthropic message as an MCP `CreateMessageResult` (JSON).
pub fn from_message(m: &Value) -> Value {
    let blocks = m
        .get("content")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut content: Vec<Value> = blocks
        .iter()
        .filter_map(|b| match b.get("type").and_then(Value::as_str) {
            Some("text") => Some(json!({"type": "text", "text": b.get("text")})),
            Some("tool_use") => Some(
                json!({"type": "tool_use", "id": b.get("id"), "name": b.get("name"),
                "input": b.get("input")}),
            ),
            _ => None,
        })
        .collect();
    let stop = match m.get("stop_reason").and_then(Value::as_str) {
        Some("max_tokens") => "maxTokens",
        Some("stop_sequence") => "stopSequence",
        Some("tool_use") => "toolUse",
        _ => "endTurn",
    };
    // A single block is sent as an object: clients of earlier revisions
    // accept nothing else.
    let content = if content.len() == 1 {
        content.remove(0)
    } else if content.is_empty() {
        json!({"type": "text", "text": ""})
    } else {
        Value::Array(content)
    };
    json!({
        "role": "assistant",
        "content": content,
        "model": m.get("model").cloned().unwrap_or(json!("")),
        "stopReason": stop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_sampling_request_becomes_anthropic_request() {
        let p = json!({
            "messages": [{"role": "user", "content": {"type": "text", "text": "hi"}},
                         {"role": "assistant", "content": [{"type": "image", "data": "AA", "mimeType": "image/png"}]}],
            "systemPrompt": "be brief", "maxTokens": 50, "temperature": 0.2, "stopSequences": ["X"],
        });
        assert_eq!(
            to_messages_request(&p, "smart").unwrap(),
            json!({
                "model": "smart", "max_tokens": 50, "system": "be brief", "temperature": 0.2, "stop_sequences": ["X"],
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}]},
                ],
            })
        );
        let audio = json!({"messages": [{"role": "user", "content": {"type": "audio", "data": "", "mimeType": "audio/wav"}}], "maxTokens": 1});
        assert!(to_messages_request(&audio, "smart").is_err());
    }

    #[test]
    fn anthropic_message_becomes_mcp_result() {
        let m = json!({"model": "claude-x", "content": [{"type": "text", "text": "Hello"}], "stop_reason": "max_tokens"});
        let r = from_message(&m);
        assert_eq!(
            r,
            json!({"role": "assistant", "content": {"type": "text", "text": "Hello"},
                             "model": "claude-x", "stopReason": "maxTokens"})
        );
        let parsed: rmcp::model::CreateMessageResult = serde_json::from_value(r).unwrap();
        assert_eq!(parsed.model, "claude-x");
    }
}
