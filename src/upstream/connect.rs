//! Opening one MCP client connection over the configured transport.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;

use process_wrap::tokio::{CommandWrap, KillOnDrop, ProcessGroup};
use rmcp::service::{RoleClient, RunningService, ServiceExt};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use tokio::io::AsyncBufReadExt;

use super::client::UpstreamClient;
use super::http::TracingClient;
use super::ordered::InOrder;
use super::sse::SseClientTransport;
use super::UpstreamError;
use crate::config::UpstreamProtocol;
use crate::config::{HttpUpstreamConfig, StdioConfig, Transport, UpstreamConfig};
use rmcp::model::ProtocolVersion;
use rmcp::service::{ClientLifecycleMode, ClientServiceExt};

/// In-flight POSTs on one streamable HTTP connection (rmcp's default is 16,
/// far below what one shared connection carries).
const MAX_CONCURRENT_POSTS: usize = 1024;

/// A live client session with an upstream.
pub(crate) type Service = RunningService<RoleClient, UpstreamClient>;

/// Connects and performs the MCP handshake, within the connect timeout.
pub(crate) async fn connect(
    name: &str,
    config: &UpstreamConfig,
    protocol: UpstreamProtocol,
    client: UpstreamClient,
    http: &reqwest::Client,
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
    let lifecycle = lifecycle(protocol);
    let handshake = async {
        match transport {
            Transport::Stdio(stdio) => {
                let child = spawn_child(name, &stdio)
                    .map_err(|e| fail(format!("spawn `{}`: {e}", stdio.command)))?;
                client
                    .serve_with_lifecycle(InOrder::new(child, upstream, routes), lifecycle)
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
                    StreamableHttpClientTransport::with_client(TracingClient(http.clone()), cfg),
                    upstream,
                    routes,
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
                )
                .await
                .map_err(|e| fail(e.to_string()))?;
                client
                    .serve(InOrder::new(transport, upstream, routes))
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

/// Starts the child in its own process group, so that stopping it also stops
/// whatever it started (`npx` runs the real server as a grandchild), and
/// logs its stderr under the upstream's name: our own stdout and stderr
/// stay ours, which matters when the gateway itself speaks MCP on stdio.
fn spawn_child(name: &str, stdio: &StdioConfig) -> std::io::Result<TokioChildProcess> {
    let mut command = tokio::process::Command::new(&stdio.command);
    command.args(&stdio.args).envs(&stdio.env);
    if let Some(cwd) = &stdio.cwd {
        command.current_dir(cwd);
    }
    let mut wrapped = CommandWrap::from(command);
    wrapped.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
    let (child, stderr) = TokioChildProcess::builder(wrapped)
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(stderr) = stderr {
        let upstream: Arc<str> = name.into();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "portcullis::upstream::stderr", upstream = %upstream, "{line}");
            }
        });
    }
    Ok(child)
}
