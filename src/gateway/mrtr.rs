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
use rmcp::model::{RequestStateCodec, SealOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

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
    /// Cancels the upstream call when the parked entry is dropped unanswered.
    _cancel: DropGuard,
}

#[derive(Clone, Copy)]
enum Kind {
    Elicitation,
    Sampling,
    Roots,
}

#[derive(Serialize, Deserialize)]
struct State {
    call: u64,
}

/// Parked multi-round calls, shared by every session.
pub(super) struct Bridge {
    codec: RequestStateCodec,
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
    /// A bridge with a fresh random sealing key (states do not survive a
    /// restart, and neither do the parked calls they name).
    pub(super) fn new() -> Bridge {
        let mut key = [0u8; 32];
        if getrandom::fill(&mut key).is_err() {
            // No OS randomness: refuse every state rather than use a
            // guessable key.
            tracing::error!("no OS randomness; multi-round calls will be refused");
        }
        Bridge {
            codec: RequestStateCodec::new_unchecked(key.to_vec()),
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
            Some(asked) = flight.inputs.recv() => self.park(subject, flight, asked),
        }
    }

    fn park(
        &self,
        subject: &str,
        flight: Flight,
        asked: BridgedRequest,
    ) -> Result<Round, ErrorData> {
        let (kind, request) = match asked.request {
            ServerRequest::ElicitRequest(r) => (Kind::Elicitation, InputRequest::Elicitation(r)),
            ServerRequest::CreateMessageRequest(r) => {
                (Kind::Sampling, InputRequest::CreateMessage(r))
            }
            ServerRequest::ListRootsRequest(r) => (Kind::Roots, InputRequest::ListRoots(r)),
            _ => {
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
            .codec
            .seal_json_with(
                &State { call: id },
                &SealOptions::new()
                    .associated_data(subject.as_bytes())
                    .ttl(PARK_TTL),
            )
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

    /// Delivers a retried request's answer to the parked call and drives it
    /// on. Refuses a state that was altered, expired, issued to another
    /// identity, or already answered.
    pub(super) async fn resume(
        &self,
        subject: &str,
        state: &str,
        responses: Option<&InputResponses>,
        downstream: &CancellationToken,
    ) -> Result<Round, ErrorData> {
        let opened: State = self
            .codec
            .open_json_with(state, subject.as_bytes())
            .map_err(|e| ErrorData::invalid_params(format!("requestState refused: {e}"), None))?;
        let parked = self
            .parked
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&opened.call))
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
        let result = match parked.kind {
            Kind::Elicitation => {
                serde_json::from_value::<ElicitResult>(answer).map(ClientResult::ElicitResult)
            }
            Kind::Sampling => serde_json::from_value::<CreateMessageResult>(answer)
                .map(|r| ClientResult::CreateMessageResult(Box::new(r))),
            Kind::Roots => {
                serde_json::from_value::<ListRootsResult>(answer).map(ClientResult::ListRootsResult)
            }
        }
        .map_err(|e| {
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
        )
        .await
    }
}
