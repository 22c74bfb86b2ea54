//! Multi round-trip requests (MRTR, 2026-07-28) bridged to legacy
//! upstreams: when an upstream sends a server-to-client request
//! (elicitation, sampling, roots) during a call from a 2026-07-28 client,
//! which has no channel for such requests, the call is parked, the request
//! goes back to the client as an `InputRequiredResult`, and the client's
//! retry (carrying `inputResponses` and the `requestState` we issued)
//! delivers the answer to the upstream call that is still waiting for it.
//!
//! `requestState` is sealed by rmcp's `RequestStateCodec` (HMAC, expiry)
//! with the caller's subject as associated data: a client cannot alter it,
//! and a state issued to one identity is useless to another. It only names
//! a parked call; routing never trusts anything else the client sends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rmcp::model::{
    ClientResult, CreateMessageResult, ElicitResult, ErrorData, InputRequest, InputRequests,
    InputRequiredResult, InputResponses, ListRootsResult, ServerRequest, ServerResult,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::seal::Sealer;
use crate::telemetry::audit::CallLink;
use crate::upstream::BridgedRequest;

/// A parked call answers within this long or is cancelled.
const PARK_TTL: Duration = Duration::from_secs(600);

/// What a round ended with.
pub(super) enum Round {
    /// The upstream answered.
    Done(Box<ServerResult>),
    /// The client must answer these first.
    InputRequired(InputRequiredResult),
}

/// An upstream call waiting for a client's input.
struct Parked {
    subject: String,
    call: JoinHandle<Result<ServerResult, ErrorData>>,
    inputs: mpsc::UnboundedReceiver<BridgedRequest>,
    reply: oneshot::Sender<Result<ClientResult, ErrorData>>,
    key: String,
    kind: Kind,
    since: Instant,
    /// The logical call and the round that parked it.
    link: Option<CallLink>,
    /// Cancels the upstream call when the parked entry is dropped unanswered.
    _cancel: DropGuard,
}

/// The kind of input an upstream asked for, to read the client's answer.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Elicitation,
    Sampling,
    Roots,
}

impl Kind {
    /// An upstream's server-to-client request as a 2026-07-28 input
    /// request; `None` for one a 2026-07-28 client cannot answer.
    pub(super) fn of(request: ServerRequest) -> Option<(Kind, InputRequest)> {
        Some(match request {
            ServerRequest::ElicitRequest(r) => (Kind::Elicitation, InputRequest::Elicitation(r)),
            ServerRequest::CreateMessageRequest(r) => {
                (Kind::Sampling, InputRequest::CreateMessage(r))
            }
            ServerRequest::ListRootsRequest(r) => (Kind::Roots, InputRequest::ListRoots(r)),
            _ => return None,
        })
    }

    /// The client's answer (an `inputResponses` entry) as the result the
    /// upstream's request waits for.
    pub(super) fn answer(self, answer: serde_json::Value) -> serde_json::Result<ClientResult> {
        match self {
            Kind::Elicitation => {
                serde_json::from_value::<ElicitResult>(answer).map(ClientResult::ElicitResult)
            }
            Kind::Sampling => serde_json::from_value::<CreateMessageResult>(answer)
                .map(|r| ClientResult::CreateMessageResult(Box::new(r))),
            Kind::Roots => {
                serde_json::from_value::<ListRootsResult>(answer).map(ClientResult::ListRootsResult)
            }
        }
    }
}

/// What a sealed `requestState` names.
#[derive(Serialize, Deserialize)]
#[serde(tag = "k")]
enum State {
    /// A call parked here, waiting for input a legacy upstream asked for.
    #[serde(rename = "p")]
    Parked { call: u64 },
    /// An upstream's own multi-round call: its state, wrapped, and what the
    /// retry must repeat (the same tool with the same arguments).
    #[serde(rename = "u")]
    Upstream {
        upstream: String,
        tool: String,
        args: String,
        inner: Option<String>,
        /// The logical call and the round that issued this state.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<CallLink>,
    },
}

