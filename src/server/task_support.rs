//! What a 2025-11-25 client must be told about tasks and rmcp cannot say:
//! the `tasks` capability in the `initialize` result (the gateway serves
//! 2025 tasks for every tool, forwarded or gateway-local) and each tool's
//! `execution` in `tools/list` (the upstream's own object, or
//! `taskSupport: optional` for a tool of an upstream offering the 2026
//! tasks extension). rmcp's model has no fields for either, so the answer
//! is completed on its way out: only for the two requests, recognised from
//! the body `tasks2025` already read, and never for 2026-07-28 requests
//! (which `tasks2025::candidate` never reads). An answer that cannot be
//! parsed leaves untouched.

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::Body;
use rmcp::model::Tool;

use crate::registry::{Endpoint, NamedView, Registry};

/// The one revision whose clients know these fields.
const REVISION: &str = "2025-11-25";

static INITIALIZE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"initialize\""));
static TOOLS_LIST: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"tools/list\""));

/// An answer to complete: which request, and its id.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Wanted {
    kind: Kind,
    id: Value,
}

impl Wanted {
    /// The id of the request whose answer is to be completed.
    pub(super) fn id(&self) -> &Value {
        &self.id
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Initialize,
    ToolsList,
}

#[derive(Deserialize)]
struct Request {
    id: Value,
    method: String,
}

/// Whether a legacy POST is an `initialize` or a 2025-11-25 session's
/// `tools/list`. One byte scan per body; only a match is parsed.
pub(super) fn wanted(body: &[u8], headers: &HeaderMap) -> Option<Wanted> {
    let kind = if INITIALIZE.find(body).is_some() {
        Kind::Initialize
    } else if TOOLS_LIST.find(body).is_some()
        && headers
            .get("mcp-protocol-version")
            .is_some_and(|v| v.as_bytes() == REVISION.as_bytes())
    {
        Kind::ToolsList
    } else {
        return None;
    };
    let request: Request = serde_json::from_slice(body).ok()?;
    let expected = match kind {
        Kind::Initialize => "initialize",
        Kind::ToolsList => "tools/list",
    };
    (request.method == expected).then_some(Wanted {
        kind,
        id: request.id,
    })
}

/// The answer to the request `wanted` names, completed.
pub(super) async fn complete(
    resp: Response<Body>,
    wanted: Wanted,
    registry: &Arc<Registry>,
    endpoint: &Endpoint,
) -> Response<Body> {
    if !resp.status().is_success() {
        return resp;
    }
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let execution = Execution::for_answer(wanted.kind, registry, endpoint).await;
    let complete_one = move |payload: &str| edit(payload, &wanted, &|name| execution.get(name));
    edit_answer(resp, &content_type, complete_one).await
}

/// One JSON-RPC message (the stdio front end's answer line) completed, or
/// `None` when it is not the answer `wanted` names or needs nothing.
pub(super) async fn complete_message(
    payload: &str,
    wanted: &Wanted,
    registry: &Arc<Registry>,
    endpoint: &Endpoint,
) -> Option<String> {
    let execution = Execution::for_answer(wanted.kind, registry, endpoint).await;
    edit(payload, wanted, &|name| execution.get(name))
}

/// The answer with its JSON-RPC message(s) passed through `edit`, as an
/// SSE stream or one JSON body; any other body passes untouched.
async fn edit_answer(
    resp: Response<Body>,
    content_type: &str,
    edit: impl FnMut(&str) -> Option<String> + Send + Sync + 'static,
) -> Response<Body> {
    if content_type.starts_with("text/event-stream") {
        return resp.map(|body| edit_events(body, edit));
    }
    if !content_type.starts_with("application/json") {
        return resp;
    }
    let mut edit = edit;
    let (mut parts, body) = resp.into_parts();
    let Ok(collected) = body.collect().await else {
        return super::text(http::StatusCode::BAD_GATEWAY, "the answer broke off\n");
    };
    let bytes = collected.to_bytes();
    let bytes = std::str::from_utf8(&bytes)
        .ok()
        .and_then(&mut edit)
        .map(Bytes::from)
        .unwrap_or(bytes);
    parts
        .headers
        .insert(http::header::CONTENT_LENGTH, bytes.len().into());
    Response::from_parts(parts, Full::new(bytes).map_err(|e| match e {}).boxed())
}

/// Looks up the `execution` of a tool an endpoint shows, by exposed name.
#[derive(Default)]
struct Execution(Option<(Arc<Registry>, Arc<NamedView<Tool>>)>);

impl Execution {
    /// What completing an answer of `kind` needs (nothing for `initialize`).
    async fn for_answer(kind: Kind, registry: &Arc<Registry>, endpoint: &Endpoint) -> Execution {
        match kind {
            Kind::Initialize => Execution::default(),
            Kind::ToolsList => Execution::of(registry, endpoint).await,
        }
    }

