//! The gateway's MCP client handler for one upstream connection: routes
//! what the upstream sends us back to the downstream session that caused it.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    ClientCapabilities, ClientInfo, ClientResult, ErrorCode, ErrorData, Implementation,
    ServerNotification, ServerRequest,
};
use rmcp::model::{GetExtensions, GetMeta};
use rmcp::service::{
    InboundStreamOrigin, NotificationContext, OriginatingRequestId, RequestContext, RoleClient,
    Service,
};

use super::routes::{Caller, Guess, Routes};
use super::EventSink;

/// How long a server-to-client request waits for its originating call to be
/// registered (the registration races the upstream's reply by microseconds,
/// but a loaded machine can stall the registering task for much longer; a
/// request that never finds its call waits this long before its refusal).
const ASSOCIATION_WAIT: Duration = Duration::from_secs(10);

/// Client handler for one upstream connection.
pub(crate) struct UpstreamClient {
    pub(crate) upstream: Arc<str>,
    pub(crate) routes: Arc<Routes>,
    pub(crate) events: EventSink,
    pub(crate) capabilities: ClientCapabilities,
    /// Per-client connections: the one session this connection serves, for
    /// messages no in-flight call explains.
    pub(crate) owner: Option<Arc<Caller>>,
    /// Serves sampling through the model router, when configured.
    pub(crate) sampler: Option<Arc<crate::llm::sampling::Sampler>>,
    pub(crate) metrics: Arc<crate::telemetry::Metrics>,
    /// A second connection to a server the shared one already hears (see
    /// `eras`): its list changes and resource updates are not republished.
    pub(crate) secondary: bool,
}

/// The capabilities a gateway connection declares to an upstream. A shared
/// connection declares what the gateway can route to callers (each request
/// is then checked against the calling client's own capabilities); a
/// per-client connection declares exactly what its one client declared,
/// plus sampling when the model router can serve it (`router_samples`).
pub(crate) fn advertised(
    downstream: Option<&ClientCapabilities>,
    router_samples: bool,
) -> ClientCapabilities {
    match downstream {
        Some(caps) => {
            let mut mine = ClientCapabilities::default();
            mine.elicitation = caps.elicitation.clone();
            mine.sampling = caps.sampling.clone();
            if router_samples && mine.sampling.is_none() {
                mine.sampling = Some(Default::default());
            }
            mine.roots = caps.roots.clone();
            mine
        }
        None => serde_json::from_value(serde_json::json!({
            "elicitation": { "form": {}, "url": {} },
            "sampling": {},
            "roots": { "listChanged": true }
        }))
        .unwrap_or_default(),
    }
}

impl UpstreamClient {
    /// The call a server-to-client request of `origin` belongs to; an
    /// error when the transport cannot say and calls of several sessions
    /// are in flight (see [`Routes::unassociated`]).
    async fn caller_for(
        &self,
        origin: Option<&InboundStreamOrigin>,
        what: &str,
    ) -> Result<Option<Arc<Caller>>, ErrorData> {
        Ok(match origin {
            Some(InboundStreamOrigin::OutboundRequest(id)) => {
                self.routes.caller_of(id, ASSOCIATION_WAIT).await
            }
            // On an HTTP upstream's GET stream (where a server before
            // 2026-07-28 may send a call's requests), or over stdio and SSE,
            // which cannot say which call a message belongs to.
            Some(InboundStreamOrigin::Unassociated) | None => {
                match self.routes.unassociated(ASSOCIATION_WAIT).await {
                    Guess::Caller(caller) => Some(caller),
                    Guess::Nobody => self.owner.clone(),
                    Guess::Ambiguous { sessions } => {
                        tracing::warn!(upstream = %self.upstream, method = what, sessions, "server-to-client request of no known call while calls of several sessions are in flight; refused");
                        self.count(what, "ambiguous");
                        return Err(ErrorData::new(
                            ErrorCode::INTERNAL_ERROR,
                            format!(
                            "portcullis: upstream `{}` sent {what} without saying which call it \
                             belongs to, while calls of {sessions} sessions are in flight; \
                             refused rather than guessed (a `session: per-client` upstream \
                             keeps each client's questions apart)",
                            self.upstream
                        ),
                            None,
                        ));
                    }
                }
            }
        })
    }

