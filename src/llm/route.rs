//! Choosing targets: each strategy orders an alias's targets for one
//! request (the first is tried first, the rest are its fallbacks), and each
//! target keeps its health: a circuit breaker, a `Retry-After` horizon and
//! a moving average of time to first token.
//!
//! [`order`] is a pure function of a snapshot, so strategies are tested
//! without clocks or providers; [`Health`] takes the time as an argument
//! for the same reason.

use std::time::{Duration, Instant};

use crate::config::{BreakerConfig, Strategy};

/// What a strategy needs to know about one target.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// Provider name.
    pub provider: &'a str,
    /// Model name at the provider.
    pub model: &'a str,
    /// Weight under `weighted`.
    pub weight: u32,
    /// Input plus output price per million tokens, if priced.
    pub price: Option<f64>,
    /// Moving average of time to first token, seconds; `None` if unmeasured.
    pub latency: Option<f64>,
}

/// The order in which to try the targets. `hint` is the requested target
/// under `header` (`provider/model`, `provider` or `model`); `random` is
/// uniform in [0, 1) for `weighted`.
pub fn order(
    strategy: Strategy,
    c: &[Candidate<'_>],
    hint: Option<&str>,
    random: f64,
) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..c.len()).collect();
    match strategy {
        Strategy::Fallback => {}
        Strategy::Header => {
            let chosen = hint.and_then(|h| {
                c.iter().position(|t| {
                    h == t.provider
                        || h == t.model
                        || h.split_once('/') == Some((t.provider, t.model))
                })
            });
            if let Some(i) = chosen {
                idx.retain(|j| *j != i);
                idx.insert(0, i);
            }
        }
        Strategy::Weighted => {
            let total: u64 = c.iter().map(|t| u64::from(t.weight)).sum();
            if total > 0 {
                let mut point = (random * total as f64) as u64;
                let chosen = c
                    .iter()
                    .position(|t| {
                        let w = u64::from(t.weight);
                        if point < w {
                            true
                        } else {
                            point -= w;
                            false
                        }
                    })
                    .unwrap_or(0);
                idx.retain(|j| *j != chosen);
                idx.insert(0, chosen);
            }
        }
        // Unmeasured targets first, so each gets measured; then fastest.
        Strategy::Latency => idx.sort_by(|a, b| {
            let key = |i: &usize| c[*i].latency.unwrap_or(-1.0);
            key(a).total_cmp(&key(b))
        }),
        // Unpriced targets last: their cost is unknown, not zero.
        Strategy::Cost => idx.sort_by(|a, b| {
            let key = |i: &usize| c[*i].price.unwrap_or(f64::INFINITY);
            key(a).total_cmp(&key(b))
        }),
    }
    idx
}

/// Whether a target may be tried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Healthy.
    Yes,
    /// Cooled down long enough: this request is the probe.
    Probe,
    /// Breaker open until then.
    Open(Instant),
    /// Rate limited by the provider until then (`Retry-After`).
    NotBefore(Instant),
}

/// Weight of the newest sample in the latency average.
const EWMA_ALPHA: f64 = 0.3;

/// Health of one target.
#[derive(Debug, Default)]
pub struct Health {
    failures: u32,
    open_until: Option<Instant>,
    probe_since: Option<Instant>,
    not_before: Option<Instant>,
    latency: Option<f64>,
}

impl Health {
    /// Whether the target may be tried at `now`; claims the probe when the
    /// cooldown is over. A probe that never reports (its client went away)
    /// is given up after another cooldown, so the target is not lost.
    pub fn admit(&mut self, now: Instant, cfg: &BreakerConfig) -> Admit {
        if let Some(t) = self.not_before {
            if now < t {
                return Admit::NotBefore(t);
            }
            self.not_before = None;
        }
        let Some(until) = self.open_until else {
            return Admit::Yes;
        };
        if now < until {
            return Admit::Open(until);
        }
        match self.probe_since {
            Some(since) if now < since + cfg.cooldown => Admit::Open(since + cfg.cooldown),
            _ => {
                self.probe_since = Some(now);
                Admit::Probe
            }
        }
    }

    /// A request succeeded after `ttfb` to its first byte.
    pub fn success(&mut self, ttfb: Duration) {
        self.failures = 0;
        self.open_until = None;
        self.probe_since = None;
        let sample = ttfb.as_secs_f64();
        self.latency = Some(match self.latency {
            Some(avg) => EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * avg,
            None => sample,
        });
    }

    /// A request failed; returns true when this opened the breaker.
    pub fn failure(&mut self, now: Instant, cfg: &BreakerConfig) -> bool {
        self.failures = self.failures.saturating_add(1);
        let probe_failed = self.probe_since.take().is_some();
        if probe_failed || self.failures >= cfg.failures {
            self.open_until = Some(now + cfg.cooldown);
            return true;
        }
        false
    }

