//! The policy step of a call: asks the `policy` engine and enforces its
//! answer (refuse, ask the human, redact, withhold), screens tool
//! definitions (pins and poisoning), and writes one audit line per
//! decision. The engine decides; this module acts and records.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolResult, ElicitRequest, ElicitRequestParams, ElicitationAction, ElicitationSchema,
    ErrorCode, ErrorData, ServerRequest, Tool,
};
use rmcp::service::{Peer, RoleServer};
use serde_json::{json, Value};

use crate::auth::Identity;
use crate::config::{Config, PinAction, PoliciesConfig};
use crate::policy::pin::{definition_hash, Lockfile};
use crate::policy::{
    scan_definition, Action, Decision, Direction, GuardAction, Hit, PolicyError, PolicySet,
    PolicyStore, Subject, WatchGuard,
};
use crate::telemetry::audit::{now_rfc3339, AuditHit, AuditLog, AuditRecord, AuditSink, CallLink};
use crate::telemetry::Metrics;

/// JSON-RPC code of a call refused by policy or a guardrail
/// (implementation-defined server range). `data` names the rule or guard.
pub const POLICY_DENIED: ErrorCode = ErrorCode(-32003);

/// Why guardrails could not start.
#[derive(Debug, thiserror::Error)]
pub enum GuardrailsError {
    /// The policy directory or the lock file is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The audit log cannot be opened.
    #[error("audit log: {0}")]
    Audit(#[from] std::io::Error),
}

/// Who and where, for audit lines.
pub(super) struct CallInfo<'a> {
    pub(super) identity: &'a Identity,
    pub(super) session: u64,
    pub(super) method: &'static str,
    pub(super) trace_id: Option<String>,
    /// The logical call and round (`tools/call` only).
    pub(super) link: Option<CallLink>,
}

/// Policy enforcement shared by every session.
pub struct Guardrails {
    store: Arc<PolicyStore>,
    config: PoliciesConfig,
    lockfile: Option<Lockfile>,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    /// Logical call ids: a random base plus a counter.
    call_base: u64,
    next_call: std::sync::atomic::AtomicU64,
    /// Definitions already screened and audited: `upstream/tool@hash`.
    screened: Mutex<HashSet<String>>,
    _watch: Option<WatchGuard>,
}

