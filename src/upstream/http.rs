//! The HTTP client rmcp's streamable HTTP transport uses for our upstreams:
//! reqwest, plus the request's W3C trace context as `traceparent` /
//! `tracestate` headers, so HTTP-level tooling between the gateway and an
//! upstream (proxies, the upstream's own HTTP tracing) joins the trace.
//!
//! Every message the upstream sends is also shown to the connection's
//! `TaskSupport` before rmcp parses it: SSE events as they stream by, and
//! the JSON body of an answer to `initialize` or `tools/list` (the only
//! answers `TaskSupport` reads). rmcp's reqwest client parses a JSON body
//! itself, so those two requests are posted here, with the headers,
//! statuses, content types and size limits that client uses; every other
//! request is rmcp's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use http::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use rmcp::model::{
    ClientJsonRpcMessage, ClientRequest, GetMeta, JsonRpcMessage, RequestId, ServerJsonRpcMessage,
};
use rmcp::transport::common::http_header::{
    EVENT_STREAM_MIME_TYPE, HEADER_LAST_EVENT_ID, HEADER_SESSION_ID, JSON_MIME_TYPE,
};
use rmcp::transport::streamable_http_client::{
    AuthRequiredError, HttpStatusError, InsufficientScopeError, SseError, StreamableHttpClient,
    StreamableHttpError, StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use sse_stream::{Sse, SseStream};
use tokio::runtime::Handle;

use super::related;
use super::task_support::TaskSupport;

/// reqwest with trace-context headers taken from each request's `_meta`.
#[derive(Clone)]
pub(crate) struct TracingClient {
    /// The gateway's HTTP client.
    pub(crate) http: reqwest::Client,
    /// What the server says about 2025 tasks, read from its answers.
    pub(crate) seen: Arc<TaskSupport>,
}

type PostResult = Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>>;

/// Headers rmcp sets itself and refuses among the configured ones.
const RESERVED: [&str; 3] = ["accept", HEADER_SESSION_ID, HEADER_LAST_EVENT_ID];

impl TracingClient {
    /// Shows a streamed answer to `seen`, and marks its log lines as the
    /// posted request's (`related`). The answer is read on to its end if
    /// rmcp drops it early ([`Drained`]).
    fn tap(
        &self,
        response: StreamableHttpPostResponse,
        request: Option<RequestId>,
    ) -> StreamableHttpPostResponse {
        match response {
            StreamableHttpPostResponse::Sse(stream, session) => {
                let stream = self.tap_sse(Drained::new(stream), request);
                StreamableHttpPostResponse::Sse(stream, session)
            }
            // A JSON answer `TaskSupport` reads was shown to it by
            // `post_observed`; rmcp parsed any other.
            other => other,
        }
    }

    /// An SSE stream on its way to rmcp: each log line marked as
    /// `request`'s (`related`; on a GET stream, `None`), then each event's
    /// data shown to `seen`. One adapter does both, as every call's answer
    /// stream passes through it.
    fn tap_sse(
        &self,
        stream: impl futures::Stream<Item = Result<Sse, SseError>> + Send + 'static,
        request: Option<RequestId>,
    ) -> BoxStream<'static, Result<Sse, SseError>> {
        let seen = self.seen.clone();
        stream
            .map(move |event| {
                event.map(|mut sse| {
                    if let Some(data) = sse.data.as_mut() {
                        related::mark_event(data, request.as_ref());
                        seen.observe(data.as_bytes());
                    }
                    sse
                })
            })
            .boxed()
    }

    /// Posts `message` as rmcp's reqwest client does, but shows a JSON
    /// answer's bytes to `seen` before parsing them.
    async fn post_observed(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> PostResult {
        let mut request = self.http.post(uri.as_ref()).header(
            ACCEPT,
            format!("{EVENT_STREAM_MIME_TYPE}, {JSON_MIME_TYPE}"),
        );
        if let Some(token) = auth_header {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            if RESERVED
                .iter()
                .any(|r| name.as_str().eq_ignore_ascii_case(r))
            {
                return Err(StreamableHttpError::ReservedHeaderConflict(
                    name.to_string(),
                ));
            }
            request = request.header(name, value);
        }
        let had_session = session_id.is_some();
        if let Some(id) = session_id {
            request = request.header(HEADER_SESSION_ID, id.as_ref());
        }
        let mut response = request.json(&message).send().await?;
        let status = response.status();
        if let Some(refusal) = challenge(status, response.headers()) {
            return Err(refusal);
        }
        if matches!(status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == StatusCode::NOT_FOUND && had_session {
            return Err(StreamableHttpError::SessionExpired);
        }
        let session = response
            .headers()
            .get(HEADER_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let json = is_type(content_type.as_ref(), JSON_MIME_TYPE);
        if !status.is_success() {
            return refused(response, json, session, limits).await;
        }
        if is_type(content_type.as_ref(), EVENT_STREAM_MIME_TYPE) {
            let events = bounded_sse(response, limits.max_sse_event_size);
            return Ok(StreamableHttpPostResponse::Sse(events, session));
        }
        if !json {
            let shown = content_type.map(|ct| String::from_utf8_lossy(ct.as_bytes()).into_owned());
            return Err(StreamableHttpError::UnexpectedContentType(shown));
        }
        let body = read_body(&mut response, limits.max_json_response_size, true).await?;
        self.seen.observe(&body);
        match serde_json::from_slice::<ServerJsonRpcMessage>(&body) {
            Ok(answer) => Ok(StreamableHttpPostResponse::Json(answer, session)),
            Err(e) => Err(StreamableHttpError::UnexpectedServerResponse(
                format!("malformed JSON-RPC answer: {e}").into(),
            )),
        }
    }
}

/// Whether the answer to `message` is one `TaskSupport` reads: the
/// handshake's or a `tools/list` page.
fn observed(message: &ClientJsonRpcMessage) -> bool {
    matches!(
        message,
        JsonRpcMessage::Request(r) if matches!(
            r.request,
            ClientRequest::InitializeRequest(_) | ClientRequest::ListToolsRequest(_)
        )
    )
}

/// rmcp's errors for a 401 or 403 that carries a challenge. The gateway
/// sends configured credentials and upgrades no scope, so none is parsed
/// out of a 403's.
fn challenge(
    status: StatusCode,
    headers: &HeaderMap,
) -> Option<StreamableHttpError<reqwest::Error>> {
    if !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return None;
    }
    let Ok(value) = headers.get(WWW_AUTHENTICATE)?.to_str() else {
        return Some(StreamableHttpError::UnexpectedServerResponse(
            "invalid www-authenticate header value".into(),
        ));
    };
    Some(if status == StatusCode::UNAUTHORIZED {
        StreamableHttpError::AuthRequired(AuthRequiredError::new(value.to_owned()))
    } else {
        StreamableHttpError::InsufficientScope(InsufficientScopeError::new(value.to_owned(), None))
    })
}

/// A non-success answer. A JSON-RPC error in a JSON body is the answer, as
/// rmcp's client keeps it; otherwise the status (429 and 5xx with their
/// `Retry-After`, which rmcp's retries read), or a prefix of the body.
async fn refused(
    mut response: reqwest::Response,
    json: bool,
    session: Option<String>,
    limits: StreamableHttpResponseLimits,
) -> PostResult {
    let status = response.status();
    let status_error =
        (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()).then(|| {
            let retry_after = response.headers().get(RETRY_AFTER);
            let retry_after = retry_after.and_then(|v| v.to_str().ok()).map(str::to_owned);
            HttpStatusError::new(status.as_u16(), retry_after)
        });
    let unexpected = |body: &[u8]| {
        let shown = &body[..body.len().min(limits.max_error_response_size)];
        StreamableHttpError::UnexpectedServerResponse(
            format!("HTTP {status}: {}", String::from_utf8_lossy(shown)).into(),
        )
    };
    // A challenge-less 401/403 and a 429 are not JSON-RPC answers.
    let rpc = json
        && !matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
        );
    if !rpc {
        if let Some(error) = status_error {
            return Err(error.into());
        }
        let prefix = read_body(&mut response, limits.max_error_response_size, false).await;
        return Err(unexpected(&prefix.unwrap_or_default()));
    }
    let body = match read_body(&mut response, limits.max_json_response_size, true).await {
        Ok(body) => body,
        Err(e) => return Err(status_error.map_or(e, Into::into)),
    };
    match serde_json::from_slice::<ServerJsonRpcMessage>(&body) {
        Ok(error @ JsonRpcMessage::Error(_)) => {
            Ok(StreamableHttpPostResponse::Json(error, session))
        }
        _ => Err(status_error.map_or_else(|| unexpected(&body), Into::into)),
    }
}

/// Whether a `Content-Type` names `mime`, whatever its parameters and case.
fn is_type(content_type: Option<&HeaderValue>, mime: &str) -> bool {
    content_type
        .and_then(|ct| std::str::from_utf8(ct.as_bytes()).ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(mime))
}

/// The body, up to `max` bytes. A `whole` body (a message to parse) is an
/// error when longer; otherwise (a diagnostic) the rest is left unread.
async fn read_body(
    response: &mut reqwest::Response,
    max: usize,
    whole: bool,
) -> Result<Vec<u8>, StreamableHttpError<reqwest::Error>> {
    let too_large = StreamableHttpError::ResponseBodyTooLarge { max_size: max };
    if whole && response.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while whole || body.len() < max {
        let Some(chunk) = response.chunk().await? else {
            break;
        };
        let room = max - body.len();
        if chunk.len() > room {
            if whole {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk[..room]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How long a dropped answer is read on for its end.
const DRAIN: Duration = Duration::from_millis(50);
/// Events of a dropped answer read at once, before a task is spawned to
/// wait for the rest.
const DRAIN_AT_ONCE: usize = 16;

/// A POST's SSE answer that, when dropped before its end, is read on to
/// the end on a task of its own (for at most [`DRAIN`]). rmcp's client
/// drops an answer stream as soon as the worker has the response, racing
/// its own drain; an answer whose closing chunk had not arrived yet then
/// dies with its HTTP/1.1 connection, and the next call opens a new one
/// (at concurrency 1, up to one call in 200 on an idle machine and one in
/// seven on a loaded one; docs/benchmarks.md). The
/// events read on are discarded, as rmcp would have. An answer dropped
/// before its response is dropped at once: that is a cancelled call, and
/// on a 2026-07-28 connection closing the stream is how the server learns
/// it.
struct Drained {
    /// The answer until it has ended.
    inner: Option<BoxStream<'static, Result<Sse, SseError>>>,
    /// A JSON-RPC response (or error) came on the stream.
    answered: bool,
}

impl Drained {
    fn new(inner: BoxStream<'static, Result<Sse, SseError>>) -> Self {
        Drained {
            inner: Some(inner),
            answered: false,
        }
    }
}

/// Whether an event's data is a JSON-RPC response or error: a message
/// without a `method`. (A response whose result holds a `"method"` key
/// reads as not one, which only forgoes the drain.)
fn is_response(sse: &Sse) -> bool {
    sse.data.as_deref().is_some_and(|data| {
        !data.trim().is_empty() && memchr::memmem::find(data.as_bytes(), b"\"method\"").is_none()
    })
}

impl futures::Stream for Drained {
    type Item = Result<Sse, SseError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let next = inner.poll_next_unpin(cx);
        match &next {
            std::task::Poll::Ready(None) => self.inner = None,
            std::task::Poll::Ready(Some(Ok(sse))) if !self.answered => {
                self.answered = is_response(sse);
            }
            _ => {}
        }
        next
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        let Some(mut rest) = self.inner.take() else {
            return;
        };
        if !self.answered {
            return;
        }
        // Most answers have ended by now, their closing chunk having come
        // with the response: a task per call to find that out would cost
        // more (a cross-thread wake-up at low load) than the rare new
        // connection it saves.
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        for _ in 0..DRAIN_AT_ONCE {
            match rest.poll_next_unpin(&mut cx) {
                std::task::Poll::Ready(None) => return,
                std::task::Poll::Ready(Some(_)) => {}
                std::task::Poll::Pending => break,
            }
        }
        let Ok(runtime) = Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let _ =
                tokio::time::timeout(DRAIN, async { while rest.next().await.is_some() {} }).await;
        });
    }
}

/// Why an SSE answer's byte stream failed.
#[derive(Debug, thiserror::Error)]
enum SseBodyError {
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("SSE event exceeded the maximum size of {0} bytes")]
    TooLarge(usize),
}

/// An SSE answer's events; the stream fails, and ends, once one event
/// outgrows `max` bytes, before the parser has buffered it whole. (rmcp
/// recognises only its own bound's error as fatal; ours is a broken
/// stream, resumed if an event id allows it and failed otherwise.)
fn bounded_sse(
    response: reqwest::Response,
    max: usize,
) -> BoxStream<'static, Result<Sse, SseError>> {
    let bytes = response
        .bytes_stream()
        .scan(EventBound::new(max), move |bound, chunk| {
            let item = match chunk {
                _ if bound.failed => None,
                Ok(chunk) if bound.fits(&chunk) => Some(Ok(chunk)),
                Ok(_) => Some(Err(SseBodyError::TooLarge(max))),
                Err(e) => Some(Err(SseBodyError::Http(e))),
            };
            bound.failed |= matches!(item, Some(Err(_)));
            futures::future::ready(item)
        });
    SseStream::from_bytes_stream(bytes).boxed()
}

