//! The downstream MCP server: one [`Session`] handler per client session,
//! tying it to the registry (what exists and where it lives) and the
//! upstreams (forwarding). Also fans upstream events out to sessions.

mod error;
mod guardrails;
mod listen;
mod models;
mod mrtr;
mod observe;
mod seal;
mod session;
mod tasks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use rmcp::model::{ClientCapabilities, LoggingLevel};
use rmcp::service::{Peer, RoleServer};
use tokio::sync::mpsc;

use crate::auth::Identity;
use crate::config::Config;
use crate::ratelimit::Limits;
use crate::registry::{Endpoint, Registry};
use crate::telemetry::recent::RecentCalls;
use crate::telemetry::Metrics;
use crate::upstream::{log_level_passes, ListKind, UpstreamEvent};
pub use error::{RATE_LIMITED, REQUEST_CANCELLED, REQUEST_TIMEOUT, UPSTREAM_UNAVAILABLE};
pub use guardrails::{Guardrails, GuardrailsError, POLICY_DENIED};
pub use models::ModelAdmission;
pub use session::Session;
pub(crate) use tasks::legacy::rewrite_request as rewrite_legacy_task_request;
pub use tasks::watch::LISTEN_TASKS_META;

/// What the gateway knows about one live downstream session.
pub struct SessionState {
    id: u64,
    endpoint: Endpoint,
    peer: Mutex<Option<Peer<RoleServer>>>,
    log_level: Arc<Mutex<Option<LoggingLevel>>>,
    /// Exposed URIs this session subscribed to, with the upstream watch
    /// that keeps the subscription (none where it was forwarded on a
    /// per-client connection).
    subscriptions: Mutex<HashMap<String, Option<crate::upstream::Watch>>>,
    /// Cancelled when the client ends the session (HTTP `DELETE`): its
    /// calls still in flight upstream are cancelled there at once, rather
    /// than left running while rmcp drains the closed session.
    closing: tokio_util::sync::CancellationToken,
}

impl SessionState {
    fn peer(&self) -> Option<Peer<RoleServer>> {
        self.peer.lock().ok().and_then(|p| p.clone())
    }
}

/// What the HTTP session layer may ask of a downstream session it did not
/// build: whether the gateway holds anything for it that replaying its
/// `initialize` would not rebuild. The layer puts one in the `initialize`
/// request's extensions; the session binds itself to it.
#[derive(Debug, Default)]
pub struct SessionLink(std::sync::OnceLock<(Weak<Gateway>, Weak<SessionState>)>);

impl SessionLink {
    fn bind(&self, gw: &Arc<Gateway>, state: &Arc<SessionState>) {
        let _ = self.0.set((Arc::downgrade(gw), Arc::downgrade(state)));
    }

    /// True when the session's gateway-side state is only what `initialize`
    /// sets up: no log level, no resource subscription, no per-client
    /// upstream connection. False for a session never bound (it may hold
    /// anything) or already gone.
    pub fn restorable(&self) -> bool {
        let Some((gw, state)) = self.0.get() else {
            return false;
        };
        match (gw.upgrade(), state.upgrade()) {
            (Some(gw), Some(state)) => gw.restorable(&state),
            _ => false,
        }
    }

    /// The client ended the session: cancels its calls in flight upstream.
    pub fn closing(&self) {
        if let Some(state) = self.0.get().and_then(|(_, s)| s.upgrade()) {
            state.closing.cancel();
        }
    }
}

/// State shared by every session.
pub struct Gateway {
    config: Arc<Config>,
    registry: Arc<Registry>,
    sessions: RwLock<HashMap<u64, Arc<SessionState>>>,
    next_session: AtomicU64,
    metrics: Arc<Metrics>,
    recent: RecentCalls,
    /// Identity of requests that carry none (stdio, or auth off).
    default_identity: Arc<Identity>,
    /// Policy enforcement; `None` when no policies are configured.
    guardrails: Option<Arc<Guardrails>>,
    /// Multi-round calls of 2026-07-28 clients parked on input.
    bridge: mrtr::Bridge,
    /// Rate limits and concurrency caps.
    limits: Arc<Limits>,
    /// The task ids handed to clients.
    task_ids: tasks::TaskIds,
    /// The 2025-11-25 tasks issued to clients.
    legacy_tasks: tasks::legacy::Issuance,
    /// 2026-07-28 clients' tasks on upstreams of the 2025-11-25 design.
    shims: tasks::shim::Shims,
    /// Open `subscriptions/listen` streams of 2026-07-28 clients.
    listeners: listen::Listeners,
    /// Where list changes go for an endpoint's sessions that have no
    /// worker now (hibernated by the HTTP layer).
    dormant: Mutex<Vec<(Endpoint, Weak<dyn Dormant>)>>,
}

