//! `portcullis-loadgen`: a load generator that speaks MCP streamable HTTP
//! itself, so the same load can be pointed at the gateway, straight at an
//! upstream, or at another gateway, and the results compared.
//!
//! Every worker owns one HTTP/1.1 connection (hyper's low-level client, no
//! pool) and a session: `initialize` (remembering `Mcp-Session-Id` and the
//! negotiated protocol version), `notifications/initialized`, then requests.
//! Responses may be JSON or an SSE stream; both are read until the JSON-RPC
//! response with the request's id arrives.
//!
//! Modes:
//!
//! ```text
//! portcullis-loadgen URL [--tool echo --args '{"message":"hi"}' | --list [--all-pages] | --mcp-gateway-list S,S...]
//!     [--concurrency C] [--sessions N] [--rate R] [--duration 10s] [--warmup 2s] [--drain] [--timeout 30s] [--json]
//! portcullis-loadgen URL --idle-sessions N [--listen] [--hold 30s]   # open and hold N sessions (each with a GET stream)
//! portcullis-loadgen URL --setup-rate [--duration 10s]    # initialize+initialized+DELETE per second
//! portcullis-loadgen http://HOST/v1/chat/completions --chat MODEL [--stream]
//! ```
//!
//! `--chat` drives an OpenAI-compatible Chat Completions endpoint instead of
//! MCP (for the gateway's model router): latency is the whole response, or
//! with `--stream` the time to the first content delta.
//!
//! With `--rate` the load is open-loop: request k is due at `start + k/R`
//! and its latency is measured from when it was due, so a server that falls
//! behind is charged for the queue it causes (no coordinated omission).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{json, Value};

/// Protocol version sent in `initialize`; the server's answer decides.
const DEFAULT_PROTOCOL: &str = "2025-11-25";

/// How long to wait for the rest of a response stream after its answer.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Distinct error messages kept for the report.
const MAX_ERROR_SAMPLES: usize = 5;

/// Load generator for MCP servers over streamable HTTP.
#[derive(Parser, Debug, Clone)]
#[command(name = "portcullis-loadgen", version, about)]
struct Cli {
    /// The MCP endpoint, e.g. `http://127.0.0.1:8080/mcp`.
    url: String,
    /// Tool to call with `tools/call`.
    #[arg(long, default_value = "echo")]
    tool: String,
    /// Tool arguments, a JSON object.
    #[arg(long, default_value = r#"{"message":"hello"}"#)]
    args: String,
    /// Count a response as an error unless its JSON contains this text
    /// (catches errors a server wraps in a successful result).
    #[arg(long)]
    expect: Option<String>,
    /// Send `tools/list` instead of `tools/call`.
    #[arg(long)]
    list: bool,
    /// With `--list`: one request is the whole list, following `nextCursor`
    /// page by page on the same session (a gateway that caps its page size
    /// is charged for every page); latency runs to the last page.
    #[arg(long, requires = "list")]
    all_pages: bool,
    /// Wrap each call in mcp-gateway's meta-tool: `gateway_invoke` with
    /// `{server: SERVER, tool, arguments}`.
    #[arg(long, value_name = "SERVER")]
    mcp_gateway_invoke: Option<String>,
    /// One request is mcp-gateway's listing meta-tool called once per
    /// SERVER, in turn on the same session: `gateway_list_tools` with
    /// `{server: SERVER}` (its only way to the backends' full tool
    /// definitions, one backend at a time); latency runs to the last answer.
    #[arg(
        long,
        value_name = "SERVER,SERVER...",
        value_delimiter = ',',
        conflicts_with_all = ["list", "mcp_gateway_invoke"]
    )]
    mcp_gateway_list: Vec<String>,
    /// Requests in flight at once (closed loop), or the most in flight
    /// with `--rate`.
    #[arg(long, short, default_value_t = 1)]
    concurrency: usize,
    /// MCP sessions to spread the workers over (default: one per worker).
    #[arg(long)]
    sessions: Option<usize>,
    /// Fixed request rate per second (open loop) instead of closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Count the time (and the watched CPU) until the last request started
    /// in the window has ended, not just the window: for servers so slow
    /// that a request outlasts the window, whose req/s and CPU per request
    /// would otherwise depend on where the window ends.
    #[arg(long)]
    drain: bool,
    /// Unmeasured time before it (connections, caches, JIT-free but warm).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// How long one answer may take before it counts as an error (and its
    /// connection is opened again): a server that never answers one request
    /// must not stall the whole run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Extra request header, `Name: value` (repeatable), e.g. authorization.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Protocol version to ask for in `initialize`.
    #[arg(long, default_value = DEFAULT_PROTOCOL)]
    protocol_version: String,
    /// Open this many sessions, print `ready`, and hold them.
    #[arg(long, value_name = "N")]
    idle_sessions: Option<usize>,
    /// With `--idle-sessions`: each session also holds a GET stream open (its
    /// own connection), as SDK clients do for server notifications.
    #[arg(long)]
    listen: bool,
    /// With `--idle-sessions`: exit after this long (default: until SIGTERM or Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    hold: Option<Duration>,
    /// Measure session setup: initialize + initialized + DELETE per second.
    #[arg(long)]
    setup_rate: bool,
    /// Send OpenAI Chat Completions for this model instead of MCP requests.
    #[arg(long, value_name = "MODEL")]
    chat: Option<String>,
    /// With `--chat`: stream the answer and measure time to first token.
    #[arg(long)]
    stream: bool,
    /// Report the CPU time (user + system, from `/proc/PID/stat`) this
    /// process spent during the measured window, and per request (repeatable).
    /// `PID,PID,...` counts several processes as one, their CPU summed (a
    /// server's worker processes).
    #[arg(long = "watch-pid", value_name = "PID[,PID...]", value_parser = parse_watch_pids)]
    watch_pids: Vec<Vec<u32>>,
    /// A name for the run, echoed in the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

// ---------------------------------------------------------------------------
// HTTP and MCP
// ---------------------------------------------------------------------------

