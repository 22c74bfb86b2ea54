//! The tasks extension of 2026-07-28 (`io.modelcontextprotocol/tasks`,
//! SEP-2663) between a 2026-07-28 client and 2026-07-28 upstreams.
//!
//! The gateway keeps no task state: an upstream's `CreateTaskResult` goes
//! to the client with a sealed id ([`super::TaskIds`]) naming the upstream,
//! its own id and the tool; `tasks/get`, `tasks/update` and `tasks/cancel`
//! open that id, go to the owning upstream under the upstream's id, and come
//! back under the client's. A task therefore outlives the request, the
//! session and the connection that created it, for as long as its upstream
//! keeps it. Whether the upstream is asked to make tasks at all follows the
//! client: a request that declared the extension has it declared upstream
//! (`upstream::Upstream::request`), one that did not never sees a task.

use rmcp::model::{
    CancelTaskParams, CreateTaskResult, ErrorData, GetTaskParams, GetTaskResult, Request,
    ServerResult, TaskPayload, UpdateTaskParams,
};
use rmcp::model::{ClientRequest, ResultType};
use rmcp::service::{RequestContext, RoleServer};
use tracing::{Instrument, Span};

use std::sync::Arc;

use rmcp::model::{DetailedTask, TaskStatus};

use super::legacy;
use super::shim::Shim;
use super::TaskRef;
use crate::gateway::guardrails::{CallInfo, Guardrails};
use crate::gateway::observe::{Observation, Outcome};
use crate::gateway::{Gateway, Session};
use crate::policy::{Direction, Kind, PolicySet, Subject};
use crate::registry::{Endpoint, Target};
use crate::telemetry::trace;

impl Outcome for GetTaskResult {
    fn failed(&self) -> bool {
        match &self.task.payload {
            TaskPayload::Failed { .. } => true,
            TaskPayload::Completed { result } => {
                result.get("isError").and_then(|v| v.as_bool()) == Some(true)
            }
            _ => false,
        }
    }
}

/// Whether an upstream of `endpoint` offers the extension (so the endpoint
/// advertises it; rmcp then answers `tasks/*` with -32601 where it does not).
pub(in crate::gateway) fn offered(gw: &Gateway, endpoint: &Endpoint) -> bool {
    gw.registry
        .upstreams_of(endpoint)
        .iter()
        .any(|name| offered_by(gw, name))
}

/// Whether `upstream` offers the extension: its own tasks, or tasks of
/// the 2025-11-25 design the gateway shims (`shim.rs`).
pub(in crate::gateway) fn offered_by(gw: &Gateway, upstream: &str) -> bool {
    gw.registry
        .upstream(upstream)
        .is_some_and(|up| up.offers_tasks() == Some(true) || up.makes_2025_tasks())
}

/// The task an upstream created for `subject`'s `call` of `target`, under
/// the id the client gets instead of the upstream's.
pub(in crate::gateway) fn issue(
    gw: &Gateway,
    subject: &str,
    target: &Target,
    call: &CallInfo<'_>,
    mut created: CreateTaskResult,
) -> Result<CreateTaskResult, ErrorData> {
    let task = TaskRef {
        upstream: target.upstream.to_string(),
        id: std::mem::take(&mut created.task.task_id),
        tool: Some(target.original.clone()),
        link: call.link.clone(),
    };
    created.task.task_id = gw.task_ids.issue(subject, &task)?;
    Ok(created)
}

/// A `tasks/*` request resolved to its task.
pub(in crate::gateway) struct Opened {
    pub(in crate::gateway) task: TaskRef,
    pub(in crate::gateway) target: Target,
    /// Set when the task is of the 2025-11-25 design, shimmed for a
    /// 2026-07-28 client (`shim.rs`).
    pub(in crate::gateway) shim: Option<Arc<Shim>>,
}

