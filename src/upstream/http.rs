//! The HTTP client rmcp's streamable HTTP transport uses for our upstreams:
//! reqwest, plus the request's W3C trace context as `traceparent` /
//! `tracestate` headers, so HTTP-level tooling between the gateway and an
//! upstream (proxies, the upstream's own HTTP tracing) joins the trace.
//! Every SSE event the upstream sends is also shown to the connection's
//! `TaskSupport` before rmcp parses it.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::model::{ClientJsonRpcMessage, GetMeta, JsonRpcMessage};
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};
use sse_stream::Sse;

use super::task_support::{tap_sse, TaskSupport};

/// reqwest with trace-context headers taken from each request's `_meta`.
#[derive(Clone)]
pub(crate) struct TracingClient {
    /// The gateway's HTTP client.
    pub(crate) http: reqwest::Client,
    /// What the server says about 2025 tasks, read from its SSE events.
    pub(crate) seen: Arc<TaskSupport>,
}

impl TracingClient {
    fn tap(&self, response: StreamableHttpPostResponse) -> StreamableHttpPostResponse {
        match response {
            StreamableHttpPostResponse::Sse(stream, session) => {
                StreamableHttpPostResponse::Sse(tap_sse(stream, self.seen.clone()), session)
            }
            // A JSON answer arrives parsed: what rmcp dropped is gone.
            other => other,
        }
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
        let headers = with_trace_headers(&message, custom_headers);
        self.http
            .post_message(uri, message, session_id, auth_header, headers)
            .await
            .map(|r| self.tap(r))
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
        let headers = with_trace_headers(&message, custom_headers);
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
            .map(|r| self.tap(r))
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
            .map(|s| tap_sse(s, self.seen.clone()))
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
            .map(|s| tap_sse(s, self.seen.clone()))
    }
}
