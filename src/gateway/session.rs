//! The MCP server handler for one downstream session.

use std::sync::Arc;

use rmcp::model::*;
use rmcp::service::{RequestContext, RoleServer};
use rmcp::ServerHandler;
use serde::de::DeserializeOwned;

use tracing::Instrument;

use super::error::{refused_error, registry_error, unknown, upstream_error};
use super::guardrails::{self, Asker, CallInfo, Guardrails};
use super::mrtr::Round;
use super::observe::Observation;
use super::tasks::extension;
use super::tasks::legacy::Local;
use super::tasks::watch;
use super::{capabilities_of, Gateway, SessionState};
use crate::auth::Identity;
use crate::policy::{Action, Direction, Kind, PolicySet, Subject};
use crate::ratelimit::LimitOverride;
use crate::registry::{self, Endpoint, Target};
use crate::telemetry::audit::CallLink;
use crate::telemetry::trace;
use crate::upstream::{AnswerCheck, Caller};

/// One downstream session's handler. Dropped when the session ends, which
/// releases its per-client upstream connections.
pub struct Session {
    pub(super) gw: Arc<Gateway>,
    pub(super) state: Arc<SessionState>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.gw.close_session(self.state.id);
    }
}

impl Session {
    pub(super) fn new(gw: Arc<Gateway>, state: Arc<SessionState>) -> Session {
        Session { gw, state }
    }

    fn endpoint(&self) -> &Endpoint {
        &self.state.endpoint
    }

    /// Remembers the session's peer the first time it is seen, for
    /// notifications that are not replies (list_changed, logging). Not for
    /// 2026-07-28 requests: their peer is one request's response stream,
    /// which must carry only what that request asked for (change
    /// notifications travel on `subscriptions/listen` instead).
    fn remember(&self, ctx: &RequestContext<RoleServer>) {
        if is_modern(ctx) {
            return;
        }
        if let Ok(mut peer) = self.state.peer.lock() {
            if peer.is_none() {
                *peer = Some(ctx.peer.clone());
            }
        }
    }

