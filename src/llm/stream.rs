//! Streamed responses, event by event: pass-through when client and
//! provider speak the same format, translation when they do not. Each
//! provider event yields zero or more client events at once, so nothing is
//! buffered beyond the event being read.
//!
//! Every state also reads usage as it goes and knows whether the provider's
//! end marker (`[DONE]`, `message_stop`) arrived: a stream that ends
//! without it was cut, and the client must hear so.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::passthrough::Chunk;
use super::sse::SseEvent;
use super::translate::{finish_reason, stop_reason, unix_now};
use super::usage::Usage;

/// A wire format, of a client or of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI Chat Completions.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

/// The provider's stream went wrong after it started.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// An event that is not what the format allows.
    #[error("malformed event from the provider: {0}")]
    Malformed(String),
    /// The provider sent an error event.
    #[error("the provider reported an error: {0}")]
    Provider(String),
    /// The stream ended without the format's end marker.
    #[error("the provider's stream ended early")]
    Incomplete,
}

/// Per-stream translation state.
pub struct StreamState {
    client: Wire,
    provider: Wire,
    /// The client asked for a usage chunk (OpenAI `stream_options`).
    include_usage: bool,
    usage: Usage,
    done: bool,
    id: String,
    model: String,
    created: u64,
    /// Anthropic block index → OpenAI tool-call index.
    tools: HashMap<u64, usize>,
    /// OpenAI → Anthropic: the block open now (its index, and the OpenAI
    /// tool-call index for a tool block).
    open: Option<(u64, Option<u64>)>,
    next_block: u64,
    started: bool,
    finish: Option<String>,
}

fn parse(data: &str) -> Result<Value, StreamError> {
    serde_json::from_str(data).map_err(|e| StreamError::Malformed(e.to_string()))
}

fn provider_error(v: &Value) -> Option<StreamError> {
    let e = v.get("error")?;
    if e.is_null() {
        return None;
    }
    let msg = e
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| e.to_string());
    Some(StreamError::Provider(msg))
}

impl StreamState {
    /// State for a stream from `provider` to `client`.
    pub fn new(client: Wire, provider: Wire, include_usage: bool) -> StreamState {
        StreamState {
            client,
            provider,
            include_usage,
            usage: Usage::default(),
            done: false,
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            tools: HashMap::new(),
            open: None,
            next_block: 0,
            started: false,
            finish: None,
        }
    }

    /// Usage read so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// True once the provider's end marker arrived.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Handles one provider event; returns the events to send the client.
    pub fn push(&mut self, ev: SseEvent) -> Result<Vec<SseEvent>, StreamError> {
        if self.done {
            return Ok(Vec::new());
        }
        match (self.provider, self.client) {
            (Wire::OpenAi, Wire::OpenAi) => self.openai_passthrough(ev),
            (Wire::Anthropic, Wire::Anthropic) => self.anthropic_passthrough(ev),
            (Wire::Anthropic, Wire::OpenAi) => self.anthropic_to_openai(ev),
            (Wire::OpenAi, Wire::Anthropic) => self.openai_to_anthropic(ev),
        }
    }

