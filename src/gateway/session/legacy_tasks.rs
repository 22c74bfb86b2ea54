//! 2025-11-25 tasks, as a session serves them. The HTTP layer renamed a
//! 2025 client's task requests to private methods (see
//! [`crate::gateway::tasks::legacy`]); they arrive here as custom requests.
//!
//! A task-augmented `tools/call` runs through [`Session::call_tool`] like
//! any call (policy, rate limit, audit, metrics; a refused call creates no
//! task), forwarded with its `task` field. The client's task id is sealed
//! for the caller ([`TaskIds`](crate::gateway::tasks)) over the upstream's
//! name and a random handle, not the upstream's own id: a sealed id is
//! signed, not encrypted. The handle maps to that id in the gateway's table.
//! `tasks/get`, `tasks/result` and `tasks/cancel` open that id and go to
//! the owning upstream under its own id; every answer names the client's
//! id. `tasks/list` answers from the gateway's own record of the caller's
//! tasks: an upstream's list would show other clients' tasks.

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientRequest, CreateTaskResult, CustomRequest,
    CustomResult, ErrorCode, ErrorData, GetMeta, PaginatedRequestParams, ServerResult,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::ServerHandler;
use serde_json::Value;
use tracing::Instrument;

use super::super::observe::{Observation, Outcome};
use super::super::tasks::legacy::{self, Issued};
use super::super::tasks::{unknown_task, TaskRef};
use super::Session;
use crate::policy::{Direction, Kind, Subject};
use crate::registry::Target;
use crate::telemetry::trace;

impl Outcome for CustomResult {}

/// Marks a `tools/call` as task-augmented by a 2025 client, carrying its
/// `params.task` (rmcp's call parameters have no field for it).
#[derive(Clone, Debug)]
pub(super) struct Augmented(Value);

