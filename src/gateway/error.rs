//! The one place gateway failures become JSON-RPC errors.

use rmcp::model::{ErrorCode, ErrorData};
use serde_json::json;

use crate::ratelimit::Refused;
use crate::registry::RegistryError;
use crate::upstream::UpstreamError;

/// JSON-RPC code MCP SDKs use for a request that timed out.
pub const REQUEST_TIMEOUT: ErrorCode = ErrorCode(-32001);
/// Code for an upstream that cannot be reached (implementation-defined range).
pub const UPSTREAM_UNAVAILABLE: ErrorCode = ErrorCode(-32002);
/// Code for a call refused by a rate or concurrency limit
/// (implementation-defined range); `data` holds `limit` and `retry_after_ms`.
pub const RATE_LIMITED: ErrorCode = ErrorCode(-32029);
/// Code for a request the client cancelled.
pub const REQUEST_CANCELLED: ErrorCode = ErrorCode(-32800);

/// Maps an upstream failure to what the client sees. The message always
/// names the upstream so a user can tell which server is at fault.
pub(super) fn upstream_error(e: UpstreamError) -> ErrorData {
    match e {
        UpstreamError::Remote(e) => e,
        UpstreamError::Timeout {
            ref upstream,
            after,
        } => ErrorData::new(
            REQUEST_TIMEOUT,
            e.to_string(),
            Some(json!({ "upstream": upstream, "timeoutMs": after.as_millis() as u64 })),
        ),
        UpstreamError::Cancelled | UpstreamError::SessionEnded => {
            ErrorData::new(REQUEST_CANCELLED, e.to_string(), None)
        }
        UpstreamError::Unavailable { ref upstream, .. }
        | UpstreamError::Connect { ref upstream, .. }
        | UpstreamError::Closed { ref upstream }
        | UpstreamError::TooManySessions { ref upstream, .. } => ErrorData::new(
            UPSTREAM_UNAVAILABLE,
            e.to_string(),
            Some(json!({ "upstream": upstream })),
        ),
    }
}

/// Maps a registry failure.
pub(super) fn registry_error(e: RegistryError) -> ErrorData {
    match e {
        RegistryError::BadCursor => ErrorData::invalid_params("invalid cursor", None),
        RegistryError::Upstream(e) => upstream_error(e),
        other => ErrorData::internal_error(other.to_string(), None),
    }
}

/// The error for a name that is not in the caller's view.
pub(super) fn unknown(kind: &str, name: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!("unknown {kind}: `{name}`"),
        Some(json!({ kind: name })),
    )
}

/// Maps a limit's refusal: the message names the limit, `data` says which
/// and when to retry (`null` when retrying cannot help).
pub(super) fn refused_error(r: Refused) -> ErrorData {
    ErrorData::new(
        RATE_LIMITED,
        r.to_string(),
        Some(json!({ "limit": r.limit(), "retry_after_ms": r.retry_after_ms() })),
    )
}