/// Resolves the client's task id `id` for `subject` on `endpoint`:
/// refused alike when it was altered, issued to someone else, or names an
/// upstream this endpoint does not show. Neither observed nor audited.
pub(in crate::gateway) fn resolve(
    gw: &Gateway,
    endpoint: &Endpoint,
    subject: &str,
    method: &'static str,
    id: &str,
) -> Result<Opened, ErrorData> {
    let task = gw.task_ids.open(subject, id)?;
    if !gw.registry.endpoint_includes(endpoint, &task.upstream) {
        tracing::debug!(upstream = %task.upstream, "task id of another endpoint refused");
        return Err(ErrorData::invalid_params("unknown task id", None));
    }
    let target = Target {
        upstream: task.upstream.as_str().into(),
        original: task.tool.clone().unwrap_or_default(),
    };
    // A task of the 2025-11-25 design (an upstream without the extension)
    // is driven with these methods only where the gateway shims it; say so
    // rather than forward.
    let offered = gw
        .registry
        .upstream(&task.upstream)
        .and_then(|up| up.offers_tasks());
    let shim = gw.shims.get(&task);
    if offered == Some(false) && shim.is_none() {
        return Err(ErrorData::invalid_params(
            format!(
                "this task belongs to upstream `{}`, which does not offer the 2026-07-28 tasks \
                 extension; {method} cannot reach it",
                task.upstream
            ),
            Some(serde_json::json!({ "upstream": task.upstream })),
        ));
    }
    Ok(Opened { task, target, shim })
}

/// Opens the client's task id for a `tasks/*` request ([`resolve`]), and
/// records the request as about the task's call.
fn open(
    session: &Session,
    ctx: &RequestContext<RoleServer>,
    obs: &mut Observation<'_>,
    method: &'static str,
    id: &str,
) -> Result<Opened, ErrorData> {
    let identity = session.identity(ctx);
    let opened = resolve(
        &session.gw,
        &session.state.endpoint,
        &identity.subject,
        method,
        id,
    )?;
    noted(session, ctx, obs, &opened, method);
    Ok(opened)
}

/// Records `method` as a request about the opened task: routed to its
/// upstream, linked to its call, audited when policies audit.
pub(in crate::gateway) fn noted(
    session: &Session,
    ctx: &RequestContext<RoleServer>,
    obs: &mut Observation<'_>,
    opened: &Opened,
    method: &'static str,
) {
    obs.routed(&opened.target);
    if let Some(link) = &opened.task.link {
        obs.linked(link);
    }
    with_policy(
        session,
        ctx,
        &obs.span,
        opened,
        method,
        |g, _, call, subject| {
            g.record_task(call, subject);
        },
    );
}

/// Runs `f` with the policy's view of a request about the task (its tool
/// as the subject), when policies are configured.
pub(in crate::gateway) fn with_policy<R>(
    session: &Session,
    ctx: &RequestContext<RoleServer>,
    span: &Span,
    opened: &Opened,
    method: &'static str,
    f: impl FnOnce(&Arc<Guardrails>, &Arc<PolicySet>, &CallInfo<'_>, &Subject<'_>) -> R,
) -> Option<R> {
    let gw = &session.gw;
    let g = gw.guardrails.as_ref()?;
    let identity = session.identity(ctx);
    let exposed = gw.aggregate_name(&opened.target);
    let subject = Subject {
        kind: Kind::Tool,
        upstream: &opened.target.upstream,
        name: &opened.target.original,
        exposed: &exposed,
        annotations: None,
    };
    let call = CallInfo {
        identity: &identity,
        session: session.state.id,
        method,
        trace_id: trace::trace_id_of(span),
        link: opened.task.link.clone(),
    };
    Some(f(g, &g.policy(), &call, &subject))
}

/// Forwards `request` to the task's upstream; an upstream error that names
/// the upstream's task id names the client's instead.
async fn forward(
    session: &Session,
    ctx: &RequestContext<RoleServer>,
    opened: &Opened,
    client_id: &str,
    request: ClientRequest,
) -> Result<ServerResult, ErrorData> {
    let call = session.send(&opened.target, request, session.caller(ctx), ctx.ct.clone())?;
    call.in_current_span()
        .await
        .map_err(|e| hide_id(e, &opened.task.id, client_id))
}

pub(in crate::gateway) fn hide_id(
    mut e: ErrorData,
    upstream_id: &str,
    client_id: &str,
) -> ErrorData {
    if upstream_id.is_empty() {
        return e;
    }
    if e.message.contains(upstream_id) {
        e.message = e.message.replace(upstream_id, client_id).into();
    }
    if let Some(data) = e.data.take() {
        let text = data.to_string();
        e.data = if text.contains(upstream_id) {
            serde_json::from_str(&text.replace(upstream_id, client_id)).ok()
        } else {
            Some(data)
        };
    }
    e
}

/// `tasks/get`: the upstream's answer under the client's id, with an
/// inlined tool result passed through the policy's result guards.
pub(in crate::gateway) async fn get(
    session: &Session,
    params: GetTaskParams,
    ctx: &RequestContext<RoleServer>,
    obs: &mut Observation<'_>,
) -> Result<GetTaskResult, ErrorData> {
    let opened = open(session, ctx, obs, "tasks/get", &params.task_id)?;
    fetch(session, ctx, &obs.span, &opened, params).await
}

