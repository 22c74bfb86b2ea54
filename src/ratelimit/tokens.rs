//! Token budgets for the model router: each alias's `token_limit`, per
//! identity, counted in the same backend as call limits (so replicas
//! sharing Redis share budgets).
//!
//! A request is admitted while its identity has at least one token left
//! (that token is spent); what it used is spent when it finishes. A
//! request cannot know its size beforehand, so the one that crosses the
//! limit completes and drains the budget, and the next waits for refill.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{LimitSpec, Limits};
use crate::auth::Identity;
use crate::config::ModelAliasConfig;
use crate::llm::usage::Usage;
use crate::llm::{Admission, Refusal};

/// Per-alias token budgets, as the model router's [`Admission`] hook.
#[derive(Clone)]
pub struct TokenBudgets {
    limits: Arc<Limits>,
    /// Alias → (limit id, quota).
    specs: Arc<HashMap<String, (String, LimitSpec)>>,
}

impl TokenBudgets {
    /// Budgets for every alias with a `token_limit`; `None` when none has.
    pub fn new(
        limits: Arc<Limits>,
        models: &std::collections::BTreeMap<String, ModelAliasConfig>,
    ) -> Option<TokenBudgets> {
        let specs: HashMap<String, (String, LimitSpec)> = models
            .iter()
            .filter_map(|(alias, m)| {
                let t = m.token_limit.as_ref()?;
                let spec = LimitSpec::new(t.tokens, t.per, t.burst.unwrap_or(t.tokens))?;
                Some((alias.clone(), (format!("tokens:{alias}"), spec)))
            })
            .collect();
        (!specs.is_empty()).then(|| TokenBudgets {
            limits,
            specs: Arc::new(specs),
        })
    }
}

impl Admission for TokenBudgets {
    fn admit(
        &self,
        identity: Arc<Identity>,
        alias: String,
    ) -> BoxFuture<'static, Result<(), Refusal>> {
        let this = self.clone();
        Box::pin(async move {
            let Some((id, spec)) = this.specs.get(&alias) else {
                return Ok(());
            };
            this.limits
                .consume(id, &identity.subject, spec, 1)
                .await
                .map_err(|r| Refusal {
                    status: 429,
                    message: format!("portcullis: token limit of `{alias}` reached: {r}"),
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
        let this = self.clone();
        Box::pin(async move {
            let Some((id, spec)) = this.specs.get(&alias) else {
                return;
            };
            let used = usage.input.saturating_add(usage.output);
            let mut units = u32::try_from(used).unwrap_or(u32::MAX).min(spec.burst());
            // All or none: when the whole amount does not fit, take what
            // does (halving), so the budget ends up drained, not untouched.
            while units > 0 {
                if this
                    .limits
                    .consume(id, &identity.subject, spec, units)
                    .await
                    .is_ok()
                {
                    return;
                }
                units /= 2;
            }
        })
    }
}