impl Guardrails {
    /// Loads the policies (and the lock file when pinning is on), starts
    /// the hot-reload watcher and opens the audit log. `None` when the
    /// config has no `policies` section.
    pub fn start(
        config: &Config,
        metrics: Arc<Metrics>,
        stdout_is_mcp: bool,
    ) -> Result<Option<Arc<Guardrails>>, GuardrailsError> {
        let Some(policies) = &config.policies else {
            return Ok(None);
        };
        let store = PolicyStore::load(config.resolve_path(&policies.dir), policies.default)?;
        let watch = match store.watch(metrics.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "policy hot reload is off");
                None
            }
        };
        let lockfile = match &policies.pinning.lockfile {
            Some(path) => Some(Lockfile::load(&config.resolve_path(path))?),
            None => None,
        };
        let audit_path = policies.audit.file.as_ref().map(|f| config.resolve_path(f));
        let sink = match (&audit_path, stdout_is_mcp) {
            (Some(path), _) => AuditSink::File(path),
            (None, true) => AuditSink::Stderr,
            (None, false) => AuditSink::Stdout,
        };
        let audit = AuditLog::open(sink)?;
        Ok(Some(Arc::new(Guardrails {
            store,
            config: policies.clone(),
            lockfile,
            audit,
            metrics,
            screened: Mutex::new(HashSet::new()),
            _watch: watch,
            call_base: {
                let mut b = [0u8; 8];
                // Without OS randomness ids are still unique in this process.
                let _ = getrandom::fill(&mut b);
                u64::from_le_bytes(b)
            },
            next_call: std::sync::atomic::AtomicU64::new(0),
        })))
    }

    /// The policy in force; hold it for the whole call.
    pub(super) fn policy(&self) -> Arc<PolicySet> {
        self.store.current()
    }

    /// Decides a call and records the decision (metric and audit line,
    /// including audit-only rules that matched).
    pub(super) fn decide(
        &self,
        set: &PolicySet,
        call: &CallInfo<'_>,
        subject: &Subject<'_>,
        args: Option<&serde_json::Map<String, Value>>,
    ) -> Decision {
        let decision = set.decide(call.identity, subject, args);
        let rule = decision.rule.as_deref().unwrap_or("default");
        self.metrics
            .policy_decisions
            .with_label_values(&[decision.action.as_str(), rule])
            .inc();
        self.write(
            call,
            subject,
            "decision",
            rule,
            decision.action.as_str(),
            "enforce",
            Vec::new(),
        );
        for (rule, would) in &decision.audit_only {
            self.metrics
                .policy_decisions
                .with_label_values(&["audit", rule.as_str()])
                .inc();
            self.write(
                call,
                subject,
                "decision",
                rule,
                would.as_str(),
                "audit",
                Vec::new(),
            );
        }
        decision
    }

    /// A fresh id for a logical call: unique in this process, and across
    /// replicas with overwhelming odds (random base).
    pub(super) fn mint_call(&self) -> CallLink {
        let n = self
            .next_call
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        CallLink {
            call_id: format!("{:016x}", self.call_base.wrapping_add(n)),
            round: 1,
        }
    }

    /// Records a further round of a call decided in an earlier round: it is
    /// not decided again (the retry must repeat the same tool and
    /// arguments), so the record names no rule; join on `call_id`.
    pub(super) fn record_round(&self, call: &CallInfo<'_>, subject: &Subject<'_>) {
        self.write(
            call,
            subject,
            "round",
            "-",
            "continued",
            "enforce",
            Vec::new(),
        );
    }

    /// Records the outcome of an approval request.
    pub(super) fn record_approval(
        &self,
        call: &CallInfo<'_>,
        subject: &Subject<'_>,
        rule: &str,
        approved: bool,
    ) {
        let action = if approved { "approved" } else { "declined" };
        self.metrics
            .policy_decisions
            .with_label_values(&[action, rule])
            .inc();
        self.write(
            call,
            subject,
            "approval",
            rule,
            action,
            "enforce",
            Vec::new(),
        );
    }

    /// Runs the guards over `value` (arguments or a result), redacting in
    /// place; records hits. `Err` when a blocking guard fired.
    pub(super) fn guard(
        &self,
        set: &PolicySet,
        call: &CallInfo<'_>,
        subject: &Subject<'_>,
        direction: Direction,
        value: &mut Value,
    ) -> Result<(), ErrorData> {
        let outcome = set.guard(call.identity, subject, direction, value);
        if outcome.hits.is_empty() {
            return Ok(());
        }
        let dir = match direction {
            Direction::Arguments => "arguments",
            Direction::Results => "results",
        };
        for hit in &outcome.hits {
            self.metrics
                .guardrail_hits
                .with_label_values(&[hit.detector])
                .inc();
        }
        let strongest = outcome
            .hits
            .iter()
            .map(|h| h.action)
            .max_by_key(|a| match a {
                GuardAction::Flag => 0,
                GuardAction::Redact => 1,
                GuardAction::Block => 2,
            })
            .unwrap_or(GuardAction::Flag);
        let guard = outcome
            .blocked
            .as_ref()
            .map(|(g, _)| g.clone())
            .or_else(|| outcome.hits.first().map(|h| h.guard.clone()))
            .unwrap_or_default();
        let hits = outcome.hits.iter().map(|h| audit_hit(h, dir)).collect();
        self.write(
            call,
            subject,
            "guard",
            &guard,
            strongest.as_str(),
            "enforce",
            hits,
        );
        match outcome.blocked {
            Some((guard, message)) => Err(ErrorData::new(
                POLICY_DENIED,
                format!("{dir} blocked by guard `{guard}`: {message}"),
                Some(json!({ "guard": guard, "direction": dir, "detectors":
                    outcome.hits.iter().map(|h| h.detector).collect::<Vec<_>>() })),
            )),
            None => Ok(()),
        }
    }

    fn admit_definition(&self, upstream: &str, tool: &Tool) -> bool {
        let hash = definition_hash(tool);
        let key = format!("{upstream}/{}@{hash}", tool.name);
        let first = self
            .screened
            .lock()
            .map(|mut s| s.insert(key))
            .unwrap_or(true);
        let mut keep = true;
        let subject = Subject {
            kind: crate::policy::Kind::Tool,
            upstream,
            name: &tool.name,
            exposed: &tool.name,
            annotations: tool.annotations.as_ref(),
        };
        let system = Identity {
            subject: "portcullis".into(),
            groups: Vec::new(),
            claims: Default::default(),
        };
        let call = CallInfo {
            identity: &system,
            session: 0,
            method: "tools/list",
            trace_id: None,
            link: None,
        };
        if let Some(lock) = &self.lockfile {
            let (verdict, action) = match lock.get(upstream, &tool.name) {
                Some(pinned) if pinned == hash => (None, PinAction::Flag),
                Some(_) => (Some("pin.changed"), self.config.pinning.on_change),
                None => (Some("pin.unpinned"), self.config.pinning.on_new),
            };
            if let Some(detector) = verdict {
                keep &= action == PinAction::Flag;
                if first {
                    self.metrics
                        .guardrail_hits
                        .with_label_values(&[detector])
                        .inc();
                    tracing::warn!(upstream, tool = %tool.name, detector, blocked = !keep,
                        "tool definition does not match its pin");
                    let hit = AuditHit {
                        guard: "pinning".into(),
                        detector: detector.into(),
                        path: String::new(),
                        direction: "definition",
                        action: pin_action(action),
                    };
                    self.write(
                        &call,
                        &subject,
                        "pin",
                        "pinning",
                        pin_action(action),
                        "enforce",
                        vec![hit],
                    );
                }
            }
        }
        let findings = scan_definition(tool);
        if !findings.is_empty() {
            let action = self.config.scan;
            keep &= action == PinAction::Flag;
            if first {
                for f in &findings {
                    self.metrics
                        .guardrail_hits
                        .with_label_values(&[f.detector])
                        .inc();
                }
                tracing::warn!(upstream, tool = %tool.name, findings = findings.len(), blocked = action == PinAction::Block,
                    "tool definition contains injection text");
                let hits = findings
                    .iter()
                    .map(|f| AuditHit {
                        guard: "definition-scan".into(),
                        detector: f.detector.into(),
                        path: f.path.clone(),
                        direction: "definition",
                        action: pin_action(action),
                    })
                    .collect();
                self.write(
                    &call,
                    &subject,
                    "definition",
                    "definition-scan",
                    pin_action(action),
                    "enforce",
                    hits,
                );
            }
        }
        keep
    }

    /// How long an approval waits for the human.
    /// Records a request about an existing task (`tasks/get`,
    /// `tasks/update`, `tasks/cancel`): the call that created the task was
    /// decided and audited; who later drove it is audited too.
    pub(super) fn record_task(&self, call: &CallInfo<'_>, subject: &Subject<'_>) {
        self.write(
            call,
            subject,
            "task",
            "default",
            "allow",
            "enforce",
            Vec::new(),
        );
    }

    pub(super) fn approval_timeout(&self) -> Duration {
        self.config.approval_timeout
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        call: &CallInfo<'_>,
        subject: &Subject<'_>,
        event: &'static str,
        rule: &str,
        action: &str,
        mode: &'static str,
        hits: Vec<AuditHit>,
    ) {
        self.audit.write(&AuditRecord {
            time: now_rfc3339(),
            event,
            identity: call.identity.subject.clone(),
            groups: call.identity.groups.clone(),
            session: (call.session != 0).then_some(call.session),
            trace_id: call.trace_id.clone(),
            method: call.method,
            upstream: subject.upstream.to_owned(),
            target: subject.name.to_owned(),
            rule: rule.to_owned(),
            action: action.to_owned(),
            mode,
            hits,
            link: call.link.clone(),
        });
    }
}

