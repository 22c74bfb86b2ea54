//! 2025-11-25 tasks, as a session serves them. The HTTP layer renamed a
//! 2025 client's task requests to private methods (see
//! [`crate::gateway::tasks::legacy`]); they arrive here as custom requests.
//!
//! A task-augmented `tools/call` runs through [`Session::call_tool`] like
//! any call (policy, rate limit, audit, metrics; a refused call creates no
//! task), forwarded with its `task` field; the client gets the task under
//! the id `call_tool` issues for every task ([`TaskIds`](crate::gateway::tasks):
//! sealed for the caller, the upstream's own id encrypted inside), and the
//! gateway records it per caller until its `ttl`. `tasks/get`, `tasks/result`
//! and `tasks/cancel` open that id, are audited as part of the call that
//! created the task, and go to the owning upstream under its own id; every
//! answer names the client's id. `tasks/list` answers from the gateway's own
//! record of the caller's tasks: an upstream's list would show other
//! clients' tasks.
//!
//! Where the upstream cannot make a 2025 task (it speaks 2026-07-28, or
//! ignores `task`), the task is the gateway's own ([`Local`]): the same
//! table, ids and handlers, with `tasks/*` answered from its record instead
//! of forwarded.

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientRequest, CreateTaskResult, CustomRequest,
    CustomResult, ErrorCode, ErrorData, GetMeta, PaginatedRequestParams, ServerResult,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::ServerHandler;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracing::Instrument;

use super::super::observe::{Observation, Outcome};
use super::super::tasks::extension::{self, hide_id, with_policy, Opened};
use super::super::tasks::legacy::{self, Issued, Local, Owner};
use super::super::tasks::{unknown_task, TaskRef};
use super::super::REQUEST_TIMEOUT;
use super::{AnswerGuard, RoundLog, Session};
use crate::policy::Direction;
use crate::registry::Target;
use crate::telemetry::audit::CallLink;

impl Outcome for CustomResult {
    /// A task's result that reports a tool error counts as one, like a call's.
    fn failed(&self) -> bool {
        self.0.get("isError") == Some(&Value::Bool(true))
    }
}

/// Marks a `tools/call` as task-augmented by a 2025 client, carrying its
/// `params.task` (rmcp's call parameters have no field for it).
#[derive(Clone, Debug)]
pub(super) struct Augmented(Value);

impl Augmented {
    /// A task asked for with no parameters (the upstream's defaults).
    pub(super) fn plain() -> Augmented {
        Augmented(Value::Object(Default::default()))
    }

    /// The upstream request: `tools/call` with the client's `task` field.
    pub(super) fn request(&self, params: CallToolRequestParams) -> ClientRequest {
        let mut value = serde_json::to_value(&params).unwrap_or_default();
        let meta = value
            .as_object_mut()
            .and_then(|p| p.remove("_meta"))
            .and_then(|m| match m {
                Value::Object(m) => Some(m),
                _ => None,
            });
        if let Some(p) = value.as_object_mut() {
            p.insert("task".into(), self.0.clone());
        }
        let mut request = CustomRequest::new("tools/call", Some(value));
        // One `_meta`, in the request's extensions, where rmcp adds its own.
        if let Some(meta) = meta {
            (***request.get_meta_mut()).extend(meta);
        }
        ClientRequest::CustomRequest(request)
    }
}

/// The upstream id sealed into a gateway-local task's client id (the
/// table, not the id, tells which task it is).
pub(super) const LOCAL_ID: &str = "portcullis-local";

/// Marks a 2025 client's task-augmented `tools/call` with the
/// gateway-local task it becomes when the upstream cannot hold one.
#[derive(Clone)]
pub(super) struct LocalTask {
    local: Arc<Local>,
    /// The upstream cannot make a 2025 task at all (it speaks
    /// 2026-07-28): the call runs as this task from the start.
    here: bool,
    /// Set once the call path turned the call into this task.
    used: Arc<AtomicBool>,
}

impl LocalTask {
    /// Whether the gateway runs the call as its own task from the start.
    pub(super) fn runs_here(&self) -> bool {
        self.here
    }

    /// The task, which the call now is.
    pub(super) fn local(&self) -> Arc<Local> {
        self.used.store(true, Ordering::Release);
        self.local.clone()
    }
}

