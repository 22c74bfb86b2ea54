//! Upstream MCP servers: connections, supervision and request forwarding.
//!
//! **Architecture invariant:** only this module holds MCP client
//! connections. Everything above it asks an [`Upstream`] to forward a
//! request on behalf of a [`Caller`] and gets a result or an
//! [`UpstreamError`]; what the upstream sends back on its own (progress,
//! list changes, log lines, server-to-client requests) is routed to the
//! caller directly or published as an [`UpstreamEvent`].

mod child;
mod client;
mod connect;
mod eras;
mod http;
mod ordered;
mod param_headers;
mod pool;
mod related;
mod routes;
mod sse;
mod task_support;
mod tasks;
mod watching;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use rmcp::model::{
    CancelledNotificationParam, ClientRequest, ErrorData, LoggingMessageNotificationParam,
    RequestMetaObject, ResourceUpdatedNotificationParam, ServerResult,
};
use rmcp::service::{Peer, PeerRequestOptions, RoleClient};
use rmcp::ServiceError;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{SessionMode, UpstreamConfig};
pub(crate) use routes::log_level_passes;
use routes::Routes;
pub use routes::{AnswerCheck, BridgedRequest, Caller};
pub(crate) use tasks::{relate, rename_related, unrelate, STATUS_NOTIFICATION};
pub use watching::Watch;

/// A failure to reach or hear from an upstream. Mapped to a JSON-RPC error
/// in one place, `gateway::error`.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream is not connected right now.
    #[error("upstream `{upstream}` is unavailable: {reason}")]
    Unavailable {
        /// Upstream name.
        upstream: String,
        /// Why (last connect error, or "connecting").
        reason: String,
    },
    /// Connecting or the handshake failed.
    #[error("upstream `{upstream}` failed to connect: {message}")]
    Connect {
        /// Upstream name.
        upstream: String,
        /// What went wrong.
        message: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream `{upstream}` did not answer within {after:?}")]
    Timeout {
        /// Upstream name.
        upstream: String,
        /// The configured deadline.
        after: Duration,
    },
    /// The connection dropped while the call was in flight.
    #[error("upstream `{upstream}` closed the connection during the call")]
    Closed {
        /// Upstream name.
        upstream: String,
    },
    /// The downstream client cancelled the call.
    #[error("cancelled by the client")]
    Cancelled,
    /// The downstream client ended its session with the call in flight.
    #[error("the client ended its session")]
    SessionEnded,
    /// Per-client mode and the session cap is reached.
    #[error("upstream `{upstream}` has reached its limit of {max} client sessions")]
    TooManySessions {
        /// Upstream name.
        upstream: String,
        /// The cap.
        max: usize,
    },
    /// The upstream answered with a JSON-RPC error; passed through as is.
    #[error("{0:?}")]
    Remote(ErrorData),
}

/// Which catalogue list changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// `tools/list`.
    Tools,
    /// `resources/list` and `resources/templates/list`.
    Resources,
    /// `prompts/list`.
    Prompts,
}

/// Something an upstream did that the layers above must react to.
#[derive(Debug)]
pub enum UpstreamEvent {
    /// The upstream said a list changed.
    ListChanged {
        /// Upstream name.
        upstream: Arc<str>,
        /// Which list.
        kind: ListKind,
    },
    /// A subscribed resource changed.
    ResourceUpdated {
        /// Upstream name.
        upstream: Arc<str>,
        /// The notification.
        params: ResourceUpdatedNotificationParam,
    },
    /// A log line, for one session if it was tied to a call, else for all.
    Log {
        /// Upstream name.
        upstream: Arc<str>,
        /// The downstream session whose call it belongs to, if known.
        session: Option<u64>,
        /// The log message.
        params: LoggingMessageNotificationParam,
    },
    /// The upstream came up or went down (all its lists changed).
    StateChanged {
        /// Upstream name.
        upstream: Arc<str>,
    },
}

/// Where upstreams publish events.
pub type EventSink = mpsc::UnboundedSender<UpstreamEvent>;

/// An upstream's health, for `/readyz` and the admin view.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Health {
    /// First connection attempt not finished.
    Connecting,
    /// Connected.
    Up {
        /// Seconds the last handshake took.
        connect_seconds: f64,
    },
    /// Not connected; retrying.
    Down {
        /// The last error.
        error: String,
        /// Restarts so far.
        restarts: u64,
    },
}