/// Where requests go, parsed once.
#[derive(Debug)]
struct Endpoint {
    addr: SocketAddr,
    authority: HeaderValue,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// `--timeout`: the longest wait for one answer.
    timeout: Duration,
}

impl Endpoint {
    fn parse(url: &str, headers: &[String], timeout: Duration) -> anyhow::Result<Endpoint> {
        let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// URLs are supported: {url}");
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("URL has no host: {url}"))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .with_context(|| format!("resolving {host}"))?
            .next()
            .ok_or_else(|| anyhow!("{host} resolves to nothing"))?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        let headers = headers
            .iter()
            .map(|h| {
                let (name, value) = h
                    .split_once(':')
                    .ok_or_else(|| anyhow!("header {h:?} is not `Name: value`"))?;
                Ok((
                    HeaderName::try_from(name.trim())?,
                    HeaderValue::try_from(value.trim())?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Endpoint {
            addr,
            authority: HeaderValue::try_from(authority.as_str())?,
            path,
            headers,
            timeout,
        })
    }
}

/// An MCP session as the client sees it.
#[derive(Debug, Clone)]
struct Session {
    /// `Mcp-Session-Id`; `None` for a stateless server.
    id: Option<HeaderValue>,
    /// Negotiated protocol version, sent as `MCP-Protocol-Version`.
    protocol: HeaderValue,
}

/// What a JSON-RPC response said, as far as the report cares.
#[derive(Debug, Default)]
struct Reply {
    /// A JSON-RPC error (its message).
    error: Option<String>,
    /// A tool result with `isError: true`.
    tool_error: bool,
    /// The result object, kept only when asked for (initialize).
    result: Option<Value>,
    /// A list result's `nextCursor`: more pages follow.
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    result: Option<ResultProbe>,
    #[serde(default)]
    error: Option<ErrorProbe>,
}

#[derive(Deserialize)]
struct ResultProbe {
    #[serde(rename = "isError", default)]
    is_error: Option<bool>,
    #[serde(rename = "nextCursor", default)]
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct ErrorProbe {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

/// Reads `bytes` as a JSON-RPC message; `Some` when it is the response to `id`.
fn match_response(bytes: &[u8], id: u64, keep_result: bool) -> Option<Reply> {
    let env: Envelope = serde_json::from_slice(bytes).ok()?;
    if env.id.as_ref().and_then(Value::as_u64) != Some(id) {
        return None;
    }
    if let Some(e) = env.error {
        return Some(Reply {
            error: Some(format!("JSON-RPC error {}: {}", e.code, e.message)),
            ..Reply::default()
        });
    }
    let probe = env.result?;
    let result = if keep_result {
        serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|mut v| v.get_mut("result").map(Value::take))
    } else {
        None
    };
    Some(Reply {
        error: None,
        tool_error: probe.is_error == Some(true),
        result,
        next_cursor: probe.next_cursor,
    })
}

/// Finds the end of the first SSE event in `buf` (index past the blank line).
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The `data` of one SSE event (lines joined with `\n`).
fn event_data(event: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    data
}

/// Whether `haystack` contains `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Applies `--expect` to a matched response.
fn check_expected(mut reply: Reply, raw: &[u8], expect: Option<&str>) -> Reply {
    if let Some(e) = expect {
        if reply.error.is_none() && !contains(raw, e.as_bytes()) {
            let shown = String::from_utf8_lossy(&raw[..raw.len().min(300)]).into_owned();
            reply.error = Some(format!("response lacks {e:?}: {shown}"));
        }
    }
    reply
}

/// `work`'s result, or an error once `limit` has passed without one.
async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err(anyhow!("no answer within {limit:?}")))
}

/// One HTTP/1.1 connection, re-opened after a failure.
struct Conn {
    ep: Arc<Endpoint>,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// `--expect`: text every response must contain.
    expect: Option<Arc<str>>,
}

impl Conn {
    fn new(ep: Arc<Endpoint>) -> Conn {
        Conn {
            ep,
            sender: None,
            expect: None,
        }
    }

    async fn sender(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
        }
        if self.sender.is_none() {
            let stream = tokio::net::TcpStream::connect(self.ep.addr)
                .await
                .with_context(|| format!("connecting to {}", self.ep.addr))?;
            stream.set_nodelay(true)?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        match self.sender.as_mut() {
            Some(s) => {
                s.ready().await?;
                Ok(s)
            }
            None => bail!("no connection"),
        }
    }

    fn request(
        &self,
        method: Method,
        session: Option<&Session>,
        body: Bytes,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut req = Request::builder()
            .method(method)
            .uri(&self.ep.path)
            .header(http::header::HOST, self.ep.authority.clone())
            .header(http::header::ACCEPT, "application/json, text/event-stream")
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(s) = session {
            if let Some(id) = &s.id {
                req = req.header("mcp-session-id", id.clone());
            }
            req = req.header("mcp-protocol-version", s.protocol.clone());
        }
        for (name, value) in &self.ep.headers {
            req = req.header(name, value.clone());
        }
        Ok(req.body(Full::new(body))?)
    }

    /// Sends a JSON-RPC request and waits for its response. Returns the
    /// reply and the response's `Mcp-Session-Id`, if any.
    async fn call(
        &mut self,
        session: Option<&Session>,
        id: u64,
        body: Bytes,
        keep_result: bool,
    ) -> anyhow::Result<(Reply, Option<HeaderValue>)> {
        let limit = self.ep.timeout;
        let result = within(limit, self.call_inner(session, id, body, keep_result)).await;
        if result.is_err() {
            // The connection may be mid-response: start over next time.
            self.sender = None;
        }
        result
    }