/// A call's result as a 2025 client reads it (no `resultType`).
pub(super) fn result_json(mut result: rmcp::model::CallToolResult) -> Result<Value, ErrorData> {
    result.result_type = None;
    serde_json::to_value(result).map_err(|e| ErrorData::internal_error(e.to_string(), None))
}

/// The call-path reading of an upstream's custom result: a 2025
/// `CreateTaskResult` becomes a task response; anything else is left to
/// the caller's conversion.
pub(super) fn created(r: CustomResult) -> Result<CallToolResponse, Box<ServerResult>> {
    match legacy::created(&r.0) {
        Some(task) => Ok(CallToolResponse::Task(task)),
        None => Err(Box::new(ServerResult::CustomResult(r))),
    }
}

fn too_many_tasks() -> ErrorData {
    ErrorData::new(
        super::super::RATE_LIMITED,
        "too many tasks held; fetch or cancel some first",
        None,
    )
}

fn invalid(message: impl Into<String>) -> ErrorData {
    ErrorData::invalid_params(message.into(), None)
}

/// Renames `_meta` related-task in a result object to the client's id.
fn rename_meta(value: &mut Value, client_id: &str) {
    if let Some(meta) = value.get_mut("_meta").and_then(Value::as_object_mut) {
        crate::upstream::rename_related(meta, client_id);
    }
}

fn is_terminal(task: &Value) -> bool {
    matches!(
        task.get("status").and_then(Value::as_str),
        Some("completed" | "failed" | "cancelled")
    )
}

impl Session {
    /// Serves one of the private methods a 2025 task request was renamed to.
    pub(super) async fn legacy_task_request(
        &self,
        request: CustomRequest,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        let params = request.params.unwrap_or(Value::Null);
        match request.method.as_str() {
            legacy::CALL => self.legacy_call(params, ctx).await,
            legacy::GET => observed!(self, "tasks/get", ctx, |obs| {
                self.legacy_poll(params, &ctx, &mut obs, "tasks/get").await
            }),
            legacy::CANCEL => observed!(self, "tasks/cancel", ctx, |obs| {
                self.legacy_poll(params, &ctx, &mut obs, "tasks/cancel")
                    .await
            }),
            legacy::RESULT => observed!(self, "tasks/result", ctx, |obs| {
                self.legacy_result(params, &ctx, &mut obs).await
            }),
            legacy::LIST => observed!(self, "tasks/list", ctx, |obs| {
                self.legacy_list(params, &ctx)
            }),
            other => Err(ErrorData::new(
                ErrorCode::METHOD_NOT_FOUND,
                other.to_owned(),
                None,
            )),
        }
    }

    /// A task-augmented `tools/call`: a call like any other, whose task
    /// id is sealed for the caller. A task the upstream cannot hold is the
    /// gateway's own: a 2026-07-28 upstream knows only the other design, so
    /// the call runs in the background as a gateway-local task; a 2025
    /// upstream that ignores `task` answers the call, and that answer is
    /// the result of a task that has already completed. Either way a 2025
    /// client that asked for a task gets one.
    async fn legacy_call(
        &self,
        params: Value,
        mut ctx: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        let Value::Object(mut params) = params else {
            return Err(invalid("tools/call needs params"));
        };
        let task = params.remove("task").unwrap_or_default();
        let call: CallToolRequestParams = serde_json::from_value(Value::Object(params))
            .map_err(|e| invalid(format!("invalid tools/call params: {e}")))?;
        let identity = self.identity(&ctx);
        // Refused before it runs: a call the table could not hold would
        // otherwise start upstream only to be cancelled.
        if self.gw.legacy_tasks.full(&identity.subject) {
            return Err(too_many_tasks());
        }
        let view = self.gw.registry.tools(self.endpoint()).await;
        let target = view.index.get(&*call.name).cloned();
        let speaks_2026 = target
            .as_ref()
            .and_then(|t| self.gw.registry.upstream(&t.upstream))
            .is_some_and(|up| up.speaks_2026());
        let ttl = task
            .get("ttl")
            .and_then(Value::as_u64)
            .unwrap_or(legacy::LOCAL_DEFAULT_TTL_MS)
            .min(legacy::UNLIMITED_TTL.as_millis() as u64);
        let marker = LocalTask {
            local: Local::new(ctx.peer.clone(), ttl),
            here: speaks_2026,
            used: Arc::new(AtomicBool::new(false)),
        };
        if !speaks_2026 {
            ctx.extensions.insert(Augmented(task));
        }
        ctx.extensions.insert(marker.clone());
        match (self.call_tool(call, ctx).await?, target) {
            (CallToolResponse::Task(created), Some(target)) => {
                let owner = match marker.used.load(Ordering::Acquire) {
                    true => Owner::Local(marker.local),
                    false => Owner::Upstream,
                };
                self.issue(created, &target, &identity.subject, owner)
            }
            (CallToolResponse::Complete(result), _) => Ok(CustomResult(result_json(result)?)),
            _ => Err(ErrorData::internal_error(
                "the upstream answered a task-augmented call with neither a task nor a result",
                None,
            )),
        }
    }

