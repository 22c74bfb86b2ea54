//! `notifications/tasks` on a `subscriptions/listen` stream (the tasks
//! extension of 2026-07-28): a listener names the task ids it wants
//! (`notifications.taskIds`) and is sent each task's full state whenever it
//! changes, until the task ends.
//!
//! The gateway learns a task's state the way a client would, by asking the
//! owning upstream (`tasks/get`, or the shim's combined view), on behalf of
//! each listener: upstreams are not required to push task notifications,
//! rmcp's upstream listen has no `taskIds`, and a shimmed 2025-11-25 task
//! has no such notification at all. What a listener is sent is therefore
//! exactly what its own `tasks/get` would answer, result guards included.
//! Polls start quick and slow down while nothing changes.
//!
//! Which ids a listener gets is settled before rmcp acknowledges the
//! stream (the edge reads `taskIds`, which rmcp's filter type drops, asks
//! [`accepted`], and hands them on under [`LISTEN_TASKS_META`]); the
//! acknowledgement lists them.

use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rmcp::model::{
    ErrorCode, GetTaskParams, NotificationMetaObject, ServerNotification, TaskPayload,
    TaskStatusNotification, TaskStatusNotificationParams,
};
use rmcp::service::{RequestContext, RoleServer};
use serde::Deserialize;
use tracing::Instrument;

use super::extension::{self, Opened};
use super::shim::Shim;
use crate::auth::Identity;
use crate::gateway::observe::Observation;
use crate::gateway::{Gateway, Session};
use crate::gateway::{RATE_LIMITED, REQUEST_TIMEOUT, UPSTREAM_UNAVAILABLE};
use crate::registry::Endpoint;

/// At most this many tasks per listen stream; the acknowledgement names
/// the ones accepted, so a client asking for more knows which it got.
pub(in crate::gateway) const MAX_WATCHED: usize = 64;
/// The pause after a change (and before the second poll).
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// The longest pause between polls of an unchanged task.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Where the edge (`server::listen`, on HTTP and stdio alike) puts the
/// task ids it accepted for a listen request: this key of the request's
/// `_meta`, which it strips from whatever the client sent. Whatever it
/// names is opened for the caller like any task id (`opened`), so even a
/// key that reached rmcp some other way gains a client nothing.
pub const LISTEN_TASKS_META: &str = "io.portcullis/listenTaskIds";

/// The task ids the listen request of `ctx` is to be sent states of.
pub(in crate::gateway) fn requested(ctx: &RequestContext<RoleServer>) -> Vec<String> {
    ctx.meta
        .get(LISTEN_TASKS_META)
        .and_then(|v| Vec::<String>::deserialize(v).ok())
        .map(|mut ids| {
            ids.truncate(MAX_WATCHED);
            ids
        })
        .unwrap_or_default()
}

/// The ids in `requested` that `identity` may watch on `endpoint`: those
/// `tasks/get` would open (issued to this identity, of an upstream the
/// endpoint shows, reachable), in order, without repeats, at most
/// [`MAX_WATCHED`].
pub(in crate::gateway) fn accepted(
    gw: &Gateway,
    identity: &Identity,
    endpoint: &Endpoint,
    requested: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in requested {
        if out.len() == MAX_WATCHED {
            break;
        }
        if out.contains(id) {
            continue;
        }
        let opens = extension::resolve(gw, endpoint, &identity.subject, "subscriptions/listen", id);
        if opens.is_ok() {
            out.push(id.clone());
        }
    }
    out
}

/// Opens the tasks a listen stream of `ctx` watches, recording the listen
/// request as about each; an id that no longer opens (a shim forgotten
/// since it was accepted) is left out.
pub(in crate::gateway) fn opened(
    session: &Session,
    ctx: &RequestContext<RoleServer>,
    obs: &mut Observation<'_>,
    ids: &[String],
) -> Vec<(Opened, String)> {
    let identity = session.identity(ctx);
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let resolved = extension::resolve(
            &session.gw,
            &session.state.endpoint,
            &identity.subject,
            "subscriptions/listen",
            id,
        );
        match resolved {
            Ok(opened) => {
                extension::noted(session, ctx, obs, &opened, "subscriptions/listen");
                out.push((opened, id.clone()));
            }
            Err(e) => tracing::debug!(error = %e.message, "watched task vanished"),
        }
    }
    out
}

