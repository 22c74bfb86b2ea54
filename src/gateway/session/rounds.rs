//! One round of a 2026-07-28 client's request that may take several: the
//! request runs as a flight the bridge can park (`mrtr.rs`), with the
//! policy's approval question as its first round when a rule asks one, and
//! an upstream's own `InputRequiredResult` leaves with its `requestState`
//! wrapped. `tools/call`, `prompts/get` and `resources/read` share it.

use std::sync::Arc;

use rmcp::model::{ClientRequest, ErrorData, InputResponses, ServerResult};
use rmcp::service::{RequestContext, RoleServer};

use serde_json::Value;

use super::super::guardrails::{Asker, CallInfo, Guardrails};
use super::super::mrtr::{Flight, Opened, Round};
use super::{call_subject, Approval, OwnedSubject, Session};
use crate::auth::Identity;
use crate::policy::{Direction, PolicySet, Subject};
use crate::ratelimit::Admission;
use crate::registry::Target;
use crate::telemetry::audit::CallLink;
use crate::upstream::AnswerCheck;

/// What a 2026-07-28 retry's `requestState` resumes.
pub(super) enum Resume {
    /// Nothing: a first round.
    Fresh,
    /// A flight parked here on input.
    Parked(u64),
    /// An upstream's own round; its state, to send back to it.
    Upstream(Option<String>),
}

impl Resume {
    /// True for a retry: the request was decided and admitted in its first
    /// round.
    pub(super) fn resuming(&self) -> bool {
        !matches!(self, Resume::Fresh)
    }

    /// The flight parked here that this retry resumes.
    pub(super) fn parked(&self) -> Option<u64> {
        match self {
            Resume::Parked(id) => Some(*id),
            _ => None,
        }
    }

    /// Puts a retry's parts where they go: an upstream's own state back
    /// into `request_state`, to go upstream with the client's answers; for
    /// a flight parked here, the answers are taken out of
    /// `input_responses` and returned, to be delivered to it.
    pub(super) fn route(
        &mut self,
        request_state: &mut Option<String>,
        input_responses: &mut Option<InputResponses>,
    ) -> Option<InputResponses> {
        match self {
            Resume::Parked(_) => input_responses.take(),
            Resume::Upstream(inner) => {
                *request_state = inner.take();
                None
            }
            Resume::Fresh => None,
        }
    }
}

/// The approval question a flight asks first.
pub(super) struct Ask {
    pub(super) approval: Approval,
    pub(super) guardrails: Arc<Guardrails>,
    pub(super) identity: Arc<Identity>,
    pub(super) session: u64,
    pub(super) subject: OwnedSubject,
    pub(super) method: &'static str,
    /// The round the answer arrives with.
    pub(super) link: Option<CallLink>,
}

/// The audit of a legacy client's multi-round request, owned so that it
/// can outlive the handler's borrows (a gateway-local task's run): each
/// further round is written as a `round` record of the same call.
pub(super) struct RoundLog {
    pub(super) guardrails: Arc<Guardrails>,
    pub(super) identity: Arc<Identity>,
    pub(super) session: u64,
    pub(super) method: &'static str,
    pub(super) trace_id: Option<String>,
    pub(super) subject: OwnedSubject,
    /// The call and the round last recorded.
    pub(super) link: Option<CallLink>,
}

impl RoundLog {
    /// The audit of `call` on `subject`, owned.
    pub(super) fn new(
        guardrails: &Arc<Guardrails>,
        identity: &Arc<Identity>,
        call: &CallInfo<'_>,
        subject: &Subject<'_>,
    ) -> Self {
        RoundLog {
            guardrails: guardrails.clone(),
            identity: identity.clone(),
            session: call.session,
            method: call.method,
            trace_id: call.trace_id.clone(),
            subject: call_subject(subject),
            link: call.link.clone(),
        }
    }

    /// The call as its audit records name it, at the current round.
    pub(super) fn call(&self) -> CallInfo<'_> {
        CallInfo {
            identity: &self.identity,
            session: self.session,
            method: self.method,
            trace_id: self.trace_id.clone(),
            link: self.link.clone(),
        }
    }

    /// Records that the call went on to its next round.
    pub(super) fn next(&mut self) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        *link = link.next();
        self.guardrails
            .record_round(&self.call(), &self.subject.subject());
    }
}

/// The argument guards over what the user answers an upstream's
/// elicitation during one call (see [`AnswerCheck`]), audited as the
/// call's own guard records.
pub(in crate::gateway) struct AnswerGuard {
    log: RoundLog,
    set: Arc<PolicySet>,
}

impl AnswerGuard {
    /// The screen for the call `log` records; `None` when no guard scans
    /// arguments, so that callers skip the work.
    pub(super) fn new(log: RoundLog, set: Arc<PolicySet>) -> Option<Arc<Self>> {
        set.guards_on(Direction::Arguments)
            .then(|| Arc::new(AnswerGuard { log, set }))
    }