    /// Records the task `call_tool` issued to `subject` and answers the
    /// 2025 `CreateTaskResult`.
    fn issue(
        &self,
        created: CreateTaskResult,
        target: &Target,
        subject: &str,
        owner: Owner,
    ) -> Result<CustomResult, ErrorData> {
        let client_id = created.task.task_id.clone();
        let task = self.gw.task_ids.open(subject, &client_id)?;
        let upstream_id = task.id.clone();
        let mut value = legacy::created_to_2025(&created);
        rename_meta(&mut value, &client_id);
        let local = match &owner {
            Owner::Local(local) => Some(local.clone()),
            Owner::Upstream => None,
        };
        let issued = Issued::new(
            subject.to_owned(),
            self.state.id,
            task,
            target.original.clone(),
            value.get("task").cloned().unwrap_or_default(),
            owner,
        );
        let up = self.gw.registry.upstream(&target.upstream);
        match self.gw.legacy_tasks.insert(client_id.clone(), issued) {
            Some(expired) => self.forget(expired),
            None => {
                match &local {
                    Some(local) => local.cancel(),
                    None => {
                        if let Some(up) = up {
                            up.forget_task(self.state.id, &upstream_id);
                        }
                    }
                }
                return Err(too_many_tasks());
            }
        }
        match local {
            Some(local) => {
                local.bind(&client_id);
                // What the client sees first may already be terminal.
                if let Some(v) = value.as_object_mut() {
                    v.insert("task".into(), local.snapshot());
                }
            }
            None => {
                if let Some(up) = up {
                    up.track_task(self.state.id, &upstream_id, &client_id, None);
                }
            }
        }
        Ok(CustomResult(value))
    }

    /// Holds the 2025-11-25 task an upstream made for a 2026-07-28 client's
    /// call (`tasks/shim.rs`): the task's `tasks/result` stays open on the
    /// upstream, and its input requests, on that stream or marked with the
    /// task, wait for the client's `tasks/update`.
    pub(super) fn hold_shimmed(
        &self,
        ctx: &RequestContext<RoleServer>,
        target: &Target,
        link: Option<CallLink>,
        upstream_id: &str,
        client_id: &str,
        answers: &Option<Arc<AnswerGuard>>,
    ) {
        let (inputs, arriving) = tokio::sync::mpsc::unbounded_channel();
        let mut caller = self.caller_screened(ctx, answers).detached();
        caller.input_bridge = Some(inputs);
        let session = self.state.id;
        let up = self.gw.registry.upstream(&target.upstream).cloned();
        if let Some(up) = &up {
            up.track_task(session, upstream_id, client_id, Some(caller.clone()));
        }
        let task = TaskRef {
            upstream: target.upstream.to_string(),
            id: upstream_id.to_owned(),
            tool: Some(target.original.clone()),
            link,
        };
        let (gw, target, id) = (self.gw.clone(), target.clone(), upstream_id.to_owned());
        let held = move |stop: tokio_util::sync::CancellationToken| async move {
            let done = loop {
                let request = legacy::task_request("tasks/result", &id);
                let call = super::send_with(&gw, &target, request, caller.clone(), stop.clone())?;
                match call.await {
                    // The upstream's call timeout, not the task's end: ask again.
                    Err(e) if e.code == REQUEST_TIMEOUT => continue,
                    done => break done,
                }
            };
            if let Some(up) = up {
                up.forget_task(session, &id);
            }
            done
        };
        self.gw.shims.start(&task, held, arriving);
    }

