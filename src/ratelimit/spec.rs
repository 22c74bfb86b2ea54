//! The vocabulary of limiting: a quota ([`LimitSpec`]), a per-call
//! override from policy ([`LimitOverride`]) and a refusal ([`Refused`]).

use std::sync::Arc;
use std::time::Duration;

use governor::Quota;

use crate::config::{KeyPart, RateLimitRule};

/// A quota: `rate` units per `per` on average, up to `burst` at once.
///
/// The same GCRA arithmetic runs locally (governor) and in Redis: one unit
/// is replenished every `per / rate`, and a key that has been idle can
/// spend `burst` units back to back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitSpec {
    rate: u32,
    per: Duration,
    burst: u32,
}

impl LimitSpec {
    /// A quota; `None` when `rate`, `per` or `burst` is zero.
    pub fn new(rate: u32, per: Duration, burst: u32) -> Option<LimitSpec> {
        (rate > 0 && !per.is_zero() && burst > 0).then_some(LimitSpec { rate, per, burst })
    }

    /// The quota of a configured rule (validated, so never zero; a zero
    /// slipping through would become one unit per period, never unlimited).
    pub(crate) fn of_rule(rule: &RateLimitRule) -> LimitSpec {
        LimitSpec {
            rate: rule.rate.max(1),
            per: rule.per.max(Duration::from_nanos(1)),
            burst: rule.burst().max(1),
        }
    }

    /// Units per period.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// The period.
    pub fn per(&self) -> Duration {
        self.per
    }

    /// Units admitted at once after a quiet spell.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Time to replenish one unit (the GCRA emission interval), at least 1 ns.
    pub fn interval(&self) -> Duration {
        (self.per / self.rate).max(Duration::from_nanos(1))
    }

    /// The governor quota with the same interval and burst.
    pub(crate) fn quota(&self) -> Quota {
        let burst = std::num::NonZeroU32::new(self.burst).unwrap_or(std::num::NonZeroU32::MIN);
        Quota::with_period(self.interval())
            .unwrap_or_else(|| Quota::per_second(std::num::NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

/// A limit a policy rule puts on the calls it matches, passed to
/// [`Limits::admit_with`](super::Limits::admit_with) by the policy engine.
///
/// When `id` names a configured limit that applies to the call, the
/// override replaces that limit's quota (and key, if given) for this call;
/// otherwise it is one more limit the call must pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitOverride {
    /// The policy rule's id, or the id of the configured limit it replaces.
    pub id: String,
    /// What the counter is keyed by; `None` keeps the configured limit's
    /// key, or `[identity]` for a limit of the rule's own.
    pub key: Option<Vec<KeyPart>>,
    /// The quota.
    pub spec: LimitSpec,
}

/// Why a call or request was not admitted. Every refusal names its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A rate limit has no unit left for this key.
    #[error("rate limit `{limit}` exceeded; retry after {} ms", retry_after.as_millis())]
    Rate {
        /// The limit's id.
        limit: Arc<str>,
        /// When the call would be admitted, if nothing else spends the key.
        retry_after: Duration,
    },
    /// A concurrency limit had no free slot within its wait.
    #[error("concurrency limit `{limit}` reached: no slot freed within {} ms", waited.as_millis())]
    Concurrency {
        /// The limit's id.
        limit: Arc<str>,
        /// How long the call waited.
        waited: Duration,
        /// A hint: the limit's wait, at least 100 ms.
        retry_after: Duration,
    },
    /// The shared backend could not answer and `on_error` is `deny`.
    #[error("rate limit `{limit}` could not be checked: the shared backend is unavailable")]
    Unavailable {
        /// The first limit the call had to pass.
        limit: Arc<str>,
        /// A hint: try again in a second.
        retry_after: Duration,
    },
    /// More units than the limit's burst: this can never be admitted.
    #[error("{units} units can never pass limit `{limit}`, whose burst is {burst}")]
    TooLarge {
        /// The limit's id.
        limit: Arc<str>,
        /// Units asked for.
        units: u32,
        /// The limit's burst.
        burst: u32,
    },
}

impl Refused {
    /// The id of the limit that refused.
    pub fn limit(&self) -> &str {
        match self {
            Refused::Rate { limit, .. }
            | Refused::Concurrency { limit, .. }
            | Refused::Unavailable { limit, .. }
            | Refused::TooLarge { limit, .. } => limit,
        }
    }

    /// When to try again; `None` when trying again cannot help.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refused::Rate { retry_after, .. }
            | Refused::Concurrency { retry_after, .. }
            | Refused::Unavailable { retry_after, .. } => Some(*retry_after),
            Refused::TooLarge { .. } => None,
        }
    }

    /// `retry_after` in whole milliseconds, rounded up so a client that
    /// waits exactly that long is admitted.
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.retry_after().map(|d| {
            let ms = d.as_micros().div_ceil(1000);
            u64::try_from(ms).unwrap_or(u64::MAX)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_quotas_are_rejected() {
        let s = Duration::from_secs(1);
        assert!(LimitSpec::new(0, s, 1).is_none());
        assert!(LimitSpec::new(1, Duration::ZERO, 1).is_none());
        assert!(LimitSpec::new(1, s, 0).is_none());
        let spec = LimitSpec::new(10, s, 20).unwrap();
        assert_eq!(spec.interval(), Duration::from_millis(100));
        assert_eq!(spec.quota().burst_size().get(), 20);
        assert_eq!(
            spec.quota().replenish_interval(),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_milliseconds() {
        let r = Refused::Rate {
            limit: "a".into(),
            retry_after: Duration::from_micros(1500),
        };
        assert_eq!(r.retry_after_ms(), Some(2));
        assert_eq!(r.limit(), "a");
        assert!(r.to_string().contains("`a`"), "{r}");
    }
}