impl crate::registry::ToolScreen for Guardrails {
    /// A definition that differs from its pin, has no pin, or carries
    /// injection text is audited once per definition and dropped when
    /// config says block.
    fn screen(&self, upstream: &str, tools: &[Tool]) -> Vec<Tool> {
        tools
            .iter()
            .filter(|tool| self.admit_definition(upstream, tool))
            .cloned()
            .collect()
    }
}

fn audit_hit(h: &Hit, direction: &'static str) -> AuditHit {
    AuditHit {
        guard: h.guard.clone(),
        detector: h.detector.to_owned(),
        path: h.path.clone(),
        direction,
        action: h.action.as_str(),
    }
}

fn pin_action(a: PinAction) -> &'static str {
    match a {
        PinAction::Block => "block",
        PinAction::Flag => "flag",
    }
}

/// The error a client sees for a denied call.
pub(super) fn denied(decision: &Decision, what: &str) -> ErrorData {
    let rule = decision.rule.as_deref().unwrap_or("default");
    let message = decision
        .message
        .clone()
        .unwrap_or_else(|| format!("{what} is not allowed by policy"));
    ErrorData::new(
        POLICY_DENIED,
        message,
        Some(json!({ "rule": rule, "action": Action::Deny.as_str() })),
    )
}

/// How to reach the human: the session's peer (server-to-client request),
/// or, for a 2026-07-28 client, a round of the call's MRTR flight.
pub(super) enum Asker<'a> {
    /// Send `elicitation/create` to the client.
    Peer(&'a Peer<RoleServer>),
    /// Hand the request to the flight's input bridge.
    Bridge(tokio::sync::mpsc::UnboundedSender<crate::upstream::BridgedRequest>),
}