    /// Who sent this request: the identity the HTTP layer authenticated
    /// (in the request's extensions), else the session's configured one
    /// (stdio, or auth off).
    pub(super) fn identity(&self, ctx: &RequestContext<RoleServer>) -> Arc<Identity> {
        ctx.extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Arc<Identity>>())
            .cloned()
            .unwrap_or_else(|| self.gw.default_identity.clone())
    }

    /// Rate limits and concurrency caps for a call of `target`; a refused
    /// call never reaches the upstream.
    async fn admit(
        &self,
        identity: &Identity,
        target: &Target,
        overrides: &[LimitOverride],
    ) -> Result<crate::ratelimit::Admission, ErrorData> {
        self.gw
            .limits
            .admit_with(identity, target, overrides)
            .await
            .map_err(refused_error)
    }

    pub(super) fn caller(&self, ctx: &RequestContext<RoleServer>) -> Caller {
        self.remember(ctx);
        Caller {
            peer: ctx.peer.clone(),
            request_id: ctx.id.clone(),
            progress_token: ctx.meta.get_progress_token(),
            capabilities: capabilities_of(ctx),
            session: self.state.id,
            // A 2026-07-28 request carries its own level (none: no log lines).
            log_level: match is_modern(ctx) {
                true => Arc::new(std::sync::Mutex::new(ctx.meta.log_level())),
                false => self.state.log_level.clone(),
            },
            input_bridge: None,
            identity: self.identity(ctx),
            legacy: !is_modern(ctx),
            answers: None,
            closing: self.state.closing.clone(),
        }
    }

    /// [`Session::caller`], with its answers to the upstream screened by
    /// `answers`.
    fn caller_screened(
        &self,
        ctx: &RequestContext<RoleServer>,
        answers: &Option<Arc<AnswerGuard>>,
    ) -> Caller {
        let mut caller = self.caller(ctx);
        caller.answers = answers.clone().map(|g| g as Arc<dyn AnswerCheck>);
        caller
    }

    /// Forwards `request` to the target's upstream and converts the answer.
    async fn forward<T, C: DeserializeOwned>(
        &self,
        target: &Target,
        request: ClientRequest,
        ctx: &RequestContext<RoleServer>,
        pick: fn(ServerResult) -> Result<T, Box<ServerResult>>,
        complete: fn(C) -> T,
    ) -> Result<T, ErrorData> {
        // Bound first: a `?` on the future's `Result` inside the awaiting
        // statement keeps that temporary alive across the await, which
        // doubles this future's size.
        let call = self.send(target, request, self.caller(ctx), ctx.ct.clone())?;
        let result = call.await?;
        convert(target, result, pick, complete)
    }

    /// The upstream call for `request` as an owned future (so it can
    /// outlive the downstream request, for multi-round calls), inside an
    /// `mcp.client` span whose context travels in `_meta`.
    pub(super) fn send(
        &self,
        target: &Target,
        request: ClientRequest,
        caller: Caller,
        ct: tokio_util::sync::CancellationToken,
    ) -> Result<
        impl std::future::Future<Output = Result<ServerResult, ErrorData>> + Send + 'static,
        ErrorData,
    > {
        send_with(&self.gw, target, request, caller, ct)
    }

    /// The policy step before a call is forwarded: decide, guard the
    /// arguments (redacting in place), and ask the human when a rule says
    /// so. Every outcome is audited by [`Guardrails`].
    async fn enforce(
        &self,
        (g, set): (&Guardrails, &PolicySet),
        call: &CallInfo<'_>,
        subject: &Subject<'_>,
        arguments: &mut Option<JsonObject>,
        ctx: &RequestContext<RoleServer>,
        defer_approval: bool,
    ) -> Result<Enforced, ErrorData> {
        let decision = g.decide(set, call, subject, arguments.as_ref());
        if decision.action == Action::Deny {
            return Err(guardrails::denied(
                &decision,
                &format!("`{}`", subject.exposed),
            ));
        }
        if let Some(args) = arguments.take() {
            let mut value = serde_json::Value::Object(args);
            g.guard(set, call, subject, Direction::Arguments, &mut value)?;
            if let serde_json::Value::Object(args) = value {
                *arguments = Some(args);
            }
        }
        let approval = (decision.action == Action::Approve).then(|| {
            let shown = arguments
                .as_ref()
                .map(|a| serde_json::Value::Object(a.clone()).to_string())
                .unwrap_or_else(|| "{}".into());
            Approval {
                rule: decision.rule.clone().unwrap_or_else(|| "default".into()),
                prompt: format!(
                    "{} Approve the call to `{}` on `{}` with arguments {shown}?",
                    decision
                        .message
                        .as_deref()
                        .unwrap_or("This call needs your approval."),
                    subject.name,
                    subject.upstream,
                ),
                can_elicit: capabilities_of(ctx).elicitation.is_some(),
            }
        });
        let limits = decision.limits.iter().filter_map(limit_override).collect();
        let approval = match approval {
            // A 2026-07-28 client is asked in a round of the call itself.
            Some(a) if defer_approval => Some(a),
            Some(a) => {
                a.ask(g, Asker::Peer(&ctx.peer), call, subject).await?;
                None
            }
            None => None,
        };
        Ok(Enforced { limits, approval })
    }

    fn observe(&self, method: &'static str, ctx: &RequestContext<RoleServer>) -> Observation<'_> {
        Observation::begin(
            &self.gw.metrics,
            &self.gw.recent,
            method,
            self.state.id,
            ctx,
        )
    }

    async fn forward_empty(
        &self,
        target: &Target,
        request: ClientRequest,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.forward(
            target,
            request,
            ctx,
            |r| match r {
                ServerResult::EmptyResult(_) => Ok(()),
                other => Err(Box::new(other)),
            },
            |()| (),
        )
        .await
    }

    async fn completion_target(&self, reference: &mut Reference) -> Result<Target, ErrorData> {
        let target = match reference {
            Reference::Prompt(prompt) => {
                let view = self.gw.registry.prompts(self.endpoint()).await;
                let target = view
                    .index
                    .get(&prompt.name)
                    .ok_or_else(|| unknown("prompt", &prompt.name))?
                    .clone();
                prompt.name = target.original.clone();
                target
            }
            Reference::Resource(resource) => {
                let view = self.gw.registry.resources(self.endpoint()).await;
                let target = match view.template_index.get(&resource.uri) {
                    Some(t) => t.clone(),
                    None => view
                        .route(&resource.uri, self.single())
                        .ok_or_else(|| unknown("resource template", &resource.uri))?,
                };
                resource.uri = target.original.clone();
                target
            }
            _ => {
                return Err(ErrorData::invalid_params(
                    "unsupported completion reference",
                    None,
                ))
            }
        };
        Ok(target)
    }

    fn single(&self) -> Option<&Arc<str>> {
        match self.endpoint() {
            Endpoint::Single(u) => Some(u),
            _ => None,
        }
    }

    fn page<T: Clone>(
        &self,
        items: &[T],
        params: Option<PaginatedRequestParams>,
    ) -> Result<(Vec<T>, Option<String>), ErrorData> {
        let cursor = params.and_then(|p| p.cursor);
        registry::page(items, cursor.as_deref(), self.gw.config.http.page_size)
            .map_err(registry_error)
    }

    /// `ttlMs` and `cacheScope` for list results: the gateway's list TTL,
    /// and `private` when policy filters lists by identity (one caller's
    /// list must never be served to another).
    fn cache_hints(&self) -> (Option<u64>, Option<CacheScope>) {
        let ttl = u64::try_from(self.gw.config.http.list_ttl.as_millis()).unwrap_or(u64::MAX);
        let scope = if self.gw.guardrails.is_some() {
            CacheScope::Private
        } else {
            CacheScope::Public
        };
        (Some(ttl), Some(scope))
    }

    /// `items` without those the caller may never use (policy `visible`);
    /// borrowed unchanged when no policy is configured.
    fn visible<'a, T: Clone>(
        &self,
        ctx: &RequestContext<RoleServer>,
        items: &'a [T],
        kind: Kind,
        route: impl Fn(&'a T) -> Option<(&'a Target, Option<&'a ToolAnnotations>)>,
    ) -> std::borrow::Cow<'a, [T]> {
        let Some(g) = &self.gw.guardrails else {
            return std::borrow::Cow::Borrowed(items);
        };
        let set = g.policy();
        let identity = self.identity(ctx);
        std::borrow::Cow::Owned(
            items
                .iter()
                .filter(|item| {
                    let Some((target, annotations)) = route(item) else {
                        return true;
                    };
                    let exposed = match kind {
                        Kind::Resource => target.original.clone(),
                        _ => self.gw.aggregate_name(target),
                    };
                    set.visible(
                        &identity,
                        &Subject {
                            kind,
                            upstream: &target.upstream,
                            name: &target.original,
                            exposed: &exposed,
                            annotations,
                        },
                    )
                })
                .cloned()
                .collect(),
        )
    }

    /// The policy decision for a prompt or resource request (no guards on
    /// arguments beyond the decision; results are guarded by the caller).
    /// The policy step of `prompts/get` and `resources/read`. A retry
    /// (`resuming`) was decided in its first round: it is audited as a
    /// further round of that request. A 2026-07-28 client's approval
    /// question comes back as an [`Ask`], to be the flight's first round;
    /// anyone else is asked here.
    #[allow(clippy::too_many_arguments)]
    async fn authorize(
        &self,
        ctx: &RequestContext<RoleServer>,
        obs: &Observation<'_>,
        method: &'static str,
        kind: Kind,
        target: &Target,
        arguments: &mut Option<JsonObject>,
        resuming: bool,
        link: &mut Option<CallLink>,
    ) -> Result<Authorized, ErrorData> {
        let Some(g) = &self.gw.guardrails else {
            return Ok(Authorized::default());
        };
        let identity = self.identity(ctx);
        let exposed = match kind {
            Kind::Resource => target.original.clone(),
            _ => self.gw.aggregate_name(target),
        };
        let subject = Subject {
            kind,
            upstream: &target.upstream,
            name: &target.original,
            exposed: &exposed,
            annotations: None,
        };
        let modern = is_modern(ctx);
        if !resuming {
            *link = Some(g.mint_call());
        }
        let call = CallInfo {
            identity: &identity,
            session: self.state.id,
            method,
            trace_id: trace::trace_id_of(&obs.span),
            link: link.clone(),
        };
        let set = g.policy();
        let answers = AnswerGuard::new(RoundLog::new(g, &identity, &call, &subject), set.clone());
        if resuming {
            g.record_round(&call, &subject);
            return Ok(Authorized {
                answers,
                ..Authorized::default()
            });
        }
        let enforced = self
            .enforce((g, &set), &call, &subject, arguments, ctx, modern)
            .instrument(tracing::info_span!("policy", otel.name = %format_args!("policy {method}")))
            .await?;
        // A legacy client's further rounds (a 2026-07-28 upstream asking
        // for input) are asked and audited by the gateway.
        let log = (!modern).then(|| RoundLog::new(g, &identity, &call, &subject));
        let ask = enforced.approval.map(|approval| Ask {
            approval,
            guardrails: g.clone(),
            identity: identity.clone(),
            session: self.state.id,
            subject: call_subject(&subject),
            method,
            link: link.as_ref().map(CallLink::next),
        });
        Ok(Authorized { ask, log, answers })
    }

    /// The first half of a `prompts/get` or `resources/read`: opens a 2026
    /// retry's `requestState` (the upstream's own state goes back in
    /// `request_state`; answers for a flight parked here are taken out of
    /// `input_responses`) and runs the policy step.
    #[allow(clippy::too_many_arguments)]
    async fn plan_read(
        &self,
        ctx: &RequestContext<RoleServer>,
        obs: &Observation<'_>,
        (method, kind): (&'static str, Kind),
        target: &Target,
        arguments: &mut Option<JsonObject>,
        request_state: &mut Option<String>,
        input_responses: &mut Option<InputResponses>,
    ) -> Result<ReadPlan, ErrorData> {
        let identity = self.identity(ctx);
        let modern = is_modern(ctx);
        let args_hash = match modern {
            true => arguments_hash(arguments.as_ref()),
            false => String::new(),
        };
        let mut link = None;
        let state = request_state.take().filter(|_| modern);
        let mut resume =
            self.open_state(&identity.subject, state, target, &args_hash, &mut link)?;
        let Authorized { ask, log, answers } = self
            .authorize(
                ctx,
                obs,
                method,
                kind,
                target,
                arguments,
                resume.resuming(),
                &mut link,
            )
            .await?;
        if let Some(l) = &link {
            obs.linked(l);
        }
        let parked = resume.route(request_state, input_responses);
        if let Some(a) = &answers {
            a.screen_all(input_responses.as_mut())?;
        }
        Ok(ReadPlan {
            rounds: modern.then_some((resume, ask, link, args_hash)),
            log,
            input_responses: parked,
            answers,
        })
    }

    /// Runs a `prompts/get` or `resources/read` whose policy step is done:
    /// a 2026-07-28 client's as a round of a flight (see `rounds.rs`),
    /// anyone else's to the upstream, asking the client for what a
    /// 2026-07-28 upstream's `InputRequiredResult` needs.
    #[allow(clippy::too_many_arguments)]
    async fn run_read<T, C: DeserializeOwned>(
        &self,
        ctx: &RequestContext<RoleServer>,
        target: &Target,
        request: ClientRequest,
        plan: ReadPlan,
        pick: fn(ServerResult) -> Result<T, Box<ServerResult>>,
        complete: fn(C) -> T,
        input_required: fn(InputRequiredResult) -> T,
    ) -> Result<T, ErrorData> {
        let ReadPlan {
            rounds,
            log,
            input_responses,
            answers,
        } = plan;
        let Some((resume, ask, link, args_hash)) = rounds else {
            let may_ask = self
                .gw
                .registry
                .upstream(&target.upstream)
                .is_some_and(|u| u.may_answer_input_required());
            let run = LegacyRun {
                gw: self.gw.clone(),
                target: target.clone(),
                caller: self.caller_screened(ctx, &answers),
                retry: may_ask.then(|| request.clone()),
                ct: ctx.ct.clone(),
                local: None,
            };
            let mut log = log;
            let result = run
                .run(request, || {
                    if let Some(log) = log.as_mut() {
                        log.next();
                    }
                })
                .await?;
            return convert(target, result, pick, complete);
        };
        let identity = self.identity(ctx);
        let parked = resume.parked().map(|id| (id, input_responses.as_ref()));
        let round = self
            .modern_round(
                ctx,
                target,
                request,
                parked,
                ask,
                None,
                &identity.subject,
                link,
                args_hash,
                answers,
            )
            .await?;
        match round {
            Round::Done(result) => convert(target, *result, pick, complete),
            Round::InputRequired(r) => Ok(input_required(r)),
        }
    }

    /// The shared upstream whose watches serve a resource subscription, or
    /// `None` where subscriptions belong to the session's own (per-client)
    /// connection.
    fn watchable(&self, target: &Target) -> Option<&Arc<crate::upstream::Upstream>> {
        self.gw
            .registry
            .upstream(&target.upstream)
            .filter(|up| up.config().session == crate::config::SessionMode::Shared)
    }

    /// Whether policy lets the caller see a resource at all.
    fn may_see_resource(&self, ctx: &RequestContext<RoleServer>, target: &Target) -> bool {
        let Some(g) = &self.gw.guardrails else {
            return true;
        };
        g.policy().visible(
            &self.identity(ctx),
            &Subject {
                kind: Kind::Resource,
                upstream: &target.upstream,
                name: &target.original,
                exposed: &target.original,
                annotations: None,
            },
        )
    }

    async fn resource_target(&self, uri: &str) -> Result<Target, ErrorData> {
        let view = self.gw.registry.resources(self.endpoint()).await;
        view.route(uri, self.single()).ok_or_else(|| {
            ErrorData::resource_not_found(
                format!("unknown resource: `{uri}`"),
                Some(serde_json::json!({ "uri": uri })),
            )
        })
    }
}