/// The size of the SSE event being received: the bytes of its lines (not
/// comments), each with its line end.
struct EventBound {
    max: usize,
    event: usize,
    /// Bytes of the current line so far.
    line: usize,
    comment: bool,
    /// The last byte was a CR (a following LF ends no second line).
    after_cr: bool,
    failed: bool,
}

impl EventBound {
    fn new(max: usize) -> Self {
        EventBound {
            max,
            event: 0,
            line: 0,
            comment: false,
            after_cr: false,
            failed: false,
        }
    }

    /// Counts `chunk`; false once the event is over the limit.
    fn fits(&mut self, chunk: &[u8]) -> bool {
        for &byte in chunk {
            let after_cr = std::mem::replace(&mut self.after_cr, byte == b'\r');
            let counted = match byte {
                b'\n' if after_cr => 0,
                b'\r' | b'\n' if self.line == 0 => {
                    // A blank line: the event is complete.
                    self.event = 0;
                    0
                }
                b'\r' | b'\n' => {
                    self.line = 0;
                    usize::from(!self.comment)
                }
                _ => {
                    if self.line == 0 {
                        self.comment = byte == b':';
                    }
                    self.line = self.line.saturating_add(1);
                    usize::from(!self.comment)
                }
            };
            self.event = self.event.saturating_add(counted);
            if self.event > self.max {
                return false;
            }
        }
        true
    }
}