    async fn of(registry: &Arc<Registry>, endpoint: &Endpoint) -> Execution {
        // The view the answer was built from (cached: no second fetch).
        let view = registry.tools(endpoint).await;
        Execution(Some((registry.clone(), view)))
    }

    fn get(&self, name: &str) -> Option<Value> {
        let (registry, view) = self.0.as_ref()?;
        let target = view.index.get(name)?;
        let upstream = registry.upstream(&target.upstream)?;
        upstream.tool_execution(&target.original).or_else(|| {
            // The 2026 tasks extension lets the server make a task of any
            // call, and the gateway bridges it.
            (upstream.offers_tasks() == Some(true)).then(|| json!({"taskSupport": "optional"}))
        })
    }
}

/// One JSON-RPC message completed, or `None` when it is not the answer
/// `wanted` names or needs nothing.
fn edit(
    payload: &str,
    wanted: &Wanted,
    execution: &dyn Fn(&str) -> Option<Value>,
) -> Option<String> {
    if !payload.contains("\"result\"") {
        return None;
    }
    if wanted.kind == Kind::ToolsList {
        return edit_tools(payload, &wanted.id, execution);
    }
    let mut message: Value = serde_json::from_str(payload).ok()?;
    if message.get("id") != Some(&wanted.id) {
        return None;
    }
    let result = message.get_mut("result")?.as_object_mut()?;
    match wanted.kind {
        Kind::Initialize => {
            if result.get("protocolVersion")?.as_str()? != REVISION {
                return None;
            }
            let capabilities = result.get_mut("capabilities")?.as_object_mut()?;
            capabilities.insert(
                "tasks".into(),
                json!({"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}),
            );
        }
        Kind::ToolsList => return None,
    }
    serde_json::to_string(&message).ok()
}

/// A `tools/list` answer, its tools left as written.
#[derive(Deserialize)]
struct ListAnswer<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
    #[serde(borrow)]
    result: ListResult<'a>,
}

#[derive(Deserialize)]
struct ListResult<'a> {
    #[serde(borrow)]
    tools: Vec<&'a RawValue>,
}

/// What a tool's completion depends on.
#[derive(Deserialize)]
struct ToolHead<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(default)]
    execution: Present,
}

/// Whether a field is there at all, whatever its value (even `null`).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Present(true))
    }
}

/// A `tools/list` answer with an `execution` added to each tool that has
/// none and needs one. The answer can be thousands of tools (megabytes), so
/// it is not parsed into values and written again: each tool is read in
/// place for its name, and the object is spliced where it ends.
fn edit_tools(
    payload: &str,
    id: &Value,
    execution: &dyn Fn(&str) -> Option<Value>,
) -> Option<String> {
    let answer: ListAnswer<'_> = serde_json::from_str(payload).ok()?;
    if serde_json::from_str::<Value>(answer.id.get()).ok().as_ref() != Some(id) {
        return None;
    }
    let base = payload.as_ptr() as usize;
    let mut out = String::new();
    let mut copied = 0;
    for tool in answer.result.tools {
        let Ok(head) = serde_json::from_str::<ToolHead<'_>>(tool.get()) else {
            continue;
        };
        if head.execution.0 {
            continue;
        }
        let Some(execution) = execution(&head.name) else {
            continue;
        };
        // A borrowed raw value is a slice of the payload: where it ends
        // (its closing brace) is where the field goes.
        let end = (tool.get().as_ptr() as usize - base) + tool.get().len() - 1;
        if payload.as_bytes().get(end) != Some(&b'}') {
            return None;
        }
        if out.is_empty() {
            out.reserve(payload.len() + payload.len() / 8);
        }
        out.push_str(&payload[copied..end]);
        out.push_str(",\"execution\":");
        out.push_str(&execution.to_string());
        copied = end;
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&payload[copied..]);
    Some(out)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An SSE body with each event's data passed through `edit`; events it
