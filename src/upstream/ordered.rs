//! Keeps an upstream's notifications about a call (progress, log lines)
//! ahead of the call's response.
//!
//! rmcp hands every inbound notification to the handler on a task of its
//! own, so a notification sent just before a call's result can reach the
//! downstream client after it, when the client has stopped listening for
//! that call. Forwarding them here, in `receive`, which the service loop
//! calls one message at a time, preserves the upstream's order.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec};
use rmcp::model::{Extensions, JsonRpcMessage, NotificationMetaObject, ServerNotification};
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;

use super::client::forward_progress;
use super::related;
use super::routes::{Caller, Guess, Routes};
use super::tasks;

/// Where an upstream's log line goes.
enum LineRoute {
    /// To this call's (or task's) client.
    Caller(Arc<Caller>),
    /// To every session at its level.
    Connection,
    /// To nobody, and why.
    Withheld(&'static str),
}

/// A transport that forwards a call's notifications as it receives them.
pub(crate) struct InOrder<T> {
    inner: T,
    upstream: Arc<str>,
    routes: Arc<Routes>,
    /// The transport marks the log lines sent on a call's own stream
    /// (streamable HTTP, see `related`). An unmarked line there came on
    /// the session's GET stream, whose messages the specification says
    /// should be unrelated to the client's requests in flight, and which
    /// may overtake or trail a call's answer on its own stream: it is the
    /// connection's. Over stdio and legacy SSE one stream carries
    /// everything in the server's order, and nothing says which call a
    /// line is about.
    marks_calls: bool,
    /// This upstream's `portcullis_upstream_log_lines_total`, by route.
    lines: LineCounts,
}

/// The counters of one upstream's log lines, one per route, looked up once.
struct LineCounts {
    call: IntCounter,
    connection: IntCounter,
    withheld: IntCounter,
}

impl<T> InOrder<T> {
    /// Wraps `inner`; notifications go to the callers registered in
    /// `routes`, and log lines are counted in `log_lines` by route.
    /// `marks_calls`: see the field.
    pub(crate) fn new(
        inner: T,
        upstream: Arc<str>,
        routes: Arc<Routes>,
        marks_calls: bool,
        log_lines: IntCounterVec,
    ) -> Self {
        let count = |route: &str| log_lines.with_label_values(&[&*upstream, route]);
        let lines = LineCounts {
            call: count("call"),
            connection: count("connection"),
            withheld: count("withheld"),
        };
        InOrder {
            inner,
            upstream,
            routes,
            marks_calls,
            lines,
        }
    }

