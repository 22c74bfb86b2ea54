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

use rmcp::model::{JsonRpcMessage, ServerNotification};
use rmcp::service::{RoleClient, RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;

use super::client::forward_progress;
use super::related;
use super::routes::{Guess, Routes};

/// A transport that forwards a call's notifications as it receives them.
pub(crate) struct InOrder<T> {
    inner: T,
    upstream: Arc<str>,
    routes: Arc<Routes>,
}

impl<T> InOrder<T> {
    /// Wraps `inner`; notifications go to the callers registered in `routes`.
    pub(crate) fn new(inner: T, upstream: Arc<str>, routes: Arc<Routes>) -> Self {
        InOrder {
            inner,
            upstream,
            routes,
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
                    // Only a line that arrived on a call's own stream
                    // belongs to that call (marked so by the HTTP client,
                    // see `related`): it goes to that call's client. The
                    // rest go to every session. Where the transport cannot
                    // say (stdio), a 2026-07-28 caller has no session to
                    // get them: the latest call gets it if it is such a
                    // caller and its session the only one in flight (as
                    // for server-to-client requests).
                    let marked = match related::take(&mut log.extensions) {
                        Some(id) => self.routes.caller_of(&id, Duration::ZERO).await,
                        None => None,
                    };
                    let caller = match marked {
                        Some(caller) => caller,
                        // Not waited for: this loop also carries what the
                        // registering call may be waiting on.
                        None => match self.routes.unassociated(Duration::ZERO).await {
                            Guess::Caller(c) if !c.legacy => c,
                            _ => return Some(message),
                        },
                    };
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
