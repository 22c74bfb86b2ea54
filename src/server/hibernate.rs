//! Hibernation of idle downstream sessions.
//!
//! rmcp's `LocalSessionManager` gives every streamable-HTTP session a worker
//! task and four channels whose first blocks tokio allocates eagerly: about
//! 45 KB per session whether or not the client ever calls again. Agent
//! clients open a session and then mostly sit on it, so that is what a
//! gateway's memory is made of.
//!
//! [`Hibernating`] wraps the local manager. A session idle for
//! `http.session_hibernate_after`, with no call in flight and nothing in the
//! gateway beyond what its `initialize` set up ([`SessionLink::restorable`]),
//! has its worker closed; the [`Shelf`] keeps only its `initialize`
//! parameters, serialized. The shelf is also the rmcp `SessionStore`: the
//! next request on that session id finds no worker, and rmcp rebuilds the
//! session transparently by replaying `initialize` (with that request's
//! headers, so authentication is the request's own). The client sees the
//! same session. Shelved sessions expire after `http.session_idle_timeout`
//! of inactivity, as live ones do.
//!
//! Its GET stream, if open, stays open ([`Relay`]): the shelf writes to it
//! the list changes the gateway hands it (the only thing such a session's
//! stream would carry), and it rejoins the rebuilt worker's stream.
//!
//! What a hibernated session forgets is only what rmcp kept in its worker:
//! finished response streams cached for `Last-Event-ID` resumption (hence
//! the 60 s default, rmcp's own retention).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use rmcp::model::{
    ClientJsonRpcMessage, ClientNotification, JsonRpcMessage, ServerJsonRpcMessage,
    ServerNotification,
};
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