    async fn call_inner(
        &mut self,
        session: Option<&Session>,
        id: u64,
        body: Bytes,
        keep_result: bool,
    ) -> anyhow::Result<(Reply, Option<HeaderValue>)> {
        let req = self.request(Method::POST, session, body)?;
        let resp = self.sender().await?.send_request(req).await?;
        let status = resp.status();
        let session_id = resp.headers().get("mcp-session-id").cloned();
        let sse = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            bail!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            );
        }
        if !sse {
            let bytes = body.collect().await?.to_bytes();
            return match_response(&bytes, id, keep_result)
                .map(|r| {
                    (
                        check_expected(r, &bytes, self.expect.as_deref()),
                        session_id,
                    )
                })
                .ok_or_else(|| anyhow!("response is not the answer to request {id}"));
        }
        let mut buf = BytesMut::new();
        let reply = loop {
            let Some(frame) = body.frame().await else {
                bail!("SSE stream ended without the answer to request {id}");
            };
            if let Ok(data) = frame?.into_data() {
                buf.extend_from_slice(&data);
            }
            let mut found = None;
            while let Some(end) = event_end(&buf) {
                let event = buf.split_to(end);
                let data = event_data(&event);
                if !data.is_empty() {
                    if let Some(r) = match_response(&data, id, keep_result) {
                        found = Some(check_expected(r, &data, self.expect.as_deref()));
                        break;
                    }
                }
            }
            if let Some(r) = found {
                break r;
            }
        };
        // The stream should end right after the answer; if it does not,
        // this connection cannot carry the next request.
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    return false;
                }
            }
            true
        })
        .await;
        if !matches!(drained, Ok(true)) {
            self.sender = None;
        }
        Ok((reply, session_id))
    }

    /// Sends a notification; the server answers 202 (or 200) with no body.
    async fn notify(&mut self, session: &Session, body: Bytes) -> anyhow::Result<()> {
        let req = self.request(Method::POST, Some(session), body)?;
        let result = self.send_expecting_success(req).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    /// Ends a session with DELETE.
    async fn delete(&mut self, session: &Session) -> anyhow::Result<()> {
        if session.id.is_none() {
            return Ok(());
        }
        let req = self.request(Method::DELETE, Some(session), Bytes::new())?;
        let result = self.send_expecting_success(req).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn send_expecting_success(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<()> {
        let resp = self.sender().await?.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() && status != StatusCode::METHOD_NOT_ALLOWED {
            bail!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            );
        }
        Ok(())
    }

    /// Sends one chat completion; returns when the answer (or, streamed,
    /// its first content delta) arrived. The stream is read to its end.
    async fn chat(&mut self, body: Bytes, stream: bool) -> anyhow::Result<Instant> {
        let limit = self.ep.timeout;
        let result = within(limit, self.chat_inner(body, stream)).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn chat_inner(&mut self, body: Bytes, stream: bool) -> anyhow::Result<Instant> {
        let req = self.request(Method::POST, None, body)?;
        let resp = self.sender().await?.send_request(req).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !stream || !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            let done = Instant::now();
            if !status.is_success() {
                bail!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                );
            }
            let answer: Value = serde_json::from_slice(&bytes).context("chat answer")?;
            if answer.pointer("/choices/0/message").is_none() {
                bail!("chat answer has no choices[0].message");
            }
            return Ok(done);
        }
        let mut buf = BytesMut::new();
        let mut first = None;
        let mut finished = false;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                buf.extend_from_slice(&data);
            }
            while let Some(end) = event_end(&buf) {
                let event = buf.split_to(end);
                let data = event_data(&event);
                if data == b"[DONE]" {
                    finished = true;
                } else if first.is_none() {
                    let delta: Value = serde_json::from_slice(&data).unwrap_or_default();
                    let content = delta.pointer("/choices/0/delta/content");
                    if content
                        .and_then(Value::as_str)
                        .is_some_and(|c| !c.is_empty())
                    {
                        first = Some(Instant::now());
                    }
                }
            }
        }
        if !finished {
            bail!("chat stream ended without [DONE]");
        }
        first.ok_or_else(|| anyhow!("chat stream carried no content"))
    }

    /// `initialize` then `notifications/initialized`.
    async fn open_session(&mut self, protocol: &str) -> anyhow::Result<Session> {
        let body = json!({
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": protocol,
                "capabilities": {},
                "clientInfo": { "name": "portcullis-loadgen", "version": env!("CARGO_PKG_VERSION") },
            },
        });
        let (reply, session_id) = self
            .call(None, 0, Bytes::from(body.to_string()), true)
            .await
            .context("initialize")?;
        if let Some(e) = reply.error {
            bail!("initialize refused: {e}");
        }
        let negotiated = reply
            .result
            .as_ref()
            .and_then(|r| r.get("protocolVersion"))
            .and_then(Value::as_str)
            .unwrap_or(protocol);
        let session = Session {
            id: session_id,
            protocol: HeaderValue::try_from(negotiated)?,
        };
        let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        self.notify(&session, Bytes::from(initialized.to_string()))
            .await
            .context("notifications/initialized")?;
        Ok(session)
    }
}

// ---------------------------------------------------------------------------
// Measurement
// ---------------------------------------------------------------------------

/// What one worker saw in the measured window.
#[derive(Default)]
struct Tally {
    /// Latency of each successful request, in nanoseconds.
    latencies: Vec<u64>,
    errors: u64,
    tool_errors: u64,
    /// Requests that started later than due by more than 1 ms (rate mode).
    late: u64,
    /// Pages read by successful `--all-pages` requests.
    pages: u64,
    samples: Vec<String>,
}

impl Tally {
    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.samples.len() < MAX_ERROR_SAMPLES && !self.samples.contains(&message) {
            self.samples.push(message);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.tool_errors += other.tool_errors;
        self.late += other.late;
        self.pages += other.pages;
        for s in other.samples {
            if self.samples.len() < MAX_ERROR_SAMPLES && !self.samples.contains(&s) {
                self.samples.push(s);
            }
        }
    }
}

/// Latency percentiles, in microseconds.
#[derive(serde::Serialize)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