/// Runs a handler body inside the request's observation: span, metrics,
/// recent-call record, finished explicitly on every path.
///
/// The body is boxed: rmcp spawns one task per request whose future is the
/// union of every handler's, and each session's own task embeds it too, so
/// inline bodies (registry, policy, upstream futures: ~40 KB) were copied on
/// every request and held by every idle session. Boxed, the handler future
/// is a few hundred bytes and the body is one allocation of its real size.
macro_rules! observed {
    ($self:ident, $method:literal, $ctx:ident, |$obs:ident| $body:expr) => {{
        #[allow(unused_mut)] // only handlers that route need to record a target
        let mut $obs = $self.observe($method, &$ctx);
        let span = $obs.span.clone();
        let result = Box::pin(async { $body }.instrument(span)).await;
        $obs.finish(result)
    }};
}

mod legacy_tasks;
mod rounds;

use rounds::{AnswerGuard, Ask, Resume, RoundLog};

impl Session {
    /// `subscriptions/listen`: opens the stream, then follows the watched
    /// resources and list changes until the client cancels it.
    async fn run_listen(&self, cx: rmcp::service::SubscriptionContext) -> Result<(), ErrorData> {
        let ctx = cx.request_context();
        let mut obs = self.observe("subscriptions/listen", ctx);
        let mut uris = std::collections::HashMap::new();
        let mut watches = Vec::new();
        if let Some(wanted) = &cx.accepted().resource_subscriptions {
            let view = self.gw.registry.resources(self.endpoint()).await;
            for exposed in wanted {
                let Some(target) = view.route(exposed, self.single()) else {
                    continue;
                };
                if !self.may_see_resource(ctx, &target) {
                    continue;
                }
                let Some(up) = self.gw.registry.upstream(&target.upstream) else {
                    continue;
                };
                match up.watch(&target.original).await {
                    Ok(w) => watches.push(w),
                    // The stream is open already; an upstream that refuses
                    // the URI just never reports it.
                    Err(e) => {
                        tracing::debug!(uri = %exposed, error = %e, "resource not watched upstream")
                    }
                }
                uris.insert(
                    (target.upstream.clone(), target.original.clone()),
                    exposed.clone(),
                );
            }
        }
        let listener = super::listen::Listener {
            endpoint: self.endpoint().clone(),
            sink: cx.sink().clone(),
            uris,
        };
        let watched = watch::opened(self, ctx, &mut obs, &watch::requested(ctx));
        // Answered with the open stream: the call itself is measured as done.
        let _ = obs.finish(Ok(()));
        let watching = watch::follow_all(self, ctx, watched);
        let _registered = super::listen::register(&self.gw, listener, watches);
        tokio::select! {
            _ = cx.cancelled() => {}
            _ = watching => cx.cancelled().await,
        }
        Ok(())
    }
}