    /// Drops the upstream routes of tasks the table let go.
    fn forget(&self, expired: Vec<Issued>) {
        for t in expired {
            if let Owner::Local(local) = &t.owner {
                // Its result is dropped with it; a running call stops.
                local.cancel();
                continue;
            }
            if let Some(up) = self.gw.registry.upstream(&t.task.upstream) {
                up.forget_task(t.session, &t.task.id);
            }
        }
    }

    /// The task a request's `taskId` names, if the caller was issued it and
    /// this endpoint shows its upstream (one error for every refusal); the
    /// request is observed and audited as part of the call that created it.
    fn open_task(
        &self,
        params: &Value,
        ctx: &RequestContext<RoleServer>,
        obs: &mut Observation<'_>,
        method: &'static str,
    ) -> Result<(String, Issued, Opened), ErrorData> {
        let id = params
            .get("taskId")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("taskId is required"))?;
        let identity = self.identity(ctx);
        let task = self.gw.task_ids.open(&identity.subject, id)?;
        let issued = self
            .gw
            .legacy_tasks
            .get(id)
            .filter(|i| {
                i.task == task
                    && self
                        .gw
                        .registry
                        .endpoint_includes(self.endpoint(), &i.task.upstream)
            })
            .ok_or_else(unknown_task)?;
        let opened = Opened {
            target: Target {
                upstream: task.upstream.as_str().into(),
                original: issued.tool.clone(),
            },
            task,
            shim: None,
        };
        extension::noted(self, ctx, obs, &opened, method);
        Ok((id.to_owned(), issued, opened))
    }

    /// The screen for what the user answers the questions of the task
    /// `opened` (its tool's argument guards), asked about in `method`.
    pub(in crate::gateway) fn task_answers(
        &self,
        ctx: &RequestContext<RoleServer>,
        opened: &Opened,
        method: &'static str,
    ) -> Option<Arc<AnswerGuard>> {
        let identity = self.identity(ctx);
        let span = tracing::Span::current();
        with_policy(self, ctx, &span, opened, method, |g, set, call, subject| {
            AnswerGuard::new(RoundLog::new(g, &identity, call, subject), set.clone())
        })
        .flatten()
    }

    /// Sends `method` about the task to its upstream, under the upstream's
    /// id. With `follow`, the task's server-to-client requests travel on
    /// this request's stream from now on.
    async fn to_owner(
        &self,
        (client_id, issued, opened): (&str, &Issued, &Opened),
        ctx: &RequestContext<RoleServer>,
        method: &'static str,
        follow: bool,
    ) -> Result<ServerResult, ErrorData> {
        // A follower answers the task's questions: screened as the call's.
        let answers = follow
            .then(|| self.task_answers(ctx, opened, method))
            .flatten();
        let caller = self.caller_screened(ctx, &answers);
        if let Some(up) = self.gw.registry.upstream(&opened.target.upstream) {
            up.track_task(
                issued.session,
                &issued.task.id,
                client_id,
                follow.then(|| caller.clone()),
            );
        }
        let request = legacy::task_request(method, &issued.task.id);
        let call = self.send(&opened.target, request, caller, ctx.ct.clone())?;
        call.await
            .map_err(|e| hide_id(e, &issued.task.id, client_id))
    }

    /// Ends the gateway's routes for a task that reached a terminal state.
    fn ended(&self, issued: &Issued) {
        if let Owner::Local(_) = issued.owner {
            return;
        }
        if let Some(up) = self.gw.registry.upstream(&issued.task.upstream) {
            up.forget_task(issued.session, &issued.task.id);
        }
    }

    /// `tasks/get` and `tasks/cancel`: both answer the task's state.
    async fn legacy_poll(
        &self,
        params: Value,
        ctx: &RequestContext<RoleServer>,
        obs: &mut Observation<'_>,
        method: &'static str,
    ) -> Result<CustomResult, ErrorData> {
        let (client_id, issued, opened) = self.open_task(&params, ctx, obs, method)?;
        if let Owner::Local(local) = &issued.owner {
            if method == "tasks/cancel" {
                if local.ended() {
                    return Err(invalid("the task has already ended"));
                }
                local.cancel();
            }
            return Ok(CustomResult(local.snapshot()));
        }
        let result = self
            .to_owner((&client_id, &issued, &opened), ctx, method, false)
            .await?;
        let mut value =
            legacy::task_result_to_2025(result, Some(&issued.snapshot)).ok_or_else(|| {
                ErrorData::internal_error(
                    format!(
                        "upstream `{}` answered {method} with something other than a task",
                        issued.task.upstream
                    ),
                    None,
                )
            })?;
        if let Some(task) = value.as_object_mut() {
            task.insert("taskId".into(), Value::String(client_id.clone()));
        }
        rename_meta(&mut value, &client_id);
        let mut snapshot = value.clone();
        if let Some(s) = snapshot.as_object_mut() {
            s.remove("_meta");
        }
        self.gw.legacy_tasks.update(&client_id, &snapshot);
        if is_terminal(&value) {
            self.ended(&issued);
        }
        Ok(CustomResult(value))
    }

    /// `tasks/result`: blocks until the task ends, then answers the call's
    /// result, through the policy's result guards like a call's.
    async fn legacy_result(
        &self,
        params: Value,
        ctx: &RequestContext<RoleServer>,
        obs: &mut Observation<'_>,
    ) -> Result<CustomResult, ErrorData> {
        let (client_id, issued, opened) = self.open_task(&params, ctx, obs, "tasks/result")?;
        if let Owner::Local(local) = &issued.owner {
            // Guarded when the call ended, like a call's result.
            let mut value = local.outcome().await?;
            if let Some(meta) = value
                .as_object_mut()
                .map(|r| r.entry("_meta").or_insert_with(|| serde_json::json!({})))
                .and_then(Value::as_object_mut)
            {
                crate::upstream::relate(meta, &client_id);
            }
            return Ok(CustomResult(value));
        }
        let result = self
            .to_owner((&client_id, &issued, &opened), ctx, "tasks/result", true)
            .await;
        // Answered either way: the task has ended.
        self.ended(&issued);
        let mut value = serde_json::to_value(result?)
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        if let Some(r) = value.as_object_mut() {
            r.remove("resultType");
        }
        rename_meta(&mut value, &client_id);
        with_policy(
            self,
            ctx,
            &obs.span,
            &opened,
            "tasks/result",
            |g, set, call, subject| {
                // Without result guards there is nothing to scan.
                match set.guards_on(Direction::Results) {
                    false => Ok(()),
                    true => g.guard(set, call, subject, Direction::Results, &mut value),
                }
            },
        )
        .unwrap_or(Ok(()))?;
        Ok(CustomResult(value))
    }

    /// `tasks/list`: the caller's own tasks, as last seen.
    fn legacy_list(
        &self,
        params: Value,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        let identity = self.identity(ctx);
        let (tasks, expired) = self.gw.legacy_tasks.list(&identity.subject);
        self.forget(expired);
        let page = serde_json::from_value::<PaginatedRequestParams>(params).ok();
        let (tasks, next) = self.page(&tasks, page)?;
        let mut out = serde_json::json!({ "tasks": tasks });
        if let (Some(next), Some(o)) = (next, out.as_object_mut()) {
            o.insert("nextCursor".into(), Value::String(next));
        }
        Ok(CustomResult(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_upstream_request_keeps_task_and_one_meta() {
        let mut params = CallToolRequestParams::new("tool");
        params.meta = Some(serde_json::from_value(json!({ "progressToken": 7 })).unwrap());
        let request = Augmented(json!({ "ttl": 5 })).request(params);
        let wire = serde_json::to_value(&request).unwrap();
        assert_eq!(wire["method"], "tools/call");
        assert_eq!(wire["params"]["task"], json!({ "ttl": 5 }));
        assert_eq!(wire["params"]["name"], "tool");
        assert_eq!(wire["params"]["_meta"]["progressToken"], 7);
        assert_eq!(
            serde_json::to_string(&wire)
                .unwrap()
                .matches("_meta")
                .count(),
            1
        );
    }

    #[test]
    fn only_a_2025_create_task_result_reads_as_a_task() {
        let task = json!({ "task": { "taskId": "t", "status": "working", "createdAt": "a",
            "lastUpdatedAt": "b", "ttl": null } });
        assert!(matches!(
            created(CustomResult(task)),
            Ok(CallToolResponse::Task(_))
        ));
        assert!(created(CustomResult(json!({ "other": 1 }))).is_err());
    }
}
