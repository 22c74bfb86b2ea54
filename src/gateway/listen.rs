//! `subscriptions/listen` for 2026-07-28 clients: each open stream is a
//! [`Listener`] fed from the gateway's fan-out of upstream events — list
//! changes of the upstreams its endpoint shows, and resource updates for
//! the URIs it listens to, each mapped back to the URI the client knows.
//! Log lines never travel on a listen stream (the 2026-07-28 logging
//! chapter forbids it: they belong to the request that asked for them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rmcp::model::SubscriptionFilter;
use rmcp::service::SubscriptionSink;

use super::Gateway;
use crate::registry::Endpoint;
use crate::upstream::{ListKind, Watch};

/// One open `subscriptions/listen` stream.
pub(super) struct Listener {
    pub(super) endpoint: Endpoint,
    pub(super) sink: SubscriptionSink,
    /// `(upstream, the upstream's URI)` → the URI the client listens to.
    pub(super) uris: HashMap<(Arc<str>, String), String>,
}

impl Listener {
    /// Whether the client asked for changes of `kind`.
    pub(super) fn wants_list(&self, kind: ListKind) -> bool {
        wants_list(self.sink.accepted(), kind)
    }
}

fn wants_list(filter: &SubscriptionFilter, kind: ListKind) -> bool {
    let flag = match kind {
        ListKind::Tools => filter.tools_list_changed,
        ListKind::Prompts => filter.prompts_list_changed,
        ListKind::Resources => filter.resources_list_changed,
    };
    flag == Some(true)
}

/// The open listen streams.
#[derive(Default)]
pub(super) struct Listeners {
    next: AtomicU64,
    map: RwLock<HashMap<u64, Arc<Listener>>>,
}

impl Listeners {
    /// Listeners whose endpoint shows `upstream`.
    pub(super) fn showing(&self, gw: &Gateway, upstream: &str) -> Vec<Arc<Listener>> {
        self.map
            .read()
            .map(|m| {
                m.values()
                    .filter(|l| gw.registry.endpoint_includes(&l.endpoint, upstream))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether any listener's endpoint passes `test`.
    pub(super) fn any_on(&self, test: impl Fn(&Endpoint) -> bool) -> bool {
        self.map
            .read()
            .is_ok_and(|m| m.values().any(|l| test(&l.endpoint)))
    }

    /// Number of open listen streams.
    pub(super) fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }
}

/// A registered listener; dropping it unregisters the listener and ends
/// its upstream watches.
pub(super) struct Registration {
    gw: Arc<Gateway>,
    id: u64,
    _watches: Vec<Watch>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.gw.listeners.map.write() {
            map.remove(&self.id);
        }
        self.gw.metrics.listen_streams.dec();
    }
}

/// Registers `listener` until the returned guard is dropped.
pub(super) fn register(gw: &Arc<Gateway>, listener: Listener, watches: Vec<Watch>) -> Registration {
    let id = gw.listeners.next.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut map) = gw.listeners.map.write() {
        map.insert(id, Arc::new(listener));
    }
    gw.metrics.listen_streams.inc();
    Registration {
        gw: gw.clone(),
        id,
        _watches: watches,
    }
}

/// The part of a client's filter the gateway honours: every list change
/// (it aggregates them from all upstreams of the endpoint) and every URI
/// (routed when the stream opens; a URI no upstream owns never fires).
pub(super) fn accepted(requested: &SubscriptionFilter) -> SubscriptionFilter {
    requested.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_kinds_follow_the_filter() {
        let f = SubscriptionFilter::builder().tools_list_changed().build();
        assert!(wants_list(&f, ListKind::Tools));
        assert!(!wants_list(&f, ListKind::Prompts));
        assert!(!wants_list(&f, ListKind::Resources));
        let f = SubscriptionFilter::builder()
            .prompts_list_changed()
            .resources_list_changed()
            .build();
        assert!(!wants_list(&f, ListKind::Tools));
        assert!(wants_list(&f, ListKind::Prompts));
        assert!(wants_list(&f, ListKind::Resources));
    }
}
