//! Prometheus metrics: every family is created once, at start-up, with
//! bounded label sets; the per-call path only looks up and bumps handles.
//!
//! Names follow Prometheus conventions (base units in the name, `_total`
//! on counters) and, where they name the thing, the OpenTelemetry MCP and
//! GenAI semantic conventions (`mcp.server.operation.duration` becomes
//! `mcp_server_operation_duration_seconds`, attribute `mcp.method.name`
//! becomes label `mcp_method_name`, `gen_ai.tool.name` becomes
//! `gen_ai_tool_name`).

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Label value for anything outside the bounded set (a tool not in the
/// registry, a method the gateway does not know).
pub const UNKNOWN: &str = "unknown";
/// Label value where no upstream was involved.
pub const NONE: &str = "none";

/// Latency buckets for MCP operations: from 100 µs (the gateway's own
/// overhead) to minutes (long-running tools).
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Downstream MCP requests by method, upstream, tool and outcome.
    pub server_duration: HistogramVec,
    /// Same labels, as a counter.
    pub server_requests: IntCounterVec,
    /// Downstream requests in progress, by method.
    pub in_flight: IntGaugeVec,
    /// Requests the gateway sent upstream, by method, upstream and outcome.
    pub client_duration: HistogramVec,
    /// 1 while an upstream's shared connection is up, else 0.
    pub upstream_up: IntGaugeVec,
    /// Reconnections after a connection ended or failed.
    pub upstream_restarts: IntCounterVec,
    /// Liveness probes of upstream connections, by outcome (`ok`, `failed`).
    pub upstream_probes: IntCounterVec,
    /// Catalogue lookups by list and result (hit or miss).
    pub list_cache: IntCounterVec,
    /// Downstream sessions open and awake.
    pub sessions_open: IntGauge,
    /// Downstream sessions hibernated: no worker, only their `initialize`
    /// parameters kept.
    pub sessions_hibernated: IntGauge,
    /// Hibernated sessions woken by a request.
    pub session_restores: IntCounter,
    /// List changes written to hibernated sessions' GET streams.
    pub session_relayed: IntCounter,
    /// `subscriptions/listen` streams currently open downstream.
    pub listen_streams: IntGauge,
    /// `notifications/tasks` sent to listeners, by upstream and the task's
    /// status.
    pub task_notifications: IntCounterVec,
    /// Policy decisions by action and rule.
    pub policy_decisions: IntCounterVec,
    /// Further rounds of multi round-trip calls, by how the input was
    /// carried: `parked` (a legacy upstream's request answered by a
    /// 2026-07-28 client's retry), `upstream` (a 2026-07-28 upstream's own
    /// round, retried by a 2026-07-28 client), `legacy_client` (a
    /// 2026-07-28 upstream's round answered by a legacy client).
    pub input_rounds: IntCounterVec,
    /// Guardrail detector hits by detector type.
    pub guardrail_hits: IntCounterVec,
    /// Policy reloads by outcome (`success` or `failure`).
    pub policy_reloads: IntCounterVec,
    /// Rules in the policy in force.
    pub policy_rules: IntGauge,
    /// Calls refused by a rate or concurrency limit, by limit id.
    pub ratelimit_refusals: IntCounterVec,
    /// Shared rate-limit backend (Redis) failures; each is then admitted or
    /// refused as `ratelimit.redis.on_error` says.
    pub ratelimit_backend_errors: IntCounter,
    /// Calls holding a concurrency-limit slot, by limit id.
    pub ratelimit_in_flight: IntGaugeVec,
    /// Server-to-client requests routed back to clients, by method and outcome.
    pub client_requests_routed: IntCounterVec,
    /// Upstream log lines, by where they were routed: `call` (the client of
    /// the call or 2025 task they belong to), `connection` (every session
    /// at its level) or `withheld` (of a call, but of one that has ended,
    /// or of which one the transport cannot say while several sessions'
    /// calls are in flight).
    pub upstream_log_lines: IntCounterVec,
    /// Model routing (`/v1/*` and sampling served by the router).
    pub llm: LlmMetrics,
}

