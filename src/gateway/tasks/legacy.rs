//! Tasks of the 2025-11-25 design (the core protocol's experimental
//! tasks), for clients and upstreams that negotiated that version.
//!
//! rmcp knows only the 2026-07-28 tasks extension: it drops `params.task`
//! from `tools/call` and parses `tasks/get` and `tasks/cancel` as the 2026
//! requests. So the HTTP layer renames a 2025 session's task requests to the
//! private methods below before rmcp reads them ([`rewrite_request`]); they
//! reach [`crate::gateway::Session`] as custom requests, inside the session
//! (identity, peer, policy), and their results go back verbatim in 2025
//! shape. This module holds what needs no session: that rewrite, the
//! conversions between the two wire shapes, and the table of issued tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rmcp::model::{
    ClientRequest, CreateTaskResult, CustomNotification, CustomRequest, ErrorData, JsonObject,
    ServerNotification, ServerResult, Task, TaskStatus,
};
use rmcp::service::{Peer, RoleServer};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::TaskRef;

/// A task-augmented `tools/call` of a 2025 client.
pub(crate) const CALL: &str = "portcullis/tasks-2025/tools/call";
/// `tasks/get` of a 2025 client.
pub(crate) const GET: &str = "portcullis/tasks-2025/get";
/// `tasks/result` of a 2025 client.
pub(crate) const RESULT: &str = "portcullis/tasks-2025/result";
/// `tasks/list` of a 2025 client.
pub(crate) const LIST: &str = "portcullis/tasks-2025/list";
/// `tasks/cancel` of a 2025 client.
pub(crate) const CANCEL: &str = "portcullis/tasks-2025/cancel";

/// How long a task the upstream keeps forever stays in the gateway's table.
pub(crate) const UNLIMITED_TTL: Duration = Duration::from_secs(24 * 3600);

/// Tasks one subject may hold at once, so a client cannot grow the table
/// without bound.
const MAX_TASKS_PER_SUBJECT: usize = 1000;

/// The private method a 2025 task request is renamed to, if it is one.
fn private_method(method: &str, params: Option<&Value>) -> Option<&'static str> {
    match method {
        "tools/call" => params
            .and_then(|p| p.get("task"))
            .filter(|t| t.is_object())
            .map(|_| CALL),
        "tasks/get" => Some(GET),
        "tasks/result" => Some(RESULT),
        "tasks/list" => Some(LIST),
        "tasks/cancel" => Some(CANCEL),
        _ => None,
    }
}

/// The prefix of the private methods.
const PRIVATE: &str = "portcullis/tasks-2025/";
/// What a client's own use of a private name becomes: a method no handler
/// knows, so the private names are reachable by renaming alone.
const FORGED: &str = "portcullis/tasks-2025/unknown";

/// The body with a 2025 task request's method renamed to its private
/// method (and a private name the client sent itself to one that does not
/// exist), or `None` when the body is anything else. Only bodies that
/// mention `"task` or the private prefix are parsed, so other requests
/// cost two byte scans.
pub(crate) fn rewrite_request(body: &[u8]) -> Option<Vec<u8>> {
    if memchr::memmem::find(body, b"\"task").is_none()
        && memchr::memmem::find(body, PRIVATE.as_bytes()).is_none()
    {
        return None;
    }
    let mut message: Value = serde_json::from_slice(body).ok()?;
    let object = message.as_object_mut()?;
    let method = object.get("method")?.as_str()?;
    let private = match method.starts_with(PRIVATE) {
        true => FORGED,
        false => private_method(method, object.get("params"))?,
    };
    object.insert("method".into(), Value::String(private.into()));
    serde_json::to_vec(&message).ok()
}

/// The upstream's 2025 `CreateTaskResult` (`{task: {...}}`) as rmcp's task
/// result, so it travels through the call path like a 2026 task; `None`
/// for anything else.
pub(crate) fn created(result: &Value) -> Option<CreateTaskResult> {
    let task = task_from_2025(result.get("task")?)?;
    let mut created = CreateTaskResult::new(task);
    created.meta = result
        .get("_meta")
        .and_then(|m| serde_json::from_value(m.clone()).ok());
    Some(created)
}

