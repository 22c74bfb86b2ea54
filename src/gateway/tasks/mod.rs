//! Tasks, as the gateway hands them to clients. An upstream's task id never
//! reaches a client bare: the client gets a sealed id that names the
//! upstream owning the task and that upstream's own id, bound to the
//! identity that created it. Routing a `tasks/*` request opens that id, so
//! a client can reach neither another upstream's task (it cannot forge the
//! upstream) nor another identity's (the id opens only for its subject).

pub(crate) mod legacy;

use rmcp::model::ErrorData;
use serde::{Deserialize, Serialize};

use super::seal::Sealer;

pub(super) mod extension;
pub(super) mod shim;
pub(super) mod watch;

/// Where a task lives: the upstream that owns it and the id it gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskRef {
    /// The owning upstream's name.
    #[serde(rename = "u")]
    pub(crate) upstream: String,
    /// The upstream's own task id.
    #[serde(rename = "t")]
    pub(crate) id: String,
    /// The tool whose call created the task, as the upstream knows it, when
    /// known: policy guards a task's inlined result as that tool's.
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub(crate) tool: Option<String>,
    /// The logical call that created the task, when policies audit calls:
    /// its later `tasks/*` requests are audited as part of it.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub(crate) link: Option<crate::telemetry::audit::CallLink>,
}

/// Issues and opens the task ids clients see.
pub(super) struct TaskIds {
    sealer: Sealer,
}

impl TaskIds {
    /// Task ids sealed with keys from `secrets` (`tokens.secrets`), or a
    /// fresh per-process key when there are none (ids then do not survive
    /// a restart, nor open on another replica).
    pub(super) fn new(secrets: &[String]) -> TaskIds {
        TaskIds {
            sealer: Sealer::configured(secrets, "task-id"),
        }
    }

    /// The id `subject` is given for `task`. A task lives as long as its
    /// upstream keeps it, so the id itself never expires.
    pub(super) fn issue(&self, subject: &str, task: &TaskRef) -> Result<String, ErrorData> {
        self.sealer
            .seal(task, subject, None)
            .map_err(|e| ErrorData::internal_error(format!("sealing a task id: {e}"), None))
    }

    /// The task `id` names, if `subject` was issued it. Every refusal reads
    /// the same, so a client cannot probe which ids exist or whose they are.
    pub(super) fn open(&self, subject: &str, id: &str) -> Result<TaskRef, ErrorData> {
        self.sealer.open(id, subject).map_err(|e| {
            tracing::debug!(error = %e, "task id refused");
            unknown_task()
        })
    }
}

/// The one refusal of a task id, whatever the reason.
pub(super) fn unknown_task() -> ErrorData {
    ErrorData::invalid_params("unknown task id", None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_id_opens_only_for_its_subject_and_unaltered() {
        let ids = TaskIds::new(&[]);
        let task = TaskRef {
            upstream: "everything".into(),
            id: "t-1".into(),
            tool: None,
            link: None,
        };
        let issued = ids.issue("alice", &task).unwrap();
        assert!(!issued.contains("t-1"), "the upstream id must not show");
        assert_eq!(ids.open("alice", &issued).unwrap(), task);
        assert!(ids.open("bob", &issued).is_err());
        let mut altered = issued.clone().into_bytes();
        let mid = altered.len() / 2;
        altered[mid] = if altered[mid] == b'A' { b'B' } else { b'A' };
        assert!(ids
            .open("alice", &String::from_utf8(altered).unwrap())
            .is_err());
        assert!(TaskIds::new(&[]).open("alice", &issued).is_err());
    }

    #[test]
    fn a_task_id_carries_its_tool_and_call() {
        let ids = TaskIds::new(&[]);
        let task = TaskRef {
            upstream: "fx".into(),
            id: "3e86259a-889d-4e88-93c4-ba0f55aa4d31".into(),
            tool: Some("slow_compute".into()),
            link: Some(crate::telemetry::audit::CallLink {
                call_id: "c-1".into(),
                round: 1,
            }),
        };
        let issued = ids.issue("alice", &task).unwrap();
        assert_eq!(ids.open("alice", &issued).unwrap(), task);
        // (That none of it can be read off the id is `seal`'s test.)
    }
}