    /// Screens the answers a 2026-07-28 client sends upstream in
    /// `inputResponses`: an elicitation's answer is the one with an
    /// `action`, and its `content` is what the user typed.
    pub(in crate::gateway) fn screen_all(
        &self,
        responses: Option<&mut InputResponses>,
    ) -> Result<(), ErrorData> {
        let answers = responses.into_iter().flat_map(|r| r.values_mut());
        for answer in answers.filter_map(Value::as_object_mut) {
            if !answer.contains_key("action") {
                continue;
            }
            if let Some(content) = answer.get_mut("content") {
                self.check(content)?;
            }
        }
        Ok(())
    }
}

impl AnswerCheck for AnswerGuard {
    fn check(&self, content: &mut Value) -> Result<(), ErrorData> {
        let log = &self.log;
        log.guardrails.guard(
            &self.set,
            &log.call(),
            &log.subject.subject(),
            Direction::Arguments,
            content,
        )
    }
}

impl std::fmt::Debug for AnswerGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerGuard")
            .field("subject", &self.log.subject.exposed)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Opens the `requestState` a 2026-07-28 retry carries: a flight parked
    /// here, or an upstream's own round, which must repeat the first
    /// round's target and arguments (`args_hash`). Sets `link` to the
    /// round this one is.
    pub(super) fn open_state(
        &self,
        subject: &str,
        state: Option<String>,
        target: &Target,
        args_hash: &str,
        link: &mut Option<CallLink>,
    ) -> Result<Resume, ErrorData> {
        let Some(state) = state else {
            return Ok(Resume::Fresh);
        };
        let resume = match self.gw.bridge.open(subject, &state)? {
            Opened::Parked(id) => {
                *link = self.gw.bridge.next_link(id);
                Resume::Parked(id)
            }
            Opened::Upstream {
                upstream,
                tool,
                args,
                inner,
                link: issued,
            } => {
                if *upstream != *target.upstream || tool != target.original || args != args_hash {
                    return Err(ErrorData::invalid_params(
                        "requestState was issued for another target or other arguments",
                        None,
                    ));
                }
                *link = issued.as_ref().map(CallLink::next);
                Resume::Upstream(inner)
            }
        };
        let bridge = match resume {
            Resume::Parked(_) => "parked",
            _ => "upstream",
        };
        self.gw
            .metrics
            .input_rounds
            .with_label_values(&[bridge])
            .inc();
        Ok(resume)
    }

    /// Runs one round: resumes the parked flight `parked` with the client's
    /// answers, or starts `request` as a flight (asking `ask` first, and
    /// holding `admission` until the upstream call ends). An upstream's own
    /// `InputRequiredResult` comes back with its state wrapped for
    /// `subject`, bound to `target` and `args_hash`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn modern_round(
        &self,
        ctx: &RequestContext<RoleServer>,
        target: &Target,
        request: ClientRequest,
        parked: Option<(u64, Option<&InputResponses>)>,
        ask: Option<Ask>,
        admission: Option<Admission>,
        subject: &str,
        link: Option<CallLink>,
        args_hash: String,
        answers: Option<Arc<AnswerGuard>>,
    ) -> Result<Round, ErrorData> {
        let round = match parked {
            Some((id, answers)) => self.gw.bridge.resume(subject, id, answers, &ctx.ct).await?,
            None => {
                let (tx, inputs) = tokio::sync::mpsc::unbounded_channel();
                let mut caller = self.caller_screened(ctx, &answers);
                caller.input_bridge = Some(tx.clone());
                let cancel = tokio_util::sync::CancellationToken::new();
                let call = self.send(target, request, caller, cancel.clone())?;
                let flight = Flight {
                    // The parked call keeps its slots across rounds; the
                    // upstream call starts only after a yes.
                    call: tokio::spawn(async move {
                        let _admission = admission;
                        if let Some(ask) = ask {
                            let info = CallInfo {
                                identity: &ask.identity,
                                session: ask.session,
                                method: ask.method,
                                trace_id: None,
                                link: ask.link,
                            };
                            ask.approval
                                .ask(
                                    &ask.guardrails,
                                    Asker::Bridge(tx),
                                    &info,
                                    &ask.subject.subject(),
                                )
                                .await?;
                        }
                        call.await
                    }),
                    inputs,
                    cancel: cancel.drop_guard(),
                };
                self.gw
                    .bridge
                    .drive(subject, flight, &ctx.ct, link.clone())
                    .await?
            }
        };
        match round {
            Round::Done(result) => match *result {
                ServerResult::InputRequiredResult(mut r) => {
                    r.request_state = Some(self.gw.bridge.wrap(
                        subject,
                        &target.upstream,
                        &target.original,
                        args_hash,
                        r.request_state.take(),
                        link,
                    )?);
                    Ok(Round::InputRequired(r))
                }
                other => Ok(Round::Done(Box::new(other))),
            },
            waiting => Ok(waiting),
        }
    }
}
