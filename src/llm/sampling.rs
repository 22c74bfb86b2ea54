//! MCP sampling served by the model router: an upstream MCP server's
//! `sampling/createMessage` becomes an Anthropic-format request to the
//! configured alias (MCP's sampling messages are close to Anthropic's), and
//! the answer becomes the MCP result. It runs through [`Llm::handle`], so
//! routing, fallback, admission (policy, token limits) and accounting are
//! exactly those of `/v1/messages`.
//!
//! The request's `modelPreferences` choose among the aliases the operator
//! listed as `sampling.candidates` ([`choose`]): its hints first, then its
//! priorities. Without candidates every request goes to `sampling.model`.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{Api, Llm, LlmRequest, ResponseBody};
use crate::auth::Identity;
use crate::config::{SamplingConfig, SamplingMode};

/// Serves sampling requests with the configured aliases.
pub struct Sampler {
    llm: Arc<Llm>,
    /// The default alias first, then the other candidates, without repeats.
    aliases: Vec<String>,
    mode: SamplingMode,
}

/// What [`choose`] knows about one candidate alias.
#[derive(Debug, Clone, PartialEq)]
pub struct AliasProfile {
    /// The alias.
    pub name: String,
    /// Its targets' model names at their providers.
    pub models: Vec<String>,
    /// Its cheapest target's input plus output price per million tokens,
    /// if any target is priced.
    pub price: Option<f64>,
    /// Its fastest target's moving average of time to first token
    /// (seconds), if any has been measured.
    pub latency: Option<f64>,
}

/// Why [`choose`] picked an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// A hint named it (a substring of the alias or of a target's model).
    Hint,
    /// `costPriority` led: the cheapest priced candidate.
    Cost,
    /// `speedPriority` led: the fastest measured candidate.
    Speed,
    /// No preference applied: the default alias.
    Default,
}

impl Chosen {
    /// The word logged and traced for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Chosen::Hint => "hint",
            Chosen::Cost => "cost",
            Chosen::Speed => "speed",
            Chosen::Default => "default",
        }
    }
}

