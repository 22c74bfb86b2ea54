//! Opening one MCP client connection over the configured transport.

use std::collections::HashMap;
use std::sync::Arc;

use rmcp::service::{RoleClient, RunningService, ServiceExt};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;

use super::child::ChildTransport;
use super::client::UpstreamClient;
use super::http::TracingClient;
use super::ordered::InOrder;
use super::sse::SseClientTransport;
use super::task_support::TaskSupport;
use super::UpstreamError;
use crate::config::UpstreamProtocol;
use crate::config::{HttpUpstreamConfig, Transport, UpstreamConfig};
use rmcp::model::ProtocolVersion;
use rmcp::service::{ClientLifecycleMode, ClientServiceExt};

/// In-flight POSTs on one streamable HTTP connection (rmcp's default is 16,
/// far below what one shared connection carries).
const MAX_CONCURRENT_POSTS: usize = 1024;

/// A live client session with an upstream.
pub(crate) type Service = RunningService<RoleClient, UpstreamClient>;

/// Connects and performs the MCP handshake, within the connect timeout.
/// Every message the server sends is shown to `seen` before rmcp parses it
/// (see `task_support`).
pub(crate) async fn connect(
    name: &str,
    config: &UpstreamConfig,
    protocol: UpstreamProtocol,
    client: UpstreamClient,
    http: &reqwest::Client,
    seen: Arc<TaskSupport>,
) -> Result<Service, UpstreamError> {
    let fail = |message: String| UpstreamError::Connect {
        upstream: name.to_owned(),
        message,
    };
    let transport = config
        .transport()
        .ok_or_else(|| fail("no transport configured".into()))?;
    let routes = client.routes.clone();
    let upstream = client.upstream.clone();
    let log_lines = client.metrics.upstream_log_lines.clone();
    let lifecycle = lifecycle(protocol);
    let handshake = async {
        match transport {
            Transport::Stdio(stdio) => {
                let child = ChildTransport::spawn(name, &stdio, seen)
                    .map_err(|e| fail(format!("spawn `{}`: {e}", stdio.command)))?;
                client
                    .serve_with_lifecycle(
                        InOrder::new(child, upstream, routes, false, log_lines),
                        lifecycle,
                    )
                    .await
                    .map_err(|e| fail(e.to_string()))
            }
            Transport::Http(h) => {
                let mut cfg = StreamableHttpClientTransportConfig::with_uri(h.url.as_str())
                    .custom_headers(headers(&h).map_err(fail)?)
                    // One shared connection carries every client's calls.
                    .max_concurrent_requests(MAX_CONCURRENT_POSTS);
                // A restarted server forgets our session: re-initialize and retry.
                cfg.reinit_on_expired_session = true;
                let transport = InOrder::new(
                    StreamableHttpClientTransport::with_client(
                        TracingClient {
                            http: http.clone(),
                            seen,
                        },
                        cfg,
                    ),
                    upstream,
                    routes,
                    true,
                    log_lines,
                );
                client
                    .serve_with_lifecycle(transport, lifecycle)
                    .await
                    .map_err(|e| fail(e.to_string()))
            }
            Transport::Sse(h) => {
                let url = reqwest::Url::parse(&h.url).map_err(|e| fail(e.to_string()))?;
                let header_map = headers(&h).map_err(fail)?.into_iter().collect();
                let transport = SseClientTransport::connect(
                    http.clone(),
                    url,
                    header_map,
                    config.connect_timeout,
                    seen,
                )
                .await
                .map_err(|e| fail(e.to_string()))?;
                client
                    .serve(InOrder::new(transport, upstream, routes, false, log_lines))
                    .await
                    .map_err(|e| fail(e.to_string()))
            }
        }
    };
    tokio::time::timeout(config.connect_timeout, handshake)
        .await
        .map_err(|_| fail(format!("no handshake within {:?}", config.connect_timeout)))?
}

/// The rmcp lifecycle for a configured protocol era. The legacy HTTP+SSE
/// transport predates 2026-07-28 and always uses `initialize`.
fn lifecycle(protocol: UpstreamProtocol) -> ClientLifecycleMode {
    let modern = vec![ProtocolVersion::V_2026_07_28];
    match protocol {
        UpstreamProtocol::Legacy => ClientLifecycleMode::Initialize,
        UpstreamProtocol::Modern => ClientLifecycleMode::Discover {
            preferred_versions: modern,
        },
        UpstreamProtocol::Auto => ClientLifecycleMode::Auto {
            preferred_versions: modern,
            legacy_version: None,
        },
    }
}

fn headers(h: &HttpUpstreamConfig) -> Result<HashMap<http::HeaderName, http::HeaderValue>, String> {
    h.headers
        .iter()
        .map(|(k, v)| {
            let name =
                http::HeaderName::try_from(k.as_str()).map_err(|e| format!("header {k}: {e}"))?;
            let value =
                http::HeaderValue::try_from(v.as_str()).map_err(|e| format!("header {k}: {e}"))?;
            Ok((name, value))
        })
        .collect()
}
