//! The per-request record: one metric observation, one span and one recent
//! call entry for every downstream request, finished explicitly when the
//! request ends (never from `Drop`).

use std::time::Instant;

use rmcp::model::{CallToolResponse, ErrorCode, ErrorData};
use rmcp::service::{RequestContext, RoleServer};
use tracing::field::Empty;
use tracing::Span;

use super::error::{RATE_LIMITED, REQUEST_CANCELLED, REQUEST_TIMEOUT, UPSTREAM_UNAVAILABLE};
use crate::registry::Target;
use crate::telemetry::metrics::{Metrics, NONE, UNKNOWN};
use crate::telemetry::recent::{RecentCall, RecentCalls};
use crate::telemetry::trace;

/// What a result says about the outcome, beyond Ok/Err.
pub(super) trait Outcome {
    /// True when the call completed but reports a failure (`isError`).
    fn failed(&self) -> bool {
        false
    }
}

impl Outcome for CallToolResponse {
    fn failed(&self) -> bool {
        matches!(self, CallToolResponse::Complete(r) if r.is_error == Some(true))
    }
}

macro_rules! plain_outcome {
    ($($t:ty),*) => { $(impl Outcome for $t {})* };
}
plain_outcome!(
    (),
    rmcp::model::ListToolsResult,
    rmcp::model::ListPromptsResult,
    rmcp::model::ListResourcesResult,
    rmcp::model::ListResourceTemplatesResult,
    rmcp::model::GetPromptResponse,
    rmcp::model::ReadResourceResponse,
    rmcp::model::CompleteResult
);

/// One downstream request in progress.
pub(super) struct Observation<'a> {
    metrics: &'a Metrics,
    recent: &'a RecentCalls,
    method: &'static str,
    session: u64,
    start: Instant,
    /// The request's span; the call runs inside it.
    pub(super) span: Span,
    upstream: Option<std::sync::Arc<str>>,
    target: Option<String>,
    /// Raw arguments, only when `telemetry.log_arguments` asks for them.
    arguments: Option<String>,
}

impl<'a> Observation<'a> {
    /// Starts the record: span (parented on the client's trace context),
    /// in-flight gauge.
    pub(super) fn begin(
        metrics: &'a Metrics,
        recent: &'a RecentCalls,
        method: &'static str,
        session: u64,
        ctx: &RequestContext<RoleServer>,
    ) -> Observation<'a> {
        let span = tracing::info_span!(
            "mcp.server",
            otel.name = method,
            otel.kind = "server",
            otel.status_code = Empty,
            mcp.method.name = method,
            mcp.session.id = session,
            jsonrpc.request.id = %ctx.id,
            gen_ai.tool.name = Empty,
            gen_ai.operation.name = Empty,
            mcp.upstream = Empty,
            portcullis.call.id = Empty,
            portcullis.call.round = Empty,
            error.type = Empty,
            trace_id = Empty,
        );
        let (traceparent, tracestate) = client_trace_context(ctx);
        trace::adopt_parent(&span, traceparent.as_deref(), tracestate.as_deref());
        metrics.in_flight.with_label_values(&[method]).inc();
        Observation {
            metrics,
            recent,
            method,
            session,
            start: Instant::now(),
            span,
            upstream: None,
            target: None,
            arguments: None,
        }
    }

    /// Records raw arguments on the access line; callers check the
    /// `telemetry.log_arguments` opt-in first.
    pub(super) fn arguments(&mut self, arguments: Option<&rmcp::model::JsonObject>) {
        self.arguments = arguments.map(|a| serde_json::Value::Object(a.clone()).to_string());
    }

    /// Notes where the request was routed.
    /// Names the logical call this request is a round of, so the rounds
    /// of a multi round-trip call can be found together.
    pub(super) fn linked(&self, link: &crate::telemetry::audit::CallLink) {
        self.span
            .record("portcullis.call.id", link.call_id.as_str());
        self.span.record("portcullis.call.round", link.round);
    }

    pub(super) fn routed(&mut self, target: &Target) {
        self.span.record("mcp.upstream", &*target.upstream);
        if self.method == "tools/call" {
            self.span
                .record("gen_ai.tool.name", target.original.as_str());
            self.span.record("gen_ai.operation.name", "execute_tool");
            self.span.record(
                "otel.name",
                format!("tools/call {}", target.original).as_str(),
            );
        }
        self.upstream = Some(target.upstream.clone());
        self.target = Some(target.original.clone());
    }

    /// Finishes the record and hands the result back.
    pub(super) fn finish<T: Outcome>(self, result: Result<T, ErrorData>) -> Result<T, ErrorData> {
        let outcome = match &result {
            Ok(r) if r.failed() => "tool_error",
            Ok(_) => "ok",
            Err(e) => error_outcome(e),
        };
        let elapsed = self.start.elapsed();
        let upstream = self.upstream.as_deref().unwrap_or(NONE);
        // A tool label only for names the registry resolved; anything a
        // client typed that did not resolve is `unknown`.
        let tool = match (&self.target, self.method) {
            (Some(t), "tools/call") => t.as_str(),
            (None, "tools/call") => UNKNOWN,
            _ => NONE,
        };
        let labels = [self.method, upstream, tool, outcome];
        self.metrics
            .server_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
        self.metrics
            .server_requests
            .with_label_values(&labels)
            .inc();
        self.metrics
            .in_flight
            .with_label_values(&[self.method])
            .dec();
        if outcome != "ok" {
            self.span.record("error.type", outcome);
            self.span.record("otel.status_code", "ERROR");
        }
        // The access line: inside the span, so it carries the trace id.
        self.span.in_scope(|| {
            tracing::info!(
                target: "portcullis::access",
                method = self.method,
                upstream,
                target = self.target.as_deref(),
                outcome,
                arguments = self.arguments.as_deref(),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                session = self.session,
            )
        });
        self.recent.push(RecentCall {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            method: self.method,
            upstream: self.upstream.map(|u| u.to_string()),
            target: self.target,
            outcome,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            session: self.session,
        });
        result
    }
}

/// Bounded outcome label for a JSON-RPC error.
fn error_outcome(e: &ErrorData) -> &'static str {
    match e.code {
        REQUEST_TIMEOUT => "timeout",
        UPSTREAM_UNAVAILABLE => "unavailable",
        REQUEST_CANCELLED => "cancelled",
        RATE_LIMITED => "rate_limited",
        ErrorCode::INVALID_PARAMS => "invalid_params",
        ErrorCode::METHOD_NOT_FOUND => "method_not_found",
        _ => "error",
    }
}

/// The client's trace context: `_meta.traceparent` wins over the HTTP header.
fn client_trace_context(ctx: &RequestContext<RoleServer>) -> (Option<String>, Option<String>) {
    let meta = &ctx.meta;
    if let Some(tp) = meta.get_traceparent() {
        return (
            Some(tp.to_owned()),
            meta.get_tracestate().map(str::to_owned),
        );
    }
    let headers = ctx
        .extensions
        .get::<http::request::Parts>()
        .map(|p| &p.headers);
    let header = |name| {
        headers
            .and_then(|h| h.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    (header("traceparent"), header("tracestate"))
}