/// leaves alone keep their bytes. After the first edit the rest streams
/// through unread (one answer per POST).
fn edit_events(
    body: Body,
    edit: impl FnMut(&str) -> Option<String> + Send + Sync + 'static,
) -> Body {
    let state = Events {
        body,
        pending: Vec::new(),
        finished: false,
        edited: false,
        edit,
    };
    let frames = futures::stream::unfold(state, |mut state| async move {
        let frame = state.next().await?;
        Some((frame, state))
    });
    StreamBody::new(frames).boxed()
}

struct Events<F> {
    body: Body,
    pending: Vec<u8>,
    finished: bool,
    edited: bool,
    edit: F,
}

impl<F: FnMut(&str) -> Option<String>> Events<F> {
    async fn next(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        loop {
            if let Some(end) = event_end(&self.pending) {
                let rest = self.pending.split_off(end);
                let event = std::mem::replace(&mut self.pending, rest);
                return Some(Ok(Frame::data(self.event(event))));
            }
            if self.finished || (self.edited && !self.pending.is_empty()) {
                if self.pending.is_empty() {
                    return None;
                }
                return Some(Ok(Frame::data(Bytes::from(std::mem::take(
                    &mut self.pending,
                )))));
            }
            match self.body.frame().await {
                None => self.finished = true,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if self.edited => return Some(Ok(Frame::data(data))),
                    Ok(data) => self.pending.extend_from_slice(&data),
                    Err(other) => return Some(Ok(other)),
                },
            }
        }
    }

    fn event(&mut self, raw: Vec<u8>) -> Bytes {
        if self.edited {
            return raw.into();
        }
        match edit_event(&raw, &mut self.edit) {
            Some(edited) => {
                self.edited = true;
                edited.into()
            }
            None => raw.into(),
        }
    }
}

