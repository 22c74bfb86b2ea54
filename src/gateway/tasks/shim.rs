//! A 2026-07-28 client's task on an upstream of the 2025-11-25 design.
//!
//! Such an upstream makes a task only when asked (`params.task`), and a
//! tool whose `execution.taskSupport` is `required` cannot be called any
//! other way. So when a client that declared the tasks extension calls such
//! a tool, the gateway asks for a 2025 task, and the client gets a 2026
//! `CreateTaskResult` under a sealed id like any other task. It drives the
//! task with the 2026 methods, each answered from the 2025 ones:
//! `tasks/get` from the upstream's `tasks/get` (status, timestamps) plus
//! what this module holds; `tasks/cancel` is the upstream's `tasks/cancel`;
//! `tasks/update` answers the task's input requests.
//!
//! What the 2025 design keeps on a stream needs state here: the upstream
//! delivers a task's server-to-client requests, and its result, to a
//! client blocked in `tasks/result`. The gateway holds that request open
//! for each shimmed task (a [`Shim`]); the requests arriving on it wait as
//! the task's `inputRequests` until a `tasks/update` answers them, and its
//! answer is the result (or error) `tasks/get` inlines once the task ends.
//! Like the gateway's other task state, it lives in this process.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    ClientResult, ErrorData, InputRequest, InputRequests, InputResponses, JsonObject, ServerResult,
};
use serde_json::Value;
use tokio::sync::futures::Notified;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::TaskRef;
use crate::gateway::mrtr::Kind;
use crate::upstream::BridgedRequest;

/// How long a shimmed task is held after the last request about it.
const IDLE: Duration = Duration::from_secs(3600);

/// Shimmed tasks a gateway holds at once.
const CAPACITY: u64 = 100_000;

/// How the task ended, as `tasks/get` inlines it: a result, or the
/// JSON-RPC error object.
pub(in crate::gateway) type Outcome = Result<JsonObject, JsonObject>;

/// The shimmed tasks, by upstream and the upstream's task id.
pub(in crate::gateway) struct Shims {
    tasks: moka::sync::Cache<String, Arc<Shim>>,
}

/// One shimmed task: the input requests waiting for the client, and how
/// the task ended once it has.
pub(in crate::gateway) struct Shim {
    pending: Mutex<Pending>,
    outcome: watch::Sender<Option<Outcome>>,
    /// Woken whenever what `tasks/get` shows changes (a question asked or
    /// answered, the task ended), so that listeners need not wait for their
    /// next poll to hear it.
    changed: Notify,
    /// Ends the held `tasks/result` when the task is forgotten.
    _stop: DropGuard,
}

#[derive(Default)]
struct Pending {
    /// Keys are unique over the task's life (the spec requires it).
    next: u64,
    asked: BTreeMap<String, Asked>,
}

struct Asked {
    kind: Kind,
    request: InputRequest,
    reply: oneshot::Sender<Result<ClientResult, ErrorData>>,
}

fn key(task: &TaskRef) -> String {
    format!("{}\u{0}{}", task.upstream, task.id)
}

impl Shims {
    /// An empty table.
    pub(in crate::gateway) fn new() -> Shims {
        Shims {
            tasks: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(IDLE)
                .build(),
        }
    }

    /// The shim of `task`, if the gateway holds one.
    pub(in crate::gateway) fn get(&self, task: &TaskRef) -> Option<Arc<Shim>> {
        self.tasks.get(&key(task))
    }

    /// Starts holding the task's `tasks/result` (`result`, cancelled by the
    /// token it is given when the task is forgotten); the upstream's input
    /// requests for the task arrive on `inputs`.
    pub(in crate::gateway) fn start<F>(
        &self,
        task: &TaskRef,
        result: impl FnOnce(CancellationToken) -> F,
        mut inputs: mpsc::UnboundedReceiver<BridgedRequest>,
    ) where
        F: Future<Output = Result<ServerResult, ErrorData>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let call = result(stop.clone());
        let shim = Arc::new(Shim {
            pending: Mutex::new(Pending::default()),
            outcome: watch::channel(None).0,
            changed: Notify::new(),
            _stop: stop.drop_guard(),
        });
        self.tasks.insert(key(task), shim.clone());
        // Only a weak hold: forgetting the task drops the shim and so stops this.
        let held = Arc::downgrade(&shim);
        drop(shim);
        tokio::spawn(async move {
            tokio::pin!(call);
            // Forgetting the task cancels `call`'s token: the call itself
            // ends (telling the upstream), so it is awaited to the end.
            let outcome = loop {
                tokio::select! {
                    done = &mut call => break outcome_of(done),
                    Some(asked) = inputs.recv() => match held.upgrade() {
                        Some(shim) => shim.ask(asked),
                        None => {
                            let _ = asked.reply.send(Err(ErrorData::internal_error(
                                "the task is no longer held",
                                None,
                            )));
                        }
                    },
                }
            };
            if let Some(shim) = held.upgrade() {
                shim.outcome.send_replace(Some(outcome));
                shim.changed.notify_waiters();
            }
        });
    }
}