/// A live connection and its routing table.
pub(crate) struct Connection {
    peer: Peer<RoleClient>,
    routes: Arc<Routes>,
    closed: CancellationToken,
    last_used: std::sync::Mutex<Instant>,
    /// Negotiated at 2026-07-28 or later (no session, listen streams).
    modern: bool,
    /// Resource URIs this (legacy) connection `resources/subscribe`d.
    subscribed: std::sync::Mutex<std::collections::HashSet<String>>,
    /// What the server said about 2025-11-25 tasks (rmcp drops it).
    task_support: Arc<task_support::TaskSupport>,
}

impl Connection {
    fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }
}

/// What every upstream shares with the rest of the gateway.
pub struct Shared {
    /// HTTP client for HTTP and SSE upstreams.
    pub http: reqwest::Client,
    /// Where events go.
    pub events: EventSink,
    /// Metric handles.
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// Tracks every task an upstream spawns, so shutdown can wait for them.
    pub tasks: tokio_util::task::TaskTracker,
    /// Serves `sampling/createMessage` through the model router, when
    /// configured.
    pub sampler: Option<Arc<crate::llm::sampling::Sampler>>,
}

/// One configured upstream server and its supervisor.
pub struct Upstream {
    name: Arc<str>,
    config: UpstreamConfig,
    http: reqwest::Client,
    events: EventSink,
    metrics: Arc<crate::telemetry::Metrics>,
    tasks: tokio_util::task::TaskTracker,
    shared: ArcSwapOption<Connection>,
    health: watch::Sender<Health>,
    tried: AtomicBool,
    per_client: pool::Pool,
    shutdown: CancellationToken,
    /// Woken when a call fails in a way that suggests a dead connection.
    suspect: tokio::sync::Notify,
    sampler: Option<Arc<crate::llm::sampling::Sampler>>,
    /// Resource URIs downstream clients watch (see `watch`).
    watched: watching::Watched,
    /// `protocol: auto` and a shared connection in 2026-07-28: the legacy
    /// connection that serves legacy clients (see `eras`).
    legacy: eras::LegacyConnection,
    /// `x-mcp-header` parameters of its tools, from any connection's list.
    params: Arc<param_headers::ParamHeaders>,
}

impl Upstream {
    /// Creates the upstream and starts its supervisor, which connects in the
    /// background and reconnects with backoff for as long as the gateway runs.
    pub fn start(name: &str, config: UpstreamConfig, shared: Shared) -> Arc<Upstream> {
        let Shared {
            http,
            events,
            metrics,
            shutdown,
            tasks,
            sampler,
        } = shared;
        let upstream = Arc::new(Upstream {
            name: name.into(),
            per_client: pool::Pool::new(config.max_sessions),
            config,
            http,
            events,
            metrics,
            tasks: tasks.clone(),
            shared: ArcSwapOption::empty(),
            health: watch::channel(Health::Connecting).0,
            tried: AtomicBool::new(false),
            shutdown,
            suspect: tokio::sync::Notify::new(),
            sampler,
            watched: Default::default(),
            params: Default::default(),
            legacy: Default::default(),
        });
        tasks.spawn(supervise(upstream.clone()));
        if upstream.config.session == SessionMode::PerClient {
            tasks.spawn(pool::reap_idle(upstream.clone()));
        }
        upstream
    }

    /// The upstream's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its configuration.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    /// True once the first connection attempt has finished, either way.
    pub fn tried(&self) -> bool {
        self.tried.load(Ordering::Acquire)
    }

    /// True while the shared connection is up.
    pub fn is_up(&self) -> bool {
        self.shared.load().is_some()
    }

