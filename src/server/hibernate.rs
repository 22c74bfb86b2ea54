//! Hibernation of idle downstream sessions.
//!
//! rmcp's `LocalSessionManager` gives every streamable-HTTP session a worker
//! task and four channels whose first blocks tokio allocates eagerly: about
//! 45 KB per session whether or not the client ever calls again. Agent
//! clients open a session and then mostly sit on it, so that is what a
//! gateway's memory is made of.
//!
//! [`Hibernating`] wraps the local manager. A session idle for
//! `http.session_hibernate_after`, with no stream open and nothing in the
//! gateway beyond what its `initialize` set up ([`SessionLink::restorable`]),
//! has its worker closed; the [`Shelf`] keeps only its `initialize`
//! parameters, serialized. The shelf is also the rmcp `SessionStore`: the
//! next request on that session id finds no worker, and rmcp rebuilds the
//! session transparently by replaying `initialize` (with that request's
//! headers, so authentication is the request's own). The client sees the
//! same session. Shelved sessions expire after `http.session_idle_timeout`
//! of inactivity, as live ones do.
//!
//! What a hibernated session forgets is only what rmcp kept in its worker:
//! finished response streams cached for `Last-Event-ID` resumption (hence
//! the 60 s default, rmcp's own retention).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::common::server_side_http::ServerSseMessage;
use rmcp::transport::streamable_http_server::session::local::{
    LocalSessionManager, LocalSessionManagerError,
};
use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};
use rmcp::transport::streamable_http_server::session::EventStore;
use rmcp::transport::streamable_http_server::{RestoreOutcome, SessionId, SessionManager};
use tokio_util::sync::CancellationToken;

use crate::gateway::SessionLink;
use crate::telemetry::metrics::Metrics;

/// A session id as the shelf keeps it: rmcp's ids are UUIDs, held inline
/// here so a sleeping session's entry is not a string allocated among its
/// worker's freed memory.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key(u128);

impl Key {
    fn of(id: &str) -> Option<Key> {
        uuid::Uuid::parse_str(id).ok().map(|u| Key(u.as_u128()))
    }

    fn id(self) -> SessionId {
        uuid::Uuid::from_u128(self.0).to_string().into()
    }
}

/// One session as the shelf knows it.
struct Entry {
    /// The `initialize` parameters, as JSON: what a restore replays.
    /// `None` until the handshake succeeded (such a session never sleeps).
    /// Shared by every session that sent the same ones.
    initialize: Option<Arc<[u8]>>,
    /// Set by the gateway's session when it handles `initialize`; dropped
    /// while the session sleeps.
    link: Option<Arc<SessionLink>>,
    /// Whether the session has a worker.
    awake: bool,
    /// Streams (responses, the GET stream, resumptions) open now.
    open: u32,
    last_active: Instant,
    /// Closes still to come from workers this shelf put to sleep: rmcp
    /// closes a session when its worker ends, and that close must not end
    /// the session the shelf keeps (or one rebuilt since).
    stale_closes: u32,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            initialize: None,
            link: None,
            awake: true,
            open: 0,
            last_active: now,
            stale_closes: 0,
        }
    }

    fn may_sleep(&self, now: Instant, after: Duration) -> bool {
        self.awake
            && self.open == 0
            && self.initialize.is_some()
            && now.duration_since(self.last_active) >= after
    }
}

/// The sessions of one endpoint: the rmcp `SessionStore` that hibernated
/// sessions are restored from.
pub(super) struct Shelf {
    entries: Mutex<HashMap<Key, Entry>>,
    /// The distinct `initialize` parameters of the sessions kept: clients
    /// of one kind send the same ones.
    initializes: Mutex<HashSet<Arc<[u8]>>>,
    /// Held while a worker is being closed for hibernation and while one is
    /// restored, so a restore never races the close of the same session.
    gate: tokio::sync::Mutex<()>,
    after: Duration,
    lifetime: Duration,
    metrics: Arc<Metrics>,
}

impl Shelf {
    fn entries(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        // A panic elsewhere while holding the lock leaves the map usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the session's entry, if the shelf keeps one.
    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let key = Key::of(id)?;
        self.entries().get_mut(&key).map(f)
    }

    fn touch(&self, id: &str) {
        self.with(id, |e| e.last_active = Instant::now());
    }

    fn open(self: &Arc<Self>, id: &str) -> Busy {
        self.with(id, |e| {
            e.open += 1;
            e.last_active = Instant::now();
        });
        Busy {
            shelf: self.clone(),
            key: Key::of(id),
        }
    }

    /// The shared copy of `bytes`.
    fn intern(&self, bytes: Vec<u8>) -> Arc<[u8]> {
        let mut pool = self.initializes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = pool.get(bytes.as_slice()) {
            return known.clone();
        }
        let shared: Arc<[u8]> = bytes.into();
        pool.insert(shared.clone());
        shared
    }