/// The held `tasks/result`'s answer as `tasks/get` inlines it.
fn outcome_of(done: Result<ServerResult, ErrorData>) -> Outcome {
    match done {
        Ok(result) => match serde_json::to_value(result) {
            Ok(Value::Object(mut result)) => {
                // 2025 results carry no `resultType`; the task's is `complete`.
                result.remove("resultType");
                Ok(result)
            }
            _ => Err(error_object(&ErrorData::internal_error(
                "the upstream's task result is not an object",
                None,
            ))),
        },
        Err(e) => Err(error_object(&e)),
    }
}

fn error_object(e: &ErrorData) -> JsonObject {
    match serde_json::to_value(e) {
        Ok(Value::Object(map)) => map,
        _ => JsonObject::new(),
    }
}

impl Shim {
    fn ask(&self, asked: BridgedRequest) {
        let (kind, request) = match Kind::of(asked.request) {
            Some(input) => input,
            None => {
                let _ = asked.reply.send(Err(ErrorData::internal_error(
                    "the upstream sent a request a 2026-07-28 client cannot answer",
                    None,
                )));
                return;
            }
        };
        if let Ok(mut p) = self.pending.lock() {
            p.next += 1;
            let key = format!("portcullis-{}", p.next);
            p.asked.insert(
                key,
                Asked {
                    kind,
                    request,
                    reply: asked.reply,
                },
            );
        }
        self.changed.notify_waiters();
    }

    /// Resolves at the task's next change; register it (`enable`) before
    /// reading the state it is to follow, or a change in between is missed.
    pub(in crate::gateway) fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    /// The input requests waiting for the client.
    pub(in crate::gateway) fn input_requests(&self) -> InputRequests {
        let mut requests = InputRequests::new();
        if let Ok(p) = self.pending.lock() {
            for (key, asked) in &p.asked {
                requests.insert(key.clone(), asked.request.clone());
            }
        }
        requests
    }

    /// Delivers the client's answers to the requests they name; answers to
    /// requests already answered (or never asked) are ignored, as the spec
    /// lets a server do. A malformed answer is refused and its request
    /// stays waiting.
    pub(in crate::gateway) fn answer(&self, responses: InputResponses) -> Result<(), ErrorData> {
        let mut answered = false;
        let delivered = self.deliver(responses, &mut answered);
        if answered {
            self.changed.notify_waiters();
        }
        delivered
    }

    /// [`Shim::answer`], setting `answered` once a request was answered.
    fn deliver(&self, responses: InputResponses, answered: &mut bool) -> Result<(), ErrorData> {
        let Ok(mut p) = self.pending.lock() else {
            return Err(ErrorData::internal_error("task state unavailable", None));
        };
        for (key, value) in responses {
            let Some(asked) = p.asked.remove(&key) else {
                continue;
            };
            match asked.kind.answer(value) {
                Ok(result) => {
                    let _ = asked.reply.send(Ok(result));
                    *answered = true;
                }
                Err(e) => {
                    let message = format!("inputResponses.{key}: {e}");
                    p.asked.insert(key, asked);
                    return Err(ErrorData::invalid_params(message, None));
                }
            }
        }
        Ok(())
    }

