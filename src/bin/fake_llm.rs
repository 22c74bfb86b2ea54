//! `portcullis-fake-llm`: a deterministic model provider for portcullis'
//! tests. It speaks OpenAI's Chat Completions, Embeddings and Models APIs
//! and Anthropic's Messages API, streamed (SSE) and not, in their real wire
//! formats, with deterministic reply text and token usage, and injects
//! faults on demand.
//!
//! ```text
//! portcullis-fake-llm --port 0 [--host 127.0.0.1] [--fault SPEC] [--api-key KEY]
//! ```
//!
//! It prints `listening on http://ADDR` on stdout's first line once bound.
//! OpenAI clients use base URL `http://ADDR/v1`, Anthropic clients
//! `http://ADDR`.
//!
//! The reply is `Hello from MODEL: TEXT` (TEXT being the last user text or
//! tool result), one word per streamed delta. With tools and a last user
//! message, the reply calls the first tool with `{"query": TEXT}`. Usage:
//! input tokens are the words of the system prompt and messages, of which
//! the system prompt's words are reported as cached; output tokens are the
//! reply's words.
//!
//! A fault is chosen per request, first match wins: the `x-fake-fault`
//! header, a `@SPEC` suffix on the model name, a `[fault:SPEC]` marker in
//! the last user message, then the instance default (`--fault`, or
//! `POST /fault {"fault": SPEC, "times": N}` for the next N requests).
//! SPEC is one or more of, joined by `+`:
//!
//! - a status code, e.g. `500`, `503`, `401`; `429:retry-after=S` adds the header
//! - `slow-first-byte=MS`: wait before the response headers
//! - `chunk-delay=MS`: wait between streamed events
//! - `cut-after=N`: abort the connection after N events (or half the JSON body)
//! - `malformed-chunk[=N]`: an unparseable event after N good ones (default 2),
//!   or an unparseable JSON body
//! - `hang`: never answer
//! - `usage-on-finish`: OpenAI streams carry usage on the finish chunk
//!   itself instead of a separate final chunk
//!
//! `POST /v1/messages/count_tokens` answers with the input count above.
//! `GET /calls` returns `{"calls": {model: n}, "served": {model: n},
//! "requests": [...]}` (requests: the last 100 with path, model, a few
//! headers and the body); `POST /reset` clears them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str =
    "usage: portcullis-fake-llm --port PORT [--host ADDR] [--fault SPEC] [--api-key KEY]";

/// How many recent requests `/calls` reports.
const MAX_RECORDED: usize = 100;

#[derive(Default)]
struct State {
    calls: BTreeMap<String, u64>,
    served: BTreeMap<String, u64>,
    requests: Vec<Value>,
    fault: Option<String>,
    /// Remaining requests the default fault applies to; `None`: all.
    fault_times: Option<u64>,
    counter: u64,
}

struct Fake {
    state: Mutex<State>,
    api_key: Option<String>,
}

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_id(&self) -> u64 {
        let mut s = self.lock();
        s.counter += 1;
        s.counter
    }

    /// The instance default fault, consuming one of its `times`.
    fn default_fault(&self) -> Option<String> {
        let mut s = self.lock();
        let fault = s.fault.clone()?;
        match s.fault_times {
            Some(0) => {
                s.fault = None;
                None
            }
            Some(n) => {
                s.fault_times = Some(n - 1);
                if n == 1 {
                    s.fault = None;
                    s.fault_times = None;
                }
                Some(fault)
            }
            None => Some(fault),
        }
    }
}

/// A parsed fault specification.
#[derive(Debug, Default, Clone)]
struct Fault {
    status: Option<u16>,
    retry_after: Option<String>,
    slow_first_byte: Option<u64>,
    chunk_delay: Option<u64>,
    cut_after: Option<usize>,
    malformed_after: Option<usize>,
    hang: bool,
    usage_on_finish: bool,
}

