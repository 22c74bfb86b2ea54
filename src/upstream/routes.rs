//! Which downstream call caused each in-flight upstream request.
//!
//! An upstream answers with progress, log lines and server-to-client
//! requests (elicitation, sampling, roots) that belong to one of our
//! forwarded calls. This table maps the upstream's request ids and progress
//! tokens (rmcp assigns its own to every outgoing request) back to the
//! downstream [`Caller`]. Registration happens just after the request is
//! handed to the transport, so anything that arrives first is held briefly
//! rather than lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    ClientCapabilities, ErrorData, LoggingLevel, ProgressNotificationParam, ProgressToken,
    RequestId,
};
use rmcp::service::{Peer, RoleServer};
use tokio::sync::Notify;

/// The downstream call that an upstream request serves: where its progress,
/// log lines and server-to-client requests go.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The downstream MCP session's peer.
    pub peer: Peer<RoleServer>,
    /// The downstream request's id, so server-to-client requests travel on
    /// that request's response stream.
    pub request_id: RequestId,
    /// The downstream client's progress token, if it asked for progress.
    pub progress_token: Option<ProgressToken>,
    /// What the downstream client declared it can do.
    pub capabilities: ClientCapabilities,
    /// Gateway-wide id of the downstream session.
    pub session: u64,
    /// The session's minimum log level (`logging/setLevel`); `None` passes all.
    pub log_level: Arc<Mutex<Option<LoggingLevel>>>,
    /// Set for 2026-07-28 callers, which cannot receive server-to-client
    /// requests: the upstream's request is handed here instead, to be
    /// returned to the client as an `InputRequiredResult`.
    pub input_bridge: Option<tokio::sync::mpsc::UnboundedSender<BridgedRequest>>,
    /// Who made the call (for sampling served by the model router).
    pub identity: Arc<crate::auth::Identity>,
    /// The downstream client speaks a protocol before 2026-07-28 (it has a
    /// session and answers server-to-client requests).
    pub legacy: bool,
    /// Screens what the client types into an upstream's form before the
    /// answer goes upstream; `None` where policy has nothing to screen.
    pub answers: Option<Arc<dyn AnswerCheck>>,
    /// Cancelled when the downstream session ends: the call is cancelled
    /// upstream as if the client had cancelled it.
    pub closing: tokio_util::sync::CancellationToken,
}

/// Policy's screening of a user's answers to an upstream's elicitation.
/// What the user types into a tool's form is data for the tool, as its
/// arguments are, so it passes the same guards on its way upstream. The
/// gateway implements this; the upstream layer only calls it.
pub trait AnswerCheck: Send + Sync + std::fmt::Debug {
    /// Redacts `content` (an accepted elicitation's fields) in place, or
    /// refuses the answer when a blocking guard fires.
    fn check(&self, content: &mut serde_json::Value) -> Result<(), ErrorData>;
}

/// A server-to-client request from an upstream, waiting for the answer a
/// 2026-07-28 client sends in its retried request.
pub struct BridgedRequest {
    /// The upstream's request (elicitation, sampling or roots).
    pub request: rmcp::model::ServerRequest,
    /// Where the client's answer goes.
    pub reply: tokio::sync::oneshot::Sender<Result<rmcp::model::ClientResult, ErrorData>>,
}

impl Caller {
    /// The caller for work that outlives its session (a task the gateway
    /// runs or holds): the session's end does not cancel it.
    pub fn detached(mut self) -> Caller {
        self.closing = tokio_util::sync::CancellationToken::new();
        self
    }

    /// Screens the client's `answer` to an upstream's request (see
    /// [`AnswerCheck`]); only an elicitation's content carries user input.
    pub(crate) fn screen(&self, answer: &mut rmcp::model::ClientResult) -> Result<(), ErrorData> {
        match (&self.answers, answer) {
            (Some(check), rmcp::model::ClientResult::ElicitResult(r)) => {
                r.content.as_mut().map_or(Ok(()), |c| check.check(c))
            }
            _ => Ok(()),
        }
    }

    /// Whether the session wants a log message at `level`.
    pub(crate) fn wants_log(&self, level: LoggingLevel) -> bool {
        let min = self.log_level.lock().ok().and_then(|l| *l);
        // A 2026-07-28 request that set no log level gets no log lines.
        if !self.legacy && min.is_none() {
            return false;
        }
        log_level_passes(min, level)
    }
}

/// Whether a message at `level` passes a session's minimum level `min`.
pub(crate) fn log_level_passes(min: Option<LoggingLevel>, level: LoggingLevel) -> bool {
    fn rank(level: LoggingLevel) -> u8 {
        match level {
            LoggingLevel::Debug => 0,
            LoggingLevel::Info => 1,
            LoggingLevel::Notice => 2,
            LoggingLevel::Warning => 3,
            LoggingLevel::Error => 4,
            LoggingLevel::Critical => 5,
            LoggingLevel::Alert => 6,
            LoggingLevel::Emergency => 7,
        }
    }
    min.is_none_or(|min| rank(level) >= rank(min))
}