/// The opened task's state, as `tasks/get` answers it (also what a
/// listener is sent in `notifications/tasks`).
pub(in crate::gateway) async fn fetch(
    session: &Session,
    ctx: &RequestContext<RoleServer>,
    span: &Span,
    opened: &Opened,
    params: GetTaskParams,
) -> Result<GetTaskResult, ErrorData> {
    let client_id = params.task_id.clone();
    if let Some(shim) = &opened.shim {
        return get_shimmed(session, ctx, span, opened, &client_id, shim).await;
    }
    let mut upstream = params;
    upstream.task_id = opened.task.id.clone();
    let request = ClientRequest::GetTaskRequest(Request::new(upstream));
    let answer = forward(session, ctx, opened, &client_id, request).await?;
    let mut result = match answer {
        ServerResult::GetTaskResult(r) => r,
        // The untagged result enum may have read it as another shape.
        other => serde_json::to_value(other)
            .and_then(serde_json::from_value::<GetTaskResult>)
            .map_err(|e| {
                ErrorData::internal_error(
                    format!(
                        "upstream `{}` sent a malformed tasks/get result: {e}",
                        opened.target.upstream
                    ),
                    None,
                )
            })?,
    };
    result.task.task.task_id = client_id.clone();
    result.result_type = ResultType::COMPLETE;
    match &mut result.task.payload {
        TaskPayload::Completed { result: inlined } => {
            guard_result(session, ctx, span, opened, inlined)?;
        }
        TaskPayload::Failed { error } => hide_id_in(error, &opened.task.id, &client_id),
        _ => {}
    }
    Ok(result)
}

/// Replaces the upstream's task id with the client's anywhere in `object`.
fn hide_id_in(object: &mut rmcp::model::JsonObject, upstream_id: &str, client_id: &str) {
    let text = serde_json::Value::Object(std::mem::take(object)).to_string();
    let text = text.replace(upstream_id, client_id);
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&text) {
        *object = map;
    }
}

/// How long `tasks/get` waits for the result of a shimmed task the
/// upstream says has ended (its held `tasks/result` is answering).
const OUTCOME_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `tasks/get` of a shimmed 2025-11-25 task: the upstream's own `tasks/get`
/// for its state, the input requests waiting here, and once it ended the
/// result or error its held `tasks/result` answered.
async fn get_shimmed(
    session: &Session,
    ctx: &RequestContext<RoleServer>,
    span: &Span,
    opened: &Opened,
    client_id: &str,
    shim: &Shim,
) -> Result<GetTaskResult, ErrorData> {
    let upstream_id = opened.task.id.as_str();
    let request = legacy::task_request("tasks/get", upstream_id);
    let answer = forward(session, ctx, opened, client_id, request).await?;
    let malformed = || {
        ErrorData::internal_error(
            format!(
                "upstream `{}` answered tasks/get with something other than a task",
                opened.target.upstream
            ),
            None,
        )
    };
    let state = legacy::task_result_to_2025(answer, None).ok_or_else(malformed)?;
    let mut task = legacy::task_from_2025(&state).ok_or_else(malformed)?;
    task.task_id = client_id.to_owned();
    let payload = match task.status {
        TaskStatus::Cancelled => TaskPayload::Cancelled,
        TaskStatus::Completed | TaskStatus::Failed => match shim.outcome(OUTCOME_WAIT).await {
            // A tool's own error is a completed task in 2026-07-28 (`failed`
            // is for JSON-RPC errors), whatever the 2025 status said.
            Some(Ok(mut result)) => {
                // The 2025 result names its task in `_meta`; a 2026 task's
                // inlined result must not (the id is the task's own).
                crate::upstream::unrelate(&mut result);
                hide_id_in(&mut result, upstream_id, client_id);
                guard_result(session, ctx, span, opened, &mut result)?;
                TaskPayload::Completed { result }
            }
            Some(Err(mut error)) => {
                hide_id_in(&mut error, upstream_id, client_id);
                TaskPayload::Failed { error }
            }
            // Not answered yet: the client polls again.
            None => TaskPayload::Working,
        },
        _ => {
            let input_requests = shim.input_requests();
            match input_requests.is_empty() {
                true => TaskPayload::Working,
                false => TaskPayload::InputRequired { input_requests },
            }
        }
    };
    let mut result = GetTaskResult::new(DetailedTask::new(task, payload));
    result.result_type = ResultType::COMPLETE;
    Ok(result)
}

