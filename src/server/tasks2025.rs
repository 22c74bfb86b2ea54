//! The HTTP face of 2025-11-25 tasks: rmcp parses `tasks/*` as the
//! 2026-07-28 requests and drops `params.task` from `tools/call`, so a
//! 2025 session's task requests are renamed to the gateway's private
//! methods before rmcp reads them (see `gateway::tasks::legacy`).

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::{text, Body};

/// Whether a request may carry a 2025 task request: a POST in a session
/// (2026-07-28 requests carry no session) whose protocol is not 2026-07-28.
/// Decided on headers alone.
pub(super) fn candidate(req: &Request<Incoming>) -> bool {
    req.method() == http::Method::POST
        && req.headers().contains_key("mcp-session-id")
        && req
            .headers()
            .get("mcp-protocol-version")
            .is_none_or(|v| v.as_bytes() != b"2026-07-28")
}

/// The request with its body read (at most `limit` bytes) and, when it is
/// a 2025 task request, its method renamed.
pub(super) async fn rewrite(
    req: Request<Incoming>,
    limit: usize,
) -> Result<Request<Full<Bytes>>, Response<Body>> {
    let (mut parts, body) = req.into_parts();
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body exceeds {limit} bytes\n"),
            ))
        }
        Err(e) => {
            return Err(text(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body failed: {e}\n"),
            ))
        }
    };
    let bytes = match crate::gateway::rewrite_legacy_task_request(&bytes) {
        Some(renamed) => {
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, renamed.len().into());
            Bytes::from(renamed)
        }
        None => bytes,
    };
    Ok(Request::from_parts(parts, Full::new(bytes)))
}