fn parse_fault(spec: &str) -> Fault {
    let mut f = Fault::default();
    for part in spec.split('+').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let number = value.parse::<u64>().ok();
        match name {
            "slow-first-byte" => f.slow_first_byte = number,
            "chunk-delay" => f.chunk_delay = number,
            "cut-after" => f.cut_after = number.map(|n| n as usize),
            "malformed-chunk" => f.malformed_after = Some(number.unwrap_or(2) as usize),
            "hang" => f.hang = true,
            "usage-on-finish" => f.usage_on_finish = true,
            code => {
                let (code, opt) = code.split_once(':').unwrap_or((code, ""));
                if let Ok(c) = code.parse::<u16>() {
                    f.status = Some(c);
                }
                if let Some(ra) = opt.strip_prefix("retry-after") {
                    f.retry_after = Some(if value.is_empty() {
                        ra.trim_start_matches('=').to_owned()
                    } else {
                        value.to_owned()
                    });
                }
            }
        }
    }
    f
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut host = "127.0.0.1".to_owned();
    let mut port = 0u16;
    let mut fault = None;
    let mut api_key = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = it.next();
        match (arg.as_str(), value) {
            ("--port", Some(v)) => match v.parse() {
                Ok(p) => port = p,
                Err(_) => return usage(&format!("bad port {v:?}")),
            },
            ("--host", Some(v)) => host = v.clone(),
            ("--fault", Some(v)) => fault = Some(v.clone()),
            ("--api-key", Some(v)) => api_key = Some(v.clone()),
            (other, _) => return usage(&format!("unexpected argument {other:?}")),
        }
    }
    let addr: SocketAddr = match format!("{host}:{port}").parse() {
        Ok(a) => a,
        Err(e) => return usage(&format!("bad address: {e}")),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis-fake-llm: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let fake = Arc::new(Fake {
        state: Mutex::new(State {
            fault,
            ..State::default()
        }),
        api_key,
    });
    match runtime.block_on(serve(addr, fake)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-fake-llm: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn usage(problem: &str) -> std::process::ExitCode {
    eprintln!("portcullis-fake-llm: {problem}\n{USAGE}");
    std::process::ExitCode::from(2)
}

async fn serve(addr: SocketAddr, fake: Arc<Fake>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let mut out = std::io::stdout();
    writeln!(out, "listening on http://{bound}")?;
    out.flush()?;
    loop {
        let (stream, _) = listener.accept().await?;
        // Streamed answers are written event by event; with Nagle's
        // algorithm each small write after the first waits for the client's
        // delayed ACK (~40 ms to the first token).
        let _ = stream.set_nodelay(true);
        let fake = fake.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let fake = fake.clone();
                async move { Ok::<_, Infallible>(handle(fake, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

async fn handle(fake: Arc<Fake>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return full(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/calls") => {
            let s = fake.lock();
            json_response(
                StatusCode::OK,
                &json!({"calls": s.calls, "served": s.served, "requests": s.requests}),
            )
        }
        ("POST", "/reset") => {
            let mut s = fake.lock();
            s.calls.clear();
            s.served.clear();
            s.requests.clear();
            s.fault = None;
            s.fault_times = None;
            json_response(StatusCode::OK, &json!({}))
        }
        ("POST", "/fault") => {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut s = fake.lock();
            s.fault = v.get("fault").and_then(Value::as_str).map(str::to_owned);
            s.fault_times = v.get("times").and_then(Value::as_u64);
            json_response(StatusCode::OK, &json!({}))
        }
        ("GET", "/v1/models") => json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [
                {"id": "fake-model", "object": "model", "created": 1_700_000_000, "owned_by": "portcullis-fake"}
            ]}),
        ),
        ("POST", "/v1/chat/completions") => model_call(fake, Api::OpenAi, &headers, &body).await,
        ("POST", "/v1/messages") => model_call(fake, Api::Anthropic, &headers, &body).await,
        ("POST", "/v1/messages/count_tokens") => {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let p = parse_chat(Api::Anthropic, &v);
            record(&fake, "/v1/messages/count_tokens", &p.model, &headers, &v);
            let r = reply_for(&p);
            json_response(StatusCode::OK, &json!({"input_tokens": r.input}))
        }
        ("POST", "/v1/embeddings") => model_call(fake, Api::Embeddings, &headers, &body).await,
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": {"message": format!("no route {method} {path}"), "type": "invalid_request_error", "param": null, "code": null}}),
        ),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Anthropic,
    Embeddings,
}

/// What the fake understood of a chat request.
struct Parsed {
    model: String,
    system: String,
    texts: Vec<String>,
    last_text: String,
    last_is_tool_result: bool,
    first_tool: Option<String>,
    max_tokens: Option<u64>,
    stream: bool,
    include_usage: bool,
}

fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => p.get("text").and_then(Value::as_str).map(str::to_owned),
                Some("tool_result") => p.get("content").map(content_text),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn parse_chat(api: Api, v: &Value) -> Parsed {
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let messages = v
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut system = v.get("system").map(content_text).unwrap_or_default();
    let mut texts = Vec::new();
    let mut last_text = String::new();
    let mut last_is_tool_result = false;
    for m in &messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let text = m.get("content").map(content_text).unwrap_or_default();
        if api == Api::OpenAi && matches!(role, "system" | "developer") {
            system = [system, text].join(" ").trim().to_owned();
            continue;
        }
        let is_tool_result = role == "tool"
            || m.get("content").and_then(Value::as_array).is_some_and(|b| {
                b.iter()
                    .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            });
        if role == "user" || role == "tool" {
            last_text = text.clone();
            last_is_tool_result = is_tool_result;
        }
        texts.push(text);
    }
    let first_tool = v
        .get("tools")
        .and_then(Value::as_array)
        .and_then(|t| t.first())
        .and_then(|t| {
            t.pointer("/function/name")
                .or_else(|| t.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    let max_tokens = v
        .get("max_completion_tokens")
        .or_else(|| v.get("max_tokens"))
        .and_then(Value::as_u64);
    Parsed {
        model,
        system,
        texts,
        last_text,
        last_is_tool_result,
        first_tool,
        max_tokens,
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: v
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// The deterministic answer to a chat request.
struct Reply {
    /// Text pieces, one per streamed delta.
    pieces: Vec<String>,
    tool_call: Option<(String, String)>,
    truncated: bool,
    input: u64,
    cached: u64,
    output: u64,
}

fn reply_for(p: &Parsed) -> Reply {
    let cached = words(&p.system);
    let input = cached + p.texts.iter().map(|t| words(t)).sum::<u64>();
    if let (Some(tool), false) = (&p.first_tool, p.last_is_tool_result) {
        let args = json!({"query": p.last_text}).to_string();
        return Reply {
            pieces: Vec::new(),
            output: 1 + words(&args),
            tool_call: Some((tool.clone(), args)),
            truncated: false,
            input,
            cached,
        };
    }
    let base_model = p.model.split('@').next().unwrap_or("");
    let text = format!("Hello from {base_model}: {}", p.last_text);
    let mut all: Vec<&str> = text.split_whitespace().collect();
    let truncated = p.max_tokens.is_some_and(|m| (all.len() as u64) > m);
    if let Some(m) = p.max_tokens {
        all.truncate(m as usize);
    }
    let pieces = all
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                (*w).to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect::<Vec<_>>();
    Reply {
        output: pieces.len() as u64,
        pieces,
        tool_call: None,
        truncated,
        input,
        cached,
    }
}

fn fault_marker(text: &str) -> Option<String> {
    let start = text.find("[fault:")? + "[fault:".len();
    let end = text[start..].find(']')? + start;
    Some(text[start..end].to_owned())
}

fn record(fake: &Fake, path: &str, model: &str, headers: &HeaderMap, body: &Value) {
    let pick = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut s = fake.lock();
    *s.calls.entry(model.to_owned()).or_default() += 1;
    if s.requests.len() >= MAX_RECORDED {
        s.requests.remove(0);
    }
    s.requests.push(json!({
        "path": path,
        "model": model,
        "headers": {
            "authorization": pick("authorization"),
            "x-api-key": pick("x-api-key"),
            "anthropic-version": pick("anthropic-version"),
            "anthropic-beta": pick("anthropic-beta"),
            "traceparent": pick("traceparent"),
        },
        "body": body,
    }));
}

fn error_body(api: Api, status: u16, message: &str) -> Value {
    match api {
        Api::Anthropic => {
            let kind = match status {
                429 => "rate_limit_error",
                401 => "authentication_error",
                404 => "not_found_error",
                529 => "overloaded_error",
                s if s >= 500 => "api_error",
                _ => "invalid_request_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        _ => {
            let kind = match status {
                429 => "rate_limit_exceeded",
                s if s >= 500 => "server_error",
                _ => "invalid_request_error",
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
    }
}

async fn model_call(
    fake: Arc<Fake>,
    api: Api,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response<Body> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &error_body(api, 400, "body is not JSON"),
        );
    };
    let path = match api {
        Api::OpenAi => "/v1/chat/completions",
        Api::Anthropic => "/v1/messages",
        Api::Embeddings => "/v1/embeddings",
    };
    let parsed = parse_chat(api, &v);
    record(&fake, path, &parsed.model, headers, &v);
    if let Some(key) = &fake.api_key {
        let bearer = format!("Bearer {key}");
        let presented = match api {
            Api::Anthropic => headers
                .get("x-api-key")
                .map(|h| h.as_bytes() == key.as_bytes()),
            _ => headers
                .get("authorization")
                .map(|h| h.as_bytes() == bearer.as_bytes()),
        };
        if presented != Some(true) {
            return json_response(
                StatusCode::UNAUTHORIZED,
                &error_body(api, 401, "invalid api key"),
            );
        }
    }
    let spec = headers
        .get("x-fake-fault")
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parsed.model.split_once('@').map(|(_, f)| f.to_owned()))
        .or_else(|| fault_marker(&parsed.last_text))
        .or_else(|| fake.default_fault());
    let fault = spec.as_deref().map(parse_fault).unwrap_or_default();
    if fault.hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if let Some(ms) = fault.slow_first_byte {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(status) = fault.status {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = json_response(
            code,
            &error_body(api, status, &format!("fake fault {status}")),
        );
        if let Some(ra) = fault.retry_after.as_deref().and_then(|r| r.parse().ok()) {
            resp.headers_mut().insert(http::header::RETRY_AFTER, ra);
        }
        return resp;
    }
    let id = fake.next_id();
    if api == Api::Embeddings {
        *fake.lock().served.entry(parsed.model.clone()).or_default() += 1;
        return embeddings(&v, &parsed.model);
    }
    let reply = reply_for(&parsed);
    if parsed.stream {
        let events = match api {
            Api::Anthropic => anthropic_events(&parsed, &reply, id),
            _ => openai_events(&parsed, &reply, id, fault.usage_on_finish),
        };
        if fault.cut_after.is_none() && fault.malformed_after.is_none() {
            *fake.lock().served.entry(parsed.model.clone()).or_default() += 1;
        }
        return stream_response(events, &fault);
    }
    let value = match api {
        Api::Anthropic => anthropic_message(&parsed, &reply, id),
        _ => openai_completion(&parsed, &reply, id),
    };
    if fault.malformed_after.is_some() {
        return full(
            StatusCode::OK,
            "application/json",
            "{\"id\": \"broken\", \"choi",
        );
    }
    if fault.cut_after.is_some() {
        let text = value.to_string();
        let mid = (0..=text.len() / 2)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        let half = Bytes::from(text[..mid].to_owned());
        let total = text.len();
        let body = futures::stream::iter(vec![
            Ok(Frame::data(half)),
            Err::<Frame<Bytes>, BoxError>("cut".into()),
        ]);
        let mut resp = Response::new(StreamBody::new(body).boxed());
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, total.into());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    *fake.lock().served.entry(parsed.model.clone()).or_default() += 1;
    json_response(StatusCode::OK, &value)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn openai_usage(r: &Reply) -> Value {
    json!({
        "prompt_tokens": r.input,
        "completion_tokens": r.output,
        "total_tokens": r.input + r.output,
        "prompt_tokens_details": {"cached_tokens": r.cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    })
}

fn anthropic_usage(r: &Reply) -> Value {
    json!({
        "input_tokens": r.input - r.cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": r.cached,
        "output_tokens": r.output,
        "service_tier": "standard"
    })
}

fn openai_finish(r: &Reply) -> &'static str {
    if r.tool_call.is_some() {
        "tool_calls"
    } else if r.truncated {
        "length"
    } else {
        "stop"
    }
}

fn anthropic_stop(r: &Reply) -> &'static str {
    if r.tool_call.is_some() {
        "tool_use"
    } else if r.truncated {
        "max_tokens"
    } else {
        "end_turn"
    }
}

fn openai_completion(p: &Parsed, r: &Reply, id: u64) -> Value {
    let mut message =
        json!({"role": "assistant", "content": null, "refusal": null, "annotations": []});
    if let Some((name, args)) = &r.tool_call {
        message["tool_calls"] = json!([{"id": format!("call_fake_{id}"), "type": "function", "function": {"name": name, "arguments": args}}]);
    } else {
        message["content"] = Value::String(r.pieces.concat());
    }
    json!({
        "id": format!("chatcmpl-fake-{id}"),
        "object": "chat.completion",
        "created": now(),
        "model": p.model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": openai_finish(r)}],
        "usage": openai_usage(r),
        "service_tier": "default",
        "system_fingerprint": "fp_fake"
    })
}

fn anthropic_message(p: &Parsed, r: &Reply, id: u64) -> Value {
    let content = match &r.tool_call {
        Some((name, args)) => {
            let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
            json!([{"type": "tool_use", "id": format!("toolu_fake_{id}"), "name": name, "input": input}])
        }
        None => json!([{"type": "text", "text": r.pieces.concat()}]),
    };
    json!({
        "id": format!("msg_fake_{id}"),
        "type": "message",
        "role": "assistant",
        "model": p.model,
        "content": content,
        "stop_reason": anthropic_stop(r),
        "stop_sequence": null,
        "usage": anthropic_usage(r)
    })
}

/// One SSE event: optional `event:` name and the `data:` payload.
type Event = (Option<&'static str>, String);

fn openai_events(p: &Parsed, r: &Reply, id: u64, usage_on_finish: bool) -> Vec<Event> {
    let created = now();
    let usage_field = p.include_usage && !usage_on_finish;
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": format!("chatcmpl-fake-{id}"),
            "object": "chat.completion.chunk",
            "created": created,
            "model": p.model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        if usage_field {
            c["usage"] = Value::Null;
        }
        (None, c.to_string())
    };
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    if let Some((name, args)) = &r.tool_call {
        out.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": format!("call_fake_{id}"), "type": "function", "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ));
        let mid = args.len() / 2;
        let mid = (0..=mid)
            .rev()
            .find(|i| args.is_char_boundary(*i))
            .unwrap_or(0);
        for part in [&args[..mid], &args[mid..]] {
            out.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                Value::Null,
            ));
        }
    } else {
        for piece in &r.pieces {
            out.push(chunk(json!({"content": piece}), Value::Null));
        }
    }
    let (_, last) = chunk(json!({}), json!(openai_finish(r)));
    if usage_on_finish && p.include_usage {
        let mut v: Value = serde_json::from_str(&last).unwrap_or_default();
        v["usage"] = openai_usage(r);
        out.push((None, v.to_string()));
    } else {
        out.push((None, last));
    }
    if usage_field {
        let mut v = json!({
            "id": format!("chatcmpl-fake-{id}"),
            "object": "chat.completion.chunk",
            "created": created,
            "model": p.model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
            "choices": [],
        });
        v["usage"] = openai_usage(r);
        out.push((None, v.to_string()));
    }
    out.push((None, "[DONE]".to_owned()));
    out
}

fn anthropic_events(p: &Parsed, r: &Reply, id: u64) -> Vec<Event> {
    let ev = |name: &'static str, v: Value| (Some(name), v.to_string());
    let start_usage = json!({
        "input_tokens": r.input - r.cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": r.cached,
        "output_tokens": 1,
        "service_tier": "standard"
    });
    let mut out = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {
                "id": format!("msg_fake_{id}"), "type": "message", "role": "assistant",
                "model": p.model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": start_usage}}),
    )];
    match &r.tool_call {
        Some((name, args)) => {
            out.push(ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": format!("toolu_fake_{id}"), "name": name, "input": {}}}),
            ));
            out.push(ev("ping", json!({"type": "ping"})));
            let mid = args.len() / 2;
            let mid = (0..=mid)
                .rev()
                .find(|i| args.is_char_boundary(*i))
                .unwrap_or(0);
            for part in [&args[..mid], &args[mid..]] {
                out.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": part}}),
                ));
            }
        }
        None => {
            out.push(ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            out.push(ev("ping", json!({"type": "ping"})));
            for piece in &r.pieces {
                out.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
                ));
            }
        }
    }
    out.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push(ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": anthropic_stop(r), "stop_sequence": null},
               "usage": {"input_tokens": r.input - r.cached, "cache_creation_input_tokens": 0, "cache_read_input_tokens": r.cached, "output_tokens": r.output}}),
    ));
    out.push(ev("message_stop", json!({"type": "message_stop"})));
    out
}

