//! `notifications/tasks` (the tasks extension of 2026-07-28) at the edge:
//! a `subscriptions/listen` request names the tasks it wants in
//! `params.notifications.taskIds`, a field rmcp's filter type drops, and
//! the acknowledgement must list the ids the server accepted. So the
//! request is [`settle`]d before rmcp reads it, by the HTTP face and by
//! `portcullis stdio` alike: a listener that asks for tasks without
//! declaring the extension is refused (-32021), and the ids it may watch
//! (`Gateway::watchable_tasks`) are written into its `_meta` under
//! `LISTEN_TASKS_META`, a key only this code writes (it is stripped from
//! whatever the client sent), for the session to follow. The
//! acknowledgement rmcp writes is completed with them on its way out
//! ([`acknowledge`] for an SSE answer, [`acknowledge_message`] for one
//! message). A listen request without `taskIds` passes as it came.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Frame;
use hyper::body::Incoming;
use rmcp::model::{ErrorCode, ErrorData};
use serde::Deserialize;
use serde_json::Value;

use super::{json, read_body, rpc_error, Body};
use crate::auth::Identity;
use crate::gateway::{Gateway, LISTEN_TASKS_META};
use crate::registry::Endpoint;

const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";
const ACKNOWLEDGED: &str = "notifications/subscriptions/acknowledged";
/// The most the acknowledgement is buffered while looking for its end; an
/// event longer than this passes unchanged.
const MAX_ACK: usize = 64 * 1024;

/// Whether a request says it is a `subscriptions/listen` (2026-07-28
/// requests name their method in `Mcp-Method`; rmcp checks that it
/// matches the body). Decided on headers alone.
pub(super) fn candidate(req: &Request<Incoming>) -> bool {
    req.method() == http::Method::POST
        && req
            .headers()
            .get("mcp-method")
            .is_some_and(|v| v.as_bytes() == b"subscriptions/listen")
}

#[derive(Deserialize)]
struct Listen {
    #[serde(default)]
    id: Value,
    method: String,
    #[serde(default)]
    params: Option<Params>,
}

#[derive(Default, Deserialize)]
struct Params {
    #[serde(default)]
    notifications: Option<Notifications>,
    #[serde(rename = "_meta", default)]
    meta: Option<Meta>,
}

#[derive(Deserialize)]
struct Notifications {
    /// Read loosely, so that a malformed list is refused in words rather
    /// than passed to rmcp, whose filter type drops it unseen.
    #[serde(rename = "taskIds", default)]
    task_ids: Option<Value>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "io.modelcontextprotocol/clientCapabilities", default)]
    capabilities: Option<Capabilities>,
}

#[derive(Deserialize)]
struct Capabilities {
    #[serde(default)]
    extensions: Option<serde_json::Map<String, Value>>,
}

/// What becomes of a listen request.
pub(super) enum Settled {
    /// Answer the client with this JSON-RPC error instead (-32021, or
    /// -32602 for a `taskIds` that is not a list of ids).
    Refused(Value),
    /// Pass this body on instead. When it asked for tasks, the
    /// acknowledgement of request `.0` is to list the ids `.1`.
    Forward {
        body: Vec<u8>,
        acknowledge: Option<(Value, Value)>,
    },
}

/// Settles a `subscriptions/listen` request of `identity` on `endpoint`;
/// `None` for anything else, and for a listen request that passes as it
/// came. A body that cannot be read is rmcp's to refuse, in its own words.
pub(super) fn settle(
    body: &[u8],
    gw: &Gateway,
    identity: &Identity,
    endpoint: &Endpoint,
) -> Option<Settled> {
    let mut message: Value = serde_json::from_slice(body).ok()?;
    let listen = Listen::deserialize(&message)
        .ok()
        .filter(|l| l.method == "subscriptions/listen")?;
    let meta = message
        .pointer_mut("/params/_meta")
        .and_then(Value::as_object_mut);
    // The key is this code's alone, whatever the client wrote.
    let stripped = meta.is_some_and(|m| m.remove(LISTEN_TASKS_META).is_some());
    let params = listen.params.unwrap_or_default();
    let Some(requested) = params.notifications.and_then(|n| n.task_ids) else {
        let body = stripped.then(|| serde_json::to_vec(&message).ok())??;
        return Some(Settled::Forward {
            body,
            acknowledge: None,
        });
    };
    let Ok(requested) = Vec::<String>::deserialize(&requested) else {
        return Some(Settled::Refused(not_a_list(listen.id)));
    };
    let declared = params
        .meta
        .and_then(|m| m.capabilities)
        .and_then(|c| c.extensions)
        .is_some_and(|e| e.contains_key(TASKS_EXTENSION));
    if !declared {
        return Some(Settled::Refused(missing_extension(listen.id)));
    }
    let ids = Value::from(gw.watchable_tasks(identity, endpoint, &requested));
    // The extension was declared, so `_meta` is an object.
    message
        .pointer_mut("/params/_meta")
        .and_then(Value::as_object_mut)?
        .insert(LISTEN_TASKS_META.into(), ids.clone());
    Some(Settled::Forward {
        body: serde_json::to_vec(&message).ok()?,
        acknowledge: Some((listen.id, ids)),
    })
}