/// Who an unassociated message belongs to (see [`Routes::unassociated`]).
pub(crate) enum Guess {
    /// No call is in flight.
    Nobody,
    /// The latest call in flight, all of them being one session's.
    Caller(Arc<Caller>),
    /// Calls of this many sessions are in flight.
    Ambiguous {
        /// How many sessions.
        sessions: usize,
    },
}

/// [`Routes::unassociated`]'s choice among the calls registered in `t`.
fn guess(t: &Table) -> Guess {
    let mut callers = t.order.iter().rev().filter_map(|id| t.by_request.get(id));
    let Some(latest) = callers.next() else {
        return Guess::Nobody;
    };
    let mut sessions: Vec<u64> = callers
        .map(|c| c.session)
        .filter(|s| *s != latest.session)
        .collect();
    if sessions.is_empty() {
        return Guess::Caller(latest.clone());
    }
    sessions.sort_unstable();
    sessions.dedup();
    Guess::Ambiguous {
        sessions: sessions.len() + 1,
    }
}

/// Progress that arrived before its request was registered; bounded so an
/// upstream sending stray tokens cannot grow memory.
const MAX_EARLY_PROGRESS: usize = 256;

#[derive(Default)]
struct Table {
    by_request: HashMap<RequestId, Arc<Caller>>,
    by_progress: HashMap<ProgressToken, Arc<Caller>>,
    /// Registration order, newest last, for transports that cannot say which
    /// request a server-to-client message belongs to.
    order: Vec<RequestId>,
    early_progress: Vec<ProgressNotificationParam>,
    /// Tasks created by calls on this connection, by the upstream's task id:
    /// they outlive their call, and so do their routes.
    tasks: HashMap<String, TaskRoute>,
    /// Calls handed to the transport and not registered yet, by the order
    /// they were sent in (see [`Routes::expect`]).
    pending: std::collections::BTreeSet<u64>,
    next_pending: u64,
}

/// Where a task's messages go after the call that created it returned.
#[derive(Clone)]
pub(crate) struct TaskRoute {
    /// The session's most recent request about the task (the creating call,
    /// later its `tasks/result` or `tasks/get`), for server-to-client requests.
    pub(crate) caller: Arc<Caller>,
    /// The creating call's progress token, valid for the task's life.
    token: ProgressToken,
    /// The id the gateway gave the client, once it has.
    pub(crate) client_id: Option<String>,
}

/// The per-connection routing table.
#[derive(Default)]
pub(crate) struct Routes {
    table: Mutex<Table>,
    registered: Notify,
}

/// A call about to be handed to the transport, until it is registered (or
/// fails to be sent): an unassociated message waits for it, as it may be
/// that call's (see [`Routes::unassociated`]).
pub(crate) struct Expected {
    routes: Arc<Routes>,
    seq: u64,
    /// Settled by [`Routes::register`], under the lock it registers in.
    registered: bool,
}

impl Drop for Expected {
    fn drop(&mut self) {
        // A call that was never sent is no longer to be waited for.
        if !self.registered {
            self.routes.lock().pending.remove(&self.seq);
            self.routes.registered.notify_waiters();
        }
    }
}

/// Removes a registration when the forwarded call ends, however it ends.
pub(crate) struct Registration {
    routes: Arc<Routes>,
    id: RequestId,
    token: ProgressToken,
    /// Set when the call created a task: its progress token stays routed.
    task: Option<String>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut t = self.routes.lock();
        t.by_request.remove(&self.id);
        t.order.retain(|id| id != &self.id);
        let kept = self.task.take().and_then(|task| {
            let caller = t.by_progress.get(&self.token)?.clone();
            t.tasks.insert(
                task,
                TaskRoute {
                    caller,
                    token: self.token.clone(),
                    client_id: None,
                },
            );
            Some(())
        });
        if kept.is_none() {
            t.by_progress.remove(&self.token);
        }
    }
}

impl Registration {
    /// Keeps the call's routes for task `task`, which it created, after
    /// the call returns, until [`Routes::forget_task`].
    pub(crate) fn keep_for_task(&mut self, task: String) {
        self.task = Some(task);
    }
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding this lock cannot leave the maps inconsistent
        // in a harmful way, so recover from poisoning instead of spreading it.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that upstream request `id` (with progress token `token`)
    /// serves `caller`, settling its `expected` mark in the same step.
    /// Returns progress that had already arrived for it.
    pub(crate) fn register(
        self: &Arc<Self>,
        mut expected: Expected,
        id: RequestId,
        token: ProgressToken,
        caller: Arc<Caller>,
    ) -> (Registration, Vec<ProgressNotificationParam>) {
        let early = {
            let mut t = self.lock();
            t.pending.remove(&expected.seq);
            expected.registered = true;
            t.by_request.insert(id.clone(), caller.clone());
            t.by_progress.insert(token.clone(), caller);
            t.order.push(id.clone());
            let (mine, rest) = std::mem::take(&mut t.early_progress)
                .into_iter()
                .partition(|p| p.progress_token == token);
            t.early_progress = rest;
            mine
        };
        self.registered.notify_waiters();
        (
            Registration {
                routes: self.clone(),
                id,
                token,
                task: None,
            },
            early,
        )
    }