/// A 2025 request about the upstream's task `id` (`tasks/get`,
/// `tasks/result`, `tasks/cancel`): rmcp would send its own `tasks/*` in
/// the 2026-07-28 shape.
pub(crate) fn task_request(method: &str, id: &str) -> ClientRequest {
    let params = serde_json::json!({ "taskId": id });
    ClientRequest::CustomRequest(CustomRequest::new(method.to_owned(), Some(params)))
}

/// A 2025 `Task` object as rmcp's `Task` (`ttl`/`pollInterval` become
/// `ttlMs`/`pollIntervalMs`; the values are milliseconds in both).
pub(crate) fn task_from_2025(task: &Value) -> Option<Task> {
    let mut task = task.as_object()?.clone();
    task.get("taskId")?.as_str()?;
    if let Some(ttl) = task.remove("ttl") {
        task.insert("ttlMs".into(), ttl);
    }
    if let Some(poll) = task.remove("pollInterval") {
        task.insert("pollIntervalMs".into(), poll);
    }
    serde_json::from_value(Value::Object(task)).ok()
}

/// rmcp's `Task` in the 2025 wire shape.
pub(crate) fn task_to_2025(task: &Task) -> Value {
    let mut out = JsonObject::new();
    out.insert("taskId".into(), Value::String(task.task_id.clone()));
    out.insert(
        "status".into(),
        serde_json::to_value(task.status).unwrap_or(Value::Null),
    );
    if let Some(message) = &task.status_message {
        out.insert("statusMessage".into(), Value::String(message.clone()));
    }
    out.insert("createdAt".into(), Value::String(task.created_at.clone()));
    out.insert(
        "lastUpdatedAt".into(),
        Value::String(task.last_updated_at.clone()),
    );
    out.insert(
        "ttl".into(),
        task.ttl_ms.map(Value::from).unwrap_or(Value::Null),
    );
    if let Some(poll) = task.poll_interval_ms {
        out.insert("pollInterval".into(), Value::from(poll));
    }
    Value::Object(out)
}

/// A 2025 `CreateTaskResult` for the client.
pub(crate) fn created_to_2025(result: &CreateTaskResult) -> Value {
    let mut out = JsonObject::new();
    out.insert("task".into(), task_to_2025(&result.task));
    if let Some(meta) = &result.meta {
        out.insert("_meta".into(), Value::Object(meta.0.clone()));
    }
    Value::Object(out)
}

/// An upstream's answer to `tasks/get` or `tasks/cancel` (a `Task`) as
/// JSON in the 2025 shape. rmcp reads a working or cancelled task as its
/// 2026 `GetTaskResult`, which renames `ttl` and drops `pollInterval`;
/// `known` (what the upstream said before) fills what was lost.
pub(crate) fn task_result_to_2025(result: ServerResult, known: Option<&Value>) -> Option<Value> {
    let read_as_2026 = matches!(result, ServerResult::GetTaskResult(_));
    let mut value = serde_json::to_value(result).ok()?;
    let object = value.as_object_mut()?;
    if read_as_2026 {
        object.remove("resultType");
        let ttl = object.remove("ttlMs").filter(|t| !t.is_null());
        let poll = object.remove("pollIntervalMs");
        let known = |key: &str| known.and_then(|k| k.get(key)).cloned();
        object.insert(
            "ttl".into(),
            ttl.or_else(|| known("ttl")).unwrap_or(Value::Null),
        );
        if let Some(poll) = poll.or_else(|| known("pollInterval")) {
            object.insert("pollInterval".into(), poll);
        }
    }
    object.get("taskId")?.as_str()?;
    Some(value)
}

/// The `ttl` of a gateway-local task whose client asked for none.
pub(crate) const LOCAL_DEFAULT_TTL_MS: u64 = 3_600_000;

/// How often a client should poll a gateway-local task.
pub(crate) const LOCAL_POLL_INTERVAL_MS: u64 = 500;

