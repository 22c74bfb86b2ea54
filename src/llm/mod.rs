//! Model routing: one OpenAI- and Anthropic-compatible API in front of many
//! providers.
//!
//! A request names a model alias; the alias's strategy orders its targets
//! ([`route`]); each target is tried with retries and backoff, then the next
//! ([`Llm::handle`]), skipping targets whose circuit breaker is open. The
//! request is translated into the target provider's format and the answer
//! back into the client's ([`translate`], and [`stream`] for SSE, event by
//! event). Usage is read from every answer, streamed ones included, and
//! accounted per identity, alias, provider and model with its cost.
//!
//! **Invariants:** a client's credentials never reach a provider (provider
//! headers come from config only); once a streamed answer's first byte has
//! gone to the client, a failure is reported as an error event in the
//! stream and never looks like a normal end.

pub mod forward;
pub mod passthrough;
pub mod provider;
pub mod route;
pub mod sampling;
pub mod sse;
pub mod stream;
pub mod translate;
pub mod usage;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::auth::Identity;
use crate::config::{BreakerConfig, Config, PriceConfig, ProviderKind, RetryConfig, Strategy};
use crate::telemetry::Metrics;
use forward::{EventBody, StreamJob};
use passthrough::{AnswerProbe, SameFormat};
use provider::{AttemptError, Provider, Reply};
use route::{Admit, Candidate, Health};
use sse::SseEvent;
use stream::{StreamState, Wire};
pub use usage::Usage;

/// Which API a client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/chat/completions` (OpenAI).
    Chat,
    /// `POST /v1/messages` (Anthropic).
    Messages,
    /// `POST /v1/embeddings` (OpenAI).
    Embeddings,
    /// `POST /v1/messages/count_tokens` (Anthropic).
    CountTokens,
}

impl Api {
    fn wire(self) -> Wire {
        match self {
            Api::Messages | Api::CountTokens => Wire::Anthropic,
            Api::Chat | Api::Embeddings => Wire::OpenAi,
        }
    }

    /// `gen_ai.operation.name`.
    fn operation(self) -> &'static str {
        match self {
            Api::Chat | Api::Messages => "chat",
            Api::Embeddings => "embeddings",
            Api::CountTokens => "count_tokens",
        }
    }
}

/// One client request.
pub struct LlmRequest {
    /// The API called.
    pub api: Api,
    /// The JSON body.
    pub body: Bytes,
    /// `x-portcullis-target`, for the `header` strategy.
    pub target_hint: Option<String>,
    /// The caller.
    pub identity: Arc<Identity>,
    /// The client's W3C `traceparent` and `tracestate`.
    pub traceparent: Option<(String, Option<String>)>,
    /// The client's `anthropic-beta` header, passed to Anthropic providers
    /// (it selects API features, it is not a credential).
    pub anthropic_beta: Option<String>,
}

/// The answer to a client.
pub struct LlmResponse {
    /// HTTP status.
    pub status: u16,
    /// Extra response headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: ResponseBody,
}

/// A whole JSON body or an SSE stream.
pub enum ResponseBody {
    /// `application/json`.
    Json(Bytes),
    /// `text/event-stream`: encoded events, in order.
    Stream(EventBody),
}

/// A request refused before routing (by policy or a token budget).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// HTTP status: 403 for policy, 429 for a limit.
    pub status: u16,
    /// Why, for the client.
    pub message: String,
    /// When a limited caller may try again.
    pub retry_after: Option<Duration>,
}

/// The hook through which policy and the rate limiter take part in model
/// requests: `admit` runs before any provider I/O (may this identity use
/// this alias now? is its token budget spent?), `spend` after each request
/// with the tokens it used (for tokens-per-minute limits; a shared limiter
/// counts in Redis, hence futures). Sampling served by the router passes
/// through both like any other request.
pub trait Admission: Send + Sync {
    /// Decides whether `identity` may call `alias` now.
    fn admit(
        &self,
        identity: Arc<Identity>,
        alias: String,
    ) -> BoxFuture<'static, Result<(), Refusal>>;
    /// Records tokens a finished request used; awaited before the request's
    /// accounting completes, so the next request sees them.
    fn spend(&self, identity: Arc<Identity>, alias: String, usage: Usage)
        -> BoxFuture<'static, ()>;
}

/// One (provider, model) of an alias, with its health.
struct Target {
    provider: Arc<Provider>,
    model: String,
    weight: u32,
    price: Option<PriceConfig>,
    health: Mutex<Health>,
}

impl Target {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A configured alias.
struct Alias {
    name: String,
    strategy: Strategy,
    targets: Vec<Target>,
    retry: RetryConfig,
    breaker: BreakerConfig,
    default_max_tokens: u64,
}

/// The model router.
pub struct Llm {
    aliases: BTreeMap<String, Arc<Alias>>,
    metrics: Arc<Metrics>,
    admission: OnceLock<Arc<dyn Admission>>,
}

/// What one request carries through routing and accounting.
struct Ctx {
    api: Api,
    alias: Arc<Alias>,
    identity: Arc<Identity>,
    identity_label: String,
    body: Value,
    stream: bool,
    include_usage: bool,
    started: Instant,
    /// Time spent waiting on providers and in backoff, for the overhead metric.
    waited: Duration,
    trace: Option<(String, Option<String>)>,
    anthropic_beta: Option<String>,
}

/// A request body on its way to a provider.
enum ProviderBody<'a> {
    /// Translated into the provider's format.
    Translated(Value),
    /// The client's own, in the provider's format already.
    Same(SameFormat<'a>),
}

impl serde::Serialize for ProviderBody<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ProviderBody::Translated(v) => v.serialize(s),
            ProviderBody::Same(same) => same.serialize(s),
        }
    }
}

