//! The model API on the main listener: `POST /v1/chat/completions`,
//! `POST /v1/messages`, `POST /v1/embeddings` and `GET /v1/models`, handed
//! to [`crate::llm::Llm`]. This file only converts between hyper and the
//! router's request and response types.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};

use super::Body;
use crate::auth::Identity;
use crate::config::HttpConfig;
use crate::llm::forward::EventBody;
use crate::llm::{Api, Llm, LlmRequest, LlmResponse, ResponseBody};
use futures::StreamExt as _;

/// The HTTP protections of `http:` in the config, applied to the model API
/// as rmcp applies them to `/mcp`: a page in a browser must not be able to
/// spend the gateway's model budget through DNS rebinding or a cross-origin
/// request.
pub(super) struct Guard {
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Vec<String>,
    max_body: usize,
}

impl Guard {
    pub(super) fn new(http: &HttpConfig) -> Guard {
        Guard {
            allowed_hosts: (!http.allowed_hosts.iter().any(|h| h == "*"))
                .then(|| http.allowed_hosts.clone()),
            allowed_origins: http.allowed_origins.clone(),
            max_body: http.max_body_bytes,
        }
    }

    fn refuses(&self, req: &Request<Incoming>) -> Option<&'static str> {
        let header = |n| req.headers().get(n).and_then(|v| v.to_str().ok());
        if let Some(allowed) = &self.allowed_hosts {
            let host = header(http::header::HOST)
                .map(str::to_owned)
                .or_else(|| req.uri().authority().map(|a| a.to_string()));
            let ok = host.is_some_and(|h| {
                let bare = strip_port(&h);
                allowed.iter().any(|a| a == &h || a == bare)
            });
            if !ok {
                return Some("Host not allowed\n");
            }
        }
        if let Some(origin) = header(http::header::ORIGIN) {
            let ok = if self.allowed_origins.is_empty() {
                let host = origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"))
                    .map(strip_port);
                matches!(host, Some("localhost" | "127.0.0.1" | "[::1]"))
            } else {
                self.allowed_origins.iter().any(|o| o == origin)
            };
            if !ok {
                return Some("Origin not allowed\n");
            }
        }
        None
    }
}

/// `host:port` → `host` (IPv6 literals keep their brackets).
fn strip_port(h: &str) -> &str {
    match h.rfind(':') {
        Some(i) if !h[i..].contains(']') => &h[..i],
        _ => h,
    }
}

/// Routes one `/v1/*` request.
pub(super) async fn route(llm: &Llm, req: Request<Incoming>, guard: &Guard) -> Response<Body> {
    if let Some(why) = guard.refuses(&req) {
        return super::text(StatusCode::FORBIDDEN, why);
    }
    let max_body = guard.max_body;
    let path = req.uri().path().trim_end_matches('/');
    let api = match (req.method(), path) {
        (&Method::GET, "/v1/models") => {
            let anthropic = req.headers().contains_key("anthropic-version");
            return convert(llm.models(anthropic));
        }
        (&Method::POST, "/v1/chat/completions") => Api::Chat,
        (&Method::POST, "/v1/messages") => Api::Messages,
        (&Method::POST, "/v1/messages/count_tokens") => Api::CountTokens,
        (&Method::POST, "/v1/embeddings") => Api::Embeddings,
        (
            _,
            "/v1/models"
            | "/v1/chat/completions"
            | "/v1/messages"
            | "/v1/messages/count_tokens"
            | "/v1/embeddings",
        ) => {
            return super::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        _ => return super::text(StatusCode::NOT_FOUND, &format!("no model API at {path}\n")),
    };
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let target_hint = header("x-portcullis-target");
    let traceparent = header("traceparent").map(|p| (p, header("tracestate")));
    let anthropic_beta = header("anthropic-beta");
    // Auth, when wired in front of this router, leaves the caller here.
    let identity = req
        .extensions()
        .get::<Arc<Identity>>()
        .cloned()
        .unwrap_or_else(Identity::anonymous);
    let body = match Limited::new(req.into_body(), max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return super::text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body larger than {max_body} bytes\n"),
            );
        }
        Err(e) => return super::text(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}\n")),
    };
    // The client's Authorization header stays here: providers get their
    // credentials from config only.
    convert(
        llm.handle(LlmRequest {
            api,
            body,
            target_hint,
            identity,
            traceparent,
            anthropic_beta,
        })
        .await,
    )
}

fn convert(r: LlmResponse) -> Response<Body> {
    let (body, content_type) = match r.body {
        ResponseBody::Json(bytes) => (
            Full::new(bytes).map_err(|e| match e {}).boxed(),
            "application/json",
        ),
        ResponseBody::Stream(stream) => (
            EventsBody(stream).boxed(),
            "text/event-stream; charset=utf-8",
        ),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if content_type.starts_with("text/event-stream") {
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
    }
    for (name, value) in r.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    resp
}

/// A streamed answer as an HTTP body: hyper polls it as it writes, and
/// writes every event that is ready in one go.
struct EventsBody(EventBody);

impl hyper::body::Body for EventsBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_next_unpin(cx)
            .map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("localhost:8080"), "localhost");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