/// The sessions of an endpoint that are kept outside the gateway while
/// they sleep: told of list changes they would otherwise have been sent.
pub trait Dormant: Send + Sync {
    /// The endpoint's `kind` list changed.
    fn list_changed(&self, kind: crate::upstream::ListKind);
}

impl Gateway {
    /// Creates the gateway and starts the task that fans upstream events out
    /// to sessions.
    pub fn new(
        config: Arc<Config>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        events: mpsc::UnboundedReceiver<UpstreamEvent>,
        guardrails: Option<Arc<Guardrails>>,
    ) -> Arc<Gateway> {
        let default_identity = Identity::configured(&config.auth);
        let limits = Limits::new(&config.ratelimit, metrics.clone());
        let bridge = mrtr::Bridge::new(&config.tokens.secrets);
        let task_ids = tasks::TaskIds::new(&config.tokens.secrets);
        let gw = Arc::new(Gateway {
            limits,
            recent: RecentCalls::new(config.telemetry.recent_calls),
            metrics,
            config,
            registry,
            sessions: RwLock::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            default_identity,
            guardrails,
            bridge,
            task_ids,
            listeners: Default::default(),
            dormant: Mutex::new(Vec::new()),
            legacy_tasks: Default::default(),
            shims: tasks::shim::Shims::new(),
        });
        tokio::spawn(fan_out(Arc::downgrade(&gw), events));
        gw
    }

    /// The name a target has on the aggregate endpoint (before renames),
    /// which policy `tool` globs match.
    pub(crate) fn aggregate_name(&self, target: &crate::registry::Target) -> String {
        format!(
            "{}{}{}",
            self.config.prefix_of(&target.upstream),
            self.config.separator,
            target.original
        )
    }

    /// The policy and token-budget hook for model traffic.
    pub fn model_admission(&self) -> ModelAdmission {
        ModelAdmission {
            guardrails: self.guardrails.clone(),
            limits: self.limits.clone(),
        }
    }

    /// The largest request body the MCP endpoints accept.
    pub fn max_body_bytes(&self) -> usize {
        self.config.http.max_body_bytes
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Rate limits and concurrency caps.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The most recent calls, newest first.
    pub fn recent_calls(&self) -> Vec<crate::telemetry::recent::RecentCall> {
        self.recent.snapshot()
    }

    /// A handler for a new downstream session on `endpoint`.
    pub fn session(self: &Arc<Self>, endpoint: Endpoint) -> Session {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(SessionState {
            id,
            endpoint,
            peer: Mutex::new(None),
            log_level: Arc::new(Mutex::new(None)),
            subscriptions: Mutex::new(Default::default()),
            closing: Default::default(),
        });
        if let Ok(mut map) = self.sessions.write() {
            map.insert(id, state.clone());
        }
        self.metrics.sessions_open.inc();
        Session::new(self.clone(), state)
    }

    /// Registers where `endpoint`'s sleeping sessions hear list changes.
    pub fn add_dormant(&self, endpoint: Endpoint, sessions: Weak<dyn Dormant>) {
        if let Ok(mut dormant) = self.dormant.lock() {
            dormant.retain(|(_, d)| d.strong_count() > 0);
            dormant.push((endpoint, sessions));
        }
    }

    /// Number of open `subscriptions/listen` streams.
    pub fn listen_count(&self) -> usize {
        self.listeners.len()
    }

    /// The identity of `portcullis stdio` sessions (and of HTTP callers
    /// when auth is off).
    pub fn stdio_identity(&self) -> &crate::auth::Identity {
        &self.default_identity
    }

    /// The task ids of `requested` that `identity` may be sent
    /// `notifications/tasks` for on `endpoint` (those its `tasks/get`
    /// would open), at most a bounded number: what a listen stream's
    /// acknowledgement lists.
    pub fn watchable_tasks(
        &self,
        identity: &crate::auth::Identity,
        endpoint: &Endpoint,
        requested: &[String],
    ) -> Vec<String> {
        tasks::watch::accepted(self, identity, endpoint, requested)
    }

    /// Number of live downstream sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.read().map(|m| m.len()).unwrap_or(0)
    }