impl ServerHandler for Session {
    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        if let Some(link) = context.extensions.get::<Arc<super::SessionLink>>() {
            link.bind(&self.gw, &self.state);
        }
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    fn get_info(&self) -> ServerConfig {
        let mut capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_resources()
            .enable_resources_list_changed()
            .enable_resources_subscribe()
            .enable_completions()
            .enable_logging()
            .build();
        if extension::offered(&self.gw, self.endpoint()) {
            capabilities
                .extensions
                .get_or_insert_with(Default::default)
                .insert(TASKS_EXTENSION_ID.to_owned(), Default::default());
        }
        let mut info = ServerConfig::new(capabilities);
        info.server_info = Implementation::new("portcullis", env!("CARGO_PKG_VERSION"));
        if let Endpoint::Virtual(name) = self.endpoint() {
            info.instructions = self
                .gw
                .config
                .virtual_servers
                .get(&**name)
                .and_then(|v| v.description.clone());
        }
        info
    }

    /// The tool's definition as this endpoint shows it, so rmcp can check
    /// `Mcp-Param-*` headers against its `x-mcp-header` parameters before
    /// the call is handled (the definition the client listed).
    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.gw.registry.tool_now(self.endpoint(), name)
    }

    async fn list_tools(
        &self,
        params: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        observed!(self, "tools/list", ctx, |obs| {
            self.remember(&ctx);
            let view = self.gw.registry.tools(self.endpoint()).await;
            let visible = self.visible(&ctx, &view.items, Kind::Tool, |t| {
                view.index
                    .get(&*t.name)
                    .map(|target| (target, t.annotations.as_ref()))
            });
            let (tools, next) = self.page(&visible, params)?;
            let mut result = ListToolsResult::with_all_items(tools);
            result.next_cursor = next;
            (result.ttl_ms, result.cache_scope) = self.cache_hints();
            Ok(result)
        })
    }

    async fn call_tool(
        &self,
        mut params: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        observed!(self, "tools/call", ctx, |obs| {
            let view = self.gw.registry.tools(self.endpoint()).await;
            let target = view
                .index
                .get(&*params.name)
                .ok_or_else(|| unknown("tool", &params.name))?
                .clone();
            obs.routed(&target);
            if self.gw.config.telemetry.log_arguments {
                obs.arguments(params.arguments.as_ref());
            }
            let identity = self.identity(&ctx);
            let exposed = self.gw.aggregate_name(&target);
            let annotations = view.item(&params.name).and_then(|t| t.annotations.clone());
            let subject = Subject {
                kind: Kind::Tool,
                upstream: &target.upstream,
                name: &target.original,
                exposed: &exposed,
                annotations: annotations.as_ref(),
            };
            let mut call = CallInfo {
                identity: &identity,
                session: self.state.id,
                method: "tools/call",
                trace_id: trace::trace_id_of(&obs.span),
                link: None,
            };
            let modern = ctx
                .protocol_version()
                .is_some_and(|v| v == ProtocolVersion::V_2026_07_28);
            // A retry carries a requestState the gateway sealed: a call
            // parked here, or an upstream's own round, which must repeat
            // the first round's tool and arguments. Either was decided and
            // admitted in its first round.
            // Only 2026-07-28 rounds are bound to their arguments.
            let args_hash = if modern {
                arguments_hash(params.arguments.as_ref())
            } else {
                String::new()
            };
            let state = params.request_state.take().filter(|_| modern);
            let mut resume = self.open_state(
                &identity.subject,
                state,
                &target,
                &args_hash,
                &mut call.link,
            )?;
            let resuming = resume.resuming();
            let parked = resume.parked();
            let input_responses =
                resume.route(&mut params.request_state, &mut params.input_responses);
            let mut overrides = Vec::new();
            let mut approval = None;
            let policy = match &self.gw.guardrails {
                Some(g) => {
                    let set = g.policy();
                    if resuming {
                        g.record_round(&call, &subject);
                    } else {
                        call.link = Some(g.mint_call());
                        let enforced = self
                            .enforce(
                                (g, &set),
                                &call,
                                &subject,
                                &mut params.arguments,
                                &ctx,
                                modern,
                            )
                            .instrument(tracing::info_span!(
                                "policy",
                                otel.name = "policy tools/call"
                            ))
                            .await?;
                        overrides = enforced.limits;
                        approval = enforced.approval;
                    }
                    Some((g, set))
                }
                None => None,
            };
            // Held until the call completes: it owns the concurrency slots.
            // A resumed multi-round call was admitted in its first round.
            let admission = match resuming {
                true => None,
                false => Some(
                    self.admit(&identity, &target, &overrides)
                        .instrument(tracing::info_span!(
                            "ratelimit",
                            otel.name = "ratelimit tools/call"
                        ))
                        .await?,
                ),
            };
            // What the user answers the upstream's questions during the
            // call is screened as its arguments were.
            let answers = policy.as_ref().and_then(|(g, set)| {
                AnswerGuard::new(RoundLog::new(g, &identity, &call, &subject), set.clone())
            });
            if let Some(a) = &answers {
                a.screen_all(params.input_responses.as_mut())?;
            }
            params.name = target.original.clone().into();
            // Kept for a further round only where one can happen: a legacy
            // client of an upstream that may answer `InputRequiredResult`.
            let may_ask = self
                .gw
                .registry
                .upstream(&target.upstream)
                .is_some_and(|u| u.may_answer_input_required());
            let retry = (!modern && may_ask)
                .then(|| ClientRequest::CallToolRequest(Request::new(params.clone())));
            // A 2026-07-28 client that can take a task, calling a tool a
            // 2025-11-25 upstream runs only as a task: ask for one, and
            // shim it (`tasks/shim.rs`).
            // The upstream's era is checked first: it settles the common
            // case without copying the client's capabilities.
            let shimmed = modern
                && self
                    .gw
                    .registry
                    .upstream(&target.upstream)
                    .is_some_and(|u| u.runs_only_as_2025_task(&target.original))
                && capabilities_of(&ctx).supports_tasks();
            // A 2025 client's task-augmented call keeps its `task` field.
            let request = match ctx.extensions.get::<legacy_tasks::Augmented>() {
                Some(task) => task.request(params),
                None if shimmed => legacy_tasks::Augmented::plain().request(params),
                None => ClientRequest::CallToolRequest(Request::new(params)),
            };
            let link = call.link.clone();
            if let Some(l) = &link {
                obs.linked(l);
            }
            let local = ctx.extensions.get::<legacy_tasks::LocalTask>().cloned();
            // A 2025 client's task that the upstream cannot hold: the
            // gateway answers with a task of its own and runs the call on.
            if let Some(task) = local.as_ref().filter(|t| t.runs_here()) {
                let local = task.local();
                let run = LegacyRun {
                    gw: self.gw.clone(),
                    target: target.clone(),
                    // A task outlives the session that made it.
                    caller: self.caller_screened(&ctx, &answers).detached(),
                    retry,
                    ct: local.token(),
                    local: Some(local.clone()),
                };
                let mut audit =
                    policy.map(|(g, set)| (RoundLog::new(g, &identity, &call, &subject), set));
                let running = local.clone();
                tokio::spawn(
                    async move {
                        // The call keeps its concurrency slots until it ends.
                        let _admission = admission;
                        let outcome = async {
                            let result = run
                                .run(request, || {
                                    if let Some((log, _)) = audit.as_mut() {
                                        log.next();
                                    }
                                })
                                .await?;
                            let response =
                                convert(&run.target, result, pick_call, complete_response)?;
                            let CallToolResponse::Complete(result) = response else {
                                return Err(ErrorData::internal_error(
                                    "the upstream answered with neither a result nor an error",
                                    None,
                                ));
                            };
                            let result = match &audit {
                                Some((log, set)) => guard_result(
                                    &log.guardrails,
                                    set,
                                    &log.call(),
                                    &log.subject.subject(),
                                    result,
                                )?,
                                None => result,
                            };
                            legacy_tasks::result_json(result)
                        }
                        .await;
                        running.finish(outcome);
                    }
                    // Its upstream rounds stay in the creating call's trace.
                    .in_current_span(),
                );
                return Ok(CallToolResponse::Task(extension::issue(
                    &self.gw,
                    &identity.subject,
                    &target,
                    &call,
                    local.created(legacy_tasks::LOCAL_ID),
                )?));
            }
            let response = if modern {
                let ask = match (approval, &self.gw.guardrails) {
                    (Some(approval), Some(g)) => Some(Ask {
                        approval,
                        guardrails: g.clone(),
                        identity: identity.clone(),
                        session: self.state.id,
                        subject: call_subject(&subject),
                        method: "tools/call",
                        link: link.as_ref().map(CallLink::next),
                    }),
                    _ => None,
                };
                let round = self
                    .modern_round(
                        &ctx,
                        &target,
                        request,
                        parked.map(|id| (id, input_responses.as_ref())),
                        ask,
                        admission,
                        &identity.subject,
                        link,
                        args_hash,
                        answers.clone(),
                    )
                    .await?;
                match round {
                    Round::Done(result) => convert(&target, *result, pick_call, complete_response)?,
                    Round::InputRequired(r) => return Ok(CallToolResponse::InputRequired(r)),
                }
            } else {
                let run = LegacyRun {
                    gw: self.gw.clone(),
                    target: target.clone(),
                    caller: self.caller_screened(&ctx, &answers),
                    retry,
                    ct: ctx.ct.clone(),
                    local: None,
                };
                let result = run
                    .run(request, || {
                        if let (Some(g), Some(l)) = (&self.gw.guardrails, call.link.as_mut()) {
                            *l = l.next();
                            g.record_round(&call, &subject);
                        }
                    })
                    .await?;
                convert(&target, result, pick_call, complete_response)?
            };
            let response = match (policy, response) {
                (Some((g, set)), CallToolResponse::Complete(result)) => {
                    CallToolResponse::Complete(guard_result(g, &set, &call, &subject, result)?)
                }
                (_, response) => response,
            };
            match (local, response) {
                // A 2025 upstream answered a task-augmented call plainly: the
                // client gets a task that has already completed.
                (Some(task), CallToolResponse::Complete(result)) => {
                    let local = task.local();
                    local.finish(legacy_tasks::result_json(result));
                    Ok(CallToolResponse::Task(extension::issue(
                        &self.gw,
                        &identity.subject,
                        &target,
                        &call,
                        local.created(legacy_tasks::LOCAL_ID),
                    )?))
                }
                // The client gets the task under an id of the gateway's.
                (_, CallToolResponse::Task(created)) => {
                    let upstream_id = created.task.task_id.clone();
                    let issued =
                        extension::issue(&self.gw, &identity.subject, &target, &call, created)?;
                    if shimmed {
                        let client_id = &issued.task.task_id;
                        self.hold_shimmed(
                            &ctx,
                            &target,
                            call.link.clone(),
                            &upstream_id,
                            client_id,
                            &answers,
                        );
                    }
                    Ok(CallToolResponse::Task(issued))
                }
                (_, response) => Ok(response),
            }
        })
    }

    async fn get_task(
        &self,
        params: GetTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        observed!(self, "tasks/get", ctx, |obs| {
            extension::get(self, params, &ctx, &mut obs).await
        })
    }

    async fn update_task(
        &self,
        params: UpdateTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        observed!(self, "tasks/update", ctx, |obs| {
            extension::update(self, params, &ctx, &mut obs).await
        })
    }

    async fn cancel_task(
        &self,
        params: CancelTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        observed!(self, "tasks/cancel", ctx, |obs| {
            extension::cancel(self, params, &ctx, &mut obs).await
        })
    }

    async fn list_prompts(
        &self,
        params: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        observed!(self, "prompts/list", ctx, |obs| {
            self.remember(&ctx);
            let view = self.gw.registry.prompts(self.endpoint()).await;
            let visible = self.visible(&ctx, &view.items, Kind::Prompt, |p| {
                view.index.get(&p.name).map(|target| (target, None))
            });
            let (prompts, next) = self.page(&visible, params)?;
            let mut result = ListPromptsResult::with_all_items(prompts);
            result.next_cursor = next;
            (result.ttl_ms, result.cache_scope) = self.cache_hints();
            Ok(result)
        })
    }

    async fn get_prompt(
        &self,
        mut params: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        observed!(self, "prompts/get", ctx, |obs| {
            let view = self.gw.registry.prompts(self.endpoint()).await;
            let target = view
                .index
                .get(&params.name)
                .ok_or_else(|| unknown("prompt", &params.name))?
                .clone();
            obs.routed(&target);
            let plan = self
                .plan_read(
                    &ctx,
                    &obs,
                    ("prompts/get", Kind::Prompt),
                    &target,
                    &mut params.arguments,
                    &mut params.request_state,
                    &mut params.input_responses,
                )
                .await?;
            params.name = target.original.clone();
            let request = ClientRequest::GetPromptRequest(Request::new(params));
            self.run_read(
                &ctx,
                &target,
                request,
                plan,
                pick_prompt,
                GetPromptResponse::Complete,
                GetPromptResponse::InputRequired,
            )
            .await
        })
    }

    async fn list_resources(
        &self,
        params: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        observed!(self, "resources/list", ctx, |obs| {
            self.remember(&ctx);
            let view = self.gw.registry.resources(self.endpoint()).await;
            let visible = self.visible(&ctx, &view.resources, Kind::Resource, |r| {
                view.uris.get(&r.uri).map(|target| (target, None))
            });
            let (resources, next) = self.page(&visible, params)?;
            let mut result = ListResourcesResult::with_all_items(resources);
            result.next_cursor = next;
            (result.ttl_ms, result.cache_scope) = self.cache_hints();
            Ok(result)
        })
    }

    async fn list_resource_templates(
        &self,
        params: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        observed!(self, "resources/templates/list", ctx, |obs| {
            self.remember(&ctx);
            let view = self.gw.registry.resources(self.endpoint()).await;
            let (templates, next) = self.page(&view.templates, params)?;
            let mut result = ListResourceTemplatesResult::with_all_items(templates);
            result.next_cursor = next;
            (result.ttl_ms, result.cache_scope) = self.cache_hints();
            Ok(result)
        })
    }

    async fn read_resource(
        &self,
        mut params: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        observed!(self, "resources/read", ctx, |obs| {
            let exposed = params.uri.clone();
            let target = self.resource_target(&params.uri).await?;
            obs.routed(&target);
            let plan = self
                .plan_read(
                    &ctx,
                    &obs,
                    ("resources/read", Kind::Resource),
                    &target,
                    &mut None,
                    &mut params.request_state,
                    &mut params.input_responses,
                )
                .await?;
            params.uri = target.original.clone();
            let request = ClientRequest::ReadResourceRequest(Request::new(params));
            let mut response = self
                .run_read(
                    &ctx,
                    &target,
                    request,
                    plan,
                    pick_resource,
                    ReadResourceResponse::Complete,
                    ReadResourceResponse::InputRequired,
                )
                .await?;
            // Contents name the URI the upstream knows; show the one the client asked for.
            if let ReadResourceResponse::Complete(result) = &mut response {
                if exposed != target.original {
                    for content in &mut result.contents {
                        rename_content_uri(content, &target.original, &exposed);
                    }
                }
            }
            Ok(response)
        })
    }

    async fn subscribe(
        &self,
        mut params: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        observed!(self, "resources/subscribe", ctx, |obs| {
            self.remember(&ctx);
            let exposed = params.uri.clone();
            let target = self.resource_target(&params.uri).await?;
            obs.routed(&target);
            let watch = match self.watchable(&target) {
                // A shared connection serves many sessions: one upstream
                // subscription per URI, counted, in the upstream's era.
                Some(up) => Some(up.watch(&target.original).await.map_err(upstream_error)?),
                None => {
                    params.uri = target.original.clone();
                    let request = ClientRequest::SubscribeRequest(Request::new(params));
                    self.forward_empty(&target, request, &ctx).await?;
                    None
                }
            };
            if let Ok(mut subs) = self.state.subscriptions.lock() {
                subs.insert(exposed, watch);
            }
            Ok(())
        })
    }

    async fn unsubscribe(
        &self,
        mut params: UnsubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        observed!(self, "resources/unsubscribe", ctx, |obs| {
            let removed = self
                .state
                .subscriptions
                .lock()
                .ok()
                .and_then(|mut subs| subs.remove(&params.uri));
            let target = self.resource_target(&params.uri).await?;
            obs.routed(&target);
            // Dropping the watch ends the upstream subscription with the last watcher.
            if let Some(Some(_watch)) = removed {
                return Ok(());
            }
            if self.watchable(&target).is_some() {
                return Ok(());
            }
            params.uri = target.original.clone();
            let request = ClientRequest::UnsubscribeRequest(Request::new(params));
            self.forward_empty(&target, request, &ctx).await
        })
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(super::listen::accepted(requested))
    }

    async fn listen(&self, cx: rmcp::service::SubscriptionContext) -> Result<(), ErrorData> {
        // Boxed, as is every rare handler with a large future: rmcp runs each
        // request as a task sized for the largest handler, and copies that
        // task's whole size when it spawns and finishes it.
        Box::pin(self.run_listen(cx)).await
    }

    async fn complete(
        &self,
        mut params: CompleteRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        observed!(self, "completion/complete", ctx, |obs| {
            let target = self.completion_target(&mut params.r#ref).await?;
            obs.routed(&target);
            let request = ClientRequest::CompleteRequest(Request::new(params));
            self.forward(
                &target,
                request,
                &ctx,
                |r| match r {
                    ServerResult::CompleteResult(mut r) => {
                        r.result_type.get_or_insert(ResultType::COMPLETE);
                        Ok(r)
                    }
                    other => Err(Box::new(other)),
                },
                |mut r: CompleteResult| {
                    r.result_type.get_or_insert(ResultType::COMPLETE);
                    r
                },
            )
            .await
        })
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        // The private methods are what a legacy session's 2025 task
        // requests are renamed to; a 2026-07-28 request is never renamed,
        // so for it they do not exist.
        if is_modern(&ctx) {
            return Err(ErrorData::new(
                ErrorCode::METHOD_NOT_FOUND,
                request.method,
                None,
            ));
        }
        Box::pin(self.legacy_task_request(request, ctx)).await
    }

    async fn on_roots_list_changed(&self, _ctx: rmcp::service::NotificationContext<RoleServer>) {
        for upstream in self.gw.registry.upstreams_of(self.endpoint()) {
            if let Some(up) = self.gw.registry.upstream(&upstream) {
                up.roots_changed(self.state.id).await;
            }
        }
    }

    async fn set_level(
        &self,
        params: SetLevelRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        observed!(self, "logging/setLevel", ctx, |obs| {
            self.remember(&ctx);
            if let Ok(mut level) = self.state.log_level.lock() {
                *level = Some(params.level);
            }
            // Upstreams filter at the source; the gateway also filters per
            // session, since a shared upstream serves sessions with other levels.
            for upstream in self.gw.registry.upstreams_of(self.endpoint()) {
                let Some(up) = self.gw.registry.upstream(&upstream) else {
                    continue;
                };
                if up
                    .server_capabilities()
                    .is_some_and(|c| c.logging.is_some())
                {
                    // A shared connection serves every session: ask it for
                    // the most verbose level any of them wants.
                    let level = self
                        .gw
                        .most_verbose_level(&upstream)
                        .unwrap_or(params.level);
                    let request = ClientRequest::SetLevelRequest(Request::new(
                        SetLevelRequestParams::new(level),
                    ));
                    if let Err(e) = up.request(self.caller(&ctx), request, &ctx.ct).await {
                        tracing::debug!(upstream = %upstream, error = %e, "logging/setLevel not applied upstream");
                    }
                }
            }
            Ok(())
        })
    }
}

