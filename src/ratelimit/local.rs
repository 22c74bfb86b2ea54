//! Rate limits counted in this process: one governor keyed limiter per
//! (limit id, quota), created on first use.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::RateLimiter;

use super::{Check, Verdict};

type Keyed<C> =
    RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One limiter per (limit id, quota).
type LimiterMap<C> = HashMap<(Arc<str>, super::LimitSpec), Arc<Keyed<C>>>;

/// Keyed GCRA limiters over an injectable clock (tests use a fake one).
pub(super) struct Local<C: Clock = DefaultClock> {
    clock: C,
    limiters: RwLock<LimiterMap<C>>,
}

impl Local<DefaultClock> {
    pub(super) fn new() -> Self {
        Local::with_clock(DefaultClock::default())
    }
}

impl<C: Clock + Clone> Local<C> {
    pub(super) fn with_clock(clock: C) -> Self {
        Local {
            clock,
            limiters: RwLock::new(HashMap::new()),
        }
    }

    fn limiter(&self, check: &Check) -> Arc<Keyed<C>> {
        let id = (check.limit.clone(), check.spec);
        if let Some(l) = self.limiters.read().ok().and_then(|m| m.get(&id).cloned()) {
            return l;
        }
        let mut map = match self.limiters.write() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(id)
            .or_insert_with(|| {
                Arc::new(RateLimiter::new(
                    check.spec.quota(),
                    DashMapStateStore::default(),
                    self.clock.clone(),
                ))
            })
            .clone()
    }

    /// Spends each check's units in order, stopping at the first refusal.
    /// Units spent on limits before the refusing one stay spent (governor
    /// cannot give them back); the Redis backend is all-or-nothing.
    pub(super) fn check(&self, checks: &[Check]) -> Verdict {
        for (i, check) in checks.iter().enumerate() {
            let Some(n) = NonZeroU32::new(check.units) else {
                continue;
            };
            match self.limiter(check).check_key_n(&check.key, n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    return Verdict::Refused {
                        index: i,
                        retry_after: not_until.wait_time_from(self.clock.now()),
                    }
                }
                // Callers check units against the burst first; this is the
                // same answer should one not.
                Err(_) => {
                    return Verdict::Refused {
                        index: i,
                        retry_after: Duration::MAX,
                    }
                }
            }
        }
        Verdict::Admitted
    }

    /// Forgets keys whose state is the same as a fresh key's, so a stream
    /// of distinct identities cannot grow memory without bound.
    pub(super) fn retain_recent(&self) {
        let limiters: Vec<_> = match self.limiters.read() {
            Ok(m) => m.values().cloned().collect(),
            Err(_) => return,
        };
        for l in limiters {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.limiters
            .read()
            .map(|m| m.values().map(|l| l.len()).sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::ratelimit::LimitSpec;

    fn check(limit: &str, key: &str, rate: u32, per_ms: u64, burst: u32) -> Check {
        Check {
            limit: limit.into(),
            key: key.to_owned(),
            spec: LimitSpec::new(rate, Duration::from_millis(per_ms), burst).unwrap(),
            units: 1,
        }
    }

    fn admitted(v: Verdict) -> bool {
        matches!(v, Verdict::Admitted)
    }

    #[test]
    fn burst_then_refusal_then_recovery() {
        let clock = FakeRelativeClock::default();
        let local = Local::with_clock(clock.clone());
        // 10 per second, burst 3: three at once, then one per 100 ms.
        let c = [check("l", "k", 10, 1000, 3)];
        for _ in 0..3 {
            assert!(admitted(local.check(&c)));
        }
        let Verdict::Refused { index, retry_after } = local.check(&c) else {
            panic!("fourth call within the burst window must be refused");
        };
        assert_eq!(index, 0);
        assert_eq!(retry_after, Duration::from_millis(100));
        clock.advance(Duration::from_millis(99));
        assert!(!admitted(local.check(&c)), "not yet");
        clock.advance(Duration::from_millis(1));
        assert!(
            admitted(local.check(&c)),
            "one unit back after the interval"
        );
        assert!(!admitted(local.check(&c)));
        clock.advance(Duration::from_secs(1));
        for _ in 0..3 {
            assert!(admitted(local.check(&c)), "full burst after a quiet period");
        }
    }

    #[test]
    fn keys_and_limits_do_not_interfere() {
        let local = Local::with_clock(FakeRelativeClock::default());
        let alice = [check("l", "alice", 1, 1000, 1)];
        let bob = [check("l", "bob", 1, 1000, 1)];
        let other = [check("m", "alice", 1, 1000, 1)];
        assert!(admitted(local.check(&alice)));
        assert!(!admitted(local.check(&alice)));
        assert!(
            admitted(local.check(&bob)),
            "another key has its own budget"
        );
        assert!(
            admitted(local.check(&other)),
            "another limit has its own budget"
        );
    }

    #[test]
    fn reports_the_refusing_limit() {
        let local = Local::with_clock(FakeRelativeClock::default());
        let checks = [
            check("wide", "k", 100, 1000, 100),
            check("narrow", "k", 1, 1000, 1),
        ];
        assert!(admitted(local.check(&checks)));
        match local.check(&checks) {
            Verdict::Refused { index, retry_after } => {
                assert_eq!(index, 1);
                assert_eq!(retry_after, Duration::from_secs(1));
            }
            Verdict::Admitted => panic!("narrow limit must refuse"),
        }
    }

    #[test]
    fn units_spend_several_cells_at_once() {
        let clock = FakeRelativeClock::default();
        let local = Local::with_clock(clock.clone());
        let mut c = check("tokens", "alice", 100, 1000, 100);
        c.units = 60;
        assert!(admitted(local.check(std::slice::from_ref(&c))));
        let Verdict::Refused { retry_after, .. } = local.check(std::slice::from_ref(&c)) else {
            panic!("40 left, 60 asked");
        };
        // 20 more units are needed, one every 10 ms.
        assert_eq!(retry_after, Duration::from_millis(200));
        clock.advance(retry_after);
        assert!(admitted(local.check(&[c])));
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let local = Local::with_clock(clock.clone());
        for i in 0..50 {
            assert!(admitted(local.check(&[check(
                "l",
                &format!("k{i}"),
                10,
                1000,
                10
            )])));
        }
        assert_eq!(local.keys(), 50);
        clock.advance(Duration::from_secs(2));
        local.retain_recent();
        assert_eq!(local.keys(), 0);
    }
}
