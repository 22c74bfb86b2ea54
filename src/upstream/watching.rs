//! Change notifications an upstream owes the gateway, in either era.
//!
//! A legacy upstream sends list changes on its own and resource updates for
//! what the connection `resources/subscribe`d; a 2026-07-28 upstream sends
//! nothing unless asked on a `subscriptions/listen` stream. The gateway
//! keeps one set of watched resource URIs per upstream (reference counted:
//! many downstream clients may watch one URI) and one task per shared
//! connection that makes the upstream honour it: `resources/subscribe` and
//! `resources/unsubscribe` on a legacy connection, one listen stream (list
//! changes plus the watched URIs, reopened when the set changes) on a 2026
//! one. Reconnecting re-establishes the whole set.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rmcp::model::{
    ClientRequest, ProtocolVersion, Request, ServerNotification, SubscribeRequestParams,
    SubscriptionFilter, UnsubscribeRequestParams,
};
use tokio::sync::watch;

use super::{Connection, EventSink, ListKind, Upstream, UpstreamError, UpstreamEvent};

/// How long to wait before reopening a listen stream the upstream ended.
const RELISTEN_BACKOFF: Duration = Duration::from_secs(1);

/// The watched resource URIs of one upstream, with their watcher counts.
pub(crate) struct Watched {
    counts: Mutex<HashMap<String, usize>>,
    /// Bumped on every change of the set, waking the connection's task.
    changed: watch::Sender<u64>,
    /// The generation of the set the upstream's listen stream was last
    /// (re)opened for, so a new watcher can wait until it is covered.
    established: watch::Sender<u64>,
}

impl Default for Watched {
    fn default() -> Self {
        Watched {
            counts: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            established: watch::channel(0).0,
        }
    }
}

impl Watched {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The URIs at least one watcher wants, in a stable order.
    pub(crate) fn uris(&self) -> BTreeSet<String> {
        self.lock().keys().cloned().collect()
    }

    /// Adds a watcher; true when the URI was not watched before.
    fn add(&self, uri: &str) -> bool {
        let first = {
            let mut counts = self.lock();
            let n = counts.entry(uri.to_owned()).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            self.changed.send_modify(|g| *g += 1);
        }
        first
    }

    /// Removes a watcher; true when it was the last one.
    fn remove(&self, uri: &str) -> bool {
        let last = {
            let mut counts = self.lock();
            match counts.get_mut(uri) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    counts.remove(uri);
                    true
                }
                None => false,
            }
        };
        if last {
            self.changed.send_modify(|g| *g += 1);
        }
        last
    }
}

/// One watcher's interest in a resource URI; dropping it ends the interest.
pub struct Watch {
    upstream: Weak<Upstream>,
    uri: String,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("uri", &self.uri).finish()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(up) = self.upstream.upgrade() {
            // The connection's task unsubscribes or relistens.
            up.watched.remove(&self.uri);
        }
    }
}

impl Upstream {
    /// Asks the upstream for `notifications/resources/updated` on `uri` (its
    /// own URI) until the returned [`Watch`] is dropped. Updates arrive as
    /// [`UpstreamEvent::ResourceUpdated`]. On a legacy connection the first
    /// watcher's `resources/subscribe` is sent at once, so its refusal
    /// reaches the watcher; a 2026-07-28 connection relistens in the
    /// background.
    pub async fn watch(self: &Arc<Self>, uri: &str) -> Result<Watch, UpstreamError> {
        let first = self.watched.add(uri);
        let watch = Watch {
            upstream: Arc::downgrade(self),
            uri: uri.to_owned(),
        };
        if !first {
            return Ok(watch);
        }
        let Some(conn) = self.shared.load_full() else {
            // Established when the connection comes up.
            return Ok(watch);
        };
        if conn.modern {
            // Wait until a listen stream covers the URI, so an update right
            // after the watcher's subscribe or listen is not lost.
            let generation = *self.watched.changed.borrow();
            let mut established = self.watched.established.subscribe();
            let covered = established.wait_for(|g| *g >= generation);
            let closed = conn.closed.cancelled();
            tokio::select! {
                _ = tokio::time::timeout(self.config.timeout, covered) => {}
                () = closed => {}
            }
            return Ok(watch);
        }
        let request =
            ClientRequest::SubscribeRequest(Request::new(SubscribeRequestParams::new(uri)));
        self.send(&conn, request, None, &Default::default())
            .await
            .map(|_| {
                conn.subscribed().insert(uri.to_owned());
                watch
            })
    }
}