/// How a served request went, for accounting.
struct Served<'a> {
    target: &'a Target,
    usage: Option<Usage>,
    outcome: &'static str,
}

fn json_response(status: u16, body: &Value) -> LlmResponse {
    bytes_response(status, json_bytes(body))
}

/// `to_vec`, not `to_string`: `Display` writes through `fmt::Write`, a few
/// bytes a call.
fn json_bytes(body: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(body).unwrap_or_default())
}

fn bytes_response(status: u16, body: Bytes) -> LlmResponse {
    LlmResponse {
        status,
        headers: Vec::new(),
        body: ResponseBody::Json(body),
    }
}

fn error_response(wire: Wire, status: u16, message: &str) -> LlmResponse {
    let body = match wire {
        Wire::OpenAi => translate::openai_error(status, message),
        Wire::Anthropic => translate::anthropic_error(status, message),
    };
    json_response(status, &body)
}

impl Llm {
    /// Builds providers and aliases from the config (validated: every
    /// target names a provider).
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Llm {
        let providers: BTreeMap<&str, Arc<Provider>> = config
            .providers
            .iter()
            .map(|(name, p)| (name.as_str(), Arc::new(Provider::new(name, p))))
            .collect();
        let aliases = config
            .models
            .iter()
            .map(|(name, a)| {
                let targets = a
                    .targets
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| {
                        let provider = providers.get(t.provider.as_str())?.clone();
                        metrics
                            .llm
                            .cooling_down
                            .with_label_values(&[
                                name.as_str(),
                                t.provider.as_str(),
                                t.model.as_str(),
                            ])
                            .set(0);
                        Some(Target {
                            provider,
                            model: t.model.clone(),
                            weight: t.weight,
                            price: a.price_of(i, &config.providers),
                            health: Mutex::new(Health::default()),
                        })
                    })
                    .collect();
                let alias = Alias {
                    name: name.clone(),
                    strategy: a.strategy,
                    targets,
                    retry: a.retry.clone(),
                    breaker: a.breaker.clone(),
                    default_max_tokens: a.default_max_tokens,
                };
                (name.clone(), Arc::new(alias))
            })
            .collect();
        Llm {
            aliases,
            metrics,
            admission: OnceLock::new(),
        }
    }

    /// Installs the policy and token-budget hook (once, at start-up).
    pub fn set_admission(&self, admission: Arc<dyn Admission>) {
        let _ = self.admission.set(admission);
    }

    /// True when the config defines model aliases.
    pub fn is_enabled(&self) -> bool {
        !self.aliases.is_empty()
    }

    /// True when `alias` is configured.
    pub fn has_alias(&self, alias: &str) -> bool {
        self.aliases.contains_key(alias)
    }

    /// What choosing among aliases by an MCP client's model preferences
    /// needs to know about `alias` now; `None` if it is not configured.
    pub fn profile(&self, alias: &str) -> Option<sampling::AliasProfile> {
        let a = self.aliases.get(alias)?;
        let cheapest = a
            .targets
            .iter()
            .filter_map(|t| t.price.map(|p| p.input + p.output))
            .min_by(f64::total_cmp);
        let fastest = a
            .targets
            .iter()
            .filter_map(|t| t.health().latency())
            .min_by(f64::total_cmp);
        Some(sampling::AliasProfile {
            name: a.name.clone(),
            models: a.targets.iter().map(|t| t.model.clone()).collect(),
            price: cheapest,
            latency: fastest,
        })
    }

    /// `GET /v1/models`: the aliases, in OpenAI's format or, for Anthropic
    /// clients (which send `anthropic-version`), in Anthropic's.
    pub fn models(&self, anthropic: bool) -> LlmResponse {
        let body = if anthropic {
            let data: Vec<Value> = self
                .aliases
                .keys()
                .map(|a| json!({"type": "model", "id": a, "display_name": a, "created_at": "1970-01-01T00:00:00Z"}))
                .collect();
            json!({"data": data, "has_more": false,
                   "first_id": self.aliases.keys().next(), "last_id": self.aliases.keys().last()})
        } else {
            let data: Vec<Value> = self
                .aliases
                .keys()
                .map(
                    |a| json!({"id": a, "object": "model", "created": 0, "owned_by": "portcullis"}),
                )
                .collect();
            json!({"object": "list", "data": data})
        };
        json_response(200, &body)
    }

    /// Serves one client request.
    pub async fn handle(&self, req: LlmRequest) -> LlmResponse {
        let wire = req.api.wire();
        let mut body: Value = match serde_json::from_slice(&req.body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return error_response(wire, 400, "the request body must be a JSON object"),
        };
        let Some(model) = body.get("model").and_then(Value::as_str).map(str::to_owned) else {
            return error_response(wire, 400, "`model` is required");
        };
        let Some(alias) = self.aliases.get(&model).cloned() else {
            return error_response(
                wire,
                404,
                &format!("model `{model}` is not configured on this gateway; GET /v1/models lists the aliases"),
            );
        };
        if let Some(admission) = self.admission.get() {
            if let Err(r) = admission
                .admit(req.identity.clone(), alias.name.clone())
                .await
            {
                let mut resp = error_response(wire, r.status, &r.message);
                if let Some(after) = r.retry_after {
                    resp.headers
                        .push(("retry-after", after.as_secs().max(1).to_string()));
                }
                return resp;
            }
        }
        if req.api == Api::CountTokens {
            return self.count_tokens(&alias, body, req.anthropic_beta).await;
        }
        let body_hint = take_hint(&mut body);
        let hint = req.target_hint.clone().or(body_hint);
        let stream = req.api != Api::Embeddings && body.get("stream") == Some(&json!(true));
        let include_usage = body.pointer("/stream_options/include_usage") == Some(&json!(true));
        let span = request_span(&req, &alias.name);
        let ctx = Ctx {
            api: req.api,
            identity_label: self.metrics.llm.identity_label(&req.identity.subject),
            identity: req.identity,
            anthropic_beta: req.anthropic_beta,
            alias,
            body,
            stream,
            include_usage,
            started: Instant::now(),
            waited: Duration::ZERO,
            trace: None,
        };
        self.route(ctx, hint.as_deref()).instrument(span).await
    }

    /// `POST /v1/messages/count_tokens`: asked of the first Anthropic
    /// target whose breaker is closed; OpenAI-compatible APIs have no such
    /// endpoint, so without one the count is estimated (about four
    /// characters a token) and marked `x-portcullis-estimate: true`.
    async fn count_tokens(&self, alias: &Alias, body: Value, beta: Option<String>) -> LlmResponse {
        let now = std::time::Instant::now();
        for i in self.plan(alias, None) {
            let t = &alias.targets[i];
            if t.provider.kind != ProviderKind::Anthropic || t.health().is_open(now) {
                continue;
            }
            let Some(fields) = body.as_object() else {
                break;
            };
            let b = SameFormat {
                body: fields,
                model: &t.model,
                include_usage: false,
            };
            match t
                .provider
                .send("messages/count_tokens", &b, false, None, beta.clone())
                .await
            {
                Ok(Reply::Json(answer))
                    if serde_json::from_slice::<Value>(&answer)
                        .is_ok_and(|v| v.get("input_tokens").is_some()) =>
                {
                    return bytes_response(200, answer);
                }
                Ok(_) => {
                    tracing::info!(provider = %t.provider.name, "count_tokens: unexpected answer")
                }
                Err(e) => {
                    tracing::info!(provider = %t.provider.name, error = %e, "count_tokens failed")
                }
            }
        }
        let text: usize = ["system", "messages", "tools"]
            .iter()
            .filter_map(|k| body.get(*k))
            .map(|v| v.to_string().chars().count())
            .sum();
        let mut resp = json_response(200, &json!({"input_tokens": text.div_ceil(4)}));
        resp.headers
            .push(("x-portcullis-estimate", "true".to_owned()));
        resp
    }

    fn plan(&self, alias: &Alias, hint: Option<&str>) -> Vec<usize> {
        let latencies: Vec<Option<f64>> =
            alias.targets.iter().map(|t| t.health().latency()).collect();
        let candidates: Vec<Candidate<'_>> = alias
            .targets
            .iter()
            .zip(latencies)
            .map(|(t, latency)| Candidate {
                provider: &t.provider.name,
                model: &t.model,
                weight: t.weight,
                price: t.price.map(|p| p.input + p.output),
                latency,
            })
            .collect();
        route::order(alias.strategy, &candidates, hint, fastrand::f64())
    }

    /// Tries the alias's targets in the strategy's order.
    async fn route(&self, mut ctx: Ctx, hint: Option<&str>) -> LlmResponse {
        ctx.trace = crate::telemetry::trace::traceparent_of(&tracing::Span::current());
        let alias = ctx.alias.clone();
        let plan = self.plan(&alias, hint);
        let mut last: Option<AttemptError> = None;
        let mut cooling = 0usize;
        for (pos, &i) in plan.iter().enumerate() {
            let target = &alias.targets[i];
            let is_last = pos + 1 == plan.len();
            match self.try_target(&mut ctx, target, is_last).await {
                Ok(resp) => return resp,
                Err(TargetFailure::Cooling) => cooling += 1,
                Err(TargetFailure::Failed(e)) => {
                    if !e.falls_back() {
                        return self.give_up(&ctx, e);
                    }
                    last = Some(e);
                }
            }
        }
        let e = match last {
            Some(e) => e,
            None if cooling > 0 => AttemptError::Status {
                status: 503,
                retry_after: Some(alias.breaker.cooldown),
                message: format!(
                    "every target of `{}` is cooling down after failures",
                    alias.name
                ),
            },
            None => AttemptError::Unsupported(format!("`{}` has no usable target", alias.name)),
        };
        self.give_up(&ctx, e)
    }

    /// Answers the client after every target failed (or one failed in a way
    /// no other target could fix).
    fn give_up(&self, ctx: &Ctx, e: AttemptError) -> LlmResponse {
        // Request errors and rate limits are the client's to act on; a
        // provider's 401 or 404 is the gateway's misconfiguration, and
        // passing it on would blame the client's own key or model name.
        let (status, retry_after) = match &e {
            AttemptError::Status {
                status,
                retry_after,
                ..
            } if matches!(status, 400 | 413 | 422 | 429 | 503) => (*status, *retry_after),
            AttemptError::Unsupported(_) => (400, None),
            AttemptError::Timeout(_) => (504, None),
            _ => (502, None),
        };
        let outcome = if status == 429 {
            "rate_limited"
        } else {
            "error"
        };
        let m = &self.metrics.llm;
        m.requests
            .with_label_values(&[ctx.alias.name.as_str(), "none", "none", outcome])
            .inc();
        m.duration
            .with_label_values(&[
                ctx.api.operation(),
                "none",
                ctx.alias.name.as_str(),
                outcome,
            ])
            .observe(ctx.started.elapsed().as_secs_f64());
        tracing::Span::current().record("portcullis.outcome", outcome);
        tracing::warn!(alias = %ctx.alias.name, error = %e, "model request failed on every target");
        let message = format!("portcullis: model `{}` failed: {e}", ctx.alias.name);
        let mut resp = error_response(ctx.api.wire(), status, &message);
        if let Some(after) = retry_after {
            resp.headers.push((
                "retry-after",
                after.as_secs_f64().ceil().max(1.0).to_string(),
            ));
        }
        resp
    }

    /// Attempts at one target: retries with backoff, honouring the
    /// breaker and `Retry-After`.
    async fn try_target(
        &self,
        ctx: &mut Ctx,
        target: &Target,
        is_last: bool,
    ) -> Result<LlmResponse, TargetFailure> {
        let alias = ctx.alias.clone();
        let labels = [
            alias.name.as_str(),
            target.provider.name.as_str(),
            target.model.as_str(),
        ];
        if ctx.api == Api::Embeddings && target.provider.kind == ProviderKind::Anthropic {
            // Not a failure of the target: it is never asked, and its
            // breaker and any probe it holds are left alone.
            return Err(TargetFailure::Failed(AttemptError::Unsupported(format!(
                "provider `{}` does not serve embeddings",
                target.provider.name
            ))));
        }
        let mut attempt = 0u32;
        loop {
            let admit = target
                .health()
                .admit(std::time::Instant::now(), &alias.breaker);
            match admit {
                Admit::Yes | Admit::Probe => {}
                Admit::Open(_) => {
                    self.metrics
                        .llm
                        .attempts
                        .with_label_values(&[labels[0], labels[1], labels[2], "breaker_open"])
                        .inc();
                    return Err(TargetFailure::Cooling);
                }
                Admit::NotBefore(until) => {
                    let wait = until.saturating_duration_since(std::time::Instant::now());
                    if !is_last || wait > alias.retry.max_retry_after {
                        return Err(TargetFailure::Failed(AttemptError::Status {
                            status: 429,
                            retry_after: Some(wait),
                            message: format!(
                                "`{}` asked to wait {:.1}s",
                                target.provider.name,
                                wait.as_secs_f64()
                            ),
                        }));
                    }
                    tokio::time::sleep(wait).await;
                    ctx.waited += wait;
                    continue;
                }
            }
            let started = Instant::now();
            let result = self.attempt(ctx, target).await;
            let failed = match result {
                Ok(resp) => return Ok(resp),
                Err(e) => e,
            };
            ctx.waited += started.elapsed();
            attempt += 1;
            match self.after_failure(&alias, target, &failed, attempt) {
                Retry::No => return Err(TargetFailure::Failed(failed)),
                // The horizon is checked by `admit` at the top of the loop.
                Retry::AfterRetryAfter => {}
                Retry::After(pause) => {
                    tokio::time::sleep(pause).await;
                    ctx.waited += pause;
                }
            }
        }
    }

    /// Records a failed attempt (metrics, breaker, `Retry-After`) and says
    /// whether and when to try the same target again.
    fn after_failure(
        &self,
        alias: &Alias,
        target: &Target,
        failed: &AttemptError,
        attempt: u32,
    ) -> Retry {
        let (provider, model) = (target.provider.name.as_str(), target.model.as_str());
        self.metrics
            .llm
            .attempts
            .with_label_values(&[alias.name.as_str(), provider, model, failed.label()])
            .inc();
        tracing::info!(provider, model, error = %failed, "model attempt failed");
        if failed.is_target_failure() {
            self.target_failed(alias, target);
        } else {
            target.health().release_probe();
        }
        let retry_after = match failed {
            AttemptError::Status {
                status: 429,
                retry_after: Some(d),
                ..
            } => Some(*d),
            _ => None,
        };
        if let Some(d) = retry_after {
            target.health().rate_limited(std::time::Instant::now() + d);
        }
        if !failed.retryable() || attempt > alias.retry.attempts {
            Retry::No
        } else if retry_after.is_some() {
            Retry::AfterRetryAfter
        } else {
            let backoff = alias.retry.backoff * 2u32.saturating_pow(attempt - 1);
            Retry::After(backoff + backoff.mul_f64(fastrand::f64() * 0.2))
        }
    }

    fn target_failed(&self, alias: &Alias, target: &Target) {
        let opened = target
            .health()
            .failure(std::time::Instant::now(), &alias.breaker);
        if opened {
            tracing::warn!(alias = %alias.name, provider = %target.provider.name, model = %target.model,
                cooldown = ?alias.breaker.cooldown, "target cooled down after failures");
            self.metrics
                .llm
                .cooling_down
                .with_label_values(&[
                    alias.name.as_str(),
                    target.provider.name.as_str(),
                    target.model.as_str(),
                ])
                .set(1);
        }
    }

    fn target_succeeded(&self, alias: &Alias, target: &Target, ttfb: Duration) {
        target.health().success(ttfb);
        let labels = [
            alias.name.as_str(),
            target.provider.name.as_str(),
            target.model.as_str(),
        ];
        self.metrics
            .llm
            .cooling_down
            .with_label_values(&labels)
            .set(0);
        self.metrics
            .llm
            .time_to_first_token
            .with_label_values(&labels)
            .observe(ttfb.as_secs_f64());
        self.metrics
            .llm
            .attempts
            .with_label_values(&[labels[0], labels[1], labels[2], "ok"])
            .inc();
    }

    /// The request body for `target`, translated if its format differs.
    fn provider_body<'a>(
        &self,
        ctx: &'a Ctx,
        target: &'a Target,
    ) -> Result<ProviderBody<'a>, AttemptError> {
        let unsupported = |e: translate::TranslateError| AttemptError::Unsupported(e.to_string());
        // Usage in the final chunk, whether or not the client asked.
        let include_usage = ctx.stream && target.provider.kind == ProviderKind::Openai;
        let mut body = match (ctx.api, target.provider.kind) {
            (Api::Chat, ProviderKind::Anthropic) => {
                translate::chat_to_messages(&ctx.body, &target.model, ctx.alias.default_max_tokens)
                    .map_err(unsupported)?
            }
            (Api::Messages, ProviderKind::Openai) => {
                translate::messages_to_chat(&ctx.body, &target.model).map_err(unsupported)?
            }
            _ => {
                // `handle` let only objects through.
                let Some(body) = ctx.body.as_object() else {
                    return Err(AttemptError::Unsupported(
                        "the request body must be a JSON object".into(),
                    ));
                };
                return Ok(ProviderBody::Same(SameFormat {
                    body,
                    model: &target.model,
                    include_usage,
                }));
            }
        };
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        Ok(ProviderBody::Translated(body))
    }

    /// One attempt: send, and on success answer the client.
    async fn attempt(&self, ctx: &mut Ctx, target: &Target) -> Result<LlmResponse, AttemptError> {
        let body = self.provider_body(ctx, target)?;
        let path = match (ctx.api, target.provider.kind) {
            (Api::Embeddings, _) => "embeddings",
            (_, ProviderKind::Openai) => "chat/completions",
            (_, ProviderKind::Anthropic) => "messages",
        };
        let started = Instant::now();
        let beta = ctx
            .anthropic_beta
            .clone()
            .filter(|_| target.provider.kind == ProviderKind::Anthropic);
        let reply = target
            .provider
            .send(path, &body, ctx.stream, ctx.trace.clone(), beta)
            .await?;
        // It borrows `ctx`, which the answer updates.
        drop(body);
        match reply {
            Reply::Json(answer) => {
                let waited = started.elapsed();
                ctx.waited += waited;
                let (resp, usage) = self.answer_json(ctx, target, answer)?;
                self.target_succeeded(&ctx.alias, target, waited);
                self.clone_handle()
                    .spend(&ctx.identity, &ctx.alias.name, usage);
                Ok(resp)
            }
            Reply::Stream(events) => self.answer_stream(ctx, target, events, started).await,
        }
    }

    fn answer_json(
        &self,
        ctx: &Ctx,
        target: &Target,
        answer: Bytes,
    ) -> Result<(LlmResponse, Option<Usage>), AttemptError> {
        let provider = match target.provider.kind {
            ProviderKind::Openai => Wire::OpenAi,
            ProviderKind::Anthropic => Wire::Anthropic,
        };
        let malformed = |e: serde_json::Error| AttemptError::Malformed(e.to_string());
        let no_choices = || AttemptError::Malformed("no `choices` in the answer".into());
        let no_content = || AttemptError::Malformed("no `content` in the answer".into());
        let client = ctx.api.wire();
        let (usage, out) = if provider == client {
            // Passed on as it came: only what is checked is read.
            let probe = AnswerProbe::read(&answer).map_err(malformed)?;
            let usage = match provider {
                Wire::OpenAi if !probe.choices && !probe.data => return Err(no_choices()),
                Wire::OpenAi => probe.usage.as_ref().and_then(Usage::from_openai),
                Wire::Anthropic if !probe.content => return Err(no_content()),
                Wire::Anthropic => probe.usage.as_ref().map(Usage::from_anthropic),
            };
            (usage, answer)
        } else {
            let value: Value = serde_json::from_slice(&answer).map_err(malformed)?;
            let (usage, out) = match provider {
                Wire::OpenAi => {
                    if value.get("choices").is_none() && value.get("data").is_none() {
                        return Err(no_choices());
                    }
                    let usage = value.get("usage").and_then(Usage::from_openai);
                    (usage, translate::completion_to_message(&value))
                }
                Wire::Anthropic => {
                    if value.get("content").is_none() {
                        return Err(no_content());
                    }
                    let usage = value.get("usage").map(Usage::from_anthropic);
                    (usage, translate::message_to_completion(&value))
                }
            };
            (usage, json_bytes(&out))
        };
        self.account(
            ctx,
            &Served {
                target,
                usage,
                outcome: "ok",
            },
        );
        let mut resp = bytes_response(200, out);
        resp.headers.push((
            "x-portcullis-target",
            format!("{}/{}", target.provider.name, target.model),
        ));
        Ok((resp, usage))
    }

    /// Reads the stream up to its first client event (still able to fall
    /// back), then hands the rest to a task that forwards event by event.
    async fn answer_stream(
        &self,
        ctx: &mut Ctx,
        target: &Target,
        mut events: provider::EventStream,
        started: Instant,
    ) -> Result<LlmResponse, AttemptError> {
        let provider_wire = match target.provider.kind {
            ProviderKind::Openai => Wire::OpenAi,
            ProviderKind::Anthropic => Wire::Anthropic,
        };
        let client_wire = ctx.api.wire();
        let mut state = StreamState::new(client_wire, provider_wire, ctx.include_usage);
        let first_deadline = target.provider.first_byte_deadline(started);
        let first: Vec<SseEvent> = loop {
            let ev = match tokio::time::timeout_at(first_deadline, events.next()).await {
                Err(_) => return Err(AttemptError::Timeout("first byte")),
                Ok(None) => {
                    return Err(AttemptError::Transport(
                        "the stream ended before its first event".into(),
                    ))
                }
                Ok(Some(ev)) => ev?,
            };
            let out = state
                .push(ev)
                .map_err(|e| AttemptError::Malformed(e.to_string()))?;
            if !out.is_empty() {
                break out;
            }
        };
        let ttfb = started.elapsed();
        ctx.waited += ttfb;
        self.target_succeeded(&ctx.alias, target, ttfb);
        self.observe_overhead(ctx);
        let job = StreamJob {
            llm: self.clone_handle(),
            alias: ctx.alias.clone(),
            target_index: ctx
                .alias
                .targets
                .iter()
                .position(|t| std::ptr::eq(t, target))
                .unwrap_or(0),
            identity: ctx.identity.clone(),
            identity_label: ctx.identity_label.clone(),
            api: ctx.api,
            started: ctx.started,
        };
        let body = forward::forward(job, first, events, state);
        Ok(LlmResponse {
            status: 200,
            headers: vec![(
                "x-portcullis-target",
                format!("{}/{}", target.provider.name, target.model),
            )],
            body: ResponseBody::Stream(body),
        })
    }

    fn clone_handle(&self) -> LlmHandle {
        LlmHandle {
            metrics: self.metrics.clone(),
            admission: self.admission.get().cloned(),
        }
    }

    fn observe_overhead(&self, ctx: &Ctx) {
        let overhead = ctx.started.elapsed().saturating_sub(ctx.waited);
        self.metrics
            .llm
            .overhead
            .with_label_values(&[ctx.api.operation()])
            .observe(overhead.as_secs_f64());
    }

    fn account(&self, ctx: &Ctx, served: &Served<'_>) {
        self.observe_overhead(ctx);
        self.clone_handle().account(
            &Accounting {
                alias: &ctx.alias,
                identity_label: &ctx.identity_label,
                api: ctx.api,
                started: ctx.started,
            },
            served,
        );
    }
}

