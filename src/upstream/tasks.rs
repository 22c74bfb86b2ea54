//! Routes of 2025-11-25 tasks on an upstream connection.
//!
//! A task outlives the `tools/call` that created it, and what the upstream
//! sends about it later (progress under the call's token, elicitation and
//! sampling marked with `_meta` related-task, `notifications/tasks/status`)
//! must still reach the session that owns it, under the task id that
//! session was given. The connection's [`Routes`](super::routes::Routes)
//! keep one [`TaskRoute`](super::routes::TaskRoute) per task until the
//! gateway says it ended.

use std::sync::Arc;

use rmcp::model::{CustomNotification, ServerResult};
use serde_json::Value;

use super::routes::{Caller, Routes, TaskRoute};
use super::Upstream;

/// The `_meta` key naming the task a message belongs to.
const RELATED_TASK: &str = "io.modelcontextprotocol/related-task";

/// The 2025 task status notification.
pub(crate) const STATUS_NOTIFICATION: &str = "notifications/tasks/status";

/// The upstream's task id when `result` is a 2025 `CreateTaskResult`
/// (rmcp reads `{task: {...}}` as a custom result).
pub(super) fn created_task_id(result: &ServerResult) -> Option<String> {
    let ServerResult::CustomResult(r) = result else {
        return None;
    };
    Some(r.0.get("task")?.get("taskId")?.as_str()?.to_owned())
}

/// The task a `_meta` object names, if any.
pub(super) fn related_task(meta: &serde_json::Map<String, Value>) -> Option<String> {
    Some(meta.get(RELATED_TASK)?.get("taskId")?.as_str()?.to_owned())
}

/// Renames the related task in `meta` to the client's id.
pub(crate) fn rename_related(meta: &mut serde_json::Map<String, Value>, client_id: &str) {
    if let Some(Value::String(id)) = meta
        .get_mut(RELATED_TASK)
        .and_then(|r| r.as_object_mut())
        .and_then(|r| r.get_mut("taskId"))
    {
        *id = client_id.to_owned();
    }
}

/// Removes the related-task mark from a result's `_meta` (and `_meta`
/// itself when nothing else is left in it).
pub(crate) fn unrelate(result: &mut serde_json::Map<String, Value>) {
    let emptied = result
        .get_mut("_meta")
        .and_then(Value::as_object_mut)
        .is_some_and(|meta| {
            meta.remove(RELATED_TASK);
            meta.is_empty()
        });
    if emptied {
        result.remove("_meta");
    }
}

/// Marks `meta` as belonging to the client's task `client_id`.
pub(crate) fn relate(meta: &mut serde_json::Map<String, Value>, client_id: &str) {
    meta.insert(
        RELATED_TASK.to_owned(),
        serde_json::json!({ "taskId": client_id }),
    );
}

/// The route of the task a message names in its `_meta`, with the id the
/// client knows it by.
pub(super) fn route_of(
    routes: &Routes,
    meta: &serde_json::Map<String, Value>,
) -> Option<(TaskRoute, String)> {
    let task = related_task(meta)?;
    let route = routes.task(&task)?;
    let client_id = route.client_id.clone()?;
    Some((route, client_id))
}

/// `notifications/tasks/status` for the session that owns the task, with
/// the client's task id; `None` for any other notification, or a task
/// the gateway did not issue.
pub(super) fn status_for_owner(
    routes: &Routes,
    notification: &CustomNotification,
) -> Option<(Arc<Caller>, CustomNotification)> {
    if notification.method != STATUS_NOTIFICATION {
        return None;
    }
    let mut params = notification.params.clone()?;
    let task = params.get("taskId")?.as_str()?.to_owned();
    let route = routes.task(&task)?;
    let client_id = route.client_id.clone()?;
    let object = params.as_object_mut()?;
    object.insert("taskId".into(), Value::String(client_id.clone()));
    if let Some(meta) = object.get_mut("_meta").and_then(|m| m.as_object_mut()) {
        rename_related(meta, &client_id);
    }
    Some((
        route.caller,
        CustomNotification::new(STATUS_NOTIFICATION, Some(params)),
    ))
}

impl Upstream {
    /// Whether the upstream negotiated 2026-07-28, whose tasks are of the
    /// other design: a 2025 task request means nothing to it.
    pub fn speaks_2026(&self) -> bool {
        self.shared
            .load()
            .as_ref()
            .and_then(|c| c.peer.peer_info())
            .is_some_and(|i| i.protocol_version == rmcp::model::ProtocolVersion::V_2026_07_28)
    }

    /// The routes of the connection `session` uses for this upstream.
    fn routes_of(&self, session: u64) -> Option<Arc<Routes>> {
        let conn = match self.per_client.get(session) {
            Some(conn) => conn,
            None => self.shared.load_full()?,
        };
        Some(conn.routes.clone())
    }

    /// Tells the connection the client's id for upstream task `task`, and
    /// that `caller` (when given) is the session's latest request about it.
    /// False when the connection keeps no route for it (it was
    /// reconnected, or the task was not created by a call on it).
    pub fn track_task(
        &self,
        session: u64,
        task: &str,
        client_id: &str,
        caller: Option<Caller>,
    ) -> bool {
        self.routes_of(session)
            .is_some_and(|r| r.track_task(task, client_id, caller.map(Arc::new)))
    }

    /// Drops the routes of an ended task.
    pub fn forget_task(&self, session: u64, task: &str) {
        if let Some(routes) = self.routes_of(session) {
            routes.forget_task(task);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unrelate_drops_only_the_task_mark() {
        let mut r = serde_json::json!({"content": [], "_meta": {
            "io.modelcontextprotocol/related-task": {"taskId": "t"}, "other": 1}});
        let map = r.as_object_mut().unwrap();
        super::unrelate(map);
        assert_eq!(map["_meta"], serde_json::json!({"other": 1}));
        let mut r = serde_json::json!({"content": [], "_meta": {
            "io.modelcontextprotocol/related-task": {"taskId": "t"}}});
        let map = r.as_object_mut().unwrap();
        super::unrelate(map);
        assert!(!map.contains_key("_meta"));
    }

    use super::*;
    use rmcp::model::CustomResult;
    use serde_json::json;

    #[test]
    fn only_a_2025_create_task_result_names_a_task() {
        let created =
            ServerResult::CustomResult(CustomResult(json!({ "task": { "taskId": "t" } })));
        assert_eq!(created_task_id(&created).as_deref(), Some("t"));
        let other = ServerResult::CustomResult(CustomResult(json!({ "tasks": [] })));
        assert!(created_task_id(&other).is_none());
    }

    #[test]
    fn related_task_meta_is_read_and_renamed() {
        let mut meta = json!({ RELATED_TASK: { "taskId": "up" }, "other": 1 })
            .as_object()
            .cloned()
            .unwrap();
        assert_eq!(related_task(&meta).as_deref(), Some("up"));
        rename_related(&mut meta, "client");
        assert_eq!(related_task(&meta).as_deref(), Some("client"));
        assert_eq!(meta["other"], 1);
        let mut fresh = serde_json::Map::new();
        relate(&mut fresh, "client");
        assert_eq!(related_task(&fresh).as_deref(), Some("client"));
    }
}