    /// The provider's stream ended: fine after its end marker, else cut.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        if self.done {
            Ok(())
        } else {
            Err(StreamError::Incomplete)
        }
    }

    /// The error event that tells a `client` its stream failed, in place of
    /// a normal end.
    pub fn error_event(client: Wire, message: &str) -> SseEvent {
        match client {
            Wire::OpenAi => SseEvent::data(
                json!({"error": {"message": message, "type": "api_error", "param": null, "code": "stream_error"}})
                    .to_string(),
            ),
            Wire::Anthropic => SseEvent::named(
                "error",
                json!({"type": "error", "error": {"type": "api_error", "message": message}})
                    .to_string(),
            ),
        }
    }

    fn openai_passthrough(&mut self, ev: SseEvent) -> Result<Vec<SseEvent>, StreamError> {
        if ev.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(vec![SseEvent::data("[DONE]".into())]);
        }
        // A chunk goes on as it came, or without its `usage`, read only
        // for what is checked; one carrying an error, or that cannot be
        // read that way, is parsed whole below.
        if let Ok(chunk) = Chunk::read(&ev.data) {
            if chunk.get("error").is_none_or(|e| e.get() == "null") {
                let usage = chunk.get("usage");
                // Every chunk but the last carries `"usage": null`.
                let counted = usage.filter(|u| u.get() != "null");
                if let Some(u) = counted.and_then(|u| serde_json::from_str::<Value>(u.get()).ok()) {
                    if let Some(u) = Usage::from_openai(&u) {
                        self.usage = u;
                    }
                }
                if self.include_usage {
                    return Ok(vec![ev]);
                }
                if chunk.is_empty_array("choices") {
                    return Ok(Vec::new());
                }
                return Ok(vec![match usage {
                    Some(_) => SseEvent::data(chunk.without("usage")),
                    None => ev,
                }]);
            }
        }
        let mut v = parse(&ev.data)?;
        if let Some(e) = provider_error(&v) {
            return Err(e);
        }
        if let Some(u) = v.get("usage").and_then(Usage::from_openai) {
            self.usage = u;
        }
        if !self.include_usage {
            let no_choices = v
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty);
            if no_choices {
                return Ok(Vec::new());
            }
            if let Some(o) = v.as_object_mut() {
                o.remove("usage");
            }
        }
        Ok(vec![SseEvent::data(v.to_string())])
    }

    fn anthropic_passthrough(&mut self, ev: SseEvent) -> Result<Vec<SseEvent>, StreamError> {
        let v = parse(&ev.data)?;
        match v.get("type").and_then(Value::as_str) {
            Some("error") => {
                return Err(provider_error(&v).unwrap_or(StreamError::Provider("error".into())))
            }
            Some("message_start") => {
                if let Some(u) = v.pointer("/message/usage") {
                    self.usage.merge_anthropic(u);
                }
            }
            Some("message_delta") => {
                if let Some(u) = v.get("usage") {
                    self.usage.merge_anthropic(u);
                }
            }
            Some("message_stop") => self.done = true,
            Some(_) => {}
            None => return Err(StreamError::Malformed("event without `type`".into())),
        }
        Ok(vec![ev])
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> SseEvent {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        SseEvent::data(c.to_string())
    }

    fn anthropic_to_openai(&mut self, ev: SseEvent) -> Result<Vec<SseEvent>, StreamError> {
        let v = parse(&ev.data)?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| StreamError::Malformed("event without `type`".into()))?;
        let out = match kind {
            "message_start" => {
                let m = v.get("message").unwrap_or(&Value::Null);
                self.id = m.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
                self.model = m
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                if let Some(u) = m.get("usage") {
                    self.usage.merge_anthropic(u);
                }
                vec![self.chunk(json!({"role": "assistant", "content": ""}), None)]
            }
            "content_block_start" => {
                let block = v.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let index = self.tools.len();
                        let at = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                        self.tools.insert(at, index);
                        vec![self.chunk(
                            json!({"tool_calls": [{"index": index, "id": block.get("id"), "type": "function",
                                "function": {"name": block.get("name"), "arguments": ""}}]}),
                            None,
                        )]
                    }
                    Some("text") => match block.get("text").and_then(Value::as_str) {
                        Some(t) if !t.is_empty() => vec![self.chunk(json!({"content": t}), None)],
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                }
            }
            "content_block_delta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        vec![self.chunk(json!({"content": d.get("text")}), None)]
                    }
                    Some("input_json_delta") => {
                        let at = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let index = self.tools.get(&at).copied().unwrap_or(0);
                        vec![self.chunk(
                            json!({"tool_calls": [{"index": index, "function": {"arguments": d.get("partial_json")}}]}),
                            None,
                        )]
                    }
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                if let Some(u) = v.get("usage") {
                    self.usage.merge_anthropic(u);
                }
                let reason = v
                    .pointer("/delta/stop_reason")
                    .and_then(Value::as_str)
                    .map(finish_reason)
                    .unwrap_or("stop");
                vec![self.chunk(json!({}), Some(reason))]
            }
            "message_stop" => {
                self.done = true;
                let mut out = Vec::new();
                if self.include_usage {
                    let c = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": self.usage.to_openai(),
                    });
                    out.push(SseEvent::data(c.to_string()));
                }
                out.push(SseEvent::data("[DONE]".into()));
                out
            }
            "error" => {
                return Err(provider_error(&v).unwrap_or(StreamError::Provider("error".into())))
            }
            _ => Vec::new(),
        };
        Ok(out)
    }

    fn event(name: &str, v: Value) -> SseEvent {
        SseEvent::named(name, v.to_string())
    }

    fn close_block(&mut self, out: &mut Vec<SseEvent>) {
        if let Some((index, _)) = self.open.take() {
            out.push(Self::event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn open_block(&mut self, out: &mut Vec<SseEvent>, tool: Option<u64>, block: Value) {
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some((index, tool));
        out.push(Self::event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
    }

    fn openai_to_anthropic(&mut self, ev: SseEvent) -> Result<Vec<SseEvent>, StreamError> {
        let mut out = Vec::new();
        if ev.data.trim() == "[DONE]" {
            self.close_block(&mut out);
            let reason = stop_reason(self.finish.as_deref().unwrap_or("stop"));
            let mut usage = self.usage.to_anthropic();
            usage["output_tokens"] = json!(self.usage.output);
            out.push(Self::event(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": null}, "usage": usage}),
            ));
            out.push(Self::event("message_stop", json!({"type": "message_stop"})));
            self.done = true;
            return Ok(out);
        }
        let v = parse(&ev.data)?;
        if let Some(e) = provider_error(&v) {
            return Err(e);
        }
        if !self.started {
            self.started = true;
            self.id = v.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
            self.model = v
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            out.push(Self::event(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "content": [],
                    "model": self.model, "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            ));
        }
        if let Some(u) = v.get("usage").and_then(Usage::from_openai) {
            self.usage = u;
        }
        let Some(choice) = v.pointer("/choices/0") else {
            return Ok(out);
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            if !text.is_empty() {
                if !matches!(self.open, Some((_, None))) {
                    self.open_block(&mut out, None, json!({"type": "text", "text": ""}));
                }
                let index = self.open.map(|(i, _)| i).unwrap_or(0);
                out.push(Self::event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
                ));
            }
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let tool = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let is_open = matches!(self.open, Some((_, Some(t))) if t == tool);
            if !is_open {
                self.open_block(
                    &mut out,
                    Some(tool),
                    json!({"type": "tool_use", "id": call.get("id").cloned().unwrap_or(json!("")),
                           "name": call.pointer("/function/name").cloned().unwrap_or(json!("")), "input": {}}),
                );
            }
            if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str) {
                if !args.is_empty() {
                    let index = self.open.map(|(i, _)| i).unwrap_or(0);
                    out.push(Self::event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": args}}),
                    ));
                }
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_owned());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: &mut StreamState, events: Vec<SseEvent>) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for e in events {
            out.extend(state.push(e).unwrap());
        }
        state.finish().unwrap();
        out
    }

    fn anthropic_stream() -> Vec<SseEvent> {
        let e = |n: &str, v: Value| SseEvent::named(n, v.to_string());
        vec![
            e(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 3, "cache_read_input_tokens": 2, "output_tokens": 1}}}),
            ),
            e(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            e("ping", json!({"type": "ping"})),
            e(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            ),
            e(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            e(
                "content_block_start",
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
            ),
            e(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
            ),
            e(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
            ),
            e(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 1}),
            ),
            e(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            ),
            e("message_stop", json!({"type": "message_stop"})),
        ]
    }

    fn data(events: &[SseEvent]) -> Vec<Value> {
        events
            .iter()
            .map(|e| serde_json::from_str(&e.data).unwrap_or(json!(e.data)))
            .collect()
    }

    #[test]
    fn anthropic_stream_becomes_openai_chunks() {
        let mut s = StreamState::new(Wire::OpenAi, Wire::Anthropic, true);
        let out = data(&run(&mut s, anthropic_stream()));
        assert_eq!(out[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(out[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(
            out[2]["choices"][0]["delta"]["tool_calls"][0]["id"],
            "toolu_1"
        );
        assert_eq!(
            out[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":"
        );
        assert_eq!(out[5]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(out[6]["choices"], json!([]));
        assert_eq!(out[6]["usage"]["prompt_tokens"], 5);
        assert_eq!(out[6]["usage"]["completion_tokens"], 9);
        assert_eq!(out[7], json!("[DONE]"));
        assert_eq!(
            s.usage(),
            Usage {
                input: 5,
                output: 9,
                cached: 2
            }
        );
    }

    #[test]
    fn openai_stream_becomes_anthropic_events() {
        let c = |delta: Value, finish: Value| {
            SseEvent::data(json!({"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).to_string())
        };
        let events = vec![
            c(json!({"role": "assistant", "content": ""}), Value::Null),
            c(json!({"content": "Hi"}), Value::Null),
            c(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}), Value::Null),
            c(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":1}"}}]}), Value::Null),
            c(json!({}), json!("tool_calls")),
            SseEvent::data(json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 2}}}).to_string()),
            SseEvent::data("[DONE]".into()),
        ];
        let mut s = StreamState::new(Wire::Anthropic, Wire::OpenAi, false);
        let out = run(&mut s, events);
        let names: Vec<&str> = out
            .iter()
            .map(|e| e.event.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let v = data(&out);
        assert_eq!(v[4]["content_block"]["id"], "call_1");
        assert_eq!(v[4]["index"], 1);
        assert_eq!(v[5]["delta"]["partial_json"], "{\"a\":1}");
        assert_eq!(v[7]["delta"]["stop_reason"], "tool_use");
        assert_eq!(v[7]["usage"]["output_tokens"], 9);
        assert_eq!(v[7]["usage"]["input_tokens"], 3);
    }

    #[test]
    fn passthrough_forwards_unchanged_chunks_as_they_came() {
        // Key order and spacing that writing a parsed chunk out would change.
        let chunk = r#"{"id":"c1", "choices":[{"delta":{"content":"x"},"index":0}],"usage":null}"#;
        let usage = r#"{"choices":[ ],"usage":{"prompt_tokens":4,"completion_tokens":2}}"#;
        let mut s = StreamState::new(Wire::OpenAi, Wire::OpenAi, true);
        let events = vec![
            SseEvent::data(chunk.into()),
            SseEvent::data(usage.into()),
            SseEvent::data("[DONE]".into()),
        ];
        let out = run(&mut s, events);
        assert_eq!(out[0].data, chunk);
        assert_eq!(out[1].data, usage);
        assert_eq!(s.usage().output, 2);
        assert!(s.is_done());
        // Without usage asked for, a chunk that has none passes as it came too.
        let mut s = StreamState::new(Wire::OpenAi, Wire::OpenAi, false);
        let plain = r#"{"id":"c1", "choices":[{"delta":{},"finish_reason":"stop","index":0}]}"#;
        let out = s.push(SseEvent::data(plain.into())).unwrap();
        assert_eq!(out[0].data, plain);
        // Usage it did not ask for goes; the other members keep their bytes.
        let with_null =
            r#"{"id":"c1", "choices":[{"delta":{"content":"y"},"index":0}],"usage":null}"#;
        let out = s.push(SseEvent::data(with_null.into())).unwrap();
        assert_eq!(
            out[0].data,
            r#"{"id":"c1","choices":[{"delta":{"content":"y"},"index":0}]}"#
        );
        // An error chunk is still the provider's error.
        let failed = s.push(SseEvent::data(
            r#"{"error":{"message":"overloaded"}}"#.into(),
        ));
        assert!(matches!(failed, Err(StreamError::Provider(m)) if m == "overloaded"));
    }

    #[test]
    fn passthrough_strips_usage_the_client_did_not_ask_for_but_counts_it() {
        let mut s = StreamState::new(Wire::OpenAi, Wire::OpenAi, false);
        let out = run(
            &mut s,
            vec![
                SseEvent::data(json!({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}).to_string()),
                SseEvent::data(json!({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}).to_string()),
                SseEvent::data("[DONE]".into()),
            ],
        );
        assert_eq!(out.len(), 2);
        assert!(!out[0].data.contains("usage"));
        assert_eq!(s.usage().output, 2);
    }

    #[test]
    fn a_stream_without_its_end_marker_is_an_error() {
        let mut s = StreamState::new(Wire::Anthropic, Wire::Anthropic, false);
        s.push(anthropic_stream().remove(0)).unwrap();
        assert!(matches!(s.finish(), Err(StreamError::Incomplete)));
        let mut s = StreamState::new(Wire::OpenAi, Wire::OpenAi, false);
        assert!(matches!(
            s.push(SseEvent::data("{oops".into())),
            Err(StreamError::Malformed(_))
        ));
    }
}