/// The listen request with its body read (at most `limit` bytes) and
/// settled, and the ids its acknowledgement is to list; or the refusal to
/// send instead.
pub(super) async fn prepare(
    req: Request<Incoming>,
    limit: usize,
    gw: &Gateway,
    identity: &Identity,
    endpoint: &Endpoint,
) -> Result<(Request<Full<Bytes>>, Option<Value>), Response<Body>> {
    let (mut parts, body) = req.into_parts();
    let bytes = read_body(body, limit).await?;
    let (bytes, ids) = match settle(&bytes, gw, identity, endpoint) {
        Some(Settled::Refused(error)) => return Err(json(StatusCode::BAD_REQUEST, &error)),
        Some(Settled::Forward { body, acknowledge }) => {
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, body.len().into());
            (Bytes::from(body), acknowledge.map(|(_, ids)| ids))
        }
        None => (bytes, None),
    };
    Ok((Request::from_parts(parts, Full::new(bytes)), ids))
}

/// -32602 for a `taskIds` that is not an array of strings.
fn not_a_list(id: Value) -> Value {
    rpc_error(
        id,
        ErrorData::invalid_params(
            "notifications.taskIds must be an array of task id strings",
            None,
        ),
    )
}

/// -32021 with the capability the request lacks, as the extension says.
fn missing_extension(id: Value) -> Value {
    rpc_error(
        id,
        ErrorData::new(
            ErrorCode(-32021),
            "Missing required client capability: notifications/tasks needs the \
             io.modelcontextprotocol/tasks extension",
            Some(serde_json::json!({
                "requiredCapabilities": { "extensions": { TASKS_EXTENSION: {} } }
            })),
        ),
    )
}

/// Adds `taskIds: ids` to `message` when it is a listen acknowledgement
/// (of the listen request `of`, when given); whether it was one.
pub(super) fn acknowledge_message(message: &mut Value, ids: &Value, of: Option<&Value>) -> bool {
    if message.get("method").and_then(Value::as_str) != Some(ACKNOWLEDGED) {
        return false;
    }
    let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) else {
        return false;
    };
    if let Some(of) = of {
        let subscription = params
            .get("_meta")
            .and_then(|m| m.get("io.modelcontextprotocol/subscriptionId"));
        if subscription != Some(of) {
            return false;
        }
    }
    let notifications = params
        .entry("notifications")
        .or_insert_with(|| Value::Object(Default::default()));
    match notifications.as_object_mut() {
        Some(n) => {
            n.insert("taskIds".into(), ids.clone());
            true
        }
        None => false,
    }
}

/// The listen answer with `taskIds: accepted` added to its acknowledgement
/// (the stream's first message). Any other answer (an error) is untouched.
pub(super) fn acknowledge(resp: Response<Body>, ids: Value) -> Response<Body> {
    let streamed = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streamed {
        return resp;
    }
    resp.map(|inner| {
        http_body_util::BodyExt::boxed(Acknowledgement {
            inner,
            pending: Some((Vec::new(), ids)),
            queued: None,
        })
    })
}

/// A listen stream whose first event is completed with the accepted ids.
struct Acknowledgement {
    inner: Body,
    /// The bytes held back and the ids, until the first event has passed.
    pending: Option<(Vec<u8>, Value)>,
    /// A trailers frame that arrived while bytes were held.
    queued: Option<Frame<Bytes>>,
}

