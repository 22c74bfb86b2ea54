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

use super::{Connection, Upstream};
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
    slot: tokio::sync::Mutex<Option<Opened>>,
}

impl Upstream {
    /// The connection a legacy client's request goes on, given the shared
    /// connection `primary` (which speaks 2026-07-28).
    pub(super) async fn legacy_for(&self, primary: Arc<Connection>) -> Arc<Connection> {
        if self.config.protocol != UpstreamProtocol::Auto {
            return primary;
        }
        // Serialized: concurrent first requests open one connection.
        let mut slot = self.legacy.slot.lock().await;
        if let Some(opened) = slot.as_ref() {
            let same = opened
                .primary
                .upgrade()
                .is_some_and(|p| Arc::ptr_eq(&p, &primary));
            if same {
                match &opened.conn {
                    Some(conn) if !conn.closed.is_cancelled() => return conn.clone(),
                    Some(_) => {}
                    None => return primary,
                }
            }
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
        *slot = Some(Opened {
            primary: Arc::downgrade(&primary),
            conn: conn.clone(),
        });
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
