//! The HTTP listener: routes `/mcp`, `/mcp/{upstream}` and `/mcp/v/{name}`
//! to the streamable HTTP MCP service of that endpoint, and answers
//! `/healthz` and `/readyz`.
//!
//! Host and Origin checks (DNS-rebinding protection) and the request body
//! limit are enforced by rmcp's `StreamableHttpService`, configured here
//! from `http:` in the config; each failure gets a clear HTTP error.

mod admin;
mod auth;
mod compact;
mod health;
mod hibernate;
mod listen;
mod llm;
mod stdio;
mod task_support;
mod tasks2025;

pub use stdio::stdio;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rmcp::model::ErrorData;
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::Value;
use tokio::net::TcpListener;
use tower::Service;

use crate::config::Config;
use crate::gateway::{Gateway, Session};
use crate::ratelimit::Refused;
use crate::registry::Endpoint;
use crate::runtime::Runtime;

type McpService = StreamableHttpService<Session, hibernate::Hibernating>;
/// Response body type of every route.
pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The routing table: one MCP service per endpoint, built at start.
pub struct Router {
    mcp: HashMap<Endpoint, McpService>,
    gateway: Arc<Gateway>,
    /// Serve `/metrics` and `/admin` here (false when they have their own listener).
    admin: bool,
    /// The model API (`/v1/*`); `None` on the admin-only listener.
    llm: Option<Arc<crate::llm::Llm>>,
    llm_guard: llm::Guard,
    auth: auth::HttpAuth,
}

impl Router {
    /// Builds a service for every endpoint the config defines.
    pub fn new(runtime: &Runtime, admin: bool) -> Router {
        let config = &runtime.config;
        let gateway = runtime.gateway.clone();
        let registry = gateway.registry().clone();
        let mut endpoints = vec![Endpoint::Aggregate];
        endpoints.extend(
            registry
                .upstreams()
                .keys()
                .map(|u| Endpoint::Single(u.clone())),
        );
        endpoints.extend(
            config
                .virtual_servers
                .keys()
                .map(|v| Endpoint::Virtual(v.as_str().into())),
        );
        let mut managers = Vec::new();
        let mcp = endpoints
            .into_iter()
            .map(|endpoint| {
                let gw = gateway.clone();
                let ep = endpoint.clone();
                // One session manager per endpoint: a session id issued on
                // one path must not be usable on another.
                let mut local = LocalSessionManager::default();
                let mut session_config = SessionConfig::default();
                session_config.keep_alive = Some(config.http.session_idle_timeout);
                local.session_config = session_config;
                let sessions = Arc::new(hibernate::Hibernating::new(
                    local,
                    config.http.session_hibernate_after,
                    config.http.session_idle_timeout,
                    gateway.metrics().clone(),
                ));
                managers.push(Arc::downgrade(&sessions));
                gateway.add_dormant(endpoint.clone(), sessions.dormant());
                let mut http = mcp_config(config, runtime.shutdown_token());
                if !config.http.session_hibernate_after.is_zero() {
                    http.session_store = Some(sessions.store());
                }
                let service =
                    StreamableHttpService::new(move || Ok(gw.session(ep.clone())), sessions, http);
                (endpoint, service)
            })
            .collect();
        hibernate::spawn_sweeper(
            managers,
            config.http.session_hibernate_after,
            runtime.shutdown_token(),
        );
        Router {
            mcp,
            gateway,
            admin,
            llm: Some(runtime.llm.clone()),
            llm_guard: llm::Guard::new(&config.http),
            auth: auth::HttpAuth::new(runtime.auth.clone(), config),
        }
    }

    /// A router serving only `/metrics`, `/admin`, `/healthz` and `/readyz`,
    /// for the separate admin listener.
    pub fn admin_only(runtime: &Runtime) -> Router {
        Router {
            mcp: HashMap::new(),
            gateway: runtime.gateway.clone(),
            admin: true,
            llm: None,
            llm_guard: llm::Guard::new(&runtime.config.http),
            auth: auth::HttpAuth::new(runtime.auth.clone(), &runtime.config),
        }
    }