/// Removes the routing hint from the body: it may travel there for clients
/// that cannot set headers, and providers must not see it.
fn take_hint(body: &mut Value) -> Option<String> {
    let hint = body
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .and_then(|m| m.remove("portcullis_target"))
        .and_then(|v| v.as_str().map(str::to_owned));
    let emptied = body
        .get("metadata")
        .and_then(Value::as_object)
        .is_some_and(|m| m.is_empty());
    if emptied {
        if let Some(o) = body.as_object_mut() {
            o.remove("metadata");
        }
    }
    hint
}

/// The request's span, with the GenAI attributes known now (the rest are
/// recorded when the request is accounted), parented on the client's trace.
fn request_span(req: &LlmRequest, alias: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "gen_ai.request",
        otel.name = format!("{} {alias}", req.api.operation()),
        otel.kind = "client",
        gen_ai.operation.name = req.api.operation(),
        gen_ai.request.model = %alias,
        gen_ai.provider.name = tracing::field::Empty,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        portcullis.identity = %req.identity.subject,
        portcullis.outcome = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::trace::adopt_parent(
        &span,
        req.traceparent.as_ref().map(|t| t.0.as_str()),
        req.traceparent.as_ref().and_then(|t| t.1.as_deref()),
    );
    span
}

/// Whether to try the same target again after a failed attempt.
enum Retry {
    /// Move on.
    No,
    /// When the provider's `Retry-After` allows.
    AfterRetryAfter,
    /// After this backoff (exponential, with jitter).
    After(Duration),
}