    /// Answers `sampling/createMessage` through the model router.
    async fn sample(
        &self,
        sampler: &crate::llm::sampling::Sampler,
        params: &rmcp::model::CreateMessageRequestParams,
        identity: Arc<crate::auth::Identity>,
    ) -> Result<ClientResult, ErrorData> {
        let routed = &self.metrics.client_requests_routed;
        let params = serde_json::to_value(params)
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let result = match sampler.create_message(params, identity).await {
            Ok(v) => v,
            Err(e) => {
                routed
                    .with_label_values(&["sampling/createMessage", "router_error"])
                    .inc();
                return Err(ErrorData::internal_error(format!("portcullis: {e}"), None));
            }
        };
        routed
            .with_label_values(&["sampling/createMessage", "router"])
            .inc();
        serde_json::from_value(result)
            .map(ClientResult::CreateMessageResult)
            .map_err(|e| ErrorData::internal_error(format!("portcullis: {e}"), None))
    }

    /// Counts a server-to-client request by where it went.
    fn count(&self, what: &str, outcome: &str) {
        self.metrics
            .client_requests_routed
            .with_label_values(&[what, outcome])
            .inc();
    }

    fn refuse(&self, what: &str) -> ErrorData {
        ErrorData::new(
            ErrorCode::METHOD_NOT_FOUND,
            format!(
                "portcullis: no downstream client able to answer {what} for upstream `{}`",
                self.upstream
            ),
            None,
        )
    }
}

fn client_can(caps: &ClientCapabilities, request: &ServerRequest) -> bool {
    match request {
        ServerRequest::CreateMessageRequest(_) => caps.sampling.is_some(),
        ServerRequest::ElicitRequest(_) => caps.elicitation.is_some(),
        ServerRequest::ListRootsRequest(_) => caps.roots.is_some(),
        _ => true,
    }
}

fn method_name(request: &ServerRequest) -> &'static str {
    match request {
        ServerRequest::CreateMessageRequest(_) => "sampling/createMessage",
        ServerRequest::ElicitRequest(_) => "elicitation/create",
        ServerRequest::ListRootsRequest(_) => "roots/list",
        ServerRequest::PingRequest(_) => "ping",
        _ => "a server-to-client request",
    }
}

impl Service<RoleClient> for UpstreamClient {
    async fn handle_request(
        &self,
        request: ServerRequest,
        context: RequestContext<RoleClient>,
    ) -> Result<ClientResult, ErrorData> {
        if matches!(request, ServerRequest::PingRequest(_)) {
            return Ok(ClientResult::empty(()));
        }
        let what = method_name(&request);
        let mut request = request;
        // rmcp moves the request's extensions, where its transport marked
        // the stream the request arrived on, into the context.
        let origin = context
            .extensions
            .get::<InboundStreamOrigin>()
            .or_else(|| request.extensions().get::<InboundStreamOrigin>())
            .cloned();
        tracing::debug!(upstream = %self.upstream, method = what, ?origin, "server-to-client request");
        // A request about a task (`_meta` related-task) that arrived outside
        // any call's stream goes to the session that owns the task.
        // rmcp moved the request's `_meta` into the context.
        let task = super::tasks::route_of(&self.routes, &context.meta);
        let caller = match &task {
            Some((route, _))
                if !matches!(origin, Some(InboundStreamOrigin::OutboundRequest(_))) =>
            {
                Some(route.caller.clone())
            }
            _ => self
                .caller_for(origin.as_ref(), what)
                .await?
                .or_else(|| task.as_ref().map(|(route, _)| route.caller.clone())),
        };
        if let Some((_, client_id)) = &task {
            super::tasks::relate(request.get_meta_mut(), client_id);
        }
        if let (ServerRequest::CreateMessageRequest(r), Some(sampler)) = (&request, &self.sampler) {
            let can_sample = caller
                .as_ref()
                .is_some_and(|c| c.capabilities.sampling.is_some());
            if sampler.serves(can_sample) {
                let identity = caller
                    .as_ref()
                    .map(|c| c.identity.clone())
                    .unwrap_or_else(crate::auth::Identity::anonymous);
                return self.sample(sampler, &r.params, identity).await;
            }
        }
        let Some(caller) = caller else {
            // A shared connection serves many clients with different roots;
            // outside a call it can only honestly say it has none of its own.
            if matches!(request, ServerRequest::ListRootsRequest(_)) {
                return Ok(ClientResult::ListRootsResult(Default::default()));
            }
            tracing::warn!(upstream = %self.upstream, method = what, ?origin, "server-to-client request matches no call in flight; refused");
            self.count(what, "no_call");
            return Err(self.refuse(what));
        };
        if !client_can(&caller.capabilities, &request) {
            self.count(what, "not_declared");
            return Err(ErrorData::new(
                ErrorCode::METHOD_NOT_FOUND,
                format!("portcullis: the calling client did not declare support for {what}"),
                None,
            ));
        }
        self.count(what, "client");
        if let Some(bridge) = &caller.input_bridge {
            let (reply, answer) = tokio::sync::oneshot::channel();
            bridge
                .send(crate::upstream::BridgedRequest { request, reply })
                .map_err(|_| ErrorData::internal_error("downstream call ended", None))?;
            return tokio::select! {
                answer = answer => answer
                    .unwrap_or_else(|_| {
                        Err(ErrorData::internal_error("the client did not answer", None))
                    })
                    .and_then(|mut a| caller.screen(&mut a).map(|()| a)),
                () = context.ct.cancelled() => {
                    Err(ErrorData::new(ErrorCode::INTERNAL_ERROR, "cancelled", None))
                }
            };
        }
        // Deliver on the originating call's response stream (SEP-2260);
        // the owner of a per-client connection is reached on its GET stream.
        if !self.owner.as_ref().is_some_and(|o| Arc::ptr_eq(o, &caller)) {
            request
                .extensions_mut()
                .insert(OriginatingRequestId(caller.request_id.clone()));
        }
        let handle = caller
            .peer
            .send_request_with_option(request, Default::default())
            .await
            .map_err(|e| ErrorData::internal_error(format!("downstream unreachable: {e}"), None))?;
        let downstream_id = handle.id.clone();
        tokio::select! {
            answer = handle.await_response() => answer
                .map_err(|e| match e {
                    rmcp::ServiceError::McpError(e) => e,
                    other => ErrorData::internal_error(format!("downstream failed: {other}"), None),
                })
                .and_then(|mut a| caller.screen(&mut a).map(|()| a)),
            () = context.ct.cancelled() => {
                let params = rmcp::model::CancelledNotificationParam::new(Some(downstream_id), Some("cancelled by upstream".into()));
                let _ = caller.peer.notify_cancelled(params).await;
                Err(ErrorData::new(ErrorCode::INTERNAL_ERROR, "cancelled", None))
            }
        }
    }