/// An opened `requestState`.
pub(super) enum Opened {
    /// Resume the parked call with this id.
    Parked(u64),
    /// Forward the retry to the upstream with its own state.
    Upstream {
        /// Upstream that issued it.
        upstream: String,
        /// Its name for the tool.
        tool: String,
        /// Hash of the arguments of the first round.
        args: String,
        /// The upstream's state, as it issued it.
        inner: Option<String>,
        /// The logical call and the round that issued this state.
        link: Option<CallLink>,
    },
}

/// Parked multi-round calls, shared by every session.
pub(super) struct Bridge {
    sealer: Sealer,
    parked: Mutex<HashMap<u64, Parked>>,
    next: AtomicU64,
}

/// A call in flight: the upstream future, the channel its server-to-client
/// requests arrive on, and its cancellation.
pub(super) struct Flight {
    pub(super) call: JoinHandle<Result<ServerResult, ErrorData>>,
    pub(super) inputs: mpsc::UnboundedReceiver<BridgedRequest>,
    pub(super) cancel: DropGuard,
}

impl Bridge {
    /// A bridge sealing with keys from `secrets` (`tokens.secrets`), or a
    /// fresh random key when there are none. A parked call lives in this
    /// process whatever the key: its state opens elsewhere but names no
    /// call there.
    pub(super) fn new(secrets: &[String]) -> Bridge {
        Bridge {
            sealer: Sealer::configured(secrets, "request-state"),
            parked: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// Runs a call until it finishes or needs input. If the downstream
    /// request ends first (the client closed the stream: cancellation in
    /// 2026-07-28), the flight is dropped and the upstream call cancelled.
    pub(super) async fn drive(
        &self,
        subject: &str,
        mut flight: Flight,
        downstream: &CancellationToken,
        link: Option<CallLink>,
    ) -> Result<Round, ErrorData> {
        tokio::select! {
            () = downstream.cancelled() => Err(ErrorData::new(
                crate::gateway::REQUEST_CANCELLED,
                "request cancelled",
                None,
            )),
            done = &mut flight.call => done
                .map_err(|e| ErrorData::internal_error(format!("upstream call failed: {e}"), None))?
                .map(|r| Round::Done(Box::new(r))),
            Some(asked) = flight.inputs.recv() => self.park(subject, flight, asked, link),
        }
    }

    fn park(
        &self,
        subject: &str,
        flight: Flight,
        asked: BridgedRequest,
        link: Option<CallLink>,
    ) -> Result<Round, ErrorData> {
        let (kind, request) = match Kind::of(asked.request) {
            Some(input) => input,
            None => {
                let _ = asked.reply.send(Err(ErrorData::method_not_found::<
                    rmcp::model::CallToolRequestMethod,
                >()));
                return Err(ErrorData::internal_error(
                    "the upstream sent a request a 2026-07-28 client cannot answer",
                    None,
                ));
            }
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let key = format!("portcullis-{id}");
        let state = self
            .sealer
            .seal(&State::Parked { call: id }, subject, Some(PARK_TTL))
            .map_err(|e| ErrorData::internal_error(format!("sealing requestState: {e}"), None))?;
        if let Ok(mut parked) = self.parked.lock() {
            parked.retain(|_, p| p.since.elapsed() < PARK_TTL);
            parked.insert(
                id,
                Parked {
                    subject: subject.to_owned(),
                    call: flight.call,
                    inputs: flight.inputs,
                    reply: asked.reply,
                    key: key.clone(),
                    kind,
                    since: Instant::now(),
                    link,
                    _cancel: flight.cancel,
                },
            );
        }
        let mut requests = InputRequests::new();
        requests.insert(key, request);
        let mut result = InputRequiredResult::from_request_state(state);
        result.input_requests = Some(requests);
        Ok(Round::InputRequired(result))
    }

    /// Opens a `requestState` the gateway issued to `subject`; refuses one
    /// that was altered, expired, or issued to another identity.
    pub(super) fn open(&self, subject: &str, state: &str) -> Result<Opened, ErrorData> {
        let opened: State = self
            .sealer
            .open(state, subject)
            .map_err(|e| ErrorData::invalid_params(format!("requestState refused: {e}"), None))?;
        Ok(match opened {
            State::Parked { call } => Opened::Parked(call),
            State::Upstream {
                upstream,
                tool,
                args,
                inner,
                link,
            } => Opened::Upstream {
                upstream,
                tool,
                args,
                inner,
                link,
            },
        })
    }

    /// Wraps an upstream's `requestState` (or its absence) so the retry is
    /// routed back to the same upstream and tool, by the same identity,
    /// with the same arguments, whatever the client claims.
    pub(super) fn wrap(
        &self,
        subject: &str,
        upstream: &str,
        tool: &str,
        args: String,
        inner: Option<String>,
        link: Option<CallLink>,
    ) -> Result<String, ErrorData> {
        self.sealer
            .seal(
                &State::Upstream {
                    upstream: upstream.to_owned(),
                    tool: tool.to_owned(),
                    args,
                    inner,
                    link,
                },
                subject,
                Some(PARK_TTL),
            )
            .map_err(|e| ErrorData::internal_error(format!("sealing requestState: {e}"), None))
    }

    /// The link of the round that resuming parked call `call` starts.
    pub(super) fn next_link(&self, call: u64) -> Option<CallLink> {
        let parked = self.parked.lock().ok()?;
        parked.get(&call)?.link.as_ref().map(CallLink::next)
    }

    /// Delivers a retried request's answer to the parked call `call` and
    /// drives it on; refuses one already answered or expired.
    pub(super) async fn resume(
        &self,
        subject: &str,
        call: u64,
        responses: Option<&InputResponses>,
        downstream: &CancellationToken,
    ) -> Result<Round, ErrorData> {
        let parked = self
            .parked
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&call))
            .ok_or_else(|| {
                ErrorData::invalid_params(
                    "requestState names no waiting call (expired or already answered)",
                    None,
                )
            })?;
        if parked.subject != subject {
            return Err(ErrorData::invalid_params("requestState refused", None));
        }
        let answer = responses
            .and_then(|r| r.get(&parked.key))
            .ok_or_else(|| {
                ErrorData::invalid_params(
                    format!("inputResponses must answer `{}`", parked.key),
                    None,
                )
            })?
            .clone();
        let result = parked.kind.answer(answer).map_err(|e| {
            ErrorData::invalid_params(format!("inputResponses.{}: {e}", parked.key), None)
        })?;
        let _ = parked.reply.send(Ok(result));
        self.drive(
            subject,
            Flight {
                call: parked.call,
                inputs: parked.inputs,
                cancel: parked._cancel,
            },
            downstream,
            parked.link.as_ref().map(CallLink::next),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_upstream_state_opens_only_for_its_identity_and_unaltered() {
        let bridge = Bridge::new(&[]);
        let sealed = bridge
            .wrap(
                "alice",
                "fx",
                "deploy",
                "h1".into(),
                Some("upstream-state".into()),
                Some(CallLink {
                    call_id: "c1".into(),
                    round: 1,
                }),
            )
            .unwrap();
        match bridge.open("alice", &sealed).unwrap() {
            Opened::Upstream {
                upstream,
                tool,
                args,
                inner,
                link,
            } => {
                assert_eq!(
                    (upstream.as_str(), tool.as_str(), args.as_str()),
                    ("fx", "deploy", "h1")
                );
                assert_eq!(inner.as_deref(), Some("upstream-state"));
                assert_eq!(link.map(|l| (l.call_id, l.round)), Some(("c1".into(), 1)));
            }
            Opened::Parked(_) => panic!("wrong kind"),
        }
        assert!(bridge.open("bob", &sealed).is_err());
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert!(bridge
            .open("alice", &String::from_utf8(altered).unwrap())
            .is_err());
        // Another gateway process (another key) cannot open it either.
        assert!(Bridge::new(&[]).open("alice", &sealed).is_err());
    }
}
