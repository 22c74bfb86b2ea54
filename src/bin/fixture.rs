//! `portcullis-fixture`: a small, deterministic MCP server used as the
//! upstream in portcullis' own tests and as the server under test for the
//! official MCP conformance suite (`@modelcontextprotocol/conformance`).
//!
//! It implements every tool, resource, resource template, prompt and utility
//! that the suite's server scenarios call (`test_simple_text`,
//! `test://static-text`, `test_simple_prompt`, ...), plus a few tools for the
//! gateway's tests: `echo`, `slow` and `add`, and the gates (`gate_wait`,
//! `gate_elicit`, `gate_log`, `gate_open`, `gate_waiting`) that hold calls in flight
//! until a test lets them on.
//!
//! Usage:
//!
//! ```text
//! portcullis-fixture http --listen 127.0.0.1:0 [--allow-any-host] [--stateless] [--json-response] [--no-sse-priming] [--modern-only] [--tools N]
//! portcullis-fixture stdio [--tools N]
//! ```
//!
//! `--tools N` adds N generated tools, `tool_0` to `tool_{N-1}`, each with a
//! small schema, for benchmarks of large catalogues.
//!
//! In HTTP mode the fixture serves streamable HTTP at `/mcp` and prints one
//! line, `listening on http://ADDR/mcp`, to stdout once bound. Logs go to
//! stderr (`RUST_LOG`, default `warn`).

// Logging, sampling and server-to-client requests are deprecated in rmcp
// (SEP-2577) but are still part of the 2025-06-18 / 2025-11-25 protocol
// revisions that the conformance suite exercises, so this fixture uses them on
// purpose.
#![allow(deprecated)]

#[path = "fixture/gates.rs"]
mod gates;
#[path = "fixture/tasks.rs"]
mod tasks;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams,
    ClientJsonRpcMessage, ClientRequest, ClientResult, CompleteRequestParams, CompleteResult,
    CompletionInfo, ContentBlock, CreateMessageRequestParams, ElicitRequest, ElicitRequestParams,
    ElicitationAction, ElicitationSchema, GetPromptRequestParams, GetPromptResponse,
    GetPromptResult, GetTaskParams, GetTaskResult, Implementation, JsonObject, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, LoggingLevel,
    LoggingMessageNotificationParam, PaginatedRequestParams, ProgressNotificationParam,
    ProgressToken, Prompt, PromptArgument, PromptMessage, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Reference, RequestId, Resource, ResourceContents,
    ResourceTemplate, ResourceUpdatedNotificationParam, Role, SamplingMessage, ServerCapabilities,
    ServerConfig, ServerJsonRpcMessage, ServerRequest, SetLevelRequestParams,
    SubscribeRequestParams, Tool, UnsubscribeRequestParams, UpdateTaskParams,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError,
};
use rmcp::transport::streamable_http_server::session::{
    EventStore, RestoreOutcome, ServerSseMessage, SessionId, SessionManager,
};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt as _};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// A 1x1 red PNG, base64-encoded.
const TEST_IMAGE_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";

/// A minimal WAV file (two bytes of silence), base64-encoded.
const TEST_AUDIO_BASE64: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";

/// Name this server reports in `initialize`.
const SERVER_NAME: &str = "portcullis-fixture";

/// Logger name on every `notifications/message` the fixture sends.
const LOGGER: &str = "portcullis-fixture";

/// Upper bound for the `slow` tool's sleep, so a typo cannot park a call for days.
const MAX_SLOW_MS: u64 = 10 * 60 * 1000;

/// Retry interval advertised in SSE priming events (SEP-1699).
const SSE_RETRY: Duration = Duration::from_millis(500);

/// The URI of the only resource whose content "changes" (for subscriptions).
const WATCHED_URI: &str = "test://watched-resource";

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// How the fixture is served.
#[derive(Debug)]
enum Mode {
    /// Streamable HTTP on `/mcp`.
    Http(HttpOptions),
    /// Newline-delimited JSON-RPC on stdin/stdout.
    Stdio,
}

/// Options of `http` mode.
#[derive(Debug)]
struct HttpOptions {
    /// Address to bind; port 0 lets the OS choose.
    listen: SocketAddr,
    /// Accept any `Host` header instead of loopback names only.
    allow_any_host: bool,
    /// Serve without sessions (each POST is independent).
    stateless: bool,
    /// In stateless mode, answer plain request/response calls with JSON
    /// instead of an SSE stream.
    json_response: bool,
    /// Send no SSE priming events (SEP-1699), for clients that cannot parse
    /// an event with empty data (mcp-gateway, in benchmarks).
    no_priming: bool,
    /// Speak 2026-07-28 only: every other request is refused as a server
    /// of that revision alone would (400, -32022).
    modern_only: bool,
}

/// Usage text printed on a command-line error.
const USAGE: &str = "usage: portcullis-fixture http --listen ADDR [--allow-any-host] [--stateless] [--json-response] [--no-sse-priming] [--modern-only] [--tools N]\n       portcullis-fixture stdio [--tools N]";

/// How many generated tools (`--tools N`) every session lists; set once at start.
static GENERATED_TOOLS: AtomicUsize = AtomicUsize::new(0);

/// Reads the value of `--tools`.
fn parse_tools(value: Option<&String>) -> Result<usize, String> {
    let value = value.ok_or("--tools needs a number")?;
    value
        .parse()
        .map_err(|e| format!("bad --tools count {value:?}: {e}"))
}

/// Parses the command line (without the program name).
fn parse_args(args: &[String]) -> Result<Mode, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("stdio") => {
            while let Some(arg) = it.next() {
                match arg.as_str() {
                    "--tools" => GENERATED_TOOLS.store(parse_tools(it.next())?, Ordering::Relaxed),
                    extra => return Err(format!("unexpected argument {extra:?}")),
                }
            }
            Ok(Mode::Stdio)
        }
        Some("http") => {
            let mut opts = HttpOptions {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                allow_any_host: false,
                stateless: false,
                json_response: false,
                no_priming: false,
                modern_only: false,
            };
            while let Some(arg) = it.next() {
                match arg.as_str() {
                    "--listen" => {
                        let value = it.next().ok_or("--listen needs an address")?;
                        opts.listen = value
                            .parse()
                            .map_err(|e| format!("bad --listen address {value:?}: {e}"))?;
                    }
                    "--allow-any-host" => opts.allow_any_host = true,
                    "--stateless" => opts.stateless = true,
                    "--json-response" => opts.json_response = true,
                    "--no-sse-priming" => opts.no_priming = true,
                    "--modern-only" => opts.modern_only = true,
                    "--tools" => GENERATED_TOOLS.store(parse_tools(it.next())?, Ordering::Relaxed),
                    other => return Err(format!("unexpected argument {other:?}")),
                }
            }
            Ok(Mode::Http(opts))
        }
        Some(other) => Err(format!("unknown mode {other:?}")),
        None => Err("missing mode".into()),
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match parse_args(&args) {
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("portcullis-fixture: {e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis-fixture: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match mode {
            Mode::Http(opts) => serve_http(opts).await,
            Mode::Stdio => serve_stdio().await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-fixture: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Transports
// ---------------------------------------------------------------------------

/// Serves one session over stdin/stdout until the client disconnects.
async fn serve_stdio() -> anyhow::Result<()> {
    let service = Fixture::new(None).serve(rmcp::transport::stdio()).await?;
    tokio::select! {
        quit = service.waiting() => { quit?; }
        () = shutdown_signal() => {}
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Response body type of the HTTP listener.
type HttpBody = BoxBody<Bytes, Infallible>;

/// Serves streamable HTTP on `/mcp` until SIGINT/SIGTERM.
async fn serve_http(opts: HttpOptions) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let sse_retry = (!opts.no_priming).then_some(SSE_RETRY);
    let mut config = StreamableHttpServerConfig::default()
        .with_sse_retry(sse_retry)
        .with_legacy_session_mode(!opts.stateless)
        .with_json_response(opts.json_response)
        .with_cancellation_token(shutdown.child_token());
    if opts.allow_any_host {
        config = config.disable_allowed_hosts();
    }

    let mut local = LocalSessionManager::default();
    local.session_config.sse_retry = sse_retry;
    let sessions = Arc::new(StreamTrackingSessions::new(local));
    let streams = sessions.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(Fixture::new(Some(streams.clone()))),
        sessions,
        config,
    );

    let listener = tokio::net::TcpListener::bind(opts.listen).await?;
    let addr = listener.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{addr}/mcp")?;
        stdout.flush()?;
    }

    let modern_only = opts.modern_only;
    let router = tower::service_fn(move |req: Request<Incoming>| {
        let mut mcp = mcp.clone();
        async move {
            if req.uri().path() != "/mcp" {
                return Ok(plain(StatusCode::NOT_FOUND, "not found\n"));
            }
            if !modern_only {
                return tower::Service::call(&mut mcp, req).await;
            }
            match modern_gate(req).await {
                Ok(req) => tower::Service::call(&mut mcp, req).await,
                Err(refusal) => Ok(refusal),
            }
        }
    });

    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Responses are written in pieces (headers, SSE events, the last
        // chunk); with Nagle's algorithm each would wait for the client's
        // delayed ACK (~40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    shutdown.cancel();
    Ok(())
}

/// Lets only 2026-07-28 requests through, as a server that speaks that
/// revision alone: a POST of any other version (an `initialize`, or a
/// request naming an older `MCP-Protocol-Version`) gets 400 with -32022
/// and the versions supported; the GET stream and DELETE of the
/// session-based revisions get 405.
async fn modern_gate(req: Request<Incoming>) -> Result<Request<Full<Bytes>>, Response<HttpBody>> {
    const MODERN: &str = "2026-07-28";
    if req.method() != http::Method::POST {
        return Err(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "this server speaks 2026-07-28 only\n",
        ));
    }
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|_| plain(StatusCode::BAD_REQUEST, "unreadable body\n"))?;
    let header = parts
        .headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if header.as_deref() != Some(MODERN) {
        let message: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let requested = header
            .map(Value::from)
            .or_else(|| message.pointer("/params/protocolVersion").cloned())
            .unwrap_or(Value::Null);
        let body = json!({
            "jsonrpc": "2.0",
            "id": message.get("id").cloned().unwrap_or(Value::Null),
            "error": {
                "code": -32022,
                "message": "Unsupported protocol version",
                "data": { "supported": [MODERN], "requested": requested },
            },
        });
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return Err(resp);
    }
    Ok(Request::from_parts(parts, Full::new(bytes)))
}