/// Where the first complete event in `bytes` ends (after its blank line).
fn event_end(bytes: &[u8]) -> Option<usize> {
    let lf = memchr::memmem::find(bytes, b"\n\n").map(|i| i + 2);
    let crlf = memchr::memmem::find(bytes, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One SSE event with its data replaced by `edit`'s answer, or `None`.
fn edit_event(raw: &[u8], edit: &mut impl FnMut(&str) -> Option<String>) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(raw).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let data: Vec<&str> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    // One data line (as serde_json writes) is edited where it lies: a
    // list answer can be megabytes.
    let edited = match data.as_slice() {
        [] => return None,
        [one] => edit(one)?,
        many => edit(&many.join("\n"))?,
    };
    let mut out = Vec::with_capacity(edited.len() + raw.len() / 4);
    let mut written = false;
    for line in lines.iter().filter(|l| !l.is_empty()) {
        if line.starts_with("data:") {
            if !written {
                // serde_json writes no newlines, so one data line holds it.
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(edited.as_bytes());
                out.push(b'\n');
                written = true;
            }
        } else {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(version: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = version {
            h.insert("mcp-protocol-version", v.parse().unwrap());
        }
        h
    }

    const LIST: &str = r#"{"jsonrpc":"2.0","id":"r1","method":"tools/list","params":{}}"#;

    #[test]
    fn only_initialize_and_a_2025_tools_list_are_wanted() {
        let init = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}"#;
        assert_eq!(
            wanted(init, &headers(None)),
            Some(Wanted {
                kind: Kind::Initialize,
                id: json!(0)
            })
        );
        assert_eq!(
            wanted(LIST.as_bytes(), &headers(Some("2025-11-25"))),
            Some(Wanted {
                kind: Kind::ToolsList,
                id: json!("r1")
            })
        );
        assert_eq!(wanted(LIST.as_bytes(), &headers(Some("2026-07-28"))), None);
        assert_eq!(wanted(LIST.as_bytes(), &headers(Some("2025-06-18"))), None);
        let call =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"tools/list"}}"#;
        assert_eq!(wanted(call, &headers(Some("2025-11-25"))), None);
    }

    fn research(name: &str) -> Option<Value> {
        (name == "up__research").then(|| json!({"taskSupport": "required"}))
    }

    #[test]
    fn a_tools_list_answer_gets_each_tools_execution() {
        let wanted = Wanted {
            kind: Kind::ToolsList,
            id: json!("r1"),
        };
        let answer = r#"{"jsonrpc":"2.0","id":"r1","result":{"tools":[{"name":"up__research","inputSchema":{}},{"name":"up__echo","inputSchema":{}}]}}"#;
        let edited: Value =
            serde_json::from_str(&edit(answer, &wanted, &research).unwrap()).unwrap();
        let tools = edited["result"]["tools"].as_array().unwrap();
        assert_eq!(tools[0]["execution"], json!({"taskSupport": "required"}));
        assert!(tools[1].get("execution").is_none());
        // Another request's answer, and an answer needing nothing, pass.
        assert_eq!(edit(&answer.replace("r1", "r2"), &wanted, &research), None);
        assert_eq!(edit(answer, &wanted, &|_| None), None);
        assert_eq!(edit("{not json \"result\"", &wanted, &research), None);
    }

    #[test]
    fn tools_are_completed_in_place_whatever_their_text() {
        let wanted = Wanted {
            kind: Kind::ToolsList,
            id: json!(7),
        };
        // An escaped name, braces inside strings, a tool that has an
        // `execution` (even null), one that is not an object, and spacing.
        let answer = r#"{ "jsonrpc": "2.0", "result": { "tools": [
            {"name": "up__r\u0065search", "description": "{not} a \"brace\" }", "inputSchema": {"type": "object"}} ,
            {"name": "up__research", "execution": null},
            7,
            {"inputSchema": {}, "name": "up__research" }
          ], "nextCursor": "c" }, "id": 7 }"#;
        let edited: Value =
            serde_json::from_str(&edit(answer, &wanted, &research).unwrap()).unwrap();
        let mut expected: Value = serde_json::from_str(answer).unwrap();
        let task = json!({"taskSupport": "required"});
        expected["result"]["tools"][0]["execution"] = task.clone();
        expected["result"]["tools"][3]["execution"] = task;
        assert_eq!(edited, expected);
        assert_eq!(
            edit(
                &answer.replace("\"id\": 7", "\"id\": \"7\""),
                &wanted,
                &research
            ),
            None
        );
    }

    #[test]
    fn a_2025_initialize_answer_declares_tasks() {
        let wanted = Wanted {
            kind: Kind::Initialize,
            id: json!(0),
        };
        let answer = r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"p","version":"1"}}}"#;
        let edited: Value =
            serde_json::from_str(&edit(answer, &wanted, &|_| None).unwrap()).unwrap();
        assert_eq!(
            edited["result"]["capabilities"]["tasks"]["requests"]["tools"]["call"],
            json!({})
        );
        assert_eq!(edited["result"]["capabilities"]["tools"], json!({}));
        let older = answer.replace("2025-11-25", "2025-06-18");
        assert_eq!(edit(&older, &wanted, &|_| None), None);
    }

    #[tokio::test]
    async fn a_json_answer_is_edited_and_other_bodies_pass() {
        let wanted = Wanted {
            kind: Kind::ToolsList,
            id: json!("r1"),
        };
        let answer = r#"{"jsonrpc":"2.0","id":"r1","result":{"tools":[{"name":"up__research"}]}}"#;
        let body = || {
            Full::new(Bytes::from(answer))
                .map_err(|e| match e {})
                .boxed()
        };
        let complete = move |p: &str| edit(p, &wanted, &research);
        let resp = edit_answer(Response::new(body()), "application/json", complete.clone()).await;
        let length = resp.headers()[http::header::CONTENT_LENGTH].clone();
        let out = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(length, out.len().to_string().as_str());
        assert!(String::from_utf8_lossy(&out).contains("taskSupport"));
        let resp = edit_answer(Response::new(body()), "text/plain", complete).await;
        let out = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(out, answer.as_bytes());
    }

    #[tokio::test]
    async fn an_sse_body_is_edited_event_by_event_across_frames() {
        let priming = "id: 0\nretry: 3000\ndata: \n\n";
        let notice = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\n";
        let answer = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"r1\",\"result\":{\"tools\":[{\"name\":\"up__research\"}]}}\nid: 7\n\n";
        let whole = format!("{priming}{notice}{answer}");
        // Frames of 5 bytes split every event.
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = whole
            .as_bytes()
            .chunks(5)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = StreamBody::new(futures::stream::iter(frames)).boxed();
        let wanted = Wanted {
            kind: Kind::ToolsList,
            id: json!("r1"),
        };
        let out = edit_events(body, move |p| edit(p, &wanted, &research))
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let out = String::from_utf8(out.to_vec()).unwrap();
        assert!(out.starts_with(&format!("{priming}{notice}")), "{out}");
        let last = out.strip_prefix(&format!("{priming}{notice}")).unwrap();
        assert!(last.starts_with("event: message\ndata: {"), "{last}");
        assert!(last.ends_with("\nid: 7\n\n"), "{last}");
        assert!(
            last.contains(r#""execution":{"taskSupport":"required"}"#),
            "{last}"
        );
    }
}