fn percentiles(sorted: &[u64]) -> Percentiles {
    let at = |q: f64| -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1] as f64 / 1000.0
    };
    let mean = if sorted.is_empty() {
        0.0
    } else {
        sorted.iter().map(|&n| n as f64).sum::<f64>() / sorted.len() as f64 / 1000.0
    };
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: sorted.last().map(|&n| n as f64 / 1000.0).unwrap_or(0.0),
        mean,
    }
}

/// Linux reports process CPU time in clock ticks of 1/USER_HZ s, which is
/// 100 on every mainstream architecture.
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds of a process (all threads) so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line; index 0 here is field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// A `--watch-pid` value: one pid, or several separated by commas.
fn parse_watch_pids(s: &str) -> Result<Vec<u32>, String> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<u32>()
                .map_err(|e| format!("not a pid: {p:?} ({e})"))
        })
        .collect()
}

/// User + system CPU seconds of a group of processes so far, summed; `None`
/// if any of them cannot be read (gone).
fn group_cpu_seconds(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

/// CPU a watched process (or group of processes) used in the measured window.
#[derive(serde::Serialize)]
struct CpuUse {
    /// The process, or the group's first.
    pid: u32,
    /// A group's processes, whose CPU is summed here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pids: Option<Vec<u32>>,
    cpu_s: f64,
    /// CPU microseconds per successful request.
    us_per_request: f64,
}

/// Samples the watched processes' CPU at the window's start and when `end`
/// resolves.
fn watch_cpu(
    groups: Vec<Vec<u32>>,
    from: Instant,
    end: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<Vec<(Vec<u32>, Option<f64>)>> {
    tokio::spawn(async move {
        tokio::time::sleep_until(from.into()).await;
        let before: Vec<Option<f64>> = groups.iter().map(|g| group_cpu_seconds(g)).collect();
        end.await;
        groups
            .into_iter()
            .zip(before)
            .map(|(g, b)| {
                let used = b.zip(group_cpu_seconds(&g)).map(|(b, a)| a - b);
                (g, used)
            })
            .collect()
    })
}

/// The seconds a run's requests are divided by: the window, or with
/// `--drain` the time until its last request ended, if that is longer.
fn measured_seconds(window: Duration, from: Instant, done: Instant, drain: bool) -> f64 {
    let window = window.as_secs_f64();
    if drain {
        window.max(done.saturating_duration_since(from).as_secs_f64())
    } else {
        window
    }
}

fn cpu_report(samples: Vec<(Vec<u32>, Option<f64>)>, ok: u64) -> Vec<CpuUse> {
    samples
        .into_iter()
        .filter_map(|(pids, cpu)| {
            cpu.map(|cpu_s| CpuUse {
                pid: pids.first().copied().unwrap_or_default(),
                pids: (pids.len() > 1).then_some(pids),
                cpu_s,
                us_per_request: if ok == 0 {
                    0.0
                } else {
                    cpu_s * 1e6 / ok as f64
                },
            })
        })
        .collect()
}

/// The report of a run.
#[derive(serde::Serialize)]
struct Report {
    label: String,
    url: String,
    mode: String,
    concurrency: usize,
    sessions: usize,
    rate: Option<f64>,
    duration_s: f64,
    /// Successful requests (or session setups) in the measured window.
    ok: u64,
    errors: u64,
    tool_errors: u64,
    late: u64,
    throughput: f64,
    /// `--all-pages`: pages per successful request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pages_per_request: Option<f64>,
    latency_us: Percentiles,
    error_samples: Vec<String>,
    /// CPU of the `--watch-pid` processes in the measured window.
    cpu: Vec<CpuUse>,
}

impl Report {
    fn text(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_us;
        let _ = writeln!(
            out,
            "{}{} c={} sessions={}{}: {} ok in {:.1}s = {:.0}/s, errors {}, tool errors {}",
            if self.label.is_empty() {
                String::new()
            } else {
                format!("[{}] ", self.label)
            },
            self.mode,
            self.concurrency,
            self.sessions,
            self.rate
                .map(|r| format!(" rate={r}/s"))
                .unwrap_or_default(),
            self.ok,
            self.duration_s,
            self.throughput,
            self.errors,
            self.tool_errors,
        );
        let _ = writeln!(
            out,
            "  latency us: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}  mean {:.1}",
            l.p50, l.p90, l.p99, l.max, l.mean
        );
        if self.late > 0 {
            let _ = writeln!(
                out,
                "  {} requests started >1ms after they were due (the generator or server fell behind)",
                self.late
            );
        }
        for c in &self.cpu {
            let pids = match &c.pids {
                Some(pids) => format!(
                    "pids {}",
                    pids.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join("+")
                ),
                None => format!("pid {}", c.pid),
            };
            let _ = writeln!(
                out,
                "  {pids}: {:.2}s CPU = {:.1} us per request",
                c.cpu_s, c.us_per_request
            );
        }
        for s in &self.error_samples {
            let _ = writeln!(out, "  error: {s}");
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------

/// The bodies of one request's steps (one, or with `--mcp-gateway-list` one
/// per server), each with its id spliced into a prepared template.
struct Payload {
    head: String,
    /// What follows the id, one per step.
    tails: Vec<String>,
}

impl Payload {
    fn new(cli: &Cli) -> anyhow::Result<Payload> {
        let arguments: Value =
            serde_json::from_str(&cli.args).context("--args is not valid JSON")?;
        if !arguments.is_object() {
            bail!("--args must be a JSON object");
        }
        let steps: Vec<(&str, Value)> = if cli.list {
            vec![("tools/list", json!({}))]
        } else if !cli.mcp_gateway_list.is_empty() {
            cli.mcp_gateway_list
                .iter()
                .map(|server| {
                    (
                        "tools/call",
                        json!({ "name": "gateway_list_tools", "arguments": { "server": server } }),
                    )
                })
                .collect()
        } else if let Some(server) = &cli.mcp_gateway_invoke {
            vec![(
                "tools/call",
                json!({
                    "name": "gateway_invoke",
                    "arguments": { "server": server, "tool": cli.tool, "arguments": arguments },
                }),
            )]
        } else {
            vec![(
                "tools/call",
                json!({ "name": cli.tool, "arguments": arguments }),
            )]
        };
        let tails = steps
            .into_iter()
            .map(|(method, params)| {
                let tail = json!({ "method": method, "params": params }).to_string();
                // `{"method":...}` becomes `,"method":...}` after the id.
                format!(",{}", &tail[1..])
            })
            .collect();
        Ok(Payload {
            head: r#"{"jsonrpc":"2.0","id":"#.into(),
            tails,
        })
    }

    /// Steps per request.
    fn steps(&self) -> usize {
        self.tails.len()
    }

    /// A `tools/list` request for the page after `cursor` (`--all-pages`).
    fn next_page(id: u64, cursor: &str) -> Bytes {
        let body = json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": "tools/list",
            "params": { "cursor": cursor },
        });
        Bytes::from(body.to_string())
    }

    /// The body of step `step` (0 for a one-step request) with id `id`.
    fn body(&self, step: usize, id: u64) -> Bytes {
        let tail = &self.tails[step];
        let mut s = String::with_capacity(self.head.len() + tail.len() + 20);
        s.push_str(&self.head);
        let _ = write!(s, "{id}");
        s.push_str(tail);
        Bytes::from(s)
    }

    fn describe(cli: &Cli) -> String {
        if let Some(model) = &cli.chat {
            let how = if cli.stream {
                "streamed, latency = time to first token"
            } else {
                "not streamed"
            };
            format!("chat/completions {model} ({how})")
        } else if cli.list && cli.all_pages {
            "tools/list (all pages)".into()
        } else if cli.list {
            "tools/list".into()
        } else if !cli.mcp_gateway_list.is_empty() {
            format!(
                "tools/call gateway_list_tools, once per server ({} in turn)",
                cli.mcp_gateway_list.len()
            )
        } else if let Some(server) = &cli.mcp_gateway_invoke {
            format!("tools/call gateway_invoke({server}/{})", cli.tool)
        } else {
            format!("tools/call {}", cli.tool)
        }
    }
}

/// Opens `n` sessions with `parallel` connections.
async fn open_sessions(
    ep: &Arc<Endpoint>,
    protocol: &str,
    n: usize,
    parallel: usize,
) -> anyhow::Result<Vec<Session>> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel.clamp(1, n.max(1)) {
        let ep = ep.clone();
        let next = next.clone();
        let protocol = protocol.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(ep);
            let mut out = Vec::new();
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < n {
                out.push(conn.open_session(&protocol).await?);
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut sessions = Vec::with_capacity(n);
    for t in tasks {
        sessions.extend(t.await??);
    }
    Ok(sessions)
}

/// Most pages one `--all-pages` request follows: a server that hands out
/// cursors forever must not hold a worker for the whole run.
const MAX_PAGES: u64 = 10_000;

/// Sends request `id`, each of its steps in turn (advancing `id` by
/// `stride` for each after the first; a step's error ends it); with
/// `all_pages`, then asks for each page its answer announces (`nextCursor`),
/// advancing `id` likewise. Returns the last reply (or the first error; a
/// tool error at any step is kept) and the pages read.
async fn request_pages(
    conn: &mut Conn,
    session: Option<&Session>,
    id: &mut u64,
    stride: u64,
    payload: &Payload,
    all_pages: bool,
) -> anyhow::Result<(Reply, u64)> {
    let (mut reply, _) = conn.call(session, *id, payload.body(0, *id), false).await?;
    for step in 1..payload.steps() {
        if reply.error.is_some() {
            return Ok((reply, 1));
        }
        *id += stride;
        let tool_error = reply.tool_error;
        reply = conn
            .call(session, *id, payload.body(step, *id), false)
            .await?
            .0;
        // An error result at any step marks the whole request.
        reply.tool_error |= tool_error;
    }
    let mut pages = 1;
    while all_pages && reply.error.is_none() {
        let Some(cursor) = reply.next_cursor.take() else {
            break;
        };
        if pages >= MAX_PAGES {
            bail!("still a nextCursor after {MAX_PAGES} pages");
        }
        *id += stride;
        reply = conn
            .call(session, *id, Payload::next_page(*id, &cursor), false)
            .await?
            .0;
        pages += 1;
    }
    Ok((reply, pages))
}

async fn run_load(cli: &Cli, ep: Arc<Endpoint>) -> anyhow::Result<Report> {
    let concurrency = cli.concurrency.max(1);
    let n_sessions = cli.sessions.unwrap_or(concurrency).max(1);
    let sessions = match &cli.chat {
        Some(_) => Vec::new(),
        None => open_sessions(&ep, &cli.protocol_version, n_sessions, concurrency.min(32)).await?,
    };
    let sessions = Arc::new(sessions);
    let payload = Arc::new(Payload::new(cli)?);
    let chat = cli.chat.as_ref().map(|model| {
        Bytes::from(
            json!({
                "model": model,
                "messages": [{ "role": "user", "content": "Say hello to the benchmark" }],
                "stream": cli.stream,
            })
            .to_string(),
        )
    });
    let stream = cli.stream;
    let all_pages = cli.all_pages;
    let expect: Option<Arc<str>> = cli.expect.as_deref().map(Arc::from);
    let start = Instant::now();
    let measure_from = start + cli.warmup;
    let end = measure_from + cli.duration;
    let rate = cli.rate.filter(|r| *r > 0.0);
    let tickets = Arc::new(AtomicU64::new(0));
    // With --drain the CPU window closes when the last request has ended.
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = if cli.drain {
        watch_cpu(cli.watch_pids.clone(), measure_from, async move {
            let _ = drained_rx.await;
        })
    } else {
        watch_cpu(
            cli.watch_pids.clone(),
            measure_from,
            tokio::time::sleep_until(end.into()),
        )
    };
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let ep = ep.clone();
        let sessions = sessions.clone();
        let payload = payload.clone();
        let tickets = tickets.clone();
        let chat = chat.clone();
        let expect = expect.clone();
        workers.push(tokio::spawn(async move {
            let session = (!sessions.is_empty()).then(|| &sessions[w % sessions.len()]);
            let mut conn = Conn::new(ep);
            conn.expect = expect;
            let mut tally = Tally::default();
            // Workers may share a session (`--sessions` < `--concurrency`),
            // and a session's requests in flight must have distinct ids: when
            // every worker counted from the same id, the fixture lost one of
            // two equal ids' answers and that worker waited forever. So
            // worker `w` uses ids `w + 1 + k * concurrency` (0 is `initialize`'s).
            let mut id = w as u64 + 1;
            let stride = concurrency as u64;
            loop {
                let due = match rate {
                    Some(r) => {
                        let k = tickets.fetch_add(1, Ordering::Relaxed);
                        // `k / r`, not `k` times a rounded `1 / r`: at 30/s the
                        // rounded interval put request 30 just inside a 1 s
                        // window, one request more than the rate.
                        let due = start + Duration::from_secs_f64(k as f64 / r);
                        if due >= end {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => {
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        now
                    }
                };
                let measured = due >= measure_from;
                if measured && rate.is_some() && due.elapsed() > Duration::from_millis(1) {
                    tally.late += 1;
                }
                let result = match (&chat, session) {
                    (Some(body), _) => conn
                        .chat(body.clone(), stream)
                        .await
                        .map(|t| (None, false, t, 1)),
                    (None, session) => {
                        request_pages(&mut conn, session, &mut id, stride, &payload, all_pages)
                            .await
                            .map(|(r, pages)| (r.error, r.tool_error, Instant::now(), pages))
                    }
                };
                id += stride;
                if !measured {
                    continue;
                }
                match result {
                    Ok((Some(e), _, _, _)) => tally.error(e),
                    Ok((None, tool_error, done, pages)) => {
                        if tool_error {
                            tally.tool_errors += 1;
                        }
                        tally.pages += pages;
                        tally.latencies.push((done - due).as_nanos() as u64);
                    }
                    Err(e) => {
                        tally.error(format!("{e:#}"));
                        // Do not spin on a dead server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for w in workers {
        total.merge(w.await?);
    }
    let done = Instant::now();
    let _ = drained_tx.send(());
    let cpu = watcher.await?;
    // Requests started in the window count, even if they end just after it.
    let elapsed = measured_seconds(cli.duration, measure_from, done, cli.drain);
    // Sessions are ended so a long benchmark does not pile them up.
    let mut conn = Conn::new(ep.clone());
    for s in sessions.iter() {
        let _ = conn.delete(s).await;
    }
    total.latencies.sort_unstable();
    Ok(Report {
        label: cli.label.clone(),
        url: cli.url.clone(),
        mode: Payload::describe(cli),
        concurrency,
        sessions: sessions.len(),
        rate: cli.rate,
        duration_s: elapsed,
        ok: total.latencies.len() as u64,
        errors: total.errors,
        tool_errors: total.tool_errors,
        late: total.late,
        throughput: total.latencies.len() as f64 / elapsed,
        pages_per_request: (cli.all_pages && !total.latencies.is_empty())
            .then(|| total.pages as f64 / total.latencies.len() as f64),
        latency_us: percentiles(&total.latencies),
        error_samples: total.samples,
        cpu: cpu_report(cpu, total.latencies.len() as u64),
    })
}

async fn run_setup_rate(cli: &Cli, ep: Arc<Endpoint>) -> anyhow::Result<Report> {
    let concurrency = cli.concurrency.max(1);
    let start = Instant::now();
    let measure_from = start + cli.warmup;
    let end = measure_from + cli.duration;
    let watcher = watch_cpu(
        cli.watch_pids.clone(),
        measure_from,
        tokio::time::sleep_until(end.into()),
    );
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let ep = ep.clone();
        let protocol = cli.protocol_version.clone();
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::new(ep);
            let mut tally = Tally::default();
            loop {
                let begun = Instant::now();
                if begun >= end {
                    break;
                }
                let result = async {
                    let session = conn.open_session(&protocol).await?;
                    conn.delete(&session).await.context("DELETE")
                }
                .await;
                if begun < measure_from {
                    continue;
                }
                match result {
                    Ok(()) => tally.latencies.push(begun.elapsed().as_nanos() as u64),
                    Err(e) => {
                        tally.error(format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for w in workers {
        total.merge(w.await?);
    }
    let cpu = watcher.await?;
    let elapsed = cli.duration.as_secs_f64();
    total.latencies.sort_unstable();
    Ok(Report {
        label: cli.label.clone(),
        url: cli.url.clone(),
        mode: "session setup (initialize+initialized+DELETE)".into(),
        concurrency,
        sessions: 0,
        rate: None,
        duration_s: elapsed,
        ok: total.latencies.len() as u64,
        errors: total.errors,
        tool_errors: 0,
        late: 0,
        throughput: total.latencies.len() as f64 / elapsed,
        pages_per_request: None,
        latency_us: percentiles(&total.latencies),
        error_samples: total.samples,
        cpu: cpu_report(cpu, total.latencies.len() as u64),
    })
}

/// Opens a GET stream for each session, each on its own connection, and
/// returns the tasks that read them (aborted to close them).
async fn hold_get_streams(
    ep: &Arc<Endpoint>,
    sessions: &[Session],
    parallel: usize,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    use futures::StreamExt as _;
    let opened = futures::stream::iter(sessions.iter().cloned())
        .map(|session| {
            let ep = ep.clone();
            async move {
                let mut conn = Conn::new(ep);
                let req = conn.request(Method::GET, Some(&session), Bytes::new())?;
                let resp = conn.sender().await?.send_request(req).await?;
                let sse = resp
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/event-stream"));
                if resp.status() != StatusCode::OK || !sse {
                    bail!("GET stream refused: HTTP {}", resp.status());
                }
                let mut body = resp.into_body();
                Ok::<_, anyhow::Error>(tokio::spawn(async move {
                    // Keep-alive comments and notifications are read and dropped.
                    while let Some(Ok(_)) = body.frame().await {}
                    drop(conn);
                }))
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<_>>()
        .await;
    opened.into_iter().collect()
}

async fn run_idle(cli: &Cli, ep: Arc<Endpoint>, n: usize) -> anyhow::Result<()> {
    let begun = Instant::now();
    let parallel = cli.concurrency.max(16);
    let sessions = open_sessions(&ep, &cli.protocol_version, n, parallel).await?;
    let streams = match cli.listen {
        true => hold_get_streams(&ep, &sessions, parallel).await?,
        false => Vec::new(),
    };
    let took = begun.elapsed().as_secs_f64();
    // Listen before saying `ready`: a SIGTERM sent on reading it used to
    // arrive before the handler existed and kill the process, leaving every
    // session open on the server.
    let stop = stop_signal();
    if cli.json {
        println!(
            "{}",
            json!({ "ready": sessions.len(), "seconds": took, "label": cli.label })
        );
    } else {
        println!("ready: {} sessions open in {took:.2}s", sessions.len());
    }
    std::io::stdout().flush()?;
    match cli.hold {
        Some(d) => tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = stop => {}
        },
        None => stop.await,
    }
    for stream in streams {
        stream.abort();
    }
    // End the sessions so the server can be measured again afterwards.
    let sessions = Arc::new(Mutex::new(sessions));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let ep = ep.clone();
        let sessions = sessions.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(ep);
            loop {
                let next = sessions.lock().ok().and_then(|mut s| s.pop());
                let Some(s) = next else { break };
                let _ = conn.delete(&s).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT; the handlers are installed by the call
/// itself, not when the future is first polled.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match signals {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ep = Arc::new(Endpoint::parse(&cli.url, &cli.headers, cli.timeout)?);
    if let Some(n) = cli.idle_sessions {
        return run_idle(&cli, ep, n).await;
    }
    let report = if cli.setup_rate {
        run_setup_rate(&cli, ep).await?
    } else {
        run_load(&cli, ep).await?
    };
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis-loadgen: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_split_and_joined() {
        let buf = b"id: 1\nretry: 500\ndata:\n\ndata: {\"a\":\ndata: 1}\n\n";
        let first = event_end(buf).unwrap_or_default();
        assert_eq!(event_data(&buf[..first]), b"");
        let rest = &buf[first..];
        let second = event_end(rest).unwrap_or_default();
        assert_eq!(event_data(&rest[..second]), b"{\"a\":\n1}");
        assert_eq!(event_end(b"data: x\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: x\n"), None);
    }

    #[test]
    fn responses_match_by_id_and_report_errors() {
        let ok = br#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":true}}"#;
        let r = match_response(ok, 7, false).unwrap_or_default();
        assert!(r.tool_error && r.error.is_none());
        assert!(match_response(ok, 8, false).is_none());
        let err = br#"{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"no"}}"#;
        let r = match_response(err, 7, false).unwrap_or_default();
        assert_eq!(r.error.as_deref(), Some("JSON-RPC error -32602: no"));
        let note = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;
        assert!(match_response(note, 7, false).is_none());
    }

    #[test]
    fn expected_text_is_checked() {
        let raw = br#"{"id":1,"result":{"content":[{"type":"text","text":"hello"}]}}"#;
        let ok = check_expected(Reply::default(), raw, Some("hello"));
        assert!(ok.error.is_none());
        let bad = check_expected(Reply::default(), raw, Some("goodbye"));
        assert!(bad.error.is_some_and(|e| e.contains("lacks")));
    }

    #[test]
    fn payload_splices_the_id() {
        let cli = Cli::parse_from([
            "loadgen",
            "http://127.0.0.1:1/mcp",
            "--mcp-gateway-invoke",
            "fx",
            "--args",
            r#"{"message":"m"}"#,
        ]);
        let body = Payload::new(&cli)
            .map(|p| p.body(0, 42))
            .unwrap_or_default();
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["id"], 42);
        assert_eq!(v["params"]["name"], "gateway_invoke");
        assert_eq!(v["params"]["arguments"]["server"], "fx");
        assert_eq!(v["params"]["arguments"]["arguments"]["message"], "m");
    }

    #[test]
    fn mcp_gateway_list_is_one_call_per_server() {
        let cli = Cli::parse_from([
            "loadgen",
            "http://h/mcp",
            "--mcp-gateway-list",
            "up00,up01,up02",
        ]);
        let payload = Payload::new(&cli).ok();
        assert_eq!(payload.as_ref().map(Payload::steps), Some(3));
        for (step, server) in ["up00", "up01", "up02"].into_iter().enumerate() {
            let id = 5 + 32 * step as u64;
            let body = payload
                .as_ref()
                .map(|p| p.body(step, id))
                .unwrap_or_default();
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            assert_eq!(v["id"], id);
            assert_eq!(v["method"], "tools/call");
            assert_eq!(v["params"]["name"], "gateway_list_tools");
            assert_eq!(v["params"]["arguments"], json!({ "server": server }));
        }
        assert!(Payload::describe(&cli).contains("3 in turn"));
        // Any other request is one step.
        let one = Cli::parse_from(["loadgen", "http://h/mcp", "--list"]);
        assert_eq!(Payload::new(&one).ok().map(|p| p.steps()), Some(1));
        // Not with --list or --mcp-gateway-invoke.
        for other in ["--list", "--mcp-gateway-invoke=fx"] {
            let args = ["loadgen", "http://h/mcp", "--mcp-gateway-list", "a", other];
            assert!(Cli::try_parse_from(args).is_err());
        }
    }

    /// A server answering every POST with JSON: an error for a call whose
    /// `server` argument is "bad", a tool error result for "failing", a
    /// tool result otherwise. Records each request body.
    async fn recording_server() -> (String, Arc<Mutex<Vec<Value>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok();
        let url = listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| format!("http://{a}/mcp"))
            .unwrap_or_default();
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let recorded = seen.clone();
        tokio::spawn(async move {
            let Some(listener) = listener else { return };
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                let service = hyper::service::service_fn(
                    move |req: Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let v: Value = body
                                .ok()
                                .and_then(|b| serde_json::from_slice(&b).ok())
                                .unwrap_or_default();
                            let server = &v["params"]["arguments"]["server"];
                            let answer = if server == "bad" {
                                json!({"jsonrpc": "2.0", "id": v["id"], "error": {"code": -32602, "message": "bad"}})
                            } else {
                                let failed = server == "failing";
                                json!({"jsonrpc": "2.0", "id": v["id"], "result": {"content": [], "isError": failed}})
                            };
                            if let Ok(mut seen) = seen.lock() {
                                seen.push(v);
                            }
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from(answer.to_string())));
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (url, recorded)
    }

    #[tokio::test]
    async fn every_step_of_a_request_is_sent_until_one_fails() {
        let (url, seen) = recording_server().await;
        let ep = Endpoint::parse(&url, &[], Duration::from_secs(10)).map(Arc::new);
        let Ok(ep) = ep else {
            panic!("endpoint {url}: {ep:?}", ep = ep.err());
        };
        let sent = |servers: &str| {
            let cli = Cli::parse_from(["loadgen", &url, "--mcp-gateway-list", servers]);
            Payload::new(&cli)
        };
        let bodies = |seen: &Arc<Mutex<Vec<Value>>>| {
            seen.lock()
                .map(|mut s| std::mem::take(&mut *s))
                .unwrap_or_default()
                .into_iter()
                .map(|v| (v["id"].clone(), v["params"]["arguments"]["server"].clone()))
                .collect::<Vec<_>>()
        };
        let mut conn = Conn::new(ep);
        let Ok(all) = sent("a,b,c") else {
            panic!("payload")
        };
        let mut id = 5;
        let done = request_pages(&mut conn, None, &mut id, 32, &all, false).await;
        assert!(
            done.as_ref().is_ok_and(|(r, _)| r.error.is_none()),
            "{:?}",
            done.err()
        );
        assert_eq!(
            bodies(&seen),
            [
                (json!(5), json!("a")),
                (json!(37), json!("b")),
                (json!(69), json!("c"))
            ]
        );
        assert_eq!(id, 69);
        // An error at a step ends the request there.
        let Ok(failing) = sent("a,bad,c") else {
            panic!("payload")
        };
        let mut id = 1;
        let done = request_pages(&mut conn, None, &mut id, 1, &failing, false).await;
        assert!(done.as_ref().is_ok_and(|(r, _)| r.error.is_some()));
        assert_eq!(
            bodies(&seen),
            [(json!(1), json!("a")), (json!(2), json!("bad"))]
        );
        // A tool error at an earlier step marks the whole request.
        let Ok(flawed) = sent("failing,a") else {
            panic!("payload")
        };
        let done = request_pages(&mut conn, None, &mut id, 1, &flawed, false).await;
        assert!(done
            .as_ref()
            .is_ok_and(|(r, _)| r.tool_error && r.error.is_none()));
        assert_eq!(bodies(&seen).len(), 2);
    }

    #[test]
    fn list_pages_are_followed_by_cursor() {
        let page = br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[],"nextCursor":"abc"}}"#;
        let r = match_response(page, 3, false).unwrap_or_default();
        assert_eq!(r.next_cursor.as_deref(), Some("abc"));
        let last = br#"{"jsonrpc":"2.0","id":4,"result":{"tools":[]}}"#;
        let r = match_response(last, 4, false).unwrap_or_default();
        assert!(r.error.is_none() && r.next_cursor.is_none());
        let v: Value = serde_json::from_slice(&Payload::next_page(9, "abc")).unwrap_or_default();
        assert_eq!(v["id"], 9);
        assert_eq!(v["method"], "tools/list");
        assert_eq!(v["params"]["cursor"], "abc");
        // Only with --list.
        assert!(Cli::try_parse_from(["loadgen", "http://h/mcp", "--all-pages"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "http://h/mcp", "--list", "--all-pages"]).is_ok());
    }

    #[test]
    fn drain_counts_the_time_until_the_last_request_ended() {
        let from = Instant::now();
        let window = Duration::from_secs(10);
        let late = from + Duration::from_secs(64);
        assert_eq!(measured_seconds(window, from, late, false), 10.0);
        assert_eq!(measured_seconds(window, from, late, true), 64.0);
        // Never less than the window.
        let early = from + Duration::from_secs(3);
        assert_eq!(measured_seconds(window, from, early, true), 10.0);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some_and(|s| s >= 0.0));
        assert!(cpu_seconds(u32::MAX).is_none());
    }

    #[test]
    fn watched_pids_may_be_a_summed_group() {
        let cli = Cli::parse_from([
            "loadgen",
            "http://h/mcp",
            "--watch-pid",
            "7",
            "--watch-pid",
            "8,9",
        ]);
        assert_eq!(cli.watch_pids, vec![vec![7], vec![8, 9]]);
        assert!(Cli::try_parse_from(["loadgen", "http://h/mcp", "--watch-pid", "8,"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "http://h/mcp", "--watch-pid", "x"]).is_err());
        // A group's CPU is its members' sum, and unknown if one is gone.
        let me = std::process::id();
        let one = cpu_seconds(me).unwrap_or_default();
        assert!(group_cpu_seconds(&[me, me]).is_some_and(|s| s >= 2.0 * one));
        assert!(group_cpu_seconds(&[me, u32::MAX]).is_none());
        let report = cpu_report(vec![(vec![8, 9], Some(1.0)), (vec![7], Some(0.5))], 1000);
        assert_eq!(
            (report[0].pid, report[0].pids.clone()),
            (8, Some(vec![8, 9]))
        );
        assert_eq!((report[1].pid, report[1].pids.clone()), (7, None));
        assert_eq!(report[0].us_per_request, 1000.0);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|n| n * 1000).collect();
        let p = percentiles(&v);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(percentiles(&[]).p50, 0.0);
    }
}