/// Sends the `watched` tasks' states on the listen stream of `ctx` as they
/// change; ends when every task has ended or vanished (the stream itself
/// stays open).
pub(in crate::gateway) async fn follow_all(
    session: &Session,
    ctx: &RequestContext<RoleServer>,
    watched: Vec<(Opened, String)>,
) {
    let mut all: FuturesUnordered<_> = watched
        .into_iter()
        .map(|(opened, id)| follow(session, ctx, opened, id))
        .collect();
    while all.next().await.is_some() {}
}

/// Polls one task and sends each new state, until it ends.
async fn follow(
    session: &Session,
    ctx: &RequestContext<RoleServer>,
    opened: Opened,
    client_id: String,
) {
    let metrics = &session.gw.metrics;
    let mut last: Option<String> = None;
    let mut pause = FIRST_PAUSE;
    loop {
        // A shimmed task's changes happen here, in the gateway: they wake
        // the follower at once instead of at its next poll. Registered
        // before the poll, so that a change during it is not missed.
        let mut changed = std::pin::pin!(opened.shim.as_deref().map(Shim::changed));
        if let Some(changed) = changed.as_mut().as_pin_mut() {
            changed.enable();
        }
        let span = tracing::info_span!(
            "notifications/tasks",
            otel.name = "notifications/tasks",
            otel.kind = "internal",
            mcp.upstream = %opened.target.upstream,
            portcullis.call.id = opened.task.link.as_ref().map(|l| l.call_id.as_str()),
        );
        let params = GetTaskParams::new(client_id.clone());
        let polled = extension::fetch(session, ctx, &span, &opened, params)
            .instrument(span.clone())
            .await;
        match polled {
            Ok(result) => {
                let state = serde_json::to_string(&result.task).ok();
                if state.is_some() && state != last {
                    let status = status_label(&result.task.payload);
                    let ended = matches!(
                        result.task.payload,
                        TaskPayload::Completed { .. }
                            | TaskPayload::Failed { .. }
                            | TaskPayload::Cancelled
                    );
                    let mut meta = NotificationMetaObject::new();
                    meta.set_subscription_id(ctx.id.clone());
                    let params = TaskStatusNotificationParams::new(result.task).with_meta(meta);
                    let note = ServerNotification::TaskStatusNotification(
                        TaskStatusNotification::new(params),
                    );
                    if ctx.peer.send_notification(note).await.is_err() {
                        // The stream is gone; `listen` ends with it.
                        return;
                    }
                    metrics
                        .task_notifications
                        .with_label_values(&[&*opened.target.upstream, status])
                        .inc();
                    if ended {
                        return;
                    }
                    last = state;
                    pause = FIRST_PAUSE;
                } else {
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
            // The upstream down or slow: ask again later.
            Err(e) if transient(e.code) => {
                tracing::debug!(error = %e.message, "polling a watched task failed");
                pause = (pause * 2).min(MAX_PAUSE);
            }
            // Anything else is final: the upstream no longer knows the task
            // (expired, or gone with a restart), or the policy withholds
            // its result (asking again would only audit the refusal again).
            // The client's own `tasks/get` shows why.
            Err(e) => {
                tracing::debug!(error = %e.message, "no more states of a watched task");
                return;
            }
        }
        let woken = async {
            match changed.as_mut().as_pin_mut() {
                Some(changed) => changed.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = woken => {}
        }
    }
}

/// Whether a failed poll may succeed later without anything changing.
fn transient(code: ErrorCode) -> bool {
    [
        UPSTREAM_UNAVAILABLE,
        REQUEST_TIMEOUT,
        RATE_LIMITED,
        ErrorCode::INTERNAL_ERROR,
    ]
    .contains(&code)
}

/// The metric label of a task state.
fn status_label(payload: &TaskPayload) -> &'static str {
    match payload {
        TaskPayload::Working => "working",
        TaskPayload::InputRequired { .. } => "input_required",
        TaskPayload::Completed { .. } => "completed",
        TaskPayload::Failed { .. } => "failed",
        TaskPayload::Cancelled => "cancelled",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::POLICY_DENIED;

    #[test]
    fn only_an_unreachable_or_busy_upstream_is_polled_again() {
        for code in [UPSTREAM_UNAVAILABLE, REQUEST_TIMEOUT, RATE_LIMITED] {
            assert!(transient(code), "{code:?}");
        }
        // An unknown task and a withheld result end the following: polling
        // on would only repeat the refusal (and its audit line).
        for code in [
            ErrorCode::INVALID_PARAMS,
            POLICY_DENIED,
            ErrorCode::METHOD_NOT_FOUND,
        ] {
            assert!(!transient(code), "{code:?}");
        }
    }
}