/// Why a target did not serve the request.
enum TargetFailure {
    /// Its breaker is open.
    Cooling,
    /// Its last attempt failed so.
    Failed(AttemptError),
}

/// What accounting needs after the request handler has returned (a
/// stream ends after it, in [`forward`]).
struct LlmHandle {
    metrics: Arc<Metrics>,
    admission: Option<Arc<dyn Admission>>,
}

struct Accounting<'a> {
    alias: &'a Alias,
    identity_label: &'a str,
    api: Api,
    started: Instant,
}

impl LlmHandle {
    fn account(&self, a: &Accounting<'_>, served: &Served<'_>) {
        let m = &self.metrics.llm;
        let t = served.target;
        let (alias, provider, model) = (
            a.alias.name.as_str(),
            t.provider.name.as_str(),
            t.model.as_str(),
        );
        m.duration
            .with_label_values(&[a.api.operation(), provider, alias, served.outcome])
            .observe(a.started.elapsed().as_secs_f64());
        let span = tracing::Span::current();
        span.record("gen_ai.provider.name", provider);
        span.record("gen_ai.response.model", model);
        span.record("portcullis.outcome", served.outcome);
        if let Some(u) = served.usage {
            self.account_usage(a, t, u);
        }
        // Last, so a reader that sees the request counted sees its tokens.
        m.requests
            .with_label_values(&[alias, provider, model, served.outcome])
            .inc();
    }