/// Who holds a task's state.
#[derive(Clone)]
pub(crate) enum Owner {
    /// The upstream made the task; `tasks/*` are forwarded to it.
    Upstream,
    /// The gateway runs the call itself (the upstream cannot make a
    /// 2025-11-25 task): `tasks/*` are answered from this record.
    Local(Arc<Local>),
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Upstream => f.write_str("Upstream"),
            Owner::Local(_) => f.write_str("Local"),
        }
    }
}

/// Where a gateway-local task stands.
#[derive(Clone, Debug)]
struct Phase {
    status: TaskStatus,
    message: Option<String>,
    updated: String,
    /// The call's result (2025 `CallToolResult` JSON) or error, once ended.
    outcome: Option<Result<Value, ErrorData>>,
}

/// A task the gateway runs itself for a 2025-11-25 client, because the
/// tool's upstream cannot make one of that design. The call runs in a
/// spawned task ([`crate::gateway::Session`] starts it); this record is its
/// state, which `tasks/*` read and which tells the owning session of every
/// status change.
pub(crate) struct Local {
    phase: tokio::sync::watch::Sender<Phase>,
    cancel: CancellationToken,
    client_id: OnceLock<String>,
    announce: Announce,
    created_at: String,
    ttl: u64,
}

/// Where a local task's status notifications go.
type Announce = Box<dyn Fn(ServerNotification) + Send + Sync>;

impl Local {
    /// A working task whose status notifications go to `peer`.
    pub(crate) fn new(peer: Peer<RoleServer>, ttl: u64) -> Arc<Local> {
        Local::announcing(
            Box::new(move |n| {
                let peer = peer.clone();
                tokio::spawn(async move {
                    if let Err(e) = peer.send_notification(n).await {
                        tracing::debug!(error = %e, "task status notification not delivered");
                    }
                });
            }),
            ttl,
        )
    }

    fn announcing(announce: Announce, ttl: u64) -> Arc<Local> {
        let now = crate::telemetry::audit::now_rfc3339();
        let (phase, _) = tokio::sync::watch::channel(Phase {
            status: TaskStatus::Working,
            message: None,
            updated: now.clone(),
            outcome: None,
        });
        Arc::new(Local {
            phase,
            cancel: CancellationToken::new(),
            client_id: OnceLock::new(),
            announce,
            created_at: now,
            ttl,
        })
    }

    /// Cancelled when the client cancels the task or it expires; the
    /// running call (and its upstream request) stops with it.
    pub(crate) fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// The id the client holds, once issued.
    pub(crate) fn client_id(&self) -> Option<&str> {
        self.client_id.get().map(String::as_str)
    }

    /// Records the client's id for the task; a task that changed status
    /// before that is announced now.
    pub(crate) fn bind(&self, client_id: &str) {
        if self.client_id.set(client_id.to_owned()).is_ok() {
            // Wakes a run waiting in `issued`.
            self.phase.send_modify(|_| ());
            if self.phase.borrow().status != TaskStatus::Working {
                self.notify();
            }
        }
    }

