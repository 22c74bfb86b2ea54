//! The HTTP face of 2025-11-25 tasks: rmcp parses `tasks/*` as the
//! 2026-07-28 requests and drops `params.task` from `tools/call`, so a
//! 2025 session's task requests are renamed to the gateway's private
//! methods before rmcp reads them (see `gateway::tasks::legacy`).

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use super::task_support::Wanted;
use super::{read_body, Body};

/// Whether a request may carry a 2025 task request, or be an `initialize`
/// or `tools/list` whose answer `task_support` completes: a POST whose
/// protocol is not 2026-07-28. Decided on headers alone.
pub(super) fn candidate(req: &Request<Incoming>) -> bool {
    req.method() == http::Method::POST
        && req
            .headers()
            .get("mcp-protocol-version")
            .is_none_or(|v| v.as_bytes() != b"2026-07-28")
}

/// The request with its body read (at most `limit` bytes) and, when it is
/// a 2025 task request, its method renamed; and whether its answer must be
/// completed for a 2025 client.
pub(super) async fn rewrite(
    req: Request<Incoming>,
    limit: usize,
) -> Result<(Request<Full<Bytes>>, Option<Wanted>), Response<Body>> {
    let (mut parts, body) = req.into_parts();
    let bytes = read_body(body, limit).await?;
    let wanted = super::task_support::wanted(&bytes, &parts.headers);
    // Task requests are renamed in a session only (2026-07-28 requests
    // carry none, and a 2025 task needs one).
    let in_session = parts.headers.contains_key("mcp-session-id");
    let renamed = in_session
        .then(|| crate::gateway::rewrite_legacy_task_request(&bytes))
        .flatten();
    let bytes = match renamed {
        Some(renamed) => {
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, renamed.len().into());
            Bytes::from(renamed)
        }
        None => bytes,
    };
    Ok((Request::from_parts(parts, Full::new(bytes)), wanted))
}