/// The `traceparent` (and `tracestate`) headers for a request, from its
/// `_meta`; empty for notifications and responses.
pub(super) fn trace_headers(message: &ClientJsonRpcMessage) -> Vec<(HeaderName, HeaderValue)> {
    let JsonRpcMessage::Request(request) = message else {
        return Vec::new();
    };
    let meta = request.request.get_meta();
    [
        ("traceparent", meta.get_traceparent()),
        ("tracestate", meta.get_tracestate()),
    ]
    .into_iter()
    .filter_map(|(name, value)| {
        let value = HeaderValue::from_str(value?).ok()?;
        Some((HeaderName::from_static(name), value))
    })
    .collect()
}

fn with_trace_headers(
    message: &ClientJsonRpcMessage,
    mut headers: HashMap<HeaderName, HeaderValue>,
) -> HashMap<HeaderName, HeaderValue> {
    headers.extend(trace_headers(message));
    headers
}

impl StreamableHttpClient for TracingClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            StreamableHttpResponseLimits::default(),
        )
        .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let mut headers = with_trace_headers(&message, custom_headers);
        self.seen.params().complete(&message, &mut headers);
        let request = match &message {
            JsonRpcMessage::Request(r) => Some(r.id.clone()),
            _ => None,
        };
        let response = if observed(&message) {
            self.post_observed(uri, message, session_id, auth_header, headers, limits)
                .await
        } else {
            self.http
                .post_message_with_response_limits(
                    uri,
                    message,
                    session_id,
                    auth_header,
                    headers,
                    limits,
                )
                .await
        };
        response.map(|r| self.tap(r, request))
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.http
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.http
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
            .map(|s| self.tap_sse(s, None))
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.http
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
            .map(|s| self.tap_sse(s, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{"tasks":{"requests":{"tools":{"call":{}}}}},"serverInfo":{"name":"s","version":"1"}}}"#;
    const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"report","inputSchema":{},"execution":{"taskSupport":"required"}}]}}"#;

    fn request(id: u32, method: &str) -> ClientJsonRpcMessage {
        let params = match method {
            "initialize" => json!({"protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "c", "version": "1"}}),
            _ => json!({}),
        };
        let message = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        serde_json::from_value(message).unwrap()
    }

    fn client() -> TracingClient {
        TracingClient {
            http: reqwest::Client::new(),
            seen: Arc::new(TaskSupport::default()),
        }
    }

    /// Answers one request with `head` (status line and headers) and
    /// `body`; yields the request as received.
    async fn answer_once(
        head: &'static str,
        body: String,
    ) -> (Arc<str>, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            // The headers, then the body they announce.
            loop {
                let n = sock.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    if seen.len() >= end + 4 + len || n == 0 {
                        break;
                    }
                }
            }
            let answer = format!(
                "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&seen).into_owned()
        });
        (url.into(), server)
    }

    async fn post(
        client: &TracingClient,
        url: Arc<str>,
        message: ClientJsonRpcMessage,
        session: Option<&str>,
        limits: StreamableHttpResponseLimits,
    ) -> PostResult {
        let headers = HashMap::from([(
            HeaderName::from_static("x-upstream-key"),
            HeaderValue::from_static("k1"),
        )]);
        client
            .post_message_with_response_limits(
                url,
                message,
                session.map(Arc::from),
                None,
                headers,
                limits,
            )
            .await
    }

    /// One request of `method`, answered once with `head` and `body`, with
    /// the default limits.
    async fn exchange(
        client: &TracingClient,
        head: &'static str,
        body: &str,
        (id, method): (u32, &str),
        session: Option<&str>,
    ) -> PostResult {
        let (url, _server) = answer_once(head, body.to_owned()).await;
        post(
            client,
            url,
            request(id, method),
            session,
            Default::default(),
        )
        .await
    }

    #[test]
    fn only_the_handshake_and_tools_pages_are_posted_here() {
        assert!(observed(&request(1, "initialize")));
        assert!(observed(&request(2, "tools/list")));
        assert!(!observed(&request(3, "ping")));
        assert!(!observed(&request(4, "prompts/list")));
    }

    #[tokio::test]
    async fn a_json_handshake_and_tools_page_are_seen_before_rmcp_parses_them() {
        let client = client();
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nMcp-Session-Id: s-1";
        let (url, server) = answer_once(ok, INIT.to_owned()).await;
        let answer = post(
            &client,
            url,
            request(1, "initialize"),
            None,
            Default::default(),
        )
        .await;
        let Ok(StreamableHttpPostResponse::Json(JsonRpcMessage::Response(_), Some(session))) =
            answer
        else {
            panic!("{answer:?}");
        };
        assert_eq!(session, "s-1");
        let sent = server.await.unwrap().to_lowercase();
        assert!(
            sent.contains("accept: text/event-stream, application/json"),
            "{sent}"
        );
        assert!(
            sent.contains("x-upstream-key: k1") && !sent.contains("mcp-session-id"),
            "{sent}"
        );
        assert_eq!(
            client.seen.capability(),
            Some(json!({"requests": {"tools": {"call": {}}}}))
        );

        let (url, server) = answer_once(ok, LIST.to_owned()).await;
        let answer = post(
            &client,
            url,
            request(2, "tools/list"),
            Some("s-1"),
            Default::default(),
        )
        .await;
        assert!(
            matches!(answer, Ok(StreamableHttpPostResponse::Json(..))),
            "{answer:?}"
        );
        assert!(server
            .await
            .unwrap()
            .to_lowercase()
            .contains("mcp-session-id: s-1"));
        assert_eq!(
            client.seen.execution("report"),
            Some(json!({"taskSupport": "required"}))
        );
    }

    #[tokio::test]
    async fn an_sse_handshake_is_tapped_too() {
        let client = client();
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream";
        let answer = exchange(
            &client,
            head,
            &format!("event: message\ndata: {INIT}\n\n"),
            (1, "initialize"),
            None,
        )
        .await;
        let Ok(StreamableHttpPostResponse::Sse(mut events, None)) = answer else {
            panic!("{answer:?}");
        };
        let event = events.next().await.unwrap().unwrap();
        assert_eq!(event.data.as_deref(), Some(INIT));
        assert!(client.seen.capability().is_some());
    }

    #[tokio::test]
    async fn the_response_limits_hold() {
        let client = client();
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: application/json";
        let mut limits = StreamableHttpResponseLimits::default();
        limits.max_json_response_size = INIT.len() - 1;
        limits.max_sse_event_size = 64;
        let (url, _server) = answer_once(ok, INIT.to_owned()).await;
        let answer = post(&client, url, request(1, "initialize"), None, limits).await;
        assert!(
            matches!(
                answer,
                Err(StreamableHttpError::ResponseBodyTooLarge { .. })
            ),
            "{answer:?}"
        );
        assert_eq!(client.seen.capability(), None);

        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream";
        let (url, _server) = answer_once(head, format!("data: {INIT}\n\n")).await;
        let answer = post(&client, url, request(1, "initialize"), None, limits).await;
        let Ok(StreamableHttpPostResponse::Sse(mut events, _)) = answer else {
            panic!("{answer:?}");
        };
        let error = events.next().await.unwrap().unwrap_err();
        assert!(
            error.to_string().contains("maximum size of 64 bytes"),
            "{error}"
        );
        assert!(events.next().await.is_none());
    }

    #[tokio::test]
    async fn failures_keep_rmcps_meaning() {
        let client = client();
        // A JSON-RPC error in a failed answer is the answer.
        let error = r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"no"}}"#;
        let head = "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json";
        let answer = exchange(&client, head, error, (1, "initialize"), None).await;
        assert!(
            matches!(
                answer,
                Ok(StreamableHttpPostResponse::Json(
                    JsonRpcMessage::Error(_),
                    _
                ))
            ),
            "{answer:?}"
        );
        // Overload keeps its status and Retry-After, for rmcp's retries.
        let head = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 3";
        let answer = exchange(&client, head, "busy", (1, "initialize"), None).await;
        let Err(StreamableHttpError::HttpStatus(status)) = answer else {
            panic!("{answer:?}");
        };
        assert_eq!(
            (status.status, status.retry_after.as_deref()),
            (503, Some("3"))
        );
        // A forgotten session is one to re-initialize.
        let head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain";
        let answer = exchange(&client, head, "", (2, "tools/list"), Some("gone")).await;
        assert!(
            matches!(answer, Err(StreamableHttpError::SessionExpired)),
            "{answer:?}"
        );
        // Anything else says what came back.
        let head = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain";
        let answer = exchange(&client, head, "Missing session ID", (2, "tools/list"), None).await;
        let Err(StreamableHttpError::UnexpectedServerResponse(text)) = answer else {
            panic!("{answer:?}");
        };
        assert_eq!(text, "HTTP 400 Bad Request: Missing session ID");
        // So does an answer that is neither JSON nor SSE.
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/html";
        let answer = exchange(&client, head, "<p>", (1, "initialize"), None).await;
        assert!(
            matches!(answer, Err(StreamableHttpError::UnexpectedContentType(Some(ref t))) if t == "text/html"),
            "{answer:?}"
        );
    }

    #[test]
    fn an_event_is_measured_by_its_lines_not_comments_or_what_came_before() {
        let mut bound = EventBound::new(10);
        // "data: abc" and its line end: 10 bytes, across chunks, CRLF once.
        assert!(bound.fits(b"data: a"));
        assert!(bound.fits(b"bc\r"));
        assert!(bound.fits(b"\n"));
        assert!(!EventBound::new(10).fits(b"data: abcd\n"));
        // A blank line ends the event; comments do not count.
        assert!(bound.fits(b"\r\n: a long keep-alive comment\ndata: abc\n"));
        assert!(!bound.fits(b"x"));
    }

    fn event(data: &str) -> Result<Sse, SseError> {
        Ok(Sse::default().data(data))
    }

    /// No events; tells `ended` when the stream is read that far.
    fn end_signal(
        ended: tokio::sync::oneshot::Sender<()>,
    ) -> impl futures::Stream<Item = Result<Sse, SseError>> {
        futures::stream::once(async move {
            let _ = ended.send(());
        })
        .filter_map(|()| async { None })
    }

    /// An answer stream: the response, then `rest`.
    fn answer_then(
        rest: impl futures::Stream<Item = Result<Sse, SseError>> + Send + 'static,
    ) -> Drained {
        Drained::new(futures::stream::iter([event(RESPONSE)]).chain(rest).boxed())
    }

    const RESPONSE: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
    const PROGRESS: &str = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#;

    #[tokio::test]
    async fn an_answer_dropped_before_its_end_is_read_to_the_end() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (ended, at_end) = tokio::sync::oneshot::channel::<()>();
        // The response event, then (once released) the closing one, then
        // the end, which tells `at_end` it was reached.
        let rest = futures::stream::once(async move {
            let _ = released.await;
            event(PROGRESS)
        })
        .chain(end_signal(ended));
        let mut answer = answer_then(rest);
        assert!(matches!(answer.next().await, Some(Ok(_))));
        drop(answer);
        let _ = release.send(());
        let reached = tokio::time::timeout(Duration::from_secs(10), at_end).await;
        assert!(matches!(reached, Ok(Ok(()))), "{reached:?}");
    }

    #[tokio::test]
    async fn an_answer_whose_end_has_come_is_finished_on_drop_without_a_task() {
        let (ended, mut at_end) = tokio::sync::oneshot::channel::<()>();
        let mut answer =
            answer_then(futures::stream::iter([event(PROGRESS)]).chain(end_signal(ended)));
        assert!(matches!(answer.next().await, Some(Ok(_))));
        drop(answer);
        // On this single-threaded runtime a spawned task has not run yet.
        assert_eq!(at_end.try_recv(), Ok(()));
    }

    #[tokio::test]
    async fn an_answer_dropped_before_its_response_is_not_read_on() {
        let (ended, at_end) = tokio::sync::oneshot::channel::<()>();
        let rest = futures::stream::once(async move {
            let _ = ended.send(());
            event(RESPONSE)
        });
        let mut answer = Drained::new(
            futures::stream::iter([event(""), event(PROGRESS)])
                .chain(rest)
                .boxed(),
        );
        assert!(matches!(answer.next().await, Some(Ok(_))));
        assert!(matches!(answer.next().await, Some(Ok(_))));
        drop(answer);
        // The rest was dropped unread: its sender is gone without a word.
        assert!(at_end.await.is_err());
    }

    #[test]
    fn responses_are_told_from_other_messages() {
        let data = |d: &str| Sse::default().data(d);
        assert!(is_response(&data(RESPONSE)));
        assert!(is_response(&data(
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"m"}}"#
        )));
        assert!(!is_response(&data(PROGRESS)));
        assert!(!is_response(&data("")));
        assert!(!is_response(&Sse::default()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_never_ends_is_dropped_after_the_drain_bound() {
        let (guard, dropped) = tokio::sync::oneshot::channel::<()>();
        let never = futures::stream::poll_fn(move |_| {
            let _ = &guard;
            std::task::Poll::<Option<Result<Sse, SseError>>>::Pending
        });
        let mut answer = answer_then(never);
        assert!(matches!(answer.next().await, Some(Ok(_))));
        let start = tokio::time::Instant::now();
        drop(answer);
        // Resolves (with an error) once the stream, and its guard, is dropped.
        let _ = dropped.await;
        assert!(start.elapsed() >= DRAIN, "{:?}", start.elapsed());
    }
}
