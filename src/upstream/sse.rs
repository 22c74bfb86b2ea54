//! A client for the 2024-11-05 HTTP+SSE transport, which rmcp does not
//! ship: servers that predate streamable HTTP still speak it.
//!
//! The transport is two halves. A long-lived `GET` returns an event stream
//! whose first event, `endpoint`, names the URL to `POST` messages to; every
//! later `message` event carries one JSON-RPC message from the server.
//! Responses to our POSTs arrive on the stream, not in the POST's body.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::HeaderMap;
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use sse_stream::SseStream;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::task_support::TaskSupport;

/// Messages from the server not yet taken by the service.
const INBOX: usize = 256;

/// Why the SSE transport failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SseError {
    /// The HTTP request itself failed (connect, TLS, reset).
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered with a non-success status.
    #[error("{what} answered HTTP {status}")]
    Status {
        /// Which request: the event stream or a message POST.
        what: &'static str,
        /// The status received.
        status: reqwest::StatusCode,
    },
    /// The stream ended or broke before naming the message endpoint.
    #[error("event stream ended before the `endpoint` event")]
    NoEndpoint,
    /// The `endpoint` event did not arrive in time.
    #[error("no `endpoint` event within {0:?}")]
    Timeout(Duration),
    /// The `endpoint` event named a URL we will not post to.
    #[error("bad endpoint `{endpoint}`: {reason}")]
    BadEndpoint {
        /// The event's data.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A message could not be serialised (a bug, not input).
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A connected HTTP+SSE client transport.
pub(crate) struct SseClientTransport {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    headers: HeaderMap,
    inbox: mpsc::Receiver<RxJsonRpcMessage<RoleClient>>,
    /// Stops the stream reader when the transport is dropped or closed.
    _reader: DropGuard,
    reader_token: CancellationToken,
}

impl SseClientTransport {
    /// Opens the event stream and waits, up to `timeout`, for the server to
    /// name its message endpoint. Every message is shown to `seen` before
    /// it is parsed.
    pub(crate) async fn connect(
        client: reqwest::Client,
        sse_url: reqwest::Url,
        headers: HeaderMap,
        timeout: Duration,
        seen: Arc<TaskSupport>,
    ) -> Result<SseClientTransport, SseError> {
        let response = client
            .get(sse_url.clone())
            .headers(headers.clone())
            .header(ACCEPT, "text/event-stream")
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(SseError::Status {
                what: "event stream",
                status: response.status(),
            });
        }
        let mut events = SseStream::from_byte_stream(response.bytes_stream());
        let endpoint = tokio::time::timeout(timeout, async {
            while let Some(event) = events.next().await {
                let Ok(event) = event else { break };
                if event.event.as_deref() == Some("endpoint") {
                    return Ok(event.data.unwrap_or_default());
                }
            }
            Err(SseError::NoEndpoint)
        })
        .await
        .map_err(|_| SseError::Timeout(timeout))??;
        let endpoint = resolve_endpoint(&sse_url, endpoint.trim())?;

        let (tx, inbox) = mpsc::channel(INBOX);
        let token = CancellationToken::new();
        let reader = token.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = reader.cancelled() => return,
                    event = events.next() => event,
                };
                let event = match event {
                    Some(Ok(event)) => event,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "SSE upstream stream broke");
                        return;
                    }
                    None => return,
                };
                // Unnamed events are `message` by the SSE spec.
                if !matches!(event.event.as_deref(), None | Some("message")) {
                    continue;
                }
                let Some(data) = event.data else { continue };
                seen.observe(data.as_bytes());
                match serde_json::from_str::<RxJsonRpcMessage<RoleClient>>(&data) {
                    Ok(message) => {
                        if tx.send(message).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "SSE upstream sent a message that is not JSON-RPC")
                    }
                }
            }
        });
        Ok(SseClientTransport {
            client,
            endpoint,
            headers,
            inbox,
            _reader: token.clone().drop_guard(),
            reader_token: token,
        })
    }
}

/// Resolves the `endpoint` event's URL against the stream's URL and refuses
/// one on another origin: a server must not be able to redirect our
/// messages (and the upstream's credentials in `headers`) elsewhere.
fn resolve_endpoint(base: &reqwest::Url, endpoint: &str) -> Result<reqwest::Url, SseError> {
    let bad = |reason: &str| SseError::BadEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let url = base.join(endpoint).map_err(|e| bad(&e.to_string()))?;
    if url.origin() != base.origin() {
        return Err(bad("not on the event stream's origin"));
    }
    Ok(url)
}

impl Transport<RoleClient> for SseClientTransport {
    type Error = SseError;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        let mut headers = self.headers.clone();
        headers.extend(super::http::trace_headers(&item));
        let request = serde_json::to_vec(&item).map(|body| {
            self.client
                .post(self.endpoint.clone())
                .headers(headers)
                .header(CONTENT_TYPE, "application/json")
                .body(body)
        });
        async move {
            let response = request?.send().await?;
            if !response.status().is_success() {
                return Err(SseError::Status {
                    what: "message POST",
                    status: response.status(),
                });
            }
            Ok(())
        }
    }

    fn receive(
        &mut self,
    ) -> impl std::future::Future<Output = Option<RxJsonRpcMessage<RoleClient>>> + Send {
        self.inbox.recv()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.reader_token.cancel();
        self.inbox.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> reqwest::Url {
        reqwest::Url::parse("http://127.0.0.1:3001/sse").unwrap()
    }

    #[test]
    fn relative_endpoint_resolves_against_the_stream() {
        let url = resolve_endpoint(&base(), "/message?sessionId=abc").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:3001/message?sessionId=abc");
        let url = resolve_endpoint(&base(), "messages/1").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:3001/messages/1");
    }

    #[test]
    fn absolute_endpoint_on_the_same_origin_is_accepted() {
        let url = resolve_endpoint(&base(), "http://127.0.0.1:3001/m?s=1").unwrap();
        assert_eq!(url.path(), "/m");
    }

    #[test]
    fn endpoint_on_another_origin_is_refused() {
        for other in [
            "http://evil.example/m",
            "http://127.0.0.1:3002/m",
            "https://127.0.0.1:3001/m",
            "//evil.example/m",
        ] {
            let err = resolve_endpoint(&base(), other).unwrap_err();
            assert!(
                matches!(err, SseError::BadEndpoint { .. }),
                "{other}: {err}"
            );
        }
    }
}
