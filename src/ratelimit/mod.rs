//! Rate limits and concurrency caps: who may call what, how often, and how
//! many at once.
//!
//! [`Limits`] is the one entry point. The gateway calls
//! [`Limits::admit`] for each tool call after the name is resolved and
//! before anything is sent upstream, and holds the returned [`Admission`]
//! until the call completes (that is what a concurrency slot is). The HTTP
//! layer calls [`Limits::admit_request`] before MCP handling. The policy
//! engine passes a matching rule's limits to [`Limits::admit_with`]; the
//! model router spends token budgets with [`Limits::consume`].
//!
//! Order within a call: concurrency slots first (waiting at most each
//! cap's `wait`), then rate limits, so a call that never runs does not
//! spend rate. Rate limits are GCRA, counted in this process with governor
//! (`local.rs`) or in Redis with an atomic script (`shared.rs`); keys and
//! filters are pure functions in `scope.rs`.

mod concurrency;
mod local;
mod scope;
mod shared;
mod spec;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use concurrency::{Cap, Slot};
use local::Local;
use scope::{Kind, Scope};
use shared::{Shared, SharedError};
pub use spec::{LimitOverride, LimitSpec, Refused};

use crate::auth::Identity;
use crate::config::{KeyPart, OnBackendError, RateLimitBackend, RateLimitConfig, RateLimitRule};
use crate::registry::Target;
use crate::telemetry::Metrics;

/// How often idle keys are forgotten.
const HOUSEKEEPING: Duration = Duration::from_secs(60);
/// At most one backend-error log line per this long.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// `retry_after` of a refusal because the backend is down.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// Units to spend on one limit under one key.
struct Check {
    limit: Arc<str>,
    key: String,
    spec: LimitSpec,
    units: u32,
}

/// A backend's answer for a list of checks.
enum Verdict {
    Admitted,
    Refused {
        /// Which check refused.
        index: usize,
        retry_after: Duration,
    },
}

/// A configured rate limit, compiled.
struct RateRule {
    id: Arc<str>,
    scope: Scope,
    spec: LimitSpec,
}

impl RateRule {
    fn new(rule: &RateLimitRule) -> RateRule {
        RateRule {
            id: rule.id.as_str().into(),
            scope: Scope::new(&rule.key, rule.upstream.as_deref(), rule.tool.as_deref()),
            spec: LimitSpec::of_rule(rule),
        }
    }
}

enum Backend {
    Local(Local),
    Shared {
        redis: Shared,
        on_error: OnBackendError,
    },
}

/// Every limit of a running gateway.
pub struct Limits {
    tokens: Vec<TokenRule>,
    calls: Vec<RateRule>,
    requests: Vec<RateRule>,
    caps: Vec<Cap>,
    backend: Backend,
    metrics: Arc<Metrics>,
    error_log: LogThrottle,
}

/// Proof that a call was admitted. Hold it until the call completes: it
/// keeps the call's concurrency slots.
#[must_use = "dropping the admission frees its concurrency slots"]
pub struct Admission {
    _slots: Vec<Slot>,
}