/// What the policy step decided beyond allow: limits to apply, and an
/// approval still to ask (deferred for 2026-07-28 clients).
struct Enforced {
    limits: Vec<LimitOverride>,
    approval: Option<Approval>,
}

/// How a `prompts/get` or `resources/read` runs, decided before it is
/// sent: for a 2026-07-28 client, what it resumes, the approval question
/// to ask first, its call link and arguments hash; and answers for a flight
/// parked here.
struct ReadPlan {
    rounds: Option<(Resume, Option<Ask>, Option<CallLink>, String)>,
    /// A legacy client's further rounds' audit.
    log: Option<RoundLog>,
    input_responses: Option<InputResponses>,
    answers: Option<Arc<AnswerGuard>>,
}

/// The policy step's outcome for a `prompts/get` or `resources/read`.
#[derive(Default)]
struct Authorized {
    /// The approval question to ask first, if a rule asks one.
    ask: Option<Ask>,
    /// A legacy client's further rounds' audit.
    log: Option<RoundLog>,
    /// The screen for the user's answers to the upstream.
    answers: Option<Arc<AnswerGuard>>,
}

/// A question for the human before a call proceeds.
struct Approval {
    rule: String,
    prompt: String,
    can_elicit: bool,
}

impl Approval {
    /// Asks, records the answer, and refuses unless it was an explicit yes.
    async fn ask(
        self,
        g: &Guardrails,
        asker: Asker<'_>,
        call: &CallInfo<'_>,
        subject: &Subject<'_>,
    ) -> Result<(), ErrorData> {
        let answer =
            guardrails::ask_approval(asker, self.can_elicit, self.prompt, g.approval_timeout())
                .await;
        let approved = matches!(answer, Ok(true));
        g.record_approval(call, subject, &self.rule, approved);
        if approved {
            return Ok(());
        }
        let why = match answer {
            Ok(_) => "the call was not approved".to_owned(),
            Err(why) => why,
        };
        Err(ErrorData::new(
            guardrails::POLICY_DENIED,
            format!("`{}` needs approval: {why}", subject.exposed),
            Some(serde_json::json!({ "rule": self.rule, "action": "approve" })),
        ))
    }
}

