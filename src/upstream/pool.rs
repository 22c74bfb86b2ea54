//! `session: per-client`: one upstream connection per downstream session,
//! capped, reaped when idle and closed when the session ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Caller, Connection, Upstream, UpstreamError};

struct Entry {
    conn: Arc<Connection>,
    stop: CancellationToken,
}

/// Per-client connections keyed by downstream session id.
pub(crate) struct Pool {
    max: usize,
    entries: Mutex<HashMap<u64, Entry>>,
    /// Serializes opening, so two concurrent first calls from one session
    /// open one connection, and the cap is never overshot.
    opening: tokio::sync::Mutex<()>,
}

impl Pool {
    pub(crate) fn new(max: usize) -> Pool {
        Pool {
            max,
            entries: Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, session: u64) -> Option<Arc<Connection>> {
        self.lock()
            .get(&session)
            .filter(|e| !e.conn.closed.is_cancelled())
            .map(|e| e.conn.clone())
    }

    pub(crate) fn remove(&self, session: u64) {
        if let Some(entry) = self.lock().remove(&session) {
            entry.stop.cancel();
        }
    }

    /// Number of live per-client connections.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Upstream {
    pub(super) async fn per_client_connection(
        &self,
        caller: &Caller,
    ) -> Result<Arc<Connection>, UpstreamError> {
        if let Some(conn) = self.per_client.get(caller.session) {
            return Ok(conn);
        }
        let _opening = self.per_client.opening.lock().await;
        if let Some(conn) = self.per_client.get(caller.session) {
            return Ok(conn);
        }
        self.per_client.remove(caller.session);
        if self.per_client.len() >= self.per_client.max {
            return Err(UpstreamError::TooManySessions {
                upstream: self.name.to_string(),
                max: self.per_client.max,
            });
        }
        // A legacy client meets an `auto` server in its own era, as directly.
        let protocol = match self.config.protocol {
            crate::config::UpstreamProtocol::Auto if caller.legacy => {
                crate::config::UpstreamProtocol::Legacy
            }
            configured => configured,
        };
        let owner = Arc::new(caller.clone());
        let (conn, service) = match self.open_as(Some(owner.clone()), protocol).await {
            // A 2026-07-28-only server: the legacy client is bridged.
            Err(_) if protocol != self.config.protocol => {
                self.open_as(Some(owner), self.config.protocol).await?
            }
            opened => opened?,
        };
        let stop = CancellationToken::new();
        self.per_client.lock().insert(
            caller.session,
            Entry {
                conn: conn.clone(),
                stop: stop.clone(),
            },
        );
        tracing::info!(upstream = %self.name, session = caller.session, "per-client upstream session opened");
        let watched = conn.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            let cancel = service.cancellation_token();
            let mut waiter = tokio::spawn(service.waiting());
            tokio::select! {
                _ = &mut waiter => {}
                () = stop.cancelled() => { cancel.cancel(); let _ = waiter.await; }
                () = shutdown.cancelled() => { cancel.cancel(); let _ = waiter.await; }
            }
            watched.closed.cancel();
        });
        Ok(conn)
    }
}

/// Closes per-client connections idle longer than the configured timeout.
pub(super) async fn reap_idle(up: Arc<Upstream>) {
    let idle = up.config.idle_timeout;
    let period = (idle / 4).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = up.shutdown.cancelled() => return,
        }
        let stale: Vec<u64> = up
            .per_client
            .lock()
            .iter()
            .filter(|(_, e)| e.conn.idle_for() >= idle && e.conn.routes.in_flight() == 0)
            .map(|(id, _)| *id)
            .collect();
        for session in stale {
            tracing::info!(upstream = %up.name, session, "closing idle per-client upstream session");
            up.per_client.remove(session);
        }
    }
}