    /// Waits until the first connection attempt has finished.
    pub async fn wait_tried(&self) {
        let mut rx = self.health.subscribe();
        while !self.tried() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Whether a call may come back as an `InputRequiredResult`: only from
    /// a connection in 2026-07-28 (a shared one that negotiated it, or a
    /// per-client one that may).
    pub fn may_answer_input_required(&self) -> bool {
        match (self.config.protocol, self.config.session) {
            (crate::config::UpstreamProtocol::Legacy, _) => false,
            (_, SessionMode::PerClient) => true,
            (_, SessionMode::Shared) => self.shared.load().as_ref().is_none_or(|c| c.modern),
        }
    }

    /// Capabilities the upstream server declared, if connected.
    pub fn server_capabilities(&self) -> Option<rmcp::model::ServerCapabilities> {
        self.shared
            .load()
            .as_ref()
            .and_then(|c| c.peer.peer_info())
            .map(|info| info.capabilities.clone())
    }

    /// Whether the gateway offers clients this upstream's tasks (the tasks
    /// extension of 2026-07-28); `None` while not connected. A server spoken
    /// to in an earlier revision has the 2025-11-25 task design instead,
    /// whatever it advertises; and a `per-client` upstream's connection ends
    /// with its downstream session (for a 2026-07-28 client, its request),
    /// which a task must outlive.
    pub fn offers_tasks(&self) -> Option<bool> {
        if self.config.session != SessionMode::Shared {
            return Some(false);
        }
        self.shared
            .load()
            .as_ref()
            .and_then(|c| c.peer.peer_info())
            .map(|info| offers_tasks(&info))
    }

    /// The `execution` object (2025-11-25: `taskSupport`) the upstream
    /// listed for its tool `name` (its own name) on the shared connection,
    /// if any; rmcp's `Tool` has no field for it.
    pub fn tool_execution(&self, name: &str) -> Option<serde_json::Value> {
        self.shared.load().as_ref()?.task_support.execution(name)
    }

    /// The 2025-11-25 `tasks` capability the upstream declared when the
    /// shared connection was made, if any (rmcp drops it).
    pub fn tasks_capability_2025(&self) -> Option<serde_json::Value> {
        self.shared.load().as_ref()?.task_support.capability()
    }

    /// Whether the shared connection speaks the 2025-11-25 design and the
    /// upstream listed its tool `name` as runnable only as a task
    /// (`taskSupport: required`): a 2026-07-28 client's call of it is
    /// shimmed onto a 2025 task.
    pub fn runs_only_as_2025_task(&self, name: &str) -> bool {
        self.legacy_shared()
            && self
                .tool_execution(name)
                .is_some_and(|e| e.get("taskSupport").and_then(|s| s.as_str()) == Some("required"))
    }

    /// Whether the shared connection speaks the 2025-11-25 design and the
    /// upstream declared it makes tasks of tool calls.
    pub fn makes_2025_tasks(&self) -> bool {
        self.legacy_shared()
            && self
                .tasks_capability_2025()
                .is_some_and(|c| c.pointer("/requests/tools/call").is_some())
    }

    fn legacy_shared(&self) -> bool {
        self.config.session == SessionMode::Shared
            && self.shared.load().as_ref().is_some_and(|c| !c.modern)
    }

    fn unavailable(&self) -> UpstreamError {
        let reason = match &*self.health.borrow() {
            Health::Down { error, .. } => error.clone(),
            Health::Connecting => "still connecting".to_owned(),
            Health::Up { .. } => "reconnecting".to_owned(),
        };
        UpstreamError::Unavailable {
            upstream: self.name.to_string(),
            reason,
        }
    }

    /// Forwards a request made by the gateway itself (list fetches), on the
    /// shared connection.
    pub async fn request_internal(
        &self,
        request: ClientRequest,
    ) -> Result<ServerResult, UpstreamError> {
        let conn = self.shared.load_full().ok_or_else(|| self.unavailable())?;
        self.send(&conn, request, None, &CancellationToken::new())
            .await
    }

    /// Forwards a downstream client's request. `session` selects the
    /// per-client connection when the upstream runs in that mode; `ct` is
    /// cancelled when the client cancels or goes away.
    pub async fn request(
        self: &Arc<Self>,
        caller: Caller,
        request: ClientRequest,
        ct: &CancellationToken,
    ) -> Result<ServerResult, UpstreamError> {
        let conn = match self.config.session {
            SessionMode::Shared => {
                let conn = self.shared.load_full().ok_or_else(|| self.unavailable())?;
                if caller.legacy && conn.modern {
                    // Not boxed: every 2025 client's call takes this path
                    // when the upstream speaks 2026-07-28 too.
                    return self.request_legacy(conn, caller, request, ct).await;
                }
                conn
            }
            // Boxed: opening a connection is a large future, and only
            // per-client upstreams ever need it.
            SessionMode::PerClient => Box::pin(self.per_client_connection(&caller)).await?,
        };
        self.send(&conn, request, Some(Arc::new(caller)), ct).await
    }

    async fn send(
        &self,
        conn: &Arc<Connection>,
        request: ClientRequest,
        caller: Option<Arc<Caller>>,
        ct: &CancellationToken,
    ) -> Result<ServerResult, UpstreamError> {
        conn.touch();
        let method = crate::telemetry::metrics::method_label(client_method(&request));
        let started = Instant::now();
        let result = self.send_inner(conn, request, caller, ct).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(UpstreamError::Remote(_)) => "error",
            Err(UpstreamError::Timeout { .. }) => "timeout",
            Err(UpstreamError::Cancelled) => "cancelled",
            Err(UpstreamError::SessionEnded) => "session_ended",
            Err(_) => "unavailable",
        };
        self.metrics
            .client_duration
            .with_label_values(&[method, &self.name, outcome])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn send_inner(
        &self,
        conn: &Arc<Connection>,
        request: ClientRequest,
        caller: Option<Arc<Caller>>,
        ct: &CancellationToken,
    ) -> Result<ServerResult, UpstreamError> {
        let mut options = PeerRequestOptions::with_timeout(self.config.timeout);
        options.meta = caller
            .as_deref()
            .and_then(|caller| self.request_meta(conn, caller));
        // From here until it is registered, an unassociated message waits
        // for this call rather than guessing without it.
        let expected = caller.as_ref().map(|_| conn.routes.expect());
        let handle = conn
            .peer
            .send_request_with_option(request, options)
            .await
            .map_err(|e| self.map_error(e))?;
        let id = handle.id.clone();
        // The client cancelling the call, or ending its session.
        let closing = caller.as_ref().map(|c| c.closing.clone());
        let cancelled = async {
            match &closing {
                Some(session) => tokio::select! {
                    () = ct.cancelled() => UpstreamError::Cancelled,
                    () = session.cancelled() => UpstreamError::SessionEnded,
                },
                None => {
                    ct.cancelled().await;
                    UpstreamError::Cancelled
                }
            }
        };
        let mut registration = caller.zip(expected).map(|(caller, expected)| {
            let (registration, early) = conn.routes.register(
                expected,
                id.clone(),
                handle.progress_token.clone(),
                caller.clone(),
            );
            if !early.is_empty() {
                tokio::spawn(async move {
                    for params in early {
                        client::forward_progress(&caller, params).await;
                    }
                });
            }
            registration
        });
        let result = tokio::select! {
            result = handle.await_response() => result.map_err(|e| {
                let e = self.map_error(e);
                if matches!(e, UpstreamError::Timeout { .. } | UpstreamError::Unavailable { .. }) {
                    self.suspect.notify_one();
                }
                e
            }),
            why = cancelled => {
                let reason = match why {
                    UpstreamError::SessionEnded => "the downstream client ended its session",
                    _ => "cancelled by the downstream client",
                };
                let params = CancelledNotificationParam::new(Some(id), Some(reason.into()));
                // Boxed: rare, and every call's future would carry its size.
                let _ = Box::pin(conn.peer.notify_cancelled(params)).await;
                Err(why)
            }
            () = conn.closed.cancelled() => Err(UpstreamError::Closed { upstream: self.name.to_string() }),
        };
        // A 2025 task outlives its call: so do its routes.
        if let (Ok(r), Some(registration)) = (&result, registration.as_mut()) {
            if let Some(task) = tasks::created_task_id(r) {
                registration.keep_for_task(task);
            }
        }
        result
    }

    /// The tasks extension (2026-07-28) is declared per request: a caller
    /// that declared it has it declared upstream too, when the gateway
    /// offers the upstream's tasks ([`Upstream::offers_tasks`]: shared
    /// connections only), so only such a caller can be handed a task (and
    /// only it may drive one with `tasks/*`). The connection's own
    /// capabilities stay what it declared at connect.
    /// Beyond that, a request on a 2026-07-28 connection carries the calling
    /// client's capabilities (a server reads from each request what the
    /// client can answer: the caller's, not every client's) and its log level.
    fn request_meta(&self, conn: &Connection, caller: &Caller) -> Option<RequestMetaObject> {
        let tasks = self.config.session == SessionMode::Shared
            && conn
                .peer
                .peer_info()
                .is_some_and(|info| offers_tasks(&info))
            && caller.capabilities.supports_tasks();
        // Tasks are only offered by 2026-07-28 connections.
        if !conn.modern && !tasks {
            return None;
        }
        let mut capabilities =
            client::advertised(Some(&caller.capabilities), self.sampler.is_some());
        if tasks {
            capabilities
                .extensions
                .get_or_insert_with(Default::default)
                .insert(
                    rmcp::model::TASKS_EXTENSION_ID.to_owned(),
                    Default::default(),
                );
        }
        let mut meta = RequestMetaObject::new();
        meta.set_client_capabilities(capabilities);
        if let (true, Some(level)) = (conn.modern, caller.log_level.lock().ok().and_then(|l| *l)) {
            meta.set_log_level(level);
        }
        Some(meta)
    }

    fn map_error(&self, e: ServiceError) -> UpstreamError {
        match e {
            ServiceError::McpError(e) => UpstreamError::Remote(e),
            ServiceError::Timeout { timeout } => UpstreamError::Timeout {
                upstream: self.name.to_string(),
                after: timeout,
            },
            ServiceError::TransportClosed | ServiceError::Cancelled { .. } => {
                UpstreamError::Closed {
                    upstream: self.name.to_string(),
                }
            }
            other => UpstreamError::Unavailable {
                upstream: self.name.to_string(),
                reason: other.to_string(),
            },
        }
    }

    fn client(
        &self,
        routes: Arc<Routes>,
        owner: Option<Arc<Caller>>,
        secondary: bool,
    ) -> client::UpstreamClient {
        client::UpstreamClient {
            secondary,
            upstream: self.name.clone(),
            routes,
            events: self.events.clone(),
            capabilities: client::advertised(
                owner.as_ref().map(|o| &o.capabilities),
                self.sampler.is_some(),
            ),
            owner,
            sampler: self.sampler.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Opens a connection; `owner` is the downstream session of a
    /// per-client connection.
    async fn open(
        &self,
        owner: Option<Arc<Caller>>,
    ) -> Result<(Arc<Connection>, connect::Service), UpstreamError> {
        self.open_as(owner, self.config.protocol).await
    }

    /// Opens a connection in the given protocol era.
    async fn open_as(
        &self,
        owner: Option<Arc<Caller>>,
        protocol: crate::config::UpstreamProtocol,
    ) -> Result<(Arc<Connection>, connect::Service), UpstreamError> {
        let routes = Arc::new(Routes::default());
        // The legacy connection of an `auto` upstream duplicates what the
        // shared one reports (list changes).
        let secondary = owner.is_none() && protocol != self.config.protocol;
        let task_support = Arc::new(task_support::TaskSupport::new(self.params.clone()));
        let service = connect::connect(
            &self.name,
            &self.config,
            protocol,
            self.client(routes.clone(), owner, secondary),
            &self.http,
            task_support.clone(),
        )
        .await?;
        let conn = Arc::new(Connection {
            modern: watching::is_modern(service.peer()),
            peer: service.peer().clone(),
            routes,
            closed: CancellationToken::new(),
            last_used: std::sync::Mutex::new(Instant::now()),
            subscribed: Default::default(),
            task_support,
        });
        Ok((conn, service))
    }

    /// Tells a session's per-client upstream that its client's roots changed
    /// (a shared upstream serves many clients, so it is not told).
    pub async fn roots_changed(&self, session: u64) {
        if let Some(conn) = self.per_client.get(session) {
            if let Err(e) = conn.peer.notify_roots_list_changed().await {
                tracing::debug!(upstream = %self.name, error = %e, "roots/list_changed not delivered");
            }
        }
    }

    /// Whether a downstream session has a per-client connection here.
    pub fn serves_session(&self, session: u64) -> bool {
        self.per_client.get(session).is_some()
    }

    /// Closes every per-client connection of a downstream session.
    pub fn session_closed(&self, session: u64) {
        self.per_client.remove(session);
    }
}

/// Returns when the connection has failed `health.failures` pings in a row.
/// Pings run every `health.interval`, and at once after a suspicious call
/// failure.
async fn watch_liveness(up: &Upstream, conn: &Connection) {
    let health = &up.config.health;
    let mut failed = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(health.interval) => {}
            () = up.suspect.notified() => {}
        }
        // 2026-07-28 removed `ping`: a server of that revision is asked
        // `server/discover` instead, which it must always answer.
        let probe = match conn.modern {
            true => ClientRequest::DiscoverRequest(rmcp::model::Request::new(Default::default())),
            false => ClientRequest::PingRequest(Default::default()),
        };
        let options = PeerRequestOptions::with_timeout(health.timeout);
        let answered = match conn.peer.send_request_with_option(probe, options).await {
            Ok(handle) => handle.await_response().await.is_ok(),
            Err(_) => false,
        };
        let outcome = if answered { "ok" } else { "failed" };
        up.metrics
            .upstream_probes
            .with_label_values(&[&up.name, outcome])
            .inc();
        failed = if answered { 0 } else { failed + 1 };
        if failed >= health.failures.max(1) {
            return;
        }
    }
}

/// Runs for the gateway's lifetime: connect, wait for the connection to end,
/// back off, reconnect. Also the one place that updates health.
async fn supervise(up: Arc<Upstream>) {
    let mut backoff = up.config.restart.initial_backoff;
    let mut restarts = 0u64;
    loop {
        let started = Instant::now();
        let attempt = tokio::select! {
            r = up.open(None) => r,
            () = up.shutdown.cancelled() => return,
        };
        match attempt {
            Ok((conn, service)) => {
                let took = started.elapsed();
                tracing::info!(upstream = %up.name, seconds = took.as_secs_f64(), "upstream connected");
                up.shared.store(Some(conn.clone()));
                up.metrics.upstream_up.with_label_values(&[&up.name]).set(1);
                up.health.send_replace(Health::Up {
                    connect_seconds: took.as_secs_f64(),
                });
                up.tried.store(true, Ordering::Release);
                let _ = up.events.send(UpstreamEvent::StateChanged {
                    upstream: up.name.clone(),
                });
                up.tasks
                    .spawn(watching::keep_watching(up.clone(), conn.clone()));
                let cancel = service.cancellation_token();
                let shutdown = up.shutdown.clone();
                let mut waiter = tokio::spawn(service.waiting());
                tokio::select! {
                    _ = &mut waiter => {}
                    () = watch_liveness(&up, &conn) => {
                        tracing::warn!(upstream = %up.name, "upstream stopped answering pings; reconnecting");
                        cancel.cancel();
                        let _ = (&mut waiter).await;
                    }
                    () = shutdown.cancelled() => {
                        up.shared.store(None);
                        conn.closed.cancel();
                        cancel.cancel();
                        // Wait for the transport to close, which reaps a child process.
                        let _ = waiter.await;
                        return;
                    }
                }
                up.shared.store(None);
                conn.closed.cancel();
                up.metrics.upstream_up.with_label_values(&[&up.name]).set(0);
                up.metrics
                    .upstream_restarts
                    .with_label_values(&[&up.name])
                    .inc();
                restarts += 1;
                backoff = up.config.restart.initial_backoff;
                tracing::warn!(upstream = %up.name, "upstream connection ended; restarting");
                up.health.send_replace(Health::Down {
                    error: "connection ended".into(),
                    restarts,
                });
                let _ = up.events.send(UpstreamEvent::StateChanged {
                    upstream: up.name.clone(),
                });
            }
            Err(e) => {
                tracing::warn!(upstream = %up.name, error = %e, retry_in = ?backoff, "upstream connect failed");
                up.health.send_replace(Health::Down {
                    error: e.to_string(),
                    restarts,
                });
                up.tried.store(true, Ordering::Release);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = up.shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(up.config.restart.max_backoff);
    }
}

/// The JSON-RPC method name of a request, for metric labels.
/// Whether a server, as negotiated, offers the tasks extension of
/// 2026-07-28 (which exists only where there is no `initialize`).
fn offers_tasks(info: &rmcp::model::ServerPeerInfo) -> bool {
    !info.protocol_version.has_initialize() && info.capabilities.supports_tasks()
}

fn client_method(request: &ClientRequest) -> &str {
    use rmcp::model::ClientRequest as R;
    match request {
        R::CallToolRequest(_) => "tools/call",
        R::ListToolsRequest(_) => "tools/list",
        R::GetPromptRequest(_) => "prompts/get",
        R::ListPromptsRequest(_) => "prompts/list",
        R::ReadResourceRequest(_) => "resources/read",
        R::ListResourcesRequest(_) => "resources/list",
        R::ListResourceTemplatesRequest(_) => "resources/templates/list",
        R::SubscribeRequest(_) => "resources/subscribe",
        R::UnsubscribeRequest(_) => "resources/unsubscribe",
        R::CompleteRequest(_) => "completion/complete",
        R::SetLevelRequest(_) => "logging/setLevel",
        R::PingRequest(_) => "ping",
        R::GetTaskRequest(_) => "tasks/get",
        R::UpdateTaskRequest(_) => "tasks/update",
        R::CancelTaskRequest(_) => "tasks/cancel",
        R::CustomRequest(r) => r.method.as_str(),
        _ => "unknown",
    }
}