    /// Routes one request.
    pub async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().trim_end_matches('/').to_owned();
        if auth::HttpAuth::is_metadata(&path) {
            return self.auth.metadata(&req, &path);
        }
        match path.as_str() {
            "/healthz" => return text(StatusCode::OK, "ok\n"),
            "/readyz" => return health::ready(&self.gateway),
            "/metrics" if self.admin => return admin::metrics(&self.gateway),
            "/admin" if self.admin => return admin::page(),
            "/admin/api/upstreams" if self.admin => return admin::upstreams(&self.gateway).await,
            "/admin/api/calls" if self.admin => return admin::calls(&self.gateway),
            p if p.starts_with("/v1/") => {
                if let Some(llm) = &self.llm {
                    // The same authentication as `/mcp`: the identity lands
                    // in the request's extensions for the router to account.
                    if let Err(refusal) = self.auth.admit(&mut req, &path).await {
                        return refusal;
                    }
                    return llm::route(llm, req, &self.llm_guard).await;
                }
            }
            _ => {}
        }
        let endpoint = match path.strip_prefix("/mcp") {
            Some("") => self.gateway.registry().endpoint(None, None),
            Some(rest) => match rest.strip_prefix("/v/") {
                Some(v) => self.gateway.registry().endpoint(None, Some(v)),
                None => rest
                    .strip_prefix('/')
                    .and_then(|u| self.gateway.registry().endpoint(Some(u), None)),
            },
            None => None,
        };
        let Some((endpoint, mut service)) =
            endpoint.and_then(|e| self.mcp.get(&e).cloned().map(|s| (e, s)))
        else {
            return text(
                StatusCode::NOT_FOUND,
                &format!("no MCP endpoint at {path}\n"),
            );
        };
        let identity = match self.auth.admit(&mut req, &path).await {
            Ok(identity) => identity,
            Err(refusal) => return refusal,
        };
        // After auth, so each identity has its own request budget.
        if let Err(refused) = self.gateway.limits().admit_request(&identity).await {
            return too_many_requests(&refused);
        }
        let is_delete = req.method() == http::Method::DELETE;
        // Only a request without a session can open one (`initialize`):
        // a session's own requests were checked against its owner above.
        let opens = !req.headers().contains_key("mcp-session-id");
        // The session a DELETE ends: its owner is forgotten with it.
        let ended = is_delete
            .then(|| req.headers().get("mcp-session-id"))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (called, wanted, listened) = if listen::candidate(&req) {
            let limit = self.gateway.max_body_bytes();
            match listen::prepare(req, limit, &self.gateway, &identity, &endpoint).await {
                Ok((req, listened)) => (service.call(req).await, None, listened),
                Err(refusal) => return refusal,
            }
        } else if tasks2025::candidate(&req) {
            match tasks2025::rewrite(req, self.gateway.max_body_bytes()).await {
                Ok((req, wanted)) => (service.call(req).await, wanted, None),
                Err(refusal) => return refusal,
            }
        } else {
            (service.call(req).await, None, None)
        };
        let mut resp = match called {
            Ok(resp) => resp.map(|b| b.map_err(|e| Box::new(e) as _).boxed()),
            Err(never) => match never {},
        };
        if resp.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            return parse_error(resp).await;
        }
        // Session termination is complete when DELETE returns; rmcp says 202,
        // which clients (the Python SDK among them) report as a failure.
        if is_delete && resp.status() == StatusCode::ACCEPTED {
            *resp.status_mut() = StatusCode::OK;
        }
        if is_delete && resp.status() == StatusCode::OK {
            if let Some(session) = &ended {
                self.auth.forget(session);
            }
        }
        if opens {
            self.auth.bind(&resp, &identity);
        }
        if let Some(accepted) = listened {
            return listen::acknowledge(resp, accepted);
        }
        match wanted {
            Some(wanted) => {
                task_support::complete(resp, wanted, self.gateway.registry(), &endpoint).await
            }
            None => resp,
        }
    }
}

/// 429 with `Retry-After` in whole seconds (rounded up, at least 1), and
/// the limit and exact wait in the body.
fn too_many_requests(refused: &Refused) -> Response<Body> {
    let retry_ms = refused.retry_after_ms().unwrap_or(1000);
    let mut resp = text(StatusCode::TOO_MANY_REQUESTS, &format!("{refused}\n"));
    let seconds = retry_ms.div_ceil(1000).max(1);
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
    resp
}

fn mcp_config(
    config: &Config,
    shutdown: tokio_util::sync::CancellationToken,
) -> StreamableHttpServerConfig {
    let mut c = StreamableHttpServerConfig::default();
    c.cancellation_token = shutdown;
    c.max_request_body_bytes = config.http.max_body_bytes;
    c.allowed_hosts = if config.http.allowed_hosts.iter().any(|h| h == "*") {
        Vec::new()
    } else {
        config.http.allowed_hosts.clone()
    };
    c.allowed_origins = if config.http.allowed_origins.is_empty() {
        [
            "http://localhost:*",
            "http://127.0.0.1:*",
            "http://[::1]:*",
            "https://localhost:*",
        ]
        .map(String::from)
        .to_vec()
    } else {
        config.http.allowed_origins.clone()
    };
    c
}