/// A [`Subject`] with owned strings, for work that outlives the request.
struct OwnedSubject {
    kind: Kind,
    upstream: String,
    name: String,
    exposed: String,
    annotations: Option<ToolAnnotations>,
}

impl OwnedSubject {
    fn subject(&self) -> Subject<'_> {
        Subject {
            kind: self.kind,
            upstream: &self.upstream,
            name: &self.name,
            exposed: &self.exposed,
            annotations: self.annotations.as_ref(),
        }
    }
}

fn call_subject(s: &Subject<'_>) -> OwnedSubject {
    OwnedSubject {
        kind: s.kind,
        upstream: s.upstream.to_owned(),
        name: s.name.to_owned(),
        exposed: s.exposed.to_owned(),
        annotations: s.annotations.cloned(),
    }
}

/// SHA-256 of a call's arguments as JSON (serde_json keeps map order), to
/// bind a multi-round call's later rounds to its first.
fn arguments_hash(args: Option<&JsonObject>) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(&args).unwrap_or_default();
    Sha256::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a request was made in 2026-07-28 or later.
fn is_modern(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.protocol_version()
        .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28)
}

/// Rounds of input one call may ask a legacy client for.
const MAX_INPUT_ROUNDS: usize = 8;

/// Missing client capability (the 2026-07-28 code, used for both eras).
const MISSING_CLIENT_CAPABILITY: ErrorCode = ErrorCode(-32021);