    /// Drops an entry's share of its `initialize`, and the pool's copy when
    /// no other entry holds it.
    fn release(&self, e: Entry) {
        if !e.awake {
            self.metrics.sessions_hibernated.dec();
        }
        if let Some(shared) = e.initialize {
            // Two owners left: the pool's and this one.
            if Arc::strong_count(&shared) <= 2 {
                let mut pool = self.initializes.lock().unwrap_or_else(|e| e.into_inner());
                pool.remove(&shared);
            }
        }
    }

    /// Forgets a session.
    fn forget(&self, id: &str) {
        let Some(key) = Key::of(id) else { return };
        let removed = self.entries().remove(&key);
        if let Some(e) = removed {
            self.release(e);
        }
    }
}

/// Marks a session busy while a stream of it is open.
struct Busy {
    shelf: Arc<Shelf>,
    key: Option<Key>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        if let Some(e) = self.shelf.entries().get_mut(&key) {
            e.open = e.open.saturating_sub(1);
            e.last_active = Instant::now();
        }
    }
}

fn busy_while<S>(stream: S, busy: Busy) -> impl Stream<Item = ServerSseMessage> + Send + Sync
where
    S: Stream<Item = ServerSseMessage> + Send + Sync,
{
    stream.map(move |m| {
        let _ = &busy;
        m
    })
}

#[async_trait::async_trait]
impl SessionStore for Shelf {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let Some(bytes) = self.with(session_id, |e| e.initialize.clone()).flatten() else {
            return Ok(None);
        };
        Ok(Some(SessionState::new(serde_json::from_slice(&bytes)?)))
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let shared = self.intern(serde_json::to_vec(&state.initialize_params)?);
        self.with(session_id, |e| e.initialize = Some(shared));
        Ok(())
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        self.forget(session_id);
        Ok(())
    }
}

/// rmcp's local session manager, with idle sessions put to sleep.
pub(super) struct Hibernating {
    inner: LocalSessionManager,
    shelf: Arc<Shelf>,
}

impl Hibernating {
    /// Wraps `inner`; `after` is the idle time before a session sleeps
    /// (zero: never), `lifetime` the idle time before a sleeping one is
    /// forgotten.
    pub(super) fn new(
        inner: LocalSessionManager,
        after: Duration,
        lifetime: Duration,
        metrics: Arc<Metrics>,
    ) -> Hibernating {
        Hibernating {
            inner,
            shelf: Arc::new(Shelf {
                entries: Mutex::new(HashMap::new()),
                initializes: Mutex::new(HashSet::new()),
                gate: tokio::sync::Mutex::new(()),
                after,
                lifetime,
                metrics,
            }),
        }
    }

    /// The store to give rmcp's `StreamableHttpServerConfig`.
    pub(super) fn store(&self) -> Arc<dyn SessionStore> {
        self.shelf.clone()
    }

    /// Puts to sleep every session idle long enough whose gateway state
    /// allows it, and forgets sleeping sessions past their lifetime.
    /// Returns how many went to sleep.
    pub(super) async fn sweep(&self) -> usize {
        let shelf = &self.shelf;
        if shelf.after.is_zero() {
            return 0;
        }
        let now = Instant::now();
        let (expired, candidates): (Vec<Entry>, Vec<(Key, Arc<SessionLink>)>) = {
            let mut entries = shelf.entries();
            let gone: Vec<Key> = entries
                .iter()
                .filter(|(_, e)| !e.awake && now.duration_since(e.last_active) >= shelf.lifetime)
                .map(|(k, _)| *k)
                .collect();
            let expired = gone.iter().filter_map(|k| entries.remove(k)).collect();
            let candidates = entries
                .iter()
                .filter(|(_, e)| e.may_sleep(now, shelf.after))
                .filter_map(|(k, e)| Some((*k, e.link.clone()?)))
                .collect();
            (expired, candidates)
        };
        for e in expired {
            shelf.release(e);
        }
        let mut slept = 0;
        for (key, link) in candidates {
            if !link.restorable() {
                continue;
            }
            let _gate = shelf.gate.lock().await;
            {
                let mut entries = shelf.entries();
                // A request may have come in since the scan.
                match entries.get_mut(&key) {
                    Some(e) if e.may_sleep(Instant::now(), shelf.after) => {
                        e.awake = false;
                        e.stale_closes += 1;
                        e.link = None;
                    }
                    _ => continue,
                }
            }
            let id = key.id();
            if let Err(e) = self.inner.close_session(&id).await {
                tracing::debug!(session = %id, error = %e, "closing a hibernating session's worker");
            }
            shelf.metrics.sessions_hibernated.inc();
            slept += 1;
        }
        slept
    }
}

/// Sweeps `managers` every half hibernation period until `stop`.
pub(super) fn spawn_sweeper(
    managers: Vec<Weak<Hibernating>>,
    after: Duration,
    stop: CancellationToken,
) {
    if after.is_zero() || managers.is_empty() {
        return;
    }
    let period = (after / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let mut slept = 0;
            for m in &managers {
                if let Some(m) = m.upgrade() {
                    slept += m.sweep().await;
                }
            }
            if slept > 0 {
                tracing::debug!(sessions = slept, "sessions hibernated");
                release_freed_memory();
            }
        }
    });
}