/// rmcp answers a body that is not JSON-RPC with 415 and plain text; a
/// client deserves the JSON-RPC parse error (-32700) with 400. Only error
/// responses pass through here, so the hot path pays nothing.
async fn parse_error(resp: Response<Body>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let Ok(collected) = body.collect().await else {
        return text(parts.status, "unsupported request body\n");
    };
    let message = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    if !message.starts_with("fail to deserialize") {
        return Response::from_parts(
            parts,
            Full::new(Bytes::from(message))
                .map_err(|e| match e {})
                .boxed(),
        );
    }
    let error = ErrorData::parse_error(format!("Parse error: {message}"), None);
    json(StatusCode::BAD_REQUEST, &rpc_error(Value::Null, error))
}

/// A JSON-RPC error answer to request `id` (`null` when it is unknown).
pub(super) fn rpc_error(id: Value, error: ErrorData) -> Value {
    serde_json::json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

/// A request body, read whole up to `limit` bytes; 413 beyond it.
pub(super) async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Response<Body>> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body exceeds {limit} bytes\n"),
        )),
        Err(e) => Err(text(
            StatusCode::BAD_REQUEST,
            &format!("reading the request body failed: {e}\n"),
        )),
    }
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(value.to_string()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_owned()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection's first bytes show, read without consuming
/// them. hyper-util's auto-detection reads them and hands them back to
/// HTTP/1 in a read of their own, after which hyper doubles its read
/// buffer to 16 KB, kept for the connection's life: for a client holding
/// an SSE stream open that is 8 KB per idle connection. So HTTP/1 (every
/// request line differs from the HTTP/2 preface within its first two
/// bytes) and HTTP/2 are served by hyper's own builders, and only a client
/// that has sent part of the preface is left to hyper-util's detection
/// (`None`).
async fn first_bytes(stream: &tokio::net::TcpStream) -> std::io::Result<Option<Protocol>> {
    let mut first = [0u8; H2_PREFACE.len()];
    let n = stream.peek(&mut first).await?;
    Ok(protocol(&first[..n]))
}

/// The protocols the listener serves.
#[derive(Debug, PartialEq)]
enum Protocol {
    Http1,
    Http2,
}

/// The protocol `first` (a connection's first bytes) shows, if it can say
/// yet: HTTP/2 only with the whole preface, HTTP/1 as soon as a byte
/// differs from it, nothing for a part of the preface or no bytes (a
/// closed connection, left to hyper to end).
fn protocol(first: &[u8]) -> Option<Protocol> {
    if first.is_empty() {
        None
    } else if !H2_PREFACE.starts_with(first) {
        Some(Protocol::Http1)
    } else if first.len() == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// Binds the listener. Separate from [`serve`] so the caller can print the
/// bound address (port 0 picks one) before serving.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Accepts connections until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        // Responses are written in pieces (headers, SSE events, the last
        // chunk); with Nagle's algorithm each would wait for the client's
        // delayed ACK (~40 ms per call).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let router = router.clone();
        tokio::spawn(async move {
            // Boxed: hyper keeps a slot the size of this future for the
            // connection's whole life (5 KB; the router's future is large),
            // and an SSE client holds its connection open while idle.
            let service = hyper::service::service_fn(move |req| {
                let router = router.clone();
                Box::pin(async move { Ok::<_, Infallible>(router.handle(req).await) })
                    as Pin<Box<dyn Future<Output = Result<_, Infallible>> + Send>>
            });
            let first = match first_bytes(&stream).await {
                Ok(first) => first,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connection ended before a request");
                    return;
                }
            };
            let io = TokioIo::new(stream);
            let served = match first {
                Some(Protocol::Http1) => http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                    .map_err(Into::into),
                // Boxed: the HTTP/2 and undetected connections' state
                // (1.5 KB) would otherwise size every HTTP/1 connection's
                // task (672 bytes of hyper's), idle SSE clients included.
                Some(Protocol::Http2) => Box::pin(
                    http2::Builder::new(TokioExecutor::new()).serve_connection(io, service),
                )
                .await
                .map_err(Into::into),
                None => {
                    Box::pin(auto::Builder::new(TokioExecutor::new()).serve_connection(io, service))
                        .await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_choose_the_protocol() {
        assert_eq!(protocol(b"GET /mcp HTTP/1.1\r\n"), Some(Protocol::Http1));
        // "POST" and "PRI " part at their second byte.
        assert_eq!(protocol(b"PO"), Some(Protocol::Http1));
        assert_eq!(
            protocol(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Protocol::Http2)
        );
        // Part of the preface, or nothing yet: left to hyper-util.
        assert_eq!(protocol(b"P"), None);
        assert_eq!(protocol(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(protocol(b""), None);
    }
}
