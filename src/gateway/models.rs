//! Model requests (`/v1/*`, and MCP sampling served by the router) pass the
//! same policy and limits as tool calls: this is the `llm::Admission` the
//! router asks before any provider I/O and tells afterwards what a request
//! used. Policy sees an alias as a subject of kind `model`; token budgets
//! are `ratelimit.tokens`.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::guardrails::{CallInfo, Guardrails};
use crate::auth::Identity;
use crate::llm::{Admission, Refusal, Usage};
use crate::policy::{Action, Kind, Subject};
use crate::ratelimit::Limits;

/// Policy and token budgets for model traffic.
pub struct ModelAdmission {
    pub(super) guardrails: Option<Arc<Guardrails>>,
    pub(super) limits: Arc<Limits>,
}

impl Admission for ModelAdmission {
    fn admit(
        &self,
        identity: Arc<Identity>,
        alias: String,
    ) -> BoxFuture<'static, Result<(), Refusal>> {
        let guardrails = self.guardrails.clone();
        let limits = self.limits.clone();
        Box::pin(async move {
            if let Some(g) = guardrails {
                let set = g.policy();
                let subject = Subject {
                    kind: Kind::Model,
                    upstream: "models",
                    name: &alias,
                    exposed: &alias,
                    annotations: None,
                };
                let call = CallInfo {
                    identity: &identity,
                    session: 0,
                    method: "model",
                    trace_id: None,
                    link: None,
                };
                let decision = g.decide(&set, &call, &subject, None);
                let refuse = |message: String| Refusal {
                    status: 403,
                    message,
                    retry_after: None,
                };
                match decision.action {
                    Action::Allow => {}
                    Action::Deny => {
                        return Err(refuse(decision.message.unwrap_or_else(|| {
                            format!("model `{alias}` is not allowed by policy")
                        })))
                    }
                    Action::Approve => {
                        return Err(refuse(format!(
                            "model `{alias}` needs approval, which model requests cannot ask for"
                        )))
                    }
                }
            }
            limits
                .admit_tokens(&identity, &alias)
                .await
                .map_err(|r| Refusal {
                    status: 429,
                    message: r.to_string(),
                    retry_after: r.retry_after(),
                })
        })
    }

    fn spend(
        &self,
        identity: Arc<Identity>,
        alias: String,
        usage: Usage,
    ) -> BoxFuture<'static, ()> {
        let limits = self.limits.clone();
        Box::pin(async move {
            limits
                .spend_tokens(&identity, &alias, usage.input + usage.output)
                .await;
        })
    }
}