fn stream_response(events: Vec<Event>, fault: &Fault) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let fault = fault.clone();
    tokio::spawn(async move {
        for (i, (name, data)) in events.into_iter().enumerate() {
            if fault.cut_after == Some(i) {
                // Let the events before the cut reach the wire: hyper drops
                // unflushed frames when a body fails.
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = tx.send(Err("stream cut by fault".into())).await;
                return;
            }
            if fault.malformed_after == Some(i) {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(
                        b"data: {\"choices\": [{\"delta\": \n\n",
                    ))))
                    .await;
                return;
            }
            if i > 0 {
                if let Some(ms) = fault.chunk_delay {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
            let text = match name {
                Some(n) => format!("event: {n}\ndata: {data}\n\n"),
                None => format!("data: {data}\n\n"),
            };
            if tx.send(Ok(Frame::data(Bytes::from(text)))).await.is_err() {
                return;
            }
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(StreamBody::new(body).boxed());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    resp
}

fn embeddings(v: &Value, model: &str) -> Response<Body> {
    let inputs: Vec<String> = match v.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    };
    let dims = v.get("dimensions").and_then(Value::as_u64).unwrap_or(8) as usize;
    let base64 = v.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let mut tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            tokens += words(text).max(1);
            let seed = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
            let vector: Vec<f32> = (0..dims)
                .map(|d| ((seed.rotate_left(d as u32 * 7) % 1000) as f32) / 1000.0)
                .collect();
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(encode_base64(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
}

fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(encode_base64(b""), "");
        assert_eq!(encode_base64(b"f"), "Zg==");
        assert_eq!(encode_base64(b"fo"), "Zm8=");
        assert_eq!(encode_base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn fault_specs_parse() {
        let f = parse_fault("429:retry-after=2");
        assert_eq!(f.status, Some(429));
        assert_eq!(f.retry_after.as_deref(), Some("2"));
        let f = parse_fault("slow-first-byte=300+cut-after=3");
        assert_eq!(f.slow_first_byte, Some(300));
        assert_eq!(f.cut_after, Some(3));
        assert_eq!(parse_fault("malformed-chunk").malformed_after, Some(2));
    }
}