use super::compact::{Key, Pool};
use crate::gateway::{Dormant, SessionLink};
use crate::telemetry::metrics::Metrics;
use crate::upstream::ListKind;

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
    /// Response streams and resumptions open now.
    open: u32,
    /// The session's GET stream, which outlives the worker.
    listener: Option<Weak<Listener>>,
    /// A restore is under way: the GET stream joins the rebuilt worker once
    /// its handshake is replayed.
    rejoin_due: bool,
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
            listener: None,
            rejoin_due: false,
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
    initializes: Pool<[u8]>,
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
        let key = Key::of(id);
        if let Some(k) = key {
            if let Some(e) = self.entries().get_mut(&k) {
                e.open += 1;
                e.last_active = Instant::now();
            }
        }
        Busy {
            shelf: self.clone(),
            key,
        }
    }

    /// Drops an entry's share of its `initialize`, and the pool's copy when
    /// no other entry holds it.
    fn release(&self, e: Entry) {
        if !e.awake {
            self.metrics.sessions_hibernated.dec();
        }
        if let Some(listener) = e.listener.as_ref().and_then(Weak::upgrade) {
            listener.close();
        }
        if let Some(shared) = e.initialize {
            self.initializes.release(shared);
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

/// The GET stream of a session: while the session sleeps it is kept open
/// here, carrying what the gateway would have sent through the worker
/// (list changes: a session with any other state stays awake), and it
/// carries on from the rebuilt worker's stream once the session wakes.
#[derive(Default)]
struct Listener {
    state: Mutex<Relayed>,
    wake: tokio::sync::Notify,
}

type SseStream = Pin<Box<dyn Stream<Item = ServerSseMessage> + Send + Sync>>;

#[derive(Default)]
struct Relayed {
    /// The worker's stream ends because the session sleeps, not because
    /// the session ended.
    asleep: bool,
    /// The session ended while asleep.
    closed: bool,
    /// List changes heard while asleep, one per kind.
    pending: VecDeque<(ListKind, ServerSseMessage)>,
    /// The rebuilt worker's stream.
    rejoin: Option<SseStream>,
}

impl Listener {
    fn state(&self) -> MutexGuard<'_, Relayed> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sleep(&self) {
        self.state().asleep = true;
    }

    fn close(&self) {
        self.state().closed = true;
        self.wake.notify_one();
    }

    fn rejoin(&self, stream: SseStream) {
        let mut state = self.state();
        state.asleep = false;
        state.rejoin = Some(stream);
        drop(state);
        self.wake.notify_one();
    }

    /// Queues a list change for a sleeping session's stream; false when it
    /// is awake (the worker sends it) or one of that kind is queued.
    fn list_changed(&self, kind: ListKind) -> bool {
        let mut state = self.state();
        // A list change says "look again": one pending per kind says it all.
        if !state.asleep || state.pending.iter().any(|(k, _)| *k == kind) {
            return false;
        }
        let notification = match kind {
            ListKind::Tools => ServerNotification::ToolListChangedNotification(Default::default()),
            ListKind::Prompts => {
                ServerNotification::PromptListChangedNotification(Default::default())
            }
            ListKind::Resources => {
                ServerNotification::ResourceListChangedNotification(Default::default())
            }
        };
        let message =
            ServerSseMessage::from_message(ServerJsonRpcMessage::notification(notification));
        state.pending.push_back((kind, message));
        drop(state);
        self.wake.notify_one();
        true
    }
}

/// The stream handed to rmcp for a GET: the worker's, then (while the
/// session sleeps) the shelf's, then the rebuilt worker's.
struct Relay {
    worker: Option<SseStream>,
    listener: Arc<Listener>,
    waiting: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

impl Stream for Relay {
    type Item = ServerSseMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ServerSseMessage>> {
        let this = &mut *self;
        loop {
            if let Some(worker) = this.worker.as_mut() {
                match worker.as_mut().poll_next(cx) {
                    Poll::Ready(None) => this.worker = None,
                    other => return other,
                }
            }
            {
                let mut state = this.listener.state();
                // What was heard while asleep goes out before the rebuilt
                // worker's stream takes over.
                if let Some((_, message)) = state.pending.pop_front() {
                    return Poll::Ready(Some(message));
                }
                if let Some(next) = state.rejoin.take() {
                    this.worker = Some(next);
                    continue;
                }
                // A worker's stream that ends while the session is awake
                // means the session ended.
                if state.closed || !state.asleep {
                    return Poll::Ready(None);
                }
            }
            let listener = this.listener.clone();
            let waiting = this
                .waiting
                .get_or_insert_with(|| Box::pin(async move { listener.wake.notified().await }));
            match waiting.as_mut().poll(cx) {
                Poll::Ready(()) => this.waiting = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Dormant for Shelf {
    fn list_changed(&self, kind: ListKind) {
        let listeners: Vec<Arc<Listener>> = self
            .entries()
            .values()
            .filter(|e| !e.awake)
            .filter_map(|e| e.listener.as_ref()?.upgrade())
            .collect();
        tracing::debug!(
            listeners = listeners.len(),
            ?kind,
            "list change for sleeping sessions"
        );
        for listener in listeners {
            if listener.list_changed(kind) {
                self.metrics.session_relayed.inc();
            }
        }
    }
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
        let shared = self
            .initializes
            .intern(serde_json::to_vec(&state.initialize_params)?);
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
                initializes: Pool::new(),
                gate: tokio::sync::Mutex::new(()),
                after,
                lifetime,
                metrics,
            }),
        }
    }

    /// Where the gateway tells this endpoint's sleeping sessions of list
    /// changes.
    pub(super) fn dormant(&self) -> Weak<dyn Dormant> {
        let shelf: Arc<dyn Dormant> = self.shelf.clone();
        Arc::downgrade(&shelf)
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
                        // Before the worker goes, so its stream's end reads
                        // as sleep.
                        if let Some(listener) = e.listener.as_ref().and_then(Weak::upgrade) {
                            listener.sleep();
                        }
                    }
                    _ => continue,
                }
            }
            let id: SessionId = key.id().into();
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
                // It walks the whole heap: off the async workers.
                tokio::task::spawn_blocking(release_freed_memory);
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
        // rmcp lets a closed session's handlers run on for seconds to drain
        // their answers, which nobody will read after a DELETE.
        if let Some(link) = self.shelf.with(id, |e| e.link.clone()).flatten() {
            link.closing();
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
        let initialized = matches!(
            &message,
            JsonRpcMessage::Notification(n)
                if matches!(n.notification, ClientNotification::InitializedNotification(_))
        );
        self.shelf.touch(id);
        self.inner.accept_message(id, message).await?;
        if initialized {
            let listener = self
                .shelf
                .with(id, |e| {
                    let due = std::mem::take(&mut e.rejoin_due);
                    e.listener.as_ref().filter(|_| due)?.upgrade()
                })
                .flatten();
            if let Some(listener) = listener {
                match self.inner.create_standalone_stream(id).await {
                    Ok(stream) => listener.rejoin(Box::pin(stream)),
                    Err(e) => {
                        tracing::debug!(session = %id, error = %e, "the GET stream could not rejoin its session");
                        listener.close();
                    }
                }
            }
        }
        Ok(())
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let stream = self.inner.create_standalone_stream(id).await?;
        let listener = Arc::new(Listener::default());
        self.shelf.with(id, |e| {
            e.listener = Some(Arc::downgrade(&listener));
            e.last_active = Instant::now();
        });
        Ok(Relay {
            worker: Some(Box::pin(stream)),
            listener,
            waiting: None,
        })
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
                e.rejoin_due = true;
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
            initializes: Pool::new(),
            gate: tokio::sync::Mutex::new(()),
            after: Duration::from_secs(1),
            lifetime: Duration::from_secs(60),
            metrics,
        }
    }

    #[test]
    fn sessions_share_identical_initialize_parameters_until_the_last_goes() {
        let shelf = shelf();
        let (a, b) = (Key(1), Key(2));
        for key in [a, b] {
            let mut e = Entry::new(Instant::now());
            e.initialize = Some(shelf.initializes.intern(br#"{"clientInfo":{}}"#.to_vec()));
            shelf.entries().insert(key, e);
        }
        let pooled = || shelf.initializes.len();
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

    /// A worker's stream fed from a channel, as rmcp's is.
    fn worker() -> (
        tokio::sync::mpsc::UnboundedSender<ServerSseMessage>,
        SseStream,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            let message = rx.recv().await?;
            Some((message, rx))
        });
        (tx, Box::pin(stream))
    }

    /// A GET stream's relay over `stream`, and its listener.
    fn relay(stream: SseStream) -> (Arc<Listener>, Relay) {
        let listener = Arc::new(Listener::default());
        let relay = Relay {
            worker: Some(stream),
            listener: listener.clone(),
            waiting: None,
        };
        (listener, relay)
    }

    /// A relay whose session went to sleep and whose worker has ended.
    fn asleep() -> (Arc<Listener>, Relay) {
        let (tx, stream) = worker();
        let (listener, relay) = relay(stream);
        listener.sleep();
        drop(tx);
        (listener, relay)
    }

    /// A worker's tools list change, as it would send one.
    fn tools_changed() -> ServerSseMessage {
        ServerSseMessage::from_message(ServerJsonRpcMessage::notification(
            ServerNotification::ToolListChangedNotification(Default::default()),
        ))
    }

    fn method(message: Option<ServerSseMessage>) -> String {
        let message = message.and_then(|m| m.message).expect("a message");
        serde_json::to_value(&*message).expect("serializes")["method"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    #[tokio::test]
    async fn a_get_stream_outlives_its_sleeping_worker_and_rejoins_the_next() {
        let (first, stream) = worker();
        let (listener, mut relay) = relay(stream);
        first.send(tools_changed()).expect("relay listening");
        assert_eq!(
            method(relay.next().await),
            "notifications/tools/list_changed"
        );

        // Awake, a change is the worker's to send: the shelf adds nothing.
        assert!(!listener.list_changed(ListKind::Prompts));
        listener.sleep();
        drop(first);
        assert!(listener.list_changed(ListKind::Resources));
        assert!(!listener.list_changed(ListKind::Resources), "once per kind");
        assert_eq!(
            method(relay.next().await),
            "notifications/resources/list_changed"
        );

        let (second, stream) = worker();
        listener.rejoin(stream);
        second.send(tools_changed()).expect("relay listening");
        assert_eq!(
            method(relay.next().await),
            "notifications/tools/list_changed"
        );
        // Said once per kind, and nothing from before the sleep.
        assert!(listener.state().pending.is_empty());

        // The rebuilt worker's stream ends while awake: the session ended.
        drop(second);
        assert!(relay.next().await.is_none());
    }

    #[tokio::test]
    async fn what_was_heard_asleep_goes_out_before_the_rebuilt_workers_stream() {
        let (listener, mut relay) = asleep();
        assert!(listener.list_changed(ListKind::Prompts));
        // The session wakes before the relay has seen its old worker end.
        let (second, stream) = worker();
        listener.rejoin(stream);
        second.send(tools_changed()).expect("relay listening");
        assert_eq!(
            method(relay.next().await),
            "notifications/prompts/list_changed"
        );
        assert_eq!(
            method(relay.next().await),
            "notifications/tools/list_changed"
        );
    }

    #[tokio::test]
    async fn a_get_stream_ends_with_its_sleeping_session() {
        let (listener, mut relay) = asleep();
        let waiting = tokio::spawn(async move { relay.next().await.is_none() });
        listener.close();
        assert!(waiting.await.expect("relay task"));
    }
}