/// Hands the pages freed by closed workers back to the kernel. glibc's
/// `free` returns memory only from the top of a heap, and a worker's
/// channel blocks sit between longer-lived allocations, so without this the
/// gateway's resident memory would stay at its busiest however many
/// sessions sleep.
#[allow(unsafe_code)]
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and has no preconditions; it
    // walks glibc's own free lists under glibc's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl SessionManager for Hibernating {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        let (id, transport) = self.inner.create_session().await?;
        if let Some(key) = Key::of(&id) {
            self.shelf.entries().insert(key, Entry::new(Instant::now()));
        }
        Ok((id, transport))
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        mut message: ClientJsonRpcMessage,
    ) -> Result<rmcp::model::ServerJsonRpcMessage, Self::Error> {
        let link = Arc::new(SessionLink::default());
        message.insert_extension(link.clone());
        self.shelf.with(id, |e| e.link = Some(link));
        self.inner.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        let awake = self.shelf.with(id, |e| {
            if e.awake {
                // Seen now: the sweeper leaves it alone for a whole period,
                // long past this request's next step.
                e.last_active = Instant::now();
            }
            e.awake
        });
        if awake == Some(false) {
            // rmcp then restores it from the shelf.
            return Ok(false);
        }
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        let stale = self.shelf.with(id, |e| {
            let stale = e.stale_closes > 0;
            e.stale_closes = e.stale_closes.saturating_sub(1);
            stale
        });
        if stale == Some(true) {
            return Ok(());
        }
        self.shelf.forget(id);
        self.inner.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let busy = self.shelf.open(id);
        let stream = self.inner.create_stream(id, message).await?;
        Ok(busy_while(stream, busy))
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.shelf.touch(id);
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let busy = self.shelf.open(id);
        let stream = self.inner.create_standalone_stream(id).await?;
        Ok(busy_while(stream, busy))
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let busy = self.shelf.open(id);
        let stream = self.inner.resume(id, last_event_id).await?;
        Ok(busy_while(stream, busy))
    }

    async fn restore_session(
        &self,
        id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        let _gate = self.shelf.gate.lock().await;
        let outcome = self.inner.restore_session(id.clone()).await?;
        if let RestoreOutcome::Restored(_) = &outcome {
            let woke = self.shelf.with(&id, |e| {
                e.last_active = Instant::now();
                !std::mem::replace(&mut e.awake, true)
            });
            if woke == Some(true) {
                self.shelf.metrics.sessions_hibernated.dec();
                self.shelf.metrics.session_restores.inc();
            }
        }
        Ok(outcome)
    }

    fn event_store(&self) -> Option<Arc<dyn EventStore>> {
        self.inner.event_store()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shelf() -> Shelf {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        Shelf {
            entries: Mutex::new(HashMap::new()),
            initializes: Mutex::new(HashSet::new()),
            gate: tokio::sync::Mutex::new(()),
            after: Duration::from_secs(1),
            lifetime: Duration::from_secs(60),
            metrics,
        }
    }

    #[test]
    fn a_session_id_survives_its_inline_key() {
        let id = rmcp::transport::common::server_side_http::session_id();
        let key = Key::of(&id).expect("rmcp's ids are UUIDs");
        assert_eq!(key.id(), id);
        assert!(Key::of("not-a-uuid").is_none());
    }

    #[test]
    fn sessions_share_identical_initialize_parameters_until_the_last_goes() {
        let shelf = shelf();
        let (a, b) = (Key(1), Key(2));
        for key in [a, b] {
            let mut e = Entry::new(Instant::now());
            e.initialize = Some(shelf.intern(br#"{"clientInfo":{}}"#.to_vec()));
            shelf.entries().insert(key, e);
        }
        let pooled = || shelf.initializes.lock().map(|p| p.len()).unwrap_or(9);
        assert_eq!(pooled(), 1);
        let first = shelf.entries().remove(&a).expect("entry a");
        shelf.release(first);
        assert_eq!(pooled(), 1, "the other session still holds them");
        let second = shelf.entries().remove(&b).expect("entry b");
        shelf.release(second);
        assert_eq!(pooled(), 0);
    }

    #[test]
    fn only_an_initialized_idle_awake_session_without_streams_may_sleep() {
        let then = Instant::now();
        let later = then + Duration::from_secs(2);
        let mut e = Entry::new(then);
        assert!(
            !e.may_sleep(later, Duration::from_secs(1)),
            "no initialize yet"
        );
        e.initialize = Some(Arc::from(&b"{}"[..]));
        assert!(e.may_sleep(later, Duration::from_secs(1)));
        assert!(
            !e.may_sleep(later, Duration::from_secs(3)),
            "not idle long enough"
        );
        e.open = 1;
        assert!(
            !e.may_sleep(later, Duration::from_secs(1)),
            "a stream is open"
        );
        e.open = 0;
        e.awake = false;
        assert!(
            !e.may_sleep(later, Duration::from_secs(1)),
            "already asleep"
        );
    }
}