/// A policy rule's limit as the rate limiter takes it.
fn limit_override(l: &crate::policy::RuleLimit) -> Option<LimitOverride> {
    use crate::config::KeyPart;
    let key = l.key.as_ref().map(|parts| {
        parts
            .iter()
            .map(|p| match p.as_str() {
                "identity" => KeyPart::Identity,
                "tool" => KeyPart::Tool,
                "upstream" => KeyPart::Upstream,
                _ => KeyPart::Global,
            })
            .collect()
    });
    Some(LimitOverride {
        id: l.id.clone(),
        key,
        spec: crate::ratelimit::LimitSpec::new(l.rate, l.per, l.burst)?,
    })
}

/// Reads an upstream's answer as the result type the method expects.
fn convert<T, C: DeserializeOwned>(
    target: &Target,
    result: ServerResult,
    pick: fn(ServerResult) -> Result<T, Box<ServerResult>>,
    complete: fn(C) -> T,
) -> Result<T, ErrorData> {
    match pick(result) {
        Ok(t) => Ok(t),
        // The untagged result enum may have matched another shape; the
        // JSON is what the upstream sent, so read it as the expected type.
        Err(other) => serde_json::to_value(other)
            .and_then(serde_json::from_value::<C>)
            .map(complete)
            .map_err(|e| {
                ErrorData::internal_error(
                    format!(
                        "upstream `{}` sent a malformed result: {e}",
                        target.upstream
                    ),
                    None,
                )
            }),
    }
}

/// The upstream call for `request` as an owned future, inside an
/// `mcp.client` span whose context travels in `_meta` (see
/// [`Session::send`]); needs no session, so a gateway-local task can use it.
fn send_with(
    gw: &Gateway,
    target: &Target,
    request: ClientRequest,
    caller: Caller,
    ct: tokio_util::sync::CancellationToken,
) -> Result<
    impl std::future::Future<Output = Result<ServerResult, ErrorData>> + Send + 'static,
    ErrorData,
> {
    let upstream = gw
        .registry
        .upstream(&target.upstream)
        .ok_or_else(|| unknown("upstream", &target.upstream))?
        .clone();
    let span = tracing::info_span!(
        "mcp.client",
        otel.name = %format_args!("{} {}", request_method(&request), target.original),
        otel.kind = "client",
        mcp.method.name = request_method(&request),
        mcp.upstream = %target.upstream,
    );
    let mut request = request;
    // Hand the trace on: the upstream call span is the upstream's parent.
    if let Some((traceparent, tracestate)) = trace::traceparent_of(&span) {
        let meta = request.get_meta_mut();
        meta.set_traceparent(&traceparent);
        if let Some(state) = tracestate {
            meta.set_tracestate(&state);
        }
    }
    Ok(async move {
        upstream
            .request(caller, request, &ct)
            .instrument(span)
            .await
            .map_err(upstream_error)
    })
}

/// Answers an upstream's input requests by asking the (legacy) client
/// with server-to-client requests, marked as about the client's task
/// `related` when one is given; refuses clearly when the client did not
/// declare the capability a request needs.
async fn answer_inputs(
    caller: &Caller,
    requests: InputRequests,
    related: Option<&str>,
    ct: &tokio_util::sync::CancellationToken,
) -> Result<InputResponses, ErrorData> {
    let caps = &caller.capabilities;
    let mut answers = InputResponses::new();
    for (key, request) in requests {
        let (method, declared, mut request) = match request {
            InputRequest::Elicitation(r) => (
                "elicitation/create",
                caps.elicitation.is_some(),
                ServerRequest::ElicitRequest(r),
            ),
            InputRequest::CreateMessage(r) => (
                "sampling/createMessage",
                caps.sampling.is_some(),
                ServerRequest::CreateMessageRequest(r),
            ),
            InputRequest::ListRoots(r) => (
                "roots/list",
                caps.roots.is_some(),
                ServerRequest::ListRootsRequest(r),
            ),
            _ => {
                return Err(ErrorData::internal_error(
                    "upstream asked for an input of an unknown kind",
                    None,
                ))
            }
        };
        if !declared {
            return Err(ErrorData::new(
                MISSING_CLIENT_CAPABILITY,
                format!("the upstream needs {method}, which this client did not declare"),
                Some(serde_json::json!({ "method": method })),
            ));
        }
        if let Some(task) = related {
            crate::upstream::relate(request.get_meta_mut(), task);
        }
        let mut answer = tokio::select! {
            answer = caller.peer.send_request(request) => answer
                .map_err(|e| ErrorData::internal_error(format!("{method} failed: {e}"), None))?,
            () = ct.cancelled() => return Err(ErrorData::internal_error("the call was cancelled", None)),
        };
        caller.screen(&mut answer)?;
        let value = serde_json::to_value(&answer)
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        answers.insert(key, value);
    }
    Ok(answers)
}