/// A metric could not be registered (a duplicate or invalid name: a bug).
#[derive(Debug, thiserror::Error)]
#[error("metrics registration failed: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Registers `metric` and hands it back.
fn registered<M>(registry: &Registry, metric: M) -> Result<M, MetricsError>
where
    M: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, MetricsError> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
                    labels,
                )?;
                registered(&registry, h)
            };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
                registered(
                    &registry,
                    IntCounterVec::new(Opts::new(name, help), labels)?,
                )
            };
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, MetricsError> {
                registered(&registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
            };
        let call_labels = &["mcp_method_name", "upstream", "gen_ai_tool_name", "outcome"];
        let sessions_open = registered(
            &registry,
            IntGauge::new(
                "portcullis_sessions_open",
                "Downstream MCP sessions open and awake (hibernated ones: portcullis_sessions_hibernated).",
            )?,
        )?;
        let sessions_hibernated = registered(
            &registry,
            IntGauge::new(
                "portcullis_sessions_hibernated",
                "Downstream MCP sessions hibernated (no worker; rebuilt on their next request).",
            )?,
        )?;
        let session_restores = registered(
            &registry,
            IntCounter::new(
                "portcullis_session_restores_total",
                "Hibernated downstream sessions rebuilt for a request.",
            )?,
        )?;
        let session_relayed = registered(
            &registry,
            IntCounter::new(
                "portcullis_session_relayed_notifications_total",
                "List changes written to hibernated sessions' GET streams.",
            )?,
        )?;
        let listen_streams = registered(
            &registry,
            IntGauge::new(
                "portcullis_listen_streams_open",
                "Downstream subscriptions/listen streams currently open.",
            )?,
        )?;
        let ratelimit_backend_errors = registered(
            &registry,
            IntCounter::new(
                "portcullis_ratelimit_backend_errors_total",
                "Rate-limit checks the shared backend (Redis) failed to answer.",
            )?,
        )?;
        let policy_rules = registered(
            &registry,
            IntGauge::new("portcullis_policy_rules", "Rules in the policy in force.")?,
        )?;
        Ok(Metrics {
            server_duration: histogram(
                "mcp_server_operation_duration_seconds",
                "Duration of MCP requests served to downstream clients, gateway overhead included.",
                call_labels,
            )?,
            server_requests: counter(
                "portcullis_mcp_requests_total",
                "MCP requests served to downstream clients.",
                call_labels,
            )?,
            in_flight: gauge(
                "portcullis_mcp_requests_in_flight",
                "MCP requests from downstream clients in progress.",
                &["mcp_method_name"],
            )?,
            client_duration: histogram(
                "mcp_client_operation_duration_seconds",
                "Duration of MCP requests the gateway sent to upstream servers.",
                &["mcp_method_name", "upstream", "outcome"],
            )?,
            upstream_up: gauge("portcullis_upstream_up", "1 while the upstream is connected.", &["upstream"])?,
            upstream_restarts: counter(
                "portcullis_upstream_restarts_total",
                "Upstream reconnections after a connection ended or failed.",
                &["upstream"],
            )?,
            upstream_probes: counter(
                "portcullis_upstream_probes_total",
                "Liveness probes of upstream connections (ping, or server/discover for 2026-07-28), by outcome.",
                &["upstream", "outcome"],
            )?,
            list_cache: counter(
                "portcullis_list_cache_lookups_total",
                "Catalogue list lookups, by list and whether the cache answered.",
                &["list", "result"],
            )?,
            sessions_open,
            sessions_hibernated,
            session_restores,
            session_relayed,
            listen_streams,
            task_notifications: counter(
                "portcullis_task_notifications_total",
                "notifications/tasks sent on subscriptions/listen streams, by upstream and task status.",
                &["upstream", "status"],
            )?,
            policy_decisions: counter(
                "portcullis_policy_decisions_total",
                "Policy decisions, by action and deciding rule.",
                &["action", "rule"],
            )?,
            input_rounds: counter(
                "portcullis_input_rounds_total",
                "Further rounds of multi round-trip calls, by how the input was carried.",
                &["bridge"],
            )?,
            guardrail_hits: counter(
                "portcullis_guardrail_detections_total",
                "Content guardrail detections, by detector type.",
                &["detector_type"],
            )?,
            policy_reloads: counter(
                "portcullis_policy_reloads_total",
                "Policy reloads, by outcome; a failed reload keeps the previous policy.",
                &["outcome"],
            )?,
            policy_rules,
            ratelimit_refusals: counter(
                "portcullis_ratelimit_refusals_total",
                "Calls refused by a rate or concurrency limit.",
                &["limit"],
            )?,
            ratelimit_backend_errors,
            ratelimit_in_flight: gauge(
                "portcullis_ratelimit_in_flight",
                "Calls holding a slot of a concurrency limit.",
                &["limit"],
            )?,
            client_requests_routed: counter(
                "portcullis_server_to_client_requests_total",
                "Requests from upstreams (elicitation, sampling, roots) routed to downstream clients.",
                &["mcp_method_name", "outcome"],
            )?,
            upstream_log_lines: counter(
                "portcullis_upstream_log_lines_total",
                "Log lines from upstreams, by where they were routed (call, connection, withheld).",
                &["upstream", "route"],
            )?,
            llm: LlmMetrics::new(&registry)?,
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// (calls, errors) per upstream, summed from the request counter; for
    /// the admin view, not the hot path.
    pub fn calls_by_upstream(&self) -> std::collections::HashMap<String, (u64, u64)> {
        let mut out: std::collections::HashMap<String, (u64, u64)> =
            std::collections::HashMap::new();
        for family in self.registry.gather() {
            if family.name() != "portcullis_mcp_requests_total" {
                continue;
            }
            for m in family.get_metric() {
                let label = |n: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == n)
                        .map(|l| l.value().to_owned())
                };
                let (Some(upstream), Some(outcome)) = (label("upstream"), label("outcome")) else {
                    continue;
                };
                let count = m.get_counter().value() as u64;
                let entry = out.entry(upstream).or_default();
                entry.0 += count;
                if outcome != "ok" {
                    entry.1 += count;
                }
            }
        }
        out
    }

    /// Pre-creates the per-upstream series, so dashboards see every upstream
    /// (at 0) from the first scrape.
    pub fn register_upstream(&self, upstream: &str) {
        self.upstream_up.with_label_values(&[upstream]).set(0);
        self.upstream_restarts.with_label_values(&[upstream]);
    }
}

