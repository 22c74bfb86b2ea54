//! One upstream, two protocol eras. With `protocol: auto` the shared
//! connection speaks 2026-07-28 to a server that offers it; a legacy
//! client talking to that server directly would have used `initialize`
//! and a session, in which the server may send it requests (elicitation,
//! sampling, roots) in the middle of a tool call. So the gateway keeps a
//! second, legacy connection to a dual-era server, opened on the first
//! legacy client's request, and sends every legacy client's request on it:
//! each client era meets the server in its own era, as it would directly.
//! A server that refuses `initialize` (2026-07-28 only) is asked once per
//! shared connection; its legacy clients are then served on the 2026
//! connection through the gateway's bridges.

use std::sync::{Arc, Weak};

use arc_swap::ArcSwapOption;

use rmcp::model::{ClientRequest, ErrorCode, ServerResult};
use tokio_util::sync::CancellationToken;

use super::{Caller, Connection, Upstream, UpstreamError};
use crate::config::UpstreamProtocol;

/// The legacy connection opened for one 2026-07-28 shared connection.
struct Opened {
    /// The shared connection it belongs to; a new one means a new server
    /// (or a restarted one), which is asked again.
    primary: Weak<Connection>,
    /// `None` when the server refused `initialize`.
    conn: Option<Arc<Connection>>,
}

/// The legacy connection of an `auto` upstream, if one was opened.
#[derive(Default)]
pub(crate) struct LegacyConnection {
    /// What was opened last: every legacy request reads it without waiting.
    current: ArcSwapOption<Opened>,
    /// Serializes opening: concurrent first requests open one connection.
    opening: tokio::sync::Mutex<()>,
}

impl LegacyConnection {
    /// The connection for `primary` if one is settled: the legacy one while
    /// it is open, or `primary` itself when the server refused `initialize`.
    /// `None` when nothing was opened for `primary` or the legacy one closed.
    fn settled(&self, primary: &Arc<Connection>) -> Option<Arc<Connection>> {
        let opened = self.current.load();
        let opened = opened.as_deref()?;
        if !opened
            .primary
            .upgrade()
            .is_some_and(|p| Arc::ptr_eq(&p, primary))
        {
            return None;
        }
        match &opened.conn {
            Some(conn) if !conn.closed.is_cancelled() => Some(conn.clone()),
            Some(_) => None,
            None => Some(primary.clone()),
        }
    }
}

impl Upstream {
    /// Sends a legacy client's request on the legacy connection of a
    /// dual-era server. A tool written for 2026-07-28 answers a legacy
    /// session with an error instead of its `InputRequiredResult`; such a
    /// request is sent again on the 2026-07-28 connection, whose input
    /// requests the gateway bridges to the client (re-sending a request
    /// that asked for input is how multi round-trip requests work anyway).
    pub(super) async fn request_legacy(
        &self,
        primary: Arc<Connection>,
        caller: Caller,
        request: ClientRequest,
        ct: &CancellationToken,
    ) -> Result<ServerResult, UpstreamError> {
        let caller = Arc::new(caller);
        let conn = self.legacy_for(primary.clone()).await;
        if Arc::ptr_eq(&conn, &primary) {
            return self.send(&conn, request, Some(caller), ct).await;
        }
        let again = matches!(request, ClientRequest::CallToolRequest(_)).then(|| request.clone());
        match (
            self.send(&conn, request, Some(caller.clone()), ct).await,
            again,
        ) {
            (Err(UpstreamError::Remote(e)), Some(request)) if needs_modern(&e) => {
                self.send(&primary, request, Some(caller), ct).await
            }
            (result, _) => result,
        }
    }

    /// The connection a legacy client's request goes on, given the shared
    /// connection `primary` (which speaks 2026-07-28).
    async fn legacy_for(&self, primary: Arc<Connection>) -> Arc<Connection> {
        if self.config.protocol != UpstreamProtocol::Auto {
            return primary;
        }
        if let Some(conn) = self.legacy.settled(&primary) {
            return conn;
        }
        // Boxed: opening is a large future, needed once per connection,
        // and every legacy call's future would otherwise carry its size.
        Box::pin(self.open_legacy(primary)).await
    }

    /// Opens the legacy connection for `primary`, once for concurrent
    /// first requests.
    async fn open_legacy(&self, primary: Arc<Connection>) -> Arc<Connection> {
        let _opening = self.legacy.opening.lock().await;
        if let Some(conn) = self.legacy.settled(&primary) {
            return conn;
        }
        let conn = match self.open_as(None, UpstreamProtocol::Legacy).await {
            Ok((conn, service)) => {
                tracing::info!(upstream = %self.name, "legacy connection opened for legacy clients");
                self.tasks.spawn(run_secondary(
                    self.name.clone(),
                    conn.clone(),
                    primary.clone(),
                    service,
                    self.shutdown.clone(),
                ));
                Some(conn)
            }
            Err(e) => {
                tracing::info!(upstream = %self.name, error = %e, "no legacy connection; legacy clients are bridged");
                None
            }
        };
        self.legacy.current.store(Some(Arc::new(Opened {
            primary: Arc::downgrade(&primary),
            conn: conn.clone(),
        })));
        conn.unwrap_or(primary)
    }
}

/// Runs a legacy connection until it ends, its shared connection ends, or
/// the gateway shuts down; then marks it closed (so the next legacy request
/// opens a new one) and waits for the transport, which reaps a child.
async fn run_secondary(
    upstream: Arc<str>,
    conn: Arc<Connection>,
    primary: Arc<Connection>,
    service: super::connect::Service,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let cancel = service.cancellation_token();
    let mut waiter = tokio::spawn(service.waiting());
    tokio::select! {
        _ = &mut waiter => {}
        () = primary.closed.cancelled() => {
            cancel.cancel();
            let _ = (&mut waiter).await;
        }
        () = shutdown.cancelled() => {
            cancel.cancel();
            let _ = (&mut waiter).await;
        }
    }
    conn.closed.cancel();
    tracing::debug!(upstream = %upstream, "legacy connection closed");
}

/// Whether a server refused a legacy session a result only 2026-07-28 can
/// carry (rmcp says so with -32600 naming `InputRequiredResult`).
fn needs_modern(e: &rmcp::model::ErrorData) -> bool {
    e.code == ErrorCode::INVALID_REQUEST && e.message.contains("InputRequiredResult")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ErrorData;

    #[test]
    fn only_a_refused_input_required_result_goes_to_the_modern_connection() {
        let refused = ErrorData::invalid_request(
            "InputRequiredResult requires negotiated protocol version 2026-07-28 or newer",
            None,
        );
        assert!(needs_modern(&refused));
        assert!(!needs_modern(&ErrorData::invalid_request("bad", None)));
        assert!(!needs_modern(&ErrorData::invalid_params(
            "InputRequiredResult",
            None
        )));
    }
}