/// Runs the result guards of the task's tool over its inlined result:
/// redacted in place, or withheld when a blocking guard fires.
fn guard_result(
    session: &Session,
    ctx: &RequestContext<RoleServer>,
    span: &Span,
    opened: &Opened,
    inlined: &mut rmcp::model::JsonObject,
) -> Result<(), ErrorData> {
    with_policy(
        session,
        ctx,
        span,
        opened,
        "tasks/get",
        |g, set, call, subject| {
            // Without result guards there is nothing to scan: skip the JSON round trip.
            if !set.guards_on(Direction::Results) {
                return Ok(());
            }
            let mut value = serde_json::Value::Object(std::mem::take(inlined));
            let guarded = g.guard(set, call, subject, Direction::Results, &mut value);
            if let serde_json::Value::Object(map) = value {
                *inlined = map;
            }
            guarded
        },
    )
    .unwrap_or(Ok(()))
}

/// `tasks/update`: the client's answers, to the owning upstream.
pub(in crate::gateway) async fn update(
    session: &Session,
    mut params: UpdateTaskParams,
    ctx: &RequestContext<RoleServer>,
    obs: &mut Observation<'_>,
) -> Result<(), ErrorData> {
    let client_id = std::mem::take(&mut params.task_id);
    let opened = open(session, ctx, obs, "tasks/update", &client_id)?;
    // A shim's answers reach its upstream as answers to the upstream's own
    // requests, screened on the way (`upstream::AnswerCheck`).
    if let Some(shim) = &opened.shim {
        return shim.answer(params.input_responses);
    }
    if let Some(answers) = session.task_answers(ctx, &opened, "tasks/update") {
        answers.screen_all(Some(&mut params.input_responses))?;
    }
    params.task_id = opened.task.id.clone();
    let request = ClientRequest::UpdateTaskRequest(Request::new(params));
    acknowledged(session, ctx, &opened, &client_id, request).await
}

/// `tasks/cancel`: cooperative; the upstream decides the final status.
pub(in crate::gateway) async fn cancel(
    session: &Session,
    mut params: CancelTaskParams,
    ctx: &RequestContext<RoleServer>,
    obs: &mut Observation<'_>,
) -> Result<(), ErrorData> {
    let client_id = std::mem::take(&mut params.task_id);
    let opened = open(session, ctx, obs, "tasks/cancel", &client_id)?;
    let request = match &opened.shim {
        // The 2025 `tasks/cancel` (its answer, the task, is not needed).
        Some(_) => legacy::task_request("tasks/cancel", &opened.task.id),
        None => {
            params.task_id = opened.task.id.clone();
            ClientRequest::CancelTaskRequest(Request::new(params))
        }
    };
    acknowledged(session, ctx, &opened, &client_id, request).await
}

/// Sends a request the client is answered with an empty result for.
async fn acknowledged(
    session: &Session,
    ctx: &RequestContext<RoleServer>,
    opened: &Opened,
    client_id: &str,
    request: ClientRequest,
) -> Result<(), ErrorData> {
    forward(session, ctx, opened, client_id, request)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::TaskStatus;

    #[test]
    fn an_upstream_error_never_names_the_upstream_task_id() {
        let e = ErrorData::invalid_params(
            "unknown task: 5f0c-up",
            Some(serde_json::json!({ "taskId": "5f0c-up" })),
        );
        let e = hide_id(e, "5f0c-up", "sealed");
        assert_eq!(e.message, "unknown task: sealed");
        assert_eq!(e.data, Some(serde_json::json!({ "taskId": "sealed" })));
        let untouched = hide_id(
            ErrorData::invalid_params("other", None),
            "5f0c-up",
            "sealed",
        );
        assert_eq!(untouched.message, "other");
    }

    #[test]
    fn a_failed_or_tool_error_task_is_observed_as_failed() {
        let task = rmcp::model::Task::new("t", TaskStatus::Working, "now", "now");
        let failed = GetTaskResult::new(rmcp::model::DetailedTask::new(
            task.clone(),
            TaskPayload::Failed {
                error: serde_json::from_value(serde_json::json!({"code": -1, "message": "x"}))
                    .unwrap(),
            },
        ));
        assert!(failed.failed());
        let tool_error = GetTaskResult::new(rmcp::model::DetailedTask::new(
            task.clone(),
            TaskPayload::Completed {
                result: serde_json::from_value(serde_json::json!({"content": [], "isError": true}))
                    .unwrap(),
            },
        ));
        assert!(tool_error.failed());
        let working =
            GetTaskResult::new(rmcp::model::DetailedTask::new(task, TaskPayload::Working));
        assert!(!working.failed());
    }
}