    fn restorable(&self, state: &SessionState) -> bool {
        let plain = state.log_level.lock().is_ok_and(|l| l.is_none())
            && state.subscriptions.lock().is_ok_and(|s| s.is_empty());
        plain
            && !self
                .registry
                .upstreams()
                .values()
                .any(|up| up.serves_session(state.id))
    }

    fn close_session(&self, id: u64) {
        if let Ok(mut map) = self.sessions.write() {
            if map.remove(&id).is_some() {
                self.metrics.sessions_open.dec();
            }
        }
        for up in self.registry.upstreams().values() {
            up.session_closed(id);
        }
    }

    fn sessions_showing(&self, upstream: &str) -> Vec<Arc<SessionState>> {
        self.sessions
            .read()
            .map(|m| {
                m.values()
                    .filter(|s| self.registry.endpoint_includes(&s.endpoint, upstream))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The most verbose log level any session showing `upstream` asked for.
    fn most_verbose_level(&self, upstream: &str) -> Option<LoggingLevel> {
        self.sessions_showing(upstream)
            .iter()
            .filter_map(|s| s.log_level.lock().ok().and_then(|l| *l))
            .reduce(|a, b| if log_level_passes(Some(a), b) { a } else { b })
    }

    async fn on_event(&self, event: UpstreamEvent) {
        match event {
            UpstreamEvent::ListChanged { upstream, kind } => {
                let mut virtuals = self.virtual_showing(&upstream).await;
                self.registry.invalidate(&upstream, Some(kind)).await;
                virtuals.extend(self.virtual_showing(&upstream).await);
                self.notify_lists(&upstream, &[kind], &virtuals).await;
                if kind == ListKind::Tools {
                    self.registry.refresh_tools(&upstream).await;
                }
            }
            UpstreamEvent::StateChanged { upstream } => {
                let mut virtuals = self.virtual_showing(&upstream).await;
                self.registry.invalidate(&upstream, None).await;
                virtuals.extend(self.virtual_showing(&upstream).await);
                let all = [ListKind::Tools, ListKind::Resources, ListKind::Prompts];
                self.notify_lists(&upstream, &all, &virtuals).await;
                self.registry.refresh_tools(&upstream).await;
            }
            UpstreamEvent::ResourceUpdated {
                upstream,
                mut params,
            } => {
                for l in self.listeners.showing(self, &upstream) {
                    let key = (upstream.clone(), params.uri.clone());
                    if let Some(exposed) = l.uris.get(&key) {
                        if let Err(e) = l.sink.notify_resource_updated(exposed.clone()).await {
                            tracing::debug!(error = %e, "resources/updated not delivered to a listener");
                        }
                    }
                }
                for s in self.sessions_showing(&upstream) {
                    let view = self.registry.resources(&s.endpoint).await;
                    let exposed = view
                        .exposed
                        .get(&(upstream.clone(), params.uri.clone()))
                        .cloned()
                        .unwrap_or_else(|| params.uri.clone());
                    let subscribed = s
                        .subscriptions
                        .lock()
                        .map(|subs| subs.contains_key(&exposed))
                        .unwrap_or(false);
                    if let (true, Some(peer)) = (subscribed, s.peer()) {
                        params.uri = exposed;
                        let _ = peer.notify_resource_updated(params.clone()).await;
                    }
                }
            }
            UpstreamEvent::Log {
                upstream,
                session,
                mut params,
            } => {
                if params.logger.is_none() {
                    params.logger = Some(upstream.to_string());
                }
                for s in self.sessions_showing(&upstream) {
                    if session.is_some_and(|id| id != s.id) {
                        continue;
                    }
                    let wanted = s.log_level.lock().ok().and_then(|l| *l);
                    if !log_level_passes(wanted, params.level) {
                        continue;
                    }
                    if let Some(peer) = s.peer() {
                        #[allow(deprecated)]
                        let _ = peer.notify_logging_message(params.clone()).await;
                    }
                }
            }
        }
    }

    /// Virtual servers whose tool list holds tools of `upstream` (asked
    /// before and after a change, so a change that adds or removes them
    /// counts). Only when a session or listener is on a virtual server.
    async fn virtual_showing(&self, upstream: &str) -> std::collections::HashSet<Arc<str>> {
        let mut shown = std::collections::HashSet::new();
        if !self.anyone_on_virtual() {
            return shown;
        }
        for name in self.config.virtual_servers.keys() {
            let name: Arc<str> = name.as_str().into();
            let view = self.registry.tools(&Endpoint::Virtual(name.clone())).await;
            if view.index.values().any(|t| &*t.upstream == upstream) {
                shown.insert(name);
            }
        }
        shown
    }

    fn anyone_on_virtual(&self) -> bool {
        let virtual_ep = |e: &Endpoint| matches!(e, Endpoint::Virtual(_));
        self.sessions
            .read()
            .is_ok_and(|m| m.values().any(|s| virtual_ep(&s.endpoint)))
            || self.listeners.any_on(virtual_ep)
    }

    async fn notify_lists(
        &self,
        upstream: &str,
        kinds: &[ListKind],
        virtuals: &std::collections::HashSet<Arc<str>>,
    ) {
        // A virtual server shows tools only, and only some upstreams' tools.
        let shows = |endpoint: &Endpoint, kind: ListKind| match endpoint {
            Endpoint::Virtual(name) => kind == ListKind::Tools && virtuals.contains(name),
            _ => true,
        };
        for l in self.listeners.showing(self, upstream) {
            let wanted = |k: &&ListKind| l.wants_list(**k) && shows(&l.endpoint, **k);
            for kind in kinds.iter().filter(wanted) {
                let sent = match kind {
                    ListKind::Tools => l.sink.notify_tool_list_changed().await,
                    ListKind::Prompts => l.sink.notify_prompt_list_changed().await,
                    ListKind::Resources => l.sink.notify_resource_list_changed().await,
                };
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "list_changed not delivered to a listener");
                }
            }
        }
        let dormant: Vec<(Endpoint, Arc<dyn Dormant>)> = self
            .dormant
            .lock()
            .map(|d| {
                d.iter()
                    .filter(|(e, _)| self.registry.endpoint_includes(e, upstream))
                    .filter_map(|(e, d)| Some((e.clone(), d.upgrade()?)))
                    .collect()
            })
            .unwrap_or_default();
        for (endpoint, sessions) in dormant {
            for kind in kinds.iter().filter(|k| shows(&endpoint, **k)) {
                sessions.list_changed(*kind);
            }
        }
        for s in self.sessions_showing(upstream) {
            let Some(peer) = s.peer() else { continue };
            for kind in kinds.iter().filter(|k| shows(&s.endpoint, **k)) {
                let sent = match kind {
                    ListKind::Tools => peer.notify_tool_list_changed().await,
                    ListKind::Prompts => peer.notify_prompt_list_changed().await,
                    ListKind::Resources => peer.notify_resource_list_changed().await,
                };
                if let Err(e) = sent {
                    tracing::debug!(session = s.id, error = %e, "list_changed not delivered");
                }
            }
        }
    }
}

async fn fan_out(gw: std::sync::Weak<Gateway>, mut events: mpsc::UnboundedReceiver<UpstreamEvent>) {
    while let Some(event) = events.recv().await {
        let Some(gw) = gw.upgrade() else { return };
        gw.on_event(event).await;
    }
}

/// What a caller may do, as far as forwarding cares.
pub(crate) fn capabilities_of(
    ctx: &rmcp::service::RequestContext<RoleServer>,
) -> ClientCapabilities {
    ctx.client_capabilities().unwrap_or_default()
}