    /// The client's id, once the task has been handed out: a question to
    /// the client names the task, so the run waits for it. `None` when the
    /// task ends without ever being handed out.
    pub(crate) async fn issued(&self) -> Option<String> {
        let mut rx = self.phase.subscribe();
        loop {
            if let Some(id) = self.client_id() {
                return Some(id.to_owned());
            }
            if self.cancel.is_cancelled() || rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// The 2025 `CreateTaskResult`'s task, in rmcp's type (its id is
    /// replaced by the one the gateway issues).
    pub(crate) fn created(&self, id: &str) -> CreateTaskResult {
        let mut task = Task::new(
            id.to_owned(),
            TaskStatus::Working,
            self.created_at.clone(),
            self.created_at.clone(),
        );
        task.ttl_ms = Some(self.ttl);
        task.poll_interval_ms = Some(LOCAL_POLL_INTERVAL_MS);
        CreateTaskResult::new(task)
    }

    /// Moves a running task to `status` (working or input_required).
    pub(crate) fn set(&self, status: TaskStatus, message: Option<String>) {
        let changed = self.phase.send_if_modified(|p| {
            if p.outcome.is_some() || p.status == status {
                return false;
            }
            p.status = status;
            p.message = message;
            p.updated = crate::telemetry::audit::now_rfc3339();
            true
        });
        if changed {
            self.notify();
        }
    }

    /// Ends the task with the call's outcome; a cancelled task stays so.
    pub(crate) fn finish(&self, outcome: Result<Value, ErrorData>) {
        let changed = self.phase.send_if_modified(|p| {
            if p.outcome.is_some() {
                return false;
            }
            (p.status, p.message) = match &outcome {
                Ok(r) if r.get("isError") == Some(&Value::Bool(true)) => (
                    TaskStatus::Failed,
                    Some("the tool reported an error".into()),
                ),
                Ok(_) => (TaskStatus::Completed, None),
                Err(e) => (TaskStatus::Failed, Some(e.message.to_string())),
            };
            p.updated = crate::telemetry::audit::now_rfc3339();
            p.outcome = Some(outcome);
            true
        });
        if changed {
            self.notify();
        }
    }

    /// Cancels a running task (its call is cancelled upstream); an ended
    /// one is left as it is.
    pub(crate) fn cancel(&self) {
        let changed = self.phase.send_if_modified(|p| {
            if p.outcome.is_some() {
                return false;
            }
            p.status = TaskStatus::Cancelled;
            p.message = Some("cancelled by the client".into());
            p.updated = crate::telemetry::audit::now_rfc3339();
            p.outcome = Some(Err(ErrorData::invalid_request(
                "the task was cancelled",
                None,
            )));
            true
        });
        self.cancel.cancel();
        if changed {
            self.notify();
        }
    }

    /// Whether the task has ended.
    pub(crate) fn ended(&self) -> bool {
        self.phase.borrow().outcome.is_some()
    }

    /// The call's outcome, once the task has ended.
    pub(crate) async fn outcome(&self) -> Result<Value, ErrorData> {
        let mut rx = self.phase.subscribe();
        let phase = rx
            .wait_for(|p| p.outcome.is_some())
            .await
            .map_err(|_| ErrorData::internal_error("the task's state was lost", None))?;
        phase
            .outcome
            .clone()
            .unwrap_or_else(|| Err(ErrorData::internal_error("the task has no outcome", None)))
    }

    /// The task in the 2025 wire shape, under the client's id.
    pub(crate) fn snapshot(&self) -> Value {
        let phase = self.phase.borrow().clone();
        let mut task = Task::new(
            self.client_id().unwrap_or_default().to_owned(),
            phase.status,
            self.created_at.clone(),
            phase.updated,
        );
        task.status_message = phase.message;
        task.ttl_ms = Some(self.ttl);
        task.poll_interval_ms = Some(LOCAL_POLL_INTERVAL_MS);
        task_to_2025(&task)
    }

    /// Sends `notifications/tasks/status` to the owning session (once the
    /// client's id is known).
    fn notify(&self) {
        if self.client_id().is_none() {
            return;
        }
        (self.announce)(ServerNotification::CustomNotification(
            CustomNotification::new(crate::upstream::STATUS_NOTIFICATION, Some(self.snapshot())),
        ));
    }
}

/// What the gateway remembers about one task it issued.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    /// Who created it; only they see it in `tasks/list`.
    pub(crate) subject: String,
    /// The downstream session that created it (its notifications go there).
    pub(crate) session: u64,
    /// What the client's id seals: the upstream, its own id for the task,
    /// the tool, and the call that created it.
    pub(crate) task: TaskRef,
    /// The tool as the upstream knows it, for the result guards.
    pub(crate) tool: String,
    /// The last state seen, in 2025 shape with the client's id.
    pub(crate) snapshot: Value,
    /// Who holds the task's state.
    pub(crate) owner: Owner,
    created: Instant,
    expires: Instant,
}

impl Issued {
    /// A record of a task created now; it expires with the task's `ttl`.
    pub(crate) fn new(
        subject: String,
        session: u64,
        task: TaskRef,
        tool: String,
        snapshot: Value,
        owner: Owner,
    ) -> Issued {
        let ttl = snapshot
            .get("ttl")
            .and_then(Value::as_u64)
            .map(Duration::from_millis)
            .unwrap_or(UNLIMITED_TTL)
            .min(UNLIMITED_TTL);
        let created = Instant::now();
        Issued {
            subject,
            session,
            task,
            tool,
            snapshot,
            owner,
            created,
            expires: created + ttl,
        }
    }
}

impl Issued {
    /// The task's state as the client should see it now.
    pub(crate) fn current(&self) -> Value {
        match &self.owner {
            Owner::Upstream => self.snapshot.clone(),
            Owner::Local(local) => local.snapshot(),
        }
    }
}

/// The 2025 tasks the gateway issued, by the id the client holds.
#[derive(Default)]
pub(crate) struct Issuance {
    tasks: Mutex<HashMap<String, Issued>>,
}

impl Issuance {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Issued>> {
        // Entries are replaced whole, so a poisoned map is still consistent.
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a task; returns the expired ones it dropped (their upstream
    /// routes should go too), or `None` when the subject holds too many.
    pub(crate) fn insert(&self, id: String, issued: Issued) -> Option<Vec<Issued>> {
        let mut tasks = self.lock();
        let expired = purge(&mut tasks, Instant::now());
        let held = tasks
            .values()
            .filter(|t| t.subject == issued.subject)
            .count();
        if held >= MAX_TASKS_PER_SUBJECT {
            return None;
        }
        tasks.insert(id, issued);
        Some(expired)
    }

    /// Whether `subject` holds as many live tasks as it may: a further
    /// task-augmented call is refused before it runs.
    pub(crate) fn full(&self, subject: &str) -> bool {
        let now = Instant::now();
        self.lock()
            .values()
            .filter(|t| t.subject == subject && t.expires > now)
            .count()
            >= MAX_TASKS_PER_SUBJECT
    }

    /// The record of task `id`, if it has not expired.
    pub(crate) fn get(&self, id: &str) -> Option<Issued> {
        let tasks = self.lock();
        tasks
            .get(id)
            .filter(|t| t.expires > Instant::now())
            .cloned()
    }

    /// Stores the latest state seen of task `id`.
    pub(crate) fn update(&self, id: &str, snapshot: &Value) {
        if let Some(t) = self.lock().get_mut(id) {
            t.snapshot = snapshot.clone();
        }
    }

    /// `subject`'s live tasks, oldest first, and the expired ones dropped.
    pub(crate) fn list(&self, subject: &str) -> (Vec<Value>, Vec<Issued>) {
        let mut tasks = self.lock();
        let expired = purge(&mut tasks, Instant::now());
        let mut mine: Vec<&Issued> = tasks.values().filter(|t| t.subject == subject).collect();
        mine.sort_by_key(|t| t.created);
        (mine.iter().map(|t| t.current()).collect(), expired)
    }
}

fn purge(tasks: &mut HashMap<String, Issued>, now: Instant) -> Vec<Issued> {
    let dead: Vec<String> = tasks
        .iter()
        .filter(|(_, t)| t.expires <= now)
        .map(|(id, _)| id.clone())
        .collect();
    dead.iter().filter_map(|id| tasks.remove(id)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_renaming_reaches_a_private_method() {
        let get = br#"{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"taskId":"t"}}"#;
        let renamed: Value = serde_json::from_slice(&rewrite_request(get).unwrap()).unwrap();
        assert_eq!(renamed["method"], GET);
        // A client naming a private method itself reaches none of them,
        // whether or not its body mentions a task.
        for sent in [
            r#"{"jsonrpc":"2.0","id":2,"method":"portcullis/tasks-2025/get","params":{"taskId":"t"}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"portcullis/tasks-2025/list"}"#,
        ] {
            let out: Value =
                serde_json::from_slice(&rewrite_request(sent.as_bytes()).unwrap()).unwrap();
            assert_eq!(out["method"], FORGED, "{sent}");
            assert!(![CALL, GET, RESULT, LIST, CANCEL].contains(&FORGED));
        }
        let other = br#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#;
        assert!(rewrite_request(other).is_none());
    }

    use super::*;
    use serde_json::json;

    fn method_of(body: &[u8]) -> String {
        let v: Value = serde_json::from_slice(body).unwrap();
        v["method"].as_str().unwrap().to_owned()
    }

    #[test]
    fn only_2025_task_requests_are_renamed() {
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","task":{"ttl":1000}}}"#;
        assert_eq!(method_of(&rewrite_request(call).unwrap()), CALL);
        for (method, private) in [
            ("tasks/get", GET),
            ("tasks/result", RESULT),
            ("tasks/list", LIST),
            ("tasks/cancel", CANCEL),
        ] {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{"taskId":"a"}}}}"#
            );
            assert_eq!(
                method_of(&rewrite_request(body.as_bytes()).unwrap()),
                private
            );
        }
        // A plain call, a call whose arguments mention a task, and other methods pass.
        let plain = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#;
        assert!(rewrite_request(plain).is_none());
        let argument = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"task":{}}}}"#;
        assert!(rewrite_request(argument).is_none());
        let other = br#"{"jsonrpc":"2.0","id":1,"method":"tasks/update","params":{"taskId":"a"}}"#;
        assert!(rewrite_request(other).is_none());
        assert!(rewrite_request(b"\"task not json").is_none());
    }

    #[test]
    fn a_2025_task_survives_the_round_trip_through_rmcp_types() {
        let task = json!({
            "taskId": "t-1", "status": "working", "statusMessage": "busy",
            "createdAt": "2025-11-25T10:30:00Z", "lastUpdatedAt": "2025-11-25T10:30:01Z",
            "ttl": 60000, "pollInterval": 1000
        });
        let result = json!({ "task": task, "_meta": { "k": 1 } });
        let created = created(&result).unwrap();
        assert_eq!(created.task.task_id, "t-1");
        assert_eq!(created_to_2025(&created), result);
        assert!(super::created(&json!({ "content": [] })).is_none());
    }

    #[test]
    fn rmcp_reads_2025_task_results_as_expected() {
        // What an upstream's answers deserialise into, and that the 2025
        // shape comes back with what rmcp dropped filled in.
        let working = json!({
            "taskId": "t-1", "status": "working", "createdAt": "a", "lastUpdatedAt": "b",
            "ttl": 60000, "pollInterval": 1000
        });
        let read: ServerResult = serde_json::from_value(working.clone()).unwrap();
        assert!(matches!(read, ServerResult::GetTaskResult(_)));
        let known = json!({ "ttl": 60000, "pollInterval": 1000 });
        assert_eq!(task_result_to_2025(read, Some(&known)).unwrap(), working);

        let waiting = json!({
            "taskId": "t-1", "status": "input_required", "createdAt": "a",
            "lastUpdatedAt": "b", "ttl": 5, "pollInterval": 7
        });
        let read: ServerResult = serde_json::from_value(waiting.clone()).unwrap();
        assert!(matches!(read, ServerResult::CustomResult(_)));
        assert_eq!(task_result_to_2025(read, None).unwrap(), waiting);

        let create = json!({ "task": working });
        let read: ServerResult = serde_json::from_value(create).unwrap();
        assert!(matches!(read, ServerResult::CustomResult(_)));

        let list = json!({ "tasks": [working], "nextCursor": "c" });
        let read: ServerResult = serde_json::from_value(list).unwrap();
        assert!(matches!(read, ServerResult::CustomResult(_)));
    }

    /// A local task whose status notifications are collected.
    fn local(ttl: u64) -> (Arc<Local>, Arc<Mutex<Vec<Value>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let local = Local::announcing(
            Box::new(move |n| {
                if let ServerNotification::CustomNotification(n) = n {
                    sink.lock().unwrap().push(n.params.unwrap_or_default());
                }
            }),
            ttl,
        );
        (local, seen)
    }

    fn statuses(seen: &Mutex<Vec<Value>>) -> Vec<String> {
        let seen = seen.lock().unwrap();
        seen.iter()
            .map(|n| n["status"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_local_task_announces_each_status_once_it_has_an_id() {
        let (task, seen) = local(60_000);
        let created = created_to_2025(&task.created("x"));
        assert_eq!(created["task"]["status"], "working");
        assert_eq!(created["task"]["ttl"], 60_000);
        assert_eq!(created["task"]["pollInterval"], LOCAL_POLL_INTERVAL_MS);
        // Before the client holds an id there is nobody to tell...
        task.set(TaskStatus::InputRequired, None);
        assert!(statuses(&seen).is_empty());
        // ...and it is told where it stands as soon as it does.
        task.bind("client-1");
        assert_eq!(task.issued().await.as_deref(), Some("client-1"));
        task.set(TaskStatus::Working, None);
        task.finish(Ok(json!({ "content": [], "isError": false })));
        task.finish(Err(ErrorData::internal_error("late", None)));
        task.cancel();
        assert_eq!(statuses(&seen), ["input_required", "working", "completed"]);
        assert_eq!(task.snapshot()["taskId"], "client-1");
        assert_eq!(task.snapshot()["status"], "completed");
        assert_eq!(task.outcome().await.unwrap()["isError"], false);
    }

    #[tokio::test]
    async fn a_cancelled_local_task_stops_its_call_and_keeps_no_result() {
        let (task, seen) = local(1_000);
        task.bind("c");
        let token = task.token();
        let waiting = tokio::spawn({
            let task = task.clone();
            async move { task.outcome().await }
        });
        task.cancel();
        assert!(token.is_cancelled());
        assert!(waiting.await.unwrap().is_err());
        // The call's late answer does not revive it.
        task.finish(Ok(json!({ "content": [] })));
        assert_eq!(task.snapshot()["status"], "cancelled");
        assert_eq!(statuses(&seen), ["cancelled"]);
    }

    #[tokio::test]
    async fn a_tool_error_fails_a_local_task_and_an_unissued_one_is_not_waited_for() {
        let (task, _) = local(1_000);
        task.finish(Ok(json!({ "content": [], "isError": true })));
        assert_eq!(task.snapshot()["status"], "failed");
        let (never, _) = local(1_000);
        never.cancel();
        assert_eq!(never.issued().await, None);
    }

    #[test]
    fn the_table_lists_a_subjects_tasks_and_expires_them() {
        let table = Issuance::default();
        let issued = |subject: &str, ttl: u64| {
            Issued::new(
                subject.into(),
                1,
                TaskRef {
                    upstream: "u".into(),
                    id: format!("{subject}-{ttl}"),
                    tool: None,
                    link: None,
                },
                "tool".into(),
                json!({ "taskId": format!("{subject}-{ttl}"), "ttl": ttl }),
                Owner::Upstream,
            )
        };
        table.insert("a1".into(), issued("alice", 60_000)).unwrap();
        table.insert("b1".into(), issued("bob", 60_000)).unwrap();
        table.insert("a0".into(), issued("alice", 0)).unwrap();
        let (alice, expired) = table.list("alice");
        assert_eq!(
            alice,
            vec![json!({ "taskId": "alice-60000", "ttl": 60000 })]
        );
        assert_eq!(expired.len(), 1);
        assert!(table.get("a0").is_none());
        assert_eq!(table.get("b1").unwrap().subject, "bob");
        assert!(!table.full("alice"));
        for n in 1..MAX_TASKS_PER_SUBJECT {
            table
                .insert(format!("c{n}"), issued("carol", 60_000))
                .unwrap();
        }
        assert!(!table.full("carol"));
        table.insert("c0".into(), issued("carol", 60_000)).unwrap();
        assert!(table.full("carol") && !table.full("alice"));
        assert!(table.insert("c-over".into(), issued("carol", 1)).is_none());
        table.update("a1", &json!({ "taskId": "x" }));
        assert_eq!(table.list("alice").0, vec![json!({ "taskId": "x" })]);
    }
}