impl Connection {
    fn subscribed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.subscribed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a connection was negotiated at 2026-07-28 or later.
pub(crate) fn is_modern(peer: &rmcp::service::Peer<rmcp::service::RoleClient>) -> bool {
    peer.peer_info()
        .is_some_and(|info| info.protocol_version >= ProtocolVersion::V_2026_07_28)
}

/// Runs for the life of a shared connection: keeps the upstream sending
/// what the watched set asks for.
pub(crate) async fn keep_watching(up: Arc<Upstream>, conn: Arc<Connection>) {
    let closed = conn.closed.clone();
    let work = async {
        if conn.modern {
            listen_loop(&up, &conn).await;
        } else {
            subscribe_loop(&up, &conn).await;
        }
    };
    tokio::select! {
        () = work => {}
        () = closed.cancelled() => {}
    }
}

/// Legacy connection: subscribe to what is watched and not subscribed,
/// unsubscribe from what is subscribed and no longer watched.
async fn subscribe_loop(up: &Upstream, conn: &Arc<Connection>) {
    let mut changed = up.watched.changed.subscribe();
    loop {
        let wanted = up.watched.uris();
        let have: BTreeSet<String> = conn.subscribed().iter().cloned().collect();
        for uri in wanted.difference(&have) {
            let request =
                ClientRequest::SubscribeRequest(Request::new(SubscribeRequestParams::new(uri)));
            match up.send(conn, request, None, &Default::default()).await {
                Ok(_) => {
                    conn.subscribed().insert(uri.clone());
                }
                Err(e) => {
                    tracing::debug!(upstream = %up.name, %uri, error = %e, "resources/subscribe refused");
                }
            }
        }
        for uri in have.difference(&wanted) {
            conn.subscribed().remove(uri);
            let request =
                ClientRequest::UnsubscribeRequest(Request::new(UnsubscribeRequestParams::new(uri)));
            if let Err(e) = up.send(conn, request, None, &Default::default()).await {
                tracing::debug!(upstream = %up.name, %uri, error = %e, "resources/unsubscribe failed");
            }
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

/// The filter the gateway listens with: every list change, and the watched
/// URIs (the upstream drops what it does not support).
fn filter(uris: &BTreeSet<String>) -> SubscriptionFilter {
    let mut builder = SubscriptionFilter::builder()
        .tools_list_changed()
        .prompts_list_changed()
        .resources_list_changed();
    if !uris.is_empty() {
        builder = builder.resource_subscriptions(uris.iter().cloned());
    }
    builder.build()
}

/// 2026-07-28 connection: one listen stream at a time, replaced when the
/// watched set changes (the new one is open before the old one closes, so
/// no update falls between them).
async fn listen_loop(up: &Upstream, conn: &Arc<Connection>) {
    let mut changed = up.watched.changed.subscribe();
    let mut current: Option<rmcp::service::Subscription> = None;
    loop {
        let generation = *changed.borrow_and_update();
        let opened = conn.peer.listen(filter(&up.watched.uris())).await;
        up.watched.established.send_replace(generation);
        match opened {
            Ok(sub) => {
                if let Some(mut old) = current.replace(sub) {
                    let _ = old.cancel().await;
                }
            }
            Err(e) => {
                tracing::debug!(upstream = %up.name, error = %e, "subscriptions/listen refused");
                // Not supported, or failing: try again when the set changes.
                if let Some(mut old) = current.take() {
                    let _ = old.cancel().await;
                }
                if changed.changed().await.is_err() {
                    return;
                }
                continue;
            }
        }
        let Some(sub) = current.as_mut() else {
            continue;
        };
        loop {
            tokio::select! {
                next = sub.next() => match next {
                    Ok(Some(n)) => {
                        if let Some(event) = event_of(&up.name, n, None) {
                            publish(&up.events, event);
                        }
                    }
                    // Ended by the upstream: listen again after a pause.
                    Ok(None) | Err(_) => {
                        current = None;
                        tokio::time::sleep(RELISTEN_BACKOFF).await;
                        break;
                    }
                },
                c = changed.changed() => {
                    if c.is_err() {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

fn publish(events: &EventSink, event: UpstreamEvent) {
    // The receiver lives as long as the gateway; a send error means it
    // is shutting down and the event no longer matters.
    let _ = events.send(event);
}

/// The event an upstream notification means for the gateway, if any.
/// `session` is the one downstream session a per-client connection serves.
pub(crate) fn event_of(
    upstream: &Arc<str>,
    notification: ServerNotification,
    session: Option<u64>,
) -> Option<UpstreamEvent> {
    let upstream = upstream.clone();
    Some(match notification {
        ServerNotification::ToolListChangedNotification(_) => UpstreamEvent::ListChanged {
            upstream,
            kind: ListKind::Tools,
        },
        ServerNotification::PromptListChangedNotification(_) => UpstreamEvent::ListChanged {
            upstream,
            kind: ListKind::Prompts,
        },
        ServerNotification::ResourceListChangedNotification(_) => UpstreamEvent::ListChanged {
            upstream,
            kind: ListKind::Resources,
        },
        ServerNotification::ResourceUpdatedNotification(n) => {
            let mut params = n.params;
            // The listen stream's id means nothing downstream.
            params.meta = None;
            UpstreamEvent::ResourceUpdated { upstream, params }
        }
        ServerNotification::LoggingMessageNotification(n) => UpstreamEvent::Log {
            upstream,
            session,
            params: n.params,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_counts_watchers_and_signals_first_and_last() {
        let w = Watched::default();
        let mut rx = w.changed.subscribe();
        assert!(w.add("a"));
        assert!(!w.add("a"));
        assert!(rx.has_changed().unwrap_or(false));
        rx.borrow_and_update();
        assert!(!w.remove("a"));
        assert!(!rx.has_changed().unwrap_or(true));
        assert!(w.remove("a"));
        assert!(rx.has_changed().unwrap_or(false));
        assert!(w.uris().is_empty());
        assert!(!w.remove("never"));
    }

    #[test]
    fn filter_asks_for_every_list_and_only_watched_uris() {
        let none = filter(&BTreeSet::new());
        assert_eq!(none.tools_list_changed, Some(true));
        assert_eq!(none.prompts_list_changed, Some(true));
        assert_eq!(none.resources_list_changed, Some(true));
        assert_eq!(none.resource_subscriptions, None);
        let some = filter(&["test://b".to_owned(), "test://a".to_owned()].into());
        assert_eq!(
            some.resource_subscriptions,
            Some(vec!["test://a".to_owned(), "test://b".to_owned()])
        );
    }

    #[test]
    fn notifications_become_events_without_the_listen_meta() {
        let up: Arc<str> = "u".into();
        let mut params = rmcp::model::ResourceUpdatedNotificationParam::new("test://x");
        let mut meta = rmcp::model::NotificationMetaObject::new();
        meta.set_subscription_id(rmcp::model::RequestId::Number(7));
        params.meta = Some(meta);
        let n = ServerNotification::ResourceUpdatedNotification(
            rmcp::model::ResourceUpdatedNotification::new(params),
        );
        match event_of(&up, n, None) {
            Some(UpstreamEvent::ResourceUpdated { params, .. }) => {
                assert_eq!(params.uri, "test://x");
                assert!(params.meta.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
        let n = ServerNotification::ToolListChangedNotification(
            rmcp::model::ToolListChangedNotification {
                method: Default::default(),
                extensions: Default::default(),
            },
        );
        assert!(matches!(
            event_of(&up, n, None),
            Some(UpstreamEvent::ListChanged {
                kind: ListKind::Tools,
                ..
            })
        ));
    }
}