/// Asks the human, through the calling client, to approve a call. Any
/// answer but an explicit yes (decline, cancel, timeout, no elicitation
/// capability, an error) is a no.
pub(super) async fn ask_approval(
    asker: Asker<'_>,
    can_elicit: bool,
    prompt: String,
    timeout: Duration,
) -> Result<bool, String> {
    if !can_elicit {
        return Err(
            "this call needs approval, and the client cannot ask (no elicitation capability)"
                .into(),
        );
    }
    let schema: ElicitationSchema = serde_json::from_value(json!({
        "type": "object",
        "properties": {
            "approve": { "type": "boolean", "title": "Approve", "description": "Allow this call" }
        },
        "required": ["approve"]
    }))
    .map_err(|e| e.to_string())?;
    let request = ElicitRequest::new(ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: prompt,
        requested_schema: schema,
    });
    let request = ServerRequest::ElicitRequest(request);
    let answer = tokio::time::timeout(timeout, async {
        match asker {
            Asker::Peer(peer) => peer.send_request(request).await.map_err(|e| e.to_string()),
            Asker::Bridge(bridge) => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                bridge
                    .send(crate::upstream::BridgedRequest { request, reply })
                    .map_err(|_| "the call ended".to_owned())?;
                match answer.await {
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(e)) => Err(e.message.to_string()),
                    Err(_) => Err("the client did not answer".to_owned()),
                }
            }
        }
    })
    .await;
    match answer {
        Ok(Ok(rmcp::model::ClientResult::ElicitResult(r))) => Ok(r.action
            == ElicitationAction::Accept
            && r.content
                .as_ref()
                .and_then(|c| c.get("approve"))
                .and_then(Value::as_bool)
                .unwrap_or(false)),
        Ok(Ok(_)) => Err("unexpected answer to the approval request".into()),
        Ok(Err(e)) => Err(format!("approval request failed: {e}")),
        Err(_) => Err(format!(
            "no answer to the approval request within {timeout:?}"
        )),
    }
}

/// A call result as JSON for the guards, and back.
pub(super) fn result_to_value(r: &CallToolResult) -> Option<Value> {
    serde_json::to_value(r).ok()
}

/// Parses a guarded result back; `None` if redaction broke its shape
/// (cannot happen for string-only replacement, but never trust it).
pub(super) fn value_to_result(v: Value) -> Option<CallToolResult> {
    serde_json::from_value(v).ok()
}