impl Limits {
    /// Compiles the config's limits and, with `backend: redis`, prepares a
    /// lazily connected Redis client. Inside a Tokio runtime it also starts
    /// a task that forgets idle keys.
    pub fn new(config: &RateLimitConfig, metrics: Arc<Metrics>) -> Arc<Limits> {
        let backend = match (&config.backend, &config.redis) {
            (RateLimitBackend::Redis, Some(redis)) => Backend::Shared {
                redis: Shared::new(redis),
                on_error: redis.on_error,
            },
            _ => Backend::Local(Local::new()),
        };
        let calls: Vec<RateRule> = config.limits.iter().map(RateRule::new).collect();
        let requests: Vec<RateRule> = config.requests.iter().map(RateRule::new).collect();
        let caps: Vec<Cap> = config
            .concurrency
            .iter()
            .map(|c| Cap::new(c, metrics.ratelimit_in_flight.with_label_values(&[&c.id])))
            .collect();
        // Series at 0 from the first scrape, so dashboards see every limit.
        for id in calls.iter().chain(&requests).map(|r| &r.id) {
            metrics.ratelimit_refusals.with_label_values(&[id]);
        }
        for cap in &caps {
            metrics.ratelimit_refusals.with_label_values(&[&cap.id]);
        }
        let tokens: Vec<TokenRule> = config.tokens.iter().filter_map(TokenRule::new).collect();
        for rule in &tokens {
            metrics.ratelimit_refusals.with_label_values(&[&rule.id]);
        }
        let limits = Arc::new(Limits {
            tokens,
            calls,
            requests,
            caps,
            backend,
            metrics,
            error_log: LogThrottle::new(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(housekeeping(Arc::downgrade(&limits)));
        }
        limits
    }

    /// Admits a tool call of `target` by `identity`, or says which limit
    /// refused it. See [`Limits::admit_with`].
    pub async fn admit(&self, identity: &Identity, target: &Target) -> Result<Admission, Refused> {
        self.admit_with(identity, target, &[]).await
    }

    /// Admits a call under the configured limits plus `overrides`, the
    /// limits of the policy rules that matched it (the policy engine passes
    /// them; an override with a configured limit's id replaces that limit's
    /// quota for this call). Waits at most each concurrency cap's `wait`.
    pub async fn admit_with(
        &self,
        identity: &Identity,
        target: &Target,
        overrides: &[LimitOverride],
    ) -> Result<Admission, Refused> {
        let mut slots = Vec::new();
        for cap in self.caps.iter().filter(|c| c.scope.matches(target)) {
            let key = cap.scope.key(Kind::Call, &cap.id, identity, Some(target));
            slots.push(cap.acquire(key).await.map_err(|r| self.count(r))?);
        }
        self.spend(self.call_checks(identity, target, overrides))
            .await?;
        Ok(Admission { _slots: slots })
    }

    /// Admits one HTTP request to an MCP endpoint under `ratelimit.requests`.
    pub async fn admit_request(&self, identity: &Identity) -> Result<(), Refused> {
        let checks = self
            .requests
            .iter()
            .map(|r| Check {
                limit: r.id.clone(),
                key: r.scope.key(Kind::Request, &r.id, identity, None),
                spec: r.spec,
                units: 1,
            })
            .collect();
        self.spend(checks).await
    }

    /// Admits a model request by `identity` for `alias` if every token
    /// budget that applies has at least one token left (spending that one).
    pub async fn admit_tokens(&self, identity: &Identity, alias: &str) -> Result<(), Refused> {
        let checks: Vec<Check> = self
            .tokens
            .iter()
            .filter(|r| r.applies(alias))
            .map(|r| r.check(identity, 1))
            .collect();
        self.spend(checks).await
    }

    /// Charges what a finished model request used (less the token spent
    /// at admission). A request may overdraw: the budget is then drained
    /// to empty, and the next request waits for it to refill.
    pub async fn spend_tokens(&self, identity: &Identity, alias: &str, tokens: u64) {
        let owed = u32::try_from(tokens.saturating_sub(1)).unwrap_or(u32::MAX);
        for rule in self.tokens.iter().filter(|r| r.applies(alias)) {
            let mut chunk = owed.min(rule.spec.burst());
            let mut left = owed;
            // All-or-none spends: take what fits, halving on refusal.
            while chunk > 0 && left > 0 {
                let check = rule.check(identity, chunk.min(left));
                let fits = match &self.backend {
                    Backend::Local(local) => matches!(local.check(&[check]), Verdict::Admitted),
                    Backend::Shared { redis, .. } => {
                        matches!(redis.check(&[check]).await, Ok(Verdict::Admitted))
                    }
                };
                if fits {
                    left -= chunk.min(left);
                } else {
                    chunk /= 2;
                }
            }
        }
    }

    /// Spends `units` of budget `id` for `key` under `spec`, all or none:
    /// the model router's token limits. Counted in the configured backend,
    /// apart from call and request limits even when ids coincide.
    pub async fn consume(
        &self,
        id: &str,
        key: &str,
        spec: &LimitSpec,
        units: u32,
    ) -> Result<(), Refused> {
        let check = Check {
            limit: id.into(),
            key: scope::units_key(id, key),
            spec: *spec,
            units,
        };
        self.spend(vec![check]).await
    }

    /// The rate checks a call must pass: configured limits that match,
    /// replaced or joined by the policy's overrides.
    fn call_checks(
        &self,
        identity: &Identity,
        target: &Target,
        overrides: &[LimitOverride],
    ) -> Vec<Check> {
        let mut checks = Vec::new();
        for rule in self.calls.iter().filter(|r| r.scope.matches(target)) {
            let o = overrides.iter().find(|o| *o.id == *rule.id);
            let rekeyed = o
                .and_then(|o| o.key.as_deref())
                .map(|k| rule.scope.with_key(k));
            let scope = rekeyed.as_ref().unwrap_or(&rule.scope);
            checks.push(Check {
                limit: rule.id.clone(),
                key: scope.key(Kind::Call, &rule.id, identity, Some(target)),
                spec: o.map_or(rule.spec, |o| o.spec),
                units: 1,
            });
        }
        for o in overrides {
            if checks.iter().any(|c| *c.limit == *o.id) {
                continue;
            }
            let key = o.key.as_deref().unwrap_or(&[KeyPart::Identity]);
            checks.push(Check {
                limit: o.id.as_str().into(),
                key: Scope::new(key, None, None).key(Kind::Call, &o.id, identity, Some(target)),
                spec: o.spec,
                units: 1,
            });
        }
        checks
    }

    /// Runs checks on the backend; applies `on_error` when it fails.
    async fn spend(&self, checks: Vec<Check>) -> Result<(), Refused> {
        if checks.is_empty() {
            return Ok(());
        }
        if let Some(c) = checks.iter().find(|c| c.units > c.spec.burst()) {
            return Err(self.count(Refused::TooLarge {
                limit: c.limit.clone(),
                units: c.units,
                burst: c.spec.burst(),
            }));
        }
        let verdict = match &self.backend {
            Backend::Local(local) => local.check(&checks),
            Backend::Shared { redis, on_error } => match redis.check(&checks).await {
                Ok(v) => v,
                Err(e) => return self.backend_failed(e, *on_error, &checks),
            },
        };
        match verdict {
            Verdict::Admitted => Ok(()),
            Verdict::Refused { index, retry_after } => Err(self.count(Refused::Rate {
                limit: limit_of(&checks, index),
                retry_after,
            })),
        }
    }

    fn backend_failed(
        &self,
        e: SharedError,
        on_error: OnBackendError,
        checks: &[Check],
    ) -> Result<(), Refused> {
        self.metrics.ratelimit_backend_errors.inc();
        if let Some(suppressed) = self.error_log.permit() {
            tracing::warn!(
                error = %e,
                on_error = ?on_error,
                suppressed,
                "rate-limit backend failed; calls are {}",
                match on_error {
                    OnBackendError::Allow => "admitted unlimited",
                    OnBackendError::Deny => "refused",
                }
            );
        }
        match on_error {
            OnBackendError::Allow => Ok(()),
            OnBackendError::Deny => Err(self.count(Refused::Unavailable {
                limit: limit_of(checks, 0),
                retry_after: UNAVAILABLE_RETRY,
            })),
        }
    }

    fn count(&self, refused: Refused) -> Refused {
        self.metrics
            .ratelimit_refusals
            .with_label_values(&[refused.limit()])
            .inc();
        tracing::debug!(limit = refused.limit(), reason = %refused, "refused by a limit");
        refused
    }

    fn housekeep(&self) {
        if let Backend::Local(local) = &self.backend {
            local.retain_recent();
        }
        for cap in &self.caps {
            cap.retain_busy();
        }
    }
}

fn limit_of(checks: &[Check], index: usize) -> Arc<str> {
    checks
        .get(index)
        .map_or_else(|| Arc::from("unknown"), |c| c.limit.clone())
}

async fn housekeeping(limits: Weak<Limits>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(limits) = limits.upgrade() else {
            return;
        };
        limits.housekeep();
    }
}

/// Lets one log line through per [`ERROR_LOG_EVERY`], so a Redis outage
/// under load logs a line every few seconds, not one per call.
struct LogThrottle {
    start: Instant,
    /// Milliseconds since `start` before which lines are suppressed.
    next: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    fn new() -> LogThrottle {
        LogThrottle {
            start: Instant::now(),
            next: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one)` when a line may be logged.
    fn permit(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next.load(Ordering::Relaxed);
        let later = now.saturating_add(ERROR_LOG_EVERY.as_millis() as u64);
        if now >= next
            && self
                .next
                .compare_exchange(next, later, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests;

/// A token budget, compiled.
struct TokenRule {
    id: Arc<str>,
    per_identity: bool,
    model: Option<globset::GlobMatcher>,
    spec: LimitSpec,
}

impl TokenRule {
    fn new(c: &crate::config::TokenLimitRule) -> Option<TokenRule> {
        Some(TokenRule {
            id: c.id.as_str().into(),
            per_identity: c.key.contains(&KeyPart::Identity),
            model: match &c.model {
                Some(g) => Some(globset::Glob::new(g).ok()?.compile_matcher()),
                None => None,
            },
            spec: LimitSpec::new(c.rate, c.per, c.burst.unwrap_or(c.rate))?,
        })
    }

    fn applies(&self, alias: &str) -> bool {
        self.model.as_ref().is_none_or(|m| m.is_match(alias))
    }

    fn check(&self, identity: &Identity, units: u32) -> Check {
        let key = if self.per_identity {
            identity.subject.as_str()
        } else {
            ""
        };
        Check {
            limit: self.id.clone(),
            key: scope::units_key(&self.id, key),
            spec: self.spec,
            units,
        }
    }
}