type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl hyper::body::Body for Acknowledgement {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.queued.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        loop {
            let Some((held, _)) = &mut this.pending else {
                return Pin::new(&mut this.inner).poll_frame(cx);
            };
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(frame) => frame,
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        held.extend_from_slice(&data);
                        let complete = first_event_end(held).is_some();
                        if complete || held.len() > MAX_ACK {
                            return Poll::Ready(this.release().map(|b| Ok(Frame::data(b))));
                        }
                    }
                    // Trailers: whatever was held goes first.
                    Err(trailers) => match this.release() {
                        Some(held) => {
                            this.queued = Some(trailers);
                            return Poll::Ready(Some(Ok(Frame::data(held))));
                        }
                        None => return Poll::Ready(Some(Ok(trailers))),
                    },
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(this.release().map(|b| Ok(Frame::data(b)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.queued.is_none() && self.inner.is_end_stream()
    }
}

impl Acknowledgement {
    /// Ends the holding: the held bytes, their first event completed when
    /// it is the acknowledgement; `None` when nothing was held.
    fn release(&mut self) -> Option<Bytes> {
        let (held, ids) = self.pending.take()?;
        if held.is_empty() {
            return None;
        }
        Some(match first_event_end(&held) {
            Some(end) => {
                let mut out =
                    complete_event(&held[..end], &ids).unwrap_or_else(|| held[..end].to_vec());
                out.extend_from_slice(&held[end..]);
                Bytes::from(out)
            }
            None => Bytes::from(held),
        })
    }
}

/// Where the first SSE event ends (after its blank line).
fn first_event_end(bytes: &[u8]) -> Option<usize> {
    memchr::memmem::find(bytes, b"\n\n").map(|i| i + 2)
}

/// The event with `taskIds` added to its data, when its data is the
/// acknowledgement; `None` to pass it unchanged.
fn complete_event(event: &[u8], ids: &Value) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(event).ok()?;
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    let mut message: Value = serde_json::from_str(&data.join("\n")).ok()?;
    if !acknowledge_message(&mut message, ids, None) {
        return None;
    }
    let mut out = String::with_capacity(event.len() + 64);
    let mut written = false;
    for line in text.lines() {
        if line.starts_with("data:") {
            if !written {
                out.push_str("data: ");
                out.push_str(&message.to_string());
                out.push('\n');
                written = true;
            }
        } else if !line.is_empty() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn streamed(chunks: Vec<&'static str>) -> Response<Body> {
        let frames = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, BodyError>(Frame::data(Bytes::from(c)))),
        );
        let mut resp = Response::new(http_body_util::StreamBody::new(frames).boxed());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        resp
    }

    async fn text(resp: Response<Body>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    const ACK: &str = r#"{"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{"notifications":{"toolsListChanged":true},"_meta":{"io.modelcontextprotocol/subscriptionId":1}}}"#;

    #[tokio::test]
    async fn the_acknowledgement_lists_the_accepted_ids_even_split_across_frames() {
        let first = Box::leak(format!("id: 0\ndata: {}", &ACK[..40]).into_boxed_str());
        let second =
            Box::leak(format!("{}\n\ndata: {{\"later\":1}}\n\n", &ACK[40..]).into_boxed_str());
        let resp = acknowledge(
            streamed(vec![first, second]),
            serde_json::json!(["t1", "t2"]),
        );
        let out = text(resp).await;
        let (event, rest) = out.split_once("\n\n").unwrap();
        assert!(event.starts_with("id: 0\n"), "{event}");
        let data = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        let ack: Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            ack["params"]["notifications"]["taskIds"],
            serde_json::json!(["t1", "t2"])
        );
        assert_eq!(ack["params"]["notifications"]["toolsListChanged"], true);
        assert_eq!(
            ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
            1
        );
        assert_eq!(rest, "data: {\"later\":1}\n\n");
    }

    #[tokio::test]
    async fn only_the_acknowledgement_is_touched() {
        let resp = acknowledge(
            streamed(vec![
                "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n",
            ]),
            serde_json::json!(["t1"]),
        );
        assert_eq!(
            text(resp).await,
            "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n"
        );
        // An error answered as JSON is not a stream.
        let mut resp = Response::new(Full::new(Bytes::from("{}")).map_err(|e| match e {}).boxed());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        assert_eq!(
            text(acknowledge(resp, serde_json::json!(["t1"]))).await,
            "{}"
        );
    }

    #[tokio::test]
    async fn a_stream_that_ends_early_passes_what_it_sent() {
        let resp = acknowledge(streamed(vec!["data: {\"jsonrpc\""]), serde_json::json!([]));
        assert_eq!(text(resp).await, "data: {\"jsonrpc\"");
    }
}