    /// A probe ended in a way that says nothing about the target (the
    /// request itself was bad): the next request may probe again.
    pub fn release_probe(&mut self) {
        self.probe_since = None;
    }

    /// The provider asked us to wait until `until`.
    pub fn rate_limited(&mut self, until: Instant) {
        self.not_before = Some(self.not_before.map_or(until, |t| t.max(until)));
    }

    /// Moving average of time to first byte, seconds.
    pub fn latency(&self) -> Option<f64> {
        self.latency
    }

    /// True while the breaker is open (for the gauge).
    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|t| now < t) || self.probe_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c<'a>(
        provider: &'a str,
        model: &'a str,
        weight: u32,
        price: Option<f64>,
        latency: Option<f64>,
    ) -> Candidate<'a> {
        Candidate {
            provider,
            model,
            weight,
            price,
            latency,
        }
    }

    #[test]
    fn strategies_order_targets() {
        let t = [
            c("a", "m1", 3, Some(10.0), Some(0.5)),
            c("b", "m2", 1, Some(1.0), Some(0.1)),
            c("c", "m3", 0, None, None),
        ];
        assert_eq!(order(Strategy::Fallback, &t, None, 0.0), [0, 1, 2]);
        assert_eq!(order(Strategy::Cost, &t, None, 0.0), [1, 0, 2]);
        assert_eq!(order(Strategy::Latency, &t, None, 0.0), [2, 1, 0]);
        assert_eq!(order(Strategy::Header, &t, Some("b/m2"), 0.0), [1, 0, 2]);
        assert_eq!(order(Strategy::Header, &t, Some("c"), 0.0), [2, 0, 1]);
        assert_eq!(order(Strategy::Header, &t, Some("nope"), 0.0), [0, 1, 2]);
        assert_eq!(order(Strategy::Weighted, &t, None, 0.0), [0, 1, 2]);
        assert_eq!(order(Strategy::Weighted, &t, None, 0.74), [0, 1, 2]);
        assert_eq!(order(Strategy::Weighted, &t, None, 0.76), [1, 0, 2]);
    }

    #[test]
    fn weighted_choice_follows_weights() {
        let t = [c("a", "m", 3, None, None), c("b", "m", 1, None, None)];
        let firsts: usize = (0..1000)
            .filter(|i| order(Strategy::Weighted, &t, None, *i as f64 / 1000.0)[0] == 0)
            .count();
        assert_eq!(firsts, 750);
    }

    #[test]
    fn breaker_opens_after_failures_and_probes_back() {
        let cfg = BreakerConfig {
            failures: 2,
            cooldown: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        let mut h = Health::default();
        assert_eq!(h.admit(t0, &cfg), Admit::Yes);
        assert!(!h.failure(t0, &cfg));
        assert!(h.failure(t0, &cfg));
        assert_eq!(h.admit(t0, &cfg), Admit::Open(t0 + cfg.cooldown));
        let t1 = t0 + cfg.cooldown;
        assert_eq!(h.admit(t1, &cfg), Admit::Probe);
        // One probe at a time.
        assert!(matches!(h.admit(t1, &cfg), Admit::Open(_)));
        // A failed probe reopens at once.
        assert!(h.failure(t1, &cfg));
        assert!(matches!(h.admit(t1, &cfg), Admit::Open(_)));
        let t2 = t1 + cfg.cooldown;
        assert_eq!(h.admit(t2, &cfg), Admit::Probe);
        // A probe that proved nothing (a bad request) hands the probe on.
        h.release_probe();
        assert_eq!(h.admit(t2, &cfg), Admit::Probe);
        h.success(Duration::from_millis(100));
        assert_eq!(h.admit(t2, &cfg), Admit::Yes);
        assert!(!h.is_open(t2));
    }

    #[test]
    fn retry_after_holds_the_target_back() {
        let cfg = BreakerConfig::default();
        let t0 = Instant::now();
        let mut h = Health::default();
        h.rate_limited(t0 + Duration::from_secs(2));
        assert_eq!(
            h.admit(t0, &cfg),
            Admit::NotBefore(t0 + Duration::from_secs(2))
        );
        assert_eq!(h.admit(t0 + Duration::from_secs(2), &cfg), Admit::Yes);
    }

    #[test]
    fn latency_is_a_moving_average() {
        let mut h = Health::default();
        h.success(Duration::from_secs(1));
        h.success(Duration::from_secs(2));
        assert!((h.latency().unwrap() - 1.3).abs() < 1e-9);
    }
}