/// A call's upstream answer as the call path reads it.
fn pick_call(r: ServerResult) -> Result<CallToolResponse, Box<ServerResult>> {
    match r {
        ServerResult::CallToolResult(r) => Ok(CallToolResponse::Complete(complete_call(r))),
        ServerResult::InputRequiredResult(r) => Ok(CallToolResponse::InputRequired(r)),
        ServerResult::CreateTaskResult(r) => Ok(CallToolResponse::Task(r)),
        ServerResult::CustomResult(r) => legacy_tasks::created(r),
        other => Err(Box::new(other)),
    }
}

fn pick_prompt(r: ServerResult) -> Result<GetPromptResponse, Box<ServerResult>> {
    match r {
        ServerResult::GetPromptResult(mut r) => {
            r.result_type.get_or_insert(ResultType::COMPLETE);
            Ok(GetPromptResponse::Complete(r))
        }
        ServerResult::InputRequiredResult(r) => Ok(GetPromptResponse::InputRequired(r)),
        other => Err(Box::new(other)),
    }
}

fn pick_resource(r: ServerResult) -> Result<ReadResourceResponse, Box<ServerResult>> {
    match r {
        ServerResult::ReadResourceResult(mut r) => {
            r.result_type.get_or_insert(ResultType::COMPLETE);
            Ok(ReadResourceResponse::Complete(r))
        }
        ServerResult::InputRequiredResult(r) => Ok(ReadResourceResponse::InputRequired(r)),
        other => Err(Box::new(other)),
    }
}

fn complete_response(r: CallToolResult) -> CallToolResponse {
    CallToolResponse::Complete(complete_call(r))
}

/// A legacy client's request to an upstream, with what its further rounds
/// need, owned: a gateway-local task runs it after the client's request
/// has been answered.
struct LegacyRun {
    gw: Arc<Gateway>,
    target: Target,
    caller: Caller,
    /// The first round's request in the form a further round repeats,
    /// kept where an upstream may answer `InputRequiredResult` (a
    /// 2026-07-28 upstream).
    retry: Option<ClientRequest>,
    ct: tokio_util::sync::CancellationToken,
    /// The gateway-local task the call runs as, if any.
    local: Option<Arc<Local>>,
}

impl LegacyRun {
    async fn forward(&self, request: ClientRequest) -> Result<ServerResult, ErrorData> {
        // Bound first, as in `Session::forward`.
        let call = send_with(
            &self.gw,
            &self.target,
            request,
            self.caller.clone(),
            self.ct.clone(),
        )?;
        call.await
    }

    /// Runs the request. A 2026-07-28 upstream asks for input in its
    /// result; a legacy client answers server-to-client requests: ask it,
    /// then run the next round with the answers (`on_round` after each
    /// answer).
    async fn run(
        &self,
        request: ClientRequest,
        mut on_round: impl FnMut(),
    ) -> Result<ServerResult, ErrorData> {
        let mut result = self.forward(request).await?;
        let mut rounds = 0;
        while let (ServerResult::InputRequiredResult(r), Some(first)) = (&result, &self.retry) {
            rounds += 1;
            if rounds > MAX_INPUT_ROUNDS {
                return Err(ErrorData::internal_error(
                    format!(
                        "upstream `{}` asked for input more than {MAX_INPUT_ROUNDS} times",
                        self.target.upstream
                    ),
                    None,
                ));
            }
            let local = self.local.as_deref();
            let mut related = None;
            if let Some(task) = local {
                related = task.issued().await;
                task.set(TaskStatus::InputRequired, None);
            }
            // Boxed: input rounds are rare, and their future is large.
            let answers = Box::pin(answer_inputs(
                &self.caller,
                r.input_requests.clone().unwrap_or_default(),
                related.as_deref(),
                &self.ct,
            ))
            .await?;
            if let Some(task) = local {
                task.set(TaskStatus::Working, None);
            }
            self.gw
                .metrics
                .input_rounds
                .with_label_values(&["legacy_client"])
                .inc();
            on_round();
            let request = with_answers(first, answers, r.request_state.clone())?;
            result = self.forward(request).await?;
        }
        Ok(result)
    }
}

/// `first` again as the next round: carrying the client's answers and the
/// upstream's own `requestState`.
fn with_answers(
    first: &ClientRequest,
    answers: InputResponses,
    state: Option<String>,
) -> Result<ClientRequest, ErrorData> {
    let mut next = first.clone();
    let (responses, request_state) = match &mut next {
        ClientRequest::CallToolRequest(r) => {
            (&mut r.params.input_responses, &mut r.params.request_state)
        }
        ClientRequest::GetPromptRequest(r) => {
            (&mut r.params.input_responses, &mut r.params.request_state)
        }
        ClientRequest::ReadResourceRequest(r) => {
            (&mut r.params.input_responses, &mut r.params.request_state)
        }
        other => {
            return Err(ErrorData::internal_error(
                format!("{} cannot carry input responses", request_method(other)),
                None,
            ))
        }
    };
    *responses = Some(answers);
    *request_state = state;
    Ok(next)
}

/// Runs the result guards over a call's result: redacted in place, or
/// withheld when a blocking guard fires.
fn guard_result(
    g: &Guardrails,
    set: &PolicySet,
    call: &CallInfo<'_>,
    subject: &Subject<'_>,
    result: CallToolResult,
) -> Result<CallToolResult, ErrorData> {
    // Without result guards there is nothing to scan: skip the JSON round trip.
    if !set.guards_on(Direction::Results) {
        return Ok(result);
    }
    let Some(mut value) = guardrails::result_to_value(&result) else {
        return Ok(result);
    };
    g.guard(set, call, subject, Direction::Results, &mut value)?;
    guardrails::value_to_result(value).ok_or_else(|| {
        ErrorData::internal_error("result could not be re-read after redaction", None)
    })
}

/// Legacy upstreams omit `resultType`; 2026-07-28 clients require it. rmcp
/// strips it again for legacy clients, so setting it is always right.
fn complete_call(mut r: CallToolResult) -> CallToolResult {
    r.result_type.get_or_insert(ResultType::COMPLETE);
    r
}

fn rename_content_uri(content: &mut ResourceContents, from: &str, to: &str) {
    let uri = match content {
        ResourceContents::TextResourceContents { uri, .. } => uri,
        ResourceContents::BlobResourceContents { uri, .. } => uri,
        _ => return,
    };
    if uri == from {
        *uri = to.to_owned();
    }
}

/// The JSON-RPC method of a request the gateway forwards.
fn request_method(request: &ClientRequest) -> &'static str {
    match request {
        ClientRequest::CallToolRequest(_) => "tools/call",
        ClientRequest::GetPromptRequest(_) => "prompts/get",
        ClientRequest::ReadResourceRequest(_) => "resources/read",
        ClientRequest::SubscribeRequest(_) => "resources/subscribe",
        ClientRequest::UnsubscribeRequest(_) => "resources/unsubscribe",
        ClientRequest::CompleteRequest(_) => "completion/complete",
        ClientRequest::SetLevelRequest(_) => "logging/setLevel",
        ClientRequest::GetTaskRequest(_) => "tasks/get",
        ClientRequest::UpdateTaskRequest(_) => "tasks/update",
        ClientRequest::CancelTaskRequest(_) => "tasks/cancel",
        _ => "request",
    }
}