    /// How the task ended, waiting up to `wait` for the held `tasks/result`
    /// to answer (the upstream already said the task ended).
    pub(in crate::gateway) async fn outcome(&self, wait: Duration) -> Option<Outcome> {
        let mut seen = self.outcome.subscribe();
        let ended = tokio::time::timeout(wait, seen.wait_for(Option::is_some)).await;
        match ended {
            Ok(Ok(outcome)) => outcome.clone(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{
        CallToolResult, ContentBlock, ElicitRequest, ElicitRequestParams, ServerRequest,
    };

    fn task() -> TaskRef {
        TaskRef {
            upstream: "up".into(),
            id: "t-1".into(),
            tool: Some("ask".into()),
            link: None,
        }
    }

    fn elicitation() -> ServerRequest {
        let params: ElicitRequestParams = serde_json::from_value(serde_json::json!({
            "message": "Which color?",
            "requestedSchema": {"type": "object", "properties": {"color": {"type": "string"}}}
        }))
        .unwrap();
        ServerRequest::ElicitRequest(ElicitRequest::new(params))
    }

    /// A held task whose upstream call ends when `finish` is sent, with
    /// where the upstream's questions arrive (keep `Shims`: it holds it).
    #[allow(clippy::type_complexity)]
    fn held() -> (
        Shims,
        Arc<Shim>,
        mpsc::UnboundedSender<BridgedRequest>,
        oneshot::Sender<Result<ServerResult, ErrorData>>,
    ) {
        let shims = Shims::new();
        let (inputs, rx) = mpsc::unbounded_channel();
        let (finish, finished) = oneshot::channel::<Result<ServerResult, ErrorData>>();
        shims.start(&task(), |_| async move { finished.await.unwrap() }, rx);
        let shim = shims.get(&task()).unwrap();
        (shims, shim, inputs, finish)
    }

    #[tokio::test]
    async fn input_waits_for_the_client_and_the_result_is_kept() {
        let (_shims, shim, inputs, finish) = held();
        let (reply, answer) = oneshot::channel();
        inputs
            .send(BridgedRequest {
                request: elicitation(),
                reply,
            })
            .unwrap();
        let mut asked = shim.input_requests();
        for _ in 0..1000 {
            if !asked.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
            asked = shim.input_requests();
        }
        let key = asked.keys().next().unwrap().clone();
        // A malformed answer is refused and the request keeps waiting.
        let mut bad = InputResponses::new();
        bad.insert(key.clone(), serde_json::json!({"action": 7}));
        assert!(shim.answer(bad).is_err());
        assert_eq!(shim.input_requests().len(), 1);
        let mut good = InputResponses::new();
        good.insert(
            key.clone(),
            serde_json::json!({"action": "accept", "content": {"color": "blue"}}),
        );
        shim.answer(good.clone()).unwrap();
        assert!(matches!(
            answer.await.unwrap(),
            Ok(ClientResult::ElicitResult(_))
        ));
        assert!(shim.input_requests().is_empty());
        // A repeated answer is ignored.
        shim.answer(good).unwrap();
        assert!(shim.outcome(Duration::from_millis(10)).await.is_none());
        let result = CallToolResult::success(vec![ContentBlock::text("color blue")]);
        finish
            .send(Ok(ServerResult::CallToolResult(result)))
            .unwrap();
        let outcome = shim
            .outcome(Duration::from_secs(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome["content"][0]["text"], "color blue");
        assert!(!outcome.contains_key("resultType"));
    }

    /// Waits for `changed` (enabled before the change), failing the test
    /// rather than hanging when it never comes.
    async fn woken(changed: std::pin::Pin<&mut Notified<'_>>) {
        tokio::time::timeout(Duration::from_secs(10), changed)
            .await
            .expect("the shim's change woke no one");
    }

    #[tokio::test]
    async fn every_change_wakes_whoever_follows_the_task() {
        let (_shims, shim, inputs, finish) = held();

        // A question arrives.
        let mut changed = std::pin::pin!(shim.changed());
        changed.as_mut().enable();
        let (reply, _answer) = oneshot::channel();
        inputs
            .send(BridgedRequest {
                request: elicitation(),
                reply,
            })
            .unwrap();
        woken(changed).await;
        let key = shim.input_requests().keys().next().unwrap().clone();

        // A malformed answer changes nothing; the good one does.
        let mut changed = std::pin::pin!(shim.changed());
        changed.as_mut().enable();
        let mut bad = InputResponses::new();
        bad.insert(key.clone(), serde_json::json!({"action": 7}));
        assert!(shim.answer(bad).is_err());
        assert!(futures::poll!(changed.as_mut()).is_pending());
        let mut good = InputResponses::new();
        good.insert(key, serde_json::json!({"action": "decline"}));
        shim.answer(good).unwrap();
        woken(changed).await;

        // The task ends.
        let mut changed = std::pin::pin!(shim.changed());
        changed.as_mut().enable();
        let result = CallToolResult::success(vec![ContentBlock::text("done")]);
        finish
            .send(Ok(ServerResult::CallToolResult(result)))
            .unwrap();
        woken(changed).await;
        assert!(shim.outcome(Duration::ZERO).await.is_some());
    }

    #[tokio::test]
    async fn an_upstream_error_is_the_tasks_error_and_forgetting_stops_the_call() {
        let shims = Shims::new();
        let (_inputs, rx) = mpsc::unbounded_channel();
        shims.start(
            &task(),
            |_| async { Err(ErrorData::invalid_params("no such task", None)) },
            rx,
        );
        let shim = shims.get(&task()).unwrap();
        let outcome = shim.outcome(Duration::from_secs(10)).await.unwrap();
        assert_eq!(outcome.unwrap_err()["code"], -32602);

        let (_inputs, rx) = mpsc::unbounded_channel();
        let (stopped, was_stopped) = oneshot::channel();
        let other = TaskRef {
            id: "t-2".into(),
            ..task()
        };
        shims.start(
            &other,
            move |stop: CancellationToken| async move {
                stop.cancelled().await;
                let _ = stopped.send(());
                Err(ErrorData::internal_error("stopped", None))
            },
            rx,
        );
        shims.tasks.invalidate(&key(&other));
        shims.tasks.run_pending_tasks();
        tokio::time::timeout(Duration::from_secs(10), was_stopped)
            .await
            .unwrap()
            .unwrap();
    }
}