/// The candidate (an index into `candidates`, whose first entry is the
/// default) that serves a request with these MCP `modelPreferences`.
///
/// As the MCP specification advises: hints are taken in order, and the
/// first that is a substring (ignoring case) of a candidate's alias or of
/// one of its targets' models picks it. Failing that, the highest of the
/// three priorities decides: cost picks the cheapest priced candidate,
/// speed the fastest measured one, and intelligence (or a tie with it)
/// keeps the default, which is the operator's choice for capability. A
/// priority with nothing to compare (no prices, no measurements) keeps the
/// default too.
pub fn choose(preferences: Option<&Value>, candidates: &[AliasProfile]) -> (usize, Chosen) {
    let Some(prefs) = preferences.filter(|_| candidates.len() > 1) else {
        return (0, Chosen::Default);
    };
    let hints = prefs.get("hints").and_then(Value::as_array);
    for hint in hints.into_iter().flatten() {
        let Some(name) = hint.get("name").and_then(Value::as_str) else {
            continue;
        };
        let name = name.trim().to_lowercase();
        if name.is_empty() {
            continue;
        }
        let names = |c: &AliasProfile| {
            std::iter::once(c.name.to_lowercase())
                .chain(c.models.iter().map(|m| m.to_lowercase()))
                .collect::<Vec<_>>()
        };
        if let Some(i) = candidates
            .iter()
            .position(|c| names(c).iter().any(|n| n.contains(&name)))
        {
            return (i, Chosen::Hint);
        }
    }
    let priority = |key: &str| {
        prefs
            .get(key)
            .and_then(Value::as_f64)
            .filter(|p| p.is_finite())
            .map_or(0.0, |p| p.clamp(0.0, 1.0))
    };
    let (cost, speed, intelligence) = (
        priority("costPriority"),
        priority("speedPriority"),
        priority("intelligencePriority"),
    );
    let lowest = |key: fn(&AliasProfile) -> Option<f64>| {
        candidates
            .iter()
            .enumerate()
            .filter_map(|(i, c)| key(c).map(|v| (i, v)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    };
    let picked = if cost > intelligence && cost >= speed {
        lowest(|c| c.price).map(|i| (i, Chosen::Cost))
    } else if speed > intelligence && speed > cost {
        lowest(|c| c.latency).map(|i| (i, Chosen::Speed))
    } else {
        None
    };
    picked.unwrap_or((0, Chosen::Default))
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
        let mut aliases = vec![c.model.clone()];
        for alias in &c.candidates {
            if !aliases.contains(alias) {
                aliases.push(alias.clone());
            }
        }
        // The config was validated; an alias unknown here would only fail
        // every request it was chosen for.
        aliases.retain(|a| llm.has_alias(a));
        (aliases.first() == Some(&c.model)).then(|| {
            Arc::new(Sampler {
                llm,
                aliases,
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
        let alias = self.alias_for(params.get("modelPreferences"));
        let body = to_messages_request(&params, alias)?;
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
        let failed = |message: String| SamplingError::Model {
            alias: alias.to_owned(),
            message,
        };
        let ResponseBody::Json(bytes) = resp.body else {
            return Err(failed("unexpected stream".into()));
        };
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| failed(e.to_string()))?;
        if resp.status != 200 {
            let message = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_owned();
            return Err(failed(message));
        }
        Ok(from_message(&value))
    }

    /// The alias that serves a request with these `modelPreferences`.
    fn alias_for(&self, preferences: Option<&Value>) -> &str {
        let default = &self.aliases[0];
        if self.aliases.len() == 1 || preferences.is_none() {
            return default;
        }
        // `new` kept only aliases the router has, so each has a profile and
        // the profiles line up with `aliases`.
        let profiles: Option<Vec<AliasProfile>> =
            self.aliases.iter().map(|a| self.llm.profile(a)).collect();
        let Some(profiles) = profiles else {
            return default;
        };
        let (i, why) = choose(preferences, &profiles);
        let alias = self.aliases.get(i).unwrap_or(default);
        tracing::info!(
            alias,
            chosen_by = why.as_str(),
            "sampling model chosen by the request's preferences"
        );
        alias
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

    fn profile(
        name: &str,
        models: &[&str],
        price: Option<f64>,
        latency: Option<f64>,
    ) -> AliasProfile {
        AliasProfile {
            name: name.into(),
            models: models.iter().map(|m| (*m).into()).collect(),
            price,
            latency,
        }
    }

    /// smart (the default), fast and cheap.
    fn three() -> Vec<AliasProfile> {
        vec![
            profile("smart", &["claude-opus-4", "gpt-5"], Some(40.0), Some(0.9)),
            profile("fast", &["claude-haiku-4"], Some(6.0), Some(0.2)),
            profile("cheap", &["llama3"], Some(0.5), None),
        ]
    }

    #[test]
    fn hints_pick_by_substring_of_alias_or_model_in_order() {
        let c = three();
        let pick = |prefs: Value| choose(Some(&prefs), &c);
        assert_eq!(
            pick(json!({"hints": [{"name": "HAIKU"}]})),
            (1, Chosen::Hint)
        );
        assert_eq!(
            pick(json!({"hints": [{"name": "cheap"}]})),
            (2, Chosen::Hint)
        );
        // The first hint that names a candidate wins, not the best match.
        assert_eq!(
            pick(json!({"hints": [{"name": "gemini"}, {"name": "llama"}, {"name": "fast"}]})),
            (2, Chosen::Hint)
        );
        // `claude` names two candidates: the earlier (the default) wins.
        assert_eq!(
            pick(json!({"hints": [{"name": "claude"}]})),
            (0, Chosen::Hint)
        );
        // Hints that name nothing, or nothing usable, fall through.
        assert_eq!(
            pick(json!({"hints": [{"name": "gemini"}, {"name": " "}, {}, 7]})),
            (0, Chosen::Default)
        );
    }

    #[test]
    fn priorities_decide_when_no_hint_names_a_candidate() {
        let c = three();
        let cases = [
            (
                json!({"costPriority": 0.9, "speedPriority": 0.5}),
                (2, Chosen::Cost),
            ),
            // cheap has never been measured, so fast is the fastest known.
            (
                json!({"speedPriority": 0.8, "costPriority": 0.2}),
                (1, Chosen::Speed),
            ),
            (
                json!({"intelligencePriority": 0.9, "costPriority": 0.9}),
                (0, Chosen::Default),
            ),
            (
                json!({"costPriority": 0.5, "speedPriority": 0.5}),
                (2, Chosen::Cost),
            ),
            (
                json!({"hints": [{"name": "x"}], "costPriority": 1}),
                (2, Chosen::Cost),
            ),
            // Out-of-range priorities are clamped, not trusted.
            (
                json!({"speedPriority": 7, "costPriority": 1.0}),
                (2, Chosen::Cost),
            ),
            (json!({}), (0, Chosen::Default)),
            (json!({"costPriority": "high"}), (0, Chosen::Default)),
        ];
        for (prefs, expected) in cases {
            assert_eq!(choose(Some(&prefs), &c), expected, "{prefs}");
        }
    }

    #[test]
    fn nothing_to_compare_keeps_the_default() {
        let unpriced = vec![
            profile("smart", &["a"], None, None),
            profile("fast", &["b"], None, None),
        ];
        let prefs = json!({"costPriority": 1, "speedPriority": 0.5});
        assert_eq!(choose(Some(&prefs), &unpriced), (0, Chosen::Default));
        let prefs = json!({"speedPriority": 1});
        assert_eq!(choose(Some(&prefs), &unpriced), (0, Chosen::Default));
        // One candidate, or no preferences: the default, whatever is asked.
        let prefs = json!({"hints": [{"name": "llama"}], "costPriority": 1});
        assert_eq!(choose(Some(&prefs), &three()[..1]), (0, Chosen::Default));
        assert_eq!(choose(None, &three()), (0, Chosen::Default));
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