    /// The caller for a progress token, or `None` after holding the
    /// notification for a registration that may still come.
    pub(crate) fn progress_target(
        &self,
        params: &ProgressNotificationParam,
    ) -> Option<Arc<Caller>> {
        let mut t = self.lock();
        if let Some(c) = t.by_progress.get(&params.progress_token) {
            return Some(c.clone());
        }
        if t.early_progress.len() >= MAX_EARLY_PROGRESS {
            t.early_progress.remove(0);
        }
        t.early_progress.push(params.clone());
        None
    }

    /// The caller of upstream request `id`, waiting up to `wait` for a
    /// registration racing with the upstream's message.
    pub(crate) async fn caller_of(&self, id: &RequestId, wait: Duration) -> Option<Arc<Caller>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.registered.notified();
            if let Some(c) = self.lock().by_request.get(id) {
                return Some(c.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Marks a call as on its way to the transport; hand the result to
    /// [`Routes::register`] (dropped unregistered, it unmarks the call).
    pub(crate) fn expect(self: &Arc<Self>) -> Expected {
        let mut t = self.lock();
        let seq = t.next_pending;
        t.next_pending += 1;
        t.pending.insert(seq);
        Expected {
            routes: self.clone(),
            seq,
            registered: false,
        }
    }

    /// Whose a message is when the transport cannot say which request it
    /// belongs to (stdio, legacy SSE, rmcp's HTTP GET stream): the most
    /// recent call in flight, but only while every call in flight is of
    /// one session. Across sessions a guess could hand one user's question
    /// (and its answer) to another, so it is [`Guess::Ambiguous`] instead.
    ///
    /// Calls sent before the message arrived may not be registered yet (a
    /// fast upstream answers within microseconds, a loaded machine can
    /// stall the registering task far longer): those are waited for, up to
    /// `wait`, since the message may be theirs.
    pub(crate) async fn unassociated(&self, wait: Duration) -> Guess {
        let deadline = tokio::time::Instant::now() + wait;
        let arrived = self.lock().next_pending;
        loop {
            // Created before the check: `notify_waiters` reaches it unpolled.
            let notified = self.registered.notified();
            {
                let t = self.lock();
                if t.pending.first().is_none_or(|seq| *seq >= arrived) {
                    return guess(&t);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return guess(&self.lock());
            }
        }
    }

    /// Names the client's id for an upstream task, and makes `caller` (the
    /// session's latest request about it) where its messages go. False when
    /// the connection keeps no route for the task.
    pub(crate) fn track_task(
        &self,
        task: &str,
        client_id: &str,
        caller: Option<Arc<Caller>>,
    ) -> bool {
        let mut t = self.lock();
        let Some(route) = t.tasks.get_mut(task) else {
            return false;
        };
        route.client_id = Some(client_id.to_owned());
        // Progress keeps going to the creating call's token (the client's
        // token stays valid for the task's life); requests follow the session.
        if let Some(caller) = caller {
            route.caller = caller;
        }
        true
    }

    /// The route of an upstream task, if one is kept.
    pub(crate) fn task(&self, task: &str) -> Option<TaskRoute> {
        self.lock().tasks.get(task).cloned()
    }

    /// Drops an ended task's routes (its progress token with them).
    pub(crate) fn forget_task(&self, task: &str) {
        let mut t = self.lock();
        if let Some(route) = t.tasks.remove(task) {
            t.by_progress.remove(&route.token);
        }
    }

    /// Number of calls in flight on this connection.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().by_request.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_unassociated_message_waits_for_calls_sent_before_it() {
        let routes = Arc::new(Routes::default());
        // Nothing in flight or on its way: answered at once.
        assert!(matches!(
            routes.unassociated(Duration::from_secs(10)).await,
            Guess::Nobody
        ));
        // A call handed to the transport, not registered yet: the message
        // may be its, so the guess waits for it.
        let expected = routes.expect();
        let guess = tokio::spawn({
            let routes = routes.clone();
            async move { routes.unassociated(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!guess.is_finished());
        // A call sent after the message arrived is not waited for.
        let later = routes.expect();
        drop(expected);
        assert!(matches!(guess.await.unwrap(), Guess::Nobody));
        // And one that never registers is waited for only so long.
        let started = tokio::time::Instant::now();
        assert!(matches!(
            routes.unassociated(Duration::from_secs(10)).await,
            Guess::Nobody
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(later);
    }
}