/// Bounded label value for an MCP method name.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "completion/complete",
        "logging/setLevel",
        "server/discover",
        "subscriptions/listen",
        "tasks/get",
        "tasks/update",
        "tasks/cancel",
        "tasks/result",
        "tasks/list",
        "elicitation/create",
        "sampling/createMessage",
        "roots/list",
    ];
    KNOWN
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or(UNKNOWN)
}

/// Token counts per request, as the GenAI semantic conventions bucket them.
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// Model request durations (GenAI semantic conventions' buckets).
const GENAI_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Time to first token (GenAI semantic conventions' buckets).
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Distinct identities labelled before the rest share `other`: subjects
/// come from authenticated callers, but a JWT issuer could mint many.
const MAX_IDENTITY_LABELS: usize = 1000;

/// Metrics of the model router. `alias` is a configured model alias,
/// `provider` a configured provider name and `model` the target's model, so
/// every label but `identity` is bounded by the config; `identity` is
/// capped at [`MAX_IDENTITY_LABELS`] values.
pub struct LlmMetrics {
    /// Client requests by alias, serving target and outcome.
    pub requests: IntCounterVec,
    /// Attempts at targets by outcome (ok, rate_limited, server_error, ...).
    pub attempts: IntCounterVec,
    /// Tokens by identity, alias, provider, model and type (input, output, cached).
    pub tokens: IntCounterVec,
    /// Cost in US dollars from the price table.
    pub cost: CounterVec,
    /// `gen_ai.client.token.usage`: tokens per request.
    pub token_usage: HistogramVec,
    /// `gen_ai.client.operation.duration`: whole request, retries included.
    pub duration: HistogramVec,
    /// Time to the provider's first streamed event (or response headers).
    pub time_to_first_token: HistogramVec,
    /// Time spent in the gateway itself: parsing, routing, translating.
    pub overhead: HistogramVec,
    /// 1 while a target's circuit breaker keeps it out.
    pub cooling_down: IntGaugeVec,
    identities: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl LlmMetrics {
    fn new(registry: &Registry) -> Result<LlmMetrics, MetricsError> {
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )?;
            registered(registry, h)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let cost = registered(
            registry,
            CounterVec::new(
                Opts::new(
                    "portcullis_llm_cost_usd_total",
                    "Model cost in US dollars, from the configured prices.",
                ),
                &["identity", "alias", "provider", "model"],
            )?,
        )?;
        let cooling_down = registered(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "portcullis_llm_target_cooling_down",
                    "1 while a target's circuit breaker keeps it out.",
                ),
                &["alias", "provider", "model"],
            )?,
        )?;
        let genai = &[
            "gen_ai_operation_name",
            "gen_ai_provider_name",
            "gen_ai_request_model",
            "gen_ai_response_model",
        ];
        Ok(LlmMetrics {
            requests: counter(
                "portcullis_llm_requests_total",
                "Model requests from clients, by alias, serving target and outcome.",
                &["alias", "provider", "model", "outcome"],
            )?,
            attempts: counter(
                "portcullis_llm_attempts_total",
                "Attempts at model targets (retries and fallbacks included), by outcome.",
                &["alias", "provider", "model", "outcome"],
            )?,
            tokens: counter(
                "portcullis_llm_tokens_total",
                "Model tokens by identity, alias, provider, model and type (input, output, cached).",
                &["identity", "alias", "provider", "model", "type"],
            )?,
            cost,
            token_usage: histogram(
                "gen_ai_client_token_usage",
                "Tokens per model request (input or output).",
                &[genai[0], genai[1], genai[2], genai[3], "gen_ai_token_type"],
                TOKEN_BUCKETS,
            )?,
            duration: histogram(
                "gen_ai_client_operation_duration_seconds",
                "Duration of model requests through the gateway, retries and fallbacks included.",
                &[genai[0], genai[1], genai[2], "outcome"],
                GENAI_DURATION_BUCKETS,
            )?,
            time_to_first_token: histogram(
                "portcullis_llm_time_to_first_token_seconds",
                "Time from sending a request to the provider's first streamed event (or its response headers).",
                &["alias", "provider", "model"],
                TTFT_BUCKETS,
            )?,
            overhead: histogram(
                "portcullis_llm_gateway_overhead_seconds",
                "Time a model request spent in the gateway itself, provider waits and backoff excluded.",
                &[genai[0]],
                DURATION_BUCKETS,
            )?,
            cooling_down,
            identities: Default::default(),
        })
    }

    /// The `identity` label for a subject: itself, or `other` once
    /// [`MAX_IDENTITY_LABELS`] subjects have been seen.
    pub fn identity_label(&self, subject: &str) -> String {
        let mut seen = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(subject) {
            return subject.to_owned();
        }
        if seen.len() < MAX_IDENTITY_LABELS {
            seen.insert(subject.to_owned());
            return subject.to_owned();
        }
        "other".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_families_with_conventional_names() {
        let m = Metrics::new().unwrap();
        m.register_upstream("time");
        m.server_requests
            .with_label_values(&["tools/call", "time", "get_current_time", "ok"])
            .inc();
        m.server_duration
            .with_label_values(&["tools/call", "time", "get_current_time", "ok"])
            .observe(0.001);
        let text = m.render();
        assert!(
            text.contains("portcullis_mcp_requests_total{gen_ai_tool_name=\"get_current_time\"")
        );
        assert!(text.contains("portcullis_upstream_up{upstream=\"time\"} 0"));
        assert!(text.contains("# TYPE mcp_server_operation_duration_seconds histogram"));
    }

    #[test]
    fn unknown_methods_collapse_to_one_label() {
        assert_eq!(method_label("tools/call"), "tools/call");
        assert_eq!(method_label("x/attacker-chosen-12345"), UNKNOWN);
    }
}