impl Augmented {
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

/// The call-path reading of an upstream's custom result: a 2025
/// `CreateTaskResult` becomes a task response; anything else is left to
/// the caller's conversion.
pub(super) fn created(r: CustomResult) -> Result<CallToolResponse, Box<ServerResult>> {
    match legacy::created(&r.0) {
        Some(task) => Ok(CallToolResponse::Task(task)),
        None => Err(Box::new(ServerResult::CustomResult(r))),
    }
}

fn invalid(message: impl Into<String>) -> ErrorData {
    ErrorData::invalid_params(message.into(), None)
}

/// An upstream error about a task, with its id replaced by the client's.
fn renamed(mut e: ErrorData, upstream_id: &str, client_id: &str) -> ErrorData {
    if !upstream_id.is_empty() {
        e.message = e.message.replace(upstream_id, client_id).into();
        if let Some(data) = e.data.take() {
            let text = data.to_string().replace(upstream_id, client_id);
            e.data = serde_json::from_str(&text).ok();
        }
    }
    e
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
    /// id is sealed for the caller. An upstream that does not do tasks runs
    /// the call and answers it, which the client gets as is (2025-11-25: a
    /// receiver without task support processes the request normally).
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
        let view = self.gw.registry.tools(self.endpoint()).await;
        let target = view.index.get(&*call.name).cloned();
        // A 2026-07-28 upstream knows only the other design: the call goes
        // to it plain, and is answered plain (the gateway does not declare
        // 2025 task support, so a plain answer is what the client may expect).
        let speaks_2026 = target
            .as_ref()
            .and_then(|t| self.gw.registry.upstream(&t.upstream))
            .is_some_and(|up| up.speaks_2026());
        if !speaks_2026 {
            ctx.extensions.insert(Augmented(task));
        }
        match (self.call_tool(call, ctx).await?, target) {
            (CallToolResponse::Task(created), Some(target)) if !speaks_2026 => {
                self.issue(created, &target, &identity.subject)
            }
            (CallToolResponse::Complete(mut result), _) => {
                result.result_type = None;
                serde_json::to_value(result)
                    .map(CustomResult)
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))
            }
            _ => Err(ErrorData::internal_error(
                "the upstream answered a task-augmented call with neither a task nor a result",
                None,
            )),
        }
    }

    /// Seals the upstream's task id for `subject`, records the task, and
    /// answers the 2025 `CreateTaskResult`.
    fn issue(
        &self,
        mut created: CreateTaskResult,
        target: &Target,
        subject: &str,
    ) -> Result<CustomResult, ErrorData> {
        let upstream_id = std::mem::take(&mut created.task.task_id);
        let handle = legacy::handle()
            .ok_or_else(|| ErrorData::internal_error("no OS randomness for a task id", None))?;
        let task = TaskRef {
            upstream: target.upstream.to_string(),
            id: handle,
            tool: Some(target.original.to_string()),
            link: None,
        };
        let client_id = self.gw.task_ids.issue(subject, &task)?;
        created.task.task_id = client_id.clone();
        let mut value = legacy::created_to_2025(&created);
        rename_meta(&mut value, &client_id);
        let issued = Issued::new(
            subject.to_owned(),
            self.state.id,
            (task, upstream_id.clone()),
            (target.original.clone(), self.gw.aggregate_name(target)),
            value.get("task").cloned().unwrap_or_default(),
        );
        let up = self.gw.registry.upstream(&target.upstream);
        match self.gw.legacy_tasks.insert(client_id.clone(), issued) {
            Some(expired) => self.forget(expired),
            None => {
                if let Some(up) = up {
                    up.forget_task(self.state.id, &upstream_id);
                }
                return Err(ErrorData::new(
                    super::super::RATE_LIMITED,
                    "too many tasks held; fetch or cancel some first",
                    None,
                ));
            }
        }
        if let Some(up) = up {
            up.track_task(self.state.id, &upstream_id, &client_id, None);
        }
        Ok(CustomResult(value))
    }

    /// Drops the upstream routes of tasks the table let go.
    fn forget(&self, expired: Vec<Issued>) {
        for t in expired {
            if let Some(up) = self.gw.registry.upstream(&t.task.upstream) {
                up.forget_task(t.session, &t.upstream_id);
            }
        }
    }

    /// The task a request's `taskId` names, if the caller was issued it and
    /// this endpoint shows its upstream; one error for every refusal.
    fn open_task(
        &self,
        params: &Value,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<(String, Issued), ErrorData> {
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
        Ok((id.to_owned(), issued))
    }

    /// Sends `method` about the task to its upstream, under the upstream's
    /// id. With `follow`, the task's server-to-client requests travel on
    /// this request's stream from now on.
    async fn to_owner(
        &self,
        (client_id, issued): (&str, &Issued),
        ctx: &RequestContext<RoleServer>,
        obs: &mut Observation<'_>,
        method: &'static str,
        follow: bool,
    ) -> Result<ServerResult, ErrorData> {
        let target = Target {
            upstream: issued.task.upstream.as_str().into(),
            original: issued.tool.clone(),
        };
        obs.routed(&target);
        let caller = self.caller(ctx);
        if let Some(up) = self.gw.registry.upstream(&target.upstream) {
            up.track_task(
                issued.session,
                &issued.upstream_id,
                client_id,
                follow.then(|| caller.clone()),
            );
        }
        let params = serde_json::json!({ "taskId": issued.upstream_id });
        let request = ClientRequest::CustomRequest(CustomRequest::new(method, Some(params)));
        self.send(&target, request, caller, ctx.ct.clone())?
            .await
            .map_err(|e| renamed(e, &issued.upstream_id, client_id))
    }

    /// Ends the gateway's routes for a task that reached a terminal state.
    fn ended(&self, issued: &Issued) {
        if let Some(up) = self.gw.registry.upstream(&issued.task.upstream) {
            up.forget_task(issued.session, &issued.upstream_id);
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
        let (client_id, issued) = self.open_task(&params, ctx)?;
        let result = self
            .to_owner((&client_id, &issued), ctx, obs, method, false)
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
        let (client_id, issued) = self.open_task(&params, ctx)?;
        let result = self
            .to_owner((&client_id, &issued), ctx, obs, "tasks/result", true)
            .await;
        // Answered either way: the task has ended.
        self.ended(&issued);
        let mut value = serde_json::to_value(result?)
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        if let Some(r) = value.as_object_mut() {
            r.remove("resultType");
        }
        rename_meta(&mut value, &client_id);
        if let Some(g) = &self.gw.guardrails {
            let set = g.policy();
            if set.guard_count() > 0 {
                let identity = self.identity(ctx);
                let subject = Subject {
                    kind: Kind::Tool,
                    upstream: &issued.task.upstream,
                    name: &issued.tool,
                    exposed: &issued.exposed,
                    annotations: None,
                };
                let call = super::super::guardrails::CallInfo {
                    identity: &identity,
                    session: self.state.id,
                    method: "tasks/result",
                    trace_id: trace::trace_id_of(&obs.span),
                    link: issued.task.link.clone(),
                };
                g.guard(&set, &call, &subject, Direction::Results, &mut value)?;
            }
        }
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
    fn upstream_errors_name_the_clients_task_id() {
        let e = ErrorData::invalid_params("Task up-1 not found", Some(json!({ "taskId": "up-1" })));
        let e = renamed(e, "up-1", "client");
        assert_eq!(e.message, "Task client not found");
        assert_eq!(e.data, Some(json!({ "taskId": "client" })));
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