    fn account_usage(&self, a: &Accounting<'_>, t: &Target, u: Usage) {
        let m = &self.metrics.llm;
        let (alias, provider, model) = (
            a.alias.name.as_str(),
            t.provider.name.as_str(),
            t.model.as_str(),
        );
        let span = tracing::Span::current();
        span.record("gen_ai.usage.input_tokens", u.input);
        span.record("gen_ai.usage.output_tokens", u.output);
        let id = a.identity_label;
        for (kind, n) in [
            ("input", u.input),
            ("output", u.output),
            ("cached", u.cached),
        ] {
            m.tokens
                .with_label_values(&[id, alias, provider, model, kind])
                .inc_by(n);
        }
        for (kind, n) in [("input", u.input), ("output", u.output)] {
            m.token_usage
                .with_label_values(&[a.api.operation(), provider, alias, model, kind])
                .observe(n as f64);
        }
        if let Some(price) = &t.price {
            m.cost
                .with_label_values(&[id, alias, provider, model])
                .inc_by(u.cost(price));
        }
    }

    /// Tells the admission hook what a request used. A budget whose store
    /// answers at once (the local one) is charged before this returns, so
    /// before the client has its answer; a shared one (a network round
    /// trip) on a task of its own, which neither holds the answer back nor
    /// is cut short when the client leaves.
    fn spend(&self, identity: &Arc<Identity>, alias: &str, usage: Option<Usage>) {
        let (Some(admission), Some(u)) = (&self.admission, usage) else {
            return;
        };
        let mut spend = admission.spend(identity.clone(), alias.to_owned(), u);
        let mut once = std::task::Context::from_waker(std::task::Waker::noop());
        if spend.as_mut().poll(&mut once).is_pending() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(spend);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OverBudget;

    impl Admission for OverBudget {
        fn admit(
            &self,
            identity: Arc<Identity>,
            alias: String,
        ) -> BoxFuture<'static, Result<(), Refusal>> {
            Box::pin(async move {
                Err(Refusal {
                    status: 429,
                    message: format!("{} spent its tokens for {alias}", identity.subject),
                    retry_after: Some(Duration::from_secs(5)),
                })
            })
        }

        fn spend(&self, _: Arc<Identity>, _: String, _: Usage) -> BoxFuture<'static, ()> {
            Box::pin(async {})
        }
    }

    fn llm() -> Llm {
        // Port 9 (discard) is never served here: a request that reached the
        // provider would fail with a connect error, not the refusal.
        let config = Config::parse(
            "providers: { p: { kind: openai, base_url: 'http://127.0.0.1:9/v1' } }\n\
             models: { smart: { targets: [ { provider: p, model: m } ] } }\n",
            std::path::Path::new("t.yaml"),
            &|_| None,
        )
        .unwrap();
        Llm::new(&config, Arc::new(Metrics::new().unwrap()))
    }

    fn request(api: Api, body: Value) -> LlmRequest {
        LlmRequest {
            api,
            body: body.to_string().into(),
            target_hint: None,
            identity: Identity::anonymous(),
            traceparent: None,
            anthropic_beta: None,
        }
    }

    fn body_of(r: &LlmResponse) -> Value {
        match &r.body {
            ResponseBody::Json(b) => serde_json::from_slice(b).unwrap(),
            ResponseBody::Stream(_) => panic!("expected JSON"),
        }
    }

    /// A provider on a loopback port that answers every request with
    /// `answer` (an event stream if it starts with `data:`), keeping each
    /// request body it was sent.
    async fn provider_answering(answer: &'static str) -> (String, Arc<Mutex<Vec<Value>>>) {
        use http_body_util::{BodyExt, Full};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let kept = kept.clone();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            kept.lock().unwrap().push(body);
                            let mut resp = http::Response::new(Full::new(Bytes::from(answer)));
                            let kind = if answer.starts_with("data:") {
                                "text/event-stream"
                            } else {
                                "application/json"
                            };
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static(kind),
                            );
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(sock);
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service),
                );
            }
        });
        (base, seen)
    }

    /// A router whose alias `smart` has one target, model `m` of the OpenAI
    /// provider `p` at `base`.
    fn one_provider(base: &str, metrics: Arc<Metrics>) -> Llm {
        let config = Config::parse(
            &format!(
                "providers: {{ p: {{ kind: openai, base_url: '{base}' }} }}\n\
                 models: {{ smart: {{ targets: [ {{ provider: p, model: m }} ] }} }}\n"
            ),
            std::path::Path::new("t.yaml"),
            &|_| None,
        )
        .unwrap();
        Llm::new(&config, metrics)
    }

    #[tokio::test]
    async fn an_answer_in_the_clients_format_passes_as_the_provider_wrote_it() {
        // Spacing and key order that writing a parsed answer out would change.
        const ANSWER: &str = r#"{"id":"c1",  "choices":[{"message":{"role":"assistant","content":"hi"},"index":0}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let (base, seen) = provider_answering(ANSWER).await;
        let llm = one_provider(&base, Arc::new(Metrics::new().unwrap()));
        let asked = json!({"model": "smart", "messages": [{"role": "user", "content": "hi"}], "temperature": 0});
        let r = llm.handle(request(Api::Chat, asked.clone())).await;
        assert_eq!(r.status, 200);
        let ResponseBody::Json(body) = &r.body else {
            panic!("expected JSON");
        };
        assert_eq!(&body[..], ANSWER.as_bytes());
        // The provider got the client's body with the target's model.
        let mut sent = asked;
        sent["model"] = json!("m");
        assert_eq!(*seen.lock().unwrap(), vec![sent]);
    }

    /// A whole streamed answer, usage included, sent in one write.
    const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"index\":0}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"},\"index\":0}]}\n\n\
        data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n\
        data: [DONE]\n\n";

    async fn streamed(llm: &Llm) -> EventBody {
        let asked = json!({"model": "smart", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let r = llm.handle(request(Api::Chat, asked)).await;
        assert_eq!(r.status, 200);
        match r.body {
            ResponseBody::Stream(body) => body,
            ResponseBody::Json(b) => panic!("expected a stream, got {b:?}"),
        }
    }

    fn requests_counted(m: &Metrics, outcome: &str) -> u64 {
        m.llm
            .requests
            .with_label_values(&["smart", "p", "m", outcome])
            .get()
    }

    #[tokio::test]
    async fn a_stream_is_counted_before_its_end_reaches_the_client_or_as_cancelled_when_it_leaves()
    {
        use futures::StreamExt as _;
        let (base, _) = provider_answering(STREAM).await;
        let metrics = Arc::new(Metrics::new().unwrap());
        let llm = one_provider(&base, metrics.clone());
        let ledger = Arc::new(Ledger::default());
        llm.set_admission(Arc::new(ledger.clone()));
        let spent = || ledger.0.lock().unwrap().clone();

        // Read to the end: counted as served, with its tokens, and charged
        // to the caller's budget by the time the client holds the end
        // marker. The usage-only chunk the gateway
        // asked for is not passed to a client that did not.
        let mut body = streamed(&llm).await;
        let mut got = Vec::new();
        while let Some(event) = body.next().await {
            got.push(String::from_utf8(event.to_vec()).unwrap());
            if got.last().is_some_and(|e| e.contains("[DONE]")) {
                assert_eq!(requests_counted(&metrics, "ok"), 1);
                let tokens = metrics.llm.tokens.with_label_values(&[
                    "anonymous",
                    "smart",
                    "p",
                    "m",
                    "output",
                ]);
                assert_eq!(tokens.get(), 1);
                let usage = Usage {
                    input: 3,
                    output: 1,
                    cached: 0,
                };
                assert_eq!(
                    spent(),
                    vec![("anonymous".to_owned(), "smart".to_owned(), usage)]
                );
            }
        }
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[1].contains("Hello"));
        assert_eq!(got[2], "data: [DONE]\n\n");

        // Left after the first event: the provider's answer had all arrived,
        // but the client did not get it, so the request is not `ok`.
        let mut body = streamed(&llm).await;
        assert!(body.next().await.is_some());
        drop(body);
        assert_eq!(requests_counted(&metrics, "cancelled"), 1);
        assert_eq!(requests_counted(&metrics, "ok"), 1);
        // It never reached the usage chunk: nothing more to charge.
        assert_eq!(spent().len(), 1);
    }

    /// A budget kept elsewhere: the charge is recorded after a wait.
    struct Remote(Arc<Ledger>);

    impl Admission for Remote {
        fn admit(
            &self,
            who: Arc<Identity>,
            alias: String,
        ) -> BoxFuture<'static, Result<(), Refusal>> {
            self.0.admit(who, alias)
        }

        fn spend(&self, who: Arc<Identity>, alias: String, u: Usage) -> BoxFuture<'static, ()> {
            let record = self.0.spend(who, alias, u);
            Box::pin(async move {
                tokio::task::yield_now().await;
                record.await;
            })
        }
    }

    #[tokio::test]
    async fn a_remote_budget_is_charged_even_when_the_client_leaves_while_it_is() {
        use futures::StreamExt as _;
        let (base, _) = provider_answering(STREAM).await;
        let llm = one_provider(&base, Arc::new(Metrics::new().unwrap()));
        let ledger = Arc::new(Ledger::default());
        llm.set_admission(Arc::new(Remote(ledger.clone())));
        let mut body = streamed(&llm).await;
        // The two content events; the provider's whole answer has arrived.
        assert!(body.next().await.is_some());
        assert!(body.next().await.is_some());
        // Asked once more, and gone: the charge must not depend on the
        // client staying for it.
        let _ = futures::poll!(body.next());
        drop(body);
        for _ in 0..100 {
            if !ledger.0.lock().unwrap().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(ledger.0.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn admission_refuses_before_any_provider_io() {
        let llm = llm();
        llm.set_admission(Arc::new(OverBudget));
        let r = llm
            .handle(request(
                Api::Messages,
                json!({"model": "smart", "max_tokens": 5, "messages": []}),
            ))
            .await;
        assert_eq!(r.status, 429);
        assert!(r.headers.contains(&("retry-after", "5".to_owned())));
        let body = body_of(&r);
        assert_eq!(body["type"], "error");
        assert_eq!(
            body["error"]["message"],
            "anonymous spent its tokens for smart"
        );
    }

    #[tokio::test]
    async fn unknown_alias_and_bad_bodies_get_errors_in_the_client_format() {
        let llm = llm();
        let r = llm
            .handle(request(Api::Chat, json!({"model": "nope", "messages": []})))
            .await;
        assert_eq!(r.status, 404);
        assert!(body_of(&r)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nope"));
        let r = llm
            .handle(request(Api::Messages, json!(["not an object"])))
            .await;
        assert_eq!(r.status, 400);
        assert_eq!(body_of(&r)["error"]["type"], "invalid_request_error");
    }

    #[tokio::test]
    async fn a_dead_provider_is_a_502_after_retries() {
        let llm = llm();
        let r = llm
            .handle(request(
                Api::Chat,
                json!({"model": "smart", "messages": []}),
            ))
            .await;
        assert_eq!(r.status, 502);
        assert!(body_of(&r)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot connect"));
    }

    /// Admits everyone and records what was spent.
    #[derive(Default)]
    struct Ledger(Mutex<Vec<(String, String, Usage)>>);

    impl Admission for Arc<Ledger> {
        fn admit(&self, _: Arc<Identity>, _: String) -> BoxFuture<'static, Result<(), Refusal>> {
            Box::pin(async { Ok(()) })
        }

        fn spend(&self, who: Arc<Identity>, alias: String, u: Usage) -> BoxFuture<'static, ()> {
            let ledger = self.clone();
            Box::pin(async move {
                if let Ok(mut l) = ledger.0.lock() {
                    l.push((who.subject.clone(), alias, u));
                }
            })
        }
    }

    /// A one-shot OpenAI-compatible server answering with fixed usage.
    async fn one_completion() -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let mut read = 0;
            // Headers, then the body they announce.
            loop {
                read += sock.read(&mut buf[read..]).await.unwrap();
                let text = String::from_utf8_lossy(&buf[..read]).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if read >= end + 4 + len {
                        break;
                    }
                }
            }
            let body = json!({"id": "c", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
            .to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn admission_is_told_the_tokens_each_request_used() {
        let addr = one_completion().await;
        let config = Config::parse(
            &format!(
                "providers: {{ p: {{ kind: openai, base_url: 'http://{addr}/v1' }} }}\n\
                 models: {{ smart: {{ targets: [ {{ provider: p, model: m }} ] }} }}\n"
            ),
            std::path::Path::new("t.yaml"),
            &|_| None,
        )
        .unwrap();
        let llm = Llm::new(&config, Arc::new(Metrics::new().unwrap()));
        let ledger = Arc::new(Ledger::default());
        llm.set_admission(Arc::new(ledger.clone()));
        let r = llm
            .handle(request(
                Api::Messages,
                json!({"model": "smart", "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}]}),
            ))
            .await;
        assert_eq!(r.status, 200, "{:?}", body_of(&r));
        assert_eq!(body_of(&r)["content"][0]["text"], "hi");
        let spent = ledger.0.lock().unwrap().clone();
        assert_eq!(
            spent,
            [(
                "anonymous".to_owned(),
                "smart".to_owned(),
                Usage {
                    input: 7,
                    output: 3,
                    cached: 0
                }
            )]
        );
    }
}