    async fn handle_notification(
        &self,
        notification: ServerNotification,
        _context: NotificationContext<RoleClient>,
    ) -> Result<(), ErrorData> {
        let event = match notification {
            // Forwarded by the transport, in order (see `ordered`).
            ServerNotification::ProgressNotification(_) => return Ok(()),
            // A second connection's changes are reported by the shared one.
            ServerNotification::ToolListChangedNotification(_)
            | ServerNotification::PromptListChangedNotification(_)
            | ServerNotification::ResourceListChangedNotification(_)
            | ServerNotification::ResourceUpdatedNotification(_)
                if self.secondary =>
            {
                return Ok(())
            }
            ServerNotification::CustomNotification(n) => {
                // A 2025 task's status goes to the session that owns it.
                if let Some((caller, n)) = super::tasks::status_for_owner(&self.routes, &n) {
                    let n = ServerNotification::CustomNotification(n);
                    if let Err(e) = caller.peer.send_notification(n).await {
                        tracing::debug!(error = %e, "task status not delivered downstream");
                    }
                } else {
                    tracing::debug!(upstream = %self.upstream, method = %n.method, "notification not forwarded");
                }
                return Ok(());
            }
            // A call's own log lines were delivered by the transport (see
            // `ordered`); what is left belongs to the connection: its one
            // session for a per-client connection, else every session.
            other => match super::watching::event_of(
                &self.upstream,
                other,
                self.owner.as_ref().map(|o| o.session),
            ) {
                Some(event) => event,
                None => {
                    tracing::debug!(upstream = %self.upstream, "notification not forwarded");
                    return Ok(());
                }
            },
        };
        // The receiver lives as long as the gateway; a send error means it
        // is shutting down and the event no longer matters.
        let _ = self.events.send(event);
        Ok(())
    }

    fn get_info(&self) -> ClientInfo {
        let mut info = ClientInfo::default();
        info.capabilities = self.capabilities.clone();
        info.client_info = Implementation::new("portcullis", env!("CARGO_PKG_VERSION"));
        info
    }
}

/// Sends upstream progress to the caller under the caller's own token.
pub(crate) async fn forward_progress(
    caller: &Caller,
    mut params: rmcp::model::ProgressNotificationParam,
) {
    let Some(token) = caller.progress_token.clone() else {
        return;
    };
    params.progress_token = token;
    if let Err(e) = caller.peer.notify_progress(params).await {
        tracing::debug!(error = %e, "progress not delivered downstream");
    }
}