/// A plain-text HTTP response.
fn plain(status: StatusCode, body: &'static str) -> Response<HttpBody> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

// ---------------------------------------------------------------------------
// Session manager that remembers which SSE stream carries which tool call
// ---------------------------------------------------------------------------

/// Wraps rmcp's [`LocalSessionManager`] and records, for calls to
/// `test_reconnection`, which request-wise SSE stream carries the call, so
/// the tool can close that stream mid-call (SEP-1699 polling) and the client
/// must resume it with `Last-Event-ID`.
///
/// rmcp exposes `LocalSessionHandle::close_sse_stream`, but a handler has no
/// way to learn the stream's id; this wrapper creates the stream itself
/// (exactly as `LocalSessionManager::create_stream` does) and keeps the id.
#[derive(Debug)]
struct StreamTrackingSessions {
    /// The real session manager.
    inner: LocalSessionManager,
    /// `(session, JSON-RPC request id)` to the HTTP stream id of that request.
    streams: Mutex<HashMap<(SessionId, RequestId), u64>>,
}

impl StreamTrackingSessions {
    /// Wraps `inner`.
    fn new(inner: LocalSessionManager) -> Self {
        Self {
            inner,
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `message` is a `tools/call` of a tool that closes its stream.
    fn wants_tracking(message: &ClientJsonRpcMessage) -> Option<RequestId> {
        match message {
            ClientJsonRpcMessage::Request(req) => match &req.request {
                ClientRequest::CallToolRequest(call) if call.params.name == "test_reconnection" => {
                    Some(req.id.clone())
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Closes the SSE stream carrying request `id` of `session`, sending a
    /// priming event with a retry interval first. Returns whether a stream
    /// was closed.
    async fn close_stream(&self, session: &SessionId, id: &RequestId) -> bool {
        let stream = self
            .streams
            .lock()
            .ok()
            .and_then(|mut map| map.remove(&(session.clone(), id.clone())));
        let Some(stream) = stream else {
            return false;
        };
        let handle = self.inner.sessions.read().await.get(session).cloned();
        let Some(handle) = handle else {
            return false;
        };
        match handle.close_sse_stream(stream, Some(SSE_RETRY)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not close SSE stream");
                false
            }
        }
    }
}

impl SessionManager for StreamTrackingSessions {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        self.inner.create_session().await
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        self.inner.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        if let Ok(mut map) = self.streams.lock() {
            map.retain(|(session, _), _| session != id);
        }
        self.inner.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let Some(request_id) = Self::wants_tracking(&message) else {
            return Ok(futures::future::Either::Left(
                self.inner.create_stream(id, message).await?,
            ));
        };
        let handle = self
            .inner
            .sessions
            .read()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| LocalSessionManagerError::SessionNotFound(id.clone()))?;
        let receiver = handle.establish_request_wise_channel().await?;
        if let (Some(stream), Ok(mut map)) = (receiver.http_request_id, self.streams.lock()) {
            map.insert((id.clone(), request_id), stream);
        }
        handle
            .push_message(message, receiver.http_request_id)
            .await?;
        let mut rx = receiver.inner;
        Ok(futures::future::Either::Right(futures::stream::poll_fn(
            move |cx| rx.poll_recv(cx),
        )))
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.resume(id, last_event_id).await
    }

    async fn restore_session(
        &self,
        id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        self.inner.restore_session(id).await
    }

    fn event_store(&self) -> Option<Arc<dyn EventStore>> {
        self.inner.event_store()
    }
}

// ---------------------------------------------------------------------------
// The MCP server
// ---------------------------------------------------------------------------

/// One MCP session's server state.
#[derive(Clone)]
struct Fixture {
    /// Resource URIs this session subscribed to.
    subscriptions: Arc<Mutex<HashSet<String>>>,
    /// Minimum level of log notifications sent to this session.
    log_level: Arc<Mutex<LoggingLevel>>,
    /// The HTTP session manager, for closing SSE streams (absent on stdio).
    streams: Option<Arc<StreamTrackingSessions>>,
}

/// Numeric severity of a log level (higher is more severe).
fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// Turns a JSON value that is known to be an object into a [`JsonObject`].
fn object(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

/// The input schema of a tool without arguments.
fn no_args() -> JsonObject {
    object(json!({ "type": "object", "properties": {} }))
}

/// A tool-execution error result carrying `message` as text.
fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

/// The lowercase wire name of an elicitation action.
fn action_name(action: &ElicitationAction) -> String {
    serde_json::to_value(action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{action:?}").to_lowercase())
}

/// Tools defined by the JSON file named in `FIXTURE_EXTRA_TOOLS` (a list of
/// MCP tool definitions), read on every listing so a test can change a
/// definition under a running server. Calling one returns its name and
/// arguments as JSON text.
fn extra_tools() -> Vec<Tool> {
    let Some(path) = std::env::var_os("FIXTURE_EXTRA_TOOLS") else {
        return Vec::new();
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// The `--tools N` tools: `tool_{i}`, each taking one string and one integer.
fn generated_tools() -> Vec<Tool> {
    (0..GENERATED_TOOLS.load(Ordering::Relaxed))
        .map(|i| {
            let schema = object(json!({
                "type": "object",
                "properties": {
                    "text": { "type": "string", "description": "Any text" },
                    "count": { "type": "integer", "minimum": 0 },
                },
                "required": ["text"],
            }));
            Tool::new(
                format!("tool_{i}"),
                format!("Generated tool number {i} for benchmarks."),
                schema,
            )
        })
        .collect()
}

/// The tools this server offers, in listing order.
fn tools() -> Vec<Tool> {
    let mut all = tools_of_2025();
    all.extend(mrtr::tools());
    all.extend(listening::tools());
    all.extend(mrtr_rounds::tools());
    all.extend(stateless::tools());
    all.extend(custom_header::tools());
    all.extend(tasks::tools());
    all.extend(gates::tools());
    all
}

fn tools_of_2025() -> Vec<Tool> {
    vec![
        Tool::new(
            "test_simple_text",
            "Tests simple text content response",
            no_args(),
        ),
        Tool::new(
            "test_image_content",
            "Tests image content response",
            no_args(),
        ),
        Tool::new(
            "test_audio_content",
            "Tests audio content response",
            no_args(),
        ),
        Tool::new(
            "test_embedded_resource",
            "Tests embedded resource content response",
            no_args(),
        ),
        Tool::new(
            "test_multiple_content_types",
            "Tests response with multiple content types (text, image, resource)",
            no_args(),
        ),
        Tool::new(
            "test_tool_with_logging",
            "Tests tool that emits log messages during execution",
            no_args(),
        ),
        Tool::new(
            "test_tool_with_progress",
            "Tests tool that reports progress notifications",
            no_args(),
        ),
        Tool::new(
            "test_error_handling",
            "Tests error response handling",
            no_args(),
        ),
        Tool::new(
            "test_sampling",
            "Tests server-initiated sampling (LLM completion request)",
            object(json!({
                "type": "object",
                "properties": {
                    "prompt": { "type": "string", "description": "The prompt to send to the LLM" },
                    "modelPreferences": { "type": "object", "description": "Sent as the request's modelPreferences" }
                },
                "required": ["prompt"]
            })),
        ),
        Tool::new(
            "test_elicitation",
            "Tests server-initiated elicitation (user input request)",
            object(json!({
                "type": "object",
                "properties": {
                    "message": { "type": "string", "description": "The message to show the user" }
                },
                "required": ["message"]
            })),
        ),
        Tool::new(
            "test_elicitation_sep1034_defaults",
            "Tests elicitation with default values per SEP-1034",
            no_args(),
        ),
        Tool::new(
            "test_elicitation_sep1330_enums",
            "Tests elicitation with enum schema improvements per SEP-1330",
            no_args(),
        ),
        Tool::new(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
            object(json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": {
                    "address": {
                        "$anchor": "addressDef",
                        "type": "object",
                        "properties": {
                            "street": { "type": "string" },
                            "city": { "type": "string" }
                        }
                    }
                },
                "properties": {
                    "name": { "type": "string" },
                    "address": { "$ref": "#/$defs/address" },
                    "contactMethod": { "type": "string", "enum": ["phone", "email"] },
                    "phone": { "type": "string" },
                    "email": { "type": "string" }
                },
                "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
                "if": {
                    "properties": { "contactMethod": { "const": "phone" } },
                    "required": ["contactMethod"]
                },
                "then": { "required": ["phone"] },
                "else": { "required": ["email"] },
                "additionalProperties": false
            })),
        ),
        Tool::new(
            "test_reconnection",
            "Tests SSE stream disconnection and client reconnection (SEP-1699): closes the \
             request's SSE stream mid-call; the result arrives after the client resumes",
            no_args(),
        ),
        Tool::new(
            "echo",
            "Returns its `message` argument as text",
            object(json!({
                "type": "object",
                "properties": { "message": { "type": "string", "description": "Text to echo" } },
                "required": ["message"]
            })),
        ),
        Tool::new(
            "slow",
            "Sleeps `ms` milliseconds, then returns; reports progress when asked and \
             stops early when the call is cancelled",
            object(json!({
                "type": "object",
                "properties": {
                    "ms": { "type": "integer", "minimum": 0, "description": "Milliseconds to sleep" }
                },
                "required": ["ms"]
            })),
        ),
        Tool::new(
            "add",
            "Adds two numbers; returns structured content `{sum}`",
            object(json!({
                "type": "object",
                "properties": {
                    "a": { "type": "number" },
                    "b": { "type": "number" }
                },
                "required": ["a", "b"]
            })),
        )
        .with_raw_output_schema(Arc::new(object(json!({
            "type": "object",
            "properties": { "sum": { "type": "number" } },
            "required": ["sum"]
        })))),
        Tool::new(
            "headers",
            "Returns the HTTP request headers this call arrived with, as a JSON object",
            no_args(),
        ),
        Tool::new(
            "trigger_resource_update",
            "Sends notifications/resources/updated for `uri` (default test://watched-resource) \
             if this session subscribed to it",
            object(json!({
                "type": "object",
                "properties": { "uri": { "type": "string" } }
            })),
        ),
    ]
}

/// The static resources this server offers.
fn resources() -> Vec<Resource> {
    vec![
        Resource::new("test://static-text", "static-text")
            .with_title("Static Text Resource")
            .with_description("A static text resource for testing")
            .with_mime_type("text/plain"),
        Resource::new("test://static-binary", "static-binary")
            .with_title("Static Binary Resource")
            .with_description("A static binary resource (image) for testing")
            .with_mime_type("image/png"),
        Resource::new(WATCHED_URI, "watched-resource")
            .with_title("Watched Resource")
            .with_description("A resource that can be subscribed to")
            .with_mime_type("text/plain"),
    ]
}

/// Reads the `id` out of `test://template/{id}/data`.
fn template_id(uri: &str) -> Option<&str> {
    let id = uri
        .strip_prefix("test://template/")?
        .strip_suffix("/data")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The prompts this server offers.
fn prompts() -> Vec<Prompt> {
    vec![
        Prompt::new(
            "test_simple_prompt",
            Some("A simple prompt without arguments"),
            None,
        )
        .with_title("Simple Test Prompt"),
        Prompt::new(
            "test_prompt_with_arguments",
            Some("A prompt with required arguments"),
            Some(vec![
                PromptArgument::new("arg1")
                    .with_description("First test argument")
                    .with_required(true),
                PromptArgument::new("arg2")
                    .with_description("Second test argument")
                    .with_required(true),
            ]),
        )
        .with_title("Prompt With Arguments"),
        Prompt::new(
            "test_prompt_with_embedded_resource",
            Some("A prompt that includes an embedded resource"),
            Some(vec![PromptArgument::new("resourceUri")
                .with_description("URI of the resource to embed")
                .with_required(true)]),
        )
        .with_title("Prompt With Embedded Resource"),
        Prompt::new(
            "test_prompt_with_image",
            Some("A prompt that includes image content"),
            None,
        )
        .with_title("Prompt With Image"),
    ]
}

impl Fixture {
    /// A fresh session; `streams` is the HTTP session manager, if any.
    fn new(streams: Option<Arc<StreamTrackingSessions>>) -> Self {
        Self {
            subscriptions: Arc::new(Mutex::new(HashSet::new())),
            log_level: Arc::new(Mutex::new(LoggingLevel::Debug)),
            streams,
        }
    }

    /// Sends a log notification if `level` passes the session's threshold.
    async fn log(&self, cx: &RequestContext<RoleServer>, level: LoggingLevel, message: &str) {
        let threshold = self
            .log_level
            .lock()
            .map(|l| *l)
            .unwrap_or(LoggingLevel::Debug);
        if severity(level) < severity(threshold) {
            return;
        }
        let param = LoggingMessageNotificationParam::new(level, json!(message)).with_logger(LOGGER);
        if let Err(e) = cx.peer.notify_logging_message(param).await {
            tracing::debug!(error = %e, "log notification not delivered");
        }
    }

    /// Sends a progress notification when the caller asked for progress.
    async fn progress(
        cx: &RequestContext<RoleServer>,
        token: Option<&ProgressToken>,
        progress: f64,
        total: f64,
        message: String,
    ) {
        let Some(token) = token else {
            return;
        };
        let param = ProgressNotificationParam::new(token.clone(), progress)
            .with_total(total)
            .with_message(message);
        if let Err(e) = cx.peer.notify_progress(param).await {
            tracing::debug!(error = %e, "progress notification not delivered");
        }
    }

    /// Sends `elicitation/create` with `schema` and describes the answer.
    async fn elicit(
        cx: &RequestContext<RoleServer>,
        message: &str,
        schema: Value,
        label: &str,
    ) -> CallToolResult {
        let schema: ElicitationSchema = match serde_json::from_value(schema) {
            Ok(s) => s,
            Err(e) => return tool_error(format!("invalid elicitation schema: {e}")),
        };
        let request = ElicitRequest::new(ElicitRequestParams::FormElicitationParams {
            meta: None,
            message: message.to_owned(),
            requested_schema: schema,
        });
        match cx
            .peer
            .send_request(ServerRequest::ElicitRequest(request))
            .await
        {
            Ok(ClientResult::ElicitResult(result)) => {
                let content = result
                    .content
                    .as_ref()
                    .map(Value::to_string)
                    .unwrap_or_else(|| "{}".into());
                CallToolResult::success(vec![ContentBlock::text(format!(
                    "{label}: action={}, content={content}",
                    action_name(&result.action)
                ))])
            }
            Ok(other) => tool_error(format!("unexpected elicitation response: {other:?}")),
            Err(e) => tool_error(format!("Elicitation not supported or error: {e}")),
        }
    }

    /// Runs the tool `name` with `args`.
    async fn run_tool(
        &self,
        name: &str,
        args: &JsonObject,
        cx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let text = |s: &str| Ok(CallToolResult::success(vec![ContentBlock::text(s)]));
        match name {
            "test_simple_text" => text("This is a simple text response for testing."),
            "test_image_content" => Ok(CallToolResult::success(vec![ContentBlock::image(
                TEST_IMAGE_BASE64,
                "image/png",
            )])),
            "test_audio_content" => Ok(CallToolResult::success(vec![ContentBlock::audio(
                TEST_AUDIO_BASE64,
                "audio/wav",
            )])),
            "test_embedded_resource" => Ok(CallToolResult::success(vec![ContentBlock::resource(
                ResourceContents::text(
                    "This is an embedded resource content.",
                    "test://embedded-resource",
                )
                .with_mime_type("text/plain"),
            )])),
            "test_multiple_content_types" => Ok(CallToolResult::success(vec![
                ContentBlock::text("Multiple content types test:"),
                ContentBlock::image(TEST_IMAGE_BASE64, "image/png"),
                ContentBlock::resource(
                    ResourceContents::text(
                        json!({ "test": "data", "value": 123 }).to_string(),
                        "test://mixed-content-resource",
                    )
                    .with_mime_type("application/json"),
                ),
            ])),
            "test_tool_with_logging" => {
                self.log(cx, LoggingLevel::Info, "Tool execution started")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.log(cx, LoggingLevel::Info, "Tool processing data")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.log(cx, LoggingLevel::Info, "Tool execution completed")
                    .await;
                text("Tool with logging executed successfully")
            }
            "test_tool_with_progress" => {
                let token = cx.meta.get_progress_token();
                for step in [0.0, 50.0, 100.0] {
                    if step > 0.0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Self::progress(
                        cx,
                        token.as_ref(),
                        step,
                        100.0,
                        format!("Completed step {step} of 100"),
                    )
                    .await;
                }
                let shown = token
                    .map(|t| match serde_json::to_value(&t) {
                        Ok(Value::String(s)) => s,
                        Ok(other) => other.to_string(),
                        Err(_) => String::new(),
                    })
                    .unwrap_or_else(|| "no progress token".into());
                text(&shown)
            }
            "test_error_handling" => Ok(tool_error(
                "This tool intentionally returns an error for testing",
            )),
            "test_sampling" => {
                let Some(prompt) = args.get("prompt").and_then(Value::as_str) else {
                    return Ok(tool_error("argument `prompt` (string) is required"));
                };
                let mut params =
                    CreateMessageRequestParams::new(vec![SamplingMessage::user_text(prompt)], 100);
                // Passed through as given, so tests can see how the client
                // chooses a model.
                if let Some(prefs) = args.get("modelPreferences") {
                    match serde_json::from_value(prefs.clone()) {
                        Ok(prefs) => params.model_preferences = Some(prefs),
                        Err(e) => return Ok(tool_error(format!("bad `modelPreferences`: {e}"))),
                    }
                }
                match cx.peer.create_message(params).await {
                    Ok(result) => {
                        let reply = result
                            .message
                            .content
                            .iter()
                            .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
                            .collect::<Vec<_>>()
                            .join("");
                        text(&format!("LLM response: {reply}"))
                    }
                    Err(e) => Ok(tool_error(format!("Sampling not supported or error: {e}"))),
                }
            }
            "test_elicitation" => {
                let Some(message) = args.get("message").and_then(Value::as_str) else {
                    return Ok(tool_error("argument `message` (string) is required"));
                };
                let schema = json!({
                    "type": "object",
                    "properties": {
                        "username": { "type": "string", "description": "User's response" },
                        "email": { "type": "string", "description": "User's email address" }
                    },
                    "required": ["username", "email"]
                });
                Ok(Self::elicit(cx, message, schema, "User response").await)
            }
            "test_elicitation_sep1034_defaults" => {
                let schema = json!({
                    "type": "object",
                    "properties": {
                        "name": { "type": "string", "description": "User name", "default": "John Doe" },
                        "age": { "type": "integer", "description": "User age", "default": 30 },
                        "score": { "type": "number", "description": "User score", "default": 95.5 },
                        "status": {
                            "type": "string",
                            "description": "User status",
                            "enum": ["active", "inactive", "pending"],
                            "default": "active"
                        },
                        "verified": { "type": "boolean", "description": "Verification status", "default": true }
                    },
                    "required": []
                });
                Ok(Self::elicit(
                    cx,
                    "Please review and update the form fields with defaults",
                    schema,
                    "Elicitation completed",
                )
                .await)
            }
            "test_elicitation_sep1330_enums" => {
                let schema = json!({
                    "type": "object",
                    "properties": {
                        "untitledSingle": {
                            "type": "string",
                            "description": "Select one option",
                            "enum": ["option1", "option2", "option3"]
                        },
                        "titledSingle": {
                            "type": "string",
                            "description": "Select one option with titles",
                            "oneOf": [
                                { "const": "value1", "title": "First Option" },
                                { "const": "value2", "title": "Second Option" },
                                { "const": "value3", "title": "Third Option" }
                            ]
                        },
                        "legacyEnum": {
                            "type": "string",
                            "description": "Select one option (legacy)",
                            "enum": ["opt1", "opt2", "opt3"],
                            "enumNames": ["Option One", "Option Two", "Option Three"]
                        },
                        "untitledMulti": {
                            "type": "array",
                            "description": "Select multiple options",
                            "minItems": 1,
                            "maxItems": 3,
                            "items": { "type": "string", "enum": ["option1", "option2", "option3"] }
                        },
                        "titledMulti": {
                            "type": "array",
                            "description": "Select multiple options with titles",
                            "minItems": 1,
                            "maxItems": 3,
                            "items": {
                                "anyOf": [
                                    { "const": "value1", "title": "First Choice" },
                                    { "const": "value2", "title": "Second Choice" },
                                    { "const": "value3", "title": "Third Choice" }
                                ]
                            }
                        }
                    },
                    "required": []
                });
                Ok(Self::elicit(
                    cx,
                    "Please select options from the enum fields",
                    schema,
                    "Elicitation completed",
                )
                .await)
            }
            "json_schema_2020_12_tool" => text(&format!(
                "JSON Schema 2020-12 tool called with: {}",
                Value::Object(args.clone())
            )),
            "test_reconnection" => {
                let closed = match (&self.streams, session_id(cx)) {
                    (Some(streams), Some(session)) => streams.close_stream(&session, &cx.id).await,
                    _ => false,
                };
                // Give the client time to notice the closed stream and resume.
                tokio::time::sleep(Duration::from_millis(if closed { 200 } else { 100 })).await;
                text(
                    "Reconnection test completed successfully. If you received this, the client \
                     properly reconnected after stream closure.",
                )
            }
            "headers" => {
                let headers: serde_json::Map<String, Value> = cx
                    .extensions
                    .get::<http::request::Parts>()
                    .map(|p| {
                        p.headers
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.as_str().to_owned(),
                                    Value::from(v.to_str().unwrap_or("<binary>")),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                text(&Value::Object(headers).to_string())
            }
            name if name
                .strip_prefix("tool_")
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n < GENERATED_TOOLS.load(Ordering::Relaxed)) =>
            {
                text(&json!({ "tool": name, "arguments": args }).to_string())
            }
            name if extra_tools().iter().any(|t| t.name == name) => {
                text(&json!({ "tool": name, "arguments": args }).to_string())
            }
            "echo" => match args.get("message").and_then(Value::as_str) {
                Some(message) => text(message),
                None => Ok(tool_error("argument `message` (string) is required")),
            },
            "slow" => {
                let Some(ms) = args.get("ms").and_then(Value::as_u64) else {
                    return Ok(tool_error(
                        "argument `ms` (non-negative integer) is required",
                    ));
                };
                let ms = ms.min(MAX_SLOW_MS);
                let token = cx.meta.get_progress_token();
                let steps: u32 = if token.is_some() { 10 } else { 1 };
                let step = Duration::from_millis(ms) / steps;
                for i in 0..steps {
                    Self::progress(
                        cx,
                        token.as_ref(),
                        f64::from(i),
                        f64::from(steps),
                        format!("step {i} of {steps}"),
                    )
                    .await;
                    tokio::select! {
                        () = tokio::time::sleep(step) => {}
                        () = cx.ct.cancelled() => {
                            return Err(ErrorData::internal_error("slow: cancelled", None));
                        }
                    }
                }
                Self::progress(
                    cx,
                    token.as_ref(),
                    f64::from(steps),
                    f64::from(steps),
                    "done".into(),
                )
                .await;
                text(&format!("slept {ms} ms"))
            }
            "add" => {
                let (Some(a), Some(b)) = (
                    args.get("a").and_then(Value::as_f64),
                    args.get("b").and_then(Value::as_f64),
                ) else {
                    return Ok(tool_error("arguments `a` and `b` (numbers) are required"));
                };
                Ok(CallToolResult::structured(json!({ "sum": a + b })))
            }
            "trigger_resource_update" => {
                let uri = args
                    .get("uri")
                    .and_then(Value::as_str)
                    .unwrap_or(WATCHED_URI)
                    .to_owned();
                let subscribed = self
                    .subscriptions
                    .lock()
                    .map(|s| s.contains(&uri))
                    .unwrap_or(false);
                let listeners = listening::resource_updated(&uri).await;
                if !subscribed {
                    return text(&format!(
                        "sent update for {uri} to {listeners} listener(s); this session is not subscribed"
                    ));
                }
                match cx
                    .peer
                    .notify_resource_updated(ResourceUpdatedNotificationParam::new(uri.clone()))
                    .await
                {
                    Ok(()) => text(&format!("sent update for {uri}")),
                    Err(e) => Ok(tool_error(format!("could not notify: {e}"))),
                }
            }
            other => Err(ErrorData::invalid_params(
                format!("Unknown tool: {other}"),
                None,
            )),
        }
    }
}

/// The `Mcp-Session-Id` of the HTTP request that carried this MCP request.
fn session_id(cx: &RequestContext<RoleServer>) -> Option<SessionId> {
    let parts = cx.extensions.get::<http::request::Parts>()?;
    let value = parts.headers.get("mcp-session-id")?.to_str().ok()?;
    Some(SessionId::from(value))
}

/// Completion candidates: `values` that start with `prefix`.
fn complete_from(values: &[&str], prefix: &str) -> Vec<String> {
    values
        .iter()
        .filter(|v| v.starts_with(prefix))
        .map(|v| (*v).to_owned())
        .collect()
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_tool_list_changed()
                .enable_prompts()
                .enable_prompts_list_changed()
                .enable_logging()
                .enable_completions()
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")))
        .with_instructions("Test fixture for portcullis and the MCP conformance suite.")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut all = tools();
        all.extend(generated_tools());
        all.extend(extra_tools());
        Ok(ListToolsResult::with_all_items(all))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools()
            .into_iter()
            .chain(generated_tools())
            .chain(extra_tools())
            .find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if let Some(round) = mrtr::call(&request) {
            return round;
        }
        if let Some(result) = listening::call(&request, &cx).await {
            return Ok(result.into());
        }
        if let Some(round) = mrtr_rounds::call(&request, cx.client_capabilities().as_ref()) {
            return round;
        }
        if let Some(answer) = stateless::call(&request, &cx).await {
            return answer;
        }
        if let Some(answer) = custom_header::call(&request) {
            return Ok(answer.into());
        }
        if let Some(answer) = tasks::call(&request, &cx).await {
            return answer;
        }
        if let Some(answer) = gates::call(&request, &cx).await {
            return answer.map(CallToolResponse::from);
        }
        let args = request.arguments.unwrap_or_default();
        self.run_tool(&request.name, &args, &cx)
            .await
            .map(CallToolResponse::from)
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        tasks::get(request)
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        tasks::update(request)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        tasks::cancel(request)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let mut all = resources();
        all.extend(mrtr_rounds::resources());
        Ok(ListResourcesResult::with_all_items(all))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("test://template/{id}/data", "template")
                .with_title("Resource Template")
                .with_description("A resource template with parameter substitution")
                .with_mime_type("application/json"),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if let Some(round) = mrtr_rounds::resource(&request) {
            return round;
        }
        let uri = request.uri.as_str();
        let contents = match uri {
            "test://static-text" => {
                ResourceContents::text("This is the content of the static text resource.", uri)
                    .with_mime_type("text/plain")
            }
            "test://static-binary" => {
                ResourceContents::blob(TEST_IMAGE_BASE64, uri).with_mime_type("image/png")
            }
            WATCHED_URI => {
                ResourceContents::text("Watched resource content", uri).with_mime_type("text/plain")
            }
            _ => match template_id(uri) {
                Some(id) => ResourceContents::text(
                    json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") })
                        .to_string(),
                    uri,
                )
                .with_mime_type("application/json"),
                None => {
                    return Err(ErrorData::resource_not_found(
                        format!("Resource not found: {uri}"),
                        Some(json!({ "uri": uri })),
                    ))
                }
            },
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        Some(listening::accepted(requested))
    }

    async fn listen(&self, cx: rmcp::service::SubscriptionContext) -> Result<(), ErrorData> {
        listening::listen(cx).await
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if let Ok(mut subs) = self.subscriptions.lock() {
            subs.insert(request.uri);
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if let Ok(mut subs) = self.subscriptions.lock() {
            subs.remove(&request.uri);
        }
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let mut all = prompts();
        all.extend(mrtr_rounds::prompts());
        Ok(ListPromptsResult::with_all_items(all))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        if let Some(round) = mrtr_rounds::prompt(&request) {
            return round;
        }
        let args = request.arguments.unwrap_or_default();
        let arg = |name: &str| -> Result<String, ErrorData> {
            args.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    ErrorData::invalid_params(format!("missing required argument {name:?}"), None)
                })
        };
        let messages = match request.name.as_str() {
            "test_simple_prompt" => vec![PromptMessage::new_text(
                Role::User,
                "This is a simple prompt for testing.",
            )],
            "test_prompt_with_arguments" => {
                let (arg1, arg2) = (arg("arg1")?, arg("arg2")?);
                vec![PromptMessage::new_text(
                    Role::User,
                    format!("Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"),
                )]
            }
            "test_prompt_with_embedded_resource" => {
                let uri = arg("resourceUri")?;
                vec![
                    PromptMessage::new(
                        Role::User,
                        ContentBlock::resource(
                            ResourceContents::text("Embedded resource content for testing.", uri)
                                .with_mime_type("text/plain"),
                        ),
                    ),
                    PromptMessage::new_text(
                        Role::User,
                        "Please process the embedded resource above.",
                    ),
                ]
            }
            "test_prompt_with_image" => vec![
                PromptMessage::new(
                    Role::User,
                    ContentBlock::image(TEST_IMAGE_BASE64, "image/png"),
                ),
                PromptMessage::new_text(Role::User, "Please analyze the image above."),
            ],
            other => {
                return Err(ErrorData::invalid_params(
                    format!("Unknown prompt: {other}"),
                    None,
                ))
            }
        };
        Ok(GetPromptResult::new(messages).into())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let prefix = request.argument.value.as_str();
        let values = match (&request.r#ref, request.argument.name.as_str()) {
            (Reference::Prompt(p), "arg1" | "arg2") if p.name == "test_prompt_with_arguments" => {
                complete_from(&["paris", "park", "party", "test", "testValue"], prefix)
            }
            (Reference::Prompt(p), "resourceUri")
                if p.name == "test_prompt_with_embedded_resource" =>
            {
                complete_from(
                    &["test://static-text", "test://static-binary", WATCHED_URI],
                    prefix,
                )
            }
            (Reference::Resource(r), "id") if r.uri == "test://template/{id}/data" => {
                complete_from(&["1", "2", "3", "123"], prefix)
            }
            _ => Vec::new(),
        };
        let info = CompletionInfo::new(values).map_err(|e| ErrorData::internal_error(e, None))?;
        Ok(CompleteResult::new(info))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if let Ok(mut level) = self.log_level.lock() {
            *level = request.level;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_args() {
        let args: Vec<String> = ["http", "--listen", "127.0.0.1:0", "--allow-any-host"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        match parse_args(&args) {
            Ok(Mode::Http(opts)) => {
                assert_eq!(opts.listen.port(), 0);
                assert!(opts.allow_any_host);
                assert!(!opts.stateless);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse_args(&["stdio".to_string()]).is_ok());
        assert!(parse_args(&["bogus".to_string()]).is_err());
        assert!(parse_args(&["http".to_string(), "--listen".to_string()]).is_err());
    }

    #[test]
    fn generated_tools_are_listed_and_callable_by_name() {
        let args: Vec<String> = ["stdio", "--tools", "3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(matches!(parse_args(&args), Ok(Mode::Stdio)));
        let names: Vec<String> = generated_tools()
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        assert_eq!(names, ["tool_0", "tool_1", "tool_2"]);
        let bad: Vec<String> = ["stdio", "--tools", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(parse_args(&bad).is_err());
    }

    #[test]
    fn template_ids() {
        assert_eq!(template_id("test://template/123/data"), Some("123"));
        assert_eq!(template_id("test://template//data"), None);
        assert_eq!(template_id("test://template/a/b/data"), None);
        assert_eq!(template_id("test://static-text"), None);
    }

    #[test]
    fn elicitation_schemas_round_trip() {
        // The SEP-1330 legacy `enumNames` and the SEP-1034 defaults must
        // survive rmcp's typed ElicitationSchema.
        let schema = json!({
            "type": "object",
            "properties": {
                "legacyEnum": {
                    "type": "string",
                    "enum": ["opt1", "opt2"],
                    "enumNames": ["One", "Two"]
                },
                "age": { "type": "integer", "default": 30 }
            }
        });
        let typed: ElicitationSchema = serde_json::from_value(schema).expect("parses");
        let back = serde_json::to_value(&typed).expect("serializes");
        assert_eq!(back["properties"]["legacyEnum"]["enumNames"][1], "Two");
        assert_eq!(back["properties"]["age"]["default"], 30);
    }

    #[test]
    fn every_tool_has_description_and_object_schema() {
        for tool in tools() {
            assert!(tool.description.is_some(), "{}", tool.name);
            assert_eq!(
                tool.input_schema.get("type"),
                Some(&json!("object")),
                "{}",
                tool.name
            );
        }
    }
}

/// Tools that answer in 2026-07-28 style, with an `InputRequiredResult`
/// (multi round-trip requests) instead of a server-to-client request, for
/// the conformance suite's `input-required-result-*` scenarios.
mod mrtr {
    use rmcp::model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
        InputRequest, InputRequests, InputRequiredResult, Tool,
    };
    use serde_json::{json, Value};
    use sha2::{Digest, Sha256};

    const KEY: &str = "fixture-request-state-key";

    pub(super) fn tools() -> Vec<Tool> {
        [
            (
                "test_input_required_result_elicitation",
                "Asks for the user's name by InputRequiredResult",
            ),
            (
                "test_input_required_result_sampling",
                "Asks the client to sample by InputRequiredResult",
            ),
            (
                "test_input_required_result_list_roots",
                "Asks for the client's roots by InputRequiredResult",
            ),
            (
                "test_input_required_result_request_state",
                "InputRequiredResult with requestState",
            ),
            (
                "test_input_required_result_tampered_state",
                "InputRequiredResult with integrity-protected requestState",
            ),
        ]
        .into_iter()
        .map(|(name, description)| Tool::new(name, description, super::no_args()))
        .collect()
    }

    pub(super) fn input(method: &str, params: Value) -> Option<InputRequest> {
        serde_json::from_value(json!({ "method": method, "params": params })).ok()
    }

    pub(super) fn ask(
        key: &str,
        input: Option<InputRequest>,
        state: Option<String>,
    ) -> CallToolResponse {
        let mut requests = InputRequests::new();
        if let Some(input) = input {
            requests.insert(key.to_owned(), input);
        }
        let mut r = match state {
            Some(s) => InputRequiredResult::from_request_state(s),
            None => InputRequiredResult::from_request_state(String::new()),
        };
        if r.request_state.as_deref() == Some("") {
            r.request_state = None;
        }
        r.input_requests = Some(requests);
        CallToolResponse::InputRequired(r)
    }

    pub(super) fn text(t: String) -> CallToolResponse {
        CallToolResponse::Complete(CallToolResult::success(vec![ContentBlock::text(t)]))
    }

    pub(super) fn sign(payload: &str) -> String {
        let mac: String = Sha256::digest(format!("{KEY}.{payload}").as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{payload}.{mac}")
    }

    pub(super) fn verify(state: &str) -> bool {
        state
            .rsplit_once('.')
            .is_some_and(|(payload, _)| sign(payload) == state)
    }

    pub(super) fn elicitation(message: &str, schema: Value) -> Option<InputRequest> {
        input(
            "elicitation/create",
            json!({ "mode": "form", "message": message, "requestedSchema": schema }),
        )
    }

    /// The tool's answer, or `None` when `request` is not one of these tools.
    pub(super) fn call(
        request: &CallToolRequestParams,
    ) -> Option<Result<CallToolResponse, ErrorData>> {
        let answer = |key: &str| request.input_responses.as_ref().and_then(|r| r.get(key));
        let name_schema = json!({
            "type": "object", "properties": { "name": { "type": "string" } }, "required": ["name"]
        });
        Some(Ok(match &*request.name {
            "test_input_required_result_elicitation" => match answer("user_name") {
                Some(Value::Object(a)) => {
                    let name = a
                        .get("content")
                        .and_then(|c| c.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or("stranger");
                    text(format!("Hello, {name}!"))
                }
                Some(_) => {
                    return Some(Err(ErrorData::invalid_params(
                        "inputResponses.user_name must be an ElicitResult object",
                        None,
                    )))
                }
                None => ask(
                    "user_name",
                    elicitation("What is your name?", name_schema),
                    None,
                ),
            },
            "test_input_required_result_sampling" => match answer("capital_question") {
                Some(a) => text(format!(
                    "Sampling said: {}",
                    a.pointer("/content/text")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                )),
                None => ask(
                    "capital_question",
                    input(
                        "sampling/createMessage",
                        json!({
                            "messages": [{ "role": "user", "content": { "type": "text", "text": "What is the capital of France?" } }],
                            "maxTokens": 100
                        }),
                    ),
                    None,
                ),
            },
            "test_input_required_result_list_roots" => match answer("client_roots") {
                Some(a) => text(format!(
                    "Roots: {}",
                    a.get("roots").map(Value::to_string).unwrap_or_default()
                )),
                None => ask("client_roots", input("roots/list", json!({})), None),
            },
            "test_input_required_result_request_state"
            | "test_input_required_result_tampered_state" => {
                let confirm = json!({
                    "type": "object", "properties": { "ok": { "type": "boolean" } }, "required": ["ok"]
                });
                match (&request.request_state, answer("confirm")) {
                    (Some(state), Some(_)) if verify(state) => text("state-ok: confirmed".into()),
                    (Some(_), _) => {
                        return Some(Err(ErrorData::invalid_params(
                            "requestState failed its integrity check",
                            None,
                        )))
                    }
                    (None, _) => ask(
                        "confirm",
                        elicitation("Please confirm", confirm),
                        Some(sign("round-1")),
                    ),
                }
            }
            _ => return None,
        }))
    }
}

/// `subscriptions/listen` (2026-07-28): the open listen streams of every
/// client (requests are stateless, so the registry is process-wide), and
/// the conformance suite's hooks that change lists. Kept in its own module
/// so other fixture additions merge cleanly.
mod listening {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{LazyLock, Mutex};

    use rmcp::model::{
        CallToolRequestParams, CallToolResult, ContentBlock, ErrorData, ProtocolVersion,
        SubscriptionFilter, Tool,
    };
    use rmcp::service::{RequestContext, SubscriptionContext, SubscriptionSink};
    use rmcp::RoleServer;

    static STREAMS: LazyLock<Mutex<Vec<(u64, SubscriptionSink)>>> =
        LazyLock::new(|| Mutex::new(Vec::new()));
    static NEXT: AtomicU64 = AtomicU64::new(0);

    fn sinks() -> Vec<SubscriptionSink> {
        STREAMS
            .lock()
            .map(|s| s.iter().map(|(_, sink)| sink.clone()).collect())
            .unwrap_or_default()
    }

    /// Every category the fixture can send: lists and any resource URI.
    pub(super) fn accepted(requested: &SubscriptionFilter) -> SubscriptionFilter {
        requested.clone()
    }

    /// Holds a stream open until the client closes it.
    pub(super) async fn listen(cx: SubscriptionContext) -> Result<(), ErrorData> {
        let key = NEXT.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = STREAMS.lock() {
            s.push((key, cx.sink().clone()));
        }
        cx.cancelled().await;
        if let Ok(mut s) = STREAMS.lock() {
            s.retain(|(k, _)| *k != key);
        }
        Ok(())
    }

    /// Sends `notifications/resources/updated` to the streams listening to
    /// `uri`; returns how many got it.
    pub(super) async fn resource_updated(uri: &str) -> usize {
        let mut sent = 0;
        for sink in sinks() {
            if sink.notify_resource_updated(uri).await.is_ok() {
                sent += 1;
            }
        }
        sent
    }

    pub(super) fn tools() -> Vec<Tool> {
        [
            (
                "test_trigger_tool_change",
                "Announces a tools/list change (listen streams and legacy sessions)",
            ),
            (
                "test_trigger_prompt_change",
                "Announces a prompts/list change (listen streams and legacy sessions)",
            ),
        ]
        .into_iter()
        .map(|(name, description)| Tool::new(name, description, super::no_args()))
        .collect()
    }

    /// The tool's answer, or `None` when `request` is not one of these tools.
    pub(super) async fn call(
        request: &CallToolRequestParams,
        cx: &RequestContext<RoleServer>,
    ) -> Option<CallToolResult> {
        let tools = match &*request.name {
            "test_trigger_tool_change" => true,
            "test_trigger_prompt_change" => false,
            _ => return None,
        };
        let mut sent = 0;
        for sink in sinks() {
            let r = if tools {
                sink.notify_tool_list_changed().await
            } else {
                sink.notify_prompt_list_changed().await
            };
            if r.is_ok() {
                sent += 1;
            }
        }
        // A legacy session hears it on its own connection; a 2026 request's
        // stream carries only its own answer.
        let legacy = cx
            .protocol_version()
            .is_none_or(|v| v < ProtocolVersion::V_2026_07_28);
        if legacy {
            let r = if tools {
                cx.peer.notify_tool_list_changed().await
            } else {
                cx.peer.notify_prompt_list_changed().await
            };
            if r.is_ok() {
                sent += 1;
            }
        }
        Some(CallToolResult::success(vec![ContentBlock::text(format!(
            "notified {sent} listener(s)"
        ))]))
    }
}

/// More multi round-trip shapes the 2026-07-28 conformance suite calls:
/// several rounds with an evolving `requestState`, several input requests
/// in one round, requests limited to the client's declared capabilities,
/// and an `InputRequiredResult` from `prompts/get` (and, for the gateway's
/// tests, from `resources/read`). A separate module so other fixture
/// additions merge cleanly.
mod mrtr_rounds {
    use rmcp::model::{
        CallToolRequestParams, CallToolResponse, ClientCapabilities, ErrorData,
        GetPromptRequestParams, GetPromptResponse, GetPromptResult, InputRequest, InputRequests,
        InputRequiredResult, Prompt, PromptMessage, ReadResourceRequestParams,
        ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, Role, Tool,
    };
    use serde_json::{json, Value};

    use super::mrtr::{ask, elicitation, input, sign, text, verify};

    const PROMPT: &str = "test_input_required_result_prompt";
    const RESOURCE: &str = "test://input-required";

    pub(super) fn tools() -> Vec<Tool> {
        [
            (
                "test_input_required_result_multi_round",
                "Asks twice, with a requestState that changes between rounds",
            ),
            (
                "test_input_required_result_multiple_inputs",
                "Asks for elicitation, sampling and roots in one round",
            ),
            (
                "test_input_required_result_capabilities",
                "Asks only for inputs the client declared it can give",
            ),
        ]
        .into_iter()
        .map(|(name, description)| Tool::new(name, description, super::no_args()))
        .collect()
    }

    pub(super) fn prompts() -> Vec<Prompt> {
        vec![Prompt::new(
            PROMPT,
            Some("A prompt that asks the user for context first"),
            None,
        )]
    }

    fn schema(field: &str) -> Value {
        json!({
            "type": "object", "properties": { field: { "type": "string" } }, "required": [field]
        })
    }

    fn sampling(text: &str) -> Option<InputRequest> {
        input(
            "sampling/createMessage",
            json!({
                "messages": [{ "role": "user", "content": { "type": "text", "text": text } }],
                "maxTokens": 50
            }),
        )
    }

    /// An `InputRequiredResult` with every request in `requests`.
    fn ask_all(requests: Vec<(&str, Option<InputRequest>)>, state: String) -> CallToolResponse {
        let mut all = InputRequests::new();
        for (key, request) in requests {
            if let Some(request) = request {
                all.insert(key.to_owned(), request);
            }
        }
        let mut r = InputRequiredResult::from_request_state(state);
        r.input_requests = Some(all);
        CallToolResponse::InputRequired(r)
    }

    fn bad_state() -> Result<CallToolResponse, ErrorData> {
        Err(ErrorData::invalid_params(
            "requestState failed its integrity check",
            None,
        ))
    }

    /// The tool's answer, or `None` when `request` is not one of these tools.
    pub(super) fn call(
        request: &CallToolRequestParams,
        caps: Option<&ClientCapabilities>,
    ) -> Option<Result<CallToolResponse, ErrorData>> {
        let answer = |key: &str| request.input_responses.as_ref().and_then(|r| r.get(key));
        let state = request.request_state.as_deref();
        Some(Ok(match &*request.name {
            "test_input_required_result_multi_round" => match state {
                None => ask(
                    "step1",
                    elicitation("Step 1: What is your name?", schema("name")),
                    Some(sign("multi-round-1")),
                ),
                Some(s) if s == sign("multi-round-1") && answer("step1").is_some() => ask(
                    "step2",
                    elicitation("Step 2: What is your favorite color?", schema("color")),
                    Some(sign("multi-round-2")),
                ),
                Some(s) if s == sign("multi-round-2") && answer("step2").is_some() => {
                    text("Both steps answered".into())
                }
                Some(_) => return Some(bad_state()),
            },
            "test_input_required_result_multiple_inputs" => match state {
                None => ask_all(
                    vec![
                        (
                            "user_name",
                            elicitation("What is your name?", schema("name")),
                        ),
                        ("greeting", sampling("Generate a greeting")),
                        ("client_roots", input("roots/list", json!({}))),
                    ],
                    sign("multiple-inputs"),
                ),
                Some(s) if verify(s) => {
                    let keys = ["user_name", "greeting", "client_roots"];
                    if keys.iter().all(|k| answer(k).is_some()) {
                        text("All three inputs answered".into())
                    } else {
                        return Some(Err(ErrorData::invalid_params(
                            "inputResponses must answer user_name, greeting and client_roots",
                            None,
                        )));
                    }
                }
                Some(_) => return Some(bad_state()),
            },
            "test_input_required_result_capabilities" => {
                let caps = caps.cloned().unwrap_or_default();
                match state {
                    None => {
                        let mut wanted = Vec::new();
                        if caps.elicitation.is_some() {
                            wanted.push((
                                "user_name",
                                elicitation("What is your name?", schema("name")),
                            ));
                        }
                        if caps.sampling.is_some() {
                            wanted.push(("greeting", sampling("Generate a greeting")));
                        }
                        if caps.roots.is_some() {
                            wanted.push(("client_roots", input("roots/list", json!({}))));
                        }
                        if wanted.is_empty() {
                            text("No input the client can give".into())
                        } else {
                            ask_all(wanted, sign("capabilities"))
                        }
                    }
                    Some(s) if verify(s) => text("Declared inputs answered".into()),
                    Some(_) => return Some(bad_state()),
                }
            }
            _ => return None,
        }))
    }

    pub(super) fn resources() -> Vec<Resource> {
        vec![Resource::new(RESOURCE, "input-required")
            .with_description("A resource that asks which section to read first")
            .with_mime_type("text/plain")]
    }

    /// The answer the client gave to the elicitation `key`, by field.
    fn answered(
        responses: Option<&rmcp::model::InputResponses>,
        key: &str,
        field: &str,
    ) -> Option<String> {
        responses.and_then(|r| r.get(key)).map(|a| {
            a.pointer(&format!("/content/{field}"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        })
    }

    /// One elicitation for `field`, with no `requestState`.
    fn ask_for(key: &str, message: &str, field: &str) -> InputRequiredResult {
        let mut requests = InputRequests::new();
        if let Some(r) = elicitation(message, schema(field)) {
            requests.insert(key.to_owned(), r);
        }
        let mut r = InputRequiredResult::from_request_state(String::new());
        r.request_state = None;
        r.input_requests = Some(requests);
        r
    }

    /// The resource's answer, or `None` when `request` is not this resource.
    pub(super) fn resource(
        request: &ReadResourceRequestParams,
    ) -> Option<Result<ReadResourceResponse, ErrorData>> {
        if request.uri != RESOURCE {
            return None;
        }
        Some(Ok(
            match answered(request.input_responses.as_ref(), "section", "section") {
                Some(section) => ReadResourceResponse::Complete(ReadResourceResult::new(vec![
                    ResourceContents::text(format!("Section {section}"), RESOURCE),
                ])),
                None => ReadResourceResponse::InputRequired(ask_for(
                    "section",
                    "Which section should be read?",
                    "section",
                )),
            },
        ))
    }

    /// The prompt's answer, or `None` when `request` is not this prompt.
    pub(super) fn prompt(
        request: &GetPromptRequestParams,
    ) -> Option<Result<GetPromptResponse, ErrorData>> {
        if request.name != PROMPT {
            return None;
        }
        let context = answered(request.input_responses.as_ref(), "user_context", "context");
        Some(Ok(match context {
            Some(context) => {
                GetPromptResponse::Complete(GetPromptResult::new(vec![PromptMessage::new_text(
                    Role::User,
                    format!("Use this context: {context}"),
                )]))
            }
            None => GetPromptResponse::InputRequired(ask_for(
                "user_context",
                "What context should the prompt use?",
                "context",
            )),
        }))
    }
}

/// Diagnostic tools of the 2026-07-28 `server-stateless` scenario: a tool
/// that needs a capability the client must declare in `_meta`, one that
/// asks for input mid-call (by `InputRequiredResult`, never a request on
/// the response stream), and one that logs only at the `_meta` log level.
/// A separate module so other fixture additions merge cleanly.
mod stateless {
    use rmcp::model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode,
        ErrorData, LoggingLevel, LoggingMessageNotificationParam, Tool,
    };
    use rmcp::service::RequestContext;
    use rmcp::RoleServer;
    use serde_json::json;

    use super::mrtr::{ask, elicitation};

    pub(super) fn tools() -> Vec<Tool> {
        [
            (
                "test_missing_capability",
                "Needs the sampling capability, declared in the request's _meta",
            ),
            (
                "test_streaming_elicitation",
                "Asks for the user's name mid-call, by InputRequiredResult",
            ),
            (
                "test_logging_tool",
                "Logs at every level, only at or above the request's _meta log level",
            ),
        ]
        .into_iter()
        .map(|(name, description)| Tool::new(name, description, super::no_args()))
        .collect()
    }

    fn text(t: &str) -> CallToolResponse {
        CallToolResponse::Complete(CallToolResult::success(vec![ContentBlock::text(t)]))
    }

    /// The tool's answer, or `None` when `request` is not one of these tools.
    pub(super) async fn call(
        request: &CallToolRequestParams,
        cx: &RequestContext<RoleServer>,
    ) -> Option<Result<CallToolResponse, ErrorData>> {
        let caps = cx.client_capabilities().unwrap_or_default();
        Some(match &*request.name {
            "test_missing_capability" => match caps.sampling {
                Some(_) => Ok(text("sampling is declared")),
                None => Err(ErrorData::new(
                    ErrorCode(-32021),
                    "test_missing_capability needs the sampling capability",
                    Some(json!({ "requiredCapabilities": { "sampling": {} } })),
                )),
            },
            "test_streaming_elicitation" => {
                let answered = request
                    .input_responses
                    .as_ref()
                    .is_some_and(|r| r.contains_key("user_name"));
                Ok(match (answered, caps.elicitation.is_some()) {
                    (true, _) => text("answered"),
                    (false, false) => text("elicitation not declared; nothing asked"),
                    (false, true) => ask(
                        "user_name",
                        elicitation(
                            "What is your name?",
                            json!({ "type": "object", "properties": { "name": { "type": "string" } } }),
                        ),
                        None,
                    ),
                })
            }
            "test_logging_tool" => {
                let wanted = cx.meta.log_level();
                let mut sent = 0;
                if let Some(min) = wanted {
                    for level in [LoggingLevel::Debug, LoggingLevel::Info, LoggingLevel::Error] {
                        if super::severity(level) < super::severity(min) {
                            continue;
                        }
                        let param =
                            LoggingMessageNotificationParam::new(level, json!("a log line"))
                                .with_logger(super::LOGGER);
                        if cx.peer.notify_logging_message(param).await.is_ok() {
                            sent += 1;
                        }
                    }
                }
                Ok(text(&format!("sent {sent} log line(s)")))
            }
            _ => return None,
        })
    }
}

/// A tool with an `x-mcp-header` parameter (SEP-2243): clients mirror
/// `region` into an `Mcp-Param-Region` header, which rmcp checks against
/// the body before the call is handled. A separate module so other fixture
/// additions merge cleanly.
mod custom_header {
    use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock, Tool};
    use serde_json::{json, Value};

    const NAME: &str = "test_custom_header";

    pub(super) fn tools() -> Vec<Tool> {
        vec![Tool::new(
            NAME,
            "Echoes `region`, which clients also send as the Mcp-Param-Region header",
            super::object(json!({
                "type": "object",
                "properties": {
                    "region": { "type": "string", "x-mcp-header": "Region" }
                },
                "required": ["region"]
            })),
        )]
    }

    pub(super) fn call(request: &CallToolRequestParams) -> Option<CallToolResult> {
        if request.name != NAME {
            return None;
        }
        let region = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("region"))
            .and_then(Value::as_str)
            .unwrap_or("");
        Some(CallToolResult::success(vec![ContentBlock::text(format!(
            "region={region}"
        ))]))
    }
}