    /// Where a log line goes, taking off the mark `related` put on it.
    ///
    /// A line the server marked as a task's (2025 tasks' related-task
    /// `_meta`) is the task owner's, whatever is in flight. A line that
    /// arrived on a call's own stream belongs to that call (marked so by
    /// the HTTP client, see `related`). Where the transport cannot say
    /// (stdio, legacy SSE: one stream, in the server's order), a line is the
    /// latest call's while every call in flight is one session's (as for
    /// server-to-client requests); while calls of several sessions are in
    /// flight it could be any of theirs, and showing it to all of them
    /// could show one user what another's call logged. A line with no call
    /// in flight, or an unmarked one on HTTP (the GET stream, whose lines
    /// may trail their call's answer), is the connection's, for every
    /// session at its level; a 2026-07-28 caller has no session to get
    /// those, so it gets the guess. Nothing here waits: this loop also
    /// carries what a registering call may be waiting on.
    async fn route_line(
        routes: &Routes,
        marks_calls: bool,
        extensions: &mut Extensions,
    ) -> LineRoute {
        let owner = extensions
            .get::<NotificationMetaObject>()
            .and_then(|meta| tasks::route_of(routes, &meta.0 .0));
        let marked = related::take(extensions);
        if let Some((route, _)) = owner {
            return LineRoute::Caller(route.caller);
        }
        if let Some(id) = marked {
            return match routes.caller_of(&id, Duration::ZERO).await {
                Some(caller) => LineRoute::Caller(caller),
                // Its call is over (or not registered yet): it is that
                // call's, so it is nobody else's.
                None => LineRoute::Withheld("of a call no longer in flight"),
            };
        }
        match routes.unassociated(Duration::ZERO).await {
            Guess::Caller(c) if !marks_calls || !c.legacy => LineRoute::Caller(c),
            Guess::Ambiguous { .. } if !marks_calls => LineRoute::Withheld(
                "of no known call while calls of several sessions are in flight",
            ),
            _ => LineRoute::Connection,
        }
    }
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for InOrder<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            let mut message = self.inner.receive().await?;
            let JsonRpcMessage::Notification(notification) = &mut message else {
                return Some(message);
            };
            match &mut notification.notification {
                ServerNotification::ProgressNotification(progress) => {
                    // A progress token nobody registered yet is held by
                    // `routes` and replayed when its call registers.
                    if let Some(caller) = self.routes.progress_target(&progress.params) {
                        forward_progress(&caller, progress.params.clone()).await;
                    }
                }
                ServerNotification::LoggingMessageNotification(log) => {
                    let caller = match Self::route_line(
                        &self.routes,
                        self.marks_calls,
                        &mut log.extensions,
                    )
                    .await
                    {
                        LineRoute::Caller(caller) => caller,
                        LineRoute::Withheld(why) => {
                            tracing::debug!(upstream = %self.upstream, level = ?log.params.level, "upstream log line {why}: withheld");
                            self.lines.withheld.inc();
                            continue;
                        }
                        LineRoute::Connection => {
                            self.lines.connection.inc();
                            return Some(message);
                        }
                    };
                    self.lines.call.inc();
                    let mut params = log.params.clone();
                    if caller.wants_log(params.level) {
                        if params.logger.is_none() {
                            params.logger = Some(self.upstream.to_string());
                        }
                        if let Err(e) = caller.peer.notify_logging_message(params).await {
                            tracing::debug!(error = %e, "log line not delivered downstream");
                        }
                    }
                }
                _ => return Some(message),
            }
        }
    }

    fn close(&mut self) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ServerJsonRpcMessage;
    use rmcp::transport::sink_stream::SinkStreamTransport;
    use serde_json::json;

    fn line(data: &str, marked: Option<u64>) -> ServerJsonRpcMessage {
        let mut params = json!({ "level": "info", "data": data });
        if let Some(id) = marked {
            params["_meta"] = json!({ related::RELATED: id });
        }
        serde_json::from_value(json!({
            "jsonrpc": "2.0",
            "method": "notifications/message",
            "params": params,
        }))
        .expect("a log notification")
    }

    #[tokio::test]
    async fn a_marked_line_of_no_call_is_withheld_and_a_line_of_no_call_in_flight_is_the_connections(
    ) {
        let log_lines = IntCounterVec::new(
            prometheus::Opts::new("lines", "test"),
            &["upstream", "route"],
        )
        .expect("a counter");
        let messages = vec![
            line("of a call that ended", Some(7)),
            line("hello all", None),
        ];
        let mut transport = InOrder::new(
            SinkStreamTransport::new(futures::sink::drain(), futures::stream::iter(messages)),
            "up".into(),
            Arc::new(Routes::default()),
            false,
            log_lines.clone(),
        );
        // The marked line is nobody's (its call is not in flight); the
        // unmarked one, with no call in flight, goes on to every session.
        let passed = Transport::<RoleClient>::receive(&mut transport).await;
        let Some(JsonRpcMessage::Notification(n)) = passed else {
            panic!("expected the connection's line, got {passed:?}");
        };
        let ServerNotification::LoggingMessageNotification(log) = n.notification else {
            panic!("expected a log line");
        };
        assert_eq!(log.params.data, json!("hello all"));
        assert!(Transport::<RoleClient>::receive(&mut transport)
            .await
            .is_none());
        let count = |route: &str| log_lines.with_label_values(&["up", route]).get();
        assert_eq!(
            (count("withheld"), count("connection"), count("call")),
            (1, 1, 0)
        );
    }
}
